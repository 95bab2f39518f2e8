//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7): one shape for all four.

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketId;
use crate::properties::{Properties, PropertyContext};
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, ReasonCode};

/// The body of PUBACK, PUBREC, PUBREL or PUBCOMP; [`crate::Packet`]'s variant says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The Packet Identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: PacketId,
    /// The reason code (MQTT 5); success before MQTT 5.
    pub reason: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> Ack<'a> {
    /// A successful acknowledgement with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        Ack {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let mut ack = Ack::new(packet_id);
        if version.is_v5() {
            // [MQTT-3.4.2-1] the reason code and properties may be left out when they are
            // Success and none.
            if !r.is_empty() {
                let raw = r.u8()?;
                ack.reason = ReasonCode::from_u8(raw).ok_or(DecodeError::InvalidReasonCode(raw))?;
            }
            if !r.is_empty() {
                ack.properties = Properties::decode(r, PropertyContext::Ack)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        w.u16(self.packet_id.get())?;
        if version.is_v5() {
            let no_properties = self.properties.is_empty();
            if self.reason == ReasonCode::SUCCESS && no_properties {
                return Ok(());
            }
            w.u8(self.reason.value())?;
            if !no_properties {
                self.properties.encode(w)?;
            }
        }
        Ok(())
    }
}
