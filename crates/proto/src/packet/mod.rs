//! The control packets (section 3): one model for MQTT 3.1, 3.1.1 and 5.0.
//!
//! `decode` reads a fixed header, checks the size limit before the body has arrived, and
//! decodes the body once it has; `encode` writes into a caller's buffer. Each packet type has
//! its own file with its decode and encode side by side.

mod ack;
mod connack;
mod connect;
mod disconnect;
mod list;
mod publish;
mod subscribe;
mod unsubscribe;

pub use ack::Ack;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use list::{List, ListItem};
pub use publish::Publish;
pub use subscribe::{RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions};
pub use unsubscribe::{UnsubAck, Unsubscribe};

use core::num::NonZeroU16;

use crate::error::{DecodeError, EncodeError, PacketType};
use crate::wire::{
    decode_variable_u32, variable_u32_len, Reader, Writer, MAX_VARIABLE_BYTE_INTEGER,
};
use crate::ProtocolVersion;

/// Quality of Service: how hard the protocol tries to deliver a message (section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// At most once: fire and forget.
    AtMostOnce = 0,
    /// At least once: PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this value; 3 is not one [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Result<QoS, DecodeError> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// A Packet Identifier: never zero [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier `v`, unless `v` is zero.
    pub fn new(v: u16) -> Option<PacketId> {
        NonZeroU16::new(v).map(PacketId)
    }

    /// The value on the wire.
    pub fn get(self) -> u16 {
        self.0.get()
    }

    fn decode(r: &mut Reader<'_>) -> Result<PacketId, DecodeError> {
        PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId)
    }
}

/// A fixed header (section 2.1): packet type, flags and Remaining Length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// The Remaining Length: bytes after the fixed header.
    pub remaining_len: u32,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Reads a fixed header from the start of `buf`; `Ok(None)` if it has not fully arrived.
    ///
    /// Checks the packet type exists in `version` and the flags are the ones it requires
    /// [MQTT-2.1.3-1] (PUBLISH's flags are checked with its body).
    pub fn decode(
        buf: &[u8],
        version: ProtocolVersion,
    ) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let nibble = first >> 4;
        let packet_type = match PacketType::from_nibble(nibble) {
            Some(PacketType::Auth) if !version.is_v5() => None,
            t => t,
        }
        .ok_or(DecodeError::UnknownPacketType(nibble))?;
        let flags = first & 0x0f;
        let required = match packet_type {
            PacketType::Publish => flags,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        if flags != required {
            return Err(DecodeError::ReservedFlags(packet_type));
        }
        let Some((remaining_len, used)) = decode_variable_u32(&buf[1..])? else {
            return Ok(None);
        };
        Ok(Some(FixedHeader {
            packet_type,
            flags,
            remaining_len,
            header_len: 1 + used,
        }))
    }

    /// The whole packet's size: header and Remaining Length.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len as usize
    }
}

/// Any MQTT control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
// each variant is the packet of the same name
// CONNECT carries two property sets and so is the largest variant. Boxing it would need an
// allocator, which the board build does not have; a decoded packet lives briefly on the stack.
#[allow(clippy::large_enum_variant)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    PubAck(Ack<'a>),
    PubRec(Ack<'a>),
    PubRel(Ack<'a>),
    PubComp(Ack<'a>),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
    Auth(Auth<'a>),
}

/// Decodes the packet at the start of `buf`.
///
/// - `Ok(Some((packet, used)))`: a packet, and how many bytes of `buf` it took.
/// - `Ok(None)`: the packet has not fully arrived; read more and call again with the longer
///   buffer. A packet split at any byte boundary decodes the same.
/// - `Err(_)`: the peer broke a rule; [`DecodeError::reason_code`] says what to answer.
///
/// A packet whose size exceeds `max_packet_size` is refused as soon as its fixed header has
/// arrived, before its body is buffered. CONNECT is decoded in the version it announces;
/// every other packet in `version`.
pub fn decode(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(header) = FixedHeader::decode(buf, version)? else {
        return Ok(None);
    };
    let size = header.packet_len();
    if size > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: u32::try_from(size).unwrap_or(u32::MAX),
            max: max_packet_size,
        });
    }
    let Some(body) = buf.get(header.header_len..size) else {
        return Ok(None);
    };
    let packet = Packet::decode_body(&header, body, version)?;
    Ok(Some((packet, size)))
}

/// Requires that a packet's body has been read to its end.
fn finish(r: &Reader<'_>) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes)
    }
}

impl<'a> Packet<'a> {
    /// Decodes a body whose fixed header has been read.
    pub fn decode_body(
        header: &FixedHeader,
        body: &'a [u8],
        version: ProtocolVersion,
    ) -> Result<Packet<'a>, DecodeError> {
        let mut r = Reader::new(body);
        let r = &mut r;
        let packet = match header.packet_type {
            PacketType::Connect => Packet::Connect(Connect::decode(r)?),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
            PacketType::Publish => Packet::Publish(Publish::decode(header.flags, r, version)?),
            PacketType::PubAck => Packet::PubAck(Ack::decode(r, version)?),
            PacketType::PubRec => Packet::PubRec(Ack::decode(r, version)?),
            PacketType::PubRel => Packet::PubRel(Ack::decode(r, version)?),
            PacketType::PubComp => Packet::PubComp(Ack::decode(r, version)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
            PacketType::Auth => Packet::Auth(Auth::decode(r)?),
        };
        finish(r)?;
        Ok(packet)
    }

    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Packet::Publish(p) => p.flags(),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        }
    }

    fn encode_body(&self, w: &mut Writer<'_>, version: ProtocolVersion) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(p) => p.encode(w),
            Packet::ConnAck(p) => p.encode(w, version),
            Packet::Publish(p) => p.encode(w, version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.encode(w, version)
            }
            Packet::Subscribe(p) => p.encode(w, version),
            Packet::SubAck(p) => p.encode(w, version),
            Packet::Unsubscribe(p) => p.encode(w, version),
            Packet::UnsubAck(p) => p.encode(w, version),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(p) => p.encode(w, version),
            Packet::Auth(p) => {
                if !version.is_v5() {
                    return Err(EncodeError::NotInVersion);
                }
                p.encode(w)
            }
        }
    }

    fn remaining_len(&self, version: ProtocolVersion) -> Result<u32, EncodeError> {
        let mut counter = Writer::counter();
        self.encode_body(&mut counter, version)?;
        u32::try_from(counter.position())
            .ok()
            .filter(|&len| len <= MAX_VARIABLE_BYTE_INTEGER)
            .ok_or(EncodeError::ValueTooLarge)
    }

    /// The number of bytes [`Packet::encode`] writes.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let len = self.remaining_len(version)?;
        Ok(1 + variable_u32_len(len) + len as usize)
    }

    /// Writes the packet into `out` in `version` and returns the bytes written. A CONNECT is
    /// written in the version it carries. Before MQTT 5, properties are not written.
    pub fn encode(&self, version: ProtocolVersion, out: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.remaining_len(version)?;
        let mut w = Writer::new(out);
        w.u8(((self.packet_type() as u8) << 4) | self.flags())?;
        w.variable_u32(len)?;
        self.encode_body(&mut w, version)?;
        Ok(w.position())
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn encode_to_vec(
        &self,
        version: ProtocolVersion,
    ) -> Result<alloc::vec::Vec<u8>, EncodeError> {
        let mut out = alloc::vec![0; self.encoded_len(version)?];
        self.encode(version, &mut out)?;
        Ok(out)
    }
}
