//! UNSUBSCRIBE and UNSUBACK (sections 3.10 and 3.11).

use crate::error::{DecodeError, EncodeError};
use crate::packet::{List, ListItem, PacketId};
use crate::properties::{Properties, PropertyContext};
use crate::topic::TopicFilter;
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, ReasonCode};

impl<'a> ListItem<'a> for TopicFilter<'a> {
    fn read(r: &mut Reader<'a>, _: ProtocolVersion) -> Result<Self, DecodeError> {
        TopicFilter::new(r.string()?)
    }

    fn write(&self, w: &mut Writer<'_>, _: ProtocolVersion) -> Result<(), EncodeError> {
        w.string(self.as_str())
    }
}

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// The Packet Identifier.
    pub packet_id: PacketId,
    /// UNSUBSCRIBE properties (MQTT 5): User Properties only.
    pub properties: Properties<'a>,
    /// At least one filter [MQTT-3.10.3-2].
    pub filters: List<'a, TopicFilter<'a>>,
}

impl<'a> Unsubscribe<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Unsubscribe)?
        } else {
            Properties::default()
        };
        let (filters, count) = List::decode(r, version)?;
        if count == 0 {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        w.u16(self.packet_id.get())?;
        if version.is_v5() {
            self.properties.encode(w)?;
        }
        self.filters.encode(w, version)
    }
}

/// An UNSUBACK packet. Before MQTT 5 it has no payload and `codes` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    /// The UNSUBSCRIBE's Packet Identifier [MQTT-3.10.4-4].
    pub packet_id: PacketId,
    /// UNSUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// One code per filter (MQTT 5) [MQTT-3.11.3-1].
    pub codes: List<'a, ReasonCode>,
}

impl<'a> UnsubAck<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        if !version.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                properties: Properties::default(),
                codes: List::Items(&[]),
            });
        }
        let properties = Properties::decode(r, PropertyContext::UnsubAck)?;
        let (codes, _) = List::decode(r, version)?;
        Ok(UnsubAck {
            packet_id,
            properties,
            codes,
        })
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        w.u16(self.packet_id.get())?;
        if version.is_v5() {
            self.properties.encode(w)?;
            self.codes.encode(w, version)?;
        }
        Ok(())
    }
}
