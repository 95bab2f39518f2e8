//! What the store keeps across a restart: persistent sessions with their subscriptions,
//! queued and in-flight messages and QoS 2 state, and retained messages (section 4.1: the
//! session state a server keeps). These run on the real clock with the store in `sync` mode;
//! the crash tests (SIGKILL of the real process) are in `tests/interop/test_persistence.py`.

use std::time::Duration;

use tern_proto::{Ack, Packet, ProtocolVersion::*, QoS};

use crate::client::{connect, pid, publish, Raw, TestBroker};

const STORE: &str = "[persistence]\nmode = \"sync\"\n";

/// A 3.1.1 client with Clean Session 0, its CONNACK's Session Present checked.
async fn persistent(broker: &TestBroker, client_id: &str, present: bool) -> Raw {
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(connect(V3_1_1, client_id, false)))
        .await;
    c.expect_connack(present, 0).await;
    c
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscription_and_queue_across_a_restart() {
    // [MQTT-4.1.0-1] the session state of a persistent session must be kept.
    let broker = TestBroker::with_config(STORE).await;
    let mut s = persistent(&broker, "board", false).await;
    s.subscribe("cmd/#", QoS::AtLeastOnce, 1).await;
    drop(s);
    let mut p = broker.connect(V3_1_1, "pub").await;
    for i in 1..=5u16 {
        p.publish("cmd/led", format!("m{i}").as_bytes(), QoS::AtLeastOnce, i)
            .await;
    }
    p.publish("cfg/name", b"kitchen", QoS::AtMostOnce, 0).await;
    let retained = tern_proto::Publish {
        retain: true,
        ..publish("cfg/name", b"kitchen", QoS::AtLeastOnce, 9)
    };
    p.send(&Packet::Publish(retained)).await;
    p.recv(|_| ()).await;
    drop(p);

    let broker = broker.restart().await;
    // The queued messages arrive, in order [MQTT-4.6.0-1]; Session Present is 1.
    let mut s = persistent(&broker, "board", true).await;
    for i in 1..=5 {
        let m = s.expect_publish().await;
        assert_eq!(m.payload, format!("m{i}").as_bytes());
        assert_eq!(m.qos, QoS::AtLeastOnce);
        s.ack(Packet::PubAck(Ack::new(pid(m.packet_id.unwrap()))))
            .await;
    }
    // The subscription survived: a new message reaches it.
    let mut p = broker.connect(V3_1_1, "pub").await;
    p.publish("cmd/led", b"after", QoS::AtLeastOnce, 1).await;
    assert_eq!(s.expect_publish().await.payload, b"after");
    // The retained message survived.
    let mut late = broker.connect(V3_1_1, "late").await;
    late.subscribe("cfg/#", QoS::AtMostOnce, 1).await;
    let m = late.expect_publish().await;
    assert_eq!((m.topic.as_str(), m.retain), ("cfg/name", true));
    assert_eq!(m.payload, b"kitchen");
    // Acknowledged messages are gone for good.
    drop(s);
    let broker = broker.restart().await;
    let mut s = persistent(&broker, "board", true).await;
    let m = s.expect_publish().await;
    assert_eq!(
        m.payload, b"after",
        "only the unacknowledged message is left"
    );
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_resent_with_dup_and_the_same_packet_id() {
    // [MQTT-4.4.0-1] on resuming a session, unacknowledged PUBLISH packets are re-sent with
    // their original packet identifiers; [MQTT-3.3.1-1] DUP is set.
    let broker = TestBroker::with_config(STORE).await;
    let mut s = persistent(&broker, "board", false).await;
    s.subscribe("a", QoS::ExactlyOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "pub").await;
    p.publish("a", b"one", QoS::AtLeastOnce, 1).await;
    p.publish("a", b"two", QoS::ExactlyOnce, 2).await;
    let first = s.expect_publish().await;
    let second = s.expect_publish().await;
    assert_eq!(second.qos, QoS::ExactlyOnce);
    // PUBREC for the second only: it is released, not re-sent; the first is re-sent.
    s.ack(Packet::PubRec(Ack::new(pid(second.packet_id.unwrap()))))
        .await;
    s.recv(|p| assert!(matches!(p, Packet::PubRel(_)), "{p:?}"))
        .await;
    drop(s);
    drop(p);

    let broker = broker.restart().await;
    let mut s = persistent(&broker, "board", true).await;
    let again = s.expect_publish().await;
    assert_eq!(again.payload, b"one");
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    // [MQTT-4.4.0-1] and the PUBREL of the released one.
    let rel = s
        .recv(|p| match p {
            Packet::PubRel(a) => a.packet_id.get(),
            other => panic!("{other:?}"),
        })
        .await;
    assert_eq!(Some(rel), second.packet_id);
    s.ack(Packet::PubComp(Ack::new(pid(rel)))).await;
    s.ack(Packet::PubAck(Ack::new(pid(again.packet_id.unwrap()))))
        .await;
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_qos2_packet_id_received_before_a_restart_is_not_delivered_twice() {
    // [MQTT-4.3.3-10] until PUBREL, a re-sent QoS 2 PUBLISH with the same packet id is not a
    // new message: the broker remembers the id across a restart.
    let broker = TestBroker::with_config(STORE).await;
    let mut s = persistent(&broker, "sub", false).await;
    s.subscribe("x", QoS::AtLeastOnce, 1).await;
    let mut p = persistent(&broker, "pub", false).await;
    p.send(&Packet::Publish(publish("x", b"once", QoS::ExactlyOnce, 7)))
        .await;
    p.recv(|p| assert!(matches!(p, Packet::PubRec(_)), "{p:?}"))
        .await;
    let m = s.expect_publish().await;
    s.ack(Packet::PubAck(Ack::new(pid(m.packet_id.unwrap()))))
        .await;
    // A round trip: the PUBACK was handled before the restart.
    s.send(&Packet::PingReq).await;
    s.recv(|p| assert!(matches!(p, Packet::PingResp), "{p:?}"))
        .await;
    drop(p);
    drop(s);

    let broker = broker.restart().await;
    let mut p = persistent(&broker, "pub", true).await;
    // The publisher did not see PUBCOMP: it sends the PUBLISH again with DUP, then PUBREL.
    let again = tern_proto::Publish {
        dup: true,
        ..publish("x", b"once", QoS::ExactlyOnce, 7)
    };
    p.send(&Packet::Publish(again)).await;
    p.recv(|p| assert!(matches!(p, Packet::PubRec(_)), "{p:?}"))
        .await;
    p.send(&Packet::PubRel(Ack::new(pid(7)))).await;
    p.recv(|p| match p {
        Packet::PubComp(a) => assert_eq!(a.reason.value(), 0, "the id was known"),
        other => panic!("{other:?}"),
    })
    .await;
    let mut s = persistent(&broker, "sub", true).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn clean_sessions_and_expired_sessions_are_not_kept() {
    // [MQTT-3.1.2-6] (3.1.1) a Clean Session ends with its connection; [MQTT-3.1.2-4] Clean
    // Start discards a stored session.
    let broker = TestBroker::with_config(STORE).await;
    let mut clean = broker.connect(V3_1_1, "clean").await;
    clean.subscribe("t", QoS::AtLeastOnce, 1).await;
    let mut s = persistent(&broker, "kept", false).await;
    s.subscribe("t", QoS::AtLeastOnce, 1).await;
    drop(s);
    drop(clean);
    let broker = broker.restart().await;
    let again = persistent(&broker, "clean", false).await;
    let mut s = broker.raw(V3_1_1).await;
    s.send(&Packet::Connect(connect(V3_1_1, "kept", true)))
        .await;
    s.expect_connack(false, 0).await;
    drop(s);
    drop(again);
    let broker = broker.restart().await;
    // Session Present 0: Clean Start discarded the stored session.
    persistent(&broker, "kept", false).await;
}

#[tokio::test]
async fn a_long_offline_queue_leaves_memory_and_is_delivered_from_disk_in_order() {
    // [MQTT-4.6.0-1] ordered delivery, from a queue whose tail was read back from the store.
    let broker = TestBroker::with_config(STORE).await;
    let mut s = persistent(&broker, "away", false).await;
    s.subscribe("q", QoS::AtLeastOnce, 1).await;
    drop(s);
    let mut p = broker.connect(V3_1_1, "pub").await;
    for i in 1..=500u16 {
        p.publish("q", format!("m{i:03}").as_bytes(), QoS::AtLeastOnce, i)
            .await;
    }
    // All but the head the session keeps in memory; the store applies its last frame a moment
    // after the PUBACK, so poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut offloaded = 0;
    while offloaded < 400 && std::time::Instant::now() < deadline {
        offloaded += broker.server.broker.offload();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(offloaded, 400);
    let mut s = persistent(&broker, "away", true).await;
    for i in 1..=500 {
        let m = s.expect_publish().await;
        assert_eq!(m.payload, format!("m{i:03}").as_bytes());
        s.ack(Packet::PubAck(Ack::new(pid(m.packet_id.unwrap()))))
            .await;
    }
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn expired_messages_leave_queues_and_the_retained_store_for_good() {
    // [MQTT-3.3.2-5] an expired message is not delivered; it is also removed from the store.
    let broker = TestBroker::with_config(STORE).await;
    let mut conn = connect(V5, "away", false);
    conn.properties.session_expiry_interval = Some(3600);
    let mut s = broker.raw(V5).await;
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(false, 0).await;
    s.subscribe("exp/#", QoS::AtLeastOnce, 1).await;
    drop(s);
    let mut p = broker.connect(V5, "p").await;
    for (topic, secs, id) in [("exp/short", 1, 1), ("exp/long", 3600, 2)] {
        let m = tern_proto::Publish {
            retain: true,
            properties: tern_proto::Properties {
                message_expiry_interval: Some(secs),
                ..tern_proto::Properties::default()
            },
            ..publish(topic, b"x", QoS::AtLeastOnce, id)
        };
        p.send(&Packet::Publish(m)).await;
        p.recv(|_| ()).await;
    }
    drop(p);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One retained and one queued copy of exp/short are gone.
    let removed = broker
        .server
        .broker
        .expire_messages(std::time::Instant::now());
    assert_eq!(removed, 2);
    assert_eq!(broker.server.broker.retained_count(), 1);
    let broker = broker.restart().await;
    assert_eq!(broker.server.broker.retained_count(), 1);
    let mut s = broker.raw(V5).await;
    s.send(&Packet::Connect(conn)).await;
    s.expect_connack(true, 0).await;
    assert_eq!(s.expect_publish().await.topic, "exp/long");
    s.expect_silence(Duration::from_millis(200)).await;
}
