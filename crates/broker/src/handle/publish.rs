//! PUBLISH from a client: check it, acknowledge it, route it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::{
    Ack, Packet, Properties, PropertiesBuf, Publish, QoS, ReasonCode, SubscriptionIds,
};

use crate::broker::Broker;
use crate::connection::{send, Attached, Close};
use crate::message::Message;
use crate::persist;
use tern_store::Record;

/// Handles a PUBLISH. With `batch`, a QoS 0 publication (not retained, to a topic not `$`,
/// allowed) is put with the ones before it to the same topic instead of being routed now
/// ([`route_unrouted`] routes them together, at most [`BATCH`] at a time); any other
/// publication routes those first.
pub(crate) fn handle_publish(
    broker: &Broker,
    a: &mut Attached,
    p: &Publish<'_>,
    now: Instant,
    out: &mut Vec<u8>,
    batch: bool,
) -> Result<(), Close> {
    broker
        .stats
        .messages_received
        .fetch_add(1, Ordering::Relaxed);
    broker.stats.received_by_qos[p.qos as usize].fetch_add(1, Ordering::Relaxed);
    check_allowed(broker, p)?;
    let topic = resolve_topic(broker, a, p)?;
    if !super::subscribe::within_topic_limits(broker, &topic) {
        return Err(Close::new(ReasonCode::TOPIC_NAME_INVALID)
            .because("topic longer or deeper than the broker allows"));
    }
    let packet_id = p.packet_id;
    if let (Some(id), true) = (packet_id, broker.store().is_some_and(|s| s.is_failing())) {
        // The store cannot write: acknowledging would promise what a crash can break. MQTT 5
        // gets a refusal it can report [MQTT-3.4.2-1]; 3.1.1 has none, so the connection
        // closes and the client sends the message again later.
        const WHY: &str = "the broker cannot write to its store (disk full?)";
        if !a.version.is_v5() {
            return Err(Close::new(ReasonCode::QUOTA_EXCEEDED).because(WHY));
        }
        let mut ack = Ack::new(id);
        ack.reason = ReasonCode::QUOTA_EXCEEDED;
        ack.properties.reason_string = Some(WHY);
        let packet = match p.qos {
            QoS::AtLeastOnce => Packet::PubAck(ack),
            _ => Packet::PubRec(ack),
        };
        send(out, &packet, a.version);
        return Ok(());
    }
    // What this message changes in the store, written as one frame: the QoS 2 packet id
    // and the queue entries, so that after a crash either both are there or neither is.
    let mut journal = None;

    if p.qos == QoS::ExactlyOnce {
        let Some(id) = packet_id else {
            return Err(Close::new(ReasonCode::PROTOCOL_ERROR)
                .because("QoS 2 PUBLISH without a packet identifier"));
        };
        if a.session.is_persistent() {
            journal = broker.journal();
        }
        let mut state = a.session.lock();
        if state.incoming_qos2.contains(&id.get()) {
            // [MQTT-4.3.3-10] a re-sent QoS 2 PUBLISH is acknowledged, not delivered again;
            // not before the first copy's records are durable.
            drop(state);
            drop(journal);
            if let Some(store) = broker.store() {
                a.needs = a.needs.max(store.last_commit());
            }
            send(out, &Packet::PubRec(Ack::new(id)), a.version);
            return Ok(());
        }
        // [MQTT-3.3.4-9] more unreleased QoS 2 messages than the broker's Receive Maximum.
        if state.incoming_qos2.len() >= usize::from(broker.limits.receive_maximum) {
            return Err(Close::new(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
                .because("more unreleased QoS 2 messages than the broker's Receive Maximum"));
        }
        state.incoming_qos2.insert(id.get());
        if let Some(j) = journal.as_mut() {
            j.push(&Record::IncomingQos2 {
                client: &a.client_id,
                packet_id: id.get(),
            });
        }
    }

    // A client may not publish into the broker's own `$` topics (section 4.7.2); the message
    // is acknowledged and dropped. A publication the access rules refuse is answered with
    // 0x87 in MQTT 5; 3.1.1 has no way to say so, and the message is dropped.
    let allowed = broker
        .access
        .may_publish(&a.client_id, a.username.as_deref(), &topic);
    let batchable =
        batch && allowed && p.qos == QoS::AtMostOnce && !p.retain && !topic.starts_with('$');
    // The publications put aside go first, unless this one joins them.
    let joins = batchable
        && a.aliases.as_ref().is_none_or(|x| {
            x.unrouted.len() < BATCH && x.unrouted.first().is_none_or(|m| m.topic == topic)
        });
    if !joins {
        route_unrouted(broker, a);
    }
    let (reached, ticket) = if !allowed || topic.starts_with('$') {
        (0, 0)
    } else {
        let message = Message {
            topic,
            payload: p.payload.into(),
            qos: p.qos,
            retain: p.retain,
            // Before MQTT 5 a PUBLISH has no properties: nothing to look at.
            properties: if a.version.is_v5() {
                forwarded_properties(&p.properties)
            } else {
                PropertiesBuf::default()
            },
            publisher: a.client_id.clone(),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
        };
        if batchable {
            a.aliases
                .get_or_insert_with(Default::default)
                .unrouted
                .push(Message::share(message));
            return Ok(());
        }
        broker.route_logged(Message::share(message), &mut journal, a.held_by.as_mut())
    };
    a.needs = a.needs.max(persist::commit(journal));
    a.forwarded = a.forwarded.max(ticket);

    if let Some(id) = packet_id {
        let mut ack = Ack::new(id);
        if !allowed {
            ack.reason = ReasonCode::NOT_AUTHORIZED;
        } else if reached == 0 {
            ack.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        }
        let packet = match p.qos {
            QoS::AtLeastOnce => Packet::PubAck(ack),
            _ => {
                // Section 4.3.3: a PUBREC with a failure code ends the exchange: no PUBREL comes.
                if !ack.reason.is_success() && a.version.is_v5() {
                    super::ack::release_incoming(broker, a, id.get());
                }
                Packet::PubRec(ack)
            }
        };
        send(out, &packet, a.version);
    }
    Ok(())
}

/// The most QoS 0 publications routed together: enough to spread a subscriber's lock and
/// wake-up over many messages, few enough that the first is not held up behind the decoding
/// of a whole read.
pub(crate) const BATCH: usize = 64;

/// Routes the QoS 0 publications [`handle_publish`] put aside, if any.
pub(crate) fn route_unrouted(broker: &Broker, a: &mut Attached) {
    let Some(topics) = a.aliases.as_mut().filter(|x| !x.unrouted.is_empty()) else {
        return;
    };
    let ticket = broker.route_batch(&topics.unrouted);
    topics.unrouted.clear();
    a.forwarded = a.forwarded.max(ticket);
}

/// What the broker's limits forbid: a QoS above Maximum QoS [MQTT-3.2.2-11], RETAIN when
/// retained messages are off [MQTT-3.2.2-14].
fn check_allowed(broker: &Broker, p: &Publish<'_>) -> Result<(), Close> {
    if p.qos > broker.limits.maximum_qos {
        return Err(
            Close::new(ReasonCode::QOS_NOT_SUPPORTED).because("QoS above the broker's Maximum QoS")
        );
    }
    if p.retain && !broker.limits.retain_available {
        return Err(Close::new(ReasonCode::RETAIN_NOT_SUPPORTED)
            .because("this broker keeps no retained messages"));
    }
    Ok(())
}

/// The topic a PUBLISH goes to, setting or using a Topic Alias (section 3.3.2.3.4).
fn resolve_topic(broker: &Broker, a: &mut Attached, p: &Publish<'_>) -> Result<Arc<str>, Close> {
    let Some(alias) = p.properties.topic_alias else {
        let topics = a.aliases.get_or_insert_with(Default::default);
        return Ok(match &topics.last_published {
            Some(last) if **last == *p.topic.as_str() => last.clone(),
            _ => topics
                .last_published
                .insert(Arc::from(p.topic.as_str()))
                .clone(),
        });
    };
    // [MQTT-3.3.2-9] an alias above the broker's Topic Alias Maximum.
    if alias > broker.limits.topic_alias_maximum {
        return Err(Close::new(ReasonCode::TOPIC_ALIAS_INVALID)
            .because("topic alias above the broker's Topic Alias Maximum"));
    }
    if p.topic.is_empty() {
        // [MQTT-3.3.2-8]... an alias never set on this connection is a Protocol Error.
        let set = a.aliases.as_ref().and_then(|x| x.incoming.get(&alias));
        return set.cloned().ok_or_else(|| {
            Close::new(ReasonCode::PROTOCOL_ERROR)
                .because("topic alias never set on this connection")
        });
    }
    let topic: Arc<str> = Arc::from(p.topic.as_str());
    a.aliases
        .get_or_insert_with(Default::default)
        .incoming
        .insert(alias, topic.clone());
    Ok(topic)
}

/// The properties a subscriber receives: all but Topic Alias (per connection) and Subscription
/// Identifiers (per subscriber) [MQTT-3.3.4-3]; Message Expiry is rewritten at delivery.
fn forwarded_properties(p: &Properties<'_>) -> PropertiesBuf {
    // Most publications (every 3.1.1 one) carry nothing subscribers receive: no encoding.
    if p.is_empty() {
        return PropertiesBuf::default();
    }
    let kept = Properties {
        topic_alias: None,
        subscription_identifiers: SubscriptionIds::default(),
        message_expiry_interval: None,
        ..*p
    };
    PropertiesBuf::new(&kept).unwrap_or_default()
}
