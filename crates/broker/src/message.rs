//! An application message as the broker holds it: once, shared by every queue it is in.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tern_proto::{FixedHeader, PacketId, PropertiesBuf, ProtocolVersion, QoS, StoredPublish};

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
    /// Its id in the store, once a persistent session's queue holds it.
    pub stored: OnceLock<u64>,
    /// Encodings shared by subscribers that receive the same bytes.
    pub encoded: EncodeCache,
    /// In cluster mode, the node that first published it and that node's number for it: the
    /// same for every copy on every node (set once, by the forwarder or on arrival).
    pub cluster_id: OnceLock<(u64, u64)>,
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

/// A PUBLISH packet encoded once for every subscriber that gets the same bytes: same protocol
/// generation, QoS and RETAIN, no per-subscriber properties. Only the packet identifier
/// differs, and it is patched in at `packet_id_at`.
#[derive(Debug)]
pub struct Encoded {
    /// The whole packet; its packet identifier (QoS 1/2) is a placeholder.
    pub bytes: Box<[u8]>,
    /// Where the two packet-identifier bytes are.
    pub packet_id_at: usize,
}

/// The encodings of a message made so far, one slot per (MQTT 5 or not, QoS, RETAIN). Empty,
/// it costs one pointer: most messages are never encoded twice.
#[derive(Debug, Default)]
pub struct EncodeCache(OnceLock<Box<[OnceLock<Option<Encoded>>; 12]>>);

impl Message {
    /// The shared encoding of this message for (`v5`, `qos`, `retain`), made on first use.
    /// `None` if it cannot be encoded (never for a message the broker accepted).
    pub fn encoded(&self, v5: bool, qos: QoS, retain: bool) -> Option<&Encoded> {
        let slots = self.encoded.0.get_or_init(Default::default);
        let slot = usize::from(v5) * 6 + (qos as usize) * 2 + usize::from(retain);
        slots[slot]
            .get_or_init(|| self.encode(v5, qos, retain))
            .as_ref()
    }

    /// The PUBLISH of this message as stored: its properties' block is sent as it is.
    pub fn stored_publish(
        &self,
        qos: QoS,
        retain: bool,
        packet_id: Option<PacketId>,
    ) -> StoredPublish<'_> {
        StoredPublish {
            dup: false,
            qos,
            retain,
            topic: &self.topic,
            packet_id,
            properties: &self.properties,
            payload: &self.payload,
        }
    }

    fn encode(&self, v5: bool, qos: QoS, retain: bool) -> Option<Encoded> {
        let version = if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        let packet_id = (qos != QoS::AtMostOnce).then_some(PacketId::new(1)?);
        let mut bytes = Vec::new();
        self.stored_publish(qos, retain, packet_id)
            .append_to(version, &mut bytes)
            .ok()?;
        let header = FixedHeader::decode(&bytes, version).ok()??;
        let packet_id_at = header.header_len + 2 + self.topic.len();
        Some(Encoded {
            bytes: bytes.into_boxed_slice(),
            packet_id_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{Packet, Properties, PropertyContext, Publish, TopicName};

    fn message() -> Message {
        let props = Properties {
            content_type: Some("text/plain"),
            ..Properties::default()
        };
        Message {
            topic: Arc::from("a/b"),
            payload: b"hello".to_vec(),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PropertiesBuf::new(&props).unwrap(),
            publisher: Arc::from("p"),
            expires_at: None,
            stored: OnceLock::new(),
            encoded: EncodeCache::default(),
            cluster_id: Default::default(),
        }
    }

    #[test]
    fn shared_encoding_with_patched_id_equals_a_fresh_encoding() {
        let m = message();
        for (v5, version) in [
            (false, ProtocolVersion::V3_1_1),
            (true, ProtocolVersion::V5),
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let e = m.encoded(v5, qos, false).unwrap();
                let mut bytes = e.bytes.to_vec();
                let id = (qos != QoS::AtMostOnce).then(|| PacketId::new(0x1234).unwrap());
                if id.is_some() {
                    bytes[e.packet_id_at..e.packet_id_at + 2].copy_from_slice(&[0x12, 0x34]);
                }
                let fresh = Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: TopicName::new("a/b").unwrap(),
                    packet_id: id,
                    properties: m.properties.get(PropertyContext::Publish),
                    payload: b"hello",
                })
                .encode_to_vec(version)
                .unwrap();
                assert_eq!(bytes, fresh, "v5={v5} {qos:?}");
            }
        }
        // Encoded once: the second request returns the same bytes.
        let first = m.encoded(true, QoS::AtLeastOnce, true).unwrap() as *const Encoded;
        let second = m.encoded(true, QoS::AtLeastOnce, true).unwrap() as *const Encoded;
        assert_eq!(first, second);
    }
}
