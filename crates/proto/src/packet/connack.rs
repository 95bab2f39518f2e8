//! CONNACK (section 3.2): the server's answer to CONNECT.

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, ReasonCode};

/// A CONNACK packet. Before MQTT 5 the code is written as the 3.1.1 return code that
/// [`ReasonCode::to_v3_connack`] maps it to, and there are no properties: the packet is
/// exactly `20 02 flags code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck<'a> {
    /// Session Present [MQTT-3.2.2-1]; always false in 3.1.
    pub session_present: bool,
    /// Connect Reason Code / Connect Return Code.
    pub code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> ConnAck<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        // 3.1 has no Session Present: the whole byte is reserved.
        let reserved = if version == ProtocolVersion::V3_1 {
            0xff
        } else {
            0xfe
        };
        if flags & reserved != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let raw = r.u8()?;
        let code = if version.is_v5() {
            ReasonCode::from_u8(raw)
        } else {
            ReasonCode::from_v3_connack(raw)
        }
        .ok_or(DecodeError::InvalidReasonCode(raw))?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::ConnAck)?
        } else {
            Properties::default()
        };
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            code,
            properties,
        })
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        // 3.1 has no Session Present flag: the byte is reserved.
        let present = self.session_present && version != ProtocolVersion::V3_1;
        w.u8(u8::from(present))?;
        if version.is_v5() {
            w.u8(self.code.value())?;
            self.properties.encode(w)
        } else {
            w.u8(self.code.to_v3_connack())
        }
    }
}
