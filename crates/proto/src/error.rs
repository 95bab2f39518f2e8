//! What can be wrong with bytes a peer sent, and what can stop an encode.
//!
//! [`DecodeError::reason_code`] is the one place where a decoding failure becomes the
//! reason code a broker or client sends back (DISCONNECT or CONNACK in MQTT 5; for 3.1.1
//! the connection is closed, or CONNACK carries [`crate::ReasonCode::to_v3_connack`]).

use crate::ReasonCode;

/// The kinds of packet, for errors that name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the specification's
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The packet type for the high nibble of a fixed header's first byte.
    pub fn from_nibble(n: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match n {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }
}

/// A packet a peer sent breaks a rule of the protocol. Each variant names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A Variable Byte Integer longer than four bytes or not in its shortest form [MQTT-1.5.5-1].
    MalformedVariableByteInteger,
    /// Packet type 0, or 15 (AUTH) before MQTT 5 [MQTT-2.1.2].
    UnknownPacketType(u8),
    /// A fixed header's flag bits differ from the ones its packet type requires [MQTT-2.1.3-1].
    ReservedFlags(PacketType),
    /// The packet is bigger than the receiver allows [MQTT-3.1.2-24] [MQTT-3.2.2-15].
    PacketTooLarge {
        /// The whole packet's size in bytes, fixed header included.
        size: u32,
        /// The largest size accepted.
        max: u32,
    },
    /// A field runs past the end of the packet (its Remaining Length is too short).
    Truncated,
    /// Bytes are left over after the last field of a packet with no payload to hold them.
    TrailingBytes,
    /// A string is not well-formed UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.4-2].
    NulInString,
    /// CONNECT's Protocol Name is neither `MQTT` nor `MQIsdp` [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// CONNECT's Protocol Level is one tern does not speak [MQTT-3.1.2-2].
    UnsupportedProtocolVersion(u8),
    /// CONNECT's reserved flag is set [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3
    /// [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-14] [MQTT-3.1.2-15].
    InvalidWillFlags,
    /// Password Flag without User Name Flag in 3.1.1 [MQTT-3.1.2-22].
    PasswordWithoutUsername,
    /// A QoS of 3 [MQTT-3.3.1-4], or a reserved bit in a QoS field.
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupOnQoS0,
    /// A Topic Name that is empty, has a wildcard or U+0000 [MQTT-3.3.2-2] [MQTT-4.7.3-1].
    InvalidTopicName,
    /// A Topic Filter that breaks the wildcard rules or is empty [MQTT-4.7.1-2]
    /// [MQTT-4.7.1-3] [MQTT-4.7.3-1], or a malformed shared subscription [MQTT-4.8.2-1].
    InvalidTopicFilter,
    /// A Packet Identifier of zero where one is required [MQTT-2.2.1-3].
    ZeroPacketId,
    /// A property appears twice where it may appear once [MQTT-2.2.2].
    DuplicateProperty(u8),
    /// A property this packet type may not carry [MQTT-2.2.2-2].
    PropertyNotAllowed(u8),
    /// A property identifier MQTT 5 does not define.
    UnknownProperty(u32),
    /// A property value outside its allowed range (for example Receive Maximum 0).
    InvalidPropertyValue(u8),
    /// A reason code not defined for this packet.
    InvalidReasonCode(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    NoTopicFilters,
    /// Reserved bits of a subscription option set, or Retain Handling 3 [MQTT-3.8.3-5].
    InvalidSubscriptionOptions,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A v5 PUBLISH with an empty Topic Name and no Topic Alias [MQTT-3.3.2-1].
    MissingTopic,
    /// The payload is not UTF-8 though the Payload Format Indicator says it is [MQTT-3.3.2-4].
    PayloadFormatInvalid,
    /// A CONNACK's acknowledge flags have reserved bits set [MQTT-3.2.2-1].
    ConnAckReservedFlags,
}

impl DecodeError {
    /// The MQTT 5 reason code a receiver sends when it meets this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            InvalidTopicName | MissingTopic => ReasonCode::TOPIC_NAME_INVALID,
            InvalidTopicFilter => ReasonCode::TOPIC_FILTER_INVALID,
            PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | NoLocalOnSharedSubscription
            | UnknownPacketType(15)
            | NoTopicFilters
            | PasswordWithoutUsername => ReasonCode::PROTOCOL_ERROR,
            MalformedVariableByteInteger
            | UnknownPacketType(_)
            | ReservedFlags(_)
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | NulInString
            | ConnectReservedFlag
            | InvalidWillFlags
            | InvalidQoS
            | DupOnQoS0
            | ZeroPacketId
            | PropertyNotAllowed(_)
            | UnknownProperty(_)
            | InvalidReasonCode(_)
            | InvalidSubscriptionOptions
            | ConnAckReservedFlags => ReasonCode::MALFORMED_PACKET,
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use DecodeError::*;
        match *self {
            MalformedVariableByteInteger => f.write_str("malformed variable byte integer"),
            UnknownPacketType(t) => write!(f, "unknown packet type {t}"),
            ReservedFlags(t) => write!(f, "reserved fixed-header flags set on {t:?}"),
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            Truncated => f.write_str("a field runs past the end of the packet"),
            TrailingBytes => f.write_str("unexpected bytes after the last field"),
            InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            NulInString => f.write_str("string contains U+0000"),
            InvalidProtocolName => f.write_str("unknown protocol name"),
            UnsupportedProtocolVersion(l) => write!(f, "unsupported protocol level {l}"),
            ConnectReservedFlag => f.write_str("CONNECT reserved flag set"),
            InvalidWillFlags => f.write_str("will QoS/retain inconsistent with the will flag"),
            PasswordWithoutUsername => f.write_str("password flag set without user name flag"),
            InvalidQoS => f.write_str("invalid QoS"),
            DupOnQoS0 => f.write_str("DUP set on a QoS 0 PUBLISH"),
            InvalidTopicName => f.write_str("invalid topic name"),
            InvalidTopicFilter => f.write_str("invalid topic filter"),
            ZeroPacketId => f.write_str("packet identifier 0"),
            DuplicateProperty(id) => write!(f, "property {id:#04x} repeated"),
            PropertyNotAllowed(id) => write!(f, "property {id:#04x} not allowed here"),
            UnknownProperty(id) => write!(f, "unknown property {id:#04x}"),
            InvalidPropertyValue(id) => write!(f, "invalid value for property {id:#04x}"),
            InvalidReasonCode(c) => write!(f, "invalid reason code {c:#04x}"),
            NoTopicFilters => f.write_str("no topic filters"),
            InvalidSubscriptionOptions => f.write_str("invalid subscription options"),
            NoLocalOnSharedSubscription => f.write_str("no local on a shared subscription"),
            MissingTopic => f.write_str("empty topic name without a topic alias"),
            PayloadFormatInvalid => f.write_str("payload is not the UTF-8 its format says"),
            ConnAckReservedFlags => f.write_str("CONNACK reserved flags set"),
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is smaller than the packet; [`crate::Packet::encoded_len`] says how big.
    BufferTooSmall,
    /// A string, binary field or length exceeds what its representation can carry.
    ValueTooLarge,
    /// The packet or field does not exist in the chosen protocol version (AUTH before MQTT 5).
    NotInVersion,
    /// A QoS 1 or 2 PUBLISH without a Packet Identifier [MQTT-2.2.1-2].
    MissingPacketId,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EncodeError::BufferTooSmall => "output buffer too small",
            EncodeError::ValueTooLarge => "value too large for its field",
            EncodeError::NotInVersion => "not part of this protocol version",
            EncodeError::MissingPacketId => "QoS 1 or 2 PUBLISH without a packet identifier",
        })
    }
}
