//! An application message as the broker holds it: once, shared by every queue it is in.

use std::cell::Cell;
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
    pub payload: Payload,
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

thread_local! {
    /// Messages this thread let go of last, their allocations kept for the next ones
    /// ([`Message::share`], [`Message::release`]). A subscriber's turn lets go of up to a whole
    /// batch of messages at once and a publisher's turn makes as many; the allocator keeps
    /// only seven blocks of a size per thread at hand, and freeing and allocating the rest
    /// were an eighth of the broker's instructions per message.
    static SPARE: Cell<Vec<Arc<Message>>> = const { Cell::new(Vec::new()) };
}

/// The most allocations a thread keeps for new messages.
const SPARE_KEPT: usize = 256;

impl Message {
    /// `message` behind an `Arc`, in the allocation of a message this thread let go of
    /// when there is one.
    pub fn share(message: Message) -> Arc<Message> {
        let mut spare = SPARE.take();
        let reused = spare.pop();
        SPARE.set(spare);
        if let Some(mut arc) = reused {
            if let Some(slot) = Arc::get_mut(&mut arc) {
                *slot = message;
                return arc;
            }
        }
        Arc::new(message)
    }

    /// Lets go of one reference to a message; if it was the last, the allocation is kept
    /// for [`Message::share`] on this thread, emptied of all but its topic and publisher
    /// names (nothing large is held while it waits).
    pub fn release(mut message: Arc<Message>) {
        let Some(m) = Arc::get_mut(&mut message) else {
            return;
        };
        m.payload = Payload::EMPTY;
        m.properties = PropertiesBuf::default();
        m.encoded = EncodeCache::default();
        let mut spare = SPARE.take();
        if spare.len() < SPARE_KEPT {
            spare.push(message);
        }
        SPARE.set(spare);
    }

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

/// A message's payload: up to [`Payload::INLINE`] bytes inside the message itself, longer
/// ones in an allocation of their own. Most device messages are short readings: held inline,
/// a message is one allocation instead of two, which was a tenth of the broker's
/// instructions per message (allocating and freeing the second block).
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; Payload::INLINE],
    },
    Heap(Box<[u8]>),
}

impl Payload {
    /// The longest payload held inline: as many bytes as fit in the size the heap form has
    /// to be anyway once the enum is padded to 72 bytes.
    pub const INLINE: usize = 70;

    /// An empty payload.
    pub const EMPTY: Payload = Payload(Repr::Inline {
        len: 0,
        bytes: [0; Payload::INLINE],
    });
}

impl Default for Payload {
    fn default() -> Self {
        Payload::EMPTY
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for Payload {
    fn from(data: &[u8]) -> Self {
        match u8::try_from(data.len()) {
            Ok(len) if data.len() <= Payload::INLINE => {
                let mut bytes = [0; Payload::INLINE];
                bytes[..data.len()].copy_from_slice(data);
                Payload(Repr::Inline { len, bytes })
            }
            _ => Payload(Repr::Heap(data.into())),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(data: Vec<u8>) -> Self {
        if data.len() <= Payload::INLINE {
            Payload::from(data.as_slice())
        } else {
            Payload(Repr::Heap(data.into_boxed_slice()))
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
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

impl EncodeCache {
    /// The slot of (`v5`, `qos`, `retain`).
    fn slot(v5: bool, qos: QoS, retain: bool) -> usize {
        usize::from(v5) * 6 + (qos as usize) * 2 + usize::from(retain)
    }
}

impl Message {
    /// The shared encoding of this message for (`v5`, `qos`, `retain`), made on first use.
    /// `None` if it cannot be encoded (never for a message the broker accepted).
    pub fn encoded(&self, v5: bool, qos: QoS, retain: bool) -> Option<&Encoded> {
        let slots = self.encoded.0.get_or_init(Default::default);
        slots[EncodeCache::slot(v5, qos, retain)]
            .get_or_init(|| self.encode(v5, qos, retain))
            .as_ref()
    }

    /// The shared encoding for (`v5`, `qos`, `retain`) if another delivery made it already.
    pub fn encoded_already(&self, v5: bool, qos: QoS, retain: bool) -> Option<&Encoded> {
        let slots = self.encoded.0.get()?;
        slots[EncodeCache::slot(v5, qos, retain)].get()?.as_ref()
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
            payload: b"hello".as_slice().into(),
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
    fn a_released_message_lends_its_allocation_to_the_next() {
        let first = Message::share(message());
        let held = first.clone();
        let at = Arc::as_ptr(&first);
        // Still held elsewhere: nothing is kept.
        Message::release(first);
        assert_eq!(held.payload.as_ref(), b"hello");
        Message::release(held);
        let next = Message::share(Message {
            topic: Arc::from("c/d"),
            ..message()
        });
        assert_eq!(Arc::as_ptr(&next), at);
        assert_eq!(&*next.topic, "c/d");
        assert_eq!(next.payload.as_ref(), b"hello");
        assert!(next.encoded.0.get().is_none());
        // Nothing more kept: a new allocation.
        let other = Message::share(message());
        assert_ne!(Arc::as_ptr(&other), at);
    }

    #[test]
    fn a_payload_keeps_its_bytes_inline_or_not() {
        for len in [
            0,
            1,
            Payload::INLINE - 1,
            Payload::INLINE,
            Payload::INLINE + 1,
            300,
        ] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let from_slice = Payload::from(data.as_slice());
            let from_vec = Payload::from(data.clone());
            assert_eq!(&*from_slice, data.as_slice());
            assert_eq!(&*from_vec, data.as_slice());
            assert_eq!(from_slice, from_vec);
            let inline = matches!(from_slice.0, Repr::Inline { .. });
            assert_eq!(inline, len <= Payload::INLINE, "{len}");
        }
        assert!(Payload::EMPTY.is_empty());
        // The inline form costs no more than the padded heap form.
        assert_eq!(std::mem::size_of::<Payload>(), 72);
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
