//! One client connection's protocol state: the packets it sends are handled here, and the
//! packets it must receive are written here, into a buffer its transport sends.
//!
//! No sockets and no clock: the server crate reads bytes, decodes them, calls
//! [`Connection::handle`] with the time, and writes what lands in the output buffer.
//! Handlers for each packet type live in `handle/`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::{
    ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, PublishBuf,
    ReasonCode,
};
use tracing::info;

use crate::access::{Credentials, Identity};
use crate::broker::Broker;
use crate::handle;
use crate::message::Message;
use crate::persist;
use crate::session::Session;
use tern_store::Record;

/// Why a connection must close. MQTT 5 clients are told with DISCONNECT: the reason code,
/// and the detail as its Reason String.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The reason code.
    pub reason: ReasonCode,
    /// A sentence for a person reading the client's log.
    pub detail: Option<Cow<'static, str>>,
}

impl Close {
    /// A close with `reason` and no detail.
    pub fn new(reason: ReasonCode) -> Self {
        Close {
            reason,
            detail: None,
        }
    }

    /// Adds the sentence that explains the close.
    pub fn because(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// How a connection ended, for the will and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent DISCONNECT with this reason code.
    Disconnected(ReasonCode),
    /// The broker closed it for this reason (protocol error, keep alive, takeover...).
    Closed(ReasonCode),
    /// The network connection was lost.
    Lost,
    /// The broker is shutting down.
    Shutdown,
}

/// A will whose Will Delay Interval has not run out: the transport publishes it with
/// [`Broker::publish_delayed_will`] once `delay` has passed.
#[derive(Debug)]
pub struct DelayedWill {
    /// The session it belongs to.
    pub session: Arc<Session>,
    /// The message.
    pub message: PublishBuf,
    /// How long to wait.
    pub delay: Duration,
}

/// The state of a connection after a successful CONNECT.
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) version: ProtocolVersion,
    pub(crate) client_id: Arc<str>,
    /// The User Name the client authenticated with.
    pub(crate) username: Option<Arc<str>>,
    pub(crate) keep_alive: u16,
    /// The client's Receive Maximum: QoS 1/2 messages it accepts in flight.
    pub(crate) client_receive_maximum: u16,
    /// The client's Maximum Packet Size.
    pub(crate) client_max_packet: u32,
    /// Topic aliases both ways and the last topic published, once needed (boxed: most
    /// clients never use aliases, and every idle connection would carry the empty maps).
    pub(crate) aliases: Option<Box<Aliases>>,
    /// The client's Topic Alias Maximum: aliases the broker may set toward it.
    pub(crate) client_alias_maximum: u16,
    /// The will and its delay in seconds (boxed, for the same reason).
    pub(crate) will: Option<Box<(PublishBuf, u32)>>,
    /// The store position the output written so far depends on: acknowledgements of what
    /// was stored, and deliveries recorded as sent.
    pub(crate) needs: u64,
    /// The forwarder's ticket (cluster mode) the output written so far depends on: the
    /// acknowledgements of publications the cluster must have first.
    pub(crate) forwarded: u64,
    /// Handshake steps recorded by the handlers, written at the next flush.
    pub(crate) steps: Vec<persist::Step>,
    /// Whether one of `steps` must be durable before the output leaves.
    pub(crate) steps_wait: bool,
    /// With flow control: the sessions whose full queues took this client's messages since
    /// the transport last asked ([`Connection::take_held_by`]).
    pub(crate) held_by: Option<Vec<Arc<Session>>>,
}

/// The MQTT 5 topic aliases of one connection, and the topic it last published to.
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Set by the client toward the broker.
    pub(crate) incoming: HashMap<u16, Arc<str>>,
    /// Set by the broker toward the client.
    pub(crate) outgoing: HashMap<Arc<str>, u16>,
    /// The topic of the client's last PUBLISH: a client most often publishes to the same
    /// topic again, which then shares this one instead of being allocated per message.
    pub(crate) last_published: Option<Arc<str>>,
    /// QoS 0 publications of this turn to one topic, not routed yet (see
    /// [`Connection::handle_in_turn`]).
    pub(crate) unrouted: Vec<Arc<crate::message::Message>>,
}

/// Where a connection comes from, as its transport knows it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The peer's address, as text.
    pub peer: String,
    /// Whether the listener is bound to a loopback address.
    pub loopback: bool,
    /// The listener's configured word on anonymous clients, if any.
    pub allow_anonymous: Option<bool>,
    /// The name from the client's TLS certificate, when the listener uses it as user name.
    pub certificate_name: Option<String>,
    /// Set when the transport must refuse this client at CONNECT (a per-address limit): the
    /// CONNACK carries this code.
    pub refusal: Option<ReasonCode>,
}

/// One client connection.
pub struct Connection {
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: u64,
    pub(crate) origin: Origin,
    pub(crate) attached: Option<Attached>,
    /// The outcome of authenticating the coming CONNECT, if the transport did it already.
    pub(crate) authentication: Option<Result<Identity, ReasonCode>>,
    /// Whether the transport stops reading while subscribers' full queues hold this
    /// client's publications back ([`Connection::enable_flow_control`]).
    pub(crate) flow_control: bool,
}

/// Appends `packet`, encoded in `version`, to `out`.
pub(crate) fn send(out: &mut Vec<u8>, packet: &Packet<'_>, version: ProtocolVersion) {
    // Packets the broker builds are within the codec's limits by construction; one that is
    // not would be a broker bug, and is dropped rather than sent malformed.
    let Ok(len) = packet.encoded_len(version) else {
        tracing::error!(?packet, "could not encode a packet the broker built");
        return;
    };
    let start = out.len();
    out.resize(start + len, 0);
    if packet.encode(version, &mut out[start..]).is_err() {
        out.truncate(start);
    }
}

impl Connection {
    /// A connection from `origin` that has not sent CONNECT yet.
    pub fn new(broker: Arc<Broker>, origin: Origin) -> Self {
        let id = broker.next_connection_id();
        Connection {
            broker,
            id,
            origin,
            attached: None,
            authentication: None,
            flow_control: false,
        }
    }

    /// Promises that the transport stops reading this client's packets while
    /// [`Connection::take_held_by`] names sessions that still hold it back
    /// ([`Session::holding_back`]). Without it, QoS 1/2 messages beyond a full queue are
    /// dropped; with it they are queued and the client is slowed instead.
    pub fn enable_flow_control(&mut self) {
        self.flow_control = true;
    }

    /// Whether a subscriber's full queue took one of this client's messages since the last
    /// [`Connection::take_held_by`]: the transport handles none of its packets until then.
    pub fn is_held(&self) -> bool {
        self.attached
            .as_ref()
            .and_then(|a| a.held_by.as_ref())
            .is_some_and(|h| !h.is_empty())
    }

    /// The sessions whose full queues took this client's messages since the last call: the
    /// transport reads nothing more from the client until none of them is
    /// [`Session::holding_back`].
    pub fn take_held_by(&mut self) -> Vec<Arc<Session>> {
        self.attached
            .as_mut()
            .and_then(|a| a.held_by.as_mut())
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// What `c` presents for authentication, with what the transport knows of the client.
    pub fn credentials(&self, c: &Connect<'_>) -> Credentials {
        Credentials {
            client_id: c.client_id.to_owned(),
            username: c.username.map(str::to_owned),
            password: c.password.map(<[u8]>::to_vec),
            peer: self.origin.peer.clone(),
            certificate_name: self.origin.certificate_name.clone(),
            loopback: self.origin.loopback,
            allow_anonymous: self.origin.allow_anonymous,
        }
    }

    /// Hands in the outcome of authenticating the CONNECT about to be handled, so the broker
    /// does not authenticate it again on the async worker.
    pub fn set_authentication(&mut self, outcome: Result<Identity, ReasonCode>) {
        self.authentication = Some(outcome);
    }

    /// Whether the CONNECT about to be handled was authenticated successfully.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.authentication, Some(Ok(_)))
    }

    /// The version to decode the next packet in (3.1.1 until CONNECT says otherwise; CONNECT
    /// itself decodes in the version it announces).
    pub fn version(&self) -> ProtocolVersion {
        self.attached
            .as_ref()
            .map_or(ProtocolVersion::V3_1_1, |a| a.version)
    }

    /// The largest packet accepted from the client.
    pub fn max_packet_size(&self) -> u32 {
        self.broker.limits.max_packet_size
    }

    /// How long the client may stay silent: 1.5 times its keep alive [MQTT-3.1.2-24]; `None`
    /// if it asked for none, or has not connected.
    pub fn silence_limit(&self) -> Option<Duration> {
        let a = self.attached.as_ref()?;
        (a.keep_alive > 0).then(|| Duration::from_millis(u64::from(a.keep_alive) * 1500))
    }

    /// Whether the next message queued for this client is queued for other sessions too: a
    /// fan-out, whose publisher is likely to add more before long. A transport that waits a
    /// moment before [`Connection::flush`] then writes more messages per system call.
    pub fn fan_out_queued(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| {
            a.session
                .lock()
                .queue
                .get(0)
                .is_some_and(|o| Arc::strong_count(&o.message) > 2)
        })
    }

    /// The session, once connected: its `wake` fires when there is something to send.
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.attached.as_ref().map(|a| &a.session)
    }

    /// The store position that must be durable before the output of this connection is sent
    /// (0: none). Acknowledging a message before it is on disk would promise what a crash can
    /// break.
    /// Writes the handshake steps still pending first, so that nothing the output depends on
    /// is left out, whichever way the turn ended.
    pub fn durable_needed(&mut self) -> u64 {
        match self.attached.as_mut() {
            Some(a) => {
                persist::write_steps(&self.broker, a);
                a.needs
            }
            None => 0,
        }
    }

    /// The forwarder's ticket that must be confirmed before the output of this connection is
    /// sent (0: none): in cluster mode, a publication is acknowledged once the cluster keeps
    /// it, not only this node.
    pub fn forward_needed(&self) -> u64 {
        self.attached.as_ref().map_or(0, |a| a.forwarded)
    }

    /// The client identifier, once connected.
    pub fn client_id(&self) -> Option<&str> {
        self.attached.as_ref().map(|a| &*a.client_id)
    }

    /// Handles one packet from the client, appending any answer to `out`.
    pub fn handle(
        &mut self,
        packet: Packet<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        self.handle_ref(&packet, now, out)
    }

    /// [`Connection::handle`] for a packet the caller keeps: a decoded packet is several
    /// hundred bytes, and every PUBLISH passed on by value was copied on the way.
    pub fn handle_ref(
        &mut self,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        let handled = self.dispatch(packet, now, out, false);
        if let Some(a) = self.attached.as_mut() {
            handle::publish::route_unrouted(&self.broker, a);
        }
        handled
    }

    /// [`Connection::handle_ref`] for one of the packets of a turn (what one read brought):
    /// QoS 0 publications to one topic may wait to be routed together until a packet of
    /// another kind or to another topic, [`Connection::flush`] or [`Connection::end`], so the
    /// turn must end with one of those. Subscribers see the same messages in the same order
    /// [MQTT-4.6.0-6]; each subscriber's lock is taken once for up to 64 of them.
    pub fn handle_in_turn(
        &mut self,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        self.dispatch(packet, now, out, true)
    }

    fn dispatch(
        &mut self,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut Vec<u8>,
        batch: bool,
    ) -> Result<(), Close> {
        let Some(attached) = self.attached.as_mut() else {
            // [MQTT-3.1.0-1] the first packet must be CONNECT.
            return match packet {
                Packet::Connect(c) => handle::connect::handle_connect(self, *c, now, out),
                _ => Err(Close::new(ReasonCode::PROTOCOL_ERROR)
                    .because("the first packet must be CONNECT")),
            };
        };
        if !matches!(packet, Packet::Publish(_)) {
            handle::publish::route_unrouted(&self.broker, attached);
        }
        match packet {
            Packet::Publish(p) => {
                handle::publish::handle_publish(&self.broker, attached, p, now, out, batch)
            }
            Packet::PubAck(a) => handle::ack::handle_puback(&self.broker, attached, *a),
            Packet::PubRec(a) => handle::ack::handle_pubrec(&self.broker, attached, *a, out),
            Packet::PubRel(a) => handle::ack::handle_pubrel(&self.broker, attached, *a, out),
            Packet::PubComp(a) => handle::ack::handle_pubcomp(&self.broker, attached, *a),
            Packet::Subscribe(s) => {
                handle::subscribe::handle_subscribe(&self.broker, attached, *s, now, out)
            }
            Packet::Unsubscribe(u) => {
                handle::subscribe::handle_unsubscribe(&self.broker, attached, *u, out)
            }
            Packet::PingReq => {
                send(out, &Packet::PingResp, attached.version);
                Ok(())
            }
            Packet::Disconnect(d) => handle::connect::handle_disconnect(attached, *d),
            // [MQTT-3.1.0-2] a second CONNECT; AUTH without an authentication method; and
            // packets only a server sends.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Close::new(ReasonCode::PROTOCOL_ERROR)
                .because("a client may not send this packet now")),
        }
    }

    /// Answers a packet that failed to decode: before CONNECT, a CONNECT the broker cannot
    /// accept gets its CONNACK refusal [MQTT-3.1.2-2]; after, an MQTT 5 client gets DISCONNECT
    /// with the reason [MQTT-4.13.1-1]. Returns why the connection closes.
    pub fn reject(&mut self, err: DecodeError, out: &mut Vec<u8>) -> Close {
        let reason = err.reason_code();
        if let (None, DecodeError::UnsupportedProtocolVersion(level)) = (&self.attached, err) {
            // Answer in the version the client can read: 3.1.1's CONNACK for anything older
            // than MQTT 5, MQTT 5's for newer.
            let version = if level > 5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            let connack = ConnAck {
                session_present: false,
                code: reason,
                properties: Properties::default(),
            };
            send(out, &Packet::ConnAck(connack), version);
        }
        let close = Close::new(reason).because(err.to_string());
        self.close(&close, out);
        close
    }

    /// Tells an MQTT 5 client why the broker is closing the connection: DISCONNECT with the
    /// reason code and, as Reason String, the detail (section 3.14.2.2.3). A 3.1.1 connection just
    /// closes.
    pub fn close(&mut self, close: &Close, out: &mut Vec<u8>) {
        let Some(a) = &self.attached else { return };
        if a.version.is_v5() {
            let disconnect = Disconnect {
                reason: close.reason,
                properties: Properties {
                    reason_string: close.detail.as_deref(),
                    ..Properties::default()
                },
            };
            send(out, &Packet::Disconnect(disconnect), a.version);
        }
    }

    /// Writes queued messages the client may receive now into `out`, and notices a takeover.
    pub fn flush(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<(), Close> {
        match self.attached.as_mut() {
            Some(a) => {
                handle::publish::route_unrouted(&self.broker, a);
                handle::deliver::flush(&self.broker, self.id, a, now, out)
            }
            None => Ok(()),
        }
    }

    /// Ends the connection: detaches the session (removing it if it expires at once) and
    /// publishes the will if the end calls for it. A will with a delay is handed back.
    pub fn end(&mut self, how: End, now: Instant) -> Option<DelayedWill> {
        let mut a = self.attached.take()?;
        handle::publish::route_unrouted(&self.broker, &mut a);
        persist::write_steps(&self.broker, &mut a);
        self.broker
            .stats
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        info!(client_id = %a.client_id, peer = %self.origin.peer, end = ?how, "client disconnected");
        // [MQTT-3.1.2-8] the will is published unless the client disconnected normally;
        // [MQTT-3.14.4-3] DISCONNECT 0x04 asks for it anyway. A broker shutdown is not the
        // client's failure.
        let publish_will = match how {
            End::Disconnected(reason) => reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            End::Closed(_) | End::Lost => true,
            End::Shutdown => false,
        };
        let will = a.will.map(|w| *w).filter(|_| publish_will);
        let mut journal = self.broker.journal();
        let expiry = {
            let mut state = a.session.lock();
            if state.owner != Some(self.id) {
                // Another connection took the session over; it is theirs now.
                None
            } else {
                state.owner = None;
                if state.pushback.release() {
                    // Publishers waiting for this queue go on: it is not drained while away.
                    self.broker.drained.notify_waiters();
                }
                state.disconnected_at = Some(now);
                state.peer = None;
                state.connected_since = None;
                if let (Some(j), Some(store)) = (journal.as_mut(), self.broker.store()) {
                    if state.expiry_interval == 0 && a.session.is_persistent() {
                        // DISCONNECT set the expiry to 0: the session ends here.
                        a.session.set_persistent(false);
                        j.push(&Record::SessionDrop {
                            client: &a.client_id,
                        });
                    } else if a.session.is_persistent() {
                        // The will stays in the store until it is published.
                        let pending = will.as_ref().filter(|(_, delay)| *delay > 0);
                        let record = persist::session_record(store, &a.client_id, &state, pending);
                        j.push(&record);
                    }
                }
                Some(state.expiry_interval)
            }
        };
        persist::commit(journal);
        // A session another connection (or node) took over keeps its messages: handing them
        // to another member as well would deliver them twice.
        if how != End::Shutdown && expiry.is_some() {
            self.broker.hand_over_shared(&a.session);
        }
        if expiry == Some(0) {
            let mut sessions = self.broker.sessions();
            if sessions
                .get(&a.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &a.session))
            {
                sessions.remove(&a.client_id);
                drop(sessions);
                self.broker.drop_subscriptions(&a.session);
            }
        }
        let (message, delay) = will?;
        // [MQTT-3.1.3-9] the will waits for the shorter of its delay and the session's expiry.
        let delay = delay.min(expiry.unwrap_or(0));
        if delay == 0 {
            self.broker.publish_will(&message, now);
            None
        } else {
            Some(DelayedWill {
                session: a.session,
                message,
                delay: Duration::from_secs(u64::from(delay)),
            })
        }
    }
}

impl Broker {
    /// Publishes a will message now.
    pub fn publish_will(&self, will: &PublishBuf, now: Instant) {
        let p = will.as_publish();
        let message = Message {
            topic: Arc::from(will.topic.as_str()),
            payload: will.payload.as_slice().into(),
            qos: p.qos.min(self.limits.maximum_qos),
            retain: p.retain,
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: will.properties.clone(),
            publisher: Arc::from(""),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
        };
        self.route(Arc::new(message));
    }

    /// Publishes a delayed will if its session has not been resumed by a new connection
    /// since [MQTT-3.1.3-9], and forgets it in the store.
    pub fn publish_delayed_will(&self, will: DelayedWill, now: Instant) {
        let mut journal = self.journal();
        {
            let state = will.session.lock();
            if state.owner.is_some() {
                return;
            }
            if let (Some(j), Some(store), true) =
                (journal.as_mut(), self.store(), will.session.is_persistent())
            {
                j.push(&persist::session_record(
                    store,
                    &will.session.client_id,
                    &state,
                    None,
                ));
            }
        }
        persist::commit(journal);
        self.publish_will(&will.message, now);
    }
}
