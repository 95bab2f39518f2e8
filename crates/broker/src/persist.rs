//! What the broker writes to its store, and how it rebuilds itself from the store at startup.
//!
//! Only what someone could ask for after a crash is written: retained messages, persistent
//! sessions (Session Expiry Interval above 0) with their subscriptions, the QoS 1/2 messages
//! queued for them and how far each went, and the QoS 2 packet ids they sent and have not
//! released. A message that reaches only clean sessions costs no disk write.
//!
//! Records are appended in a [`Journal`] (one store transaction, one frame on disk) by the
//! code that makes the change, while it holds the lock that orders that change, so the log
//! replays into the same state. Lock order: the store's transaction, then the retained store
//! or a session (never a session, then the store).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::{
    PropertiesBuf, PropertyContext, ProtocolVersion, PublishBuf, QoS, SubscriptionOptions,
};
use tern_store::{
    EntryData, EntryState, MessageData, OwnedMessage, Record, Recovered, SessionData, Store, Txn,
};
use tracing::warn;

use crate::broker::Broker;
use crate::connection::{Attached, DelayedWill};
use crate::message::Message;
use crate::session::{Inflight, Outgoing, Session, SessionState};
use crate::tree::Subscriber;

/// One store transaction, and the messages already written in it.
pub(crate) struct Journal<'s> {
    store: &'s Store,
    txn: Txn<'s>,
    messages: Vec<u64>,
}

impl<'s> Journal<'s> {
    pub(crate) fn begin(store: &'s Store) -> Self {
        Journal {
            store,
            txn: store.begin(),
            messages: Vec::new(),
        }
    }

    /// A fresh entry number.
    pub(crate) fn next_id(&self) -> u64 {
        self.store.next_id()
    }

    pub(crate) fn push(&mut self, record: &Record<'_>) {
        self.txn.push(record);
    }

    /// Writes that `client` has `out` queued as entry `out.seq`, with its message unless this
    /// transaction wrote it already.
    pub(crate) fn enqueue(&mut self, client: &str, out: &Outgoing) {
        let store = self.store;
        let id = *out.message.stored.get_or_init(|| store.next_id());
        // An offloaded entry's message is in the store already, and stays there while the
        // entry moving it (written before the old entry is finished) needs it.
        if !self.messages.contains(&id) && !out.offloaded {
            self.messages.push(id);
            let data = message_data(store, &out.message);
            self.txn.push(&Record::Message { id, message: data });
        }
        self.txn.push(&Record::Enqueue(EntryData {
            client,
            seq: out.seq,
            message: id,
            qos: out.qos as u8,
            retain: out.retain,
            subscription_ids: Cow::Borrowed(out.subscription_ids()),
            share: out.via_share().map(|s| &**s),
        }));
    }

    /// Ends the transaction; the position to wait for before acknowledging (0: none).
    pub(crate) fn commit(self) -> u64 {
        self.txn.commit()
    }
}

/// A step of the QoS handshakes a connection records, written in one frame per turn.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// The entry is finished.
    Done(u64),
    /// PUBREC came for the entry.
    Released(u64),
    /// PUBREL came for one of the client's QoS 2 packet ids.
    IncomingReleased(u16),
}

/// Writes the steps the connection's handlers recorded, in one frame; the output waits for
/// it when a step needs to be durable first.
pub(crate) fn write_steps(broker: &Broker, a: &mut Attached) {
    if a.steps.is_empty() {
        return;
    }
    let Some(store) = broker.store() else {
        a.steps.clear();
        return;
    };
    let client = &a.client_id;
    let mut txn = store.begin();
    for step in a.steps.drain(..) {
        txn.push(&match step {
            Step::Done(seq) => Record::Done { client, seq },
            Step::Released(seq) => Record::Released { client, seq },
            Step::IncomingReleased(packet_id) => Record::IncomingReleased { client, packet_id },
        });
    }
    let lsn = txn.commit();
    if std::mem::take(&mut a.steps_wait) {
        a.needs = a.needs.max(lsn);
    }
}

/// Commits `journal` if one was begun; the position to wait for.
pub(crate) fn commit(journal: Option<Journal<'_>>) -> u64 {
    journal.map_or(0, Journal::commit)
}

/// A message as the store keeps it.
pub(crate) fn message_data<'m>(store: &Store, m: &'m Message) -> MessageData<'m> {
    MessageData {
        topic: &m.topic,
        payload: &m.payload,
        qos: m.qos as u8,
        retain: m.retain,
        properties: m.properties.as_bytes(),
        publisher: &m.publisher,
        expires_at: m.expires_at.map(|t| store.wall_ms(t)),
    }
}

fn will_data(w: &PublishBuf) -> MessageData<'_> {
    MessageData {
        topic: &w.topic,
        payload: &w.payload,
        qos: w.qos as u8,
        retain: w.retain,
        properties: w.properties.as_bytes(),
        publisher: "",
        expires_at: None,
    }
}

/// The record of a persistent session's own fields.
pub(crate) fn session_record<'a>(
    store: &Store,
    client: &'a str,
    state: &'a SessionState,
    will: Option<&'a (PublishBuf, u32)>,
) -> Record<'a> {
    Record::Session(SessionData {
        client,
        expiry_interval: state.expiry_interval,
        version: state.version.level(),
        username: state.username.as_deref(),
        disconnected_at: state.disconnected_at.map(|t| store.wall_ms(t)),
        will: will.map(|(m, delay)| (will_data(m), *delay)),
    })
}

/// Writes everything a session holds: for a session that becomes persistent.
pub(crate) fn write_whole_session(
    journal: &mut Journal<'_>,
    client: &str,
    state: &mut SessionState,
    will: Option<&(PublishBuf, u32)>,
) {
    let record = session_record(journal.store, client, state, will);
    journal.push(&record);
    for (filter, (options, id)) in &state.subscriptions {
        journal.push(&Record::Subscribe {
            client,
            filter,
            options: options.to_byte(),
            id: *id,
        });
    }
    let store = journal.store;
    let give_seq = |o: &mut Outgoing| {
        if o.seq == 0 {
            o.seq = store.next_id();
        }
    };
    for o in state.queue.iter_mut() {
        if o.qos != QoS::AtMostOnce {
            give_seq(o);
            journal.enqueue(client, o);
        }
    }
    let mut in_flight = Vec::new();
    for (id, entry) in state.inflight.iter_mut() {
        if let Inflight::Publish(o) = entry {
            give_seq(o);
            journal.enqueue(client, o);
            in_flight.push((o.seq, *id));
        }
    }
    for (seq, packet_id) in in_flight {
        journal.push(&Record::Sent {
            client,
            seq,
            packet_id,
        });
    }
    for packet_id in &state.incoming_qos2 {
        journal.push(&Record::IncomingQos2 {
            client,
            packet_id: *packet_id,
        });
    }
}

pub(crate) fn owned_message(store: &Store, m: OwnedMessage, now: Instant) -> Option<Message> {
    Some(Message {
        topic: Arc::from(m.topic),
        payload: m.payload.into(),
        qos: QoS::from_u8(m.qos).ok()?,
        retain: m.retain,
        properties: PropertiesBuf::from_block(m.properties, PropertyContext::Publish).ok()?,
        publisher: Arc::from(m.publisher),
        expires_at: m.expires_at.map(|ms| store.instant_of(ms, now)),
        stored: Default::default(),
        encoded: Default::default(),
        cluster_id: Default::default(),
    })
}

fn version_of(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V3_1,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    }
}

/// Queue entries a persistent session keeps in memory: an offline one the head it sends first
/// when it comes back, an online one well over its in-flight window.
const KEEP_OFFLINE: usize = 100;
const KEEP_ONLINE: usize = 1000;

/// What stays in memory of an offloaded message: what the queue needs without the payload
/// (topic for the subscriber's limits, expiry, the store id to read it back).
fn stand_in(m: &Message, id: u64) -> Message {
    Message {
        topic: m.topic.clone(),
        payload: crate::Payload::EMPTY,
        qos: m.qos,
        retain: m.retain,
        properties: PropertiesBuf::default(),
        publisher: m.publisher.clone(),
        expires_at: m.expires_at,
        stored: std::sync::OnceLock::from(id),
        encoded: Default::default(),
        cluster_id: Default::default(),
    }
}

impl Broker {
    /// Takes out of memory the payloads of queued messages beyond the head of each persistent
    /// session's queue, once they are on disk: a session that is offline for a long time, or
    /// a subscriber that reads slowly, then costs memory for its head only. Delivery reads them
    /// back (`handle/deliver.rs`). Returns how many entries were offloaded; the server calls
    /// it every second.
    pub fn offload(&self) -> usize {
        let Some(store) = self.store() else {
            return 0;
        };
        let sessions: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| s.is_persistent())
            .cloned()
            .collect();
        let mut offloaded = 0;
        // One stand-in per message however many queues hold it.
        let mut stubs: std::collections::HashMap<u64, Arc<Message>> = Default::default();
        for session in sessions {
            let mut state = session.lock();
            let keep = if state.owner.is_some() {
                KEEP_ONLINE
            } else {
                KEEP_OFFLINE
            };
            for i in keep..state.queue.len() {
                let Some(out) = state.queue.get(i) else {
                    break;
                };
                if out.offloaded || out.seq == 0 {
                    continue;
                }
                // Not on disk yet (its frame is still being written): the next pass takes it.
                let Some(id) = out.message.stored.get().copied() else {
                    continue;
                };
                if !store.has_message(id) {
                    continue;
                }
                let stub = stubs
                    .entry(id)
                    .or_insert_with(|| Arc::new(stand_in(&out.message, id)))
                    .clone();
                state.queue.replace_message(i, stub, true);
                offloaded += 1;
            }
        }
        offloaded
    }

    /// Rebuilds retained messages and persistent sessions from what the store recovered. Every
    /// session starts disconnected; sessions that were connected when the broker stopped count
    /// as disconnected now. Returns the wills still to publish, with what is left of their delay.
    pub fn restore(&self, recovered: Recovered, now: Instant) -> Vec<DelayedWill> {
        let Some(store) = self.store() else {
            return Vec::new();
        };
        for m in recovered.retained {
            match owned_message(store, m, now) {
                Some(m) => self.retain_recovered(Arc::new(m)),
                None => warn!("a stored retained message could not be read back; skipped"),
            }
        }
        let messages: std::collections::HashMap<u64, Arc<Message>> = recovered
            .messages
            .into_iter()
            .filter_map(|(id, m)| {
                let m = owned_message(store, m, now)?;
                let _ = m.stored.set(id);
                Some((id, Arc::new(m)))
            })
            .collect();
        let mut wills = Vec::new();
        let mut journal = Journal::begin(store);
        for rs in recovered.sessions {
            let client: Arc<str> = Arc::from(rs.client.as_str());
            let session = Arc::new(Session::new(client.clone(), version_of(rs.version)));
            session.set_persistent(true);
            let username: Option<Arc<str>> = rs.username.as_deref().map(Arc::from);
            let was_connected = rs.disconnected_at.is_none();
            let will = rs.will.map(|(m, delay)| {
                let buf = PublishBuf {
                    dup: false,
                    qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce),
                    retain: m.retain,
                    topic: m.topic,
                    packet_id: None,
                    properties: PropertiesBuf::from_block(m.properties, PropertyContext::Publish)
                        .unwrap_or_default(),
                    payload: m.payload,
                };
                (buf, delay)
            });
            {
                let mut state = session.lock();
                state.expiry_interval = rs.expiry_interval;
                state.username = username.clone();
                state.disconnected_at = Some(
                    rs.disconnected_at
                        .map_or(now, |ms| store.instant_of(ms, now)),
                );
                for (filter, byte, id) in &rs.subscriptions {
                    let Some(options) = SubscriptionOptions::from_byte(*byte) else {
                        continue;
                    };
                    let Ok(f) = tern_proto::TopicFilter::new(filter) else {
                        continue;
                    };
                    state.subscriptions.insert(filter.clone(), (options, *id));
                    let subscriber = Subscriber {
                        session: session.clone(),
                        options,
                        id: *id,
                        share: f.shared().map(|_| Arc::from(filter.as_str())),
                        username: username.clone(),
                    };
                    self.tree_mut().insert(f, subscriber);
                }
                for e in rs.entries {
                    let Some(qos) = QoS::from_u8(e.qos).ok() else {
                        continue;
                    };
                    if let EntryState::Released(packet_id) = e.state {
                        state
                            .inflight
                            .insert(packet_id, Inflight::Release { seq: e.seq });
                        continue;
                    }
                    let Some(message) = messages.get(&e.message) else {
                        warn!(client_id = %client, seq = e.seq, "a queued message is missing from the store; skipped");
                        continue;
                    };
                    let mut out = Outgoing::new(message.clone(), qos, e.retain)
                        .with_extra(e.subscription_ids, e.share.as_deref().map(Arc::from));
                    out.seq = e.seq;
                    match e.state {
                        EntryState::Sent(packet_id) => {
                            state.inflight.insert(packet_id, Inflight::Publish(out));
                        }
                        _ => state.queue.push_back(out),
                    }
                }
                state.incoming_qos2 = rs.incoming_qos2.into_iter().collect();
                for seq in rs.finished {
                    journal.push(&Record::Done {
                        client: &client,
                        seq,
                    });
                }
                if was_connected {
                    // Its connection ended with the broker: expiry counts from now.
                    let record = session_record(store, &client, &state, will.as_ref());
                    journal.push(&record);
                }
            }
            if let Some((buf, delay)) = will {
                // [MQTT-3.1.3-9] the will waits for the shorter of its delay and the expiry.
                let delay = Duration::from_secs(u64::from(delay.min(rs.expiry_interval)));
                let since = rs.disconnected_at.map_or(Duration::ZERO, |ms| {
                    now.saturating_duration_since(store.instant_of(ms, now))
                });
                wills.push(DelayedWill {
                    session: session.clone(),
                    message: buf,
                    delay: delay.saturating_sub(since),
                });
            }
            self.sessions().insert(client, session);
        }
        journal.commit();
        wills
    }
}
