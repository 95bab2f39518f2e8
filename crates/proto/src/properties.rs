//! MQTT 5 properties (section 2.2.2): one struct for every packet, and the table of which
//! property each packet may carry.
//!
//! Decoding checks identifiers, types, ranges, duplicates and the per-packet allow-list; it
//! borrows strings and binary data from the input. Repeatable properties (User Property, and
//! Subscription Identifier in PUBLISH) are kept as the wire block and iterated on demand, so
//! decoding needs no allocation. Before MQTT 5 no packet has properties and none are encoded.

use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicName;
use crate::wire::{variable_u32_len, Reader, Writer, MAX_VARIABLE_BYTE_INTEGER};
use crate::QoS;

/// Where a property block stands: it decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // one variant per packet type, and the Will Properties of CONNECT
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The data type of a property's value (section 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    TwoByte,
    FourByte,
    Variable,
    String,
    Binary,
    StringPair,
}

/// Property identifiers, with their value types and the contexts that allow them.
pub mod id {
    #![allow(missing_docs)] // the names are the specification's
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The type of property `id` and the contexts allowed to carry it (table 2-4).
fn describe(id: u8) -> Option<(Kind, u16)> {
    use PropertyContext as C;
    let msg = C::Publish.bit() | C::Will.bit();
    let reason = C::ConnAck.bit()
        | C::Ack.bit()
        | C::SubAck.bit()
        | C::UnsubAck.bit()
        | C::Disconnect.bit()
        | C::Auth.bit();
    Some(match id {
        id::PAYLOAD_FORMAT_INDICATOR => (Kind::Byte, msg),
        id::MESSAGE_EXPIRY_INTERVAL => (Kind::FourByte, msg),
        id::CONTENT_TYPE => (Kind::String, msg),
        id::RESPONSE_TOPIC => (Kind::String, msg),
        id::CORRELATION_DATA => (Kind::Binary, msg),
        id::SUBSCRIPTION_IDENTIFIER => (Kind::Variable, C::Publish.bit() | C::Subscribe.bit()),
        id::SESSION_EXPIRY_INTERVAL => (
            Kind::FourByte,
            C::Connect.bit() | C::ConnAck.bit() | C::Disconnect.bit(),
        ),
        id::ASSIGNED_CLIENT_IDENTIFIER => (Kind::String, C::ConnAck.bit()),
        id::SERVER_KEEP_ALIVE => (Kind::TwoByte, C::ConnAck.bit()),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => (
            if id == id::AUTHENTICATION_METHOD {
                Kind::String
            } else {
                Kind::Binary
            },
            C::Connect.bit() | C::ConnAck.bit() | C::Auth.bit(),
        ),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => {
            (Kind::Byte, C::Connect.bit())
        }
        id::WILL_DELAY_INTERVAL => (Kind::FourByte, C::Will.bit()),
        id::RESPONSE_INFORMATION => (Kind::String, C::ConnAck.bit()),
        id::SERVER_REFERENCE => (Kind::String, C::ConnAck.bit() | C::Disconnect.bit()),
        id::REASON_STRING => (Kind::String, reason),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM => {
            (Kind::TwoByte, C::Connect.bit() | C::ConnAck.bit())
        }
        id::TOPIC_ALIAS => (Kind::TwoByte, C::Publish.bit()),
        id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => (Kind::Byte, C::ConnAck.bit()),
        id::USER_PROPERTY => (Kind::StringPair, u16::MAX),
        id::MAXIMUM_PACKET_SIZE => (Kind::FourByte, C::Connect.bit() | C::ConnAck.bit()),
        _ => return None,
    })
}

/// A property value as read off the wire.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Int(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

fn read_value<'a>(kind: Kind, r: &mut Reader<'a>) -> Result<Value<'a>, DecodeError> {
    Ok(match kind {
        Kind::Byte => Value::Int(u32::from(r.u8()?)),
        Kind::TwoByte => Value::Int(u32::from(r.u16()?)),
        Kind::FourByte => Value::Int(r.u32()?),
        Kind::Variable => Value::Int(r.variable_u32()?),
        Kind::String => Value::Str(r.string()?),
        Kind::Binary => Value::Bin(r.binary()?),
        Kind::StringPair => Value::Pair(r.string()?, r.string()?),
    })
}

/// Reads one `(identifier, value)` from a property block already checked by decoding.
fn next_property<'a>(r: &mut Reader<'a>) -> Option<(u8, Value<'a>)> {
    if r.is_empty() {
        return None;
    }
    let id = u8::try_from(r.variable_u32().ok()?).ok()?;
    let (kind, _) = describe(id)?;
    Some((id, read_value(kind, r).ok()?))
}

/// The User Properties of a packet, in order: name/value pairs that may repeat.
#[derive(Debug, Clone, Copy)]
pub enum UserProperties<'a> {
    /// The property block they were decoded from.
    Wire(&'a [u8]),
    /// Pairs given by the sender.
    List(&'a [(&'a str, &'a str)]),
}

impl<'a> UserProperties<'a> {
    /// The pairs, in the order they appear.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (wire, list): (&'a [u8], &'a [(&'a str, &'a str)]) = match *self {
            UserProperties::Wire(b) => (b, &[]),
            UserProperties::List(l) => (&[], l),
        };
        let mut r = Reader::new(wire);
        core::iter::from_fn(move || loop {
            match next_property(&mut r)? {
                (id::USER_PROPERTY, Value::Pair(k, v)) => return Some((k, v)),
                _ => continue,
            }
        })
        .chain(list.iter().copied())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Default for UserProperties<'_> {
    fn default() -> Self {
        UserProperties::List(&[])
    }
}

impl PartialEq for UserProperties<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl Eq for UserProperties<'_> {}

/// The Subscription Identifiers of a packet: at most one in SUBSCRIBE, any number in a
/// PUBLISH the server sends (one per matching subscription) [MQTT-3.3.4-3].
#[derive(Debug, Clone, Copy)]
pub enum SubscriptionIds<'a> {
    /// The property block they were decoded from.
    Wire(&'a [u8]),
    /// Identifiers given by the sender, each 1..=268,435,455.
    List(&'a [u32]),
}

impl<'a> SubscriptionIds<'a> {
    /// The identifiers, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (wire, list): (&'a [u8], &'a [u32]) = match *self {
            SubscriptionIds::Wire(b) => (b, &[]),
            SubscriptionIds::List(l) => (&[], l),
        };
        let mut r = Reader::new(wire);
        core::iter::from_fn(move || loop {
            match next_property(&mut r)? {
                (id::SUBSCRIPTION_IDENTIFIER, Value::Int(v)) => return Some(v),
                _ => continue,
            }
        })
        .chain(list.iter().copied())
    }

    /// The first identifier, which is the only one a SUBSCRIBE may carry.
    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.first().is_none()
    }
}

impl Default for SubscriptionIds<'_> {
    fn default() -> Self {
        SubscriptionIds::List(&[])
    }
}

impl PartialEq for SubscriptionIds<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl Eq for SubscriptionIds<'_> {}

/// Every MQTT 5 property. Any packet's properties are a `Properties` with only the fields its
/// type allows set; `Default` is "no properties".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is the property of the same name in section 2.2.2.2
pub struct Properties<'a> {
    /// `Some(true)`: the payload is UTF-8 [MQTT-3.3.2-4].
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<&'a str>,
    /// Must be a Topic Name, without wildcards [MQTT-3.3.2-14].
    pub response_topic: Option<TopicName<'a>>,
    pub correlation_data: Option<&'a [u8]>,
    pub subscription_identifiers: SubscriptionIds<'a>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<&'a str>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<&'a str>,
    pub authentication_data: Option<&'a [u8]>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<&'a str>,
    pub server_reference: Option<&'a str>,
    pub reason_string: Option<&'a str>,
    /// Never 0 [MQTT-3.1.2-19] / [MQTT-3.2.2-9].
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    /// Never 0 [MQTT-3.3.2-8].
    pub topic_alias: Option<u16>,
    /// QoS 0 or 1 only; absent means 2 [MQTT-3.2.2-9].
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub user_properties: UserProperties<'a>,
    /// Never 0 [MQTT-3.1.2-24].
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

fn set<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(v: u32, id: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn nonzero(v: u32, id: u8) -> Result<u32, DecodeError> {
    if v == 0 {
        Err(DecodeError::InvalidPropertyValue(id))
    } else {
        Ok(v)
    }
}

impl<'a> Properties<'a> {
    /// Reads a Property Length and the properties it covers, checking each against `ctx`.
    pub fn decode(r: &mut Reader<'a>, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.variable_u32()? as usize;
        let block = r.take(len)?;
        Self::decode_block(block, ctx)
    }

    /// Decodes a property block without its length prefix.
    pub fn decode_block(block: &'a [u8], ctx: PropertyContext) -> Result<Self, DecodeError> {
        let mut p = Properties::default();
        let mut r = Reader::new(block);
        let mut saw_user = false;
        let mut saw_subscription_id = false;
        while !r.is_empty() {
            let raw_id = r.variable_u32()?;
            let id = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty(raw_id))?;
            let (kind, allowed) = describe(id).ok_or(DecodeError::UnknownProperty(raw_id))?;
            if allowed & ctx.bit() == 0 {
                return Err(DecodeError::PropertyNotAllowed(id));
            }
            let value = read_value(kind, &mut r)?;
            let int = match value {
                Value::Int(v) => v,
                _ => 0,
            };
            let (s, b) = match value {
                Value::Str(s) => (s, &[][..]),
                Value::Bin(b) => ("", b),
                _ => ("", &[][..]),
            };
            // The narrowing casts below are exact: `describe` fixed each value's width.
            match id {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    set(&mut p.payload_format_indicator, flag(int, id)?, id)?
                }
                id::MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, int, id)?,
                id::CONTENT_TYPE => set(&mut p.content_type, s, id)?,
                id::RESPONSE_TOPIC => {
                    let topic =
                        TopicName::new(s).map_err(|_| DecodeError::InvalidPropertyValue(id))?;
                    set(&mut p.response_topic, topic, id)?
                }
                id::CORRELATION_DATA => set(&mut p.correlation_data, b, id)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    nonzero(int, id)?;
                    // Only a PUBLISH may carry several [MQTT-3.8.2.1.2].
                    if saw_subscription_id && ctx != PropertyContext::Publish {
                        return Err(DecodeError::DuplicateProperty(id));
                    }
                    saw_subscription_id = true;
                }
                id::SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, int, id)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => set(&mut p.assigned_client_identifier, s, id)?,
                id::SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, int as u16, id)?,
                id::AUTHENTICATION_METHOD => set(&mut p.authentication_method, s, id)?,
                id::AUTHENTICATION_DATA => set(&mut p.authentication_data, b, id)?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    set(&mut p.request_problem_information, flag(int, id)?, id)?
                }
                id::WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, int, id)?,
                id::REQUEST_RESPONSE_INFORMATION => {
                    set(&mut p.request_response_information, flag(int, id)?, id)?
                }
                id::RESPONSE_INFORMATION => set(&mut p.response_information, s, id)?,
                id::SERVER_REFERENCE => set(&mut p.server_reference, s, id)?,
                id::REASON_STRING => set(&mut p.reason_string, s, id)?,
                id::RECEIVE_MAXIMUM => set(&mut p.receive_maximum, nonzero(int, id)? as u16, id)?,
                id::TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, int as u16, id)?,
                id::TOPIC_ALIAS => set(&mut p.topic_alias, nonzero(int, id)? as u16, id)?,
                id::MAXIMUM_QOS => {
                    let qos = match int {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(DecodeError::InvalidPropertyValue(id)),
                    };
                    set(&mut p.maximum_qos, qos, id)?
                }
                id::RETAIN_AVAILABLE => set(&mut p.retain_available, flag(int, id)?, id)?,
                id::USER_PROPERTY => saw_user = true,
                id::MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, nonzero(int, id)?, id)?,
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set(&mut p.wildcard_subscription_available, flag(int, id)?, id)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set(&mut p.subscription_identifier_available, flag(int, id)?, id)?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    set(&mut p.shared_subscription_available, flag(int, id)?, id)?
                }
                _ => return Err(DecodeError::UnknownProperty(raw_id)),
            }
        }
        if saw_user {
            p.user_properties = UserProperties::Wire(block);
        }
        if saw_subscription_id {
            p.subscription_identifiers = SubscriptionIds::Wire(block);
        }
        Ok(p)
    }

    /// Whether no property is set. Field by field rather than against `Default` (asked of
    /// every PUBLISH; the comparison built and walked both lists); destructured, so a new
    /// property cannot be forgotten here.
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        } = self;
        payload_format_indicator.is_none()
            && message_expiry_interval.is_none()
            && content_type.is_none()
            && response_topic.is_none()
            && correlation_data.is_none()
            && subscription_identifiers.is_empty()
            && session_expiry_interval.is_none()
            && assigned_client_identifier.is_none()
            && server_keep_alive.is_none()
            && authentication_method.is_none()
            && authentication_data.is_none()
            && request_problem_information.is_none()
            && will_delay_interval.is_none()
            && request_response_information.is_none()
            && response_information.is_none()
            && server_reference.is_none()
            && reason_string.is_none()
            && receive_maximum.is_none()
            && topic_alias_maximum.is_none()
            && topic_alias.is_none()
            && maximum_qos.is_none()
            && retain_available.is_none()
            && user_properties.is_empty()
            && maximum_packet_size.is_none()
            && wildcard_subscription_available.is_none()
            && subscription_identifier_available.is_none()
            && shared_subscription_available.is_none()
    }

    /// Writes the Property Length and the properties.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let mut counter = Writer::counter();
        self.encode_block(&mut counter)?;
        let len = u32::try_from(counter.position()).map_err(|_| EncodeError::ValueTooLarge)?;
        w.variable_u32(len)?;
        self.encode_block(w)
    }

    /// Bytes [`Properties::encode`] writes, length prefix included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut counter = Writer::counter();
        self.encode_block(&mut counter)?;
        let len = counter.position();
        if len > MAX_VARIABLE_BYTE_INTEGER as usize {
            return Err(EncodeError::ValueTooLarge);
        }
        Ok(variable_u32_len(len as u32) + len)
    }

    /// Writes the properties without their length prefix.
    pub fn encode_block(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        fn byte(w: &mut Writer<'_>, id: u8, v: Option<u8>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                w.u8(id)?;
                w.u8(v)?;
            }
            Ok(())
        }
        fn two(w: &mut Writer<'_>, id: u8, v: Option<u16>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                w.u8(id)?;
                w.u16(v)?;
            }
            Ok(())
        }
        fn four(w: &mut Writer<'_>, id: u8, v: Option<u32>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                w.u8(id)?;
                w.u32(v)?;
            }
            Ok(())
        }
        fn string(w: &mut Writer<'_>, id: u8, v: Option<&str>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                w.u8(id)?;
                w.string(v)?;
            }
            Ok(())
        }
        fn binary(w: &mut Writer<'_>, id: u8, v: Option<&[u8]>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                w.u8(id)?;
                w.binary(v)?;
            }
            Ok(())
        }
        let b = |v: Option<bool>| v.map(u8::from);
        byte(
            w,
            id::PAYLOAD_FORMAT_INDICATOR,
            b(self.payload_format_indicator),
        )?;
        four(w, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval)?;
        string(w, id::CONTENT_TYPE, self.content_type)?;
        string(
            w,
            id::RESPONSE_TOPIC,
            self.response_topic.map(|t| t.as_str()),
        )?;
        binary(w, id::CORRELATION_DATA, self.correlation_data)?;
        for sid in self.subscription_identifiers.iter() {
            w.u8(id::SUBSCRIPTION_IDENTIFIER)?;
            w.variable_u32(sid)?;
        }
        four(w, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval)?;
        string(
            w,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier,
        )?;
        two(w, id::SERVER_KEEP_ALIVE, self.server_keep_alive)?;
        string(w, id::AUTHENTICATION_METHOD, self.authentication_method)?;
        binary(w, id::AUTHENTICATION_DATA, self.authentication_data)?;
        byte(
            w,
            id::REQUEST_PROBLEM_INFORMATION,
            b(self.request_problem_information),
        )?;
        four(w, id::WILL_DELAY_INTERVAL, self.will_delay_interval)?;
        byte(
            w,
            id::REQUEST_RESPONSE_INFORMATION,
            b(self.request_response_information),
        )?;
        string(w, id::RESPONSE_INFORMATION, self.response_information)?;
        string(w, id::SERVER_REFERENCE, self.server_reference)?;
        string(w, id::REASON_STRING, self.reason_string)?;
        two(w, id::RECEIVE_MAXIMUM, self.receive_maximum)?;
        two(w, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum)?;
        two(w, id::TOPIC_ALIAS, self.topic_alias)?;
        byte(w, id::MAXIMUM_QOS, self.maximum_qos.map(|q| q as u8))?;
        byte(w, id::RETAIN_AVAILABLE, b(self.retain_available))?;
        for (k, v) in self.user_properties.iter() {
            w.u8(id::USER_PROPERTY)?;
            w.string(k)?;
            w.string(v)?;
        }
        four(w, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size)?;
        byte(
            w,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            b(self.wildcard_subscription_available),
        )?;
        byte(
            w,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            b(self.subscription_identifier_available),
        )?;
        byte(
            w,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            b(self.shared_subscription_available),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PropertyContext as C;

    fn decode(block: &[u8], ctx: PropertyContext) -> Result<Properties<'_>, DecodeError> {
        Properties::decode_block(block, ctx)
    }

    #[test]
    fn is_empty_sees_every_property() {
        assert!(Properties::default().is_empty());
        static USER: [(&str, &str); 1] = [("k", "v")];
        let setters: [fn(&mut Properties<'static>); 27] = [
            |p| p.payload_format_indicator = Some(true),
            |p| p.message_expiry_interval = Some(1),
            |p| p.content_type = Some("c"),
            |p| p.response_topic = Some(TopicName::new("t").unwrap()),
            |p| p.correlation_data = Some(b"d"),
            |p| p.subscription_identifiers = SubscriptionIds::List(&[1]),
            |p| p.session_expiry_interval = Some(1),
            |p| p.assigned_client_identifier = Some("a"),
            |p| p.server_keep_alive = Some(1),
            |p| p.authentication_method = Some("m"),
            |p| p.authentication_data = Some(b"d"),
            |p| p.request_problem_information = Some(false),
            |p| p.will_delay_interval = Some(0),
            |p| p.request_response_information = Some(false),
            |p| p.response_information = Some("r"),
            |p| p.server_reference = Some("s"),
            |p| p.reason_string = Some("r"),
            |p| p.receive_maximum = Some(1),
            |p| p.topic_alias_maximum = Some(0),
            |p| p.topic_alias = Some(1),
            |p| p.maximum_qos = Some(QoS::AtMostOnce),
            |p| p.retain_available = Some(false),
            |p| p.user_properties = UserProperties::List(&USER),
            |p| p.maximum_packet_size = Some(1),
            |p| p.wildcard_subscription_available = Some(false),
            |p| p.subscription_identifier_available = Some(false),
            |p| p.shared_subscription_available = Some(false),
        ];
        for (i, set) in setters.iter().enumerate() {
            let mut p = Properties::default();
            set(&mut p);
            assert!(!p.is_empty(), "property {i}");
            assert_ne!(p, Properties::default(), "property {i}");
        }
    }

    #[test]
    fn duplicates_are_a_protocol_error() {
        // [MQTT-2.2.2] "It is a Protocol Error to include the <property> more than once".
        let block = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
        assert_eq!(
            decode(&block, C::Publish),
            Err(DecodeError::DuplicateProperty(0x02))
        );
        let sub_ids = [0x0B, 1, 0x0B, 2];
        assert_eq!(
            decode(&sub_ids, C::Subscribe),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
        // Several Subscription Identifiers are allowed in PUBLISH [MQTT-3.3.4-3].
        let p = decode(&sub_ids, C::Publish).unwrap();
        assert!(p.subscription_identifiers.iter().eq([1, 2]));
    }

    #[test]
    fn user_properties_repeat_in_order() {
        // [MQTT-3.3.2-18] user properties keep their order.
        let block = [
            0x26, 0, 1, b'a', 0, 1, b'1', 0x01, 1, 0x26, 0, 1, b'a', 0, 1, b'2',
        ];
        let p = decode(&block, C::Publish).unwrap();
        assert!(p.user_properties.iter().eq([("a", "1"), ("a", "2")]));
        assert_eq!(p.payload_format_indicator, Some(true));
    }

    #[test]
    fn properties_outside_their_packet_are_malformed() {
        // [MQTT-2.2.2-2] Topic Alias belongs to PUBLISH only.
        assert_eq!(
            decode(&[0x23, 0, 1], C::Connect),
            Err(DecodeError::PropertyNotAllowed(0x23))
        );
        assert_eq!(
            decode(&[0x7f, 0], C::Connect),
            Err(DecodeError::UnknownProperty(0x7f))
        );
    }

    #[test]
    fn values_out_of_range() {
        // Receive Maximum 0 [MQTT-3.1.2-19]... is a Protocol Error, as is Topic Alias 0 and
        // Maximum Packet Size 0 and a Subscription Identifier of 0.
        for (block, id) in [
            (&[0x21, 0, 0][..], 0x21),
            (&[0x27, 0, 0, 0, 0][..], 0x27),
            (&[0x17, 2][..], 0x17),
        ] {
            assert_eq!(
                decode(block, C::Connect),
                Err(DecodeError::InvalidPropertyValue(id))
            );
        }
        assert_eq!(
            decode(&[0x23, 0, 0], C::Publish),
            Err(DecodeError::InvalidPropertyValue(0x23))
        );
        assert_eq!(
            decode(&[0x0B, 0], C::Subscribe),
            Err(DecodeError::InvalidPropertyValue(0x0B))
        );
        // [MQTT-3.3.2-14] a Response Topic is a Topic Name.
        assert_eq!(
            decode(&[0x08, 0, 1, b'#'], C::Publish),
            Err(DecodeError::InvalidPropertyValue(0x08))
        );
        assert_eq!(
            decode(&[0x24, 2], C::ConnAck),
            Err(DecodeError::InvalidPropertyValue(0x24))
        );
        assert_eq!(
            decode(&[0x02, 0, 0], C::Publish),
            Err(DecodeError::Truncated)
        );
    }
}
