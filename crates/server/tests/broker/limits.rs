//! Limits: packet size, receive maximum, bounded queues.

use std::time::Duration;

use tern_proto::{Packet, ProtocolVersion::*, QoS};

use crate::client::{publish, TestBroker};

#[tokio::test]
async fn packet_over_the_maximum_is_refused() {
    // [MQTT-3.2.2-15] a packet larger than the broker's Maximum Packet Size: DISCONNECT 0x95.
    let broker = TestBroker::with_config("[limits]\nmax_packet_size = 64\n").await;
    let mut c = broker.connect(V5, "big").await;
    c.send(&Packet::Publish(publish(
        "t",
        &[0; 100],
        QoS::AtMostOnce,
        0,
    )))
    .await;
    c.expect_disconnect(0x95).await;
}

#[tokio::test]
async fn exceeding_receive_maximum_is_disconnected() {
    // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISH than the broker's Receive Maximum: 0x93.
    let broker = TestBroker::with_config("[limits]\nreceive_maximum = 2\n").await;
    let mut c = broker.connect(V5, "greedy").await;
    for id in 1..=3 {
        c.send(&Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, id)))
            .await;
    }
    c.expect_disconnect(0x93).await;
}

#[tokio::test]
async fn qos_above_maximum_is_refused() {
    // [MQTT-3.2.2-11] a PUBLISH above the advertised Maximum QoS: 0x9B.
    let broker = TestBroker::with_config("[limits]\nmaximum_qos = 1\n").await;
    let mut c = broker.connect(V5, "q").await;
    c.send(&Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 1)))
        .await;
    c.expect_disconnect(0x9b).await;
}

#[tokio::test]
async fn slow_subscriber_queue_is_bounded_and_others_are_served() {
    // A subscriber that never reads keeps at most max_queued_messages; the rest are dropped and
    // counted, and a reading subscriber gets everything.
    let broker =
        TestBroker::with_config("[limits]\nmax_queued_messages = 10\nmax_inflight = 5\n").await;
    let mut stuck = broker.connect(V3_1_1, "stuck").await;
    stuck.subscribe("flood", QoS::AtLeastOnce, 1).await;
    let mut fine = broker.connect(V3_1_1, "fine").await;
    fine.subscribe("flood", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    for i in 0..50u16 {
        p.publish("flood", &i.to_be_bytes(), QoS::AtLeastOnce, i + 1)
            .await;
        assert_eq!(fine.expect_publish().await.payload, i.to_be_bytes());
    }
    // 5 in flight to `stuck`, 10 queued, 35 dropped.
    let dropped = broker
        .server
        .broker
        .stats
        .messages_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 35);
    for _ in 0..5 {
        stuck.expect_publish().await;
    }
    stuck.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn queue_is_bounded_in_bytes_too() {
    // max_queued_bytes: payload and topic bytes waiting per session.
    let broker =
        TestBroker::with_config("[limits]\nmax_queued_bytes = 100\nmax_inflight = 1\n").await;
    let mut stuck = broker.connect(V3_1_1, "stuck").await;
    stuck.subscribe("flood", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    for i in 0..5u16 {
        p.publish("flood", &[i as u8; 40], QoS::AtLeastOnce, i + 1)
            .await;
    }
    // 45 bytes each: one in flight, two queued (90 bytes), two dropped.
    let dropped = broker
        .server
        .broker
        .stats
        .messages_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 2);
    for i in 0..3u8 {
        let got = stuck.expect_publish().await;
        assert_eq!(got.payload[0], i);
        stuck
            .ack(Packet::PubAck(tern_proto::Ack::new(crate::client::pid(
                got.packet_id.unwrap(),
            ))))
            .await;
    }
    stuck.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn subscriptions_per_client_are_limited() {
    // max_subscriptions_per_client: SUBACK 0x97 (Quota exceeded) beyond it; 3.1.1 gets 0x80.
    let broker = TestBroker::with_config("[limits]\nmax_subscriptions_per_client = 2\n").await;
    let mut c = broker.connect(V5, "many").await;
    c.subscribe("a", QoS::AtMostOnce, 1).await;
    c.subscribe("b", QoS::AtMostOnce, 2).await;
    c.subscribe("a", QoS::AtLeastOnce, 3).await; // replacing one is not a new one
    let opts = tern_proto::SubscriptionOptions::new(QoS::AtMostOnce);
    c.subscribe_with("c", opts, 4, 0x97).await;
    let mut old = broker.connect(V3_1_1, "old").await;
    old.subscribe("a", QoS::AtMostOnce, 1).await;
    old.subscribe("b", QoS::AtMostOnce, 2).await;
    old.subscribe_with("c", opts, 3, 0x80).await;
}

#[tokio::test]
async fn topics_beyond_the_length_and_depth_limits_are_refused() {
    // max_topic_levels / max_topic_length: a deeper filter gets SUBACK 0x8F, a deeper topic
    // closes the connection with 0x90.
    let broker =
        TestBroker::with_config("[limits]\nmax_topic_levels = 3\nmax_topic_length = 20\n").await;
    let mut c = broker.connect(V5, "deep").await;
    let opts = tern_proto::SubscriptionOptions::new(QoS::AtMostOnce);
    c.subscribe_with("a/b/c/d", opts, 1, 0x8f).await;
    c.subscribe_with("aaaaaaaaaaaaaaaaaaaaaaaa", opts, 2, 0x8f)
        .await;
    c.subscribe("a/b/c", QoS::AtMostOnce, 3).await;
    c.send(&Packet::Publish(publish(
        "a/b/c/d",
        b"x",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    c.expect_disconnect(0x90).await;
}
