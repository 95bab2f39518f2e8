//! The client's protocol state machine, without I/O: bytes and time in, bytes and events out.
//!
//! Owns the connection state, packet identifiers, the QoS 1/2 handshakes in both directions
//! and keep alive. Knows nothing about sockets or clocks: the caller gives the time in
//! milliseconds from any fixed point, hands in received bytes and sends what it is given.
//! Needs no allocator: in-flight state lives in fixed arrays of `N` slots.

use tern_proto::{
    decode, Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, List, Packet, PacketId,
    Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe, Subscription,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
};

/// What a client connects with.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// MQTT 3.1.1 or 5.0.
    pub version: ProtocolVersion,
    /// Client Identifier; empty asks the broker to assign one.
    pub client_id: &'a str,
    /// Keep alive in seconds; the client pings when it has sent nothing for this long.
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean_start: bool,
    /// User Name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
    /// Will message.
    pub will: Option<Will<'a>>,
    /// Session Expiry Interval (MQTT 5).
    pub session_expiry: Option<u32>,
}

impl<'a> Options<'a> {
    /// MQTT 3.1.1, clean session, keep alive 60 s, no credentials: change what you need.
    pub fn new(client_id: &'a str) -> Self {
        Options {
            version: ProtocolVersion::V3_1_1,
            client_id,
            keep_alive: 60,
            clean_start: true,
            username: None,
            password: None,
            will: None,
            session_expiry: None,
        }
    }
}

/// Something the broker told the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// A message borrows its packet; boxing it would need an allocator the boards do not have.
#[allow(clippy::large_enum_variant)]
pub enum Event<'a> {
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the broker resumed a session.
        session_present: bool,
    },
    /// CONNACK refused the connection.
    Refused(ReasonCode),
    /// An application message; QoS 1 and 2 ones are acknowledged by the core.
    Message(Publish<'a>),
    /// A QoS 1 or 2 publication finished: PUBACK, PUBCOMP, or a PUBREC with a failure.
    Published {
        /// Its packet identifier.
        packet_id: PacketId,
        /// The broker's reason code (success before MQTT 5).
        reason: ReasonCode,
    },
    /// SUBACK.
    Subscribed {
        /// The SUBSCRIBE's packet identifier.
        packet_id: PacketId,
        /// One code per filter: the granted QoS or a failure.
        codes: List<'a, ReasonCode>,
    },
    /// UNSUBACK.
    Unsubscribed {
        /// The UNSUBSCRIBE's packet identifier.
        packet_id: PacketId,
    },
    /// PINGRESP.
    Pong,
    /// The broker sent DISCONNECT (MQTT 5).
    Disconnected(ReasonCode),
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A packet could not be encoded (usually: the output buffer is too small).
    Encode(EncodeError),
    /// The broker sent bytes that break the protocol.
    Decode(DecodeError),
    /// Not connected (or CONNACK not received yet).
    NotConnected,
    /// Every in-flight slot is taken: wait for acknowledgements.
    InflightFull,
    /// No PINGRESP within the keep alive after PINGREQ: the connection is dead.
    PingTimeout,
    /// The broker sent a packet a client must never receive.
    UnexpectedPacket,
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Error::Encode(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Encode(e) => write!(f, "cannot encode: {e}"),
            Error::Decode(e) => write!(f, "broker sent a bad packet: {e}"),
            Error::NotConnected => f.write_str("not connected"),
            Error::InflightFull => f.write_str("too many messages in flight"),
            Error::PingTimeout => f.write_str("no PINGRESP: connection lost"),
            Error::UnexpectedPacket => f.write_str("unexpected packet from the broker"),
        }
    }
}

/// Where an outgoing QoS 1/2 publication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// QoS 1 PUBLISH sent; waiting for PUBACK.
    AwaitingPuback,
    /// QoS 2 PUBLISH sent; waiting for PUBREC.
    AwaitingPubrec,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitingPubcomp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Connecting,
    Connected,
}

/// One step of [`Protocol::handle`]: bytes consumed from the input, bytes written to the
/// output, and the event, if the packet makes one.
#[derive(Debug)]
pub struct Step<'a> {
    /// Input bytes used by the packet.
    pub consumed: usize,
    /// Output bytes written (an acknowledgement to send).
    pub written: usize,
    /// What happened.
    pub event: Option<Event<'a>>,
}

/// The client protocol state. `N` bounds the QoS 1/2 messages in flight in each direction.
#[derive(Debug)]
pub struct Protocol<const N: usize = 16> {
    version: ProtocolVersion,
    state: State,
    keep_alive_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    next_packet_id: u16,
    outgoing: [Option<(u16, Outgoing)>; N],
    incoming_qos2: [Option<u16>; N],
}

impl<const N: usize> Default for Protocol<N> {
    fn default() -> Self {
        Self::new()
    }
}

fn write(packet: &Packet<'_>, version: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
    Ok(packet.encode(version, out)?)
}

impl<const N: usize> Protocol<N> {
    /// A disconnected client.
    pub const fn new() -> Self {
        Protocol {
            version: ProtocolVersion::V3_1_1,
            state: State::Disconnected,
            keep_alive_ms: 0,
            last_sent_ms: 0,
            ping_sent_ms: None,
            next_packet_id: 1,
            outgoing: [None; N],
            incoming_qos2: [None; N],
        }
    }

    /// Whether CONNACK accepted the connection and it has not ended.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The protocol version of the connection.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// QoS 1/2 publications not yet finished, with where each stands.
    pub fn in_flight(&self) -> impl Iterator<Item = (PacketId, Outgoing)> + '_ {
        self.outgoing
            .iter()
            .flatten()
            .filter_map(|&(id, s)| Some((PacketId::new(id)?, s)))
    }

    /// Writes CONNECT. Publications in flight from an earlier connection stay tracked, for a
    /// resumed session; call [`Protocol::forget_session`] when the broker starts a new one.
    pub fn connect(
        &mut self,
        o: &Options<'_>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let connect = Connect {
            version: o.version,
            clean_start: o.clean_start,
            keep_alive: o.keep_alive,
            properties: Properties {
                session_expiry_interval: o.session_expiry,
                ..Properties::default()
            },
            client_id: o.client_id,
            will: o.will,
            username: o.username,
            password: o.password,
        };
        let n = write(&Packet::Connect(connect), o.version, out)?;
        self.version = o.version;
        self.state = State::Connecting;
        self.keep_alive_ms = u64::from(o.keep_alive) * 1000;
        self.last_sent_ms = now_ms;
        self.ping_sent_ms = None;
        Ok(n)
    }

    /// Drops every in-flight state: the broker did not resume the session.
    pub fn forget_session(&mut self) {
        self.outgoing = [None; N];
        self.incoming_qos2 = [None; N];
    }

    /// The connection ended (socket closed): the session state is kept for a reconnect.
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.ping_sent_ms = None;
    }

    fn next_id(&mut self) -> Result<u16, Error> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.outgoing.iter().flatten().any(|&(used, _)| used == id) {
                return Ok(id);
            }
        }
        Err(Error::InflightFull)
    }

    fn connected(&self) -> Result<(), Error> {
        if self.state == State::Connected {
            Ok(())
        } else {
            Err(Error::NotConnected)
        }
    }

    /// Writes a PUBLISH. QoS 1 and 2 get a packet identifier (returned) and are tracked until
    /// the broker finishes the handshake ([`Event::Published`]).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<(usize, Option<PacketId>), Error> {
        self.publish_with(
            topic,
            payload,
            qos,
            retain,
            Properties::default(),
            now_ms,
            out,
        )
    }

    /// [`Protocol::publish`] with MQTT 5 properties.
    #[allow(clippy::too_many_arguments)] // the PUBLISH fields, in the specification's order
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<(usize, Option<PacketId>), Error> {
        self.connected()?;
        let topic = TopicName::new(topic).map_err(Error::Decode)?;
        let slot = match qos {
            QoS::AtMostOnce => None,
            _ => Some(
                self.outgoing
                    .iter()
                    .position(Option::is_none)
                    .ok_or(Error::InflightFull)?,
            ),
        };
        let id = match slot {
            Some(_) => Some(self.next_id()?),
            None => None,
        };
        let packet_id = id.and_then(PacketId::new);
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        };
        let n = write(&Packet::Publish(publish), self.version, out)?;
        if let (Some(slot), Some(id)) = (slot, id) {
            let state = if qos == QoS::AtLeastOnce {
                Outgoing::AwaitingPuback
            } else {
                Outgoing::AwaitingPubrec
            };
            self.outgoing[slot] = Some((id, state));
        }
        self.last_sent_ms = now_ms;
        Ok((n, packet_id))
    }

    /// Writes a PUBLISH again with DUP set, for a message still in flight after a reconnect
    /// (the caller kept its topic and payload) [MQTT-4.4.0-1]. A QoS 2 message whose PUBREC
    /// came gets its PUBREL again instead (see [`Protocol::resend_releases`]).
    #[allow(clippy::too_many_arguments)]
    pub fn republish(
        &mut self,
        packet_id: PacketId,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let topic = TopicName::new(topic).map_err(Error::Decode)?;
        let publish = Publish {
            dup: true,
            qos,
            retain,
            topic,
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload,
        };
        let n = write(&Packet::Publish(publish), self.version, out)?;
        self.last_sent_ms = now_ms;
        Ok(n)
    }

    /// Writes PUBREL for every QoS 2 publication waiting for PUBCOMP, after a reconnect.
    pub fn resend_releases(&mut self, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        let mut n = 0;
        for (id, state) in self.outgoing.iter().flatten() {
            if let (Outgoing::AwaitingPubcomp, Some(pid)) = (state, PacketId::new(*id)) {
                n += write(&Packet::PubRel(Ack::new(pid)), self.version, &mut out[n..])?;
            }
        }
        if n > 0 {
            self.last_sent_ms = now_ms;
        }
        Ok(n)
    }

    /// Writes SUBSCRIBE for `subscriptions`; the answer is [`Event::Subscribed`].
    pub fn subscribe(
        &mut self,
        subscriptions: &[Subscription<'_>],
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<(usize, PacketId), Error> {
        self.connected()?;
        let id = PacketId::new(self.next_id()?).ok_or(Error::InflightFull)?;
        let s = Subscribe {
            packet_id: id,
            properties: Properties::default(),
            subscriptions: List::Items(subscriptions),
        };
        let n = write(&Packet::Subscribe(s), self.version, out)?;
        self.last_sent_ms = now_ms;
        Ok((n, id))
    }

    /// Writes UNSUBSCRIBE; the answer is [`Event::Unsubscribed`].
    pub fn unsubscribe(
        &mut self,
        filters: &[TopicFilter<'_>],
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<(usize, PacketId), Error> {
        self.connected()?;
        let id = PacketId::new(self.next_id()?).ok_or(Error::InflightFull)?;
        let u = Unsubscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: List::Items(filters),
        };
        let n = write(&Packet::Unsubscribe(u), self.version, out)?;
        self.last_sent_ms = now_ms;
        Ok((n, id))
    }

    /// Writes DISCONNECT (normal: the broker discards the will) and ends the connection.
    pub fn disconnect(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        let n = write(
            &Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
            self.version,
            out,
        )?;
        self.state = State::Disconnected;
        Ok(n)
    }

    /// Keep alive: writes PINGREQ when nothing was sent for the keep alive [MQTT-3.1.2-23]
    /// and fails when a PINGREQ got no answer within another keep alive. Call it at
    /// [`Protocol::next_deadline`] (or more often).
    pub fn poll(&mut self, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        if self.state != State::Connected || self.keep_alive_ms == 0 {
            return Ok(0);
        }
        if let Some(sent) = self.ping_sent_ms {
            if now_ms.saturating_sub(sent) >= self.keep_alive_ms {
                self.state = State::Disconnected;
                return Err(Error::PingTimeout);
            }
            return Ok(0);
        }
        if now_ms.saturating_sub(self.last_sent_ms) >= self.keep_alive_ms {
            let n = write(&Packet::PingReq, self.version, out)?;
            self.last_sent_ms = now_ms;
            self.ping_sent_ms = Some(now_ms);
            return Ok(n);
        }
        Ok(0)
    }

    /// When [`Protocol::poll`] next has something to do, in the caller's milliseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.state != State::Connected || self.keep_alive_ms == 0 {
            return None;
        }
        Some(match self.ping_sent_ms {
            Some(sent) => sent + self.keep_alive_ms,
            None => self.last_sent_ms + self.keep_alive_ms,
        })
    }

    /// Handles the first whole packet in `input`: `Ok(None)` if it has not fully arrived.
    /// Any acknowledgement the packet calls for is written to `out` (at most 64 bytes).
    pub fn handle<'i>(
        &mut self,
        input: &'i [u8],
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Option<Step<'i>>, Error> {
        let Some((packet, consumed)) =
            decode(input, self.version, tern_proto::MAX_PACKET_SIZE).map_err(Error::Decode)?
        else {
            return Ok(None);
        };
        let mut written = 0;
        let event = match packet {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                ..
            }) => {
                if self.state != State::Connecting {
                    return Err(Error::UnexpectedPacket);
                }
                if code.is_success() {
                    self.state = State::Connected;
                    if !session_present {
                        self.forget_session();
                    }
                    Some(Event::Connected { session_present })
                } else {
                    self.state = State::Disconnected;
                    Some(Event::Refused(code))
                }
            }
            Packet::Publish(p) => {
                let (ack, deliver) = self.receive(&p);
                if let Some(ack) = ack {
                    written = write(&ack, self.version, out)?;
                    self.last_sent_ms = now_ms;
                }
                deliver.then_some(Event::Message(p))
            }
            Packet::PubAck(a) => self.finish(a.packet_id, Outgoing::AwaitingPuback, a.reason),
            Packet::PubRec(a) => {
                let id = a.packet_id.get();
                let slot = self
                    .outgoing
                    .iter_mut()
                    .flatten()
                    .find(|(i, s)| *i == id && *s == Outgoing::AwaitingPubrec);
                match slot {
                    Some(entry) if a.reason.is_success() => {
                        entry.1 = Outgoing::AwaitingPubcomp;
                        written = write(&Packet::PubRel(Ack::new(a.packet_id)), self.version, out)?;
                        self.last_sent_ms = now_ms;
                        None
                    }
                    // A failure code ends the exchange with no PUBREL (section 4.3.3).
                    Some(_) => self.finish(a.packet_id, Outgoing::AwaitingPubrec, a.reason),
                    None => {
                        let mut rel = Ack::new(a.packet_id);
                        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        written = write(&Packet::PubRel(rel), self.version, out)?;
                        None
                    }
                }
            }
            Packet::PubRel(a) => {
                // [MQTT-4.3.3-11] release the id, answer PUBCOMP.
                let id = a.packet_id.get();
                if let Some(slot) = self.incoming_qos2.iter_mut().find(|s| **s == Some(id)) {
                    *slot = None;
                }
                written = write(&Packet::PubComp(Ack::new(a.packet_id)), self.version, out)?;
                self.last_sent_ms = now_ms;
                None
            }
            Packet::PubComp(a) => self.finish(a.packet_id, Outgoing::AwaitingPubcomp, a.reason),
            Packet::SubAck(SubAck {
                packet_id, codes, ..
            }) => Some(Event::Subscribed { packet_id, codes }),
            Packet::UnsubAck(UnsubAck { packet_id, .. }) => Some(Event::Unsubscribed { packet_id }),
            Packet::PingResp => {
                self.ping_sent_ms = None;
                Some(Event::Pong)
            }
            Packet::Disconnect(d) => {
                self.state = State::Disconnected;
                Some(Event::Disconnected(d.reason))
            }
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Auth(_) => {
                return Err(Error::UnexpectedPacket);
            }
        };
        // Any packet from the broker shows the connection is alive.
        if self.state == State::Connected
            && !matches!(event, Some(Event::Pong))
            && self.ping_sent_ms.is_some()
        {
            self.ping_sent_ms = None;
        }
        Ok(Some(Step {
            consumed,
            written,
            event,
        }))
    }

    /// The acknowledgement an incoming PUBLISH needs, and whether to deliver it (a QoS 2
    /// message received again before PUBREL is not delivered twice [MQTT-4.3.3-10]).
    fn receive(&mut self, p: &Publish<'_>) -> (Option<Packet<'static>>, bool) {
        let Some(id) = p.packet_id else {
            return (None, true);
        };
        match p.qos {
            QoS::AtMostOnce => (None, true),
            QoS::AtLeastOnce => (Some(Packet::PubAck(Ack::new(id))), true),
            QoS::ExactlyOnce => {
                let seen = self.incoming_qos2.contains(&Some(id.get()));
                if !seen {
                    match self.incoming_qos2.iter_mut().find(|s| s.is_none()) {
                        Some(slot) => *slot = Some(id.get()),
                        // No room to remember it: answer with a failure rather than risk a
                        // duplicate later (MQTT 5); 3.1.1 cannot refuse, so it is delivered.
                        None if self.version.is_v5() => {
                            let mut rec = Ack::new(id);
                            rec.reason = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
                            return (Some(Packet::PubRec(rec)), false);
                        }
                        None => {}
                    }
                }
                (Some(Packet::PubRec(Ack::new(id))), !seen)
            }
        }
    }

    fn finish(
        &mut self,
        id: PacketId,
        expected: Outgoing,
        reason: ReasonCode,
    ) -> Option<Event<'static>> {
        let slot = self
            .outgoing
            .iter_mut()
            .find(|s| matches!(s, Some((i, st)) if *i == id.get() && *st == expected))?;
        *slot = None;
        Some(Event::Published {
            packet_id: id,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    fn connected<const N: usize>(version: ProtocolVersion, keep_alive: u16) -> Protocol<N> {
        let mut p = Protocol::<N>::new();
        let mut out = [0u8; 64];
        let mut o = Options::new("c");
        o.version = version;
        o.keep_alive = keep_alive;
        p.connect(&o, T0, &mut out).unwrap();
        let connack: &[u8] = if version.is_v5() {
            &[0x20, 3, 0, 0, 0]
        } else {
            &[0x20, 2, 0, 0]
        };
        let step = p.handle(connack, T0, &mut out).unwrap().unwrap();
        assert_eq!(
            step.event,
            Some(Event::Connected {
                session_present: false
            })
        );
        p
    }

    #[test]
    fn connect_writes_the_boards_connect() {
        // [MQTT-3.1.2-1] and the tutorial's CONNECT: level 4, clean session, keep alive 7200,
        // user and password.
        let mut p = Protocol::<4>::new();
        let mut out = [0u8; 64];
        let mut o = Options::new("c");
        o.keep_alive = 7200;
        o.username = Some("u");
        o.password = Some(b"p");
        let n = p.connect(&o, 0, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0x1c, 0x20, 0, 1, b'c', 0, 1,
                b'u', 0, 1, b'p'
            ]
        );
        assert!(!p.is_connected());
        assert_eq!(
            p.publish("t", b"x", QoS::AtMostOnce, false, 0, &mut out),
            Err(Error::NotConnected)
        );
    }

    #[test]
    fn refused_connack_is_an_event() {
        let mut p = Protocol::<4>::new();
        let mut out = [0u8; 64];
        p.connect(&Options::new("c"), 0, &mut out).unwrap();
        let step = p.handle(&[0x20, 2, 0, 4], 0, &mut out).unwrap().unwrap();
        assert_eq!(
            step.event,
            Some(Event::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD))
        );
        assert!(!p.is_connected());
    }

    #[test]
    fn qos1_publish_is_tracked_until_puback() {
        // [MQTT-4.3.2-1] a QoS 1 message stays in flight until its PUBACK.
        let mut p = connected::<4>(ProtocolVersion::V3_1_1, 60);
        let mut out = [0u8; 64];
        let (n, id) = p
            .publish("a", b"x", QoS::AtLeastOnce, false, T0, &mut out)
            .unwrap();
        let id = id.unwrap();
        assert_eq!(&out[..n], &[0x32, 6, 0, 1, b'a', 0, id.get() as u8, b'x']);
        assert_eq!(
            p.in_flight().collect::<Vec<_>>(),
            [(id, Outgoing::AwaitingPuback)]
        );
        let puback = [0x40, 2, 0, id.get() as u8];
        let step = p.handle(&puback, T0, &mut out).unwrap().unwrap();
        assert_eq!(
            step.event,
            Some(Event::Published {
                packet_id: id,
                reason: ReasonCode::SUCCESS
            })
        );
        assert_eq!(p.in_flight().count(), 0);
    }

    #[test]
    fn qos2_publish_handshake() {
        // [MQTT-4.3.3-1]: PUBLISH, PUBREC -> PUBREL, PUBCOMP.
        let mut p = connected::<4>(ProtocolVersion::V5, 60);
        let mut out = [0u8; 64];
        let (_, id) = p
            .publish("a", b"x", QoS::ExactlyOnce, false, T0, &mut out)
            .unwrap();
        let id = id.unwrap().get() as u8;
        let rec = [0x50, 2, 0, id];
        let step = p.handle(&rec, T0, &mut out).unwrap().unwrap();
        assert_eq!(
            (step.event, &out[..step.written]),
            (None, &[0x62, 2, 0, id][..])
        );
        // A reconnect resends the PUBREL, not the PUBLISH.
        p.connection_lost();
        let mut again = [0u8; 16];
        assert_eq!(p.resend_releases(T0, &mut again), Ok(4));
        let comp = [0x70, 2, 0, id];
        let step = p.handle(&comp, T0, &mut out).unwrap().unwrap();
        assert!(matches!(step.event, Some(Event::Published { .. })));
        assert_eq!(p.in_flight().count(), 0);
    }

    #[test]
    fn incoming_qos2_is_delivered_once() {
        // [MQTT-4.3.3-10] a re-sent QoS 2 PUBLISH before PUBREL is acknowledged, not delivered.
        let mut p = connected::<4>(ProtocolVersion::V3_1_1, 60);
        let mut out = [0u8; 64];
        let publish = [0x34, 6, 0, 1, b't', 0, 9, b'm'];
        let first = p.handle(&publish, T0, &mut out).unwrap().unwrap();
        assert!(matches!(first.event, Some(Event::Message(_))));
        assert_eq!(&out[..first.written], &[0x50, 2, 0, 9]);
        let dup = [0x3c, 6, 0, 1, b't', 0, 9, b'm'];
        let second = p.handle(&dup, T0, &mut out).unwrap().unwrap();
        assert_eq!(second.event, None);
        let rel = p.handle(&[0x62, 2, 0, 9], T0, &mut out).unwrap().unwrap();
        assert_eq!(&out[..rel.written], &[0x70, 2, 0, 9]);
        // After the release the id may be used for a new message.
        let third = p.handle(&publish, T0, &mut out).unwrap().unwrap();
        assert!(matches!(third.event, Some(Event::Message(_))));
    }

    #[test]
    fn qos1_message_is_acknowledged() {
        let mut p = connected::<4>(ProtocolVersion::V3_1_1, 60);
        let mut out = [0u8; 64];
        let step = p
            .handle(&[0x32, 6, 0, 1, b't', 0, 3, b'm'], T0, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(&out[..step.written], &[0x40, 2, 0, 3]);
    }

    #[test]
    fn keep_alive_pings_on_time_and_detects_a_dead_link() {
        // [MQTT-3.1.2-23] PINGREQ when nothing was sent for the keep alive; no PINGRESP within
        // another keep alive means the connection is gone.
        let mut p = connected::<4>(ProtocolVersion::V3_1_1, 10);
        let mut out = [0u8; 64];
        assert_eq!(p.next_deadline(), Some(T0 + 10_000));
        assert_eq!(p.poll(T0 + 9_999, &mut out), Ok(0));
        assert_eq!(p.poll(T0 + 10_000, &mut out), Ok(2));
        assert_eq!(&out[..2], &[0xc0, 0]);
        assert_eq!(p.poll(T0 + 15_000, &mut out), Ok(0));
        p.handle(&[0xd0, 0], T0 + 15_000, &mut out).unwrap();
        assert_eq!(p.next_deadline(), Some(T0 + 20_000));
        assert_eq!(p.poll(T0 + 20_000, &mut out), Ok(2));
        assert_eq!(p.poll(T0 + 30_000, &mut out), Err(Error::PingTimeout));
        assert!(!p.is_connected());
    }

    #[test]
    fn inflight_is_bounded() {
        let mut p = connected::<2>(ProtocolVersion::V3_1_1, 60);
        let mut out = [0u8; 64];
        p.publish("a", b"1", QoS::AtLeastOnce, false, T0, &mut out)
            .unwrap();
        p.publish("a", b"2", QoS::AtLeastOnce, false, T0, &mut out)
            .unwrap();
        assert_eq!(
            p.publish("a", b"3", QoS::AtLeastOnce, false, T0, &mut out),
            Err(Error::InflightFull)
        );
        // QoS 0 needs no slot.
        assert!(p
            .publish("a", b"4", QoS::AtMostOnce, false, T0, &mut out)
            .is_ok());
    }

    #[test]
    fn split_input_waits_for_the_whole_packet() {
        let mut p = connected::<4>(ProtocolVersion::V3_1_1, 60);
        let mut out = [0u8; 64];
        let publish = [0x30, 3, 0, 1, b't'];
        for cut in 0..publish.len() {
            assert!(p.handle(&publish[..cut], T0, &mut out).unwrap().is_none());
        }
        assert_eq!(
            p.handle(&publish, T0, &mut out).unwrap().unwrap().consumed,
            5
        );
    }
}
