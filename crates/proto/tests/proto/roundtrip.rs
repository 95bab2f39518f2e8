//! Property tests: any packet, in any version it exists in, encodes and decodes back to
//! itself, and every proper prefix of its bytes is "need more".

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tern_proto::{
    decode, Ack, Auth, ConnAck, Connect, Disconnect, List, Packet, PacketId, Properties,
    PropertyContext as Ctx, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, Subscription, SubscriptionIds, SubscriptionOptions, TopicFilter, TopicName,
    UnsubAck, Unsubscribe, UserProperties, Will,
};

/// Owned material for one property set; masked to what a context allows when viewed.
#[derive(Debug, Clone)]
struct Props {
    ints: (
        Option<u32>,
        Option<u32>,
        Option<u32>,
        Option<u16>,
        Option<u16>,
        Option<u16>,
        Option<u16>,
        Option<u32>,
    ),
    flags: (
        Option<bool>,
        Option<bool>,
        Option<bool>,
        Option<bool>,
        Option<bool>,
        Option<bool>,
        Option<bool>,
    ),
    strings: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    binaries: (Option<Vec<u8>>, Option<Vec<u8>>),
    maximum_qos: Option<bool>,
    user: Vec<(String, String)>,
    sub_ids: Vec<u32>,
}

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,6}"
}

fn topic_text() -> impl Strategy<Value = String> {
    "[a-z0-9/$ ]{1,10}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..8)
}

fn props() -> impl Strategy<Value = Props> {
    let nz16 = || of(1u16..);
    (
        (
            of(any::<u32>()),
            of(any::<u32>()),
            of(any::<u32>()),
            of(any::<u16>()),
            nz16(),
            of(any::<u16>()),
            nz16(),
            of(1u32..),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
        ),
        (
            of(text()),
            of(topic_text()),
            of(text()),
            of(text()),
            of(text()),
            of(text()),
            of(text()),
        ),
        (of(bytes()), of(bytes())),
        of(any::<bool>()),
        vec((text(), text()), 0..3),
        vec(1u32..=268_435_455, 0..3),
    )
        .prop_map(
            |(ints, flags, strings, binaries, maximum_qos, user, sub_ids)| Props {
                ints,
                flags,
                strings,
                binaries,
                maximum_qos,
                user,
                sub_ids,
            },
        )
}

/// The properties `p` holds that `ctx` allows (table 2-4 of section 2.2.2.2).
fn view<'a>(p: &'a Props, ctx: Ctx, pairs: &'a [(&'a str, &'a str)]) -> Properties<'a> {
    let s = |o: &'a Option<String>| o.as_deref();
    let b = |o: &'a Option<Vec<u8>>| o.as_deref();
    let (i, f, st, bi) = (&p.ints, &p.flags, &p.strings, &p.binaries);
    let user = UserProperties::List(pairs);
    let message = |with_ids: bool| Properties {
        // A UTF-8 indicator would constrain the payload; the tables test it.
        payload_format_indicator: f.0.map(|_| false),
        message_expiry_interval: i.0,
        content_type: s(&st.0),
        response_topic: s(&st.1).map(|t| TopicName::new(t).unwrap()),
        correlation_data: b(&bi.0),
        subscription_identifiers: if with_ids {
            SubscriptionIds::List(&p.sub_ids)
        } else {
            SubscriptionIds::default()
        },
        user_properties: user,
        ..Properties::default()
    };
    let reason = Properties {
        reason_string: s(&st.2),
        user_properties: user,
        ..Properties::default()
    };
    match ctx {
        Ctx::Connect => Properties {
            session_expiry_interval: i.1,
            receive_maximum: i.4,
            maximum_packet_size: i.7,
            topic_alias_maximum: i.3,
            request_response_information: f.1,
            request_problem_information: f.2,
            authentication_method: s(&st.3),
            authentication_data: b(&bi.1),
            user_properties: user,
            ..Properties::default()
        },
        Ctx::Will => Properties {
            will_delay_interval: i.2,
            ..message(false)
        },
        Ctx::Publish => Properties {
            topic_alias: i.6,
            ..message(true)
        },
        Ctx::ConnAck => Properties {
            session_expiry_interval: i.1,
            receive_maximum: i.4,
            maximum_qos: p
                .maximum_qos
                .map(|q| if q { QoS::AtLeastOnce } else { QoS::AtMostOnce }),
            retain_available: f.0,
            maximum_packet_size: i.7,
            assigned_client_identifier: s(&st.4),
            topic_alias_maximum: i.3,
            wildcard_subscription_available: f.3,
            subscription_identifier_available: f.4,
            shared_subscription_available: f.5,
            server_keep_alive: i.5,
            response_information: s(&st.5),
            server_reference: s(&st.6),
            authentication_method: s(&st.3),
            authentication_data: b(&bi.1),
            ..reason
        },
        Ctx::Ack | Ctx::SubAck | Ctx::UnsubAck => reason,
        Ctx::Subscribe => Properties {
            subscription_identifiers: SubscriptionIds::List(&p.sub_ids[..p.sub_ids.len().min(1)]),
            user_properties: user,
            ..Properties::default()
        },
        Ctx::Unsubscribe => Properties {
            user_properties: user,
            ..Properties::default()
        },
        Ctx::Disconnect => Properties {
            session_expiry_interval: i.1,
            server_reference: s(&st.6),
            ..reason
        },
        Ctx::Auth => Properties {
            authentication_method: s(&st.3),
            authentication_data: b(&bi.1),
            ..reason
        },
    }
}

#[derive(Debug, Clone)]
enum Spec {
    Connect {
        clean: bool,
        keep_alive: u16,
        client_id: String,
        will: Option<(String, Vec<u8>, u8, bool, Props)>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    },
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        dup: bool,
        qos: u8,
        retain: bool,
        topic: String,
        packet_id: u16,
        payload: Vec<u8>,
    },
    Ack {
        kind: u8,
        packet_id: u16,
        code: u8,
    },
    Subscribe {
        packet_id: u16,
        subs: Vec<(String, u8, bool, bool, u8)>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    Disconnect {
        code: u8,
    },
    Auth {
        code: u8,
    },
}

fn filter_text() -> impl Strategy<Value = String> {
    (
        vec(prop_oneof!["[a-z]{0,3}", Just("+".to_string())], 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(levels, hash, shared)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('e');
            }
            if hash {
                f.push_str("/#");
            }
            if shared {
                f = format!("$share/g/{f}");
            }
            f
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    let id = || 1u16..;
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            "[a-zA-Z0-9]{0,23}",
            of((topic_text(), bytes(), 0u8..3, any::<bool>(), props())),
            of(text()),
            of(bytes())
        )
            .prop_map(|(clean, keep_alive, client_id, will, username, password)| {
                Spec::Connect {
                    clean,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                }
            }),
        (any::<bool>(), any::<u8>()).prop_map(|(session_present, code)| Spec::ConnAck {
            session_present,
            code
        }),
        (
            any::<bool>(),
            0u8..3,
            any::<bool>(),
            topic_text(),
            id(),
            bytes()
        )
            .prop_map(
                |(dup, qos, retain, topic, packet_id, payload)| Spec::Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    packet_id,
                    payload
                }
            ),
        (0u8..4, id(), any::<u8>()).prop_map(|(kind, packet_id, code)| Spec::Ack {
            kind,
            packet_id,
            code
        }),
        (
            id(),
            vec(
                (filter_text(), 0u8..3, any::<bool>(), any::<bool>(), 0u8..3),
                1..4
            )
        )
            .prop_map(|(packet_id, subs)| Spec::Subscribe { packet_id, subs }),
        (id(), vec(any::<u8>(), 0..4))
            .prop_map(|(packet_id, codes)| Spec::SubAck { packet_id, codes }),
        (id(), vec(filter_text(), 1..4))
            .prop_map(|(packet_id, filters)| Spec::Unsubscribe { packet_id, filters }),
        (id(), vec(any::<u8>(), 0..4))
            .prop_map(|(packet_id, codes)| Spec::UnsubAck { packet_id, codes }),
        Just(Spec::PingReq),
        Just(Spec::PingResp),
        any::<u8>().prop_map(|code| Spec::Disconnect { code }),
        any::<u8>().prop_map(|code| Spec::Auth { code }),
    ]
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

/// A reason code `raw` stands for in `version`: any defined code in MQTT 5, Success before.
fn reason(raw: u8, version: ProtocolVersion) -> ReasonCode {
    if version.is_v5() {
        ReasonCode::from_u8(raw).unwrap_or(ReasonCode::SUCCESS)
    } else {
        ReasonCode::SUCCESS
    }
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap()
}

/// Builds the borrowed packet `spec` describes and runs `f` on it.
fn with_packet(version: ProtocolVersion, spec: &Spec, p: &Props, f: impl FnOnce(Packet<'_>)) {
    let pairs: Vec<(&str, &str)> = p
        .user
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let v5 = version.is_v5();
    let props = |ctx| {
        if v5 {
            view(p, ctx, &pairs)
        } else {
            Properties::default()
        }
    };
    let pid = |n: u16| PacketId::new(n).unwrap();
    match spec {
        Spec::Connect {
            clean,
            keep_alive,
            client_id,
            will,
            username,
            password,
        } => {
            let will_pairs: Vec<(&str, &str)> = will
                .iter()
                .flat_map(|w| w.4.user.iter())
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let will = will.as_ref().map(|(t, payload, q, retain, wp)| Will {
                topic: TopicName::new(t).unwrap(),
                payload,
                qos: qos(*q),
                retain: *retain,
                properties: if v5 {
                    view(wp, Ctx::Will, &will_pairs)
                } else {
                    Properties::default()
                },
            });
            // Before MQTT 5 a password needs a user name [MQTT-3.1.2-22].
            let password = if v5 || username.is_some() {
                password.as_deref()
            } else {
                None
            };
            f(Packet::Connect(Connect {
                version,
                clean_start: *clean,
                keep_alive: *keep_alive,
                properties: props(Ctx::Connect),
                client_id,
                will,
                username: username.as_deref(),
                password,
            }))
        }
        Spec::ConnAck {
            session_present,
            code,
        } => {
            let code = if v5 {
                reason(*code, version)
            } else {
                ReasonCode::from_v3_connack(code % 6).unwrap()
            };
            let session_present = *session_present && version != ProtocolVersion::V3_1;
            f(Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties: props(Ctx::ConnAck),
            }))
        }
        Spec::Publish {
            dup,
            qos: q,
            retain,
            topic,
            packet_id,
            payload,
        } => {
            let qos = qos(*q);
            let packet_id = (qos != QoS::AtMostOnce).then(|| pid(*packet_id));
            f(Packet::Publish(Publish {
                dup: *dup && qos != QoS::AtMostOnce,
                qos,
                retain: *retain,
                topic: TopicName::new(topic).unwrap(),
                packet_id,
                properties: props(Ctx::Publish),
                payload,
            }))
        }
        Spec::Ack {
            kind,
            packet_id,
            code,
        } => {
            let ack = Ack {
                packet_id: pid(*packet_id),
                reason: reason(*code, version),
                properties: props(Ctx::Ack),
            };
            f(match kind {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            })
        }
        Spec::Subscribe { packet_id, subs } => {
            let subs: Vec<Subscription<'_>> = subs
                .iter()
                .map(|(filter, q, no_local, rap, rh)| {
                    let filter = TopicFilter::new(filter).unwrap();
                    let options = if v5 {
                        SubscriptionOptions {
                            qos: qos(*q),
                            // [MQTT-3.8.3-4] not on a shared subscription.
                            no_local: *no_local && filter.shared().is_none(),
                            retain_as_published: *rap,
                            retain_handling: [
                                RetainHandling::SendAtSubscribe,
                                RetainHandling::SendIfNew,
                                RetainHandling::DoNotSend,
                            ][*rh as usize],
                        }
                    } else {
                        SubscriptionOptions::new(qos(*q))
                    };
                    Subscription { filter, options }
                })
                .collect();
            f(Packet::Subscribe(Subscribe {
                packet_id: pid(*packet_id),
                properties: props(Ctx::Subscribe),
                subscriptions: List::Items(&subs),
            }))
        }
        Spec::SubAck { packet_id, codes } => {
            let codes: Vec<ReasonCode> = codes
                .iter()
                .map(|&c| {
                    if v5 {
                        reason(c, version)
                    } else {
                        [
                            ReasonCode::GRANTED_QOS_0,
                            ReasonCode::GRANTED_QOS_1,
                            ReasonCode::GRANTED_QOS_2,
                            ReasonCode::UNSPECIFIED_ERROR,
                        ][c as usize % 4]
                    }
                })
                .collect();
            f(Packet::SubAck(SubAck {
                packet_id: pid(*packet_id),
                properties: props(Ctx::SubAck),
                codes: List::Items(&codes),
            }))
        }
        Spec::Unsubscribe { packet_id, filters } => {
            let filters: Vec<TopicFilter<'_>> = filters
                .iter()
                .map(|s| TopicFilter::new(s).unwrap())
                .collect();
            f(Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(*packet_id),
                properties: props(Ctx::Unsubscribe),
                filters: List::Items(&filters),
            }))
        }
        Spec::UnsubAck { packet_id, codes } => {
            let codes: Vec<ReasonCode> = if v5 {
                codes.iter().map(|&c| reason(c, version)).collect()
            } else {
                Vec::new()
            };
            f(Packet::UnsubAck(UnsubAck {
                packet_id: pid(*packet_id),
                properties: props(Ctx::UnsubAck),
                codes: List::Items(&codes),
            }))
        }
        Spec::PingReq => f(Packet::PingReq),
        Spec::PingResp => f(Packet::PingResp),
        Spec::Disconnect { code } => f(Packet::Disconnect(Disconnect {
            reason: reason(*code, version),
            properties: props(Ctx::Disconnect),
        })),
        Spec::Auth { code } => {
            // AUTH exists only in MQTT 5.
            if v5 {
                f(Packet::Auth(Auth {
                    reason: reason(*code, version),
                    properties: props(Ctx::Auth),
                }))
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(version in version(), spec in spec(), p in props()) {
        with_packet(version, &spec, &p, |packet| {
            let len = packet.encoded_len(version).unwrap();
            let mut out = vec![0u8; len];
            assert_eq!(packet.encode(version, &mut out), Ok(len));
            assert_eq!(decode(&out, version, u32::MAX), Ok(Some((packet, len))));
            // Split at every byte boundary: every proper prefix asks for more.
            for cut in 0..len {
                assert_eq!(decode(&out[..cut], version, u32::MAX), Ok(None));
            }
            // A buffer one byte short is refused, never overrun.
            if len > 0 {
                assert_eq!(packet.encode(version, &mut out[..len - 1]), Err(tern_proto::EncodeError::BufferTooSmall));
            }
        });
    }

    /// A stored message's PUBLISH, encoded from its properties' block, is byte for byte the
    /// PUBLISH encoded from the decoded properties.
    #[cfg(feature = "alloc")]
    #[test]
    fn a_stored_publish_encodes_as_the_packet(
        version in version(),
        p in props(),
        topic in topic_text(),
        payload in bytes(),
        (q, dup, retain, id) in (0u8..3, any::<bool>(), any::<bool>(), 1u16..),
    ) {
        let pairs: Vec<(&str, &str)> = p.user.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let properties = view(&p, Ctx::Publish, &pairs);
        let block = tern_proto::PropertiesBuf::new(&properties).unwrap();
        let qos = qos(q);
        let packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(id).unwrap());
        let stored = tern_proto::StoredPublish {
            dup, qos, retain, topic: &topic, packet_id, properties: &block, payload: &payload,
        };
        let packet = Packet::Publish(Publish {
            dup, qos, retain, topic: TopicName::new(&topic).unwrap(), packet_id,
            properties: block.get(Ctx::Publish), payload: &payload,
        });
        let mut out = vec![7u8];
        stored.append_to(version, &mut out).unwrap();
        prop_assert_eq!(&out[1..], &packet.encode_to_vec(version).unwrap()[..]);
        prop_assert_eq!(stored.encoded_len(version).unwrap(), out.len() - 1);
    }

    #[test]
    fn decode_never_panics(version in version(), bytes in vec(any::<u8>(), 0..64)) {
        // Any outcome is fine; a panic is not. Whatever decodes re-encodes and decodes the same.
        if let Ok(Some((packet, _))) = decode(&bytes, version, u32::MAX) {
            let v = match packet { Packet::Connect(c) => c.version, _ => version };
            if let Ok(len) = packet.encoded_len(v) {
                let mut out = vec![0u8; len];
                packet.encode(v, &mut out).unwrap();
                let (again, _) = decode(&out, v, u32::MAX).unwrap().unwrap();
                assert_eq!(again, packet);
            }
        }
    }
}
