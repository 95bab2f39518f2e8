//! One table per packet type. Expected bytes are written by hand from the specification's
//! figures, not by this encoder. Each row names the normative statement it checks.

use tern_proto::{
    decode, Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, List, Packet, PacketId,
    PacketType, Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, Subscription, SubscriptionIds, SubscriptionOptions, TopicFilter, TopicName,
    UnsubAck, Unsubscribe, Will,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

const MAX: u32 = tern_proto::MAX_PACKET_SIZE;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn topic(s: &str) -> TopicName<'_> {
    TopicName::new(s).unwrap()
}

fn filter(s: &str) -> TopicFilter<'_> {
    TopicFilter::new(s).unwrap()
}

/// Checks `packet` encodes to exactly `bytes` in `version`, and `bytes` decode to `packet`,
/// whole and when split at every byte boundary.
fn check(version: ProtocolVersion, packet: Packet<'_>, bytes: &[u8]) {
    let mut out = vec![0u8; bytes.len() + 8];
    let n = packet.encode(version, &mut out).unwrap();
    assert_eq!(&out[..n], bytes, "encode {packet:?}");
    assert_eq!(packet.encoded_len(version).unwrap(), bytes.len());
    check_decode(version, bytes, packet);
}

/// Checks `bytes` decode to `packet`, whole and split anywhere.
fn check_decode(version: ProtocolVersion, bytes: &[u8], packet: Packet<'_>) {
    assert_eq!(
        decode(bytes, version, MAX),
        Ok(Some((packet, bytes.len()))),
        "decode {bytes:02x?}"
    );
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], version, MAX),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
}

/// Checks `bytes` are refused with `err`.
fn reject(version: ProtocolVersion, bytes: &[u8], err: DecodeError) {
    assert_eq!(decode(bytes, version, MAX), Err(err), "{bytes:02x?}");
}

#[test]
fn connect() {
    // [MQTT-3.1.2-1] protocol name, [MQTT-3.1.3-1] payload order: the tutorial board's CONNECT
    // (clean session, keepalive 7200, user and password).
    let board = Connect {
        version: V3_1_1,
        clean_start: true,
        keep_alive: 7200,
        properties: Properties::default(),
        client_id: "c",
        will: None,
        username: Some("u"),
        password: Some(b"p"),
    };
    check(
        V3_1_1,
        Packet::Connect(board),
        &[
            0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0x1c, 0x20, 0, 1, b'c', 0, 1, b'u', 0,
            1, b'p',
        ],
    );
    // MQTT 3.1: protocol name MQIsdp, level 3.
    let v31 = Connect {
        version: V3_1,
        clean_start: true,
        keep_alive: 60,
        client_id: "a",
        username: None,
        password: None,
        ..board
    };
    check(
        V3_1_1, // the version argument does not matter: CONNECT announces its own
        Packet::Connect(v31),
        &[
            0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
        ],
    );
    // [MQTT-3.1.2-9] will flag; [MQTT-3.1.2-12] will QoS; [MQTT-3.1.2-17] will retain;
    // MQTT 5 CONNECT and Will Properties.
    let v5 = Connect {
        version: V5,
        clean_start: true,
        keep_alive: 10,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        },
        client_id: "id",
        will: Some(Will {
            topic: topic("t"),
            payload: b"by",
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
        }),
        username: None,
        password: None,
    };
    check(
        V5,
        Packet::Connect(v5),
        &[
            0x10, 33, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x2e, 0, 10, 5, 0x11, 0, 0, 0, 60, 0, 2,
            b'i', b'd', 5, 0x18, 0, 0, 0, 5, 0, 1, b't', 0, 2, b'b', b'y',
        ],
    );
    // MQTT 5 allows a password without a user name (section 3.1.2.9).
    let pw_only = Connect {
        version: V5,
        username: None,
        password: Some(b"k"),
        will: None,
        properties: Properties::default(),
        ..v5
    };
    check(
        V5,
        Packet::Connect(pw_only),
        &[
            0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 10, 0, 0, 2, b'i', b'd', 0, 1, b'k',
        ],
    );
}

#[test]
fn connect_rejections() {
    let body = |name: &[u8], level: u8, flags: u8| {
        let mut v = vec![0x10, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&[level, flags, 0, 60, 0, 1, b'c']);
        v[1] = (v.len() - 2) as u8;
        v
    };
    // [MQTT-3.1.2-1] an unknown protocol name.
    reject(
        V3_1_1,
        &body(b"MQTX", 4, 2),
        DecodeError::InvalidProtocolName,
    );
    // [MQTT-3.1.2-2] an unsupported level, answered with CONNACK 0x01 / 0x84.
    reject(
        V3_1_1,
        &body(b"MQTT", 6, 2),
        DecodeError::UnsupportedProtocolVersion(6),
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(6)
            .reason_code()
            .to_v3_connack(),
        1
    );
    // [MQTT-3.1.2-3] the reserved flag.
    reject(
        V3_1_1,
        &body(b"MQTT", 4, 3),
        DecodeError::ConnectReservedFlag,
    );
    // [MQTT-3.1.2-11] will QoS without the will flag; [MQTT-3.1.2-15] will retain without it.
    reject(
        V3_1_1,
        &body(b"MQTT", 4, 0x0a),
        DecodeError::InvalidWillFlags,
    );
    reject(
        V3_1_1,
        &body(b"MQTT", 4, 0x22),
        DecodeError::InvalidWillFlags,
    );
    // [MQTT-3.1.2-14] will QoS 3.
    reject(
        V3_1_1,
        &body(b"MQTT", 4, 0x1e),
        DecodeError::InvalidWillFlags,
    );
    // [MQTT-3.1.2-22] password without user name, in 3.1.1.
    let mut pw = body(b"MQTT", 4, 0x42);
    pw.extend_from_slice(&[0, 1, b'p']);
    pw[1] += 3;
    reject(V3_1_1, &pw, DecodeError::PasswordWithoutUsername);
    // [MQTT-1.5.4-2] U+0000 in the client identifier.
    let mut nul = body(b"MQTT", 4, 2);
    let last = nul.len() - 1;
    nul[last] = 0;
    reject(V3_1_1, &nul, DecodeError::NulInString);
    // A user name flag with no user name: the field runs past the packet.
    reject(V3_1_1, &body(b"MQTT", 4, 0x82), DecodeError::Truncated);
}

#[test]
fn connack() {
    // [MQTT-3.2.2-2] session present; section 3.2.2.3 return code 0. The tutorial boards
    // require exactly these four bytes.
    let ok = ConnAck {
        session_present: true,
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check(V3_1_1, Packet::ConnAck(ok), &[0x20, 2, 1, 0]);
    // Return code 4: bad user name or password.
    let bad = ConnAck {
        session_present: false,
        code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ..ok
    };
    check(V3_1_1, Packet::ConnAck(bad), &[0x20, 2, 0, 4]);
    // 3.1 has no session present flag: the byte is reserved and written 0.
    let mut out = [0u8; 4];
    Packet::ConnAck(ok).encode(V3_1, &mut out).unwrap();
    assert_eq!(out, [0x20, 2, 0, 0]);
    // MQTT 5: reason code and properties.
    check(
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            ..ok
        }),
        &[0x20, 3, 0, 0, 0],
    );
    let props = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS,
        properties: Properties {
            topic_alias_maximum: Some(10),
            ..Properties::default()
        },
    };
    check(V5, Packet::ConnAck(props), &[0x20, 6, 0, 0, 3, 0x22, 0, 10]);
    // [MQTT-3.2.2-1] reserved acknowledge flags.
    reject(V3_1_1, &[0x20, 2, 2, 0], DecodeError::ConnAckReservedFlags);
    // A return code 3.1.1 does not define.
    reject(V3_1_1, &[0x20, 2, 0, 6], DecodeError::InvalidReasonCode(6));
}

#[test]
fn publish() {
    // [MQTT-3.3.2-1] topic name first; QoS 0 has no packet identifier [MQTT-2.2.1-2].
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: None,
        properties: Properties::default(),
        payload: b"hi",
    };
    check(
        V3_1_1,
        Packet::Publish(p),
        &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
    );
    // [MQTT-3.3.1-1] DUP, QoS 1, RETAIN flags; the packet identifier follows the topic.
    let q1 = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: Some(pid(10)),
        payload: b"x",
        ..p
    };
    check(
        V3_1_1,
        Packet::Publish(q1),
        &[0x3b, 8, 0, 3, b'a', b'/', b'b', 0, 10, b'x'],
    );
    // MQTT 5 properties sit between the packet identifier and the payload.
    let q2 = Publish {
        qos: QoS::ExactlyOnce,
        dup: false,
        retain: false,
        topic: topic("t"),
        packet_id: Some(pid(7)),
        properties: Properties {
            topic_alias: Some(5),
            ..Properties::default()
        },
        payload: b"p",
    };
    check(
        V5,
        Packet::Publish(q2),
        &[0x34, 10, 0, 1, b't', 0, 7, 3, 0x23, 0, 5, b'p'],
    );
    // [MQTT-3.3.2-1] an empty topic name with a Topic Alias.
    let aliased = Publish {
        topic: TopicName::EMPTY,
        packet_id: None,
        qos: QoS::AtMostOnce,
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
        payload: b"x",
        ..q2
    };
    check(
        V5,
        Packet::Publish(aliased),
        &[0x30, 7, 0, 0, 3, 0x23, 0, 1, b'x'],
    );
    // The payload may be empty (it clears a retained message).
    let empty = Publish {
        payload: b"",
        retain: true,
        ..p
    };
    check(
        V3_1_1,
        Packet::Publish(empty),
        &[0x31, 5, 0, 3, b'a', b'/', b'b'],
    );
    // Multiple Subscription Identifiers in a PUBLISH to a client [MQTT-3.3.4-3].
    let ids = [1, 300];
    let multi = Publish {
        properties: Properties {
            subscription_identifiers: SubscriptionIds::List(&ids),
            ..Properties::default()
        },
        ..p
    };
    check(
        V5,
        Packet::Publish(multi),
        &[
            0x30, 13, 0, 3, b'a', b'/', b'b', 5, 0x0b, 1, 0x0b, 0xac, 0x02, b'h', b'i',
        ],
    );
}

#[test]
fn publish_rejections() {
    // [MQTT-3.3.1-4] QoS 3.
    reject(
        V3_1_1,
        &[0x36, 5, 0, 1, b'a', 0, 1],
        DecodeError::InvalidQoS,
    );
    // [MQTT-3.3.1-2] DUP on QoS 0.
    reject(V3_1_1, &[0x38, 3, 0, 1, b'a'], DecodeError::DupOnQoS0);
    // [MQTT-3.3.2-2] wildcards in a topic name, answered with 0x90.
    reject(
        V3_1_1,
        &[0x30, 5, 0, 3, b'a', b'/', b'+'],
        DecodeError::InvalidTopicName,
    );
    reject(V5, &[0x30, 4, 0, 1, b'#', 0], DecodeError::InvalidTopicName);
    assert_eq!(
        DecodeError::InvalidTopicName.reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
    // [MQTT-4.7.3-1] an empty topic name in 3.1.1.
    reject(V3_1_1, &[0x30, 2, 0, 0], DecodeError::InvalidTopicName);
    // [MQTT-3.3.2-1] an empty topic name with no alias in MQTT 5.
    reject(V5, &[0x30, 3, 0, 0, 0], DecodeError::MissingTopic);
    // [MQTT-1.5.4-1] ill-formed UTF-8; [MQTT-1.5.4-2] U+0000.
    reject(
        V3_1_1,
        &[0x30, 4, 0, 2, 0xc3, 0x28],
        DecodeError::InvalidUtf8,
    );
    reject(V3_1_1, &[0x30, 4, 0, 2, b'a', 0], DecodeError::NulInString);
    // With a wildcard too, the packet is still malformed, not only its topic invalid.
    reject(V3_1_1, &[0x30, 4, 0, 2, b'+', 0], DecodeError::NulInString);
    // [MQTT-2.2.1-3] packet identifier 0 on QoS 1.
    reject(
        V3_1_1,
        &[0x32, 5, 0, 1, b'a', 0, 0],
        DecodeError::ZeroPacketId,
    );
    // The topic length runs past the Remaining Length.
    reject(
        V3_1_1,
        &[0x30, 5, 0, 10, b'a', b'b', b'c'],
        DecodeError::Truncated,
    );
    // [MQTT-2.2.2] a property twice: Protocol Error.
    reject(
        V5,
        &[0x30, 14, 0, 1, b't', 10, 2, 0, 0, 0, 1, 2, 0, 0, 0, 2],
        DecodeError::DuplicateProperty(2),
    );
    // [MQTT-2.2.2-2] a property PUBLISH may not carry (Session Expiry Interval): Malformed.
    reject(
        V5,
        &[0x30, 9, 0, 1, b't', 5, 0x11, 0, 0, 0, 1],
        DecodeError::PropertyNotAllowed(0x11),
    );
    // [MQTT-3.3.2-8] Topic Alias 0.
    reject(
        V5,
        &[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0],
        DecodeError::InvalidPropertyValue(0x23),
    );
    // [MQTT-3.3.2-4] payload format says UTF-8 but it is not.
    reject(
        V5,
        &[0x30, 7, 0, 1, b't', 2, 0x01, 1, 0xff],
        DecodeError::PayloadFormatInvalid,
    );
    // A property length that runs past the packet.
    reject(V5, &[0x30, 4, 0, 1, b't', 9], DecodeError::Truncated);
}

#[test]
fn acknowledgements() {
    // Sections 3.4 to 3.7: packet identifier only before MQTT 5.
    let ack = Ack::new(pid(7));
    check(V3_1_1, Packet::PubAck(ack), &[0x40, 2, 0, 7]);
    check(V3_1_1, Packet::PubRec(ack), &[0x50, 2, 0, 7]);
    // [MQTT-3.6.1-1] PUBREL's fixed header flags are 0010.
    check(V3_1_1, Packet::PubRel(ack), &[0x62, 2, 0, 7]);
    check(V3_1_1, Packet::PubComp(ack), &[0x70, 2, 0, 7]);
    // [MQTT-3.4.2-1] MQTT 5 may leave out a Success reason code with no properties.
    check(V5, Packet::PubAck(ack), &[0x40, 2, 0, 7]);
    let nms = Ack {
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..ack
    };
    check(V5, Packet::PubAck(nms), &[0x40, 3, 0, 7, 0x10]);
    // A reason code followed by an empty property block decodes the same.
    check_decode(V5, &[0x40, 4, 0, 7, 0x10, 0], Packet::PubAck(nms));
    let reason = Ack {
        reason: ReasonCode::QUOTA_EXCEEDED,
        properties: Properties {
            reason_string: Some("full"),
            ..Properties::default()
        },
        ..ack
    };
    check(
        V5,
        Packet::PubRec(reason),
        &[0x50, 11, 0, 7, 0x97, 7, 0x1f, 0, 4, b'f', b'u', b'l', b'l'],
    );
    // [MQTT-2.1.3-1] PUBREL with flags 0000.
    reject(
        V3_1_1,
        &[0x60, 2, 0, 7],
        DecodeError::ReservedFlags(PacketType::PubRel),
    );
    // [MQTT-2.2.1-3] packet identifier 0.
    reject(V3_1_1, &[0x40, 2, 0, 0], DecodeError::ZeroPacketId);
    // 3.1.1 acknowledgements have nothing after the identifier.
    reject(V3_1_1, &[0x40, 3, 0, 7, 0], DecodeError::TrailingBytes);
    // A reason code MQTT 5 does not define.
    reject(
        V5,
        &[0x40, 3, 0, 7, 0x03],
        DecodeError::InvalidReasonCode(3),
    );
}

#[test]
fn subscribe_and_suback() {
    // [MQTT-3.8.1-1] flags 0010; one filter with its requested QoS (section 3.8.3).
    let subs = [Subscription {
        filter: filter("a/b"),
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
    }];
    let s = Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: List::Items(&subs),
    };
    check(
        V3_1_1,
        Packet::Subscribe(s),
        &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1],
    );
    // MQTT 5 options: No Local, Retain As Published, Retain Handling (section 3.8.3.1), and a
    // Subscription Identifier.
    let opts = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let subs5 = [Subscription {
        filter: filter("#"),
        options: opts,
    }];
    let ids = [5];
    let s5 = Subscribe {
        packet_id: pid(2),
        properties: Properties {
            subscription_identifiers: SubscriptionIds::List(&ids),
            ..Properties::default()
        },
        subscriptions: List::Items(&subs5),
    };
    check(
        V5,
        Packet::Subscribe(s5),
        &[0x82, 9, 0, 2, 2, 0x0b, 5, 0, 1, b'#', 0x2e],
    );

    // [MQTT-3.9.3-1] SUBACK: one return code per filter; the boards want exactly 90 03 id rc.
    let granted = [ReasonCode::GRANTED_QOS_1];
    let sa = SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        codes: List::Items(&granted),
    };
    check(V3_1_1, Packet::SubAck(sa), &[0x90, 3, 0, 1, 1]);
    // [MQTT-3.9.3-2] 0x80 is the 3.1.1 failure code, whatever the MQTT 5 reason.
    let failed = [ReasonCode::UNSPECIFIED_ERROR];
    check(
        V3_1_1,
        Packet::SubAck(SubAck {
            codes: List::Items(&failed),
            ..sa
        }),
        &[0x90, 3, 0, 1, 0x80],
    );
    let mut out = [0u8; 5];
    let invalid = [ReasonCode::TOPIC_FILTER_INVALID];
    Packet::SubAck(SubAck {
        codes: List::Items(&invalid),
        ..sa
    })
    .encode(V3_1_1, &mut out)
    .unwrap();
    assert_eq!(out, [0x90, 3, 0, 1, 0x80]);
    check(
        V5,
        Packet::SubAck(SubAck {
            codes: List::Items(&invalid),
            ..sa
        }),
        &[0x90, 4, 0, 1, 0, 0x8f],
    );
}

#[test]
fn subscribe_rejections() {
    // [MQTT-2.1.3-1] SUBSCRIBE with flags 0000.
    reject(
        V3_1_1,
        &[0x80, 6, 0, 1, 0, 1, b'a', 0],
        DecodeError::ReservedFlags(PacketType::Subscribe),
    );
    // [MQTT-3.8.3-3] no topic filter: Protocol Error.
    reject(V3_1_1, &[0x82, 2, 0, 1], DecodeError::NoTopicFilters);
    // [MQTT-4.7.1-2] `#` not last; [MQTT-4.7.1-3] `+` sharing a level.
    reject(
        V3_1_1,
        &[0x82, 10, 0, 1, 0, 5, b'a', b'/', b'#', b'/', b'b', 0],
        DecodeError::InvalidTopicFilter,
    );
    reject(
        V3_1_1,
        &[0x82, 7, 0, 1, 0, 2, b'a', b'+', 0],
        DecodeError::InvalidTopicFilter,
    );
    // [MQTT-3.8.3-4] (3.1.1) reserved option bits.
    reject(
        V3_1_1,
        &[0x82, 6, 0, 1, 0, 1, b'a', 0x04],
        DecodeError::InvalidSubscriptionOptions,
    );
    // [MQTT-3.8.3-5] Retain Handling 3, and reserved bits 6-7.
    reject(
        V5,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
        DecodeError::InvalidSubscriptionOptions,
    );
    reject(
        V5,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
        DecodeError::InvalidSubscriptionOptions,
    );
    // QoS 3 requested.
    reject(
        V3_1_1,
        &[0x82, 6, 0, 1, 0, 1, b'a', 3],
        DecodeError::InvalidQoS,
    );
    // [MQTT-3.8.3-4] (5.0) No Local on a shared subscription.
    let mut shared = vec![0x82, 0, 0, 1, 0, 0, 11];
    shared.extend_from_slice(b"$share/g/ab");
    shared.push(0x04);
    shared[1] = (shared.len() - 2) as u8;
    reject(V5, &shared, DecodeError::NoLocalOnSharedSubscription);
    // Two Subscription Identifiers in one SUBSCRIBE.
    reject(
        V5,
        &[0x82, 10, 0, 1, 4, 0x0b, 1, 0x0b, 2, 0, 1, b'a', 0],
        DecodeError::DuplicateProperty(0x0b),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    // [MQTT-3.10.1-1] flags 0010; filters only.
    let filters = [filter("a")];
    let u = Unsubscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        filters: List::Items(&filters),
    };
    check(V3_1_1, Packet::Unsubscribe(u), &[0xa2, 5, 0, 1, 0, 1, b'a']);
    check(V5, Packet::Unsubscribe(u), &[0xa2, 6, 0, 1, 0, 0, 1, b'a']);
    // [MQTT-3.10.3-2] at least one filter.
    reject(V3_1_1, &[0xa2, 2, 0, 1], DecodeError::NoTopicFilters);
    // 3.1.1 UNSUBACK carries only the identifier; MQTT 5 one code per filter.
    let ua = UnsubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        codes: List::Items(&[]),
    };
    check(V3_1_1, Packet::UnsubAck(ua), &[0xb0, 2, 0, 1]);
    let none = [ReasonCode::NO_SUBSCRIPTION_EXISTED];
    check(
        V5,
        Packet::UnsubAck(UnsubAck {
            codes: List::Items(&none),
            ..ua
        }),
        &[0xb0, 4, 0, 1, 0, 0x11],
    );
}

#[test]
fn ping_disconnect_auth() {
    // Sections 3.12, 3.13: no variable header or payload.
    check(V3_1_1, Packet::PingReq, &[0xc0, 0]);
    check(V5, Packet::PingResp, &[0xd0, 0]);
    reject(
        V3_1_1,
        &[0xc1, 0],
        DecodeError::ReservedFlags(PacketType::PingReq),
    );
    reject(V3_1_1, &[0xc0, 1, 0], DecodeError::TrailingBytes);
    // Section 3.14: 3.1.1 DISCONNECT is empty; MQTT 5 may leave out Normal disconnection
    // [MQTT-3.14.2-1].
    check(
        V3_1_1,
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        &[0xe0, 0],
    );
    check(
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        &[0xe0, 0],
    );
    check(
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER)),
        &[0xe0, 1, 0x8e],
    );
    let with_expiry = Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    check(
        V5,
        Packet::Disconnect(with_expiry),
        &[0xe0, 7, 0, 5, 0x11, 0, 0, 0, 0],
    );
    // Section 3.15: AUTH, MQTT 5 only.
    let auth = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("abc"),
            ..Properties::default()
        },
    };
    check(
        V5,
        Packet::Auth(auth),
        &[0xf0, 8, 0x18, 6, 0x15, 0, 3, b'a', b'b', b'c'],
    );
    check(
        V5,
        Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }),
        &[0xf0, 0],
    );
    reject(V3_1_1, &[0xf0, 0], DecodeError::UnknownPacketType(15));
    assert_eq!(
        Packet::Auth(auth).encode(V3_1_1, &mut [0; 16]),
        Err(tern_proto::EncodeError::NotInVersion)
    );
}

#[test]
fn fixed_header_rejections() {
    // [MQTT-2.1.2] packet type 0 is reserved.
    reject(V3_1_1, &[0x00, 0], DecodeError::UnknownPacketType(0));
    // [MQTT-1.5.5-1] a Remaining Length of five bytes, and one not in its shortest form.
    reject(
        V3_1_1,
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
        DecodeError::MalformedVariableByteInteger,
    );
    reject(
        V3_1_1,
        &[0xc0, 0x80, 0x00],
        DecodeError::MalformedVariableByteInteger,
    );
}

#[test]
fn oversized_packet_is_refused_before_its_body_arrives() {
    // [MQTT-3.2.2-15] the receiver's Maximum Packet Size: refuse on the header alone
    // (0x30, Remaining Length 1000), with 0x95 Packet too large.
    let err = decode(&[0x30, 0xe8, 0x07], V5, 100).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 100
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // Exactly the maximum is fine.
    assert_eq!(decode(&[0xc0, 0], V5, 2), Ok(Some((Packet::PingReq, 2))));
}

#[test]
fn consecutive_packets_decode_one_at_a_time() {
    let bytes = [0xc0, 0, 0x40, 2, 0, 7, 0xd0];
    let (first, used) = decode(&bytes, V3_1_1, MAX).unwrap().unwrap();
    assert_eq!((first, used), (Packet::PingReq, 2));
    let (second, used2) = decode(&bytes[used..], V3_1_1, MAX).unwrap().unwrap();
    assert_eq!((second, used2), (Packet::PubAck(Ack::new(pid(7))), 4));
    assert_eq!(decode(&bytes[used + used2..], V3_1_1, MAX), Ok(None));
}

#[test]
fn decode_errors_map_to_reason_codes() {
    // Section 4.13: Malformed Packet vs Protocol Error, and the specific codes.
    let table = [
        (DecodeError::Truncated, ReasonCode::MALFORMED_PACKET),
        (
            DecodeError::ReservedFlags(PacketType::PubRel),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            DecodeError::DuplicateProperty(1),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (DecodeError::NoTopicFilters, ReasonCode::PROTOCOL_ERROR),
        (
            DecodeError::InvalidTopicFilter,
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        (
            DecodeError::PayloadFormatInvalid,
            ReasonCode::PAYLOAD_FORMAT_INVALID,
        ),
        (
            DecodeError::UnknownPacketType(15),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            DecodeError::InvalidProtocolName,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ),
    ];
    for (err, code) in table {
        assert_eq!(err.reason_code(), code, "{err:?}");
    }
}
