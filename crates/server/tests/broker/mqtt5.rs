//! MQTT 5 features: properties passed through, aliases toward clients, flow control, expiry
//! of messages, sessions and will delays (on a paused clock).

use std::time::Duration;

use tern_proto::{
    Ack, Packet, Properties, ProtocolVersion::*, Publish, QoS, ReasonCode, TopicName,
    UserProperties, Will,
};

use crate::client::{connect, pid, publish, TestBroker};

#[tokio::test]
async fn request_response_and_user_properties_pass_through() {
    // [MQTT-3.3.2-15] Response Topic, [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17]
    // [MQTT-3.3.2-18] User Properties in order, Content Type [MQTT-3.3.2-20] and the Payload
    // Format Indicator [MQTT-3.3.2-4] reach the subscriber unaltered.
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V5, "responder").await;
    s.subscribe("req", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "requester").await;
    let users = [("a", "1"), ("b", "2"), ("a", "3")];
    let request = Publish {
        properties: Properties {
            response_topic: Some(TopicName::new("resp/requester").unwrap()),
            correlation_data: Some(b"id-7"),
            content_type: Some("text/plain"),
            payload_format_indicator: Some(true),
            user_properties: UserProperties::List(&users),
            ..Properties::default()
        },
        ..publish("req", b"ping", QoS::AtMostOnce, 0)
    };
    p.send(&Packet::Publish(request)).await;
    s.recv(|packet| {
        let Packet::Publish(got) = packet else {
            panic!("{packet:?}")
        };
        let props = got.properties;
        assert_eq!(
            props.response_topic.map(|t| t.as_str()),
            Some("resp/requester")
        );
        assert_eq!(props.correlation_data, Some(&b"id-7"[..]));
        assert_eq!(props.content_type, Some("text/plain"));
        assert_eq!(props.payload_format_indicator, Some(true));
        assert!(props.user_properties.iter().eq(users));
    })
    .await;
}

#[tokio::test]
async fn response_information_when_requested() {
    // [MQTT-3.1.2-28] Response Information only if the client asked for it.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V5).await;
    let mut conn = connect(V5, "asker", true);
    conn.properties.request_response_information = Some(true);
    c.send(&Packet::Connect(conn)).await;
    c.recv(|p| {
        let Packet::ConnAck(a) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            a.properties.response_information,
            Some("tern/response/asker")
        );
    })
    .await;
}

#[tokio::test]
async fn broker_uses_topic_aliases_toward_clients_that_allow_them() {
    // Section 3.3.2.3.4: the first message on a topic sets the alias, later ones use it with an
    // empty topic; never more aliases than the client's Topic Alias Maximum [MQTT-3.3.2-10].
    let broker = TestBroker::start().await;
    let mut s = broker.raw(V5).await;
    let mut conn = connect(V5, "aliased", true);
    conn.properties.topic_alias_maximum = Some(1);
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(false, 0).await;
    s.subscribe("al/#", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    for topic in ["al/a", "al/a", "al/b"] {
        p.publish(topic, b"x", QoS::AtMostOnce, 0).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            s.recv(|p| match p {
                Packet::Publish(p) => (p.topic.as_str().to_owned(), p.properties.topic_alias),
                other => panic!("{other:?}"),
            })
            .await,
        );
    }
    assert_eq!(
        seen,
        [
            ("al/a".to_owned(), Some(1)),
            (String::new(), Some(1)),
            ("al/b".to_owned(), None)
        ]
    );
}

#[tokio::test]
async fn client_receive_maximum_limits_messages_in_flight() {
    // [MQTT-3.3.4-7] no more unacknowledged QoS 1/2 PUBLISH than the client's Receive Maximum.
    let broker = TestBroker::start().await;
    let mut s = broker.raw(V5).await;
    let mut conn = connect(V5, "narrow", true);
    conn.properties.receive_maximum = Some(2);
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(false, 0).await;
    s.subscribe("rm", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    for i in 0..5u16 {
        p.publish("rm", &[i as u8], QoS::AtLeastOnce, i + 1).await;
    }
    let first = s.expect_publish().await;
    let second = s.expect_publish().await;
    s.expect_silence(Duration::from_millis(200)).await;
    s.ack(Packet::PubAck(Ack::new(pid(first.packet_id.unwrap()))))
        .await;
    assert_eq!(s.expect_publish().await.payload, [2]);
    s.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(second.payload, [1]);
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    // [MQTT-3.1.2-25] a message larger than the client's Maximum Packet Size is not sent to it.
    let broker = TestBroker::start().await;
    let mut s = broker.raw(V5).await;
    let mut conn = connect(V5, "small", true);
    conn.properties.maximum_packet_size = Some(64);
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(false, 0).await;
    s.subscribe("size", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    p.publish("size", &[7; 100], QoS::AtMostOnce, 0).await;
    p.publish("size", b"fits", QoS::AtMostOnce, 0).await;
    assert_eq!(s.expect_publish().await.payload, b"fits");

    // Retained messages, sent first to a subscriber without a limit: the later subscriber
    // is sent the encodings made for it, and the size is checked on that path too.
    for (id, topic, payload) in [(1, "kept/big", &[7; 100][..]), (2, "kept/fits", b"fits")] {
        let mut retained = publish(topic, payload, QoS::AtLeastOnce, id);
        retained.retain = true;
        p.send(&Packet::Publish(retained)).await;
        p.recv(|x| {
            assert!(
                matches!(x, Packet::PubAck(a) if a.packet_id == pid(id)),
                "{x:?}"
            )
        })
        .await;
    }
    let mut large = broker.connect(V5, "large").await;
    large.subscribe("kept/#", QoS::AtMostOnce, 1).await;
    let mut got =
        [large.expect_publish().await, large.expect_publish().await].map(|m| m.payload.len());
    got.sort();
    assert_eq!(got, [4, 100]);
    s.subscribe("kept/#", QoS::AtMostOnce, 2).await;
    assert_eq!(s.expect_publish().await.payload, b"fits");
    s.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn server_keep_alive_caps_the_client() {
    // [MQTT-3.2.2-21] [MQTT-3.2.2-22] the broker's maximum keep alive replaces the client's.
    let broker = TestBroker::with_config("[limits]\nmax_keep_alive = 30\n").await;
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(connect(V5, "lazy", true))).await; // asks for 60
    c.recv(|p| {
        let Packet::ConnAck(a) = p else {
            panic!("{p:?}")
        };
        assert_eq!(a.properties.server_keep_alive, Some(30));
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_refused() {
    // CONNACK 0x89 Server busy (3.1.1: 0x03 Server unavailable) past max_connections.
    let broker = TestBroker::with_config("[limits]\nmax_connections = 1\n").await;
    let _first = broker.connect(V5, "one").await;
    let mut second = broker.raw(V5).await;
    second
        .send(&Packet::Connect(connect(V5, "two", true)))
        .await;
    second.expect_connack(false, 0x89).await;
    let mut third = broker.raw(V3_1_1).await;
    third
        .send(&Packet::Connect(connect(V3_1_1, "three", true)))
        .await;
    third.expect_bytes(&[0x20, 2, 0, 3]).await;
}

#[tokio::test(start_paused = true)]
async fn messages_expire_in_queues_and_in_the_retained_store() {
    // [MQTT-3.3.2-5] an expired message is not delivered; [MQTT-3.3.2-6] the subscriber gets
    // the remaining interval.
    let broker = TestBroker::start().await;
    let mut conn = connect(V5, "away", false);
    conn.properties.session_expiry_interval = Some(3600);
    let mut s = broker.raw(V5).await;
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(false, 0).await;
    s.subscribe("exp/#", QoS::AtLeastOnce, 1).await;
    drop(s);
    let mut p = broker.connect(V5, "p").await;
    for (topic, secs) in [("exp/short", 5), ("exp/long", 100)] {
        let m = Publish {
            retain: true,
            properties: Properties {
                message_expiry_interval: Some(secs),
                ..Properties::default()
            },
            ..publish(topic, b"x", QoS::AtLeastOnce, secs as u16)
        };
        p.send(&Packet::Publish(m)).await;
        p.recv(|_| ()).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut s = broker.raw(V5).await;
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(true, 0).await;
    let got = s
        .recv(|p| match p {
            Packet::Publish(p) => (
                p.topic.as_str().to_owned(),
                p.properties.message_expiry_interval,
            ),
            other => panic!("{other:?}"),
        })
        .await;
    assert_eq!(got, ("exp/long".to_owned(), Some(90)));
    // The retained store forgets the expired one too.
    let mut late = broker.connect(V5, "late").await;
    late.subscribe("exp/#", QoS::AtMostOnce, 1).await;
    assert_eq!(late.expect_publish().await.topic, "exp/long");
    late.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn session_expires_after_its_interval() {
    // [MQTT-3.1.2-23] the session is kept for Session Expiry Interval seconds after the
    // connection closes, then discarded.
    let broker = TestBroker::start().await;
    let mut conn = connect(V5, "brief", false);
    conn.properties.session_expiry_interval = Some(10);
    for (wait, present) in [(5, true), (11, false)] {
        let mut c = broker.raw(V5).await;
        c.send(&Packet::Connect(conn)).await;
        c.expect_connack(false, 0).await;
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let mut c = broker.raw(V5).await;
        c.send(&Packet::Connect(conn)).await;
        c.expect_connack(present, 0).await;
        c.send(&Packet::Disconnect(tern_proto::Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
        c.expect_closed().await;
        // Start each round from no session.
        let mut clean = broker.raw(V5).await;
        clean
            .send(&Packet::Connect(connect(V5, "brief", true)))
            .await;
        clean.expect_connack(false, 0).await;
        drop(clean);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn will_delay_waits_and_is_cancelled_by_reconnecting() {
    // [MQTT-3.1.3-9] the will is published after the Will Delay Interval, unless the session
    // is resumed before.
    let broker = TestBroker::start().await;
    let mut watcher = broker.connect(V5, "watcher").await;
    watcher.subscribe("wd/#", QoS::AtMostOnce, 1).await;
    let mut conn = connect(V5, "flaky", false);
    conn.properties.session_expiry_interval = Some(600);
    conn.will = Some(Will {
        topic: TopicName::new("wd/flaky").unwrap(),
        payload: b"gone",
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(30),
            ..Properties::default()
        },
    });
    // Dropped and back within the delay: no will.
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(false, 0).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(true, 0).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    watcher.send(&Packet::PingReq).await;
    watcher.recv(|p| assert_eq!(p, Packet::PingResp)).await;
    // Dropped for good: the will comes after 30 s, not before.
    drop(c);
    tokio::time::sleep(Duration::from_secs(29)).await;
    watcher.send(&Packet::PingReq).await;
    watcher.recv(|p| assert_eq!(p, Packet::PingResp)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(watcher.expect_publish().await.topic, "wd/flaky");
}
