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

/// A PUBLISH from the parts a stored message keeps, encoded without building a [`Publish`]:
/// its properties stay the encoded block a [`PropertiesBuf`] holds. For a block that
/// [`PropertiesBuf::new`] wrote from a PUBLISH's properties, the bytes are exactly those of
/// [`crate::Packet::Publish`] with the decoded properties; the broker sends most messages
/// this way, once per delivery.
#[derive(Debug, Clone, Copy)]
pub struct StoredPublish<'a> {
    /// DUP.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// The Topic Name, already checked (at most 65,535 bytes).
    pub topic: &'a str,
    /// The Packet Identifier, for QoS 1 and 2.
    pub packet_id: Option<PacketId>,
    /// The properties' encoded block (MQTT 5 only).
    pub properties: &'a PropertiesBuf,
    /// The payload.
    pub payload: &'a [u8],
}

impl StoredPublish<'_> {
    /// The whole packet's length in `version`.
    pub fn encoded_len(&self, version: crate::ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.remaining_len(version)?;
        Ok(1 + crate::wire::variable_u32_len(remaining) + remaining as usize)
    }

    fn remaining_len(&self, version: crate::ProtocolVersion) -> Result<u32, EncodeError> {
        if self.topic.len() > usize::from(u16::MAX) {
            return Err(EncodeError::ValueTooLarge);
        }
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.packet_id.is_some() {
            len += 2;
        }
        if version.is_v5() {
            let block =
                u32::try_from(self.properties.0.len()).map_err(|_| EncodeError::ValueTooLarge)?;
            len += crate::wire::variable_u32_len(block) + self.properties.0.len();
        }
        u32::try_from(len)
            .ok()
            .filter(|&l| l <= crate::wire::MAX_VARIABLE_BYTE_INTEGER)
            .ok_or(EncodeError::ValueTooLarge)
    }

    /// Appends the packet to `out`.
    pub fn append_to(
        &self,
        version: crate::ProtocolVersion,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let remaining = self.remaining_len(version)?;
        out.reserve(5 + remaining as usize);
        out.push(0x30 | u8::from(self.dup) << 3 | (self.qos as u8) << 1 | u8::from(self.retain));
        push_variable_u32(out, remaining);
        out.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        if let Some(id) = self.packet_id {
            out.extend_from_slice(&id.get().to_be_bytes());
        }
        if version.is_v5() {
            push_variable_u32(out, self.properties.0.len() as u32);
            out.extend_from_slice(&self.properties.0);
        }
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

/// Appends a Variable Byte Integer (section 1.5.5); `v` is within its range.
fn push_variable_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            return;
        }
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
