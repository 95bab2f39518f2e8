//! Limits: packet size, receive maximum, bounded queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tern_proto::{Ack, Packet, ProtocolVersion::*, QoS};

use crate::client::{pid, publish, Raw, TestBroker};

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
async fn without_flow_control_a_slow_subscriber_queue_is_bounded_and_others_are_served() {
    // A subscriber that never reads keeps at most max_queued_messages; with publishers never
    // held back the rest are dropped and counted, and a reading subscriber gets everything.
    let broker = TestBroker::with_config(
        "[limits]\nmax_queued_messages = 10\nmax_inflight = 5\nslow_subscriber_timeout = 0\n",
    )
    .await;
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
    let broker = TestBroker::with_config(
        "[limits]\nmax_queued_bytes = 100\nmax_inflight = 1\nslow_subscriber_timeout = 0\n",
    )
    .await;
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

fn counter(broker: &TestBroker, pick: fn(&tern_broker::Stats) -> &AtomicU64) -> u64 {
    pick(&broker.server.broker.stats).load(Ordering::Relaxed)
}

fn dropped(broker: &TestBroker) -> u64 {
    counter(broker, |s| &s.messages_dropped)
}

fn held(broker: &TestBroker) -> u64 {
    counter(broker, |s| &s.publishers_held)
}

/// Sends QoS 1 PUBLISH packets `ids` on `topic` without waiting, each carrying its id.
async fn send_all(p: &mut Raw, topic: &str, ids: std::ops::RangeInclusive<u16>) {
    for i in ids {
        p.send(&Packet::Publish(publish(
            topic,
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            i,
        )))
        .await;
    }
}

/// Reads PUBACKs for `ids`, in order.
async fn expect_pubacks(p: &mut Raw, ids: std::ops::RangeInclusive<u16>) {
    for i in ids {
        p.recv(|packet| assert!(matches!(packet, Packet::PubAck(a) if a.packet_id == pid(i))))
            .await;
    }
}

/// Receives `ids` in order as QoS 1 messages and acknowledges each.
async fn receive_and_ack(sub: &mut Raw, ids: std::ops::RangeInclusive<u16>) {
    for i in ids {
        let got = sub.expect_publish().await;
        assert_eq!(got.payload, i.to_be_bytes());
        sub.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
            .await;
    }
}

/// A broker with queues of 10 and windows of 5 (and `extra` limits), a subscriber `sub` on
/// `flood` at QoS 1 holding messages 1 to 5 unacknowledged, and a publisher `p` that sent
/// them: the next 10 messages fill the queue exactly.
async fn full_window(extra: &str) -> (TestBroker, Raw, Raw) {
    let limits = format!("[limits]\nmax_queued_messages = 10\nmax_inflight = 5\n{extra}");
    let broker = TestBroker::with_config(&limits).await;
    let mut sub = broker.connect(V3_1_1, "sub").await;
    sub.subscribe("flood", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    send_all(&mut p, "flood", 1..=5).await;
    expect_pubacks(&mut p, 1..=5).await;
    for i in 1..=5u16 {
        assert_eq!(sub.expect_publish().await.payload, i.to_be_bytes());
    }
    (broker, sub, p)
}

/// Acknowledges the five messages [`full_window`] left in flight.
async fn ack_window(sub: &mut Raw) {
    for id in 1..=5 {
        sub.ack(Packet::PubAck(Ack::new(pid(id)))).await;
    }
}

#[tokio::test]
async fn a_full_queue_holds_its_publishers_back_instead_of_dropping() {
    // Section 4.3.2: with PUBACK the broker takes the message over. A subscriber's full queue
    // must not lose what was acknowledged: the publisher is not read (TCP slows it) until the
    // queue drains, and every message arrives, in order [MQTT-4.6.0-3].
    let (broker, mut slow, mut p) = full_window("").await;
    send_all(&mut p, "flood", 6..=40).await;
    // 10 queued, the 16th beyond the limit: acknowledged, and the publisher held.
    expect_pubacks(&mut p, 6..=16).await;
    p.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(held(&broker), 1);
    ack_window(&mut slow).await;
    receive_and_ack(&mut slow, 6..=40).await;
    expect_pubacks(&mut p, 17..=40).await;
    assert_eq!(dropped(&broker), 0);
    slow.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_subscriber_that_takes_nothing_is_given_up_on() {
    // A subscriber that acknowledges nothing while publishers wait for it for
    // slow_subscriber_timeout: they go on, and what is beyond its limit is dropped and counted.
    let (broker, mut stuck, mut p) = full_window("slow_subscriber_timeout = 1\n").await;
    send_all(&mut p, "flood", 6..=40).await;
    expect_pubacks(&mut p, 6..=40).await;
    assert_eq!(held(&broker), 1);
    assert_eq!(dropped(&broker), 24);
    // Once it takes from its queue again, it gets what its queue held: 10 and the one beyond.
    ack_window(&mut stuck).await;
    receive_and_ack(&mut stuck, 6..=16).await;
    stuck.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_subscriber_leaving_releases_its_publishers() {
    // The queue of a disconnected session does not drain: publishers waiting for it go on.
    let (broker, mut slow, mut p) = full_window("").await;
    send_all(&mut p, "flood", 6..=20).await;
    expect_pubacks(&mut p, 6..=16).await;
    p.expect_silence(Duration::from_secs(1)).await;
    let bye = tern_proto::Disconnect::new(tern_proto::ReasonCode::NORMAL_DISCONNECTION);
    slow.send(&Packet::Disconnect(bye)).await;
    expect_pubacks(&mut p, 17..=20).await;
    assert_eq!(held(&broker), 1);
}

#[tokio::test]
async fn qos0_beyond_a_full_queue_is_dropped_and_the_publisher_not_held() {
    // QoS 0 promises nothing: a full queue drops it (counted) rather than slow its publisher.
    let (broker, _stuck, mut p) = full_window("").await;
    send_all(&mut p, "flood", 6..=15).await;
    expect_pubacks(&mut p, 6..=15).await;
    for i in 0..30u16 {
        p.publish("flood", &i.to_be_bytes(), QoS::AtMostOnce, 0)
            .await;
    }
    // A QoS 1 message after them is answered at once: the publisher was never held.
    p.publish("other", b"x", QoS::AtLeastOnce, 16).await;
    assert_eq!(held(&broker), 0);
    assert_eq!(dropped(&broker), 30);
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
