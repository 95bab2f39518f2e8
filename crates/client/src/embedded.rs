//! The board client: drives [`Protocol`] over any `embedded-io-async` stream (an embassy-net
//! TCP socket, an embedded-tls session), with buffers the caller owns.
//!
//! No allocator, no timer of its own: the caller passes a clock (milliseconds from any fixed
//! point) and bounds waits with its executor's timer, calling [`Client::keep_alive`] at
//! [`Client::next_deadline`]. Messages borrow the receive buffer until the next call.

use embedded_io_async::{Read, Write};
use tern_proto::{
    decode, Packet, PacketId, ProtocolVersion, QoS, Subscription, SubscriptionOptions, TopicFilter,
};

use crate::core::{Error, Event, Options, Protocol};

/// What can go wrong on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError<E> {
    /// The stream failed.
    Io(E),
    /// The protocol failed (see [`Error`]).
    Protocol(Error),
    /// The broker closed the connection.
    Closed,
    /// A packet does not fit the receive buffer.
    BufferFull,
    /// CONNACK refused the connection with this code.
    Refused(tern_proto::ReasonCode),
}

impl<E> From<Error> for ClientError<E> {
    fn from(e: Error) -> Self {
        ClientError::Protocol(e)
    }
}

/// An MQTT client on a board. `N` bounds QoS 1/2 messages in flight.
pub struct Client<'b, T, const N: usize = 8> {
    io: T,
    protocol: Protocol<N>,
    clock: fn() -> u64,
    rx: &'b mut [u8],
    rx_len: usize,
    /// Bytes of `rx` the last returned event still borrows; dropped at the next call.
    rx_used: usize,
    tx: &'b mut [u8],
}

impl<'b, T: Read + Write, const N: usize> Client<'b, T, N> {
    /// A client over `io`, receiving into `rx` and encoding into `tx` (each at least as large
    /// as the largest packet), reading the time from `clock` in milliseconds.
    pub fn new(io: T, rx: &'b mut [u8], tx: &'b mut [u8], clock: fn() -> u64) -> Self {
        Client {
            io,
            protocol: Protocol::new(),
            clock,
            rx,
            rx_len: 0,
            rx_used: 0,
            tx,
        }
    }

    /// The protocol state, for inspection.
    pub fn protocol(&self) -> &Protocol<N> {
        &self.protocol
    }

    /// Gives back the stream, to close it.
    pub fn into_io(self) -> T {
        self.io
    }

    /// Sends CONNECT and waits for CONNACK; returns Session Present.
    pub async fn connect(&mut self, options: &Options<'_>) -> Result<bool, ClientError<T::Error>> {
        let n = self.protocol.connect(options, (self.clock)(), self.tx)?;
        self.send(n).await?;
        loop {
            match self.next().await? {
                Event::Connected { session_present } => return Ok(session_present),
                Event::Refused(code) => return Err(ClientError::Refused(code)),
                _ => continue,
            }
        }
    }

    /// Publishes a message. QoS 1 and 2 return the packet identifier; completion arrives as
    /// [`Event::Published`] from [`Client::next`].
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Option<PacketId>, ClientError<T::Error>> {
        let (n, id) =
            self.protocol
                .publish(topic, payload, qos, retain, (self.clock)(), self.tx)?;
        self.send(n).await?;
        Ok(id)
    }

    /// Subscribes to one filter; the grant arrives as [`Event::Subscribed`].
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
    ) -> Result<PacketId, ClientError<T::Error>> {
        let filter =
            TopicFilter::new(filter).map_err(|e| ClientError::Protocol(Error::Decode(e)))?;
        let subs = [Subscription {
            filter,
            options: SubscriptionOptions::new(qos),
        }];
        let (n, id) = self.protocol.subscribe(&subs, (self.clock)(), self.tx)?;
        self.send(n).await?;
        Ok(id)
    }

    /// Sends PINGREQ if it is time; fails if the broker stopped answering. Call it at
    /// [`Client::next_deadline`].
    pub async fn keep_alive(&mut self) -> Result<(), ClientError<T::Error>> {
        let n = self.protocol.poll((self.clock)(), self.tx)?;
        self.send(n).await
    }

    /// When [`Client::keep_alive`] must run next, in the clock's milliseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        self.protocol.next_deadline()
    }

    /// Sends DISCONNECT.
    pub async fn disconnect(&mut self) -> Result<(), ClientError<T::Error>> {
        let n = self.protocol.disconnect(self.tx)?;
        self.send(n).await
    }

    async fn send(&mut self, n: usize) -> Result<(), ClientError<T::Error>> {
        if n > 0 {
            self.io
                .write_all(&self.tx[..n])
                .await
                .map_err(ClientError::Io)?;
            self.io.flush().await.map_err(ClientError::Io)?;
        }
        Ok(())
    }

    /// Waits for the next event, answering QoS 1/2 handshakes as packets arrive. A message
    /// borrows the receive buffer until the next call.
    pub async fn next(&mut self) -> Result<Event<'_>, ClientError<T::Error>> {
        let (consumed, event) = loop {
            if self.rx_used > 0 {
                self.rx.copy_within(self.rx_used..self.rx_len, 0);
                self.rx_len -= self.rx_used;
                self.rx_used = 0;
            }
            let now = (self.clock)();
            let step = self
                .protocol
                .handle(&self.rx[..self.rx_len], now, self.tx)?;
            match step {
                Some(step) => {
                    let (consumed, written) = (step.consumed, step.written);
                    let event = step.event.map(Stored::from);
                    self.rx_used = consumed;
                    self.send(written).await?;
                    if let Some(event) = event {
                        break (consumed, event);
                    }
                }
                None => {
                    if self.rx_len == self.rx.len() {
                        return Err(ClientError::BufferFull);
                    }
                    let n = self
                        .io
                        .read(&mut self.rx[self.rx_len..])
                        .await
                        .map_err(ClientError::Io)?;
                    if n == 0 {
                        self.protocol.connection_lost();
                        return Err(ClientError::Closed);
                    }
                    self.rx_len += n;
                }
            }
        };
        Ok(event.restore(&self.rx[..consumed], self.protocol.version()))
    }
}

/// An event with its borrowed parts left behind, to be looked at again in the buffer once the
/// loop that found it has let go of it.
#[allow(clippy::large_enum_variant)] // lives only for one call, on the stack
enum Stored {
    Plain(Event<'static>),
    Borrowed,
}

impl From<Event<'_>> for Stored {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Connected { session_present } => {
                Stored::Plain(Event::Connected { session_present })
            }
            Event::Refused(c) => Stored::Plain(Event::Refused(c)),
            Event::Published { packet_id, reason } => {
                Stored::Plain(Event::Published { packet_id, reason })
            }
            Event::Unsubscribed { packet_id } => Stored::Plain(Event::Unsubscribed { packet_id }),
            Event::Pong => Stored::Plain(Event::Pong),
            Event::Disconnected(c) => Stored::Plain(Event::Disconnected(c)),
            Event::Message(_) | Event::Subscribed { .. } => Stored::Borrowed,
        }
    }
}

impl Stored {
    fn restore(self, packet: &[u8], version: ProtocolVersion) -> Event<'_> {
        match self {
            Stored::Plain(e) => e,
            Stored::Borrowed => match decode(packet, version, tern_proto::MAX_PACKET_SIZE) {
                Ok(Some((Packet::Publish(p), _))) => Event::Message(p),
                Ok(Some((Packet::SubAck(s), _))) => Event::Subscribed {
                    packet_id: s.packet_id,
                    codes: s.codes,
                },
                // The bytes decoded a moment ago; they decode the same again.
                _ => Event::Pong,
            },
        }
    }
}
