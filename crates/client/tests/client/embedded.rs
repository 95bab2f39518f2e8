//! The board client (`embedded-io-async`) on the host, through an adapter over a tokio TCP
//! socket, against the real tern broker.

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use tern_client::embedded::{Client, ClientError};
use tern_client::{Event, Options, QoS};
use tokio::net::TcpStream;

use crate::tern;

fn clock() -> u64 {
    // Milliseconds on tokio's clock, so paused-time tests control it.
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .duration_since(start)
        .as_millis() as u64
}

type Board<'b> = Client<'b, FromTokio<TcpStream>, 8>;

async fn board<'b>(
    addr: std::net::SocketAddr,
    id: &str,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    keep_alive: u16,
) -> Board<'b> {
    let io = FromTokio::new(TcpStream::connect(addr).await.unwrap());
    let mut c = Client::new(io, rx, tx, clock);
    let mut o = Options::new(id);
    o.keep_alive = keep_alive;
    assert!(!c.connect(&o).await.unwrap());
    c
}

async fn next_message(c: &mut Board<'_>) -> (String, Vec<u8>, QoS) {
    loop {
        if let Event::Message(p) = c.next().await.unwrap() {
            return (p.topic.as_str().to_owned(), p.payload.to_vec(), p.qos);
        }
    }
}

#[tokio::test]
async fn qos_0_1_2_both_ways() {
    let broker = tern(0).await;
    let (mut rx1, mut tx1, mut rx2, mut tx2) = ([0u8; 512], [0u8; 512], [0u8; 512], [0u8; 512]);
    let mut sub = board(broker.addr, "sub", &mut rx1, &mut tx1, 60).await;
    sub.subscribe("t/#", QoS::ExactlyOnce).await.unwrap();
    assert!(matches!(
        sub.next().await.unwrap(),
        Event::Subscribed { .. }
    ));
    let mut publisher = board(broker.addr, "pub", &mut rx2, &mut tx2, 60).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let id = publisher
            .publish("t/x", &[qos as u8], qos, false)
            .await
            .unwrap();
        if let Some(id) = id {
            // [MQTT-4.3.2-1] / [MQTT-4.3.3-1]: the handshake completes.
            loop {
                if let Event::Published { packet_id, .. } = publisher.next().await.unwrap() {
                    assert_eq!(packet_id, id);
                    break;
                }
            }
        }
        assert_eq!(
            next_message(&mut sub).await,
            ("t/x".to_owned(), vec![qos as u8], qos)
        );
    }
    assert_eq!(sub.protocol().in_flight().count(), 0);
    assert_eq!(publisher.protocol().in_flight().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_keep_a_quiet_board_connected() {
    // [MQTT-3.1.2-23]: with keep alive 10 the board pings every 10 s of silence, so the broker
    // (which closes after 15 s without a packet) keeps it for a minute and more.
    let broker = tern(0).await;
    let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
    let mut c = board(broker.addr, "quiet", &mut rx, &mut tx, 10).await;
    let mut pongs = 0;
    while clock() < 60_000 {
        let deadline = c.next_deadline().unwrap();
        let wait = Duration::from_millis(deadline.saturating_sub(clock()));
        match tokio::time::timeout(wait, c.next()).await {
            Ok(Ok(Event::Pong)) => pongs += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => c.keep_alive().await.unwrap(),
        }
    }
    assert!(pongs >= 5, "{pongs} pongs");
    assert!(c.protocol().is_connected());
}

#[tokio::test]
async fn reconnects_after_the_broker_restarts() {
    let broker = tern(0).await;
    let addr = broker.addr;
    let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
    let mut c = board(addr, "phoenix", &mut rx, &mut tx, 60).await;
    broker.server.shutdown().await;
    // The broker is gone: the next read fails or sees the close.
    let err = c.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed | ClientError::Io(_) | ClientError::Protocol(_)
        ),
        "{err:?}"
    );
    drop(c);
    let broker = tern(addr.port()).await;
    let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
    let mut c = board(broker.addr, "phoenix", &mut rx, &mut tx, 60).await;
    c.publish("back", b"again", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(matches!(c.next().await.unwrap(), Event::Published { .. }));
}
