//! SUBSCRIBE, UNSUBSCRIBE, wildcards and shared subscriptions.

use std::time::Duration;

use tern_proto::{List, Packet, Properties, ProtocolVersion::*, QoS, TopicFilter, Unsubscribe};

use crate::client::{pid, TestBroker};

#[tokio::test]
async fn wildcards_match_as_specified() {
    // Section 4.7.1: `+` one level, `#` this level and below.
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V3_1_1, "s").await;
    s.subscribe("sport/+/player1", QoS::AtMostOnce, 1).await;
    s.subscribe("news/#", QoS::AtMostOnce, 2).await;
    let mut p = broker.connect(V3_1_1, "p").await;
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player2",
        "news",
        "news/a/b",
        "other",
    ] {
        p.publish(topic, b"x", QoS::AtMostOnce, 0).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.expect_publish().await.topic);
    }
    assert_eq!(got, ["sport/tennis/player1", "news", "news/a/b"]);
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    // [MQTT-3.10.4-1] the subscription is deleted; [MQTT-3.10.4-4] UNSUBACK with the same id;
    // MQTT 5 reports 0x11 for a filter that was not subscribed [MQTT-3.11.3-1].
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V5, "s").await;
    s.subscribe("u", QoS::AtMostOnce, 1).await;
    let filters = [
        TopicFilter::new("u").unwrap(),
        TopicFilter::new("never").unwrap(),
    ];
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        properties: Properties::default(),
        filters: List::Items(&filters),
    }))
    .await;
    s.expect_bytes(&[0xb0, 5, 0, 2, 0, 0x00, 0x11]).await;
    let mut p = broker.connect(V5, "p").await;
    p.publish("u", b"x", QoS::AtMostOnce, 0).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // 3.1.1 UNSUBACK is just the id.
    let mut s = broker.connect(V3_1_1, "s311").await;
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(3),
        properties: Properties::default(),
        filters: List::Items(&filters[..1]),
    }))
    .await;
    s.expect_bytes(&[0xb0, 2, 0, 3]).await;
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    // [MQTT-4.8.2-3] each message to one member of the group; round robin spreads them.
    let broker = TestBroker::start().await;
    let mut a = broker.connect(V5, "a").await;
    let mut b = broker.connect(V5, "b").await;
    a.subscribe("$share/g/jobs/+", QoS::AtMostOnce, 1).await;
    b.subscribe("$share/g/jobs/+", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    for i in 0..4u8 {
        p.publish("jobs/x", &[i], QoS::AtMostOnce, 0).await;
    }
    let mut got: Vec<u8> = Vec::new();
    for _ in 0..2 {
        got.extend(a.expect_publish().await.payload);
        got.extend(b.expect_publish().await.payload);
    }
    got.sort();
    assert_eq!(got, [0, 1, 2, 3]);
    a.expect_silence(Duration::from_millis(100)).await;
    b.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn invalid_filter_closes_the_connection() {
    // [MQTT-4.7.1-2] `#` not last: MQTT 5 gets DISCONNECT 0x8F.
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V5, "s").await;
    s.send_bytes(&[0x82, 9, 0, 1, 0, 0, 3, b'#', b'/', b'a', 0])
        .await;
    s.expect_disconnect(0x8f).await;
}

#[tokio::test]
async fn shared_messages_move_to_another_member_when_one_leaves() {
    // Section 4.8.2: QoS 1 messages a member received through the share and did not
    // acknowledge go to another member when it disconnects.
    let broker = TestBroker::start().await;
    let mut a = broker.connect(V5, "a").await;
    a.subscribe("$share/g/work", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    p.publish("work", b"job", QoS::AtLeastOnce, 1).await;
    assert_eq!(a.expect_publish().await.payload, b"job"); // never acknowledged
    let mut b = broker.connect(V5, "b").await;
    b.subscribe("$share/g/work", QoS::AtLeastOnce, 1).await;
    drop(a);
    let got = b.expect_publish().await;
    assert_eq!(
        (got.payload.as_slice(), got.qos),
        (&b"job"[..], QoS::AtLeastOnce)
    );
}
