//! The desktop client against tern and against Mosquitto (Debian `mosquitto`), to show it
//! follows the protocol and not just our broker.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_client::tokio::{connect, Config, Event, Events};
use tern_client::{ProtocolVersion, QoS, ReasonCode};

use crate::tern;

/// A Mosquitto broker on a free loopback port, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mosquitto() -> Mosquitto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed by the test command");
    // Poll until it accepts connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Mosquitto {
        child,
        port,
        _dir: dir,
    }
}

async fn next_message(events: &mut Events) -> tern_client::tokio::Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no event in time")
        {
            Some(Event::Message(m)) => return m,
            Some(_) => continue,
            None => panic!("connection ended"),
        }
    }
}

async fn round_trips(port: u16, version: ProtocolVersion) {
    let mut config = Config::host("127.0.0.1", port);
    config.version = version;
    config.client_id = format!("sub-{version}");
    let (sub, mut sub_events) = connect(config.clone()).await.unwrap();
    assert_eq!(
        sub.subscribe("tc/#", QoS::ExactlyOnce).await.unwrap(),
        ReasonCode::GRANTED_QOS_2
    );
    config.client_id = format!("pub-{version}");
    let (publisher, _events) = connect(config).await.unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish("tc/x", vec![qos as u8], qos, false)
            .await
            .unwrap();
        let m = next_message(&mut sub_events).await;
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice(), m.qos),
            ("tc/x", &[qos as u8][..], qos)
        );
    }
    sub.unsubscribe("tc/#").await.unwrap();
    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
}

#[tokio::test]
async fn qos_round_trips_against_tern() {
    let broker = tern(0).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        round_trips(broker.addr.port(), version).await;
    }
}

#[tokio::test]
async fn qos_round_trips_against_mosquitto() {
    let m = mosquitto().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        round_trips(m.port, version).await;
    }
}

#[tokio::test]
async fn robust_client_reconnects_and_resubscribes() {
    let broker = tern(0).await;
    let port = broker.addr.port();
    let mut config = Config::host("127.0.0.1", port).robust();
    config.reconnect = Some((Duration::from_millis(50), Duration::from_millis(400)));
    config.client_id = "robust".into();
    let (client, mut events) = connect(config).await.unwrap();
    client.subscribe("again/#", QoS::AtLeastOnce).await.unwrap();
    // The broker goes away (losing every session) and comes back on the same port.
    broker.server.shutdown().await;
    let _broker = tern(port).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap()
        {
            Some(Event::Connected { .. }) => break,
            Some(_) => continue,
            None => panic!("the robust client gave up"),
        }
    }
    // Subscriptions were renewed: a message published now arrives.
    let mut config = Config::host("127.0.0.1", port);
    config.client_id = "other".into();
    let (other, _e) = connect(config).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        other
            .publish("again/x", b"back".to_vec(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Ok(Some(Event::Message(m))) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            assert_eq!(m.payload, b"back");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message after reconnecting"
        );
    }
    // Publishing works on the new connection too.
    assert!(client
        .publish("again/y", b"me".to_vec(), QoS::AtLeastOnce, false)
        .await
        .is_ok());
}

#[test]
fn urls() {
    let c = Config::parse("mqtts://alice:pw@broker.example.org:8884/some/topic").unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.username.as_deref()),
        ("broker.example.org", 8884, Some("alice"))
    );
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    let c = Config::parse("wss://h/mqtt").unwrap();
    assert_eq!((c.port, c.path.as_str()), (8884, "/mqtt"));
    assert!(Config::parse("http://h").is_err());
    assert_eq!(Config::new("localhost").port, 1883);
}

#[tokio::test]
async fn tls_and_websockets_against_tern() {
    // The client's TLS (with a given CA file), WebSocket and WebSocket over TLS transports.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tern_server::certs::create(&certs, &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
    let toml = format!(
        "[[listener]]\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\ncert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\n\
         [[listener]]\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\ncert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\n",
        c = certs.display()
    );
    let mut config = tern_server::Config::parse(&toml).unwrap();
    config.data_dir = dir.path().to_owned();
    config.allow_anonymous = Some(true);
    config.sys.interval = 0;
    let server = tern_server::Server::start(&config).await.unwrap();
    let ports: Vec<u16> = server.local_addrs().iter().map(|a| a.port()).collect();
    for (scheme, port) in [("mqtts", ports[0]), ("ws", ports[1]), ("wss", ports[2])] {
        let mut c = Config::parse(&format!("{scheme}://localhost:{port}/mqtt")).unwrap();
        c.ca_file = Some(certs.join("ca.pem"));
        c.client_id = format!("c-{scheme}");
        let (client, mut events) = connect(c).await.unwrap_or_else(|e| panic!("{scheme}: {e}"));
        client.subscribe("secure", QoS::AtLeastOnce).await.unwrap();
        client
            .publish(
                "secure",
                scheme.as_bytes().to_vec(),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        assert_eq!(next_message(&mut events).await.payload, scheme.as_bytes());
        client.disconnect().await.unwrap();
    }
    server.shutdown().await;
}
