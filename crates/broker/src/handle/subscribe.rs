//! SUBSCRIBE and UNSUBSCRIBE: the session's filters, and retained messages on subscribe.

use std::sync::Arc;
use std::time::Instant;

use tern_proto::{
    List, Packet, Properties, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription,
    UnsubAck, Unsubscribe,
};

use tracing::debug;

use crate::broker::Broker;
use crate::connection::{send, Attached, Close};
use crate::persist;
use crate::session::{Outgoing, QueueLimit};
use crate::tree::Subscriber;
use tern_store::Record;

pub(crate) fn handle_subscribe(
    broker: &Broker,
    a: &mut Attached,
    s: Subscribe<'_>,
    now: Instant,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let id = s.properties.subscription_identifiers.first();
    // Section 3.2.2.3.12: Subscription Identifiers offered as unavailable may not be used.
    if id.is_some() && !broker.limits.subscription_identifiers {
        return Err(
            Close::new(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
                .because("this broker does not offer Subscription Identifiers"),
        );
    }
    let mut codes = Vec::new();
    let mut retained = Vec::new();
    let mut a_needs = a.needs;
    for sub in s.subscriptions.iter() {
        let code = subscribe_one(broker, a, sub, id, now, &mut retained, &mut a_needs);
        codes.push(code);
    }
    a.needs = a_needs;
    // [MQTT-3.8.4-1] SUBACK first, then the retained messages it unlocked.
    let suback = SubAck {
        packet_id: s.packet_id,
        properties: Properties::default(),
        codes: List::Items(&codes),
    };
    send(out, &Packet::SubAck(suback), a.version);
    // Each retained copy is an entry of its own: written in frames of a thousand, so that a
    // `#` over a million retained messages does not make one giant frame (and does not hold
    // the store's lock for the whole walk).
    let persistent = a.session.is_persistent();
    let mut journal = None;
    for (i, out) in retained.into_iter().enumerate() {
        if i % 1000 == 0 {
            a.needs = a.needs.max(persist::commit(journal.take()));
            journal = broker.journal().filter(|_| persistent);
        }
        a.session
            .enqueue(out, QueueLimit::NONE, journal.as_mut(), None);
    }
    a.needs = a.needs.max(persist::commit(journal));
    Ok(())
}

/// Adds one subscription; returns the granted QoS as a reason code, or why it was refused.
fn subscribe_one(
    broker: &Broker,
    a: &Attached,
    sub: Subscription<'_>,
    id: Option<u32>,
    now: Instant,
    retained: &mut Vec<Outgoing>,
    needs: &mut u64,
) -> ReasonCode {
    let limits = &broker.limits;
    let shared = sub.filter.shared().is_some();
    if shared && !limits.shared_subscriptions {
        return ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED;
    }
    if sub.filter.has_wildcards() && !limits.wildcard_subscriptions {
        return ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED;
    }
    if !within_topic_limits(broker, sub.filter.as_str()) {
        return ReasonCode::TOPIC_FILTER_INVALID;
    }
    if !broker
        .access
        .may_subscribe(&a.client_id, a.username.as_deref(), sub.filter.as_str())
    {
        return ReasonCode::NOT_AUTHORIZED;
    }
    {
        let state = a.session.lock();
        let max = limits.max_subscriptions_per_client;
        if !state.subscriptions.contains_key(sub.filter.as_str())
            && state.subscriptions.len() >= max
        {
            return ReasonCode::QUOTA_EXCEEDED;
        }
    }
    let mut options = sub.options;
    // Section 3.9.3: the broker may grant less than asked, never more than its Maximum QoS.
    options.qos = options.qos.min(limits.maximum_qos);
    let subscriber = Subscriber {
        session: a.session.clone(),
        options,
        id,
        share: shared.then(|| Arc::from(sub.filter.as_str())),
        username: a.username.clone(),
    };
    let is_new = broker.tree_mut().insert(sub.filter, subscriber);
    debug!(client_id = %a.client_id, filter = %sub.filter, qos = options.qos as u8, "subscribed");
    a.session
        .lock()
        .subscriptions
        .insert(sub.filter.as_str().to_owned(), (options, id));
    if let (Some(store), true) = (broker.store(), a.session.is_persistent()) {
        let record = Record::Subscribe {
            client: &a.client_id,
            filter: sub.filter.as_str(),
            options: options.to_byte(),
            id,
        };
        *needs = (*needs).max(store.append(&record));
    }

    // Retained messages (section 3.3.1.3): not for shared subscriptions (section 4.8.2), and as
    // Retain Handling says [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11].
    let send_retained = !shared
        && match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => is_new,
            RetainHandling::DoNotSend => false,
        };
    if send_retained {
        let matching = broker.retained_matching(sub.filter, now);
        let readable = matching.into_iter().filter(|m| {
            broker
                .access
                .may_receive(&a.client_id, a.username.as_deref(), &m.topic)
        });
        for message in readable {
            let qos = message.qos.min(options.qos);
            // Retained messages sent on subscribe keep RETAIN set [MQTT-3.3.1-9].
            retained
                .push(Outgoing::new(message, qos, true).with_extra(id.into_iter().collect(), None));
        }
    }
    match options.qos as u8 {
        0 => ReasonCode::GRANTED_QOS_0,
        1 => ReasonCode::GRANTED_QOS_1,
        _ => ReasonCode::GRANTED_QOS_2,
    }
}

pub(crate) fn handle_unsubscribe(
    broker: &Broker,
    a: &mut Attached,
    u: Unsubscribe<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let mut codes = Vec::new();
    for filter in u.filters.iter() {
        let had = a
            .session
            .lock()
            .subscriptions
            .remove(filter.as_str())
            .is_some();
        broker.tree_mut().remove(filter.as_str(), &a.client_id);
        if let (Some(store), true) = (broker.store(), had && a.session.is_persistent()) {
            let record = Record::Unsubscribe {
                client: &a.client_id,
                filter: filter.as_str(),
            };
            a.needs = a.needs.max(store.append(&record));
        }
        codes.push(if had {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::NO_SUBSCRIPTION_EXISTED
        });
    }
    // [MQTT-3.10.4-4] UNSUBACK even when nothing was subscribed.
    let unsuback = UnsubAck {
        packet_id: u.packet_id,
        properties: Properties::default(),
        codes: List::Items(&codes),
    };
    send(out, &Packet::UnsubAck(unsuback), a.version);
    Ok(())
}

/// Whether a topic or filter is within the broker's length and depth limits.
pub(crate) fn within_topic_limits(broker: &Broker, topic: &str) -> bool {
    let limits = &broker.limits;
    // Levels are separators plus one; counted over bytes (`/` is ASCII and never part of
    // another UTF-8 character), which is several times cheaper than splitting.
    topic.len() <= limits.max_topic_length
        && topic.bytes().filter(|&b| b == b'/').count() < limits.max_topic_levels
}
