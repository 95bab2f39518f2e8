//! Cluster mode: several tern nodes share their messages over NATS (`[cluster]`).
//!
//! Each node keeps its own connections, sessions and subscription tree. The cluster adds:
//! - **fan-out**: a message published on this node (by a client, a will or a bridge) is
//!   published on NATS under a subject built from its topic, level by level (`subject_of`);
//!   the node subscribes on NATS once per distinct subject its local filters need
//!   (`subjects_of`, reference counted), so NATS sends a node only what it has subscribers
//!   for. A message from NATS is routed here like a local one, with the publisher
//!   `$cluster/<origin>`, and never forwarded again. The connection to NATS has `no_echo`: a
//!   node does not get its own publications back.
//! - **retained messages**: a JetStream key-value bucket (`<prefix>_retained`, `replicas`
//!   copies) holds the newest retained message per topic; every node watches it and keeps
//!   the whole set locally (its own retained store), so a new subscription on any node gets
//!   the matching retained messages at once, from memory.
//!
//! One NATS message reaches a node once per subscription of the node that matches it
//! (`a/+` and `a/#` both match `a/b`), so every message carries its origin and a sequence
//! number and the receiver drops copies it has already routed (`Seen`).
//!
//! - **the session registry**: a key-value bucket (`<prefix>_sessions`) mapping each client
//!   identifier to the node it last connected to; the node that held it before closes its
//!   connection with Session Taken Over (`registry_loop`).
//!
//! - **shared subscriptions**: each `$share/<group>/<filter>` with local members is a NATS
//!   queue subscription (on a second connection, without `no_echo`), so NATS picks one node
//!   per message and the node's group one member (`Broker::route_shared`); the broker then
//!   never gives local publications to local group members directly.
//!
//! - **acknowledging after the stream** (`wait_for_stream`): QoS 1/2 messages are published
//!   through JetStream and their publishers' acknowledgements wait for the stream's
//!   (`publish_loop`, the connections' `confirmed` ticket).
//! - **sessions that move and outlive their node**: `sessions.rs`.
//!
//! What this does not do yet (docs/cluster.md): exactly once for QoS 2 across a node's death,
//! delivery to connected subscribers on live nodes when a NATS server dies mid-message.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::{Client, ConnectOptions, Event};
use futures_util::StreamExt;
use tern_broker::{Broker, Message, Removal, CLUSTER_PUBLISHER_PREFIX};
use tern_proto::{PropertiesBuf, PropertyContext, QoS, ReasonCode};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamMap;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::now;

mod sessions;
pub(crate) use sessions::SessionMover;

/// Messages waiting to be published on NATS; beyond this, new ones are dropped and counted.
const OUTGOING_CAPACITY: usize = 100_000;

/// A QoS 1/2 message published through JetStream, waiting for the stream to confirm it.
struct Pending {
    ticket: u64,
    ack: Option<PublishAckFuture>,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
}

/// How long a node keeps sending a QoS 1/2 message to the stream before it acknowledges it
/// to its publisher unconfirmed.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(30);

/// How many times a node tries to read an outage's messages from the stream.
const CATCH_UP_ATTEMPTS: u32 = 10;

/// QoS 1/2 messages published through JetStream whose acknowledgement is awaited at once.
const ACKS_IN_FLIGHT: usize = 10_000;

/// How many recent (origin, sequence) pairs a node remembers to drop the extra copies NATS
/// delivers when several of its subscriptions match one message.
const SEEN_WINDOW: usize = 1 << 16;

/// The cluster's figures, for logs, tests and (later) `$SYS` and the console.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// Messages published on NATS.
    pub forwarded_out: AtomicU64,
    /// Messages from other nodes routed here.
    pub forwarded_in: AtomicU64,
    /// Messages not forwarded because the outgoing queue was full or NATS refused them.
    pub dropped: AtomicU64,
    /// QoS 1/2 messages the stream did not confirm in time (their publishers were
    /// acknowledged anyway).
    pub unconfirmed: AtomicU64,
    /// Extra copies of one message dropped on arrival.
    pub duplicates: AtomicU64,
    /// NATS subjects this node subscribes to now.
    pub subjects: AtomicUsize,
    /// Retained messages written to or read from the replicated bucket.
    pub retained_synced: AtomicU64,
    /// Connections closed here because their client connected to another node.
    pub taken_over: AtomicU64,
    /// Persistent sessions handed to another node because their client connected there.
    pub sessions_moved_out: AtomicU64,
    /// Persistent sessions taken over from another node.
    pub sessions_moved_in: AtomicU64,
    /// Messages read from the stream after an outage of the NATS connection.
    pub caught_up: AtomicU64,
    /// Persistent sessions rebuilt here from the summary of a node that did not answer.
    pub sessions_recovered: AtomicU64,
    /// Persistent sessions of this node whose summary is in the cluster's bucket.
    pub sessions_summarised: AtomicU64,
    /// The last error, for people.
    pub last_error: Mutex<Option<String>>,
}

impl ClusterStatus {
    fn error(&self, why: String) {
        warn!(node = %self.node, "cluster: {why}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// Joins the cluster: sets the broker's forwarding and interest hooks now (so nothing
/// published from here on is missed) and spawns the tasks that talk to NATS.
pub(crate) fn start(
    broker: Arc<Broker>,
    config: ClusterConfig,
    shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Joined {
    let status = Arc::new(ClusterStatus {
        node: config.node.clone(),
        ..ClusterStatus::default()
    });
    let origin = RandomState::new().build_hasher().finish();
    let (out_tx, out_rx) = mpsc::channel::<(Arc<Message>, u64)>(OUTGOING_CAPACITY);
    let (confirmed_tx, confirmed_rx) = watch::channel(0u64);
    let full = status.clone();
    // (last ticket, last sequence number)
    let numbers = Mutex::new((0u64, 0u64));
    let wait_for_stream = config.wait_for_stream;
    broker.set_forwarder(Box::new(move |message| {
        // QoS 1/2 messages get a ticket, and their publisher's acknowledgement waits until the
        // stream confirms it. Tickets are numbered and queued under one lock, so the queue
        // holds them in order and confirming one confirms every earlier one. Every message
        // gets its cluster identity (this node, a sequence number) here too.
        let mut last = numbers.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = if message.qos == QoS::AtMostOnce || !wait_for_stream {
            0
        } else {
            last.0 + 1
        };
        last.1 += 1;
        let _ = message.cluster_id.set((origin, last.1));
        match out_tx.try_send((message.clone(), ticket)) {
            Ok(()) => {
                last.0 = last.0.max(ticket);
                ticket
            }
            Err(_) => {
                full.dropped.fetch_add(1, Ordering::Relaxed);
                0
            }
        }
    }));
    let (connect_tx, connect_rx) = mpsc::unbounded_channel();
    broker.set_connect_hook(Box::new(move |client_id| {
        // Bridges' local sessions have the same names on every node and belong to each.
        if !client_id.starts_with("$bridge/") {
            let _ = connect_tx.send(client_id.to_string());
        }
    }));
    let (reconnected_tx, reconnected_rx) = mpsc::unbounded_channel();
    let (interest_tx, interest_rx) = mpsc::unbounded_channel();
    let hook_tx = interest_tx.clone();
    let initial = broker.set_interest(Box::new(move |filter, add| {
        let _ = hook_tx.send(Interest::Filter(filter.to_string(), add));
    }));
    let mover = Arc::new(SessionMover::new(
        broker.clone(),
        config.clone(),
        origin,
        status.clone(),
        interest_tx,
    ));
    let link = Link {
        broker,
        config,
        status: status.clone(),
        origin,
        mover: mover.clone(),
        confirmed: confirmed_tx,
        lost_at_ms: Arc::new(AtomicU64::new(0)),
        reconnected: reconnected_tx,
    };
    tasks.spawn(link.run(
        out_rx,
        interest_rx,
        connect_rx,
        reconnected_rx,
        initial,
        shutdown,
    ));
    Joined {
        status,
        sessions: mover,
        confirmed: confirmed_rx,
    }
}

/// What a node that joined the cluster hands to its connections.
pub(crate) struct Joined {
    pub(crate) status: Arc<ClusterStatus>,
    pub(crate) sessions: Arc<SessionMover>,
    /// The highest forwarder ticket (`tern_broker::Forwarder`) the stream has confirmed.
    pub(crate) confirmed: watch::Receiver<u64>,
}

struct Link {
    broker: Arc<Broker>,
    config: ClusterConfig,
    status: Arc<ClusterStatus>,
    origin: u64,
    confirmed: watch::Sender<u64>,
    mover: Arc<SessionMover>,
    /// When the main NATS connection was lost (ms since the Unix epoch; 0: connected).
    lost_at_ms: Arc<AtomicU64>,
    /// Told, with `lost_at_ms`, when the main connection is back.
    reconnected: mpsc::UnboundedSender<u64>,
}

impl Link {
    async fn run(
        self,
        out_rx: mpsc::Receiver<(Arc<Message>, u64)>,
        interest_rx: mpsc::UnboundedReceiver<Interest>,
        connect_rx: mpsc::UnboundedReceiver<String>,
        reconnected_rx: mpsc::UnboundedReceiver<u64>,
        initial: Vec<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let link = Arc::new(self);
        let clients = tokio::select! {
            c = async { (link.connect(false).await, link.connect(true).await) } => c,
            _ = shutdown.changed() => return,
        };
        let (Some(client), Some(groups_client)) = clients else {
            return;
        };
        info!(node = %link.config.node, urls = ?link.config.nats_urls, "cluster: connected to NATS");
        let (retained_tx, retained_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(
            link.clone()
                .publish_loop(client.clone(), out_rx, retained_tx),
        );
        tasks.spawn(link.clone().receive_loop(
            client.clone(),
            groups_client.clone(),
            interest_rx,
            reconnected_rx,
            initial,
        ));
        tasks.spawn(link.clone().retained_loop(client.clone(), retained_rx));
        tasks.spawn(link.clone().registry_loop(client.clone(), connect_rx));
        tasks.spawn(link.mover.clone().serve(client.clone()));
        let summaries = link.clone();
        let js = async_nats::jetstream::new(client.clone());
        tasks.spawn(async move {
            let bucket = format!("{}_session_state", summaries.config.prefix);
            let states = summaries
                .bucket(
                    &js,
                    &bucket,
                    "tern persistent sessions: subscriptions, replay points",
                )
                .await;
            summaries.mover.clone().keep_summaries(states, js).await;
        });
        let _ = shutdown.changed().await;
        tasks.abort_all();
        let _ = client.flush().await;
    }

    /// A connection to NATS. The main one has `no_echo` (a node never gets its own
    /// publications back); the one for shared subscriptions' queue groups must get them, since
    /// the member NATS picks for a message may be on the node that published it.
    async fn connect(&self, echo: bool) -> Option<Client> {
        let status = self.status.clone();
        let (lost_at_ms, reconnected) = (self.lost_at_ms.clone(), self.reconnected.clone());
        let mut options = ConnectOptions::new()
            .name(format!(
                "tern {}{}",
                self.config.node,
                if echo { " groups" } else { "" }
            ))
            .retry_on_initial_connect()
            .subscription_capacity(SEEN_WINDOW)
            .event_callback(move |event| {
                let status = status.clone();
                // Only the main connection catches up after an outage (`catch_up`).
                let outage = (!echo).then(|| (lost_at_ms.clone(), reconnected.clone()));
                async move {
                    match event {
                        Event::Connected => {
                            status.connected.store(true, Ordering::Relaxed);
                            if let Some((lost_at, reconnected)) = outage {
                                let since = lost_at.swap(0, Ordering::Relaxed);
                                if since > 0 {
                                    let _ = reconnected.send(since);
                                }
                            }
                        }
                        Event::Disconnected => {
                            status.connected.store(false, Ordering::Relaxed);
                            status.error("the connection to NATS was lost".into());
                            if let Some((lost_at, _)) = outage {
                                let _ = lost_at.compare_exchange(
                                    0,
                                    sessions::unix_ms(),
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                        }
                        other => status.error(format!("NATS: {other}")),
                    }
                }
            });
        if let (Some(user), Some(password)) = (&self.config.user, &self.config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.config.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.config.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if !echo {
            options = options.no_echo();
        }
        match options.connect(self.config.nats_urls.clone()).await {
            Ok(client) => Some(client),
            Err(e) => {
                self.status
                    .error(format!("cannot use the NATS addresses given: {e}"));
                None
            }
        }
    }

    /// Publishes what this node's clients publish; retained messages also go to the bucket.
    /// QoS 1/2 messages are published through JetStream, whose acknowledgement says the
    /// stream keeps them; the acknowledgements are awaited in order by a second loop, which
    /// sends a message again while the stream does not confirm it and then confirms its
    /// ticket, so its publisher's PUBACK/PUBREC can leave. After `CONFIRM_DEADLINE` without
    /// the stream (NATS unreachable) a message is counted as unconfirmed and its ticket
    /// confirmed anyway: publishers are slowed, not stopped.
    async fn publish_loop(
        self: Arc<Self>,
        client: Client,
        mut out_rx: mpsc::Receiver<(Arc<Message>, u64)>,
        retained_tx: mpsc::UnboundedSender<Arc<Message>>,
    ) {
        // A short wait per attempt: an unanswered message is sent again (`confirm`), which is
        // what gets it through once a stream has elected a new leader.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let (ack_tx, mut ack_rx) = mpsc::channel::<Pending>(ACKS_IN_FLIGHT);
        let send = async {
            while let Some((message, ticket)) = out_rx.recv().await {
                let seq = message.cluster_id.get().map_or(0, |&(_, seq)| seq);
                let subject = subject_of(&self.config.prefix, &message.topic);
                let body = bytes::Bytes::from(Envelope::encode(&message, self.origin, seq, now()));
                let sent = if ticket == 0 {
                    client
                        .publish(subject, body)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    // The message id lets the stream drop a copy if it is sent again.
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        async_nats::header::NATS_MESSAGE_ID,
                        format!("{:016x}-{seq}", self.origin).as_str(),
                    );
                    let ack = js
                        .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                        .await;
                    let failed = ack.as_ref().err().map(|e| e.to_string());
                    let pending = Pending {
                        ticket,
                        ack: ack.ok(),
                        subject,
                        headers,
                        body,
                    };
                    let _ = ack_tx.send(pending).await;
                    failed.map_or(Ok(()), Err)
                };
                match sent {
                    Ok(()) => {
                        self.status.forwarded_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // QoS 1/2 messages are sent again by `confirm`; QoS 0 ones are lost.
                        if ticket == 0 {
                            self.status.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        self.status.error(format!("publishing on NATS: {e}"));
                    }
                }
                if message.retain {
                    let _ = retained_tx.send(message);
                }
            }
        };
        let confirm = async {
            while let Some(mut pending) = ack_rx.recv().await {
                // Sent again (same message id) until the stream confirms it: a stream that is
                // electing a leader does not answer for a few seconds. Copies that reach
                // other nodes are dropped there by their cluster identity.
                let deadline = tokio::time::Instant::now() + CONFIRM_DEADLINE;
                let confirmed = loop {
                    let outcome = match pending.ack.take() {
                        Some(ack) => ack.await.map_err(|e| e.to_string()),
                        None => Err("not sent".to_string()),
                    };
                    match outcome {
                        Ok(_) => break Ok(()),
                        Err(e) if tokio::time::Instant::now() >= deadline => break Err(e),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            pending.ack = js
                                .publish_with_headers(
                                    pending.subject.clone(),
                                    pending.headers.clone(),
                                    pending.body.clone(),
                                )
                                .await
                                .ok();
                        }
                    }
                };
                if let Err(e) = confirmed {
                    self.status.unconfirmed.fetch_add(1, Ordering::Relaxed);
                    self.status
                        .error(format!("the stream did not confirm a message: {e}"));
                }
                self.confirmed.send_replace(pending.ticket);
            }
        };
        tokio::join!(send, confirm);
    }

    /// Keeps one NATS subscription per subject the local filters need, and one queue
    /// subscription per shared subscription, and routes what arrives.
    async fn receive_loop(
        self: Arc<Self>,
        client: Client,
        groups_client: Client,
        mut interest_rx: mpsc::UnboundedReceiver<Interest>,
        mut reconnected_rx: mpsc::UnboundedReceiver<u64>,
        initial: Vec<String>,
    ) {
        let js = async_nats::jetstream::new(client.clone());
        let mut subs = Subscriptions {
            client,
            groups_client,
            map: StreamMap::new(),
            counts: HashMap::new(),
        };
        let mut seen = Seen::default();
        for filter in initial {
            self.interest(&mut subs, &filter, true).await;
        }
        loop {
            tokio::select! {
                change = interest_rx.recv() => match change {
                    Some(Interest::Filter(filter, add)) => {
                        self.interest(&mut subs, &filter, add).await;
                    }
                    Some(Interest::Barrier(done)) => {
                        let _ = subs.client.flush().await;
                        let _ = subs.groups_client.flush().await;
                        let _ = done.send(());
                    }
                    None => return,
                },
                Some((key, m)) = subs.map.next(), if !subs.map.is_empty() => {
                    self.arrived(&key, &m.payload, &mut seen);
                }
                Some(lost_at_ms) = reconnected_rx.recv() => {
                    self.catch_up(&js, lost_at_ms, &mut seen).await;
                }
            }
        }
    }

    /// After the main NATS connection was lost and is back: reads from the cluster's stream
    /// every message published since a moment before the loss and routes it here like a live
    /// one (`arrived`: this node's own are skipped, the ones already routed are dropped by
    /// their cluster identity), so that connected subscribers miss nothing of the outage.
    /// Shared subscriptions are not caught up (their queue groups choose one node per
    /// message; the stream cannot say which).
    async fn catch_up(
        &self,
        js: &async_nats::jetstream::Context,
        lost_at_ms: u64,
        seen: &mut Seen,
    ) {
        let since_ms = lost_at_ms.saturating_sub(sessions::REPLAY_MARGIN_MS);
        // The stream may be electing a new leader (its server was the one lost): try again
        // for a while. Live messages wait in the subscriptions meanwhile.
        for attempt in 1..=CATCH_UP_ATTEMPTS {
            let read = sessions::read_stream(
                js,
                &self.config.prefix,
                vec![format!("{}.>", self.config.prefix)],
                since_ms,
                |payload, _age| {
                    self.arrived(&Key::Subject(String::new()), payload, seen);
                    0
                },
            )
            .await;
            match read {
                Ok((n, _)) => {
                    self.status.caught_up.fetch_add(n, Ordering::Relaxed);
                    info!(
                        read = n,
                        "cluster: back on NATS; the outage's messages read from the stream"
                    );
                    return;
                }
                Err(e) => {
                    self.status.error(format!(
                        "catching up from the stream after an outage (attempt {attempt}): {e}"
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn interest(&self, subs: &mut Subscriptions, filter: &str, add: bool) {
        let shared = filter.starts_with("$share/");
        for subject in subjects_of(&self.config.prefix, filter) {
            if shared {
                // Each shared subscription is its own queue group on its own subjects: NATS
                // gives each message to one member node, whose group picks one session.
                let key = Key::Share {
                    filter: filter.to_string(),
                    subject: subject.clone(),
                };
                if add {
                    let queue = queue_of(filter);
                    match subs
                        .groups_client
                        .queue_subscribe(subject.clone(), queue)
                        .await
                    {
                        Ok(s) => {
                            subs.map.insert(key, s);
                        }
                        Err(e) => self.status.error(format!("subscribing to {subject}: {e}")),
                    }
                } else {
                    subs.map.remove(&key);
                }
            } else if add {
                let n = subs.counts.entry(subject.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    match subs.client.subscribe(subject.clone()).await {
                        Ok(s) => {
                            subs.map.insert(Key::Subject(subject), s);
                        }
                        Err(e) => self.status.error(format!("subscribing to {subject}: {e}")),
                    }
                }
            } else if let Some(n) = subs.counts.get_mut(&subject) {
                *n -= 1;
                if *n == 0 {
                    subs.counts.remove(&subject);
                    // Dropping the subscriber unsubscribes it.
                    subs.map.remove(&Key::Subject(subject));
                }
            }
        }
        self.status
            .subjects
            .store(subs.map.len(), Ordering::Relaxed);
    }

    fn arrived(&self, key: &Key, payload: &[u8], seen: &mut Seen) {
        let Some(envelope) = Envelope::decode(payload) else {
            self.status
                .error("a message on the cluster's subjects is not tern's".into());
            return;
        };
        match key {
            Key::Share { filter, .. } => {
                // One queue subscription per shared subscription, and a message matches only
                // one of its subjects: no copies to drop. It may come from this node.
                let message = envelope.into_message(now(), 0);
                self.broker.route_shared(Arc::new(message), filter);
            }
            Key::Subject(_) => {
                if envelope.origin == self.origin {
                    return;
                }
                if !seen.first(envelope.origin, envelope.seq) {
                    self.status.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let message = envelope.into_message(now(), 0);
                self.broker.route(Arc::new(message));
            }
        }
        self.status.forwarded_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes this node's retained changes to the bucket, in order, and applies everyone's
    /// from the bucket's watch.
    async fn retained_loop(
        self: Arc<Self>,
        client: Client,
        mut retained_rx: mpsc::UnboundedReceiver<Arc<Message>>,
    ) {
        let js = async_nats::jetstream::new(client);
        let bucket = format!("{}_retained", self.config.prefix);
        let store = self
            .bucket(&js, &bucket, "tern retained messages, one per topic")
            .await;
        let watcher = self.clone();
        let watched = store.clone();
        let watch = tokio::spawn(async move { watcher.watch_retained(watched).await });
        while let Some(message) = retained_rx.recv().await {
            let key = key_of(&message.topic);
            loop {
                let result = if message.payload.is_empty() {
                    store.delete(&key).await.map_err(|e| e.to_string())
                } else {
                    let value = Envelope::encode(&message, self.origin, 0, now());
                    store
                        .put(&key, value.into())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                match result {
                    Ok(()) => {
                        self.status.retained_synced.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.status
                            .error(format!("writing retained {key}: {e}; retrying"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        watch.abort();
    }

    async fn watch_retained(self: Arc<Self>, store: kv::Store) {
        loop {
            // With history: the newest entry of every key first (a node that joins or
            // comes back learns the whole set, delete markers included), then changes.
            match store.watch_with_history(">").await {
                Ok(mut entries) => {
                    info!(node = %self.config.node, "cluster: watching the retained messages");
                    while let Some(entry) = entries.next().await {
                        let Ok(entry) = entry else { break };
                        self.apply_retained(entry);
                    }
                }
                Err(e) => self
                    .status
                    .error(format!("watching the retained bucket: {e}")),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The session registry: which node a client identifier last connected to. A node
    /// records each CONNECT it accepts; when another node records a client later (a higher
    /// revision), the node that held it closes its connection with Session Taken Over (0x8E),
    /// as a single broker does when a client connects twice [MQTT-3.1.4-3]. Registering and
    /// reading the bucket's changes happen in this one task, so a change older than this
    /// node's own registration of the client (a stale write) is recognised and ignored.
    async fn registry_loop(
        self: Arc<Self>,
        client: Client,
        mut connect_rx: mpsc::UnboundedReceiver<String>,
    ) {
        let js = async_nats::jetstream::new(client.clone());
        let bucket = format!("{}_sessions", self.config.prefix);
        let store = self.bucket(&js, &bucket, "tern session owners").await;
        self.mover.set_ready(client.clone(), store.clone());
        let mut changes = loop {
            match store.watch_all().await {
                Ok(w) => break w,
                Err(e) => {
                    self.status
                        .error(format!("watching {bucket}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        // client id -> revision of this node's newest registration of it.
        let mut mine: HashMap<String, u64> = HashMap::new();
        let me = format!("{} {:016x}", self.config.node, self.origin);
        loop {
            tokio::select! {
                id = connect_rx.recv() => {
                    let Some(id) = id else { return };
                    match store.put(key_of(&id), me.clone().into()).await {
                        Ok(revision) => {
                            debug!(client_id = %id, revision, "cluster: registered");
                            mine.insert(id, revision);
                        }
                        Err(e) => self.status.error(format!("registering {id}: {e}")),
                    }
                }
                entry = changes.next() => {
                    let Some(Ok(entry)) = entry else {
                        self.status.error(format!("the watch of {bucket} ended; restarting it"));
                        match store.watch_all().await {
                            Ok(w) => changes = w,
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                        continue;
                    };
                    if entry.operation != Operation::Put || entry.value == me.as_bytes() {
                        continue;
                    }
                    let Some(id) = topic_of_key(&entry.key) else { continue };
                    if mine.get(&id).is_some_and(|&r| r < entry.revision) {
                        mine.remove(&id);
                        let owner = String::from_utf8_lossy(&entry.value).into_owned();
                        let node = owner.split(' ').next().unwrap_or_default();
                        // Usually the other node has already taken the session (and closed
                        // the connection) through `SessionMover`; this catches the rest.
                        if self.broker.close_client(&id, ReasonCode::SESSION_TAKEN_OVER) == Removal::Removed {
                            info!(client_id = %id, node, "cluster: client connected to another node; closing it here");
                            self.status.taken_over.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// Creates (or finds) a key-value bucket, retrying until NATS answers.
    async fn bucket(
        &self,
        js: &async_nats::jetstream::Context,
        bucket: &str,
        description: &str,
    ) -> kv::Store {
        loop {
            let config = kv::Config {
                bucket: bucket.to_string(),
                description: description.to_string(),
                history: 1,
                num_replicas: self.config.replicas,
                ..kv::Config::default()
            };
            match js.create_or_update_key_value(config).await {
                Ok(store) => return store,
                Err(e) => {
                    self.status
                        .error(format!("the bucket {bucket}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn apply_retained(&self, entry: kv::Entry) {
        let clear = |topic: String| Message {
            topic: topic.into(),
            payload: tern_broker::Payload::EMPTY,
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PropertiesBuf::default(),
            publisher: format!("{CLUSTER_PUBLISHER_PREFIX}retained").into(),
            expires_at: None,
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
        };
        let message = match entry.operation {
            Operation::Put => {
                let Some(envelope) = Envelope::decode(&entry.value) else {
                    return;
                };
                if envelope.origin == self.origin {
                    return;
                }
                let age = (time::OffsetDateTime::now_utc() - entry.created)
                    .whole_seconds()
                    .max(0) as u64;
                envelope.into_message(now(), age)
            }
            Operation::Delete | Operation::Purge => match topic_of_key(&entry.key) {
                Some(topic) => clear(topic),
                None => return,
            },
        };
        self.status.retained_synced.fetch_add(1, Ordering::Relaxed);
        self.broker.set_retained(Arc::new(message));
    }
}

/// A change for the NATS subscriptions of the node.
pub(super) enum Interest {
    /// A filter gained its first subscription (`true`) or lost its last one.
    Filter(String, bool),
    /// Answered once every change sent before is known to the NATS server.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What a NATS subscription of the node is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A subject some local filters need (reference counted in `Subscriptions::counts`).
    Subject(String),
    /// One subject of a shared subscription (`$share/<group>/<filter>`), in its queue group.
    Share { filter: String, subject: String },
}

/// The node's NATS subscriptions, merged into one stream.
struct Subscriptions {
    client: Client,
    groups_client: Client,
    map: StreamMap<Key, async_nats::Subscriber>,
    counts: HashMap<String, usize>,
}

/// The NATS queue group of a shared subscription: its group name and its filter, each as one
/// token (every `/` escaped), joined by `==`, which no token contains.
fn queue_of(shared_filter: &str) -> String {
    let rest = shared_filter
        .strip_prefix("$share/")
        .unwrap_or(shared_filter);
    let (group, filter) = rest.split_once('/').unwrap_or((rest, ""));
    let mut out = String::new();
    token(group, &mut out);
    out.push_str("==");
    token(filter, &mut out);
    out
}

/// The (origin, sequence) pairs routed lately.
#[derive(Default)]
struct Seen {
    set: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
}

impl Seen {
    /// True the first time a pair is shown. A copy arriving after `SEEN_WINDOW` other
    /// messages is taken for new: a duplicate, never a loss.
    fn first(&mut self, origin: u64, seq: u64) -> bool {
        if !self.set.insert((origin, seq)) {
            return false;
        }
        self.order.push_back((origin, seq));
        if self.order.len() > SEEN_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// A message as it crosses the cluster: format 1, flags (QoS in bits 0-1, RETAIN bit 2,
/// expiry bit 3), origin (8 bytes), sequence (8), seconds of expiry left (4), topic length
/// (2) and topic, properties length (4) and the MQTT 5 property block, then the payload.
struct Envelope {
    origin: u64,
    seq: u64,
    qos: QoS,
    retain: bool,
    expiry: Option<u32>,
    topic: String,
    properties: PropertiesBuf,
    payload: Vec<u8>,
}

const FORMAT: u8 = 1;

impl Envelope {
    fn encode(m: &Message, origin: u64, seq: u64, now: std::time::Instant) -> Vec<u8> {
        let expiry = m.remaining_expiry(now);
        let props = m.properties.as_bytes();
        let mut out = Vec::with_capacity(30 + m.topic.len() + props.len() + m.payload.len());
        out.push(FORMAT);
        out.push(m.qos as u8 | u8::from(m.retain) << 2 | u8::from(expiry.is_some()) << 3);
        out.extend_from_slice(&origin.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&expiry.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&(m.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(m.topic.as_bytes());
        out.extend_from_slice(&(props.len() as u32).to_be_bytes());
        out.extend_from_slice(props);
        out.extend_from_slice(&m.payload);
        out
    }

    fn decode(b: &[u8]) -> Option<Envelope> {
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = b.get(*at..*at + n)?;
            *at += n;
            Some(s)
        };
        let mut at = 0;
        let head = take(&mut at, 2)?;
        if head[0] != FORMAT {
            return None;
        }
        let flags = head[1];
        let origin = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
        let expiry = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
        let topic_len = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(take(&mut at, topic_len)?)
            .ok()?
            .to_string();
        let props_len = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        let props = take(&mut at, props_len)?.to_vec();
        let properties = PropertiesBuf::from_block(props, PropertyContext::Publish).ok()?;
        Some(Envelope {
            origin,
            seq,
            qos: match flags & 3 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                _ => return None,
            },
            retain: flags & 4 != 0,
            expiry: (flags & 8 != 0).then_some(expiry),
            topic,
            properties,
            payload: b[at..].to_vec(),
        })
    }

    /// The message to route here; `age` seconds already passed since it was encoded.
    fn into_message(self, now: std::time::Instant, age: u64) -> Message {
        Message {
            topic: self.topic.into(),
            payload: self.payload.into(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties,
            publisher: format!("{CLUSTER_PUBLISHER_PREFIX}{:016x}", self.origin).into(),
            expires_at: self
                .expiry
                .map(|s| now + Duration::from_secs(u64::from(s).saturating_sub(age))),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: std::sync::OnceLock::from((self.origin, self.seq)),
        }
    }
}

/// One topic level as a NATS token (also valid in a key-value key): letters, digits, `-` and
/// `_` stay; any other byte is `=` and two hex digits; an empty level is `=` alone.
fn token(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
}

/// The key-value key of a topic: its levels as tokens joined by `.`.
fn key_of(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        token(level, &mut out);
    }
    out
}

/// The topic a key-value key stands for ([`key_of`] undone).
fn topic_of_key(key: &str) -> Option<String> {
    let mut levels = Vec::new();
    for t in key.split('.') {
        if t == "=" {
            levels.push(String::new());
            continue;
        }
        let mut bytes = Vec::with_capacity(t.len());
        let mut it = t.bytes();
        while let Some(b) = it.next() {
            if b == b'=' {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        levels.push(String::from_utf8(bytes).ok()?);
    }
    Some(levels.join("/"))
}

/// The NATS subject a message on `topic` is published under.
fn subject_of(prefix: &str, topic: &str) -> String {
    format!("{prefix}.{}", key_of(topic))
}

/// The NATS subjects that together receive every message `filter` matches: `+` is `*`; `#`
/// is `>`, plus the parent level itself, which MQTT's `#` matches too [MQTT-4.7.1-2]. A
/// shared subscription needs its inner filter's subjects.
fn subjects_of(prefix: &str, filter: &str) -> Vec<String> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    };
    let mut subject = prefix.to_string();
    for level in inner.split('/') {
        subject.push('.');
        match level {
            "+" => subject.push('*'),
            "#" => {
                let parent = subject[..subject.len() - 1].to_string();
                subject.push('>');
                return if parent == prefix {
                    vec![subject]
                } else {
                    vec![parent, subject]
                };
            }
            _ => token(level, &mut subject),
        }
    }
    vec![subject]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_become_subjects_level_by_level() {
        assert_eq!(
            subject_of("tern", "home/kitchen/temp"),
            "tern.home.kitchen.temp"
        );
        // Characters NATS gives a meaning to, and empty levels, are escaped.
        assert_eq!(subject_of("tern", "a.b/*/>/ /"), "tern.a=2Eb.=2A.=3E.=20.=");
        assert_eq!(subject_of("tern", "/x"), "tern.=.x");
        assert_eq!(subject_of("tern", "=/été"), "tern.=3D.=C3=A9t=C3=A9");
        assert_eq!(subject_of("tern", "$SYS/x"), "tern.=24SYS.x");
    }

    #[test]
    fn keys_turn_back_into_their_topics() {
        for topic in ["a/b", "/", "a//b", "été/=/x.y", "$SYS/broker", "+", " "] {
            assert_eq!(topic_of_key(&key_of(topic)).as_deref(), Some(topic));
        }
        assert_eq!(topic_of_key("a=G1"), None);
        assert_eq!(topic_of_key("a=F"), None);
    }

    #[test]
    fn filters_become_the_subjects_that_cover_them() {
        assert_eq!(subjects_of("t", "a/+/c"), ["t.a.*.c"]);
        // [MQTT-4.7.1-2] `#` also matches its parent level.
        assert_eq!(subjects_of("t", "a/#"), ["t.a", "t.a.>"]);
        assert_eq!(subjects_of("t", "#"), ["t.>"]);
        assert_eq!(subjects_of("t", "+/#"), ["t.*", "t.*.>"]);
        assert_eq!(subjects_of("t", "$share/g/a/#"), ["t.a", "t.a.>"]);
        assert_eq!(subjects_of("t", "a//b"), ["t.a.=.b"]);
    }

    #[test]
    fn each_shared_subscription_has_its_own_queue_group() {
        assert_eq!(queue_of("$share/g/a/+"), "g==a=2F=2B");
        assert_ne!(queue_of("$share/a-b/c"), queue_of("$share/a/b-c"));
        assert_ne!(queue_of("$share/g/a/#"), queue_of("$share/h/a/#"));
    }

    #[test]
    fn envelopes_carry_the_whole_message() {
        let start = std::time::Instant::now();
        let props = tern_proto::Properties {
            content_type: Some("text/plain"),
            ..Default::default()
        };
        let m = Message {
            topic: "a/b".into(),
            payload: b"hello".as_slice().into(),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PropertiesBuf::new(&props).expect("properties"),
            publisher: "p".into(),
            expires_at: Some(start + Duration::from_secs(30)),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
        };
        let bytes = Envelope::encode(&m, 7, 9, start);
        let e = Envelope::decode(&bytes).expect("decodes");
        assert_eq!((e.origin, e.seq, e.expiry), (7, 9, Some(30)));
        let back = e.into_message(start, 10);
        assert_eq!((&*back.topic, &back.payload[..]), ("a/b", &b"hello"[..]));
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.expires_at, Some(start + Duration::from_secs(20)));
        assert_eq!(
            back.properties.get(PropertyContext::Publish).content_type,
            Some("text/plain")
        );
        for cut in 0..bytes.len() - m.payload.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn copies_of_one_message_are_routed_once() {
        let mut seen = Seen::default();
        assert!(seen.first(1, 1));
        assert!(!seen.first(1, 1));
        assert!(seen.first(2, 1));
        for n in 2..(SEEN_WINDOW as u64 + 10) {
            assert!(seen.first(1, n));
        }
        assert!(seen.set.len() <= SEEN_WINDOW);
    }
}
