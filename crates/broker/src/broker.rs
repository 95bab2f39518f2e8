//! The broker's shared state: the session registry, the subscription tree, the retained
//! store, and routing a message to everyone it reaches.
//!
//! Lock order: `sessions` before any session's lock; `tree` and `retained` are taken alone
//! and never held across another lock, so publishers on different cores only share the
//! tree's read lock.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::access::{AccessControl, AllowAll};
use crate::config::Limits;
use crate::message::Message;
use crate::persist::{self, Journal};
use crate::scratch;
use crate::session::{Enqueued, Inflight, Outgoing, Session};
use crate::tree::SubscriptionTree;
use tern_proto::QoS;
use tern_store::{Record, Store};
use tokio::sync::Notify;

/// Counters for `$SYS` and the admin API.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub clients_connected: AtomicUsize,
    /// Most connections open at once.
    pub clients_maximum: AtomicUsize,
    /// PUBLISH packets received.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent.
    pub messages_sent: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Bytes sent.
    pub bytes_sent: AtomicU64,
    /// Times a publisher was held back by a subscriber's full queue (flow control).
    pub publishers_held: AtomicU64,
    /// Messages dropped, for any cause (the sum of `dropped`).
    pub messages_dropped: AtomicU64,
    /// PUBLISH packets received, by QoS.
    pub received_by_qos: [AtomicU64; 3],
    /// PUBLISH packets sent, by QoS.
    pub sent_by_qos: [AtomicU64; 3],
    /// Messages dropped, by [`DropCause`].
    pub dropped: [AtomicU64; DropCause::ALL.len()],
    /// Clients that completed CONNECT since the start.
    pub connects: AtomicU64,
}

/// Why a message did not reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The subscriber's queue was full (messages or bytes).
    QueueFull,
    /// Its Message Expiry Interval ran out before it could be sent.
    Expired,
    /// Larger than the Maximum Packet Size the subscriber accepts [MQTT-3.1.2-25].
    TooLarge,
    /// Taken out of memory and then not readable from the store.
    Unreadable,
}

impl DropCause {
    /// Every cause, in the order of [`Stats::dropped`].
    pub const ALL: [DropCause; 4] = [
        DropCause::QueueFull,
        DropCause::Expired,
        DropCause::TooLarge,
        DropCause::Unreadable,
    ];

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropCause::QueueFull => "queue_full",
            DropCause::Expired => "expired",
            DropCause::TooLarge => "too_large",
            DropCause::Unreadable => "unreadable",
        }
    }
}

impl Stats {
    /// Counts `n` messages dropped for `cause`.
    pub fn drop_messages(&self, cause: DropCause, n: u64) {
        if n > 0 {
            self.messages_dropped.fetch_add(n, Ordering::Relaxed);
            self.dropped[cause as usize].fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The broker: everything connections share.
pub struct Broker {
    /// The limits in force.
    pub limits: Limits,
    /// Counters.
    pub stats: Stats,
    /// When the broker started.
    pub started: Instant,
    /// Who may connect, publish and subscribe.
    pub access: Arc<dyn AccessControl>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    tree: RwLock<SubscriptionTree>,
    retained: RwLock<HashMap<Arc<str>, Arc<Message>>>,
    next_connection: AtomicU64,
    store: Option<Arc<Store>>,
    observer: OnceLock<Observer>,
    forwarder: OnceLock<Forwarder>,
    connect_hook: OnceLock<ConnectHook>,
    /// Notified when a session's queue that held publishers back has drained (or its
    /// connection ended): waiting publishers look again.
    pub drained: Notify,
}

/// Called with every message the broker routes (the console's topic tree).
pub type Observer = Box<dyn Fn(&Message) + Send + Sync>;

/// Called with every message published on this broker (by a client, a will or a bridge)
/// whose topic is not a `$` topic; not with messages that came from other cluster nodes.
/// Returns a ticket (0: none): the publisher's acknowledgement waits until the forwarder
/// confirms that ticket (`Connection::forward_needed`).
pub type Forwarder = Box<dyn Fn(&Arc<Message>) -> u64 + Send + Sync>;

/// Called with a filter when its first subscription appears (`true`) or its last one goes
/// (`false`); shared subscriptions under their whole `$share/<group>/<filter>`.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

/// Called with a client identifier when its CONNECT has been accepted.
pub type ConnectHook = Box<dyn Fn(&str) + Send + Sync>;

/// The publisher name of messages that came from another cluster node (`$cluster/<node>`): they
/// are routed here and never forwarded again. No client may take an identifier starting so.
pub const CLUSTER_PUBLISHER_PREFIX: &str = "$cluster/";

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The sessions a delivery reaches (see `scratch`).
    static PER_SESSION: Cell<Vec<(Arc<Session>, Outgoing)>> = const { Cell::new(Vec::new()) };
}

impl Broker {
    /// A broker with `limits` that lets everyone in, started at `now`.
    pub fn new(limits: Limits, now: Instant) -> Arc<Broker> {
        Broker::with_access(limits, Arc::new(AllowAll), now)
    }

    /// A broker whose access decisions `access` makes.
    pub fn with_access(
        limits: Limits,
        access: Arc<dyn AccessControl>,
        now: Instant,
    ) -> Arc<Broker> {
        Broker::with_store(limits, access, now, None)
    }

    /// A broker that keeps what must outlive a crash in `store` (none: memory only). Fill it
    /// with [`Broker::restore`] before the first connection.
    pub fn with_store(
        limits: Limits,
        access: Arc<dyn AccessControl>,
        now: Instant,
        store: Option<Arc<Store>>,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            access,
            limits,
            stats: Stats::default(),
            started: now,
            sessions: Mutex::new(HashMap::new()),
            tree: RwLock::new(SubscriptionTree::default()),
            retained: RwLock::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            observer: OnceLock::new(),
            forwarder: OnceLock::new(),
            connect_hook: OnceLock::new(),
            drained: Notify::new(),
        })
    }

    /// Has `observer` called with every message routed from now on (set once; later calls
    /// are ignored). It runs on the message path: it must be quick.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Has `forwarder` called with every message published here from now on (set once; cluster
    /// mode).
    pub fn set_forwarder(&self, forwarder: Forwarder) {
        let _ = self.forwarder.set(forwarder);
    }

    /// Has `hook` called with every client identifier whose CONNECT is accepted from now on
    /// (set once; cluster mode's session registry).
    pub fn set_connect_hook(&self, hook: ConnectHook) {
        let _ = self.connect_hook.set(hook);
    }

    /// Tells the connect hook, if any, that `client_id` connected here.
    pub(crate) fn connected(&self, client_id: &str) {
        if let Some(hook) = self.connect_hook.get() {
            hook(client_id);
        }
    }

    /// Has `hook` told of every filter that gains its first or loses its last subscription,
    /// and returns the filters subscribed now; both under the tree's lock, so no change falls
    /// between the list and the first call.
    pub fn set_interest(&self, hook: InterestHook) -> Vec<String> {
        let mut tree = self.tree_mut();
        tree.interest = Some(hook);
        tree.filters()
    }

    /// Stores, replaces or (empty payload) clears a retained message without routing it: the
    /// cluster's replicated retained store telling this node of another node's change.
    pub fn set_retained(&self, message: Arc<Message>) {
        let mut journal = self
            .store()
            .filter(|_| !message.topic.starts_with('$'))
            .map(Journal::begin);
        self.retain(&message, journal.as_mut());
        persist::commit(journal);
    }

    /// The store, when the broker persists.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_deref()
    }

    /// Starts a store transaction if the broker persists.
    pub(crate) fn journal(&self) -> Option<Journal<'_>> {
        self.store().map(Journal::begin)
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The session registry.
    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tree(&self) -> RwLockReadGuard<'_, SubscriptionTree> {
        read(&self.tree)
    }

    pub(crate) fn tree_mut(&self) -> RwLockWriteGuard<'_, SubscriptionTree> {
        write(&self.tree)
    }

    /// Sessions known, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Subscriptions in the tree.
    pub fn subscription_count(&self) -> usize {
        self.tree().len()
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Whether `topic` has a retained message.
    pub(crate) fn has_retained(&self, topic: &str) -> bool {
        read(&self.retained).contains_key(topic)
    }

    /// Stores, replaces or (empty payload) clears the retained message of its topic
    /// [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7], in the store too (except the broker's
    /// own `$` topics, which it publishes again after a restart).
    pub(crate) fn retain(&self, message: &Arc<Message>, journal: Option<&mut Journal<'_>>) {
        let mut retained = write(&self.retained);
        let journal = journal.filter(|_| !message.topic.starts_with('$'));
        if message.payload.is_empty() {
            let had = retained.remove(&message.topic).is_some();
            if let (true, Some(j)) = (had, journal) {
                j.push(&Record::RetainClear {
                    topic: &message.topic,
                });
            }
        } else {
            retained.insert(message.topic.clone(), message.clone());
            if let (Some(j), Some(store)) = (journal, self.store()) {
                j.push(&Record::Retain(persist::message_data(store, message)));
            }
        }
    }

    /// Every retained message, topic and payload (for tests comparing states).
    #[cfg(test)]
    pub(crate) fn retained_pairs(&self) -> Vec<(Arc<str>, Vec<u8>)> {
        read(&self.retained)
            .iter()
            .map(|(t, m)| (t.clone(), m.payload.to_vec()))
            .collect()
    }

    /// Puts back a retained message the store kept.
    pub(crate) fn retain_recovered(&self, message: Arc<Message>) {
        write(&self.retained).insert(message.topic.clone(), message);
    }

    /// The retained messages a filter matches, not yet expired.
    pub(crate) fn retained_matching(
        &self,
        filter: tern_proto::TopicFilter<'_>,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        read(&self.retained)
            .values()
            .filter(|m| !m.is_expired(now))
            .filter(|m| tern_proto::TopicName::new(&m.topic).is_ok_and(|t| filter.matches(t)))
            .cloned()
            .collect()
    }

    /// Delivers `message` to every session whose subscriptions match its topic: one copy per
    /// session at the highest QoS granted among its matching subscriptions, carrying all their
    /// Subscription Identifiers. Returns how many sessions it reached.
    pub fn route(&self, message: Arc<Message>) -> usize {
        let mut journal = None;
        let (reached, _) = self.route_logged(message, &mut journal, None);
        persist::commit(journal);
        reached
    }

    /// [`Broker::route`], writing what must outlive a crash into `journal` (begun here if
    /// needed and not begun yet: the caller commits it and waits for it before acknowledging).
    /// With `held`, the publisher can be held back: sessions whose full queue took the
    /// message anyway are added to it (see [`Session::enqueue`]).
    /// Returns the sessions reached and the forwarder's ticket (0: none).
    pub(crate) fn route_logged<'s>(
        &'s self,
        message: Arc<Message>,
        journal: &mut Option<Journal<'s>>,
        held: Option<&mut Vec<Arc<Session>>>,
    ) -> (usize, u64) {
        let (groups, ticket) = self.announce(&message);
        let retain = message.retain && self.limits.retain_available;
        let matches = self.tree().matches_with(&message.topic, groups);
        (
            self.deliver(message, matches, retain, journal, held),
            ticket,
        )
    }

    /// Shows `message` to the observer and the forwarder before it is routed. Returns whether
    /// local shared groups get it, and the forwarder's ticket (0: none).
    fn announce(&self, message: &Arc<Message>) -> (bool, u64) {
        if let Some(observe) = self.observer.get() {
            observe(message);
        }
        // In cluster mode shared groups span the nodes: NATS picks the node whose member gets
        // each message (`route_shared`), so neither local publications nor arrivals from
        // the cluster go to a local group member here. The broker's own `$` topics are never
        // forwarded and keep their groups local.
        let mut groups = true;
        let mut ticket = 0;
        if let Some(forward) = self.forwarder.get() {
            if !message.topic.starts_with('$') {
                groups = false;
                if !message.publisher.starts_with(CLUSTER_PUBLISHER_PREFIX) {
                    ticket = forward(message);
                }
            }
        }
        (groups, ticket)
    }

    /// Routes `messages`, QoS 0 publications of one client to one topic, none retained, in
    /// order, exactly as [`Broker::route_logged`] would one after the other, but with one walk
    /// of the tree and one lock and wake-up per subscriber for them all (what a publisher's
    /// turn of readings to one topic costs a thousand subscribers was a third of a fan-out's
    /// time). Nothing is written to the store: no QoS 0 message is. Returns the forwarder's
    /// highest ticket (0: none).
    pub(crate) fn route_batch(&self, messages: &[Arc<Message>]) -> u64 {
        let Some(first) = messages.first() else {
            return 0;
        };
        debug_assert!(messages.iter().all(|m| m.qos == QoS::AtMostOnce
            && !m.retain
            && m.topic == first.topic
            && m.publisher == first.publisher));
        let mut ticket = 0;
        let mut groups = true;
        for message in messages {
            let (g, t) = self.announce(message);
            groups = g;
            ticket = ticket.max(t);
        }
        let matches = self.tree().matches_with(&first.topic, groups);
        if messages.len() == 1 || matches.subscribers.iter().any(|s| s.share.is_some()) {
            // A shared group picks a member at each walk: one walk per message (this one for
            // the first), so a batch is spread over the members as single messages would be.
            self.deliver(first.clone(), matches, false, &mut None, None);
            for message in &messages[1..] {
                let matches = self.tree().matches_with(&message.topic, groups);
                self.deliver(message.clone(), matches, false, &mut None, None);
            }
            return ticket;
        }
        let mut per_session = PER_SESSION.take();
        self.recipients(first, matches, &mut per_session);
        let limit = self.limits.queue_limit();
        for (session, out) in per_session.drain(..) {
            let dropped = session.enqueue_batch(out, messages, limit);
            self.stats.drop_messages(DropCause::QueueFull, dropped);
        }
        scratch::give_back(&PER_SESSION, per_session);
        ticket
    }

    /// Delivers a message that came from the cluster for the shared subscription
    /// `shared_filter` (`$share/<group>/<filter>`) to one member of that group on this node,
    /// as the member's only copy of it. Returns how many sessions it reached (0 or 1).
    pub fn route_shared(&self, message: Arc<Message>, shared_filter: &str) -> usize {
        let member = self.tree().group_member(shared_filter);
        let mut journal = None;
        let member = crate::tree::Matches {
            subscribers: member.into_iter().collect(),
            distinct: true,
        };
        let reached = self.deliver(message, member, false, &mut journal, None);
        persist::commit(journal);
        reached
    }

    /// Queues `message` for `matches`, one copy per session, retaining it first if `retain`.
    /// `held`: as in [`Broker::route_logged`].
    pub(crate) fn deliver<'s>(
        &'s self,
        message: Arc<Message>,
        matches: crate::tree::Matches,
        retain: bool,
        journal: &mut Option<Journal<'s>>,
        mut held: Option<&mut Vec<Arc<Session>>>,
    ) -> usize {
        let mut per_session = PER_SESSION.take();
        self.recipients(&message, matches, &mut per_session);
        let reached = per_session.len();
        if let Some(store) = self.store().filter(|_| journal.is_none()) {
            // The transaction is begun before any session is locked (lock order), and only
            // when something will be written: most messages reach only clean sessions.
            let persistent_target = per_session
                .iter()
                .any(|(s, out)| out.qos != QoS::AtMostOnce && s.is_persistent());
            if persistent_target || (retain && !message.topic.starts_with('$')) {
                *journal = Some(Journal::begin(store));
            }
        }
        if retain {
            self.retain(&message, journal.as_mut());
        }
        for (session, out) in per_session.drain(..) {
            let limit = self.limits.queue_limit();
            let holdable = held.is_some().then_some(&*message.publisher);
            match session.enqueue(out, limit, journal.as_mut(), holdable) {
                Enqueued::Queued => {}
                // Sessions are distinct here, and the transport handles no further
                // publication once one was held: no session is named twice.
                Enqueued::OverLimit => held.iter_mut().for_each(|h| h.push(session.clone())),
                Enqueued::Dropped => self.stats.drop_messages(DropCause::QueueFull, 1),
            }
        }
        scratch::give_back(&PER_SESSION, per_session);
        reached
    }

    /// The copies of `message` that `matches` call for, one per session, into `per_session`
    /// (empty): the subscriber's QoS and RETAIN, its Subscription Identifiers, minus the
    /// publisher itself under No Local and those the access rules keep from reading it.
    fn recipients(
        &self,
        message: &Arc<Message>,
        matches: crate::tree::Matches,
        per_session: &mut Vec<(Arc<Session>, Outgoing)>,
    ) {
        // Merge overlapping subscriptions per session (section 3.3.4), unless every session
        // is named once. Finding a session's entry is a scan while there are few, and an
        // index by session beyond that: a scan per subscriber made a fan-out to n sessions
        // cost n² comparisons.
        const SCAN: usize = 16;
        let crate::tree::Matches {
            subscribers: mut matches,
            distinct,
        } = matches;
        let total = matches.len();
        per_session.reserve(total);
        let mut index: HashMap<*const Session, usize, foldhash::fast::RandomState> =
            HashMap::default();
        for sub in matches.drain(..) {
            if sub.options.no_local && sub.session.client_id == message.publisher {
                continue;
            }
            if !self.access.may_receive(
                &sub.session.client_id,
                sub.username.as_deref(),
                &message.topic,
            ) {
                continue;
            }
            let qos = message.qos.min(sub.options.qos);
            // [MQTT-3.3.1-12] without Retain As Published, forwarded messages have RETAIN 0.
            let retain = sub.options.retain_as_published && message.retain;
            let key = Arc::as_ptr(&sub.session);
            let found = if distinct {
                None
            } else if per_session.len() < SCAN {
                per_session
                    .iter()
                    .position(|(s, _)| Arc::ptr_eq(s, &sub.session))
            } else {
                if index.is_empty() {
                    index.reserve(total);
                    index.extend(
                        per_session
                            .iter()
                            .enumerate()
                            .map(|(i, (s, _))| (Arc::as_ptr(s), i)),
                    );
                }
                index.get(&key).copied()
            };
            match found.map(|i| &mut per_session[i]) {
                Some((_, out)) => {
                    out.qos = out.qos.max(qos);
                    out.retain |= retain;
                    if let Some(id) = sub.id {
                        out.add_subscription_id(id);
                    }
                }
                None => {
                    if !index.is_empty() {
                        index.insert(key, per_session.len());
                    }
                    per_session.push((
                        sub.session,
                        Outgoing::new(message.clone(), qos, retain)
                            .with_extra(sub.id.into_iter().collect(), sub.share),
                    ));
                }
            }
        }
        crate::tree::Matches::recycle(matches);
    }

    /// Moves the QoS 1/2 messages `session` got through shared subscriptions and has not
    /// acknowledged to another connected member of the same group (section 4.8.2). Messages
    /// whose group has no other member online stay where they are.
    pub(crate) fn hand_over_shared(&self, session: &Session) -> u64 {
        let candidates: Vec<(Option<u16>, Outgoing)> = {
            let state = session.lock();
            let inflight = state.inflight.iter().filter_map(|(id, entry)| match entry {
                Inflight::Publish(o) if o.via_share().is_some() => Some((Some(*id), o.clone())),
                _ => None,
            });
            let queued = state
                .queue
                .iter()
                .filter(|o| o.via_share().is_some() && o.qos != QoS::AtMostOnce)
                .map(|o| (None, o.clone()));
            inflight.chain(queued).collect()
        };
        if candidates.is_empty() {
            return 0;
        }
        let mut journal = self.journal();
        for (id, mut out) in candidates {
            let Some(filter) = out.via_share().cloned() else {
                continue;
            };
            let Some(other) = self.tree().shared_member(&filter, &session.client_id) else {
                continue;
            };
            let removed = {
                let mut state = session.lock();
                match id {
                    Some(id) => {
                        let same = matches!(state.inflight.get(&id), Some(Inflight::Publish(o)) if Arc::ptr_eq(&o.message, &out.message));
                        same && state.inflight.remove(&id).is_some()
                    }
                    None => {
                        let pos = state
                            .queue
                            .iter()
                            .position(|o| Arc::ptr_eq(&o.message, &out.message));
                        pos.is_some_and(|pos| state.queue.remove(pos).is_some())
                    }
                }
            };
            if removed {
                let old_seq = out.seq;
                out.qos = out.qos.min(other.options.qos);
                out.set_subscription_ids(other.id.into_iter().collect());
                // The new entry is written before the old one is finished, so the message
                // is needed by one of them throughout.
                let limit = self.limits.queue_limit();
                let queued = other.session.enqueue(out, limit, journal.as_mut(), None);
                if queued == Enqueued::Dropped {
                    self.stats.drop_messages(DropCause::QueueFull, 1);
                }
                if let (Some(j), true) = (journal.as_mut(), old_seq != 0) {
                    j.push(&Record::Done {
                        client: &session.client_id,
                        seq: old_seq,
                    });
                }
            }
        }
        persist::commit(journal)
    }

    /// Removes sessions that expired while disconnected; returns how many.
    pub fn expire_sessions(&self, now: Instant) -> usize {
        let expired: Vec<Arc<Session>> = {
            let mut sessions = self.sessions();
            let ids: Vec<Arc<str>> = sessions
                .iter()
                .filter(|(_, s)| s.lock().is_expired(now))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        let mut journal = self.journal();
        for session in &expired {
            self.drop_subscriptions(session);
            if let (Some(j), true) = (journal.as_mut(), session.is_persistent()) {
                j.push(&Record::SessionDrop {
                    client: &session.client_id,
                });
            }
        }
        persist::commit(journal);
        expired.len()
    }

    /// Removes messages whose Message Expiry Interval ran out [MQTT-3.3.2-5] from the retained
    /// store and from the queues of sessions (delivery skips them anyway; this frees memory and
    /// disk for sessions that stay away). Returns how many were removed.
    pub fn expire_messages(&self, now: Instant) -> usize {
        let expired_topics: Vec<Arc<str>> = read(&self.retained)
            .iter()
            .filter(|(_, m)| m.is_expired(now))
            .map(|(t, _)| t.clone())
            .collect();
        let mut removed = 0;
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut journal = self.journal();
        if !expired_topics.is_empty() {
            let mut retained = write(&self.retained);
            for topic in expired_topics {
                if retained.get(&topic).is_some_and(|m| m.is_expired(now)) {
                    retained.remove(&topic);
                    removed += 1;
                    if let Some(j) = journal.as_mut().filter(|_| !topic.starts_with('$')) {
                        j.push(&Record::RetainClear { topic: &topic });
                    }
                }
            }
        }
        for session in sessions {
            let mut state = session.lock();
            if !state.queue.iter().any(|o| o.message.is_expired(now)) {
                continue;
            }
            let mut kept = crate::session::Queue::default();
            while let Some(out) = state.queue.pop_front() {
                if !out.message.is_expired(now) {
                    kept.push_back(out);
                    continue;
                }
                removed += 1;
                self.stats.drop_messages(DropCause::Expired, 1);
                if let (Some(j), true) = (journal.as_mut(), out.seq != 0) {
                    j.push(&Record::Done {
                        client: &session.client_id,
                        seq: out.seq,
                    });
                }
            }
            state.queue = kept;
        }
        persist::commit(journal);
        removed
    }

    /// Takes every subscription of `session` out of the tree.
    pub(crate) fn drop_subscriptions(&self, session: &Session) {
        let filters: Vec<String> = std::mem::take(&mut session.lock().subscriptions)
            .into_keys()
            .collect();
        let mut tree = self.tree_mut();
        for f in filters {
            tree.remove(&f, &session.client_id);
        }
    }
}
