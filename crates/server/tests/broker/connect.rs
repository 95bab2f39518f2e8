//! CONNECT, CONNACK, DISCONNECT, keep alive, takeover and wills.

use std::time::Duration;

use tern_proto::{
    Disconnect, Packet, Properties, ProtocolVersion::*, QoS, ReasonCode, TopicName, Will,
};

use crate::client::{connect, TestBroker};

#[tokio::test]
async fn v311_connack_is_exactly_four_bytes() {
    // [MQTT-3.2.0-1] CONNACK is the first packet from the server; [MQTT-3.2.2-3] a new session
    // has Session Present 0; 3.1.1 CONNACK has no properties: `20 02 00 00`.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
    ])
    .await;
    c.expect_bytes(&[0x20, 0x02, 0x00, 0x00]).await;
}

#[tokio::test]
async fn v31_client_connects() {
    // MQTT 3.1: protocol name MQIsdp, level 3.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1).await;
    c.send_bytes(&[
        0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
    ])
    .await;
    c.expect_bytes(&[0x20, 0x02, 0x00, 0x00]).await;
}

#[tokio::test]
async fn v5_connack_advertises_limits_and_assigns_an_identifier() {
    // [MQTT-3.1.3-6] [MQTT-3.2.2-16] an empty client id is assigned one, returned in CONNACK.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(connect(V5, "", true))).await;
    c.recv(|p| {
        let Packet::ConnAck(a) = p else {
            panic!("{p:?}")
        };
        assert_eq!(a.code, ReasonCode::SUCCESS);
        let id = a
            .properties
            .assigned_client_identifier
            .expect("assigned id");
        assert!(id.starts_with("tern-"));
        assert_eq!(a.properties.receive_maximum, Some(100));
        assert_eq!(a.properties.topic_alias_maximum, Some(64));
        assert_eq!(a.properties.maximum_packet_size, Some(1024 * 1024));
    })
    .await;
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_refused_in_311() {
    // [MQTT-3.1.3-8] CONNACK return code 0x02, then close.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::Connect(connect(V3_1_1, "", false))).await;
    c.expect_bytes(&[0x20, 2, 0, 2]).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused() {
    // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol version), then close.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 2, 0x02, 0, 60, 0, 1, b'c',
    ])
    .await;
    c.expect_bytes(&[0x20, 2, 0, 1]).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1] anything else first closes the connection.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V3_1_1).await;
    c.send(&Packet::PingReq).await;
    assert!(c.expect_closed().await.is_empty());
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-2] a second CONNECT: MQTT 5 gets DISCONNECT 0x82, then close.
    let broker = TestBroker::start().await;
    let mut c = broker.connect(V5, "twice").await;
    c.send(&Packet::Connect(connect(V5, "twice", true))).await;
    c.expect_disconnect(0x82).await;
}

#[tokio::test]
async fn malformed_packet_closes_with_reason() {
    // [MQTT-4.13.1-1] a Malformed Packet: DISCONNECT 0x81, then close. Here PUBREL with the
    // wrong fixed-header flags [MQTT-3.6.1-1].
    let broker = TestBroker::start().await;
    let mut c = broker.connect(V5, "bad").await;
    c.send_bytes(&[0x60, 2, 0, 1]).await;
    c.expect_disconnect(0x81).await;
    // [MQTT-3.3.2-2] a wildcard in a topic name: 0x90.
    let mut c = broker.connect(V5, "bad2").await;
    c.send_bytes(&[0x30, 5, 0, 1, b'#', 0, b'x']).await;
    c.expect_disconnect(0x90).await;
    // 3.1.1 has no DISCONNECT from the server: the connection just closes.
    let mut c = broker.connect(V3_1_1, "bad3").await;
    c.send_bytes(&[0x60, 2, 0, 1]).await;
    assert!(c.expect_closed().await.is_empty());
}

#[tokio::test]
async fn pingreq_gets_pingresp() {
    // [MQTT-3.12.4-1]
    let broker = TestBroker::start().await;
    let mut c = broker.connect(V3_1_1, "ping").await;
    c.send_bytes(&[0xc0, 0]).await;
    c.expect_bytes(&[0xd0, 0]).await;
}

#[tokio::test]
async fn takeover_closes_the_first_connection() {
    // [MQTT-3.1.4-3] the same client id connecting again closes the first connection; MQTT 5
    // tells it with DISCONNECT 0x8E.
    let broker = TestBroker::start().await;
    let mut first = broker.connect(V5, "same").await;
    let mut second = broker.raw(V5).await;
    second
        .send(&Packet::Connect(connect(V5, "same", true)))
        .await;
    second.expect_connack(false, 0).await;
    first.expect_disconnect(0x8e).await;
    // 3.1.1: the first connection is closed without a packet.
    let mut first = broker.connect(V3_1_1, "same311").await;
    let _second = broker.connect(V3_1_1, "same311").await;
    assert!(first.expect_closed().await.is_empty());
}

fn with_will<'a>(
    version: tern_proto::ProtocolVersion,
    id: &'a str,
    topic: &'a str,
) -> tern_proto::Connect<'a> {
    let mut c = connect(version, id, true);
    c.will = Some(Will {
        topic: TopicName::new(topic).unwrap(),
        payload: b"gone",
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    c
}

#[tokio::test]
async fn will_is_published_when_the_connection_is_lost() {
    // [MQTT-3.1.2-8] the will is published when the network connection closes without
    // DISCONNECT.
    let broker = TestBroker::start().await;
    let mut watcher = broker.connect(V3_1_1, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce, 1).await;
    let mut dying = broker.raw(V3_1_1).await;
    dying
        .send(&Packet::Connect(with_will(V3_1_1, "dying", "wills/dying")))
        .await;
    dying.expect_connack(false, 0).await;
    drop(dying);
    let got = watcher.expect_publish().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice(), got.qos),
        ("wills/dying", &b"gone"[..], QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    // [MQTT-3.1.2-10] (3.1.1) / [MQTT-3.14.4-3] (5.0) DISCONNECT discards the will; with
    // reason 0x04 MQTT 5 asks for it to be sent.
    let broker = TestBroker::start().await;
    let mut watcher = broker.connect(V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce, 1).await;
    let mut polite = broker.raw(V5).await;
    polite
        .send(&Packet::Connect(with_will(V5, "polite", "wills/polite")))
        .await;
    polite.expect_connack(false, 0).await;
    polite
        .send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
    polite.expect_closed().await;
    let mut asks = broker.raw(V5).await;
    asks.send(&Packet::Connect(with_will(V5, "asks", "wills/asks")))
        .await;
    asks.expect_connack(false, 0).await;
    asks.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
    )))
    .await;
    // Only the second will arrives.
    assert_eq!(watcher.expect_publish().await.topic, "wills/asks");
    watcher.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24] no packet within 1.5 x Keep Alive: the broker closes the connection.
    // The clock is paused: tokio advances it when every task waits.
    let broker = TestBroker::start().await;
    let mut c = broker.raw(V5).await;
    let mut conn = connect(V5, "quiet", true);
    conn.keep_alive = 10;
    c.send(&Packet::Connect(conn)).await;
    c.expect_connack(false, 0).await;
    let start = tokio::time::Instant::now();
    c.expect_disconnect_within(0x8d, Duration::from_secs(60))
        .await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(15), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(16), "closed after {waited:?}");
}
