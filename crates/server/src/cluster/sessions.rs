//! Persistent sessions in cluster mode: a session follows its client from node to node, and
//! outlives the node it was on.
//!
//! - **Moving** (`SessionMover::claim`, `SessionMover::serve`): a node that gets a CONNECT
//!   for a client the registry says another node holds asks that node for the session; the
//!   old node closes the client's connection with 0x8E and answers with the session's bytes
//!   (`Broker::export_session`), which the new node puts into its broker and store
//!   (`Broker::import_session`) before the CONNECT is handled.
//! - **Surviving a node** (`SessionMover::checkpoint`, `SessionMover::recover`): every
//!   message published on NATS is also kept by the stream `<prefix>_messages`. Each node
//!   writes, for each of its persistent sessions, a summary into the bucket
//!   `<prefix>_session_state`: its subscriptions, and a replay point, a time before which
//!   every message the session needs has been acknowledged by its client. When the node that
//!   holds a client does not answer, the node the client connected to rebuilds the session
//!   from the summary and gives it the stream's matching messages from the replay point on:
//!   at least once (messages between the replay point and the node's death come again).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, kv, stream};
use async_nats::Client;
use futures_util::StreamExt;
use tern_broker::Broker;
use tokio::sync::mpsc;
use tracing::info;

use super::{key_of, subjects_of, ClusterStatus, Envelope, Interest};
use crate::config::ClusterConfig;
use crate::now;

/// How long a node waits for the node that held a client's session to hand it over before
/// it rebuilds the session from its summary instead.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a new subscription takes to be known on the other servers of a NATS cluster
/// once the node's own server has it (route propagation; milliseconds on a LAN).
const INTEREST_SPREAD: Duration = Duration::from_millis(50);

/// How often a node writes its sessions' summaries.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How far a replay point stays behind the moment a session was seen with nothing
/// unacknowledged: a message the stream kept just before that moment may still have been on
/// its way to the node. Its only cost is messages delivered twice after a node dies.
pub(super) const REPLAY_MARGIN_MS: u64 = 5_000;

/// The longest a rebuild reads the stream before the client is let in with what it has.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// How far a replay point must move before the summary is written again: a busy session's
/// point moves at every checkpoint, and a write each time would cost the bucket one write per
/// busy session per second. The cost of waiting is more messages delivered twice after a
/// node dies.
const MIN_ADVANCE_MS: u64 = 2_000;

/// The most marks kept per session (one per checkpoint while it receives messages).
const MAX_MARKS: usize = 600;

/// What was last written of one session's summary, and the marks its next replay point is
/// chosen from.
struct Written {
    skeleton_hash: u64,
    since_ms: u64,
    written_since_ms: u64,
    /// (messages given to the session so far, when that was seen): every message up to that
    /// count had reached the session by then.
    marks: VecDeque<(u64, u64)>,
}

impl Written {
    fn new(since_ms: u64) -> Self {
        Written {
            skeleton_hash: 0,
            since_ms,
            written_since_ms: 0,
            marks: VecDeque::new(),
        }
    }
}

/// The bucket and stream that let a session outlive its node, once created.
struct Durable {
    states: kv::Store,
    js: jetstream::Context,
}

/// Brings a client's persistent session to this node when the client connects here after
/// another node: asked by each connection between authentication and CONNECT handling.
pub(crate) struct SessionMover {
    broker: Arc<Broker>,
    config: ClusterConfig,
    origin: u64,
    status: Arc<ClusterStatus>,
    /// The NATS connection and the registry bucket, once connected.
    ready: OnceLock<(Client, kv::Store)>,
    durable: OnceLock<Durable>,
    written: Mutex<HashMap<Arc<str>, Written>>,
    hasher: RandomState,
    /// The receive loop's NATS subscriptions, for a barrier during a move.
    interest: mpsc::UnboundedSender<Interest>,
}

/// What a handover request asks of the node that holds a session (its first byte).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Ask {
    /// The client connected elsewhere with Clean Start: close and forget the session.
    Discard = 0,
    /// Close the client's connection and answer with the session's subscriptions; keep
    /// queueing.
    Prepare = 1,
    /// Let go of the session and answer with all of it.
    Export = 2,
}

impl SessionMover {
    pub(super) fn new(
        broker: Arc<Broker>,
        config: ClusterConfig,
        origin: u64,
        status: Arc<ClusterStatus>,
        interest: mpsc::UnboundedSender<Interest>,
    ) -> Self {
        SessionMover {
            broker,
            config,
            origin,
            status,
            ready: OnceLock::new(),
            durable: OnceLock::new(),
            written: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            interest,
        }
    }

    /// Called once the registry bucket exists.
    pub(super) fn set_ready(&self, client: Client, registry: kv::Store) {
        let _ = self.ready.set((client, registry));
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Written>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// If the registry says another node holds `client_id`, asks that node for the session
    /// (it closes the client's connection there with 0x8E and lets go of the session) and
    /// puts it into this broker, so the CONNECT that follows resumes it with Session Present
    /// [MQTT-3.2.2-2]. With Clean Start the old node only discards it. A node that does not
    /// answer (stopped, or unreachable) within `HANDOVER_TIMEOUT` has its session rebuilt
    /// here from its summary (`recover`). Returns once what was taken over is on this
    /// node's disk.
    pub(crate) async fn claim(&self, client_id: &str, clean_start: bool) {
        let Some((client, registry)) = self.ready.get() else {
            return;
        };
        if client_id.is_empty() || client_id.starts_with("$bridge/") {
            return;
        }
        let owner =
            match tokio::time::timeout(HANDOVER_TIMEOUT, registry.get(key_of(client_id))).await {
                Ok(Ok(Some(value))) => String::from_utf8_lossy(&value).into_owned(),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    self.status
                        .error(format!("reading the owner of {client_id}: {e}"));
                    return;
                }
                Err(_) => {
                    self.status
                        .error(format!("reading the owner of {client_id}: no answer"));
                    return;
                }
            };
        let Some(origin) = owner
            .split(' ')
            .nth(1)
            .and_then(|o| u64::from_str_radix(o, 16).ok())
        else {
            return;
        };
        if origin == self.origin {
            return;
        }
        let ask = |what: Ask| {
            let mut request = vec![what as u8];
            request.extend_from_slice(client_id.as_bytes());
            let subject = handover_subject(&self.config.prefix, origin);
            tokio::time::timeout(HANDOVER_TIMEOUT, client.request(subject, request.into()))
        };
        if clean_start {
            // The old session ends; a node that does not answer keeps a copy until it comes
            // back and sees that the client is elsewhere.
            let _ = ask(Ask::Discard).await;
            return;
        }
        // Two steps, so that nothing published during the move is missed: the old node stops
        // delivering and sends the subscriptions; this node subscribes (a placeholder session
        // collects what arrives); only then does the old node let go and send the session,
        // and the copies both nodes got are dropped by their cluster identity.
        let skeleton = match ask(Ask::Prepare).await {
            Ok(Ok(reply)) => reply.payload,
            Ok(Err(e)) => {
                // No responders: the node is gone.
                info!(client_id, owner = %owner, "cluster: the node that held this client does not answer ({e})");
                self.recover(client_id).await;
                return;
            }
            Err(_) => {
                self.status.error(format!(
                    "{owner} did not answer for {client_id} in time; rebuilding it here"
                ));
                self.recover(client_id).await;
                return;
            }
        };
        if skeleton.is_empty() {
            return;
        }
        // Known to the checkpoint before the placeholder exists, or it would take the
        // placeholder for a stale copy (the summary names the old node) and drop it.
        self.written().insert(
            Arc::from(client_id),
            Written::new(unix_ms().saturating_sub(REPLAY_MARGIN_MS)),
        );
        if let Err(e) = self.broker.import_placeholder(client_id, &skeleton, now()) {
            self.status
                .error(format!("taking over the session of {client_id}: {e}"));
            return;
        }
        self.subscribed().await;
        let bytes = match ask(Ask::Export).await {
            Ok(Ok(reply)) if !reply.payload.is_empty() => reply.payload,
            Ok(Ok(_)) => skeleton,
            _ => {
                self.status.error(format!(
                    "{owner} did not hand over {client_id}; rebuilding it here"
                ));
                self.recover(client_id).await;
                // Without a summary to rebuild from, the placeholder becomes the session.
                if self
                    .broker
                    .session(client_id)
                    .is_some_and(|s| !s.is_persistent())
                {
                    let _ = self.broker.import_session(client_id, &skeleton, now());
                }
                return;
            }
        };
        match self.broker.import_session(client_id, &bytes, now()) {
            Ok(seq) => {
                self.status
                    .sessions_moved_in
                    .fetch_add(1, Ordering::Relaxed);
                info!(client_id, from = %owner, "cluster: session taken over from another node");
                // Its summary keeps the old node's replay point (what this node took over may
                // include messages from before it), and is written again by this node.
                if let Some(since_ms) = self.summary(client_id).await.map(|s| s.since_ms) {
                    self.written()
                        .insert(Arc::from(client_id), Written::new(since_ms));
                }
                self.wait_durable(seq).await;
            }
            Err(e) => self
                .status
                .error(format!("taking over the session of {client_id}: {e}")),
        }
    }

    /// Returns once the NATS servers know the subscriptions this node asked for so far:
    /// its own server at once (a flush), the others of a NATS cluster a moment later.
    async fn subscribed(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.interest.send(Interest::Barrier(done)).is_ok() {
            let _ = tokio::time::timeout(HANDOVER_TIMEOUT, wait).await;
        }
        tokio::time::sleep(INTEREST_SPREAD).await;
    }

    async fn wait_durable(&self, seq: u64) {
        if let Some(store) = self.broker.store().filter(|_| seq > 0) {
            store.wait_durable(seq).await;
        }
    }

    /// The summary another node wrote of `client_id`'s session, if any.
    async fn summary(&self, client_id: &str) -> Option<Summary> {
        let durable = self.durable.get()?;
        let value = tokio::time::timeout(HANDOVER_TIMEOUT, durable.states.get(key_of(client_id)))
            .await
            .ok()?
            .ok()??;
        Summary::decode(&value)
    }

    /// Rebuilds `client_id`'s session from the summary its dead node wrote: its
    /// subscriptions, then every message of the stream since the replay point that they
    /// match, queued for it as a live node would have.
    async fn recover(&self, client_id: &str) {
        let Some(durable) = self.durable.get() else {
            return;
        };
        let Some(summary) = self.summary(client_id).await else {
            return;
        };
        // Known to the checkpoint before the session exists, or it would take the session
        // for a stale copy (the summary names another node) and drop it.
        self.written()
            .insert(Arc::from(client_id), Written::new(summary.since_ms));
        let seq = match self
            .broker
            .import_session(client_id, &summary.skeleton, now())
        {
            Ok(seq) => seq,
            Err(e) => {
                self.status
                    .error(format!("rebuilding the session of {client_id}: {e}"));
                return;
            }
        };
        let filters: Vec<String> = self
            .broker
            .session(client_id)
            .map(|s| {
                s.lock()
                    .subscriptions
                    .keys()
                    .filter(|f| !f.starts_with("$share/"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut subjects: Vec<String> = filters
            .iter()
            .flat_map(|f| subjects_of(&self.config.prefix, f))
            .collect();
        subjects.sort();
        subjects.dedup();
        let mut last = seq;
        let mut replayed = 0u64;
        if !subjects.is_empty() {
            match self
                .replay(durable, client_id, subjects, summary.since_ms)
                .await
            {
                Ok((n, position)) => {
                    replayed = n;
                    last = last.max(position);
                }
                Err(e) => self
                    .status
                    .error(format!("replaying the stream for {client_id}: {e}")),
            }
        }
        self.wait_durable(last).await;
        self.status
            .sessions_recovered
            .fetch_add(1, Ordering::Relaxed);
        info!(client_id, from = %summary.node, replayed, "cluster: session rebuilt from its summary; its node is gone");
    }

    /// Queues for `client_id` the stream's messages on `subjects` from `since_ms` on.
    /// Returns how many were read and the store position to wait for.
    async fn replay(
        &self,
        durable: &Durable,
        client_id: &str,
        subjects: Vec<String>,
        since_ms: u64,
    ) -> Result<(u64, u64), String> {
        read_stream(
            &durable.js,
            &self.config.prefix,
            subjects,
            since_ms,
            |payload, age| {
                let Some(envelope) = Envelope::decode(payload) else {
                    return 0;
                };
                let m = envelope.into_message(now(), age);
                self.broker.replay_to(client_id, Arc::new(m))
            },
        )
        .await
    }

    /// Answers other nodes' requests for sessions held here (see `claim`).
    pub(super) async fn serve(self: Arc<Self>, client: Client) {
        let subject = handover_subject(&self.config.prefix, self.origin);
        let mut requests = loop {
            match client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    self.status
                        .error(format!("subscribing to {subject}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let Some((&ask, id)) = request.payload.split_first() else {
                continue;
            };
            let Ok(id) = std::str::from_utf8(id) else {
                continue;
            };
            if self.broker.session(id).is_some_and(|s| s.is_connected()) {
                info!(
                    client_id = id,
                    "cluster: client connected to another node; closing it here"
                );
                self.status.taken_over.fetch_add(1, Ordering::Relaxed);
            }
            let body = if ask == Ask::Prepare as u8 {
                self.broker.prepare_move(id, now()).unwrap_or_default()
            } else {
                // The new node writes the session's summary from now on. Forgotten after the
                // session is gone, so a checkpoint running meanwhile cannot take it up again.
                let bytes = self.broker.export_session(id, now());
                self.written().remove(id);
                let discard = ask == Ask::Discard as u8;
                if bytes.is_some() {
                    self.status
                        .sessions_moved_out
                        .fetch_add(1, Ordering::Relaxed);
                    info!(
                        client_id = id,
                        discarded = discard,
                        "cluster: session handed to another node"
                    );
                }
                if discard {
                    Vec::new()
                } else {
                    bytes.unwrap_or_default()
                }
            };
            if let Err(e) = client.publish(reply, body.into()).await {
                self.status.error(format!("handing over {id}: {e}"));
            }
        }
    }

    /// Creates the summaries' bucket and the message stream, then writes this node's
    /// sessions' summaries every `CHECKPOINT_EVERY`.
    pub(super) async fn keep_summaries(self: Arc<Self>, states: kv::Store, js: jetstream::Context) {
        let name = stream_name(&self.config.prefix);
        loop {
            let config = stream::Config {
                name: name.clone(),
                description: Some("tern: every message published in the cluster".into()),
                subjects: vec![format!("{}.>", self.config.prefix)],
                max_age: Duration::from_secs(self.config.history_seconds),
                max_bytes: i64::try_from(self.config.history_bytes).unwrap_or(i64::MAX),
                num_replicas: self.config.replicas,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => break,
                Err(e) => {
                    self.status
                        .error(format!("the stream {name}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let _ = self.durable.set(Durable {
            states: states.clone(),
            js,
        });
        info!(node = %self.config.node, "cluster: the message stream and session summaries are ready");
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.checkpoint(&states).await;
        }
    }

    /// Writes the summary of every persistent session here that changed: new subscriptions,
    /// or a later replay point (the session was given messages and has acknowledged them
    /// all). Deletes the summaries of sessions that ended. A session seen for the first time
    /// that another node's summary claims, while no connection holds it here, was taken over
    /// while this node was away (it came back from its store): it is dropped.
    async fn checkpoint(&self, states: &kv::Store) {
        let wall_ms = unix_ms();
        let summaries = self.broker.session_summaries(now());
        let first_seen: Vec<Arc<str>> = {
            let written = self.written();
            summaries
                .iter()
                .filter(|s| !written.contains_key(&s.client_id))
                .map(|s| s.client_id.clone())
                .collect()
        };
        let mut earlier: HashMap<Arc<str>, u64> = HashMap::new();
        let looked_up = !first_seen.is_empty();
        for id in first_seen {
            match self.summary(&id).await {
                Some(s) if s.node != self.config.node => {
                    let connected = self.broker.session(&id).is_some_and(|s| s.is_connected());
                    // A session being moved here meanwhile is in `written` by now.
                    if !connected && !self.written().contains_key(&id) {
                        info!(client_id = %id, node = %s.node, "cluster: dropping a session another node took over while this one was away");
                        self.broker.export_session(&id, now());
                    }
                }
                Some(s) => {
                    earlier.insert(id, s.since_ms);
                }
                None => {}
            }
        }
        // Taken again only if the look-ups above gave sessions time to change.
        let summaries = if looked_up {
            self.broker.session_summaries(now())
        } else {
            summaries
        };
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        {
            let mut written = self.written();
            let mut present = HashSet::new();
            for s in summaries {
                present.insert(s.client_id.clone());
                // Handed to another node since the summaries were taken: its summary is not
                // ours to write (nor to delete: it stays in `present`).
                if self.broker.session(&s.client_id).is_none() {
                    continue;
                }
                let hash = self.hasher.hash_one(&s.skeleton);
                let fresh = wall_ms.saturating_sub(REPLAY_MARGIN_MS);
                let w = written.entry(s.client_id.clone()).or_insert_with(|| {
                    Written::new(earlier.get(&s.client_id).copied().unwrap_or(fresh))
                });
                // A mark per count of messages: the latest moment it was seen.
                match w.marks.back_mut() {
                    Some(back) if back.0 == s.received => back.1 = wall_ms,
                    _ => w.marks.push_back((s.received, wall_ms)),
                }
                if w.marks.len() > MAX_MARKS {
                    w.marks.pop_front();
                }
                // Every message below the oldest outstanding one is acknowledged: the latest
                // mark whose messages are all below it is a moment before which the session
                // has everything it needs.
                let done_below = s.oldest_outstanding.unwrap_or(u64::MAX);
                let mut reached = None;
                while let Some(&(count, seen_ms)) = w.marks.front() {
                    if count >= done_below {
                        break;
                    }
                    reached = Some(seen_ms);
                    w.marks.pop_front();
                }
                if let Some(seen_ms) = reached {
                    w.since_ms = w.since_ms.max(seen_ms.saturating_sub(REPLAY_MARGIN_MS));
                }
                let advanced = w.since_ms >= w.written_since_ms + MIN_ADVANCE_MS;
                if advanced || w.skeleton_hash != hash {
                    w.skeleton_hash = hash;
                    w.written_since_ms = w.since_ms;
                    let summary = Summary {
                        since_ms: w.since_ms,
                        node: self.config.node.clone(),
                        skeleton: s.skeleton,
                    };
                    puts.push((s.client_id, summary.encode()));
                }
            }
            written.retain(|id, _| {
                let keep = present.contains(id);
                if !keep {
                    deletes.push(id.clone());
                }
                keep
            });
        }
        for (id, value) in puts {
            if let Err(e) = states.put(key_of(&id), value.into()).await {
                self.status
                    .error(format!("writing the summary of {id}: {e}"));
            }
        }
        for id in deletes {
            if let Err(e) = states.delete(key_of(&id)).await {
                self.status
                    .error(format!("deleting the summary of {id}: {e}"));
            }
        }
        self.status
            .sessions_summarised
            .store(self.written().len() as u64, Ordering::Relaxed);
    }
}

/// One session's summary as the bucket keeps it: the replay point (ms since the Unix epoch),
/// the node that wrote it, and the session's skeleton (`Broker::session_summaries`).
struct Summary {
    since_ms: u64,
    node: String,
    skeleton: Vec<u8>,
}

impl Summary {
    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(16 + self.node.len() + self.skeleton.len());
        w.extend_from_slice(&self.since_ms.to_le_bytes());
        w.extend_from_slice(&(self.node.len() as u32).to_le_bytes());
        w.extend_from_slice(self.node.as_bytes());
        w.extend_from_slice(&self.skeleton);
        w
    }

    fn decode(b: &[u8]) -> Option<Summary> {
        let since_ms = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let n = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
        let node = std::str::from_utf8(b.get(12..12usize.checked_add(n)?)?).ok()?;
        Some(Summary {
            since_ms,
            node: node.to_owned(),
            skeleton: b.get(12 + n..)?.to_vec(),
        })
    }
}

/// Reads the cluster's stream on `subjects` from `since_ms` (ms since the Unix epoch) up to
/// its end when asked, handing each message's payload and age in seconds to `each`, which
/// returns a store position; returns how many were read and the highest position.
pub(super) async fn read_stream(
    js: &jetstream::Context,
    prefix: &str,
    subjects: Vec<String>,
    since_ms: u64,
    mut each: impl FnMut(&[u8], u64) -> u64,
) -> Result<(u64, u64), String> {
    let stream = js
        .get_stream(stream_name(prefix))
        .await
        .map_err(|e| e.to_string())?;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(|e| e.to_string())?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: subjects,
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    let (mut read, mut position) = (0u64, 0u64);
    while read < pending {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => break,
            Err(_) => return Err(format!("{read} of {pending} messages read in time")),
        };
        read += 1;
        let age = message
            .info()
            .map(|i| (time::OffsetDateTime::now_utc() - i.published).whole_seconds())
            .unwrap_or(0)
            .max(0) as u64;
        position = position.max(each(&message.payload, age));
    }
    Ok((read, position))
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a node listens for requests for its sessions.
fn handover_subject(prefix: &str, origin: u64) -> String {
    format!("{prefix}_handover.{origin:016x}")
}

/// The stream that keeps every message published in the cluster.
pub(super) fn stream_name(prefix: &str) -> String {
    format!("{prefix}_messages")
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summaries_round_trip_and_refuse_garbage() {
        let s = Summary {
            since_ms: 1_764_000_000_000,
            node: "n1".into(),
            skeleton: vec![1, 4, 0, 0],
        };
        let back = Summary::decode(&s.encode()).expect("decodes");
        assert_eq!(
            (back.since_ms, back.node.as_str(), back.skeleton),
            (s.since_ms, "n1", s.skeleton)
        );
        for bad in [
            &b""[..],
            &[0; 11][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255][..],
        ] {
            assert!(Summary::decode(bad).is_none());
        }
    }
}
