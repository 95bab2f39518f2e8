//! The MQTT codec of tern: every control packet of MQTT 3.1, 3.1.1 and 5.0, decoded from
//! and encoded to bytes, with the protocol's rules checked at decode.
//!
//! One packet model serves all three versions; the version is a value given to [`decode`]
//! and [`Packet::encode`]. Decoding borrows: a [`Publish`] points at its topic and payload in
//! the input buffer, so this crate needs neither `std` nor an allocator and runs on the boards
//! as well as in the broker. The `alloc` feature adds owned forms ([`PublishBuf`],
//! [`PropertiesBuf`]) for whoever keeps a message after its input buffer is reused.
//!
//! ```
//! use tern_proto::{decode, Packet, ProtocolVersion};
//!
//! // A 3.1.1 PINGREQ, arriving one byte at a time.
//! let bytes = [0xc0, 0x00];
//! assert_eq!(decode(&bytes[..1], ProtocolVersion::V3_1_1, 1024), Ok(None));
//! let (packet, used) = decode(&bytes, ProtocolVersion::V3_1_1, 1024).unwrap().unwrap();
//! assert_eq!((packet, used), (Packet::PingReq, 2));
//! ```
//!
//! Layout: [`wire`] reads and writes the data representations of section 1.5; [`properties`]
//! holds the MQTT 5 property table; `packet/` has a file per packet type; [`topic`] owns topic
//! names, filters and matching; [`ReasonCode`] and [`DecodeError::reason_code`] are the one
//! mapping from a broken rule to what is sent back.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod error;
#[cfg(feature = "alloc")]
mod owned;
mod packet;
pub mod properties;
mod reason;
pub mod topic;
mod version;
pub mod wire;

pub use error::{DecodeError, EncodeError, PacketType};
#[cfg(feature = "alloc")]
pub use owned::{PropertiesBuf, PublishBuf, StoredPublish};
pub use packet::{
    decode, Ack, Auth, ConnAck, Connect, Disconnect, FixedHeader, List, ListItem, Packet, PacketId,
    Publish, QoS, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
pub use properties::{Properties, PropertyContext, SubscriptionIds, UserProperties};
pub use reason::ReasonCode;
pub use topic::{TopicFilter, TopicName};
pub use version::ProtocolVersion;

/// The largest packet MQTT can express: a 5-byte fixed header and the largest Remaining Length.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + wire::MAX_VARIABLE_BYTE_INTEGER;
