//! PUBLISH (section 3.3): an application message, in either direction.

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketId;
use crate::properties::{Properties, PropertyContext};
use crate::topic::TopicName;
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, QoS};

/// A PUBLISH packet, borrowing its topic and payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// DUP: this may be a re-delivery [MQTT-3.3.1-1]; never set on QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// The QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// The Topic Name; [`TopicName::EMPTY`] only in MQTT 5 with a Topic Alias property.
    pub topic: TopicName<'a>,
    /// Present exactly when `qos` is 1 or 2 [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties<'a>,
    /// The Application Message.
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        let dup = flags & 0b1000 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        // The topic's bytes are scanned once for U+0000 and the wildcards together
        // (`TopicName::new`) rather than once for each; a U+0000 found there still makes the
        // packet malformed [MQTT-1.5.4-2] rather than only its topic invalid.
        let raw = r.binary()?;
        let raw_topic = core::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(PacketId::decode(r)?),
        };
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        let topic = if raw_topic.is_empty() && version.is_v5() {
            // [MQTT-3.3.2-1] an empty name is only allowed when a Topic Alias names the topic.
            if properties.topic_alias.is_none() {
                return Err(DecodeError::MissingTopic);
            }
            TopicName::EMPTY
        } else {
            TopicName::new(raw_topic).map_err(|e| match raw.contains(&0) {
                true => DecodeError::NulInString,
                false => e,
            })?
        };
        let payload = r.rest();
        // [MQTT-3.3.2-4] a payload said to be UTF-8 must be; checked here so the broker need
        // not look again.
        if properties.payload_format_indicator == Some(true)
            && core::str::from_utf8(payload).is_err()
        {
            return Err(DecodeError::PayloadFormatInvalid);
        }
        Ok(Publish {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        w.string(self.topic.as_str())?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, _) => {}
            (_, Some(id)) => w.u16(id.get())?,
            (_, None) => return Err(EncodeError::MissingPacketId),
        }
        if version.is_v5() {
            self.properties.encode(w)?;
        }
        w.bytes(self.payload)
    }
}
