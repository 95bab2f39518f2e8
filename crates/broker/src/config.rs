//! The broker's limits: what it accepts, what it advertises in CONNACK, what it keeps.

use tern_proto::QoS;

/// Limits the broker enforces and advertises (MQTT 5 CONNACK properties where they exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted from a client, in bytes (CONNACK Maximum Packet Size).
    pub max_packet_size: u32,
    /// QoS 2 publications a client may have unreleased at once (CONNACK Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a client may use toward the broker (CONNACK Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Longest keep alive accepted, in seconds; a longer request is cut to this and the
    /// client told with Server Keep Alive. 0 means no cap.
    pub max_keep_alive: u16,
    /// Highest QoS accepted and granted (CONNACK Maximum QoS).
    pub maximum_qos: QoS,
    /// Whether retained messages are kept (CONNACK Retain Available).
    pub retain_available: bool,
    /// Whether wildcard filters are accepted.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/` filters are accepted.
    pub shared_subscriptions: bool,
    /// Whether Subscription Identifiers are accepted.
    pub subscription_identifiers: bool,
    /// Messages kept per session, sent or not; beyond it new messages are dropped and counted.
    pub max_queued_messages: usize,
    /// Bytes (payload and topic) kept per session waiting to be sent; beyond it new messages
    /// are dropped and counted.
    pub max_queued_bytes: usize,
    /// QoS 1/2 messages in flight to one client at once (also bounded by its Receive Maximum).
    pub max_inflight: u16,
    /// Connections accepted at once.
    pub max_connections: usize,
    /// Distinct subscriptions one session may hold; more get SUBACK 0x97 (3.1.1: 0x80).
    pub max_subscriptions_per_client: usize,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Longest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
}

impl Limits {
    /// What one session's queue may hold.
    pub fn queue_limit(&self) -> crate::session::QueueLimit {
        crate::session::QueueLimit {
            messages: self.max_queued_messages,
            bytes: self.max_queued_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_queued_messages: 100_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_inflight: 100,
            max_connections: 100_000,
            max_subscriptions_per_client: 10_000,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_session_expiry: u32::MAX,
        }
    }
}
