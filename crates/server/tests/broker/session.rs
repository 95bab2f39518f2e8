//! Persistent sessions: subscriptions and messages kept for an offline client, redelivery.

use std::time::Duration;

use tern_proto::{Ack, Packet, Properties, ProtocolVersion::*, QoS};

use crate::client::{connect, pid, publish, TestBroker};

#[tokio::test]
async fn offline_messages_wait_for_a_persistent_session() {
    // [MQTT-3.1.2-4] (3.1.1) Clean Session 0 resumes the session; [MQTT-3.2.2-2] Session
    // Present 1; [MQTT-3.1.2-5] QoS 1 and 2 messages are kept while it is away.
    for version in [V3_1_1, V5] {
        let broker = TestBroker::start().await;
        let mut conn = connect(version, "keeper", false);
        if version.is_v5() {
            conn.properties = Properties {
                session_expiry_interval: Some(300),
                ..Properties::default()
            };
        }
        let mut c = broker.raw(version).await;
        c.send(&Packet::Connect(conn)).await;
        c.expect_connack(false, 0).await;
        c.subscribe("inbox", QoS::AtLeastOnce, 1).await;
        drop(c);

        let mut p = broker.connect(version, "p").await;
        for i in 0..3u8 {
            p.publish("inbox", &[i], QoS::AtLeastOnce, u16::from(i) + 1)
                .await;
        }
        let mut c = broker.raw(version).await;
        c.send(&Packet::Connect(conn)).await;
        c.expect_connack(true, 0).await;
        for i in 0..3u8 {
            let got = c.expect_publish().await;
            assert_eq!(got.payload, [i], "{version}");
            c.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
                .await;
        }
    }
}

#[tokio::test]
async fn a_backlog_larger_than_one_write_arrives_whole_and_in_order() {
    // [MQTT-4.6.0-6] order, and nothing lost, when a resumed session's queue holds more than
    // one turn sends (a turn takes 64 KiB from the queue; the rest follows by itself, with
    // nothing new published).
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(connect(V3_1_1, "behind", false)))
        .await;
    c.expect_connack(false, 0).await;
    c.subscribe("backlog", QoS::AtMostOnce, 1).await;
    c.send(&Packet::Disconnect(tern_proto::Disconnect::new(
        tern_proto::ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    c.expect_closed().await;

    let mut p = broker.connect(V3_1_1, "p").await;
    let body = |i: u16| {
        let mut b = vec![b'.'; 1000];
        b[..2].copy_from_slice(&i.to_be_bytes());
        b
    };
    for i in 0..299u16 {
        p.send(&Packet::Publish(publish(
            "backlog",
            &body(i),
            QoS::AtMostOnce,
            0,
        )))
        .await;
    }
    // The last at QoS 1: its PUBACK says every one before it was routed.
    p.publish("backlog", &body(299), QoS::AtLeastOnce, 1).await;

    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(connect(V3_1_1, "behind", false)))
        .await;
    c.expect_connack(true, 0).await;
    for i in 0..300u16 {
        assert_eq!(c.expect_publish().await.payload, body(i), "message {i}");
    }
    c.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup() {
    // [MQTT-4.4.0-1] on resuming a session, unacknowledged PUBLISH packets are resent with the
    // same packet id and DUP set [MQTT-3.3.1-1].
    let broker = TestBroker::start().await;
    let conn = connect(V3_1_1, "forgetful", false);
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(false, 0).await;
    c.subscribe("q", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    p.publish("q", b"m", QoS::AtLeastOnce, 1).await;
    let first = c.expect_publish().await;
    assert!(!first.dup);
    drop(c);
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(true, 0).await;
    let again = c.expect_publish().await;
    assert_eq!(
        (again.dup, again.packet_id, again.payload.as_slice()),
        (true, first.packet_id, &b"m"[..])
    );
}

#[tokio::test]
async fn clean_start_discards_the_session() {
    // [MQTT-3.1.2-6] (3.1.1) Clean Session 1 starts a new session: no subscriptions left.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(connect(V3_1_1, "c", false))).await;
    c.expect_connack(false, 0).await;
    c.subscribe("gone", QoS::AtMostOnce, 1).await;
    drop(c);
    let mut c = broker.connect(V3_1_1, "c").await;
    let mut p = broker.connect(V3_1_1, "p").await;
    p.publish("gone", b"x", QoS::AtMostOnce, 0).await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn v5_session_without_expiry_ends_with_the_connection() {
    // [MQTT-3.1.2-23] Session Expiry Interval absent (0): the session ends with the connection.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(connect(V5, "brief", false))).await;
    c.expect_connack(false, 0).await;
    c.subscribe("x", QoS::AtMostOnce, 1).await;
    drop(c);
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(connect(V5, "brief", false))).await;
    c.expect_connack(false, 0).await;
}

#[tokio::test]
async fn qos2_in_flight_to_subscriber_survives_reconnect_as_pubrel() {
    // [MQTT-4.4.0-1] after PUBREC, a resumed session resends PUBREL, not the PUBLISH.
    let broker = TestBroker::start().await;
    let conn = connect(V3_1_1, "q2", false);
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(false, 0).await;
    c.subscribe("q2", QoS::ExactlyOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    p.publish("q2", b"m", QoS::ExactlyOnce, 1).await;
    let got = c.expect_publish().await;
    let id = pid(got.packet_id.unwrap());
    c.ack(Packet::PubRec(Ack::new(id))).await;
    c.recv(|x| assert!(matches!(x, Packet::PubRel(_)))).await;
    drop(c);
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(true, 0).await;
    c.recv(|x| assert!(matches!(x, Packet::PubRel(a) if a.packet_id == id), "{x:?}"))
        .await;
    c.ack(Packet::PubComp(Ack::new(id))).await;
    c.expect_silence(Duration::from_millis(200)).await;
}
