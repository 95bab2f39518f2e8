//! The client transports against a real broker: tern in-process on port 0 and, for the tokio
//! client, Mosquitto too. One test binary for the crate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod embedded;
mod tokio_client;

use std::net::SocketAddr;

pub struct Broker {
    pub server: tern_server::Server,
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
}

/// A tern broker on 127.0.0.1, port 0 (or `port`, to restart on the same one).
pub async fn tern(port: u16) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tern_server::Config::default();
    config.data_dir = dir.path().to_owned();
    config.listeners = vec![tern_server::config::ListenerConfig::tcp(SocketAddr::from(
        ([127, 0, 0, 1], port),
    ))];
    config.sys.interval = 0;
    let server = tern_server::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    Broker {
        server,
        addr,
        _dir: dir,
    }
}
