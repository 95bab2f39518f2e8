//! The records the log is made of, and their bytes.
//!
//! A record says one thing that happened to the broker's durable state ("this message is
//! queued for that session", "that session acknowledged it"). Every record is an upsert or a
//! delete of one key, so replaying a log on top of a snapshot is always correct.
//!
//! Bytes: integers little-endian and fixed width; strings and byte strings as a `u32` length
//! and the bytes; an optional value as a `0`/`1` byte and the value. A record is a tag byte and
//! its fields. Records travel in frames (see `frame.rs`); nothing here knows about files.

use std::borrow::Cow;
use std::fmt;

/// The on-disk format this code writes and reads. A file with another version is not read:
/// a later format change comes with a migration.
pub const FORMAT_VERSION: u32 = 1;

/// A message as stored: everything a subscriber's copy is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageData<'a> {
    /// The topic name.
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// Its MQTT 5 properties as an encoded block (without the length prefix).
    pub properties: &'a [u8],
    /// The publishing client (for No Local).
    pub publisher: &'a str,
    /// When its Message Expiry Interval runs out, in milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// A persistent session's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionData<'a> {
    /// The Client Identifier.
    pub client: &'a str,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// The protocol level of its last connection (3, 4 or 5).
    pub version: u8,
    /// The user name its last connection authenticated with.
    pub username: Option<&'a str>,
    /// When its last connection ended (ms since the Unix epoch); `None` while connected.
    pub disconnected_at: Option<u64>,
    /// The will still to be published, with its delay in seconds.
    pub will: Option<(MessageData<'a>, u32)>,
}

/// A message queued for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryData<'a> {
    /// The session's Client Identifier.
    pub client: &'a str,
    /// The entry's number: unique in the store, increasing.
    pub seq: u64,
    /// The stored message it delivers (a [`Record::Message`] id).
    pub message: u64,
    /// The QoS this subscriber gets.
    pub qos: u8,
    /// The RETAIN flag of this copy.
    pub retain: bool,
    /// Subscription Identifiers of the subscriptions it matched.
    pub subscription_ids: Cow<'a, [u32]>,
    /// The shared subscription it came through.
    pub share: Option<&'a str>,
}

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// The retained message of its topic is now this one.
    Retain(MessageData<'a>),
    /// The topic has no retained message any more.
    RetainClear {
        /// The topic.
        topic: &'a str,
    },
    /// A message that queue entries refer to by `id`. It lives as long as they do.
    Message {
        /// Its id, unique in the store.
        id: u64,
        /// The message.
        message: MessageData<'a>,
    },
    /// A persistent session exists with these fields (its subscriptions and queue are kept).
    Session(SessionData<'a>),
    /// The session is gone, with its subscriptions, queue and QoS 2 state.
    SessionDrop {
        /// The Client Identifier.
        client: &'a str,
    },
    /// The session subscribes to `filter`.
    Subscribe {
        /// The Client Identifier.
        client: &'a str,
        /// The topic filter, `$share/` prefix included.
        filter: &'a str,
        /// The SUBSCRIBE options byte (QoS, No Local, Retain As Published, Retain Handling).
        options: u8,
        /// The Subscription Identifier.
        id: Option<u32>,
    },
    /// The session no longer subscribes to `filter`.
    Unsubscribe {
        /// The Client Identifier.
        client: &'a str,
        /// The topic filter.
        filter: &'a str,
    },
    /// A QoS 1/2 message is queued for a session.
    Enqueue(EntryData<'a>),
    /// The entry was sent with this packet id and is not acknowledged yet.
    Sent {
        /// The Client Identifier.
        client: &'a str,
        /// The entry.
        seq: u64,
        /// The packet identifier it was sent with.
        packet_id: u16,
    },
    /// PUBREC arrived for the entry: only PUBREL / PUBCOMP remain, the message is not needed.
    Released {
        /// The Client Identifier.
        client: &'a str,
        /// The entry.
        seq: u64,
    },
    /// The entry is finished (acknowledged, expired or refused) and forgotten.
    Done {
        /// The Client Identifier.
        client: &'a str,
        /// The entry.
        seq: u64,
    },
    /// A QoS 2 PUBLISH with this packet id came from the client and is not released yet.
    IncomingQos2 {
        /// The Client Identifier.
        client: &'a str,
        /// The packet identifier.
        packet_id: u16,
    },
    /// PUBREL came for that packet id.
    IncomingReleased {
        /// The Client Identifier.
        client: &'a str,
        /// The packet identifier.
        packet_id: u16,
    },
    /// The last record of a snapshot: how many came before it. A snapshot without it is
    /// incomplete and not used.
    SnapshotEnd {
        /// Records in the snapshot before this one.
        records: u64,
    },
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end inside a field.
    Truncated,
    /// An unknown record tag.
    UnknownTag(u8),
    /// A string that is not UTF-8.
    NotUtf8,
    /// A flag byte other than 0 or 1.
    BadFlag(u8),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated => write!(f, "record ends inside a field"),
            RecordError::UnknownTag(t) => write!(f, "unknown record tag {t}"),
            RecordError::NotUtf8 => write!(f, "string is not UTF-8"),
            RecordError::BadFlag(b) => write!(f, "flag byte {b} is neither 0 nor 1"),
        }
    }
}

impl std::error::Error for RecordError {}

mod tag {
    pub(super) const RETAIN: u8 = 1;
    pub(super) const RETAIN_CLEAR: u8 = 2;
    pub(super) const MESSAGE: u8 = 3;
    pub(super) const SESSION: u8 = 4;
    pub(super) const SESSION_DROP: u8 = 5;
    pub(super) const SUBSCRIBE: u8 = 6;
    pub(super) const UNSUBSCRIBE: u8 = 7;
    pub(super) const ENQUEUE: u8 = 8;
    pub(super) const SENT: u8 = 9;
    pub(super) const RELEASED: u8 = 10;
    pub(super) const DONE: u8 = 11;
    pub(super) const INCOMING_QOS2: u8 = 12;
    pub(super) const INCOMING_RELEASED: u8 = 13;
    pub(super) const SNAPSHOT_END: u8 = 255;
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    // Lengths come from MQTT packets, whose sizes are far below 4 GiB.
    put_u32(out, u32::try_from(v.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(v);
}
fn put_str(out: &mut Vec<u8>, v: &str) {
    put_bytes(out, v.as_bytes());
}
fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => {
            out.push(1);
            put(out, v);
        }
        None => out.push(0),
    }
}

fn put_message(out: &mut Vec<u8>, m: &MessageData<'_>) {
    put_str(out, m.topic);
    put_bytes(out, m.payload);
    out.push(m.qos);
    out.push(u8::from(m.retain));
    put_bytes(out, m.properties);
    put_str(out, m.publisher);
    put_opt(out, m.expires_at, put_u64);
}

impl Record<'_> {
    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Retain(m) => {
                out.push(tag::RETAIN);
                put_message(out, m);
            }
            Record::RetainClear { topic } => {
                out.push(tag::RETAIN_CLEAR);
                put_str(out, topic);
            }
            Record::Message { id, message } => {
                out.push(tag::MESSAGE);
                put_u64(out, *id);
                put_message(out, message);
            }
            Record::Session(s) => {
                out.push(tag::SESSION);
                put_str(out, s.client);
                put_u32(out, s.expiry_interval);
                out.push(s.version);
                put_opt(out, s.username, put_str);
                put_opt(out, s.disconnected_at, put_u64);
                put_opt(out, s.will.as_ref(), |out, (m, delay)| {
                    put_message(out, m);
                    put_u32(out, *delay);
                });
            }
            Record::SessionDrop { client } => {
                out.push(tag::SESSION_DROP);
                put_str(out, client);
            }
            Record::Subscribe {
                client,
                filter,
                options,
                id,
            } => {
                out.push(tag::SUBSCRIBE);
                put_str(out, client);
                put_str(out, filter);
                out.push(*options);
                put_opt(out, *id, put_u32);
            }
            Record::Unsubscribe { client, filter } => {
                out.push(tag::UNSUBSCRIBE);
                put_str(out, client);
                put_str(out, filter);
            }
            Record::Enqueue(e) => {
                out.push(tag::ENQUEUE);
                put_str(out, e.client);
                put_u64(out, e.seq);
                put_u64(out, e.message);
                out.push(e.qos);
                out.push(u8::from(e.retain));
                put_u32(out, u32::try_from(e.subscription_ids.len()).unwrap_or(0));
                for id in e.subscription_ids.iter() {
                    put_u32(out, *id);
                }
                put_opt(out, e.share, put_str);
            }
            Record::Sent {
                client,
                seq,
                packet_id,
            } => {
                out.push(tag::SENT);
                put_str(out, client);
                put_u64(out, *seq);
                put_u16(out, *packet_id);
            }
            Record::Released { client, seq } => {
                out.push(tag::RELEASED);
                put_str(out, client);
                put_u64(out, *seq);
            }
            Record::Done { client, seq } => {
                out.push(tag::DONE);
                put_str(out, client);
                put_u64(out, *seq);
            }
            Record::IncomingQos2 { client, packet_id } => {
                out.push(tag::INCOMING_QOS2);
                put_str(out, client);
                put_u16(out, *packet_id);
            }
            Record::IncomingReleased { client, packet_id } => {
                out.push(tag::INCOMING_RELEASED);
                put_str(out, client);
                put_u16(out, *packet_id);
            }
            Record::SnapshotEnd { records } => {
                out.push(tag::SNAPSHOT_END);
                put_u64(out, *records);
            }
        }
    }
}

/// Reads fields from a record's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(RecordError::BadFlag(b)),
        }
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| RecordError::NotUtf8)
    }
    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        if self.flag()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }
    fn message(&mut self) -> Result<MessageData<'a>, RecordError> {
        Ok(MessageData {
            topic: self.str()?,
            payload: self.bytes()?,
            qos: self.u8()?,
            retain: self.flag()?,
            properties: self.bytes()?,
            publisher: self.str()?,
            expires_at: self.opt(Self::u64)?,
        })
    }
}

impl<'a> Record<'a> {
    /// Decodes the record at the start of `bytes`; returns it and how many bytes it used.
    pub fn decode(bytes: &'a [u8]) -> Result<(Record<'a>, usize), RecordError> {
        let mut r = Reader { bytes };
        let record = match r.u8()? {
            tag::RETAIN => Record::Retain(r.message()?),
            tag::RETAIN_CLEAR => Record::RetainClear { topic: r.str()? },
            tag::MESSAGE => Record::Message {
                id: r.u64()?,
                message: r.message()?,
            },
            tag::SESSION => Record::Session(SessionData {
                client: r.str()?,
                expiry_interval: r.u32()?,
                version: r.u8()?,
                username: r.opt(Reader::str)?,
                disconnected_at: r.opt(Reader::u64)?,
                will: r.opt(|r| Ok((r.message()?, r.u32()?)))?,
            }),
            tag::SESSION_DROP => Record::SessionDrop { client: r.str()? },
            tag::SUBSCRIBE => Record::Subscribe {
                client: r.str()?,
                filter: r.str()?,
                options: r.u8()?,
                id: r.opt(Reader::u32)?,
            },
            tag::UNSUBSCRIBE => Record::Unsubscribe {
                client: r.str()?,
                filter: r.str()?,
            },
            tag::ENQUEUE => {
                let client = r.str()?;
                let seq = r.u64()?;
                let message = r.u64()?;
                let qos = r.u8()?;
                let retain = r.flag()?;
                let n = r.u32()? as usize;
                // Each id takes four bytes: a count the bytes cannot hold is a torn record,
                // not a reason to allocate.
                if n > r.bytes.len() / 4 {
                    return Err(RecordError::Truncated);
                }
                let ids = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                Record::Enqueue(EntryData {
                    client,
                    seq,
                    message,
                    qos,
                    retain,
                    subscription_ids: Cow::Owned(ids),
                    share: r.opt(Reader::str)?,
                })
            }
            tag::SENT => Record::Sent {
                client: r.str()?,
                seq: r.u64()?,
                packet_id: r.u16()?,
            },
            tag::RELEASED => Record::Released {
                client: r.str()?,
                seq: r.u64()?,
            },
            tag::DONE => Record::Done {
                client: r.str()?,
                seq: r.u64()?,
            },
            tag::INCOMING_QOS2 => Record::IncomingQos2 {
                client: r.str()?,
                packet_id: r.u16()?,
            },
            tag::INCOMING_RELEASED => Record::IncomingReleased {
                client: r.str()?,
                packet_id: r.u16()?,
            },
            tag::SNAPSHOT_END => Record::SnapshotEnd { records: r.u64()? },
            t => return Err(RecordError::UnknownTag(t)),
        };
        Ok((record, bytes.len() - r.bytes.len()))
    }
}
