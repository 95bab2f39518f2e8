//! Moving a persistent session between cluster nodes: taking it out of this broker as bytes
//! ([`Broker::export_session`]) and turning those bytes back into a session on the node the
//! client moved to ([`Broker::import_session`]).
//!
//! What moves is everything [MQTT-4.1.0-1] says a session is on the server: its
//! subscriptions, the QoS 1/2 messages sent and not yet acknowledged (with their packet ids,
//! so the client's view of them stays valid), the messages queued and not yet sent, and the
//! QoS 2 packet ids received and not yet released. A pending will does not move: the client
//! has connected again, which cancels it [MQTT-3.1.3-9].
//!
//! Bytes: a format byte, then integers little-endian and fixed width; strings and byte
//! strings as a `u32` length and the bytes; an optional value as a `0`/`1` byte and the value.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tern_proto::{PropertiesBuf, PropertyContext, ProtocolVersion, QoS, ReasonCode};
use tern_store::Record;

use crate::broker::Broker;
use crate::message::Message;
use crate::persist;
use crate::session::{Inflight, Outgoing, Session};
use crate::tree::{Matches, Subscriber};

const FORMAT: u8 = 2;

/// The connection id a moved session is left owned by: no connection has it, so the
/// connection that held the session ends without touching it and a delayed will waiting for
/// it is not published.
const MOVED: u64 = u64::MAX;

/// Why a session could not be taken out or put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveError {
    /// The bytes are not a session this version writes.
    Malformed,
    /// A connection holds the client's session here; it must end first.
    Attached,
}

impl std::fmt::Display for MoveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MoveError::Malformed => "the session's bytes are malformed",
            MoveError::Attached => "a connection holds the session here",
        })
    }
}

impl std::error::Error for MoveError {}

impl Broker {
    /// Takes `client_id`'s session out of this broker because the client connected to
    /// another node: a connection holding it is closed with Session Taken Over (0x8E)
    /// [MQTT-3.1.4-3], the session leaves the registry, the subscription tree and the store,
    /// and its state is returned as bytes for [`Broker::import_session`]. `None` when there is
    /// nothing to move: no session, or one that ends with its connection (expiry 0), which
    /// is dropped all the same.
    pub fn export_session(&self, client_id: &str, now: Instant) -> Option<Vec<u8>> {
        let session = self.sessions().remove(client_id)?;
        let alive = {
            let mut state = session.lock();
            let alive = state.expiry_interval > 0 && !state.is_expired(now);
            if state.owner.is_some() {
                state.kick = Some(ReasonCode::SESSION_TAKEN_OVER);
            }
            state.owner = Some(MOVED);
            alive
        };
        session.wake.notify_one();
        let bytes = alive.then(|| {
            self.reload_offloaded(&session, now);
            encode(&session.lock(), now)
        });
        self.drop_subscriptions(&session);
        if session.is_persistent() {
            session.set_persistent(false);
            let mut journal = self.journal();
            if let Some(j) = journal.as_mut() {
                j.push(&Record::SessionDrop {
                    client: &session.client_id,
                });
            }
            persist::commit(journal);
        }
        bytes
    }

    /// The first step of moving `client_id`'s session to another node: the connection
    /// holding it is closed with Session Taken Over (0x8E) [MQTT-3.1.4-3], so that nothing
    /// more is delivered here, and the session's subscriptions are returned (as bytes for
    /// [`Broker::import_placeholder`]) while the session stays and keeps queueing. The new
    /// node subscribes with them and then asks for the whole session
    /// ([`Broker::export_session`]): every message reaches one or the other, and
    /// [`Broker::import_session`] drops the ones both have. `None`: nothing to move.
    pub fn prepare_move(&self, client_id: &str, now: Instant) -> Option<Vec<u8>> {
        let session = self.session(client_id)?;
        let skeleton = {
            let mut state = session.lock();
            if state.owner.is_some() {
                state.kick = Some(ReasonCode::SESSION_TAKEN_OVER);
                state.owner = None;
                state.disconnected_at = Some(now);
                state.peer = None;
                state.connected_since = None;
            }
            (state.expiry_interval > 0 && !state.is_expired(now))
                .then(|| encode_with(&state, now, false))
        };
        session.wake.notify_one();
        skeleton
    }

    /// Creates, from a session's subscriptions ([`Broker::prepare_move`]), a session that
    /// collects what is published while the move goes on; it is not written to the store (the
    /// old node still has everything) and [`Broker::import_session`] fills it in. Does nothing
    /// when a session of that client is here already.
    pub fn import_placeholder(
        &self,
        client_id: &str,
        skeleton: &[u8],
        now: Instant,
    ) -> Result<(), MoveError> {
        let moved = decode(skeleton, now).ok_or(MoveError::Malformed)?;
        let session = {
            let mut sessions = self.sessions();
            if sessions.contains_key(client_id) {
                return Ok(());
            }
            let session = Arc::new(Session::new(Arc::from(client_id), moved.version));
            {
                let mut state = session.lock();
                state.expiry_interval = moved.expiry_interval;
                state.username = moved.username.clone();
                state.disconnected_at = Some(now);
                state.subscriptions = moved.subscription_map();
            }
            sessions.insert(session.client_id.clone(), session.clone());
            session
        };
        self.enter_subscriptions(&session, &moved);
        Ok(())
    }

    /// Puts `moved`'s subscriptions into the tree for `session`, whose own map holds them
    /// already. Never with the session's lock held: routing takes the tree's lock, then
    /// sessions', so waiting for the tree's under a session's could deadlock with a
    /// publication that found this session.
    fn enter_subscriptions(&self, session: &Arc<Session>, moved: &Moved) {
        for (filter, options, id) in &moved.subscriptions {
            let Ok(f) = tern_proto::TopicFilter::new(filter) else {
                continue;
            };
            let subscriber = Subscriber {
                session: session.clone(),
                options: *options,
                id: *id,
                share: f.shared().map(|_| Arc::from(filter.as_str())),
                username: moved.username.clone(),
            };
            self.tree_mut().insert(f, subscriber);
        }
    }

    /// What another node needs to rebuild each persistent session here if this node dies
    /// (cluster mode): its identifier, its subscriptions as bytes for
    /// [`Broker::import_session`] (no queue: the messages are in the cluster's stream), whether
    /// it has nothing waiting or in flight, and how many messages it has been given so far.
    pub fn session_summaries(&self, now: Instant) -> Vec<SessionSummary> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        sessions
            .into_iter()
            .filter_map(|session| {
                let state = session.lock();
                if state.expiry_interval == 0 || state.owner == Some(MOVED) {
                    return None;
                }
                Some(SessionSummary {
                    client_id: session.client_id.clone(),
                    skeleton: encode_with(&state, now, false),
                    oldest_outstanding: state.oldest_outstanding(),
                    received: state.received,
                })
            })
            .collect()
    }

    /// Gives `message` to `client_id`'s session alone, as its subscriptions (not shared ones)
    /// grant it: for messages replayed from the cluster's stream into a session rebuilt from a
    /// dead node's summary. Returns the store position to wait for before acknowledging
    /// anything that depends on it (0: nothing written).
    pub fn replay_to(&self, client_id: &str, message: Arc<Message>) -> u64 {
        let matches: Vec<Subscriber> = self
            .tree()
            .matches_with(&message.topic, false)
            .subscribers
            .into_iter()
            .filter(|s| &*s.session.client_id == client_id)
            .collect();
        if matches.is_empty() {
            return 0;
        }
        let mut journal = None;
        // Several subscriptions of the one session may match: merged.
        let matches = Matches {
            subscribers: matches,
            distinct: false,
        };
        self.deliver(message, matches, false, &mut journal, None);
        persist::commit(journal)
    }

    /// Puts a session that another node exported for `client_id` into this broker,
    /// disconnected, so that the client's CONNECT (which must follow) resumes it with Session
    /// Present. A disconnected session already here under that identifier is replaced (the
    /// one from the node the client last used is the newer). Returns the store position the
    /// CONNACK must wait for (0 when nothing was written).
    pub fn import_session(
        &self,
        client_id: &str,
        bytes: &[u8],
        now: Instant,
    ) -> Result<u64, MoveError> {
        let mut moved = decode(bytes, now).ok_or(MoveError::Malformed)?;
        let client: Arc<str> = Arc::from(client_id);
        let old = {
            let mut sessions = self.sessions();
            match sessions.get(client_id) {
                Some(old) if old.lock().owner.is_some() => return Err(MoveError::Attached),
                // A placeholder (not in the store): filled in where it is.
                Some(old) if !old.is_persistent() => {
                    let old = old.clone();
                    drop(sessions);
                    return Ok(self.fill_placeholder(&old, moved, now));
                }
                _ => sessions.remove(client_id),
            }
        };
        let mut journal = self.journal();
        if let Some(old) = old {
            self.drop_subscriptions(&old);
            if old.is_persistent() {
                old.set_persistent(false);
                if let Some(j) = journal.as_mut() {
                    j.push(&Record::SessionDrop { client: &client });
                }
            }
        }
        let session = Arc::new(Session::new(client.clone(), moved.version));
        {
            let mut state = session.lock();
            state.expiry_interval = moved.expiry_interval;
            state.username = moved.username.clone();
            state.disconnected_at = Some(now);
            state.subscriptions = moved.subscription_map();
            state.inflight = std::mem::take(&mut moved.inflight).into_iter().collect();
            for out in std::mem::take(&mut moved.queue) {
                state.queue.push_back(out);
            }
            state.incoming_qos2 = std::mem::take(&mut moved.incoming_qos2)
                .into_iter()
                .collect();
            if let Some(j) = journal.as_mut() {
                persist::write_whole_session(j, &client, &mut state, None);
                session.set_persistent(true);
            }
        }
        // The session's records go first, so that a message routed to it from here on is
        // recorded after them; into the tree only then.
        let durable = persist::commit(journal);
        self.enter_subscriptions(&session, &moved);
        self.sessions().insert(client, session);
        Ok(durable)
    }

    /// Makes `session` (a placeholder, or a session this node had without its store) the
    /// session `moved` describes, keeping after its queue the messages the placeholder got
    /// that `moved` does not have (by their cluster identity), and writes it to the store.
    fn fill_placeholder(&self, session: &Arc<Session>, moved: Moved, now: Instant) -> u64 {
        let mut journal = self.journal();
        let old_filters: Vec<String> = {
            let mut state = session.lock();
            let ids = |o: &Outgoing| o.message.cluster_id.get().copied();
            let known: HashSet<(u64, u64)> = moved
                .queue
                .iter()
                .filter_map(ids)
                .chain(moved.inflight.iter().filter_map(|(_, e)| match e {
                    Inflight::Publish(o) => ids(o),
                    Inflight::Release { .. } => None,
                }))
                .collect();
            let mut queue = crate::session::Queue::default();
            for out in moved.queue.iter().cloned() {
                queue.push_back(out);
            }
            while let Some(mut out) = state.queue.pop_front() {
                if ids(&out).is_some_and(|id| known.contains(&id)) {
                    continue;
                }
                out.seq = 0;
                out.ordinal = 0;
                queue.push_back(out);
            }
            state.queue = queue;
            state.inflight = moved.inflight.iter().cloned().collect();
            state.incoming_qos2 = moved.incoming_qos2.iter().copied().collect();
            state.expiry_interval = moved.expiry_interval;
            state.username = moved.username.clone();
            state.version = moved.version;
            state.disconnected_at = Some(now);
            let old = std::mem::replace(&mut state.subscriptions, moved.subscription_map());
            if let Some(j) = journal.as_mut() {
                persist::write_whole_session(j, &session.client_id, &mut state, None);
                session.set_persistent(true);
            }
            old.into_keys().collect::<Vec<String>>()
        };
        let durable = persist::commit(journal);
        self.enter_subscriptions(session, &moved);
        let kept: HashSet<&str> = moved
            .subscriptions
            .iter()
            .map(|(f, _, _)| f.as_str())
            .collect();
        for filter in old_filters.iter().filter(|f| !kept.contains(f.as_str())) {
            self.tree_mut().remove(filter, &session.client_id);
        }
        durable
    }

    /// Reads back the payloads of the session's offloaded messages (`persist.rs`), which are
    /// in this node's store only; the session's lock is not held while reading.
    fn reload_offloaded(&self, session: &Session, now: Instant) {
        let Some(store) = self.store() else {
            return;
        };
        let wanted: Vec<(u64, u64)> = {
            let state = session.lock();
            state
                .queue
                .iter()
                .filter(|o| o.offloaded)
                .filter_map(|o| Some((o.seq, *o.message.stored.get()?)))
                .collect()
        };
        let loaded: Vec<(u64, Option<Message>)> = wanted
            .into_iter()
            .map(|(seq, id)| {
                let m = store
                    .read_message(id)
                    .and_then(|m| persist::owned_message(store, m, now));
                (seq, m)
            })
            .collect();
        let mut state = session.lock();
        let mut unreadable = 0;
        for (seq, message) in loaded {
            let Some(i) = state.queue.iter().position(|o| o.seq == seq && o.offloaded) else {
                continue;
            };
            match message {
                Some(m) => state.queue.replace_message(i, Arc::new(m), false),
                None => {
                    state.queue.remove(i);
                    unreadable += 1;
                }
            }
        }
        if unreadable > 0 {
            tracing::error!(client_id = %session.client_id, unreadable,
                "queued messages could not be read back from the store; they do not move");
        }
    }
}

/// One persistent session as [`Broker::session_summaries`] describes it.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// The Client Identifier.
    pub client_id: Arc<str>,
    /// Its subscriptions and settings, for [`Broker::import_session`].
    pub skeleton: Vec<u8>,
    /// The ordinal of its oldest message not yet acknowledged ([`Outgoing::ordinal`]);
    /// `None`: every message it was given is done.
    pub oldest_outstanding: Option<u64>,
    /// Messages given to it so far (`SessionState::received`).
    pub received: u64,
}

/// A session as it travels.
struct Moved {
    version: ProtocolVersion,
    expiry_interval: u32,
    username: Option<Arc<str>>,
    subscriptions: Vec<(String, tern_proto::SubscriptionOptions, Option<u32>)>,
    inflight: Vec<(u16, Inflight)>,
    queue: Vec<Outgoing>,
    incoming_qos2: Vec<u16>,
}

impl Moved {
    /// Its subscriptions as a session keeps them: filter -> (options, identifier).
    fn subscription_map(
        &self,
    ) -> std::collections::BTreeMap<String, (tern_proto::SubscriptionOptions, Option<u32>)> {
        self.subscriptions
            .iter()
            .map(|(filter, options, id)| (filter.clone(), (*options, *id)))
            .collect()
    }
}

fn encode(state: &crate::session::SessionState, now: Instant) -> Vec<u8> {
    encode_with(state, now, true)
}

/// The session's bytes; without `messages`, its queue, in-flight messages and QoS 2 ids are
/// left out (a skeleton).
fn encode_with(state: &crate::session::SessionState, now: Instant, messages: bool) -> Vec<u8> {
    let mut w = Vec::with_capacity(256);
    w.push(FORMAT);
    w.push(state.version.level());
    put_u32(&mut w, state.expiry_interval);
    put_opt_str(&mut w, state.username.as_deref());
    put_u32(&mut w, state.subscriptions.len() as u32);
    for (filter, (options, id)) in &state.subscriptions {
        put_str(&mut w, filter);
        w.push(options.to_byte());
        put_opt_u32(&mut w, *id);
    }
    if !messages {
        put_u32(&mut w, 0);
        put_u32(&mut w, 0);
        put_u32(&mut w, 0);
        return w;
    }
    put_u32(&mut w, state.inflight.len() as u32);
    for (packet_id, entry) in &state.inflight {
        w.extend_from_slice(&packet_id.to_le_bytes());
        match entry {
            Inflight::Publish(out) => {
                w.push(0);
                put_outgoing(&mut w, out, now);
            }
            Inflight::Release { .. } => w.push(1),
        }
    }
    put_u32(&mut w, state.queue.len() as u32);
    for out in state.queue.iter() {
        put_outgoing(&mut w, out, now);
    }
    put_u32(&mut w, state.incoming_qos2.len() as u32);
    for id in &state.incoming_qos2 {
        w.extend_from_slice(&id.to_le_bytes());
    }
    w
}

fn put_outgoing(w: &mut Vec<u8>, out: &Outgoing, now: Instant) {
    let m = &out.message;
    w.push(out.qos as u8);
    w.push(u8::from(out.retain));
    put_u32(w, out.subscription_ids().len() as u32);
    for id in out.subscription_ids() {
        put_u32(w, *id);
    }
    put_opt_str(w, out.via_share().map(|s| &**s));
    put_str(w, &m.topic);
    put_bytes(w, &m.payload);
    w.push(m.qos as u8);
    w.push(u8::from(m.retain));
    put_bytes(w, m.properties.as_bytes());
    put_str(w, &m.publisher);
    // What is left of the Message Expiry Interval, in milliseconds: the nodes' clocks need
    // not agree.
    match m.expires_at {
        Some(at) => {
            w.push(1);
            let left = at.saturating_duration_since(now).as_millis();
            w.extend_from_slice(&(left.min(u128::from(u64::MAX)) as u64).to_le_bytes());
        }
        None => w.push(0),
    }
    match m.cluster_id.get() {
        Some(&(origin, seq)) => {
            w.push(1);
            w.extend_from_slice(&origin.to_le_bytes());
            w.extend_from_slice(&seq.to_le_bytes());
        }
        None => w.push(0),
    }
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len() as u32);
    w.extend_from_slice(b);
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

fn put_opt_str(w: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            w.push(1);
            put_str(w, s);
        }
        None => w.push(0),
    }
}

fn put_opt_u32(w: &mut Vec<u8>, v: Option<u32>) {
    match v {
        Some(v) => {
            w.push(1);
            put_u32(w, v);
        }
        None => w.push(0),
    }
}

/// Reads what `encode` wrote; `None` at the first thing out of place. Counts are checked
/// against the bytes left, so a corrupt count cannot make it reserve unbounded memory.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// A count of items each at least `min_size` bytes long.
    fn count(&mut self, min_size: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min_size) <= self.b.len()).then_some(n)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.flag()? {
            Some(Some(self.str()?))
        } else {
            Some(None)
        }
    }

    fn qos(&mut self) -> Option<QoS> {
        QoS::from_u8(self.u8()?).ok()
    }

    fn outgoing(&mut self, now: Instant) -> Option<Outgoing> {
        let qos = self.qos()?;
        let retain = self.flag()?;
        let n = self.count(4)?;
        let subscription_ids = (0..n).map(|_| self.u32()).collect::<Option<Vec<_>>>()?;
        let via_share = self.opt_str()?.map(Arc::from);
        let topic = Arc::from(self.str()?);
        let payload = self.bytes()?.to_vec();
        let message_qos = self.qos()?;
        let message_retain = self.flag()?;
        let properties =
            PropertiesBuf::from_block(self.bytes()?.to_vec(), PropertyContext::Publish).ok()?;
        let publisher = Arc::from(self.str()?);
        let expires_at = if self.flag()? {
            Some(now + Duration::from_millis(self.u64()?))
        } else {
            None
        };
        let cluster_id = OnceLock::new();
        if self.flag()? {
            let _ = cluster_id.set((self.u64()?, self.u64()?));
        }
        let message = Message {
            topic,
            payload: payload.into(),
            qos: message_qos,
            retain: message_retain,
            properties,
            publisher,
            expires_at,
            stored: OnceLock::new(),
            encoded: Default::default(),
            cluster_id,
        };
        Some(Outgoing::new(Arc::new(message), qos, retain).with_extra(subscription_ids, via_share))
    }
}

fn decode(bytes: &[u8], now: Instant) -> Option<Moved> {
    let mut r = Reader { b: bytes };
    if r.u8()? != FORMAT {
        return None;
    }
    let version = match r.u8()? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return None,
    };
    let expiry_interval = r.u32()?;
    let username = r.opt_str()?.map(Arc::from);
    let n = r.count(6)?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = r.str()?.to_owned();
        let options = tern_proto::SubscriptionOptions::from_byte(r.u8()?)?;
        let id = if r.flag()? { Some(r.u32()?) } else { None };
        subscriptions.push((filter, options, id));
    }
    let n = r.count(3)?;
    let mut inflight = Vec::with_capacity(n);
    for _ in 0..n {
        let packet_id = r.u16()?;
        let entry = match r.u8()? {
            0 => Inflight::Publish(r.outgoing(now)?),
            1 => Inflight::Release { seq: 0 },
            _ => return None,
        };
        inflight.push((packet_id, entry));
    }
    let n = r.count(20)?;
    let mut queue = Vec::with_capacity(n);
    for _ in 0..n {
        queue.push(r.outgoing(now)?);
    }
    let n = r.count(2)?;
    let incoming_qos2 = (0..n).map(|_| r.u16()).collect::<Option<Vec<_>>>()?;
    if !r.b.is_empty() {
        return None;
    }
    Some(Moved {
        version,
        expiry_interval,
        username,
        subscriptions,
        inflight,
        queue,
        incoming_qos2,
    })
}
