//! Owned forms of what the broker keeps past the input buffer: messages and their properties.
//!
//! An owned property set is its encoded MQTT 5 block; a borrowed [`Properties`] view is decoded
//! from it on demand. The block was written by this crate from a checked [`Properties`], so
//! the view always decodes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::topic::TopicName;
use crate::wire::Writer;
use crate::{PacketId, Publish, QoS, Will};

/// Properties owned as their encoded block (without the length prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PropertiesBuf(Vec<u8>);

impl PropertiesBuf {
    /// Copies `properties` into an owned block.
    pub fn new(properties: &Properties<'_>) -> Result<Self, EncodeError> {
        let mut counter = Writer::counter();
        properties.encode_block(&mut counter)?;
        let mut block = alloc::vec![0; counter.position()];
        properties.encode_block(&mut Writer::new(&mut block))?;
        Ok(PropertiesBuf(block))
    }

    /// A borrowed view, as a packet of kind `ctx` would carry it.
    pub fn get(&self, ctx: PropertyContext) -> Properties<'_> {
        Properties::decode_block(&self.0, ctx).unwrap_or_default()
    }

    /// Takes an encoded block back (one [`PropertiesBuf::as_bytes`] gave), checking that it
    /// decodes as the properties of a packet of kind `ctx`.
    pub fn from_block(block: Vec<u8>, ctx: PropertyContext) -> Result<Self, DecodeError> {
        Properties::decode_block(&block, ctx)?;
        Ok(PropertiesBuf(block))
    }

    /// The encoded block.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// An owned PUBLISH: a message the broker holds in a queue, the retained store or a will.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublishBuf {
    /// DUP.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// The Topic Name (never empty: an alias is resolved before a message is kept).
    pub topic: String,
    /// The Packet Identifier, for QoS 1 and 2.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties.
    pub properties: PropertiesBuf,
    /// The payload.
    pub payload: Vec<u8>,
}

impl PublishBuf {
    /// Copies a borrowed PUBLISH.
    pub fn new(p: &Publish<'_>) -> Result<Self, EncodeError> {
        Ok(PublishBuf {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: String::from(p.topic.as_str()),
            packet_id: p.packet_id,
            properties: PropertiesBuf::new(&p.properties)?,
            payload: Vec::from(p.payload),
        })
    }

    /// The message a will stands for.
    pub fn from_will(w: &Will<'_>) -> Result<Self, EncodeError> {
        // The Will Delay Interval governs the will, not the message: it is not forwarded.
        let properties = Properties {
            will_delay_interval: None,
            ..w.properties
        };
        Ok(PublishBuf {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: String::from(w.topic.as_str()),
            packet_id: None,
            properties: PropertiesBuf::new(&properties)?,
            payload: Vec::from(w.payload),
        })
    }

    /// A borrowed view, to encode or inspect.
    pub fn as_publish(&self) -> Publish<'_> {
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: TopicName::new(&self.topic).unwrap_or(TopicName::EMPTY),
            packet_id: self.packet_id,
            properties: self.properties.get(PropertyContext::Publish),
            payload: &self.payload,
        }
    }
}
