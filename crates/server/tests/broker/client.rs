//! A raw MQTT client for tests: sends packets, reads whole packets back, with a deadline on
//! every wait so a broken broker fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use tern_proto::{
    decode, Ack, Connect, List, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use tern_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen at once: a guard against hangs,
/// not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub server: Server,
    pub addr: SocketAddr,
    /// The broker's data directory, removed when the test ends.
    pub _dir: tempfile::TempDir,
    /// The configuration it was started with.
    pub toml: String,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::with_config("").await
    }

    /// A broker with extra configuration on top of a test listener on port 0.
    pub async fn with_config(toml: &str) -> TestBroker {
        TestBroker::in_dir(toml, tempfile::tempdir().unwrap()).await
    }

    /// Stops the broker as SIGTERM does and starts it again on the same data directory.
    pub async fn restart(self) -> TestBroker {
        let TestBroker {
            server, _dir, toml, ..
        } = self;
        server.shutdown().await;
        TestBroker::in_dir(&toml, _dir).await
    }

    async fn in_dir(toml: &str, dir: tempfile::TempDir) -> TestBroker {
        let mut config = Config::parse(toml).unwrap();
        config.data_dir = dir.path().to_owned();
        config.listeners = vec![tern_server::config::ListenerConfig::tcp(
            "127.0.0.1:0".parse().unwrap(),
        )];
        config.sys.interval = 0;
        // Most tests run on a paused clock, which jumps ahead whenever the runtime waits for
        // something outside it, such as the store's writer thread: they keep everything in
        // memory. The persistence tests ask for a store with a `[persistence]` table.
        if !toml.contains("[persistence]") {
            config.persistence.mode = tern_server::config::PersistenceMode::Off;
        }
        // The console is tested through its HTTP port by the interop tests; here it stays off
        // unless a test asks with a `[console]` table.
        config.console.enabled = toml.contains("[console]");
        config.console.bind.set_port(0);
        let server = Server::start(&config).await.unwrap();
        let addr = server.local_addrs()[0];
        TestBroker {
            server,
            addr,
            _dir: dir,
            toml: toml.to_owned(),
        }
    }

    pub async fn raw(&self, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            version,
        }
    }

    /// A client connected with `client_id` and clean start, its CONNACK checked.
    pub async fn connect(&self, version: ProtocolVersion, client_id: &str) -> Raw {
        let mut c = self.raw(version).await;
        c.send(&Packet::Connect(connect(version, client_id, true)))
            .await;
        c.expect_connack(false, 0).await;
        c
    }
}

pub fn connect(version: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect<'_> {
    Connect {
        version,
        clean_start,
        keep_alive: 60,
        properties: Properties::default(),
        client_id,
        will: None,
        username: None,
        password: None,
    }
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn publish<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, id: u16) -> Publish<'a> {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: Properties::default(),
        payload,
    }
}

/// A received PUBLISH, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub subscription_ids: Vec<u32>,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub version: ProtocolVersion,
}

impl Raw {
    pub async fn send(&mut self, packet: &Packet<'_>) {
        let version = match packet {
            Packet::Connect(c) => c.version,
            _ => self.version,
        };
        let mut out = vec![0; packet.encoded_len(version).unwrap()];
        packet.encode(version, &mut out).unwrap();
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The raw bytes of the next whole packet.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        tokio::time::timeout(PATIENCE, self.read_packet())
            .await
            .expect("no packet from the broker in time")
            .expect("the broker closed the connection")
    }

    async fn read_packet(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(header) = tern_proto::FixedHeader::decode(&self.buf, ProtocolVersion::V5)
                .ok()
                .flatten()
            {
                let len = header.packet_len();
                if self.buf.len() >= len {
                    return Some(self.buf.drain(..len).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Decodes the next packet and gives it to `check`.
    pub async fn recv<R>(&mut self, check: impl FnOnce(Packet<'_>) -> R) -> R {
        let bytes = self.recv_bytes().await;
        let (packet, _) = decode(&bytes, self.version, u32::MAX).unwrap().unwrap();
        check(packet)
    }

    pub async fn expect_bytes(&mut self, expected: &[u8]) {
        assert_eq!(self.recv_bytes().await, expected);
    }

    pub async fn expect_connack(&mut self, session_present: bool, code: u8) {
        let v5 = self.version.is_v5();
        self.recv(|p| match p {
            Packet::ConnAck(c) => {
                assert_eq!(c.session_present, session_present, "session present");
                let got = if v5 {
                    c.code.value()
                } else {
                    c.code.to_v3_connack()
                };
                assert_eq!(got, code, "connack code");
            }
            other => panic!("expected CONNACK, got {other:?}"),
        })
        .await
    }

    pub async fn expect_publish(&mut self) -> Received {
        self.recv(|p| match p {
            Packet::Publish(p) => Received {
                topic: p.topic.as_str().to_owned(),
                payload: p.payload.to_vec(),
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                packet_id: p.packet_id.map(PacketId::get),
                subscription_ids: p.properties.subscription_identifiers.iter().collect(),
            },
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .await
    }

    /// Subscribes to one filter and checks the granted code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, id: u16) {
        self.subscribe_with(filter, SubscriptionOptions::new(qos), id, qos as u8)
            .await
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: u16,
        granted: u8,
    ) {
        let subs = [Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options,
        }];
        let s = Subscribe {
            packet_id: pid(id),
            properties: Properties::default(),
            subscriptions: List::Items(&subs),
        };
        self.send(&Packet::Subscribe(s)).await;
        self.recv(|p| match p {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, pid(id));
                assert_eq!(
                    a.codes.iter().map(|c| c.value()).collect::<Vec<_>>(),
                    [granted]
                );
            }
            other => panic!("expected SUBACK, got {other:?}"),
        })
        .await
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, id: u16) {
        self.send(&Packet::Publish(publish(topic, payload, qos, id)))
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.recv(|p| {
                    assert!(
                        matches!(p, Packet::PubAck(a) if a.packet_id == pid(id)),
                        "{p:?}"
                    )
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.recv(|p| {
                    assert!(
                        matches!(p, Packet::PubRec(a) if a.packet_id == pid(id)),
                        "{p:?}"
                    )
                })
                .await;
                self.send(&Packet::PubRel(Ack::new(pid(id)))).await;
                self.recv(|p| {
                    assert!(
                        matches!(p, Packet::PubComp(a) if a.packet_id == pid(id)),
                        "{p:?}"
                    )
                })
                .await;
            }
        }
    }

    pub async fn ack(&mut self, packet: Packet<'_>) {
        self.send(&packet).await;
    }

    /// Waits for the broker to close the connection, returning what it sent last.
    pub async fn expect_closed(&mut self) -> Vec<Vec<u8>> {
        self.expect_closed_within(PATIENCE).await
    }

    /// Waits for an MQTT 5 DISCONNECT with `code` (and a Reason String saying why), then the
    /// close.
    pub async fn expect_disconnect(&mut self, code: u8) {
        self.expect_disconnect_within(code, PATIENCE).await
    }

    pub async fn expect_disconnect_within(&mut self, code: u8, patience: Duration) {
        let seen = self.expect_closed_within(patience).await;
        let last = seen.last().expect("no DISCONNECT before the close");
        match decode(last, ProtocolVersion::V5, u32::MAX)
            .unwrap()
            .unwrap()
            .0
        {
            Packet::Disconnect(d) => {
                assert_eq!(d.reason.value(), code, "{d:?}");
                assert!(
                    d.properties.reason_string.is_some_and(|s| !s.is_empty()),
                    "no reason string: {d:?}"
                );
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    pub async fn expect_closed_within(&mut self, patience: Duration) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        tokio::time::timeout(patience, async {
            while let Some(p) = self.read_packet().await {
                seen.push(p);
            }
        })
        .await
        .expect("the broker did not close the connection in time");
        seen
    }

    /// Checks nothing arrives within a short while (used after an action that must not
    /// produce a packet).
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(p) = tokio::time::timeout(wait, self.read_packet()).await {
            panic!("expected silence, got {p:?}");
        }
    }
}
