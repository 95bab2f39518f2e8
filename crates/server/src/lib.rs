//! The running tern broker: binds listeners, runs one task per connection, and keeps the
//! timers (keep alive, will delay, session expiry, `$SYS`).
//!
//! Owns sockets and the clock; the protocol decisions are `tern-broker`'s. Structure follows
//! a listener / connection-handler split: [`Server::start`] binds and spawns, `conn.rs` drives
//! one client, `sys.rs` publishes the broker's own figures.

pub mod config;
mod conn;
mod sys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use config::{Config, ConfigError};

/// A broker that is running: its listeners' addresses and the means to stop it.
pub struct Server {
    /// The broker state, for inspection.
    pub broker: Arc<Broker>,
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The current time on the clock tests can pause.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Server {
    /// Binds every listener of `config` and starts serving. Port 0 binds a free port;
    /// [`Server::local_addrs`] says which.
    pub async fn start(config: &Config) -> std::io::Result<Server> {
        Server::start_with_access(config, Box::new(tern_broker::AllowAll)).await
    }

    /// Like [`Server::start`], with `access` deciding who may connect, publish and subscribe.
    pub async fn start_with_access(
        config: &Config,
        access: Box<dyn tern_broker::AccessControl>,
    ) -> std::io::Result<Server> {
        let broker = Broker::with_access(config.broker_limits(), access, now());
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let listener = TcpListener::bind(l.bind).await?;
            let addr = listener.local_addr()?;
            info!(%addr, "listening for MQTT over TCP");
            addrs.push(addr);
            tasks.spawn(accept_loop(listener, broker.clone(), shutdown.subscribe()));
        }
        tasks.spawn(expiry_loop(broker.clone(), shutdown.subscribe()));
        if config.sys.interval > 0 {
            tasks.spawn(sys::publish_loop(
                broker.clone(),
                Duration::from_secs(config.sys.interval),
                shutdown.subscribe(),
            ));
        }
        Ok(Server {
            broker,
            addrs,
            shutdown,
            tasks,
        })
    }

    /// Publishes the `$SYS` figures now, as the periodic task does.
    pub fn publish_sys(&self) {
        sys::publish_all(&self.broker);
    }

    /// The bound addresses, in the order of the configuration's listeners.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, tells MQTT 5 clients the server is shutting down, closes every
    /// connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(conn::serve(broker.clone(), stream, peer, shutdown.clone()));
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Removes sessions whose expiry interval has run out while disconnected.
async fn expiry_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = broker.expire_sessions(now());
                if n > 0 {
                    info!(sessions = n, "expired sessions removed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
