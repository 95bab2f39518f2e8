//! DISCONNECT and AUTH (sections 3.14 and 3.15): a reason code and properties, both optional
//! on the wire.

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, ReasonCode};

/// A DISCONNECT packet. Before MQTT 5 it is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// Disconnect Reason Code (MQTT 5); Normal disconnection when left out [MQTT-3.14.2-1].
    pub reason: ReasonCode,
    /// DISCONNECT properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> Disconnect<'a> {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let (reason, properties) = if version.is_v5() {
            decode_reason(r, PropertyContext::Disconnect)?
        } else {
            (ReasonCode::NORMAL_DISCONNECTION, Properties::default())
        };
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        if version.is_v5() {
            encode_reason(w, self.reason, &self.properties)?;
        }
        Ok(())
    }
}

/// An AUTH packet (MQTT 5 only): a step of enhanced authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    /// Authenticate Reason Code; Success when left out [MQTT-3.15.2-1].
    pub reason: ReasonCode,
    /// AUTH properties: Authentication Method and Data, Reason String, User Properties.
    pub properties: Properties<'a>,
}

impl<'a> Auth<'a> {
    pub(crate) fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let (reason, properties) = decode_reason(r, PropertyContext::Auth)?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_reason(w, self.reason, &self.properties)
    }
}

fn decode_reason<'a>(
    r: &mut Reader<'a>,
    ctx: PropertyContext,
) -> Result<(ReasonCode, Properties<'a>), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let raw = r.u8()?;
    let reason = ReasonCode::from_u8(raw).ok_or(DecodeError::InvalidReasonCode(raw))?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, ctx)?
    };
    Ok((reason, properties))
}

fn encode_reason(
    w: &mut Writer<'_>,
    reason: ReasonCode,
    properties: &Properties<'_>,
) -> Result<(), EncodeError> {
    let no_properties = properties.is_empty();
    if reason == ReasonCode::SUCCESS && no_properties {
        return Ok(());
    }
    w.u8(reason.value())?;
    if !no_properties {
        properties.encode(w)?;
    }
    Ok(())
}
