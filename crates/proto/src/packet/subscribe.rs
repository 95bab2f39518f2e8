//! SUBSCRIBE and SUBACK (sections 3.8 and 3.9).

use crate::error::{DecodeError, EncodeError};
use crate::packet::{List, ListItem, PacketId};
use crate::properties::{Properties, PropertyContext};
use crate::topic::TopicFilter;
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, QoS, ReasonCode};

/// When the server sends retained messages for a new subscription (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// At every subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Only if the subscription did not exist.
    SendIfNew = 1,
    /// Never.
    DoNotSend = 2,
}

/// The Subscription Options byte. Before MQTT 5 only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local: do not send the subscriber its own publications.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag as the publisher set it.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given maximum QoS and everything else at its default.
    pub fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    /// The options as their MQTT 5 byte, for whoever stores them.
    pub fn to_byte(&self) -> u8 {
        self.encode(ProtocolVersion::V5)
    }

    /// Options from their MQTT 5 byte; `None` if the byte breaks a rule of section 3.8.3.1.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::decode(byte, ProtocolVersion::V5).ok()
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8(byte & 0b11)?;
        if !version.is_v5() {
            // [MQTT-3.8.3-4] (3.1.1) the upper six bits are reserved.
            if byte & 0xfc != 0 {
                return Err(DecodeError::InvalidSubscriptionOptions);
            }
            return Ok(SubscriptionOptions::new(qos));
        }
        // [MQTT-3.8.3-5] bits 6 and 7 are reserved; Retain Handling 3 is malformed.
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        if byte & 0xc0 != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2
                | u8::from(self.retain_as_published) << 3
                | (self.retain_handling as u8) << 4;
        }
        byte
    }
}

/// One topic filter of a SUBSCRIBE, with its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription<'a> {
    /// The Topic Filter.
    pub filter: TopicFilter<'a>,
    /// Its Subscription Options.
    pub options: SubscriptionOptions,
}

impl<'a> ListItem<'a> for Subscription<'a> {
    fn read(r: &mut Reader<'a>, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let filter = TopicFilter::new(r.string()?)?;
        let options = SubscriptionOptions::decode(r.u8()?, version)?;
        // [MQTT-3.8.3-4] (5.0) No Local on a shared subscription is a Protocol Error.
        if version.is_v5() && options.no_local && filter.shared().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        Ok(Subscription { filter, options })
    }

    fn write(&self, w: &mut Writer<'_>, version: ProtocolVersion) -> Result<(), EncodeError> {
        w.string(self.filter.as_str())?;
        w.u8(self.options.encode(version))
    }
}

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The Packet Identifier.
    pub packet_id: PacketId,
    /// SUBSCRIBE properties (MQTT 5): at most one Subscription Identifier, and User Properties.
    pub properties: Properties<'a>,
    /// At least one filter [MQTT-3.8.3-3].
    pub subscriptions: List<'a, Subscription<'a>>,
}

impl<'a> Subscribe<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Subscribe)?
        } else {
            Properties::default()
        };
        let (subscriptions, count) = List::decode(r, version)?;
        if count == 0 {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
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
        self.subscriptions.encode(w, version)
    }
}

impl<'a> ListItem<'a> for ReasonCode {
    fn read(r: &mut Reader<'a>, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let raw = r.u8()?;
        if version.is_v5() {
            return ReasonCode::from_u8(raw).ok_or(DecodeError::InvalidReasonCode(raw));
        }
        // 3.1.1 SUBACK return codes: 0, 1, 2 or 0x80 [MQTT-3.9.3-2].
        match raw {
            0..=2 => ReasonCode::from_u8(raw).ok_or(DecodeError::InvalidReasonCode(raw)),
            0x80 => Ok(ReasonCode::UNSPECIFIED_ERROR),
            _ => Err(DecodeError::InvalidReasonCode(raw)),
        }
    }

    fn write(&self, w: &mut Writer<'_>, version: ProtocolVersion) -> Result<(), EncodeError> {
        w.u8(if version.is_v5() {
            self.value()
        } else {
            self.to_v3_suback()
        })
    }
}

/// A SUBACK packet: one reason code per filter of the SUBSCRIBE, in order [MQTT-3.8.4-6].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck<'a> {
    /// The SUBSCRIBE's Packet Identifier [MQTT-3.8.4-2].
    pub packet_id: PacketId,
    /// SUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// One code per filter: granted QoS, or a failure.
    pub codes: List<'a, ReasonCode>,
}

impl<'a> SubAck<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::SubAck)?
        } else {
            Properties::default()
        };
        let (codes, _) = List::decode(r, version)?;
        Ok(SubAck {
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
        }
        self.codes.encode(w, version)
    }
}
