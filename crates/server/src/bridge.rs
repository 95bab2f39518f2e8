//! Bridges: a connection to another broker (tern, Mosquitto, HiveMQ Cloud, any MQTT 3.1.1 or
//! 5 broker) over which topics are forwarded, with their levels before the first wildcard
//! remapped (`home/#` here is `site1/home/#` there).
//!
//! Each bridge is two clients joined in one task:
//! - toward this broker, an in-process MQTT 5 connection with a persistent session
//!   (`$bridge/<name>`) subscribed to the outgoing patterns with No Local. While the remote is
//!   away the session is detached and its queue is kept like any offline persistent session:
//!   in the store, bounded by `max_queued_messages`, surviving restarts. A message is
//!   acknowledged to this broker only once the remote acknowledged it, so a crash re-sends
//!   it (at least once).
//! - toward the remote, a `tern-client` connection (TCP, TLS, WebSocket) that reconnects with
//!   backoff and keeps what it has not delivered.
//!
//! Messages never loop: the local subscription has No Local (what the bridge brings in is not
//! sent back out), and with MQTT 5 the remote subscriptions have No Local too. MQTT 3.1.1 has
//! no such option, so a 3.1.1 bridge whose incoming patterns could match what it sends out is
//! refused at start.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_broker::{Broker, Close, Connection, End, Identity, Origin};
use tern_client::tokio as remote;
use tern_proto::{
    decode, Ack, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{BridgeConfig, BridgeDirection, BridgeTopic};
use crate::now;

/// The user name a bridge's local connection acts as. No client can authenticate as a name
/// starting with `$`, so these rights are the bridges' alone.
pub(crate) fn local_identity(name: &str) -> String {
    format!("$bridge:{name}")
}

/// A bridge's figures, for `$SYS`, the metrics and the console.
#[derive(Debug)]
pub struct BridgeStatus {
    /// The bridge's name.
    pub name: String,
    /// The remote's URL (without credentials).
    pub remote: String,
    /// Connected to the remote now.
    pub connected: AtomicBool,
    /// Messages sent to the remote and acknowledged (QoS 0: written).
    pub forwarded_out: AtomicU64,
    /// Messages received from the remote and handed to this broker.
    pub forwarded_in: AtomicU64,
    /// Failed connection attempts, lost connections and refused messages.
    pub errors: AtomicU64,
    /// The last error, for people.
    pub last_error: Mutex<Option<String>>,
}

impl BridgeStatus {
    fn error(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// The local session's client identifier.
    pub fn local_client_id(&self) -> String {
        format!("$bridge/{}", self.name)
    }

    /// Messages waiting in the local session for the remote.
    pub fn queued(&self, broker: &Broker) -> usize {
        broker
            .session(&self.local_client_id())
            .map_or(0, |s| s.lock().queue.len())
    }
}

/// A filter split at its first wildcard: the literal levels before it (with their `/`), and
/// the rest.
fn split(filter: &str) -> (&str, &str) {
    let mut at = 0;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            return (&filter[..at], &filter[at..]);
        }
        at += level.len() + 1;
    }
    (filter, "")
}

/// `topic`, matched by `from`, rewritten into the namespace of `to` (same wildcard part,
/// another literal prefix). `None` if it cannot be (an empty result).
fn remap(topic: &str, from: &str, to: &str) -> Option<String> {
    let (from_prefix, rest) = split(from);
    let (to_prefix, _) = split(to);
    if rest.is_empty() {
        return Some(to.to_owned());
    }
    let mapped = match topic.strip_prefix(from_prefix) {
        Some(tail) => format!("{to_prefix}{tail}"),
        // `a/#` also matches `a` itself.
        None if rest == "#" && Some(topic) == from_prefix.strip_suffix('/') => {
            to_prefix.strip_suffix('/')?.to_owned()
        }
        None => return None,
    };
    let valid = TopicName::new(&mapped).is_ok();
    valid.then_some(mapped)
}

/// Whether some topic matches both filters.
fn overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

fn remote_filter(t: &BridgeTopic) -> &str {
    t.remote.as_deref().unwrap_or(&t.local)
}

fn sends_out(t: &BridgeTopic) -> bool {
    t.direction != BridgeDirection::In
}

fn brings_in(t: &BridgeTopic) -> bool {
    t.direction != BridgeDirection::Out
}

/// Checks a bridge's configuration; the error says what is wrong.
pub(crate) fn check(b: &BridgeConfig) -> Result<(), String> {
    if b.name.is_empty()
        || !b
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("`name` must be letters, digits, `-` or `_`".into());
    }
    remote::Config::parse(&b.url).map_err(|e| format!("`url`: {}", e.0))?;
    if b.protocol != 4 && b.protocol != 5 {
        return Err("`protocol` must be 5 or 4 (3.1.1)".into());
    }
    if b.topics.is_empty() {
        return Err("needs at least one [[bridge.topic]]".into());
    }
    for t in &b.topics {
        let remote = remote_filter(t);
        for (key, f) in [("local", t.local.as_str()), ("remote", remote)] {
            let filter =
                TopicFilter::new(f).map_err(|_| format!("`{key}` {f:?} is not a topic filter"))?;
            if filter.shared().is_some() {
                return Err(format!(
                    "`{key}` {f:?}: shared subscriptions cannot be bridged"
                ));
            }
        }
        if split(&t.local).1 != split(remote).1 {
            return Err(format!(
                "{:?} and {remote:?} differ after their first wildcard: only the levels before it can be remapped",
                t.local
            ));
        }
        if t.qos > 2 {
            return Err("`qos` must be 0, 1 or 2".into());
        }
    }
    if b.protocol == 4 {
        for out in b.topics.iter().filter(|t| sends_out(t)) {
            for inn in b.topics.iter().filter(|t| brings_in(t)) {
                if overlap(remote_filter(out), remote_filter(inn)) {
                    return Err(format!(
                        "with MQTT 3.1.1 the remote cannot be told not to send back what the bridge publishes, and {:?} (in) matches what {:?} (out) sends: messages would loop. Use protocol = 5, or patterns that do not overlap",
                        remote_filter(inn),
                        remote_filter(out)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The remote's URL without credentials, for display.
fn display_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// A new status for `b`.
pub(crate) fn status(b: &BridgeConfig) -> Arc<BridgeStatus> {
    Arc::new(BridgeStatus {
        name: b.name.clone(),
        remote: display_url(&b.url),
        connected: AtomicBool::new(false),
        forwarded_out: AtomicU64::new(0),
        forwarded_in: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_error: Mutex::new(None),
    })
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap_or(QoS::AtLeastOnce)
}

/// The local side: an in-process connection to this broker.
struct Local {
    conn: Connection,
    out: Vec<u8>,
    next_id: u16,
}

impl Local {
    /// Attaches to the bridge's session (created persistent on first use) and subscribes to
    /// the outgoing patterns.
    fn attach(broker: &Arc<Broker>, cfg: &BridgeConfig, status: &BridgeStatus) -> Local {
        let mut conn = Connection::new(
            broker.clone(),
            Origin {
                peer: format!("bridge {}", cfg.name),
                loopback: true,
                allow_anonymous: Some(false),
                certificate_name: None,
                refusal: None,
            },
        );
        conn.set_authentication(Ok(Identity {
            username: Some(Arc::from(local_identity(&cfg.name).as_str())),
        }));
        let client_id = status.local_client_id();
        let connect = Connect {
            version: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: Some(u32::MAX),
                ..Properties::default()
            },
            client_id: &client_id,
            will: None,
            username: None,
            password: None,
        };
        let mut local = Local {
            conn,
            out: Vec::new(),
            next_id: 0,
        };
        let _ = local
            .conn
            .handle(Packet::Connect(connect), now(), &mut local.out);
        let filters: Vec<(TopicFilter<'_>, SubscriptionOptions)> = cfg
            .topics
            .iter()
            .filter(|t| sends_out(t))
            .filter_map(|t| {
                let options = SubscriptionOptions {
                    qos: qos(t.qos),
                    no_local: true,
                    retain_as_published: t.retain,
                    retain_handling: RetainHandling::SendIfNew,
                };
                TopicFilter::new(&t.local).ok().map(|f| (f, options))
            })
            .collect();
        if !filters.is_empty() {
            let subs: Vec<Subscription<'_>> = filters
                .iter()
                .map(|(filter, options)| Subscription {
                    filter: *filter,
                    options: *options,
                })
                .collect();
            let id = local.packet_id();
            let subscribe = Subscribe {
                packet_id: id,
                properties: Properties::default(),
                subscriptions: tern_proto::List::Items(&subs),
            };
            let _ = local
                .conn
                .handle(Packet::Subscribe(subscribe), now(), &mut local.out);
        }
        local
    }

    fn packet_id(&mut self) -> PacketId {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_id) {
                return id;
            }
        }
    }

    fn handle(&mut self, packet: Packet<'_>) -> Result<(), Close> {
        self.conn.handle(packet, now(), &mut self.out)
    }

    /// Waits until what the output depends on is on disk, as a socket connection does.
    async fn durable(&mut self, broker: &Broker) {
        let needed = self.conn.durable_needed();
        if let Some(store) = broker.store() {
            if needed > store.durable() {
                store.wait_durable(needed).await;
            }
        }
    }
}

/// What the local broker sent the bridge, copied out of its output buffer.
enum FromLocal {
    Publish {
        id: Option<u16>,
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
    },
    /// PUBREL for a QoS 2 message the bridge acknowledged with PUBREC.
    Release(u16),
    /// PUBREC for a QoS 2 message the bridge brought in.
    Received(u16),
    /// The broker closed the bridge's connection.
    Closed,
}

fn drain(out: &mut Vec<u8>) -> Vec<FromLocal> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Ok(Some((packet, used))) = decode(&out[at..], ProtocolVersion::V5, u32::MAX) {
        at += used;
        match packet {
            Packet::Publish(p) => found.push(FromLocal::Publish {
                id: p.packet_id.map(PacketId::get),
                topic: p.topic.as_str().to_owned(),
                payload: p.payload.to_vec(),
                qos: p.qos,
                retain: p.retain,
            }),
            Packet::PubRel(a) => found.push(FromLocal::Release(a.packet_id.get())),
            Packet::PubRec(a) => found.push(FromLocal::Received(a.packet_id.get())),
            Packet::Disconnect(_) => found.push(FromLocal::Closed),
            _ => {}
        }
    }
    out.clear();
    found
}

/// Runs a bridge until shutdown.
pub(crate) async fn run(
    broker: Arc<Broker>,
    cfg: BridgeConfig,
    status: Arc<BridgeStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The session exists (and queues) from the first start, even before the remote is
    // reached.
    let mut first = Local::attach(&broker, &cfg, &status);
    first.durable(&broker).await;
    first
        .conn
        .end(End::Disconnected(ReasonCode::SUCCESS), now());

    let mut delay = Duration::from_secs(1);
    loop {
        let connected = tokio::select! {
            c = connect_remote(&cfg) => c,
            _ = shutdown.changed() => return,
        };
        let (client, events) = match connected {
            Ok(c) => c,
            Err(e) => {
                warn!(bridge = %cfg.name, remote = %status.remote, error = %e, retry_in = ?delay, "bridge cannot connect");
                status.error(e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        delay = Duration::from_secs(1);
        info!(bridge = %cfg.name, remote = %status.remote, "bridge connected");
        status.connected.store(true, Ordering::Relaxed);
        let stop = forward(&broker, &cfg, &status, client, events, &mut shutdown).await;
        status.connected.store(false, Ordering::Relaxed);
        if stop {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn connect_remote(
    cfg: &BridgeConfig,
) -> Result<(remote::Client, remote::Events), remote::ClientError> {
    let mut c = remote::Config::parse(&cfg.url)
        .map_err(|e| remote::ClientError::Io(e.0))?
        .robust();
    c.version = if cfg.protocol == 4 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    };
    c.client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tern-bridge-{}", cfg.name));
    c.keep_alive = cfg.keep_alive;
    if cfg.username.is_some() {
        c.username = cfg.username.clone();
    }
    if let Some(p) = &cfg.password {
        c.password = Some(p.as_bytes().to_vec());
    }
    c.ca_file = cfg.ca_file.clone();
    // The remote keeps the bridge's subscriptions and what it has not delivered while the
    // connection is down.
    c.clean_start = false;
    c.session_expiry = Some(u32::MAX);
    let (client, events) = remote::connect(c).await?;
    for t in cfg.topics.iter().filter(|t| brings_in(t)) {
        let options = SubscriptionOptions {
            qos: qos(t.qos),
            no_local: cfg.protocol == 5,
            retain_as_published: t.retain,
            retain_handling: RetainHandling::SendIfNew,
        };
        let code = client.subscribe_with(remote_filter(t), options).await?;
        if !code.is_success() {
            return Err(remote::ClientError::Failed(code));
        }
    }
    Ok((client, events))
}

type Forwarded = (Option<u16>, QoS, Result<ReasonCode, remote::ClientError>);

/// Moves messages both ways until the remote client ends (false) or shutdown (true).
async fn forward(
    broker: &Arc<Broker>,
    cfg: &BridgeConfig,
    status: &BridgeStatus,
    client: remote::Client,
    mut events: remote::Events,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut local = Local::attach(broker, cfg, status);
    let Some(session) = local.conn.session().cloned() else {
        warn!(bridge = %cfg.name, "the broker refused the bridge's local connection");
        return false;
    };
    let outgoing: Vec<&BridgeTopic> = cfg.topics.iter().filter(|t| sends_out(t)).collect();
    let incoming: Vec<&BridgeTopic> = cfg.topics.iter().filter(|t| brings_in(t)).collect();
    let mut sending: JoinSet<Forwarded> = JoinSet::new();
    let stop = loop {
        // Acknowledgements free the in-flight window: send what the queue holds next.
        if local.conn.flush(now(), &mut local.out).is_err() {
            break false;
        }
        local.durable(broker).await;
        let mut closed = false;
        for item in drain(&mut local.out) {
            match item {
                FromLocal::Publish {
                    id,
                    topic,
                    payload,
                    qos,
                    retain,
                } => {
                    let target = outgoing.iter().find_map(|t| {
                        let filter = TopicFilter::new(&t.local).ok()?;
                        let name = TopicName::new(&topic).ok()?;
                        filter
                            .matches(name)
                            .then(|| remap(&topic, &t.local, remote_filter(t)))
                            .flatten()
                    });
                    let Some(target) = target else {
                        // Nothing maps it (cannot happen for what the subscriptions match);
                        // acknowledged so it does not stay in flight for ever.
                        if let Some(id) = id.and_then(PacketId::new) {
                            let ack = Ack::new(id);
                            let _ = match qos {
                                QoS::ExactlyOnce => local.handle(Packet::PubRec(ack)),
                                _ => local.handle(Packet::PubAck(ack)),
                            };
                        }
                        continue;
                    };
                    let client = client.clone();
                    sending.spawn(async move {
                        let result = client.publish(&target, payload, qos, retain).await;
                        (id, qos, result)
                    });
                }
                FromLocal::Release(id) => {
                    if let Some(id) = PacketId::new(id) {
                        let _ = local.handle(Packet::PubComp(Ack::new(id)));
                    }
                }
                FromLocal::Received(id) => {
                    if let Some(id) = PacketId::new(id) {
                        let _ = local.handle(Packet::PubRel(Ack::new(id)));
                    }
                }
                FromLocal::Closed => closed = true,
            }
        }
        if closed {
            warn!(bridge = %cfg.name, "the broker closed the bridge's local connection");
            break false;
        }
        if !local.out.is_empty() {
            continue;
        }
        tokio::select! {
            _ = session.wake.notified() => {}
            Some(done) = sending.join_next(), if !sending.is_empty() => {
                let Ok((id, qos, result)) = done else { continue };
                match result {
                    Ok(code) if code.is_success() => {
                        status.forwarded_out.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = id.and_then(PacketId::new) {
                            let ack = Ack::new(id);
                            let _ = match qos {
                                QoS::ExactlyOnce => local.handle(Packet::PubRec(ack)),
                                _ => local.handle(Packet::PubAck(ack)),
                            };
                        }
                    }
                    // Refused by the remote (not authorized, quota): it will not take it
                    // later either; counted, logged and acknowledged here.
                    Ok(code) => {
                        status.error(format!("the remote refused a message: {}", code.name()));
                        warn!(bridge = %cfg.name, reason = %code, "the remote refused a forwarded message");
                        if let Some(id) = id.and_then(PacketId::new) {
                            let ack = Ack::new(id);
                            let _ = match qos {
                                QoS::ExactlyOnce => local.handle(Packet::PubRec(ack)),
                                _ => local.handle(Packet::PubAck(ack)),
                            };
                        }
                    }
                    // The client task ended: left in flight here, sent again next time.
                    Err(e) => status.error(e.to_string()),
                }
            }
            event = events.recv() => match event {
                Some(remote::Event::Message(m)) => {
                    let Some((target, t)) = incoming.iter().find_map(|t| {
                        let filter = TopicFilter::new(remote_filter(t)).ok()?;
                        let name = TopicName::new(&m.topic).ok()?;
                        filter.matches(name).then(|| remap(&m.topic, remote_filter(t), &t.local)).flatten().map(|x| (x, t))
                    }) else {
                        continue;
                    };
                    let Ok(topic) = TopicName::new(&target) else { continue };
                    let q = m.qos.min(qos(t.qos));
                    let packet_id = (q != QoS::AtMostOnce).then(|| local.packet_id());
                    let publish = Publish {
                        dup: false,
                        qos: q,
                        retain: m.retain && t.retain,
                        topic,
                        packet_id,
                        properties: Properties::default(),
                        payload: &m.payload,
                    };
                    if local.handle(Packet::Publish(publish)).is_err() {
                        status.error("this broker refused a message from the remote".into());
                    } else {
                        status.forwarded_in.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(remote::Event::Connected { .. }) => {
                    if !status.connected.swap(true, Ordering::Relaxed) {
                        info!(bridge = %cfg.name, "bridge reconnected");
                    }
                }
                Some(remote::Event::Disconnected(why)) => {
                    warn!(bridge = %cfg.name, why = %why, "bridge lost the remote");
                    status.connected.store(false, Ordering::Relaxed);
                    status.error(why);
                }
                Some(remote::Event::Reconnecting { .. }) => {}
                None => break false,
            },
            _ = shutdown.changed() => break true,
        }
    };
    sending.abort_all();
    local
        .conn
        .end(End::Disconnected(ReasonCode::SUCCESS), now());
    if stop {
        let _ = client.disconnect().await;
    }
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_remapped_before_the_first_wildcard() {
        assert_eq!(
            remap("home/a/b", "home/#", "site1/home/#").as_deref(),
            Some("site1/home/a/b")
        );
        assert_eq!(remap("home", "home/#", "site1/#").as_deref(), Some("site1"));
        assert_eq!(
            remap("x/1/t", "x/+/t", "y/z/+/t").as_deref(),
            Some("y/z/1/t")
        );
        assert_eq!(remap("a/b", "a/b", "c").as_deref(), Some("c"));
        assert_eq!(remap("a/b", "#", "#").as_deref(), Some("a/b"));
        assert_eq!(remap("home", "home/#", "#"), None);
    }

    #[test]
    fn overlapping_filters() {
        assert!(overlap("a/#", "a/b/c"));
        assert!(overlap("a/+/c", "a/b/+"));
        assert!(overlap("#", "x"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/+", "a/b/c"));
        assert!(overlap("a/b", "a/b"));
    }

    fn bridge(protocol: u8, topics: &[(BridgeDirection, &str, Option<&str>)]) -> BridgeConfig {
        BridgeConfig {
            name: "cloud".into(),
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            ca_file: None,
            client_id: None,
            protocol,
            keep_alive: 60,
            topics: topics
                .iter()
                .map(|(d, l, r)| BridgeTopic {
                    direction: *d,
                    local: (*l).into(),
                    remote: r.map(Into::into),
                    qos: 1,
                    retain: true,
                })
                .collect(),
        }
    }

    #[test]
    fn configurations_that_could_loop_or_not_map_are_refused() {
        use BridgeDirection::*;
        assert!(check(&bridge(5, &[(Both, "home/#", Some("site/home/#"))])).is_ok());
        let err = check(&bridge(4, &[(Both, "home/#", None)])).unwrap_err();
        assert!(err.contains("loop"), "{err}");
        assert!(check(&bridge(
            4,
            &[(Out, "a/#", Some("up/#")), (In, "down/#", Some("down/#"))]
        ))
        .is_ok());
        let err = check(&bridge(5, &[(Out, "a/+/x", Some("b/#"))])).unwrap_err();
        assert!(err.contains("after their first wildcard"), "{err}");
        assert!(check(&bridge(5, &[(Out, "$share/g/a", None)])).is_err());
        assert!(check(&bridge(5, &[])).is_err());
        assert!(check(&bridge(3, &[(Out, "a", None)])).is_err());
        let mut bad_name = bridge(5, &[(Out, "a", None)]);
        bad_name.name = "a b".into();
        assert!(check(&bad_name).is_err());
        let mut bad_url = bridge(5, &[(Out, "a", None)]);
        bad_url.url = "ftp://x".into();
        assert!(check(&bad_url).unwrap_err().contains("url"));
    }

    #[test]
    fn credentials_are_not_displayed() {
        assert_eq!(
            display_url("mqtts://u:p@host:8883/x"),
            "mqtts://host:8883/x"
        );
        assert_eq!(display_url("mqtt://host"), "mqtt://host");
    }
}
