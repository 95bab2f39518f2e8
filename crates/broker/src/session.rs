//! A session: what the broker remembers of a client between packets and, for persistent
//! sessions, between connections (section 4.1).
//!
//! Owns the client's subscriptions, the queue of messages not yet sent, the QoS 1/2 messages
//! sent and not yet acknowledged, and the QoS 2 packet ids received and not yet released.
//! A session's state has one lock; nothing else is locked while it is held, except when
//! the broker's session registry hands it over at CONNECT (registry, then session).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tern_proto::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::Notify;
use tracing::warn;

use crate::message::Message;
use crate::persist::Journal;

/// A message waiting to be sent to one subscriber, at the QoS that subscriber gets.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The shared message.
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag this copy carries.
    pub retain: bool,
    /// What few copies carry (see [`Extra`]), boxed: a fan-out queues one entry per
    /// subscriber and message, and without them inline an entry is 40 bytes instead of 72.
    extra: Option<Box<Extra>>,
    /// Its entry number in the store (0: not stored: QoS 0, or a session that is not
    /// persistent).
    pub seq: u64,
    /// The message's payload is not in memory: `message` is a stand-in with its topic and
    /// expiry, and the whole message is read back from the store before it is sent.
    pub offloaded: bool,
    /// Its place among the messages this session was given since it was created or came to
    /// this node ([`SessionState::received`] after it was queued; 0: carried over). Cluster
    /// mode uses the oldest outstanding one to know what the client has acknowledged.
    pub ordinal: u64,
}

/// What a copy carries for some subscribers only.
#[derive(Debug, Clone, Default)]
struct Extra {
    /// The Subscription Identifiers of every subscription it matched (MQTT 5).
    subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/...`) it came through, if any: if this session
    /// leaves before acknowledging it, another member gets it.
    via_share: Option<Arc<str>>,
}

impl Outgoing {
    /// A copy of `message` at `qos` with `retain`, not stored, carrying nothing more.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Self {
        Outgoing {
            message,
            qos,
            retain,
            extra: None,
            seq: 0,
            offloaded: false,
            ordinal: 0,
        }
    }

    /// This copy with the Subscription Identifiers of the subscriptions it matched and the
    /// shared subscription it came through.
    pub fn with_extra(mut self, subscription_ids: Vec<u32>, via_share: Option<Arc<str>>) -> Self {
        self.extra = (!subscription_ids.is_empty() || via_share.is_some()).then(|| {
            Box::new(Extra {
                subscription_ids,
                via_share,
            })
        });
        self
    }

    /// The Subscription Identifiers of every subscription it matched (MQTT 5).
    pub fn subscription_ids(&self) -> &[u32] {
        self.extra
            .as_ref()
            .map_or(&[], |e| e.subscription_ids.as_slice())
    }

    /// Adds the identifier of one more subscription it matched.
    pub fn add_subscription_id(&mut self, id: u32) {
        self.extra
            .get_or_insert_with(Default::default)
            .subscription_ids
            .push(id);
    }

    /// Replaces its Subscription Identifiers (handed to another member of a shared group).
    pub fn set_subscription_ids(&mut self, ids: Vec<u32>) {
        if ids.is_empty() && self.extra.is_none() {
            return;
        }
        self.extra
            .get_or_insert_with(Default::default)
            .subscription_ids = ids;
    }

    /// The shared subscription (`$share/...`) it came through, if any.
    pub fn via_share(&self) -> Option<&Arc<str>> {
        self.extra.as_ref()?.via_share.as_ref()
    }

    /// What this message costs a queue's memory: its payload and topic.
    pub fn size(&self) -> usize {
        self.message.payload.len() + self.message.topic.len()
    }
}

/// Messages waiting to be sent, oldest first, with their total size and the number of
/// offloaded ones kept.
#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    offloaded: usize,
}

impl Queue {
    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of payload and topic waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages whose payload is out of memory (see [`Outgoing::offloaded`]).
    pub fn offloaded(&self) -> usize {
        self.offloaded
    }

    fn count_in(&mut self, out: &Outgoing) {
        self.bytes += out.size();
        self.offloaded += usize::from(out.offloaded);
    }

    fn count_out(&mut self, out: &Outgoing) {
        self.bytes -= out.size();
        self.offloaded -= usize::from(out.offloaded);
    }

    /// The message at `index` (0: the oldest).
    pub fn get(&self, index: usize) -> Option<&Outgoing> {
        self.items.get(index)
    }

    /// The messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.items.iter()
    }

    /// The messages, to change what the queue does not count (their store entry numbers).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Outgoing> {
        self.items.iter_mut()
    }

    /// Adds a message at the back.
    pub fn push_back(&mut self, out: Outgoing) {
        self.count_in(&out);
        self.items.push_back(out);
    }

    /// Puts a message taken with `pop_front` back.
    pub fn push_front(&mut self, out: Outgoing) {
        self.count_in(&out);
        self.items.push_front(out);
    }

    /// Takes the oldest message.
    pub fn pop_front(&mut self) -> Option<Outgoing> {
        let out = self.items.pop_front()?;
        self.count_out(&out);
        Some(out)
    }

    /// Swaps the message of the entry at `index` (taking it out of memory or back), keeping
    /// the byte count right.
    pub(crate) fn replace_message(&mut self, index: usize, message: Arc<Message>, offloaded: bool) {
        let Some(out) = self.items.get_mut(index) else {
            return;
        };
        let (old_size, old_offloaded) = (out.size(), out.offloaded);
        out.message = message;
        out.offloaded = offloaded;
        let new_size = out.size();
        self.bytes = self.bytes - old_size + new_size;
        self.offloaded = self.offloaded - usize::from(old_offloaded) + usize::from(offloaded);
    }

    /// Takes the message at `index`.
    pub fn remove(&mut self, index: usize) -> Option<Outgoing> {
        let out = self.items.remove(index)?;
        self.count_out(&out);
        Some(out)
    }
}

/// A QoS 1 or 2 message sent and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Outgoing),
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP. `seq` is the store entry (0: none).
    Release {
        /// The store entry number.
        seq: u64,
    },
}

/// The messages in flight by packet id, in packet-id order: a map for what the broker does
/// with them. Held as a sorted double-ended queue because packet ids are given in rising
/// order and acknowledged mostly in the order sent, so an insertion is a push at the back
/// and an acknowledgement a pop at the front; a B-tree cost a tenth of the broker's time
/// per QoS 1 message in node searches and shifts. Only a wrap of the packet ids inserts
/// in the middle.
#[derive(Debug, Clone, Default)]
pub struct InflightMap(VecDeque<(u16, Inflight)>);

impl InflightMap {
    fn position(&self, id: u16) -> Result<usize, usize> {
        // The common cases first: the oldest (acknowledged in order) and a new highest id.
        match (self.0.front(), self.0.back()) {
            (Some((first, _)), _) if *first == id => Ok(0),
            (_, Some((last, _))) if *last < id => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&id, |(k, _)| *k),
        }
    }

    /// How many are in flight.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `id` is in flight.
    pub fn contains_key(&self, id: &u16) -> bool {
        self.position(*id).is_ok()
    }

    /// The entry for `id`.
    pub fn get(&self, id: &u16) -> Option<&Inflight> {
        self.position(*id).ok().map(|i| &self.0[i].1)
    }

    /// Puts `entry` under `id`, returning the entry it replaces.
    pub fn insert(&mut self, id: u16, entry: Inflight) -> Option<Inflight> {
        match self.position(id) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, entry)),
            Err(i) => {
                self.0.insert(i, (id, entry));
                None
            }
        }
    }

    /// Takes the entry for `id` out.
    pub fn remove(&mut self, id: &u16) -> Option<Inflight> {
        self.remove_if(*id, |_| Some(())).map(|((), entry)| entry)
    }

    /// Takes the entry for `id` out if `ends` gives it a value, and returns both.
    pub fn remove_if<T>(
        &mut self,
        id: u16,
        ends: impl FnOnce(&Inflight) -> Option<T>,
    ) -> Option<(T, Inflight)> {
        let i = self.position(id).ok()?;
        let value = ends(&self.0[i].1)?;
        self.0.remove(i).map(|(_, entry)| (value, entry))
    }

    /// The entries in packet-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&u16, &Inflight)> {
        self.into_iter()
    }

    /// The entries in packet-id order, changeable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u16, &mut Inflight)> {
        self.0.iter_mut().map(|(id, entry)| (&*id, entry))
    }

    /// The entries' values in packet-id order.
    pub fn values(&self) -> impl Iterator<Item = &Inflight> {
        self.0.iter().map(|(_, entry)| entry)
    }
}

impl FromIterator<(u16, Inflight)> for InflightMap {
    fn from_iter<I: IntoIterator<Item = (u16, Inflight)>>(entries: I) -> Self {
        let mut map = InflightMap::default();
        for (id, entry) in entries {
            map.insert(id, entry);
        }
        map
    }
}

impl<'a> IntoIterator for &'a InflightMap {
    type Item = (&'a u16, &'a Inflight);
    type IntoIter = std::iter::Map<
        std::collections::vec_deque::Iter<'a, (u16, Inflight)>,
        fn(&'a (u16, Inflight)) -> (&'a u16, &'a Inflight),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(id, entry)| (id, entry))
    }
}

/// Everything a session holds, behind the session's lock.
#[derive(Debug)]
pub struct SessionState {
    /// The connection attached now, if any.
    pub owner: Option<u64>,
    /// Set when another connection took the session over: the previous owner closes with
    /// this reason.
    pub kick: Option<ReasonCode>,
    /// Set when an administrator closes the connection attached now: it closes with this
    /// reason.
    pub close_owner: Option<ReasonCode>,
    /// The attached connection's peer address, as text.
    pub peer: Option<Arc<str>>,
    /// The attached connection's keep alive in seconds (after the broker's maximum).
    pub keep_alive: u16,
    /// When the attached connection completed CONNECT (wall clock, for people).
    pub connected_since: Option<SystemTime>,
    /// The protocol version of the last connection.
    pub version: ProtocolVersion,
    /// The user name the last connection authenticated with.
    pub username: Option<Arc<str>>,
    /// Filter -> (options, Subscription Identifier).
    pub subscriptions: BTreeMap<String, (SubscriptionOptions, Option<u32>)>,
    /// Messages not yet sent, oldest first.
    pub queue: Queue,
    /// Messages sent and not yet acknowledged, by packet id.
    pub inflight: InflightMap,
    /// QoS 2 packet ids received from the client whose PUBREL has not arrived.
    pub incoming_qos2: BTreeSet<u16>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// When the last connection ended, for expiry.
    pub disconnected_at: Option<Instant>,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Messages queued for it so far (cluster mode watches its growth).
    pub received: u64,
    /// Whether publishers wait for this session's queue (see [`Session::enqueue`]).
    pub pushback: Pushback,
    next_packet_id: u16,
}

/// How a session's full queue holds back the publishers that fill it.
///
/// A QoS 1/2 message from a client whose connection honours the hold is queued beyond the
/// limit (up to twice it) rather than dropped, and that client's connection stops reading
/// until the queue is back under three quarters of the limit. A subscriber that takes
/// nothing from its queue while publishers wait is given up on: messages beyond its limit
/// are dropped (and counted) again until it drains.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pushback {
    /// The queue went over its limit and publishers wait for it to drain.
    pub over: bool,
    /// Waiting publishers saw no progress and stopped waiting.
    pub given_up: bool,
    /// Messages taken from the queue so far (sent or expired): the progress waiting
    /// publishers watch.
    pub taken: u64,
}

impl Pushback {
    /// Whether publishers wait for this queue now.
    fn holds(&self) -> bool {
        self.over && !self.given_up
    }

    /// Lets the publishers held back go; returns whether any were (to tell them).
    pub(crate) fn release(&mut self) -> bool {
        let held = self.over;
        self.over = false;
        self.given_up = false;
        held
    }
}

/// What [`Session::enqueue`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued within the limit.
    Queued,
    /// Queued beyond the limit: the publisher must wait for the queue to drain.
    OverLimit,
    /// Dropped: the queue was full.
    Dropped,
}

impl SessionState {
    /// A fresh, empty session state.
    pub fn new(version: ProtocolVersion) -> Self {
        SessionState {
            owner: None,
            kick: None,
            close_owner: None,
            peer: None,
            keep_alive: 0,
            connected_since: None,
            version,
            username: None,
            subscriptions: BTreeMap::new(),
            queue: Queue::default(),
            inflight: InflightMap::default(),
            incoming_qos2: BTreeSet::new(),
            expiry_interval: 0,
            disconnected_at: None,
            dropped: 0,
            received: 0,
            pushback: Pushback::default(),
            next_packet_id: 1,
        }
    }

    /// The next packet id not in flight, if any is free.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// The ordinal of the oldest message given to the session and not yet acknowledged
    /// (queued or in flight), if any: every message with a lower ordinal is done.
    pub fn oldest_outstanding(&self) -> Option<u64> {
        let queued = self.queue.get(0).map(|o| o.ordinal);
        let in_flight = self.inflight.values().filter_map(|e| match e {
            Inflight::Publish(o) => Some(o.ordinal),
            Inflight::Release { .. } => None,
        });
        queued.into_iter().chain(in_flight).min()
    }

    /// Whether the session has expired at `now` while no connection held it.
    pub fn is_expired(&self, now: Instant) -> bool {
        match (self.owner, self.disconnected_at) {
            (None, Some(at)) if self.expiry_interval != u32::MAX => {
                now.saturating_duration_since(at).as_secs() >= u64::from(self.expiry_interval)
            }
            _ => false,
        }
    }
}

/// How much one session's queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimit {
    /// Messages.
    pub messages: usize,
    /// Bytes of payload and topic.
    pub bytes: usize,
}

impl QueueLimit {
    /// No limit: for retained messages a subscriber asked for, which it must get.
    pub const NONE: QueueLimit = QueueLimit {
        messages: usize::MAX,
        bytes: usize::MAX,
    };
}

/// A session, shared by the registry, the subscription tree and its connection.
#[derive(Debug)]
pub struct Session {
    /// The Client Identifier.
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Woken when the queue gains a message or the session is kicked.
    pub wake: Notify,
    /// Whether the session is in the store (changed under the session's lock, read without it
    /// by routing to decide whether a store transaction is needed).
    persistent: AtomicBool,
}

impl Session {
    /// A new session for `client_id`.
    pub fn new(client_id: Arc<str>, version: ProtocolVersion) -> Self {
        Session {
            client_id,
            state: Mutex::new(SessionState::new(version)),
            wake: Notify::new(),
            persistent: AtomicBool::new(false),
        }
    }

    /// Locks the session's state. A panic while holding the lock leaves plain data behind,
    /// so a poisoned lock is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the session is kept in the store.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    /// Whether a connection holds the session now.
    pub fn is_connected(&self) -> bool {
        self.lock().owner.is_some()
    }

    /// Queues `out` for the client, within `limit`. When the queue is full a QoS 1/2 message
    /// from a publisher that can be held back (`holdable`: its client identifier) is queued
    /// anyway (up to twice the limit) while the session is connected and not given up on
    /// ([`Pushback`]); any other message is dropped, counted and logged: a disconnected or
    /// stuck consumer never holds up the publisher, nor does a publisher's own queue (it
    /// would stop reading the acknowledgements that drain it). A QoS 1/2 message for a persistent session is written to `journal`, under
    /// this session's lock so that its record precedes any record of its delivery.
    pub(crate) fn enqueue(
        &self,
        mut out: Outgoing,
        limit: QueueLimit,
        journal: Option<&mut Journal<'_>>,
        holdable: Option<&str>,
    ) -> Enqueued {
        let mut state = self.lock();
        let (len, bytes) = (state.queue.len(), state.queue.bytes() + out.size());
        let mut outcome = Enqueued::Queued;
        if len >= limit.messages || bytes > limit.bytes {
            let within_hold =
                len < limit.messages.saturating_mul(2) && bytes <= limit.bytes.saturating_mul(2);
            if holdable.is_some_and(|publisher| publisher != &*self.client_id)
                && within_hold
                && out.qos != QoS::AtMostOnce
                && state.owner.is_some()
                && !state.pushback.given_up
            {
                state.pushback.over = true;
                outcome = Enqueued::OverLimit;
            } else {
                self.count_drop(&mut state, limit);
                return Enqueued::Dropped;
            }
        }
        out.seq = 0;
        if let Some(journal) =
            journal.filter(|_| self.is_persistent() && out.qos != QoS::AtMostOnce)
        {
            out.seq = journal.next_id();
            journal.enqueue(&self.client_id, &out);
        }
        // Only the first message of an empty queue wakes the connection: while the queue is
        // not empty, a wake-up is pending or the connection waits for acknowledgements to
        // free its window (and flushes when they come). Waking a thousand subscribers for
        // every message of a fan-out was a sixth of the broker's time.
        let was_empty = state.queue.is_empty();
        state.received += 1;
        out.ordinal = state.received;
        state.queue.push_back(out);
        let connected = state.owner.is_some();
        drop(state);
        if connected && was_empty {
            self.wake.notify_one();
        }
        outcome
    }

    /// Queues a QoS 0 copy of each of `messages` (one publisher's, to one topic, in order) for
    /// this session, as [`Session::enqueue`] would one by one, under one lock and with at most
    /// one wake-up. `template` is the copy of the first; the others differ only in their
    /// message. QoS 0 is never stored nor holds a publisher back: a message beyond the limit
    /// is dropped. Returns how many were dropped.
    pub(crate) fn enqueue_batch(
        &self,
        template: Outgoing,
        messages: &[Arc<Message>],
        limit: QueueLimit,
    ) -> u64 {
        debug_assert_eq!(template.qos, QoS::AtMostOnce);
        let mut state = self.lock();
        let was_empty = state.queue.is_empty();
        let mut dropped = 0;
        for message in messages {
            let mut out = Outgoing {
                message: message.clone(),
                extra: template.extra.clone(),
                ..template
            };
            let (len, bytes) = (state.queue.len(), state.queue.bytes() + out.size());
            if len >= limit.messages || bytes > limit.bytes {
                self.count_drop(&mut state, limit);
                dropped += 1;
                continue;
            }
            state.received += 1;
            out.ordinal = state.received;
            state.queue.push_back(out);
        }
        let wake = state.owner.is_some() && was_empty && !state.queue.is_empty();
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        dropped
    }

    /// Counts a message this session's full queue refused, logging the first and every
    /// thousandth.
    fn count_drop(&self, state: &mut SessionState, limit: QueueLimit) {
        state.dropped += 1;
        let dropped = state.dropped;
        if dropped == 1 || dropped.is_multiple_of(1000) {
            warn!(client_id = %self.client_id, dropped, limit = limit.messages,
                "queue full: message dropped");
        }
    }

    /// While this session's full queue holds publishers back: how many messages it has taken
    /// from its queue so far (waiting publishers watch it move). `None` once they may go on.
    pub fn holding_back(&self) -> Option<u64> {
        let state = self.lock();
        let holds = state.pushback.holds() && state.owner.is_some();
        holds.then_some(state.pushback.taken)
    }

    /// Stops holding publishers back for this session, which took nothing from its queue
    /// while they waited: until it drains, messages beyond its limit are dropped.
    pub fn give_up_holding(&self) {
        let mut state = self.lock();
        if state.pushback.holds() {
            state.pushback.given_up = true;
            let queued = state.queue.len();
            drop(state);
            warn!(client_id = %self.client_id, queued,
                "subscriber takes nothing from its full queue: publishers no longer wait for it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u64),
        Remove(u16),
        RemoveIfEven(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct ids, so operations meet the same entries; rising ids are the common
        // case and are made likelier.
        let id = prop_oneof![0u16..8, 65530u16..=65535];
        prop_oneof![
            (id.clone(), any::<u64>()).prop_map(|(i, s)| Op::Insert(i, s)),
            id.clone().prop_map(Op::Remove),
            id.prop_map(Op::RemoveIfEven),
        ]
    }

    fn seq(entry: &Inflight) -> u64 {
        match entry {
            Inflight::Release { seq } => *seq,
            Inflight::Publish(_) => unreachable!("only releases are used here"),
        }
    }

    proptest! {
        /// The in-flight map answers exactly as an ordered map would, in any order of
        /// operations (wrapped ids included).
        #[test]
        fn the_inflight_map_behaves_as_an_ordered_map(ops in prop::collection::vec(op(), 0..64)) {
            let mut map = InflightMap::default();
            let mut model: BTreeMap<u16, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(id, s) => {
                        let old = map.insert(id, Inflight::Release { seq: s }).map(|e| seq(&e));
                        prop_assert_eq!(old, model.insert(id, s));
                    }
                    Op::Remove(id) => {
                        prop_assert_eq!(map.remove(&id).map(|e| seq(&e)), model.remove(&id));
                    }
                    Op::RemoveIfEven(id) => {
                        let even = |e: &Inflight| Some(seq(e)).filter(|s| s % 2 == 0);
                        let got = map.remove_if(id, even).map(|(s, _)| s);
                        let want = model.get(&id).copied().filter(|s| s % 2 == 0);
                        if want.is_some() {
                            model.remove(&id);
                        }
                        prop_assert_eq!(got, want);
                    }
                }
                let entries: Vec<(u16, u64)> = map.iter().map(|(k, e)| (*k, seq(e))).collect();
                let expected: Vec<(u16, u64)> = model.iter().map(|(k, s)| (*k, *s)).collect();
                prop_assert_eq!(entries, expected);
                prop_assert_eq!(map.len(), model.len());
                for id in [0u16, 3, 7, 65530, 65535] {
                    prop_assert_eq!(map.contains_key(&id), model.contains_key(&id));
                    prop_assert_eq!(map.get(&id).map(seq), model.get(&id).copied());
                }
            }
        }
    }

    fn qos0(payload: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from("t"),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: Arc::from("p"),
            expires_at: None,
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
        })
    }

    fn copy_of(message: &Arc<Message>) -> Outgoing {
        Outgoing::new(message.clone(), QoS::AtMostOnce, false).with_extra(vec![4], None)
    }

    #[test]
    fn a_queued_copy_stays_small_unless_it_carries_more() {
        // One entry per subscriber and message in a fan-out: its size is the queue's memory.
        assert!(std::mem::size_of::<Outgoing>() <= 40);
        let mut out = Outgoing::new(qos0(b"x"), QoS::AtMostOnce, false);
        assert_eq!((out.subscription_ids(), out.via_share()), (&[][..], None));
        out.set_subscription_ids(Vec::new());
        assert!(out.extra.is_none(), "nothing to carry, nothing boxed");
        out.add_subscription_id(4);
        out.add_subscription_id(9);
        assert_eq!(out.subscription_ids(), [4, 9]);
        let shared = out.clone().with_extra(vec![1], Some(Arc::from("g")));
        assert_eq!(shared.via_share().map(|s| &**s), Some("g"));
        assert_eq!(out.subscription_ids(), [4, 9]);
    }

    #[test]
    fn a_batch_queues_in_order_up_to_the_limit_and_wakes_once() {
        let session = Session::new(Arc::from("s"), ProtocolVersion::V5);
        session.lock().owner = Some(1);
        let limit = QueueLimit {
            messages: 3,
            bytes: usize::MAX,
        };
        let first: Vec<_> = (0..2u8).map(|i| qos0(&[i])).collect();
        assert_eq!(session.enqueue_batch(copy_of(&first[0]), &first, limit), 0);
        let second: Vec<_> = (2..5u8).map(|i| qos0(&[i])).collect();
        // One more fits; the other two are dropped, newest first, and counted.
        assert_eq!(
            session.enqueue_batch(copy_of(&second[0]), &second, limit),
            2
        );
        let state = session.lock();
        assert_eq!(state.dropped, 2);
        let queued: Vec<_> = state
            .queue
            .iter()
            .map(|o| {
                (
                    o.message.payload[0],
                    o.ordinal,
                    o.subscription_ids().to_vec(),
                )
            })
            .collect();
        assert_eq!(queued, [(0, 1, vec![4]), (1, 2, vec![4]), (2, 3, vec![4])]);
        drop(state);
        // The first batch found the queue empty and woke the connection; the second did not.
        let woken = session.wake.notified();
        tokio::pin!(woken);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(std::future::Future::poll(woken.as_mut(), &mut cx).is_ready());
        let again = session.wake.notified();
        tokio::pin!(again);
        assert!(std::future::Future::poll(again.as_mut(), &mut cx).is_pending());
    }
}
