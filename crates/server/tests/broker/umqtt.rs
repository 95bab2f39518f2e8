//! The tutorial boards' MicroPython `umqtt.simple`, reproduced byte for byte over a raw
//! socket: CONNECT level 4 with clean session, user and password, keep alive 7200; CONNACK
//! read as exactly `20 02 00 rc`; SUBACK as exactly `90 03 id rc`; one packet read per
//! `check_msg()`; never a PINGREQ; PUBACK for QoS 1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{TestBroker, PATIENCE};

/// What `umqtt.simple.MQTTClient.connect()` writes: `\x10`, remaining length, then
/// `\x00\x04MQTT\x04`, flags 0xC2 (user, password, clean session), keep alive 7200, and the
/// client id, user and password as length-prefixed strings.
fn umqtt_connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0x1c, 0x20];
    for field in [client_id, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

struct Board {
    sock: TcpStream,
}

impl Board {
    async fn connect(broker: &TestBroker, client_id: &str) -> Board {
        let mut sock = TcpStream::connect(broker.addr).await.unwrap();
        sock.write_all(&umqtt_connect(client_id, "user", "pass"))
            .await
            .unwrap();
        // `resp = self.sock.read(4); assert resp[0] == 0x20 and resp[1] == 0x02`
        let resp = read_exact(&mut sock, 4).await;
        assert_eq!(resp, [0x20, 0x02, 0x00, 0x00]);
        Board { sock }
    }

    /// `subscribe(topic, qos)`: `\x82`, length, packet id, topic, qos; then SUBACK, exactly 5 bytes.
    async fn subscribe(&mut self, topic: &str, qos: u8, pid: u16) {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.push(qos);
        let mut packet = vec![0x82, body.len() as u8];
        packet.extend(body);
        self.sock.write_all(&packet).await.unwrap();
        let resp = read_exact(&mut self.sock, 5).await;
        assert_eq!(resp, [0x90, 0x03, (pid >> 8) as u8, pid as u8, qos]);
    }

    /// `publish(topic, msg, qos=1)`: then waits for exactly `40 02 pid`.
    async fn publish(&mut self, topic: &str, msg: &[u8], pid: u16) {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(msg);
        let mut packet = vec![0x32, body.len() as u8];
        packet.extend(body);
        self.sock.write_all(&packet).await.unwrap();
        let resp = read_exact(&mut self.sock, 4).await;
        assert_eq!(
            resp[0], 0x40,
            "the board only understands PUBACK here: {resp:02x?}"
        );
        assert_eq!(resp, [0x40, 0x02, (pid >> 8) as u8, pid as u8]);
    }

    /// `check_msg()` / `wait_msg()`: reads one packet; it must be a QoS 0 or 1 PUBLISH (the
    /// board raises on QoS 2 and desynchronises on anything else). Acknowledges QoS 1.
    async fn check_msg(&mut self) -> (String, Vec<u8>) {
        let op = read_exact(&mut self.sock, 1).await[0];
        assert_eq!(
            op & 0xf0,
            0x30,
            "the board cannot read packet type {op:#04x}"
        );
        let qos = (op >> 1) & 3;
        assert!(qos <= 1, "a QoS 2 PUBLISH raises on the board");
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let b = read_exact(&mut self.sock, 1).await[0];
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = read_exact(&mut self.sock, len).await;
        let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
        let mut rest = &body[2 + tlen..];
        if qos == 1 {
            let pid = [rest[0], rest[1]];
            rest = &rest[2..];
            self.sock
                .write_all(&[0x40, 0x02, pid[0], pid[1]])
                .await
                .unwrap();
        }
        (topic, rest.to_vec())
    }
}

async fn read_exact(sock: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENCE, sock.read_exact(&mut buf))
        .await
        .expect("board waited in vain")
        .unwrap();
    buf
}

#[tokio::test]
async fn tutorial_publisher_and_subscriber_lose_nothing() {
    // The subscriber reads one message per poll while the publisher sends faster; messages
    // wait in the broker and the socket, and all arrive in order.
    let broker = TestBroker::start().await;
    let mut sub = Board::connect(&broker, "pico-sub").await;
    sub.subscribe("Topic", 1, 1).await;
    let mut publisher = Board::connect(&broker, "pico-pub").await;
    for i in 0..50u16 {
        publisher
            .publish("Topic", format!("{i}").as_bytes(), i + 1)
            .await;
        if i % 5 == 0 {
            let (topic, payload) = sub.check_msg().await;
            assert_eq!(topic, "Topic");
            assert_eq!(payload, format!("{}", i / 5).as_bytes());
        }
    }
    for i in 10..50u16 {
        assert_eq!(sub.check_msg().await.1, format!("{i}").as_bytes());
    }
}

#[tokio::test]
async fn qos2_publications_reach_a_board_at_qos1_or_lower() {
    // The board subscribes at QoS 0/1; the broker never sends it a QoS 2 PUBLISH
    // [MQTT-3.8.4-8] and never a packet it did not ask for.
    let broker = TestBroker::start().await;
    let mut sub = Board::connect(&broker, "pico").await;
    sub.subscribe("Topic", 1, 7).await;
    let mut other = broker
        .connect(tern_proto::ProtocolVersion::V5, "desktop")
        .await;
    other
        .publish("Topic", b"q2", tern_proto::QoS::ExactlyOnce, 1)
        .await;
    assert_eq!(sub.check_msg().await.1, b"q2");
}

#[tokio::test(start_paused = true)]
async fn silent_board_keeps_receiving_for_hours() {
    // The board never sends PINGREQ. With keep alive 7200 the broker must hold the
    // connection for up to 1.5 x 7200 s of silence [MQTT-3.1.2-24] and deliver throughout.
    let broker = TestBroker::start().await;
    let mut sub = Board::connect(&broker, "pico-sub").await;
    sub.subscribe("Topic", 0, 1).await;
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let mut publisher = Board::connect(&broker, "pico-pub").await;
    publisher.publish("Topic", b"still here", 1).await;
    assert_eq!(sub.check_msg().await.1, b"still here");
}
