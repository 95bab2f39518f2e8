//! The running tern broker: binds listeners (TCP, TLS, WebSocket, WebSocket over TLS), runs
//! one task per connection, and keeps the timers (keep alive, will delay, session expiry,
//! `$SYS`, reloading certificates and users).
//!
//! Owns sockets, files and the clock; the protocol decisions are `tern-broker`'s. Structure
//! follows a listener / connection-handler split: [`Server::start`] binds and spawns,
//! `conn.rs` drives one client, `transport.rs` hides how its bytes travel, `access.rs` reads
//! users and permissions, `tls.rs` certificates, `sys.rs` publishes the broker's own figures,
//! `console/` serves the web console, admin API and `/metrics` (`metrics.rs`, `topics.rs`).

pub mod access;
mod acme;
pub mod bridge;
pub mod certs;
pub mod cluster;
pub mod config;
mod conn;
pub mod console;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
mod spare;
mod sys;
pub mod tls;
pub mod topics;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_broker::{AccessControl, Broker, Origin};
use tern_proto::ReasonCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tracing::{debug, info, warn};

use crate::access::FileAccess;
use crate::config::{ListenerConfig, ListenerKind, PersistenceMode};
use crate::conn::Context;
use crate::tls::ReloadableCert;
use crate::transport::Transport;
use tern_store::{Durability, Options as StoreOptions, Recovered, Store};

pub use config::{Config, ConfigError};

/// A broker that is running: its listeners' addresses and the means to reload and stop it.
pub struct Server {
    /// The broker state, for inspection.
    pub broker: Arc<Broker>,
    addrs: Vec<SocketAddr>,
    console_addr: Option<SocketAddr>,
    bridges: Vec<Arc<bridge::BridgeStatus>>,
    cluster: Option<Arc<cluster::ClusterStatus>>,
    certs: Vec<Arc<ReloadableCert>>,
    users: Option<Arc<FileAccess>>,
    shutdown: watch::Sender<bool>,
    /// The stop as connections see it.
    stop: Arc<conn::Stop>,
    tasks: JoinSet<()>,
}

/// The current time on the clock tests can pause.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// How often certificate and users files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A listener, ready to accept.
struct Listening {
    kind: ListenerKind,
    tls: Option<Tls>,
    path: String,
    loopback: bool,
    allow_anonymous: Option<bool>,
    cn_as_username: bool,
}

/// Open connections per address, for the per-address limit.
#[derive(Default)]
struct AddressCounts(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its address until dropped.
struct Counted {
    counts: Arc<AddressCounts>,
    ip: IpAddr,
}

impl AddressCounts {
    fn add(self: &Arc<Self>, ip: IpAddr) -> (Counted, usize) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        *n += 1;
        (
            Counted {
                counts: self.clone(),
                ip,
            },
            *n,
        )
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Connections the kernel may hold for an MQTT listener before `accept` takes them (capped
/// by `net.core.somaxconn`). A fleet reconnecting at once (after a restart, a network cut)
/// overflows a short queue, and each overflowed SYN costs its client a 1 s retransmission:
/// with tokio's default of 1,024, 10,000 connections opened 256 at a time lost about 2 % to
/// that and took twice as long.
const LISTEN_BACKLOG: u32 = 8192;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted broker binds its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn startup_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Server {
    /// Binds every listener of `config` and starts serving, with users and permissions from
    /// the users file. Port 0 binds a free port; [`Server::local_addrs`] says which.
    pub async fn start(config: &Config) -> std::io::Result<Server> {
        let users = FileAccess::open(&config.users_path()).map_err(startup_error)?;
        if users.has_users() {
            info!(file = %config.users_path().display(), "users and permissions loaded");
        }
        Server::run(config, users.clone(), Some(users)).await
    }

    /// Like [`Server::start`], with `access` deciding who may connect, publish and subscribe.
    pub async fn start_with_access(
        config: &Config,
        access: Box<dyn AccessControl>,
    ) -> std::io::Result<Server> {
        Server::run(config, Arc::from(access), None).await
    }

    async fn run(
        config: &Config,
        access: Arc<dyn AccessControl>,
        users: Option<Arc<FileAccess>>,
    ) -> std::io::Result<Server> {
        let (store, recovered) = open_store(config)?;
        let broker = Broker::with_store(config.broker_limits(), access, now(), store);
        let wills = recovered.map_or_else(Vec::new, |r| broker.restore(r, now()));
        let (shutdown, _) = watch::channel(false);
        let limits = &config.limits;
        let mut ctx = Context {
            broker: broker.clone(),
            users: users.clone(),
            connect_timeout: Duration::from_secs(limits.connect_timeout),
            max_message_rate: limits.max_message_rate,
            max_bandwidth: limits.max_bandwidth,
            slow_subscriber_timeout: Duration::from_secs(limits.slow_subscriber_timeout),
            shutdown: shutdown.subscribe(),
            stop: Arc::default(),
            metrics: Arc::new(metrics::Metrics::default()),
            sessions: None,
            confirmed: None,
        };
        let counts = Arc::new(AddressCounts::default());
        let mut tasks = JoinSet::new();
        // Before the first listener: every message published here must reach the cluster.
        let cluster = config.cluster.as_ref().map(|c| {
            info!(node = %c.node, urls = ?c.nats_urls, "cluster mode");
            let joined =
                cluster::start(broker.clone(), c.clone(), shutdown.subscribe(), &mut tasks);
            let _ = ctx.metrics.cluster.set(joined.status.clone());
            ctx.sessions = Some(joined.sessions);
            ctx.confirmed = Some(joined.confirmed);
            joined.status
        });
        // Shared by every connection's task: one pointer each instead of a copy.
        let ctx = Arc::new(ctx);
        let mut addrs = Vec::new();
        let mut certs = Vec::new();
        let mut kinds = Vec::new();
        let mut acme_setup = AcmeSetup {
            certs: Vec::new(),
            challenges: Arc::new(acme::Challenges::default()),
        };
        if let Some(a) = &config.tls.acme {
            acme::prepare(&config.acme_dir(), a).map_err(startup_error)?;
        }
        for l in &config.listeners {
            let listening = prepare(l, config, &mut certs, &mut acme_setup)?;
            let listener = bind_listener(l.address())?;
            let addr = listener.local_addr()?;
            info!(%addr, kind = ?l.kind, "listening");
            addrs.push(addr);
            kinds.push((addr, l.kind));
            tasks.spawn(accept_loop(
                listener,
                Arc::new(listening),
                ctx.clone(),
                counts.clone(),
                limits.max_connections_per_address,
            ));
        }
        tasks.spawn(expiry_loop(broker.clone(), shutdown.subscribe()));
        if let Some(a) = &config.tls.acme {
            if a.challenge == config::AcmeChallenge::Http01 {
                let listener = TcpListener::bind(a.http_bind)
                    .await
                    .map_err(|e| startup_error(format!("ACME HTTP-01 on {}: {e}", a.http_bind)))?;
                info!(addr = %listener.local_addr()?, "answering ACME HTTP-01 challenges");
                tasks.spawn(acme::serve_http01(
                    listener,
                    acme_setup.challenges.clone(),
                    shutdown.subscribe(),
                ));
            }
            info!(domains = ?a.domains, directory = %a.directory, challenge = ?a.challenge, "ACME certificates");
            tasks.spawn(acme::run(
                a.clone(),
                config.acme_dir(),
                acme_setup.certs,
                acme_setup.challenges,
                shutdown.subscribe(),
            ));
        }
        let bridges: Vec<Arc<bridge::BridgeStatus>> =
            config.bridges.iter().map(bridge::status).collect();
        for (b, status) in config.bridges.iter().zip(&bridges) {
            info!(bridge = %b.name, remote = %status.remote, "bridge starting");
            tasks.spawn(bridge::run(
                broker.clone(),
                b.clone(),
                status.clone(),
                shutdown.subscribe(),
            ));
        }
        for will in wills {
            tasks.spawn(conn::publish_will_later(broker.clone(), will));
        }
        tasks.spawn(watch_files(
            certs.clone(),
            users.clone(),
            shutdown.subscribe(),
        ));
        let console_addr = if config.console.enabled {
            start_console(
                config,
                &ctx,
                users.clone(),
                kinds,
                bridges.clone(),
                &mut certs,
                &mut tasks,
            )
            .await?
        } else {
            None
        };
        if config.sys.interval > 0 {
            tasks.spawn(sys::publish_loop(
                broker.clone(),
                bridges.clone(),
                cluster.clone(),
                Duration::from_secs(config.sys.interval),
                shutdown.subscribe(),
            ));
        }
        Ok(Server {
            broker,
            addrs,
            console_addr,
            bridges,
            cluster,
            certs,
            users,
            shutdown,
            stop: ctx.stop.clone(),
            tasks,
        })
    }

    /// Publishes the `$SYS` figures now, as the periodic task does.
    pub fn publish_sys(&self) {
        sys::publish_all(&self.broker, &self.bridges, self.cluster.as_deref());
    }

    /// The bridges' figures.
    pub fn bridges(&self) -> &[Arc<bridge::BridgeStatus>] {
        &self.bridges
    }

    /// The cluster's figures, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<cluster::ClusterStatus>> {
        self.cluster.as_ref()
    }

    /// The bound addresses, in the order of the configuration's listeners.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The console's address, when it is served.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// Reads certificates and the users file again (what SIGHUP does). New connections get
    /// the new certificate; existing sessions get the new rules on their next operation.
    pub fn reload(&self) {
        for cert in &self.certs {
            cert.reload();
        }
        if let Some(users) = &self.users {
            users.reload();
        }
    }

    /// Stops accepting, tells MQTT 5 clients the server is shutting down, closes every
    /// connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.stop.stop();
        while self.tasks.join_next().await.is_some() {}
        // Every connection has recorded its end: flush and stop the store.
        if let Some(store) = self.broker.store() {
            store.close();
        }
    }
}

/// Binds the console's port and starts serving it. The default port being taken is not
/// fatal (the broker runs without a console); a port the configuration names must bind.
async fn start_console(
    config: &Config,
    ctx: &Arc<Context>,
    users: Option<Arc<FileAccess>>,
    listeners: Vec<(SocketAddr, ListenerKind)>,
    bridges: Vec<Arc<bridge::BridgeStatus>>,
    certs: &mut Vec<Arc<ReloadableCert>>,
    tasks: &mut JoinSet<()>,
) -> std::io::Result<Option<SocketAddr>> {
    let c = &config.console;
    let listener = match TcpListener::bind(c.bind).await {
        Ok(l) => l,
        Err(e) if c.bind == config::ConsoleConfig::default().bind => {
            warn!(addr = %c.bind, error = %e, "console not started: its port is taken (set [console] bind)");
            return Ok(None);
        }
        Err(e) => return Err(startup_error(format!("console on {}: {e}", c.bind))),
    };
    let tls = match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => {
            let mut l = ListenerConfig::tcp(c.bind);
            l.kind = ListenerKind::Tls;
            l.cert = Some(cert.clone());
            l.key = Some(key.clone());
            let (acceptor, reloadable) = tls::acceptor(&l).map_err(startup_error)?;
            certs.push(reloadable);
            Some(acceptor)
        }
        _ => None,
    };
    let admin_path = config.admin_path();
    match console::auth::create_first_admin(&admin_path).map_err(startup_error)? {
        Some(password) => warn!(
            file = %admin_path.display(),
            "console administrator created: name `admin`, password `{password}` (shown only \
             this once; `tern admin passwd` sets another)"
        ),
        None => debug!(file = %admin_path.display(), "console administrators loaded"),
    }
    let addr = listener.local_addr()?;
    let topics = Arc::new(topics::Topics::new(c.max_topics));
    let observed = topics.clone();
    ctx.broker
        .set_observer(Box::new(move |message| observed.observe(message)));
    let state = Arc::new(console::Console {
        broker: ctx.broker.clone(),
        users,
        admin_path,
        logins: console::auth::Logins::new(Duration::from_secs(c.session_minutes * 60)),
        metrics: ctx.metrics.clone(),
        topics,
        listeners,
        bridges,
        store_dir: (config.persistence.mode != PersistenceMode::Off).then(|| config.store_path()),
        secure: tls.is_some(),
        history: Mutex::new(std::collections::VecDeque::new()),
        mqtt: ctx.clone(),
        loopback: addr.ip().is_loopback(),
        allow_anonymous: config.allow_anonymous,
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(%addr, "console listening: {scheme}://{addr}/");
    tasks.spawn(console::sample_loop(state.clone(), ctx.shutdown.clone()));
    tasks.spawn(console::serve(listener, tls, state, ctx.shutdown.clone()));
    Ok(Some(addr))
}

/// Opens the store (unless persistence is off) and reads what it holds.
fn open_store(config: &Config) -> std::io::Result<(Option<Arc<Store>>, Option<Recovered>)> {
    let p = &config.persistence;
    let durability = match p.mode {
        PersistenceMode::Off => return Ok((None, None)),
        PersistenceMode::Sync => Durability::Sync,
        PersistenceMode::Periodic => {
            Durability::Periodic(Duration::from_millis(p.flush_interval_ms))
        }
    };
    let options = StoreOptions {
        durability,
        ..StoreOptions::default()
    };
    let dir = config.store_path();
    let (store, recovered, report) = Store::open(&dir, options).map_err(startup_error)?;
    let (retained, messages, sessions, entries) = report.counts;
    info!(dir = %dir.display(), mode = ?p.mode, files = report.files, bytes = report.bytes,
        records = report.records, retained, messages, sessions, queued = entries,
        torn_bytes = report.torn_bytes, elapsed_ms = report.elapsed.as_millis() as u64,
        "store opened");
    Ok((Some(Arc::new(store)), Some(recovered)))
}

/// A listener's TLS: its acceptor, and the ACME challenges it answers (TLS-ALPN-01).
struct Tls {
    acceptor: TlsAcceptor,
    acme: Option<Arc<acme::Challenges>>,
}

impl Tls {
    /// Completes a handshake. One that offers `acme-tls/1` is an ACME server validating: it
    /// gets the challenge certificate, and the connection ends there.
    async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let Some(challenges) = &self.acme else {
            return self.acceptor.accept(stream).await;
        };
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let validating = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == acme::ACME_TLS_ALPN));
        if validating {
            let config = challenges.alpn_config().map_err(std::io::Error::other)?;
            let _ = start.into_stream(config).await?;
            debug!("answered an ACME TLS-ALPN-01 validation");
            return Err(std::io::Error::other("ACME validation handshake"));
        }
        start.into_stream(self.acceptor.config().clone()).await
    }
}

/// TLS listeners without a certificate of their own serve the ACME one (`[tls.acme]`).
struct AcmeSetup {
    certs: Vec<Arc<ReloadableCert>>,
    challenges: Arc<acme::Challenges>,
}

fn prepare(
    l: &ListenerConfig,
    config: &Config,
    certs: &mut Vec<Arc<ReloadableCert>>,
    acme_setup: &mut AcmeSetup,
) -> std::io::Result<Listening> {
    let tls = if l.kind.is_tls() {
        let managed = l.cert.is_none();
        let mut l = l.clone();
        if managed {
            let (cert, key) = acme::cert_paths(&config.acme_dir());
            l.cert = Some(cert);
            l.key = Some(key);
        }
        let (acceptor, cert) = tls::acceptor(&l).map_err(startup_error)?;
        certs.push(cert.clone());
        let alpn = config
            .tls
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == config::AcmeChallenge::TlsAlpn01);
        if managed {
            acme_setup.certs.push(cert);
        }
        Some(Tls {
            acceptor,
            acme: (managed && alpn).then(|| acme_setup.challenges.clone()),
        })
    } else {
        None
    };
    Ok(Listening {
        kind: l.kind,
        tls,
        path: l.path.clone(),
        loopback: l.address().ip().is_loopback(),
        allow_anonymous: l.allow_anonymous.or(config.allow_anonymous),
        cn_as_username: l.cn_as_username,
    })
}

async fn accept_loop(
    listener: TcpListener,
    listening: Arc<Listening>,
    ctx: Arc<Context>,
    counts: Arc<AddressCounts>,
    per_address: usize,
) {
    let mut shutdown = ctx.shutdown.clone();
    // A tracker counts the connections' tasks without keeping a handle per connection (a
    // `JoinSet` entry is another allocation for every idle client).
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (counted, open) = counts.add(peer.ip());
                    let refusal = (per_address > 0 && open > per_address).then_some(ReasonCode::QUOTA_EXCEEDED);
                    if listening.kind == ListenerKind::Tcp {
                        // No handshake: served at once, without a handshake task and its
                        // 11 KB of state (allocated and freed per connection, it fragmented
                        // the heap under a burst of connections).
                        let origin = origin(&listening, peer, None, refusal);
                        connections.spawn(conn::serve(ctx.clone(), Transport::Tcp(stream), origin, peer.ip(), counted));
                    } else {
                        connections.spawn(open_connection(ctx.clone(), listening.clone(), stream, peer, refusal, counted, connections.clone()));
                    }
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    connections.close();
    connections.wait().await;
}

/// Completes the TLS and WebSocket handshakes (within the CONNECT deadline), then serves.
async fn open_connection(
    ctx: Arc<Context>,
    listening: Arc<Listening>,
    stream: TcpStream,
    peer: SocketAddr,
    refusal: Option<ReasonCode>,
    counted: Counted,
    connections: tokio_util::task::TaskTracker,
) {
    // Boxed: the TLS and WebSocket handshakes' state is about 11 KB, and a connection's task
    // would otherwise keep room for it for as long as the connection lives.
    let handshake = Box::pin(establish(&listening, stream));
    let (transport, certificate_name) =
        match tokio::time::timeout(ctx.connect_timeout, handshake).await {
            Ok(Ok(established)) => established,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "handshake not completed in time");
                return;
            }
        };
    let origin = origin(&listening, peer, certificate_name, refusal);
    // A task of its own: the handshake's state and this function's arguments are not kept
    // for the connection's life.
    connections.spawn(conn::serve(ctx, transport, origin, peer.ip(), counted));
}

/// Where a connection comes from, from its listener's settings.
fn origin(
    listening: &Listening,
    peer: SocketAddr,
    certificate_name: Option<String>,
    refusal: Option<ReasonCode>,
) -> Origin {
    Origin {
        peer: peer.to_string(),
        loopback: listening.loopback,
        allow_anonymous: listening.allow_anonymous,
        certificate_name: certificate_name.filter(|_| listening.cn_as_username),
        refusal,
    }
}

async fn establish(
    listening: &Listening,
    stream: TcpStream,
) -> std::io::Result<(Transport, Option<String>)> {
    let ws = |e: tokio_tungstenite::tungstenite::Error| std::io::Error::other(e);
    let path = listening.path.clone();
    match (listening.kind, &listening.tls) {
        (ListenerKind::Tcp, _) => Ok((Transport::Tcp(stream), None)),
        (ListenerKind::Ws, _) => {
            let socket = tokio_tungstenite::accept_hdr_async(stream, websocket_check(path))
                .await
                .map_err(ws)?;
            Ok((Transport::Ws(Box::new(socket)), None))
        }
        (ListenerKind::Tls, Some(tls)) => {
            let stream = tls.accept(stream).await?;
            let name = client_name(&stream);
            Ok((Transport::Tls(Box::new(stream)), name))
        }
        (ListenerKind::Wss, Some(tls)) => {
            let stream = tls.accept(stream).await?;
            let name = client_name(&stream);
            let socket = tokio_tungstenite::accept_hdr_async(stream, websocket_check(path))
                .await
                .map_err(ws)?;
            Ok((Transport::Wss(Box::new(socket)), name))
        }
        (ListenerKind::Tls | ListenerKind::Wss, None) => {
            Err(std::io::Error::other("TLS listener without a certificate"))
        }
    }
}

/// The Common Name of the client's certificate, if it sent one (already verified by rustls).
fn client_name(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()?
        .first()
        .and_then(tls::common_name)
}

/// Accepts the WebSocket upgrade on `path` only, and agrees on the `mqtt` subprotocol when the
/// client offers it (browsers refuse a connection whose offered subprotocol is not echoed).
// The callback's shape, a large error response included, is tungstenite's.
#[allow(clippy::result_large_err)]
fn websocket_check(
    path: String,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> {
    move |request: &Request, mut response: Response| {
        if request.uri().path() != path {
            let mut refusal = ErrorResponse::new(Some(format!("MQTT is served on {path}")));
            *refusal.status_mut() = http::StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let offers_mqtt = request
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mqtt");
        if offers_mqtt {
            response.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("mqtt"),
            );
        }
        Ok(response)
    }
}

/// Every second: removes sessions whose expiry interval has run out while disconnected, and
/// takes long queues of persistent sessions out of memory (`Broker::offload`); every minute,
/// removes expired messages.
async fn expiry_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                // Expired messages are skipped at delivery; sweeping them out of queues and the
                // retained store (a walk over all of them) once a minute is enough.
                if ticks.is_multiple_of(60) {
                    let n = broker.expire_messages(now());
                    if n > 0 {
                        info!(messages = n, "expired messages removed");
                    }
                }
                let n = broker.expire_sessions(now());
                if n > 0 {
                    info!(sessions = n, "expired sessions removed");
                }
                let n = broker.offload();
                if n > 0 {
                    debug!(messages = n, "queued messages taken out of memory (they are on disk)");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Reloads certificates and the users file when they change on disk.
async fn watch_files(
    certs: Vec<Arc<ReloadableCert>>,
    users: Option<Arc<FileAccess>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for cert in &certs {
                    cert.reload_if_changed();
                }
                if let Some(users) = &users {
                    users.reload_if_changed();
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's task is the bulk of what an idle connection costs (its cell is
    /// allocated in steps of 128 bytes, tokio's alignment); a change that enlarges it should
    /// be a deliberate one.
    #[test]
    fn an_idle_tcp_connections_task_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (shutdown, _) = watch::channel(false);
            let ctx = Arc::new(Context {
                broker: Broker::new(tern_broker::Limits::default(), now()),
                users: None,
                connect_timeout: Duration::from_secs(10),
                max_message_rate: 0,
                max_bandwidth: 0,
                slow_subscriber_timeout: Duration::from_secs(10),
                shutdown: shutdown.subscribe(),
                stop: Arc::default(),
                metrics: Arc::default(),
                sessions: None,
                confirmed: None,
            });
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (stream, peer) = listener.accept().unwrap();
            stream.set_nonblocking(true).unwrap();
            let stream = tokio::net::TcpStream::from_std(stream).unwrap();
            let counted = Counted {
                counts: Arc::default(),
                ip: peer.ip(),
            };
            let task = conn::serve(
                ctx,
                Transport::Tcp(stream),
                Origin::default(),
                peer.ip(),
                counted,
            );
            let size = std::mem::size_of_val(&task);
            eprintln!("idle TCP connection task: {size} bytes");
            // With tokio's header and trailer, 896 bytes of future fill a 1,024-byte cell.
            assert!(size <= 896, "{size} bytes");
            drop(client);
        });
    }
}
