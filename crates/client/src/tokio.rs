//! The desktop client: a connection task driving [`Protocol`] over TCP, TLS (rustls) or
//! WebSocket, with a cloneable [`Client`] handle for requests and an [`Events`] stream.
//!
//! With [`Config::robust`] set, the task reconnects after any failure with exponential backoff
//! and jitter, resubscribes, and re-sends QoS 1/2 messages the broker had not acknowledged;
//! requests made while it is away wait in a bounded queue. This is what `umqtt.robust` does
//! on the boards, done better: it also pings on time and keeps subscriptions.
//!
//! See the crate documentation for the tutorial's two programs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tern_proto::{
    PacketId, Properties, PropertiesBuf, ProtocolVersion, QoS, ReasonCode, Subscription,
    SubscriptionOptions, TopicFilter, TopicName, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::core::{Error, Event as CoreEvent, Options, Outgoing, Protocol};

/// In-flight QoS 1/2 messages per direction.
const INFLIGHT: usize = 64;

/// How the bytes travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TCP (`mqtt://`, port 1883).
    Tcp,
    /// MQTT over TLS (`mqtts://`, port 8883).
    Tls,
    /// MQTT over WebSocket (`ws://`, port 8080).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`, port 8884).
    Wss,
}

/// Everything a connection needs; built from a URL and adjusted with the methods below.
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport.
    pub transport: Transport,
    /// WebSocket path.
    pub path: String,
    /// CA certificates (PEM) to trust instead of the system's web roots.
    pub ca_file: Option<PathBuf>,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Client identifier; empty: the broker assigns one.
    pub client_id: String,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// Clean start.
    pub clean_start: bool,
    /// Session expiry (MQTT 5).
    pub session_expiry: Option<u32>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Vec<u8>>,
    /// Will: topic, payload, QoS, retain.
    pub will: Option<(String, Vec<u8>, QoS, bool)>,
    /// Reconnect after failures: first delay and longest delay.
    pub reconnect: Option<(Duration, Duration)>,
    /// Requests that may wait while the connection is down.
    pub queue: usize,
}

/// A URL that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl Config {
    /// A configuration from `mqtt://`, `mqtts://`, `ws://` or `wss://` `[user[:password]@]host[:port][/path]`,
    /// or a bare host name (MQTT over TCP on 1883).
    pub fn new(url: &str) -> Config {
        Config::parse(url).unwrap_or_else(|_| Config::host(url, 1883))
    }

    /// A plain TCP configuration for `host:port`.
    pub fn host(host: &str, port: u16) -> Config {
        Config {
            host: host.to_owned(),
            port,
            transport: Transport::Tcp,
            path: "/mqtt".into(),
            ca_file: None,
            version: ProtocolVersion::V3_1_1,
            client_id: String::new(),
            keep_alive: 60,
            clean_start: true,
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            reconnect: None,
            queue: 1000,
        }
    }

    /// Parses a URL; returns the configuration and the path after the host (a topic, for
    /// `tern pub` and `tern sub`).
    pub fn parse(url: &str) -> Result<Config, UrlError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| UrlError(format!("{url}: no scheme")))?;
        let (transport, port) = match scheme {
            "mqtt" | "tcp" => (Transport::Tcp, 1883),
            "mqtts" | "ssl" => (Transport::Tls, 8883),
            "ws" => (Transport::Ws, 8080),
            "wss" => (Transport::Wss, 8884),
            other => return Err(UrlError(format!("{url}: unknown scheme {other}"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| UrlError(format!("{url}: bad port {p}")))?,
            ),
            _ => (hostport, port),
        };
        let mut config = Config::host(host.trim_start_matches('[').trim_end_matches(']'), port);
        config.transport = transport;
        if let Some(u) = userinfo {
            let (user, pass) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            config.username = Some(user.to_owned());
            config.password = pass.map(|p| p.as_bytes().to_vec());
        }
        if !path.is_empty() && matches!(config.transport, Transport::Ws | Transport::Wss) {
            config.path = path.to_owned();
        }
        Ok(config)
    }

    /// Reconnects after failures (1 s doubling to 60 s, with jitter).
    pub fn robust(mut self) -> Config {
        self.reconnect = Some((Duration::from_secs(1), Duration::from_secs(60)));
        self
    }
}

/// A message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// MQTT 5 properties.
    pub properties: PropertiesBuf,
}

/// What the connection task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected (again).
    Connected {
        /// Whether the broker resumed the session.
        session_present: bool,
    },
    /// A message.
    Message(Message),
    /// The connection ended.
    Disconnected(String),
    /// Reconnecting after a delay.
    Reconnecting {
        /// Attempt number.
        attempt: u32,
        /// Delay before it.
        delay: Duration,
    },
}

/// What a client call can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// Could not reach or talk to the broker.
    Io(String),
    /// The broker refused the connection.
    Refused(ReasonCode),
    /// The protocol failed.
    Protocol(Error),
    /// The broker answered with a failure code.
    Failed(ReasonCode),
    /// The connection task has ended.
    Closed,
    /// The request queue is full (the connection is down and `queue` requests wait).
    QueueFull,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Refused(c) => write!(f, "connection refused: {}", c.name()),
            ClientError::Protocol(e) => write!(f, "{e}"),
            ClientError::Failed(c) => write!(f, "the broker answered {}", c.name()),
            ClientError::Closed => f.write_str("the connection has ended"),
            ClientError::QueueFull => f.write_str("too many requests waiting for the connection"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<Error> for ClientError {
    fn from(e: Error) -> Self {
        ClientError::Protocol(e)
    }
}

fn io(e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(e.to_string())
}

enum Request {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        done: oneshot::Sender<Result<ReasonCode, ClientError>>,
    },
    Subscribe {
        filter: String,
        options: SubscriptionOptions,
        done: oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>,
    },
    Unsubscribe {
        filter: String,
        done: oneshot::Sender<Result<(), ClientError>>,
    },
    Disconnect {
        done: oneshot::Sender<()>,
    },
}

/// A handle to the connection task; clone it freely.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
}

/// The events of a connection.
pub struct Events {
    events: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the connection task has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Client {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
        })?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Publishes; for QoS 1/2 returns once the broker has acknowledged it (its reason code).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Result<ReasonCode, ClientError> {
        TopicName::new(topic).map_err(|e| ClientError::Protocol(Error::Decode(e)))?;
        let payload = payload.into();
        let topic = topic.to_owned();
        self.request(|done| Request::Publish {
            topic,
            payload,
            qos,
            retain,
            done,
        })
        .await?
    }

    /// Subscribes to one filter; returns the broker's code (granted QoS or failure). The
    /// subscription is renewed after every reconnect.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, ClientError> {
        self.subscribe_with(filter, SubscriptionOptions::new(qos))
            .await
    }

    /// Subscribes with MQTT 5 subscription options (No Local, Retain As Published, Retain
    /// Handling; a 3.1.1 broker gets the QoS alone).
    pub async fn subscribe_with(
        &self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<ReasonCode, ClientError> {
        TopicFilter::new(filter).map_err(|e| ClientError::Protocol(Error::Decode(e)))?;
        let filter = filter.to_owned();
        let codes = self
            .request(|done| Request::Subscribe {
                filter,
                options,
                done,
            })
            .await??;
        codes
            .first()
            .copied()
            .ok_or(ClientError::Protocol(Error::UnexpectedPacket))
    }

    /// Unsubscribes.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        let filter = filter.to_owned();
        self.request(|done| Request::Unsubscribe { filter, done })
            .await?
    }

    /// Sends DISCONNECT (the will is discarded) and ends the connection task.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.request(|done| Request::Disconnect { done }).await
    }
}

/// Connects (the first attempt's failure is returned), then runs the connection in a task.
pub async fn connect(config: Config) -> Result<(Client, Events), ClientError> {
    let start = Instant::now();
    let mut conn = Connection {
        config: Arc::new(config),
        start,
        protocol: Protocol::new(),
        stream: None,
        rx: Vec::new(),
    };
    let session_present = conn.open().await?;
    let (requests, request_rx) = mpsc::channel(conn.config.queue.max(1));
    let (event_tx, events) = mpsc::unbounded_channel();
    let _ = event_tx.send(Event::Connected { session_present });
    tokio::spawn(run(conn, request_rx, event_tx));
    Ok((Client { requests }, Events { events }))
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Wss(Box<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Stream {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                buf.reserve(4096);
                s.read_buf(buf).await
            }
            Stream::Tls(s) => {
                buf.reserve(4096);
                s.read_buf(buf).await
            }
            Stream::Ws(ws) => ws_read(ws, buf).await,
            Stream::Wss(ws) => ws_read(ws, buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Ws(ws) => ws
                .send(WsMessage::binary(data.to_vec()))
                .await
                .map_err(std::io::Error::other),
            Stream::Wss(ws) => ws
                .send(WsMessage::binary(data.to_vec()))
                .await
                .map_err(std::io::Error::other),
        }
    }
}

async fn ws_read<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => {
                buf.extend_from_slice(&b);
                return Ok(b.len());
            }
            Some(Ok(WsMessage::Close(_))) | None => return Ok(0),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(std::io::Error::other(e)),
        }
    }
}

fn tls_config(config: &Config) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(io)? {
                roots.add(cert.map_err(io)?).map_err(io)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

struct Connection {
    config: Arc<Config>,
    start: Instant,
    protocol: Protocol<INFLIGHT>,
    stream: Option<Stream>,
    rx: Vec<u8>,
}

impl Connection {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn dial(&self) -> Result<Stream, ClientError> {
        let c = &self.config;
        let tcp = TcpStream::connect((c.host.as_str(), c.port))
            .await
            .map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let tls = |tcp| async {
            let name = rustls::pki_types::ServerName::try_from(c.host.clone()).map_err(io)?;
            tokio_rustls::TlsConnector::from(tls_config(c)?)
                .connect(name, tcp)
                .await
                .map_err(io)
        };
        let request = || {
            let scheme = if c.transport == Transport::Wss {
                "wss"
            } else {
                "ws"
            };
            let mut request = format!("{scheme}://{}:{}{}", c.host, c.port, c.path)
                .into_client_request()
                .map_err(io)?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "mqtt".parse().map_err(io)?);
            Ok::<_, ClientError>(request)
        };
        Ok(match c.transport {
            Transport::Tcp => Stream::Tcp(tcp),
            Transport::Tls => Stream::Tls(Box::new(tls(tcp).await?)),
            Transport::Ws => Stream::Ws(Box::new(
                tokio_tungstenite::client_async(request()?, tcp)
                    .await
                    .map_err(io)?
                    .0,
            )),
            Transport::Wss => {
                let tls = tls(tcp).await?;
                Stream::Wss(Box::new(
                    tokio_tungstenite::client_async(request()?, tls)
                        .await
                        .map_err(io)?
                        .0,
                ))
            }
        })
    }

    /// Connects and waits for CONNACK; returns Session Present.
    async fn open(&mut self) -> Result<bool, ClientError> {
        let mut stream = self.dial().await?;
        let c = self.config.clone();
        let will = match &c.will {
            Some((topic, payload, qos, retain)) => Some(Will {
                topic: TopicName::new(topic)
                    .map_err(|e| ClientError::Protocol(Error::Decode(e)))?,
                payload,
                qos: *qos,
                retain: *retain,
                properties: Properties::default(),
            }),
            None => None,
        };
        let options = Options {
            version: c.version,
            client_id: &c.client_id,
            keep_alive: c.keep_alive,
            clean_start: c.clean_start,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            will,
            session_expiry: c.session_expiry,
        };
        let mut out = vec![0u8; 1024 + c.will.as_ref().map_or(0, |w| w.0.len() + w.1.len())];
        let n = self.protocol.connect(&options, self.now(), &mut out)?;
        stream.write_all(&out[..n]).await.map_err(io)?;
        self.rx.clear();
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        loop {
            let now = self.now();
            if let Some(step) = self.protocol.handle(&self.rx, now, &mut out)? {
                let consumed = step.consumed;
                let result = match step.event {
                    Some(CoreEvent::Connected { session_present }) => Some(Ok(session_present)),
                    Some(CoreEvent::Refused(code)) => Some(Err(ClientError::Refused(code))),
                    _ => None,
                };
                self.rx.drain(..consumed);
                if let Some(result) = result {
                    if result.is_ok() {
                        self.stream = Some(stream);
                    }
                    return result;
                }
                continue;
            }
            tokio::select! {
                n = stream.read_into(&mut self.rx) => match n {
                    Ok(0) | Err(_) => return Err(ClientError::Io("connection closed before CONNACK".into())),
                    Ok(_) => {}
                },
                _ = &mut deadline => return Err(ClientError::Io("no CONNACK within 30 s".into())),
            }
        }
    }
}

/// A QoS 1/2 publication kept until acknowledged: topic, payload, QoS, retain, and who waits.
type Unacknowledged = (
    String,
    Vec<u8>,
    QoS,
    bool,
    oneshot::Sender<Result<ReasonCode, ClientError>>,
);

/// What the task remembers of requests in flight.
struct Pending {
    publishes: HashMap<u16, Unacknowledged>,
    subscribes: HashMap<u16, oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>>,
    unsubscribes: HashMap<u16, oneshot::Sender<Result<(), ClientError>>>,
    /// Every subscription, to renew after a reconnect.
    subscriptions: Vec<(String, SubscriptionOptions)>,
}

async fn run(
    mut conn: Connection,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut pending = Pending {
        publishes: HashMap::new(),
        subscribes: HashMap::new(),
        unsubscribes: HashMap::new(),
        subscriptions: Vec::new(),
    };
    loop {
        let why = serve(&mut conn, &mut requests, &events, &mut pending).await;
        let Some(why) = why else { return };
        conn.stream = None;
        conn.protocol.connection_lost();
        let _ = events.send(Event::Disconnected(why.to_string()));
        let Some((first, max)) = conn.config.reconnect else {
            fail_all(&mut pending, &why);
            return;
        };
        let mut attempt = 0u32;
        let mut delay = first;
        let session_present = loop {
            attempt += 1;
            // Jitter: between half and all of the delay, so a fleet does not return at once.
            let nanos =
                Instant::now().elapsed().subsec_nanos() ^ attempt.wrapping_mul(2_654_435_761);
            let jittered = delay / 2 + delay.mul_f64(f64::from(nanos % 1000) / 2000.0);
            let _ = events.send(Event::Reconnecting {
                attempt,
                delay: jittered,
            });
            tokio::time::sleep(jittered).await;
            match conn.open().await {
                Ok(present) => break present,
                Err(ClientError::Refused(code))
                    if code == ReasonCode::BAD_USER_NAME_OR_PASSWORD
                        || code == ReasonCode::NOT_AUTHORIZED =>
                {
                    let e = ClientError::Refused(code);
                    let _ = events.send(Event::Disconnected(e.to_string()));
                    fail_all(&mut pending, &e);
                    return;
                }
                Err(_) => delay = (delay * 2).min(max),
            }
        };
        let _ = events.send(Event::Connected { session_present });
        if let Err(e) = resume(&mut conn, &mut pending, session_present).await {
            let _ = events.send(Event::Disconnected(e.to_string()));
        }
    }
}

fn fail_all(pending: &mut Pending, why: &ClientError) {
    for (_, (.., done)) in pending.publishes.drain() {
        let _ = done.send(Err(why.clone()));
    }
    for (_, done) in pending.subscribes.drain() {
        let _ = done.send(Err(why.clone()));
    }
    for (_, done) in pending.unsubscribes.drain() {
        let _ = done.send(Err(why.clone()));
    }
}

/// After a reconnect: re-sends what was in flight (DUP, or PUBREL) when the session was
/// resumed, or publishes it anew when it was not; renews every subscription.
async fn resume(
    conn: &mut Connection,
    pending: &mut Pending,
    session_present: bool,
) -> Result<(), ClientError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let now = conn.now();
    if session_present {
        let states: Vec<(PacketId, Outgoing)> = conn.protocol.in_flight().collect();
        for (id, state) in states {
            if let (
                Outgoing::AwaitingPuback | Outgoing::AwaitingPubrec,
                Some((topic, payload, qos, retain, _)),
            ) = (state, pending.publishes.get(&id.get()))
            {
                let need = payload.len() + topic.len() + 64;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let n = conn
                    .protocol
                    .republish(id, topic, payload, *qos, *retain, now, &mut buf)?;
                out.extend_from_slice(&buf[..n]);
            }
        }
        let n = conn.protocol.resend_releases(now, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
    } else {
        let old: Vec<_> = pending.publishes.drain().map(|(_, v)| v).collect();
        for message in old {
            send_publish(
                &mut conn.protocol,
                pending,
                message,
                now,
                &mut buf,
                &mut out,
            );
        }
    }
    let subscriptions = pending.subscriptions.clone();
    for (filter, options) in subscriptions {
        let f = TopicFilter::new(&filter).map_err(|e| ClientError::Protocol(Error::Decode(e)))?;
        let subs = [Subscription { filter: f, options }];
        let (n, _) = conn.protocol.subscribe(&subs, now, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
    }
    if let Some(stream) = conn.stream.as_mut() {
        stream.write_all(&out).await.map_err(io)?;
    }
    Ok(())
}

/// Encodes a publication into `out`: a QoS 1/2 one is kept until acknowledged, a QoS 0 one is
/// done once written; an encoding failure goes back to whoever waits.
fn send_publish(
    protocol: &mut Protocol<INFLIGHT>,
    pending: &mut Pending,
    message: Unacknowledged,
    now: u64,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let (topic, payload, qos, retain, done) = message;
    let need = payload.len() + topic.len() + 64;
    if buf.len() < need {
        buf.resize(need, 0);
    }
    match protocol.publish(&topic, &payload, qos, retain, now, buf) {
        Ok((n, Some(id))) => {
            out.extend_from_slice(&buf[..n]);
            pending
                .publishes
                .insert(id.get(), (topic, payload, qos, retain, done));
        }
        Ok((n, None)) => {
            out.extend_from_slice(&buf[..n]);
            let _ = done.send(Ok(ReasonCode::SUCCESS));
        }
        Err(e) => {
            let _ = done.send(Err(e.into()));
        }
    }
}

/// Runs one connection until it fails (returning why) or the client disconnects (`None`).
async fn serve(
    conn: &mut Connection,
    requests: &mut mpsc::Receiver<Request>,
    events: &mpsc::UnboundedSender<Event>,
    pending: &mut Pending,
) -> Option<ClientError> {
    let mut buf = vec![0u8; 4096];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let deadline = conn
            .protocol
            .next_deadline()
            .map(|ms| conn.start + Duration::from_millis(ms));
        let room = conn.protocol.in_flight().count() < INFLIGHT;
        let Some(stream) = conn.stream.as_mut() else {
            return Some(ClientError::Closed);
        };
        enum Wake {
            Read(std::io::Result<usize>),
            Request(Option<Request>),
            Tick,
        }
        let wake = tokio::select! {
            n = stream.read_into(&mut conn.rx) => Wake::Read(n),
            r = requests.recv(), if room => Wake::Request(r),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => Wake::Tick,
        };
        let now = conn.start.elapsed().as_millis() as u64;
        match wake {
            Wake::Read(Ok(0) | Err(_)) => return Some(ClientError::Io("connection lost".into())),
            Wake::Read(Ok(_)) => loop {
                let step = match conn.protocol.handle(&conn.rx, now, &mut buf) {
                    Ok(Some(step)) => step,
                    Ok(None) => break,
                    Err(e) => return Some(e.into()),
                };
                out.extend_from_slice(&buf[..step.written]);
                let consumed = step.consumed;
                match step.event {
                    Some(CoreEvent::Message(p)) => {
                        let message = Message {
                            topic: p.topic.as_str().to_owned(),
                            payload: p.payload.to_vec(),
                            qos: p.qos,
                            retain: p.retain,
                            properties: PropertiesBuf::new(&p.properties).unwrap_or_default(),
                        };
                        let _ = events.send(Event::Message(message));
                    }
                    Some(CoreEvent::Published { packet_id, reason }) => {
                        if let Some((.., done)) = pending.publishes.remove(&packet_id.get()) {
                            let _ = done.send(if reason.is_success() {
                                Ok(reason)
                            } else {
                                Err(ClientError::Failed(reason))
                            });
                        }
                    }
                    Some(CoreEvent::Subscribed { packet_id, codes }) => {
                        if let Some(done) = pending.subscribes.remove(&packet_id.get()) {
                            let _ = done.send(Ok(codes.iter().collect()));
                        }
                    }
                    Some(CoreEvent::Unsubscribed { packet_id }) => {
                        if let Some(done) = pending.unsubscribes.remove(&packet_id.get()) {
                            let _ = done.send(Ok(()));
                        }
                    }
                    Some(CoreEvent::Disconnected(reason)) => {
                        conn.rx.drain(..consumed);
                        return Some(ClientError::Failed(reason));
                    }
                    Some(CoreEvent::Connected { .. } | CoreEvent::Refused(_) | CoreEvent::Pong)
                    | None => {}
                }
                conn.rx.drain(..consumed);
            },
            Wake::Request(None) => return None,
            Wake::Request(Some(request)) => match request {
                Request::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    done,
                } => {
                    let message = (topic, payload, qos, retain, done);
                    send_publish(
                        &mut conn.protocol,
                        pending,
                        message,
                        now,
                        &mut buf,
                        &mut out,
                    );
                }
                Request::Subscribe {
                    filter,
                    options,
                    done,
                } => {
                    let Ok(f) = TopicFilter::new(&filter) else {
                        continue;
                    };
                    let subs = [Subscription { filter: f, options }];
                    match conn.protocol.subscribe(&subs, now, &mut buf) {
                        Ok((n, id)) => {
                            out.extend_from_slice(&buf[..n]);
                            pending.subscribes.insert(id.get(), done);
                            pending.subscriptions.retain(|(f, _)| *f != filter);
                            pending.subscriptions.push((filter, options));
                        }
                        Err(e) => {
                            let _ = done.send(Err(e.into()));
                        }
                    }
                }
                Request::Unsubscribe { filter, done } => {
                    let Ok(f) = TopicFilter::new(&filter) else {
                        continue;
                    };
                    match conn.protocol.unsubscribe(&[f], now, &mut buf) {
                        Ok((n, id)) => {
                            out.extend_from_slice(&buf[..n]);
                            pending.unsubscribes.insert(id.get(), done);
                            pending.subscriptions.retain(|(f, _)| *f != filter);
                        }
                        Err(e) => {
                            let _ = done.send(Err(e.into()));
                        }
                    }
                }
                Request::Disconnect { done } => {
                    if let Ok(n) = conn.protocol.disconnect(&mut buf) {
                        let _ = stream.write_all(&buf[..n]).await;
                    }
                    let _ = done.send(());
                    return None;
                }
            },
            Wake::Tick => match conn.protocol.poll(now, &mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.into()),
            },
        }
        if !out.is_empty() {
            let Some(stream) = conn.stream.as_mut() else {
                return Some(ClientError::Closed);
            };
            if let Err(e) = stream.write_all(&out).await {
                return Some(io(e));
            }
            out.clear();
        }
    }
}
