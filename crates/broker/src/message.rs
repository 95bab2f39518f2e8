//! An application message as the broker holds it: once, shared by every queue it is in.

use std::sync::Arc;
use std::time::Instant;

use tern_proto::{PropertiesBuf, QoS};

/// A message accepted from a publisher (or a will), shared by reference between the retained
/// store and every subscriber queue it reaches.
#[derive(Debug)]
pub struct Message {
    /// The Topic Name (aliases already resolved).
    pub topic: Arc<str>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// Its MQTT 5 properties as published, less Topic Alias and Subscription Identifiers.
    pub properties: PropertiesBuf,
    /// The publishing client, for No Local.
    pub publisher: Arc<str>,
    /// When the Message Expiry Interval runs out, if it has one.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Whether the message has expired at `now` and must not be delivered [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Seconds left of its expiry interval, rounded up, for the copy sent to a subscriber
    /// [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX)
        })
    }
}
