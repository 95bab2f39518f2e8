//! The access-control hook: refusals at CONNECT, PUBLISH and SUBSCRIBE reach the client with
//! the right codes.

use std::time::Duration;

use tern_broker::{AccessControl, Credentials, Identity};
use tern_proto::{Packet, ProtocolVersion::*, QoS, ReasonCode};

use crate::client::{connect, publish, TestBroker};

/// Only `alice`/`secret` may connect; nobody may publish to or subscribe to `private/#`.
struct Rules;

impl AccessControl for Rules {
    fn authenticate(&self, c: &Credentials) -> Result<Identity, ReasonCode> {
        match (c.username.as_deref(), c.password.as_deref()) {
            (Some("alice"), Some(b"secret")) => Ok(Identity {
                username: Some("alice".into()),
            }),
            (Some(_), _) => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            (None, _) => Err(ReasonCode::NOT_AUTHORIZED),
        }
    }
    fn may_publish(&self, _: &str, _: Option<&str>, topic: &str) -> bool {
        !topic.starts_with("private/")
    }
    fn may_subscribe(&self, _: &str, _: Option<&str>, filter: &str) -> bool {
        !filter.starts_with("private/")
    }
    fn may_receive(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }
}

async fn guarded() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tern_server::Config::default();
    config.data_dir = dir.path().to_owned();
    config.listeners = vec![tern_server::config::ListenerConfig::tcp(
        "127.0.0.1:0".parse().unwrap(),
    )];
    config.sys.interval = 0;
    let server = tern_server::Server::start_with_access(&config, Box::new(Rules))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    TestBroker {
        server,
        addr,
        _dir: dir,
        toml: String::new(),
    }
}

#[tokio::test]
async fn wrong_password_and_anonymous_get_the_right_connack() {
    // Section 3.2.2.3: 3.1.1 return codes 4 (bad user name or password) and 5 (not
    // authorized); MQTT 5 reason codes 0x86 and 0x87 (section 3.2.2.2).
    let broker = guarded().await;
    for (version, user, pass, code) in [
        (V3_1_1, Some("alice"), &b"wrong"[..], 4),
        (V3_1_1, None, &b""[..], 5),
        (V5, Some("alice"), &b"wrong"[..], 0x86),
        (V5, None, &b""[..], 0x87),
    ] {
        let mut c = broker.raw(version).await;
        let mut conn = connect(version, "who", true);
        conn.username = user;
        conn.password = user.map(|_| pass);
        c.send(&Packet::Connect(conn)).await;
        c.expect_connack(false, code).await;
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn refused_publish_and_subscribe() {
    // MQTT 5: PUBACK 0x87 and SUBACK 0x87; 3.1.1: SUBACK 0x80, publication dropped.
    let broker = guarded().await;
    let login = |version, id| {
        let mut conn = connect(version, id, true);
        conn.username = Some("alice");
        conn.password = Some(b"secret");
        conn
    };
    let mut c = broker.raw(V5).await;
    c.send(&Packet::Connect(login(V5, "a5"))).await;
    c.expect_connack(false, 0).await;
    c.send(&Packet::Publish(publish(
        "private/x",
        b"no",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    c.expect_bytes(&[0x40, 3, 0, 1, 0x87]).await;
    c.subscribe_with(
        "private/#",
        tern_proto::SubscriptionOptions::new(QoS::AtMostOnce),
        2,
        0x87,
    )
    .await;

    let mut o = broker.raw(V3_1_1).await;
    o.send(&Packet::Connect(login(V3_1_1, "a3"))).await;
    o.expect_connack(false, 0).await;
    o.send_bytes(&[
        0x82, 14, 0, 3, 0, 9, b'p', b'r', b'i', b'v', b'a', b't', b'e', b'/', b'#', 0,
    ])
    .await;
    o.expect_bytes(&[0x90, 3, 0, 3, 0x80]).await;
    o.subscribe("public", QoS::AtMostOnce, 4).await;
    c.publish("public", b"yes", QoS::AtMostOnce, 0).await;
    assert_eq!(o.expect_publish().await.payload, b"yes");
    o.expect_silence(Duration::from_millis(100)).await;
}
