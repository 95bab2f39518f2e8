//! Sending queued messages to a client: QoS 0 at once, QoS 1/2 within its inflight window.
//!
//! Messages are chosen under the session lock and encoded after it is released, so a
//! publisher routing into this session waits only for the queue operations.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tern_proto::{
    Ack, Packet, PacketId, Properties, PropertyContext, Publish, QoS, SubscriptionIds, TopicName,
};

use crate::broker::{Broker, DropCause};
use crate::connection::{send, Attached, Close};
use crate::message::Message;
use crate::persist;
use crate::session::{Inflight, Outgoing, SessionState};
use std::sync::Arc;
use tern_store::Record;

/// What a flush sends, chosen under the session's lock and encoded after it.
type Batch = Vec<(Outgoing, Option<PacketId>)>;

thread_local! {
    /// A flush's batch (see `scratch`): grown message by message, it was reallocated (and
    /// copied) several times per turn of a busy subscriber.
    static BATCH: Cell<Batch> = const { Cell::new(Vec::new()) };
}

/// Payload and topic bytes one flush takes from the queue at most. A subscriber that falls
/// behind keeps the rest queued, where its queue's limit applies (QoS 0 copies beyond it are
/// dropped and counted), instead of all of it copied into its output at once: in a
/// 1-to-1,000 fan-out offered more than it could deliver, the outputs held 1.6-1.7 GiB.
const FLUSH_BYTES: usize = 64 * 1024;

pub(crate) fn flush(
    broker: &Broker,
    conn_id: u64,
    a: &mut Attached,
    now: Instant,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    persist::write_steps(broker, a);
    let window = usize::from(a.client_receive_maximum.min(broker.limits.max_inflight)).max(1);
    reload(broker, a, window, now);
    let mut batch = BATCH.take();
    let mut expired = 0u64;
    // Store entries that were sent (seq, packet id) or expired (seq, None).
    let mut logged: Vec<(u64, Option<u16>)> = Vec::new();
    let mut qos2_sent = false;
    // Copied out of `a`, whose session's lock is held while QoS 0 copies are written.
    let (v5, max_packet) = (a.version.is_v5(), u64::from(a.client_max_packet));
    let without_aliases = !v5 || a.client_alias_maximum == 0;
    let mut written_at_once = 0u64;
    let released;
    {
        let mut state = a.session.lock();
        if let Some(reason) = state.kick.filter(|_| state.owner != Some(conn_id)) {
            return Err(Close::new(reason).because("another connection took over the session"));
        }
        if let Some(reason) = state.close_owner.take() {
            return Err(Close::new(reason).because("closed by an administrator"));
        }
        let mut taken_bytes = 0;
        while taken_bytes < FLUSH_BYTES {
            let Some(next) = state.queue.pop_front() else {
                break;
            };
            taken_bytes += next.size();
            if next.message.is_expired(now) {
                expired += 1;
                if next.seq != 0 {
                    logged.push((next.seq, None));
                }
                continue;
            }
            if next.qos == QoS::AtMostOnce {
                // A fan-out's QoS 0 copy with nothing particular to this subscriber is its
                // message's shared encoding: once the first subscriber made it (outside the
                // lock), copied into the output here, under the lock, instead of going
                // through the batch (a fifth of the broker's instructions per delivery in a
                // 1-to-1,000 fan-out). Only while the batch is empty, which keeps the queue's
                // order.
                let shared = batch.is_empty()
                    && without_aliases
                    && next.subscription_ids().is_empty()
                    && next.message.expires_at.is_none();
                if let Some(encoded) = shared
                    .then(|| {
                        next.message
                            .encoded_already(v5, QoS::AtMostOnce, next.retain)
                    })
                    .flatten()
                    .filter(|e| e.bytes.len() as u64 <= max_packet)
                {
                    out.extend_from_slice(&encoded.bytes);
                    written_at_once += 1;
                    Message::release(next.message);
                    continue;
                }
                batch.push((next, None));
                continue;
            }
            if next.offloaded {
                // Taken out of memory after `reload` looked: read it back on the next turn.
                state.queue.push_front(next);
                a.session.wake.notify_one();
                break;
            }
            if state.inflight.len() >= window {
                state.queue.push_front(next);
                break;
            }
            let Some(id) = state.allocate_packet_id().and_then(PacketId::new) else {
                state.queue.push_front(next);
                break;
            };
            if next.seq != 0 {
                logged.push((next.seq, Some(id.get())));
                qos2_sent |= next.qos == QoS::ExactlyOnce;
            }
            state
                .inflight
                .insert(id.get(), Inflight::Publish(next.clone()));
            batch.push((next, Some(id)));
        }
        released = take_pushback(
            &mut state,
            written_at_once + batch.len() as u64 + expired,
            broker,
        );
        if taken_bytes >= FLUSH_BYTES && !state.queue.is_empty() {
            // The rest goes in the next turn, once this output is written.
            a.session.wake.notify_one();
        }
    }
    if released {
        broker.drained.notify_waiters();
    }
    if !logged.is_empty() && a.session.is_persistent() {
        if let Some(store) = broker.store() {
            // A QoS 2 message is sent only once its packet id is durable: after a crash it is
            // re-sent with DUP under the same id, which the client recognises [MQTT-4.3.3-10],
            // not as a new message. A QoS 1 copy sent again as new is allowed.
            let client = &a.client_id;
            let mut txn = store.begin();
            for (seq, packet_id) in logged {
                txn.push(&match packet_id {
                    Some(packet_id) => Record::Sent {
                        client,
                        seq,
                        packet_id,
                    },
                    None => Record::Done { client, seq },
                });
            }
            let lsn = txn.commit();
            if qos2_sent {
                a.needs = a.needs.max(lsn);
            }
        }
    }
    broker.stats.drop_messages(DropCause::Expired, expired);
    // Counted once per flush rather than per message (two atomic additions each).
    let mut sent = [written_at_once, 0, 0];
    for (outgoing, id) in &batch {
        if write_publish(broker, a, outgoing, *id, false, now, out) {
            sent[outgoing.qos as usize] += 1;
        }
    }
    let total: u64 = sent.iter().sum();
    if total > 0 {
        broker
            .stats
            .messages_sent
            .fetch_add(total, Ordering::Relaxed);
        for (qos, n) in sent.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            broker.stats.sent_by_qos[qos].fetch_add(n, Ordering::Relaxed);
        }
    }
    for (outgoing, _) in batch.drain(..) {
        Message::release(outgoing.message);
    }
    crate::scratch::give_back(&BATCH, batch);
    Ok(())
}

/// Counts `taken` messages out of the queue and, once a queue that held publishers back is
/// under three quarters of its limit, lets them go (returns whether to tell them).
fn take_pushback(state: &mut SessionState, taken: u64, broker: &Broker) -> bool {
    state.pushback.taken += taken;
    if !state.pushback.over {
        return false;
    }
    let limit = broker.limits.queue_limit();
    let low = |n: usize| n / 4 * 3;
    if state.queue.len() > low(limit.messages) || state.queue.bytes() > low(limit.bytes) {
        return false;
    }
    state.pushback.release()
}

/// Reads back from the store the offloaded messages among the next `window` QoS 1/2 entries,
/// with the session's lock released while reading. A message the store no longer holds
/// (which the store's rules should make impossible) is dropped, logged and counted.
fn reload(broker: &Broker, a: &mut Attached, window: usize, now: Instant) {
    let Some(store) = broker.store() else {
        return;
    };
    let state = a.session.lock();
    if state.queue.offloaded() == 0 {
        return;
    }
    let wanted: Vec<(u64, u64)> = state
        .queue
        .iter()
        .filter(|o| o.qos != QoS::AtMostOnce)
        .take(window)
        .filter(|o| o.offloaded)
        .filter_map(|o| Some((o.seq, *o.message.stored.get()?)))
        .collect();
    drop(state);
    if wanted.is_empty() {
        return;
    }
    let loaded: Vec<(u64, Option<Arc<Message>>)> = wanted
        .into_iter()
        .map(|(seq, id)| {
            let message = store
                .read_message(id)
                .and_then(|m| persist::owned_message(store, m, now))
                .map(|m| {
                    let _ = m.stored.set(id);
                    Arc::new(m)
                });
            (seq, message)
        })
        .collect();
    let mut missing = Vec::new();
    {
        let mut state = a.session.lock();
        for (seq, message) in loaded {
            let Some(i) = state.queue.iter().position(|o| o.seq == seq && o.offloaded) else {
                continue;
            };
            match message {
                Some(m) => state.queue.replace_message(i, m, false),
                None => {
                    state.queue.remove(i);
                    missing.push(seq);
                }
            }
        }
    }
    for seq in missing {
        tracing::error!(client_id = %a.client_id, seq, "a queued message could not be read back from the store; dropped");
        broker.stats.drop_messages(DropCause::Unreadable, 1);
        store.append(&Record::Done {
            client: &a.client_id,
            seq,
        });
    }
}

/// After a session is resumed, re-sends every unacknowledged PUBLISH with DUP set and every
/// PUBREL, in packet-identifier order [MQTT-4.4.0-1].
pub(crate) fn resend_inflight(a: &mut Attached, now: Instant, out: &mut Vec<u8>) {
    let inflight: Vec<(u16, Inflight)> = a
        .session
        .lock()
        .inflight
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    for (id, entry) in inflight {
        let Some(pid) = PacketId::new(id) else {
            continue;
        };
        match entry {
            Inflight::Publish(outgoing) => {
                // Resent even if expired meanwhile (the client may already hold it, section
                // 4.4), with what is left of its expiry interval.
                let expiry = outgoing.message.remaining_expiry(now);
                write_publish_raw(a, &outgoing, Some(pid), true, expiry, out);
            }
            Inflight::Release { .. } => send(out, &Packet::PubRel(Ack::new(pid)), a.version),
        }
    }
}

/// Writes one queued message; returns whether it was sent (the caller counts it). One too
/// large for the client is dropped, counted and ended.
fn write_publish(
    broker: &Broker,
    a: &mut Attached,
    o: &Outgoing,
    id: Option<PacketId>,
    dup: bool,
    now: Instant,
    out: &mut Vec<u8>,
) -> bool {
    let written = write_publish_raw(a, o, id, dup, o.message.remaining_expiry(now), out);
    if !written {
        broker.stats.drop_messages(DropCause::TooLarge, 1);
        if let Some(id) = id {
            a.session.lock().inflight.remove(&id.get());
            if let (Some(store), true) = (broker.store(), o.seq != 0 && a.session.is_persistent()) {
                let done = Record::Done {
                    client: &a.client_id,
                    seq: o.seq,
                };
                store.append(&done);
            }
        }
    }
    written
}

/// Encodes one PUBLISH for this client. A packet larger than the client's Maximum Packet Size
/// is not sent [MQTT-3.1.2-25]; returns whether it was written.
fn write_publish_raw(
    a: &mut Attached,
    o: &Outgoing,
    id: Option<PacketId>,
    dup: bool,
    expiry: Option<u32>,
    out: &mut Vec<u8>,
) -> bool {
    let m = &o.message;
    // Most deliveries carry nothing particular to the subscriber: the message's stored
    // PUBLISH with this packet identifier.
    let plain = !dup
        && o.subscription_ids().is_empty()
        && expiry.is_none()
        && (!a.version.is_v5() || a.client_alias_maximum == 0);
    if plain {
        // A message no other queue holds is encoded straight into the output: a shared
        // encoding would be made, copied once and freed. Its holders here are the batch
        // being sent and, with a packet identifier, the in-flight map; nobody else can take
        // a new reference.
        if Arc::strong_count(m) <= 1 + usize::from(id.is_some()) {
            let publish = m.stored_publish(o.qos, o.retain, id);
            return match publish.encoded_len(a.version) {
                Ok(len) if len as u64 <= u64::from(a.client_max_packet) => {
                    publish.append_to(a.version, out).is_ok()
                }
                _ => false,
            };
        }
        // Otherwise the shared encoding, copied with the packet identifier patched in.
        let Some(encoded) = m.encoded(a.version.is_v5(), o.qos, o.retain) else {
            return false;
        };
        if encoded.bytes.len() as u64 > u64::from(a.client_max_packet) {
            return false;
        }
        let start = out.len();
        out.extend_from_slice(&encoded.bytes);
        if let Some(id) = id {
            let at = start + encoded.packet_id_at;
            out[at..at + 2].copy_from_slice(&id.get().to_be_bytes());
        }
        return true;
    }
    let Ok(topic) = TopicName::new(&m.topic) else {
        return false;
    };
    // Toward an MQTT 5 client that accepts topic aliases, the first topics get one each; later
    // messages on them carry the alias and an empty topic (section 3.3.2.3.4).
    let set = a.aliases.as_ref().map(|x| &x.outgoing);
    let used = set.map_or(0, |set| set.len());
    let (topic, alias, new_alias) = match set.and_then(|set| set.get(&m.topic)) {
        Some(&alias) => (TopicName::EMPTY, Some(alias), false),
        None if a.version.is_v5() && used < usize::from(a.client_alias_maximum) => {
            (topic, u16::try_from(used + 1).ok(), true)
        }
        None => (topic, None, false),
    };
    let properties = Properties {
        message_expiry_interval: expiry,
        subscription_identifiers: SubscriptionIds::List(o.subscription_ids()),
        topic_alias: alias,
        ..m.properties.get(PropertyContext::Publish)
    };
    let publish = Publish {
        dup,
        qos: o.qos,
        retain: o.retain,
        topic,
        packet_id: id,
        properties,
        payload: &m.payload,
    };
    let packet = Packet::Publish(publish);
    match packet.encoded_len(a.version) {
        Ok(len) if len as u64 <= u64::from(a.client_max_packet) => {
            send(out, &packet, a.version);
            if let (true, Some(alias)) = (new_alias, alias) {
                a.aliases
                    .get_or_insert_with(Default::default)
                    .outgoing
                    .insert(m.topic.clone(), alias);
            }
            true
        }
        _ => false,
    }
}
