//! CONNECT (section 3.1): the first packet a client sends.

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::topic::TopicName;
use crate::wire::{Reader, Writer};
use crate::{ProtocolVersion, QoS};

/// A CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The version the client speaks; every later packet on the connection uses it.
    pub version: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties<'a>,
    /// The Client Identifier; may be empty (section 3.1.3.1).
    pub client_id: &'a str,
    /// The Will Message, if the Will Flag is set.
    pub will: Option<Will<'a>>,
    /// The User Name, if its flag is set.
    pub username: Option<&'a str>,
    /// The Password, if its flag is set.
    pub password: Option<&'a [u8]>,
}

/// The Will Message of a CONNECT: published by the server if the connection ends abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    /// Will Topic.
    pub topic: TopicName<'a>,
    /// Will Payload.
    pub payload: &'a [u8],
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (MQTT 5).
    pub properties: Properties<'a>,
}

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

impl<'a> Connect<'a> {
    pub(crate) fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = r.string()?;
        let level = r.u8()?;
        if name != "MQTT" && name != "MQIsdp" {
            return Err(DecodeError::InvalidProtocolName);
        }
        let version = ProtocolVersion::from_name_and_level(name, level)
            .ok_or(DecodeError::UnsupportedProtocolVersion(level))?;
        let flags = r.u8()?;
        if flags & RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_qos = QoS::from_u8((flags >> WILL_QOS_SHIFT) & 0b11)
            .map_err(|_| DecodeError::InvalidWillFlags)?;
        let will_retain = flags & WILL_RETAIN != 0;
        let has_will = flags & WILL != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::InvalidWillFlags);
        }
        let has_username = flags & USERNAME != 0;
        let has_password = flags & PASSWORD != 0;
        if has_password && !has_username && !version.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string()?;
        let will = if has_will {
            let properties = if version.is_v5() {
                Properties::decode(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = TopicName::new(r.string()?)?;
            let payload = r.binary()?;
            if properties.payload_format_indicator == Some(true)
                && core::str::from_utf8(payload).is_err()
            {
                return Err(DecodeError::PayloadFormatInvalid);
            }
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            version,
            clean_start: flags & CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let v5 = self.version.is_v5();
        if self.password.is_some() && self.username.is_none() && !v5 {
            return Err(EncodeError::NotInVersion);
        }
        w.string(self.version.protocol_name())?;
        w.u8(self.version.level())?;
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        w.u8(flags)?;
        w.u16(self.keep_alive)?;
        if v5 {
            self.properties.encode(w)?;
        }
        w.string(self.client_id)?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(w)?;
            }
            w.string(will.topic.as_str())?;
            w.binary(will.payload)?;
        }
        if let Some(username) = self.username {
            w.string(username)?;
        }
        if let Some(password) = self.password {
            w.binary(password)?;
        }
        Ok(())
    }
}
