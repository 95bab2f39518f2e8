//! One client connection: read, decode, hand to the broker, write what it answers.
//!
//! Also where the abuse limits that need the clock live: the CONNECT deadline, the delay on
//! logins from addresses that failed before, and per-client message and byte rates (excess is
//! throttled by not reading the socket, so nothing piles up in memory), and flow control: a
//! client whose QoS 1/2 messages went into a subscriber's full queue is not read until that
//! queue drains ([`Hold`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Broker, Close, Connection, DelayedWill, End, Origin, Session};
use tern_proto::{decode, Packet, ReasonCode};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use crate::access::FileAccess;
use crate::cluster::SessionMover;
use crate::metrics::Metrics;
use crate::now;
use crate::spare::Spare;
use crate::transport::Transport;

/// A deadline far enough away to never come (keep alive 0).
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a connection task needs besides its stream.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) broker: Arc<Broker>,
    /// The users file, when access is decided by it (for failed-login delays).
    pub(crate) users: Option<Arc<FileAccess>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_message_rate: u32,
    pub(crate) max_bandwidth: u64,
    /// How long a held publisher waits for a subscriber that takes nothing from its queue
    /// (zero: publishers are never held).
    pub(crate) slow_subscriber_timeout: Duration,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The same stop, as connections wait for it.
    pub(crate) stop: Arc<Stop>,
    /// What the server counts (refused logins, handling time).
    pub(crate) metrics: Arc<Metrics>,
    /// In cluster mode: brings a client's session from the node it used before.
    pub(crate) sessions: Option<Arc<SessionMover>>,
    /// In cluster mode: the highest forwarder ticket the cluster's stream has confirmed.
    pub(crate) confirmed: Option<watch::Receiver<u64>>,
}

/// The server's stop, as a connection waits for it: a flag and a notification, whose waiter
/// is half the size of a `watch` receiver's in every idle connection's task.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopping: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Tells every connection to close.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Returns once the server stops.
    async fn stopped(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before looking at the flag, so a stop in between is not missed.
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::SeqCst) {
            notified.await;
        }
    }
}

/// The longest a connection's output waits for the cluster to confirm its publications
/// (the cluster link gives up after 30 s; this is a safety net).
const CONFIRM_WAIT: Duration = Duration::from_secs(40);

/// A token bucket per client: messages and bytes per second, a second's worth of burst.
struct Throttle {
    rate_msgs: f64,
    rate_bytes: f64,
    msgs: f64,
    bytes: f64,
    refilled: Instant,
}

impl Throttle {
    fn new(ctx: &Context) -> Option<Throttle> {
        if ctx.max_message_rate == 0 && ctx.max_bandwidth == 0 {
            return None;
        }
        let rate = |r: f64| if r == 0.0 { f64::INFINITY } else { r };
        let (m, b) = (
            rate(f64::from(ctx.max_message_rate)),
            rate(ctx.max_bandwidth as f64),
        );
        Some(Throttle {
            rate_msgs: m,
            rate_bytes: b,
            msgs: m,
            bytes: b,
            refilled: Instant::now(),
        })
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.msgs = (self.msgs + dt * self.rate_msgs).min(self.rate_msgs);
        self.bytes = (self.bytes + dt * self.rate_bytes).min(self.rate_bytes);
    }

    /// PUBLISH packets and bytes the client may send now.
    fn allowance(&mut self) -> Allowance {
        self.refill();
        let whole = |v: f64| {
            if v.is_infinite() {
                usize::MAX
            } else {
                v.max(0.0) as usize
            }
        };
        Allowance {
            publishes: whole(self.msgs),
            bytes: whole(self.bytes),
        }
    }

    /// Spends what was handled; returns how long to stop reading (and handling) to pay it
    /// back, or to earn the next message when `starved`.
    fn spend(&mut self, msgs: usize, bytes: usize, starved: bool) -> Option<Duration> {
        self.refill();
        self.msgs -= msgs as f64;
        self.bytes -= bytes as f64;
        // Starved: wait until the next packet can go; otherwise until the debt is paid.
        let floor = if starved { 1.0 } else { 0.0 };
        let wait =
            ((floor - self.msgs) / self.rate_msgs).max((floor - self.bytes) / self.rate_bytes);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait))
    }
}

/// What the throttle lets a client's packets consume in one turn.
#[derive(Clone, Copy)]
struct Allowance {
    publishes: usize,
    bytes: usize,
}

impl Allowance {
    const UNLIMITED: Allowance = Allowance {
        publishes: usize::MAX,
        bytes: usize::MAX,
    };
}

/// What one turn of handling consumed.
struct Handled {
    publishes: usize,
    bytes: usize,
    /// Packets are left because the allowance ran out.
    starved: bool,
}

/// A publisher held back: the sessions whose full queues took its messages, with how many
/// messages each had taken from its queue when last looked at.
struct Hold {
    sessions: Vec<(Arc<Session>, u64)>,
    /// When to look for progress again.
    check_at: Instant,
}

impl Hold {
    /// A hold on the sessions among `held_by` that still hold back. With none left it is
    /// released at once, which also handles the packets left unhandled when it began.
    fn new(held_by: Vec<Arc<Session>>, timeout: Duration) -> Hold {
        Hold {
            sessions: held_by
                .into_iter()
                .filter_map(|s| s.holding_back().map(|taken| (s, taken)))
                .collect(),
            check_at: Instant::now() + timeout,
        }
    }

    /// Waits until no session holds back any more (`Released`) or the time to look for
    /// progress has come (`HoldCheck`).
    async fn released(&self, broker: &Broker) -> Event {
        loop {
            let drained = broker.drained.notified();
            tokio::pin!(drained);
            // Registered before looking, so a drain between the look and the wait is seen.
            drained.as_mut().enable();
            if self
                .sessions
                .iter()
                .all(|(s, _)| s.holding_back().is_none())
            {
                return Event::Released;
            }
            tokio::select! {
                _ = drained => {}
                _ = sleep_until(self.check_at) => return Event::HoldCheck,
            }
        }
    }

    /// Gives up on the sessions that took nothing from their queues since the last look;
    /// returns whether any session still holds back.
    fn check(&mut self, timeout: Duration) -> bool {
        self.sessions
            .retain_mut(|(session, seen)| match session.holding_back() {
                None => false,
                Some(taken) if taken == *seen => {
                    session.give_up_holding();
                    false
                }
                Some(taken) => {
                    *seen = taken;
                    true
                }
            });
        self.check_at = Instant::now() + timeout;
        !self.sessions.is_empty()
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Wake,
    Deadline,
    Shutdown,
    /// Handle the packets that wait in the input buffer (after the throttle or a hold).
    Resume,
    Released,
    HoldCheck,
}

/// One connection's state between its events.
struct Link {
    conn: Connection,
    transport: Transport,
    ip: IpAddr,
    /// Bytes read and not yet handled. Buffers grow only when a client sends or is sent
    /// something.
    input: Vec<u8>,
    out: Vec<u8>,
    /// The keep-alive deadline (before CONNECT: the connect deadline).
    deadline: Instant,
    throttle: Option<Box<Throttle>>,
    throttled_until: Option<Instant>,
    held: Option<Box<Hold>>,
    /// The store position and cluster ticket the output was last known to be safe up to.
    durable_seen: u64,
    forwarded_seen: u64,
}

/// Serves one connection until it ends; `guard` lives as long as it does.
///
/// Not an `async fn`: its arguments would stay in the task's state for the connection's
/// whole life next to the `Link` built from them.
pub(crate) fn serve<G: Send + 'static>(
    ctx: Arc<Context>,
    transport: Transport,
    origin: Origin,
    ip: IpAddr,
    guard: G,
) -> impl std::future::Future<Output = ()> + Send {
    let mut conn = Connection::new(ctx.broker.clone(), origin);
    if !ctx.slow_subscriber_timeout.is_zero() {
        conn.enable_flow_control();
    }
    let mut link = Link {
        conn,
        transport,
        ip,
        input: Vec::new(),
        out: Vec::new(),
        deadline: Instant::now() + ctx.connect_timeout,
        throttle: Throttle::new(&ctx).map(Box::new),
        throttled_until: None,
        held: None,
        durable_seen: 0,
        forwarded_seen: 0,
    };
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice
    // (as captured and as moved into its body), and `link` is most of a connection's state.
    async move {
        let end = loop {
            let event = link.next_event(&ctx).await;
            // Boxed: what acting on an event needs (decoding, waiting for the store or the
            // cluster, writing) exists only while it runs; inline, every idle connection's task
            // would keep room for it.
            let acting = Box::pin(link.act(&ctx, event));
            if let Err(end) = acting.await {
                break end;
            }
        };
        Box::pin(link.transport.shutdown()).await;
        if let Some(will) = link.conn.end(end, now()) {
            tokio::spawn(publish_will_later(ctx.broker.clone(), will));
        }
        drop(guard);
    }
}

impl Link {
    /// Waits for what the connection must act on next. This wait is what an idle
    /// connection's task holds.
    async fn next_event(&mut self, ctx: &Context) -> Event {
        let session = self.conn.session().cloned();
        let wake = async {
            match &session {
                Some(s) => s.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let reading = self.throttled_until.is_none() && self.held.is_none();
        // One timer for both deadlines (each costs an idle connection 112 bytes): the
        // throttle's end comes first when there is one, and the keep-alive deadline is
        // checked again after it. A held publisher's packets wait for the hold first.
        let (timer, timer_event) = match self.throttled_until {
            Some(t) if t < self.deadline && self.held.is_none() => (t, Event::Resume),
            _ => (self.deadline, Event::Deadline),
        };
        // Boxed: only a held publisher pays for the wait's state.
        let held = &self.held;
        let release = async {
            match held {
                Some(hold) => Box::pin(hold.released(&ctx.broker)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.transport.read_into(&mut self.input), if reading => Event::Read(r),
            e = release => e,
            _ = wake => Event::Wake,
            _ = sleep_until(timer) => timer_event,
            _ = ctx.stop.stopped() => Event::Shutdown,
        }
    }

    /// Acts on `event`: handles what was read, sends what is due, closes on a deadline.
    /// `Err`: the connection ends.
    async fn act(&mut self, ctx: &Context, event: Event) -> Result<(), End> {
        let broker = &ctx.broker;
        let event = match event {
            Event::Released | Event::HoldCheck => {
                let go_on = matches!(event, Event::Released)
                    || !self
                        .held
                        .as_mut()
                        .is_some_and(|h| h.check(ctx.slow_subscriber_timeout));
                if !go_on {
                    return Ok(());
                }
                self.held = None;
                // The client's packets waited in the socket because of the hold.
                self.restart_keep_alive();
                if self.throttled_until.is_some() || self.input.is_empty() {
                    return Ok(());
                }
                Event::Resume
            }
            Event::Deadline if self.held.is_some() => {
                // Not the client's silence: its packets wait unread while it is held.
                self.restart_keep_alive();
                return Ok(());
            }
            Event::Wake if self.conn.fan_out_queued() => {
                // Let the other subscribers and the publisher's next reads run first: woken
                // by the first message of a fan-out, a subscriber wrote one or two messages
                // per system call, and the kernel's work per call was half the broker's time
                // (a 1-to-1000 fan-out went from 1.7 to 2.5-2.8 M deliveries/s). Only for
                // fan-outs: waiting costs a lone subscriber 30-40 us of latency.
                tokio::task::yield_now().await;
                Event::Wake
            }
            event => event,
        };
        Spare::Output.lend_to(&mut self.out);
        let mut yield_first = false;
        let (conn, out) = (&mut self.conn, &mut self.out);
        let step = match event {
            Event::Read(Ok(0) | Err(_)) => Err(End::Lost),
            Event::Read(Ok(_)) | Event::Resume => {
                let n = match event {
                    Event::Read(Ok(n)) => n,
                    _ => 0,
                };
                self.throttled_until = None;
                broker
                    .stats
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
                let allowance = self
                    .throttle
                    .as_deref_mut()
                    .map_or(Allowance::UNLIMITED, Throttle::allowance);
                // Boxed: handling holds a decoded packet and the CONNECT's credentials across
                // the authentication's await (1.3 KB), which most events do not need.
                let (step, handled) = Box::pin(handle_input(
                    ctx,
                    self.ip,
                    conn,
                    &mut self.input,
                    out,
                    allowance,
                ))
                .await;
                yield_first = (1..=2).contains(&handled.publishes);
                // [MQTT-3.1.2-22] any packet restarts the keep alive timer; keep alive 0 turns
                // it off [MQTT-3.1.2-10]. Before CONNECT the connect deadline stands.
                if self.conn.session().is_some() {
                    self.restart_keep_alive();
                }
                // Packets left in the buffer wait for the allowance; the socket is not read
                // meanwhile, so TCP pushes back on the client.
                let spent = self
                    .throttle
                    .as_deref_mut()
                    .and_then(|t| t.spend(handled.publishes, handled.bytes, handled.starved));
                if let Some(wait) = spent {
                    self.throttled_until = Some(Instant::now() + wait);
                }
                // Subscribers' full queues took this client's messages: read nothing more
                // until they drain, so TCP slows the client instead of the broker dropping
                // what it acknowledged.
                let held_by = self.conn.take_held_by();
                if !held_by.is_empty() {
                    broker.stats.publishers_held.fetch_add(1, Ordering::Relaxed);
                    self.held = Some(Box::new(Hold::new(held_by, ctx.slow_subscriber_timeout)));
                }
                step
            }
            Event::Wake => conn.flush(now(), out).map_err(|c| closed(conn, c, out)),
            Event::Released | Event::HoldCheck => Ok(()),
            Event::Deadline => {
                // [MQTT-3.1.2-24] silent for 1.5 times the keep alive, or no CONNECT in time.
                let close = match conn.session() {
                    Some(_) => Close::new(ReasonCode::KEEP_ALIVE_TIMEOUT)
                        .because("no packet for 1.5 times the keep alive"),
                    None => {
                        debug!(ip = %self.ip, "no CONNECT in time");
                        Close::new(ReasonCode::MAXIMUM_CONNECT_TIME).because("no CONNECT in time")
                    }
                };
                Err(closed(conn, close, out))
            }
            Event::Shutdown => {
                let close = Close::new(ReasonCode::SERVER_SHUTTING_DOWN)
                    .because("the broker is shutting down");
                conn.close(&close, out);
                Err(End::Shutdown)
            }
        };
        // What the output acknowledges or delivers must be on disk first (group commit: the
        // wait is shared with every connection that committed meanwhile).
        // `durable_seen` spares the store's lock on turns that add nothing to wait for.
        let needed = self.conn.durable_needed();
        if let Some(store) = broker.store().filter(|_| needed > self.durable_seen) {
            if needed > store.durable() && !store.wait_durable(needed).await {
                return Err(End::Shutdown);
            }
            self.durable_seen = needed;
        }
        // In cluster mode an acknowledgement also waits until the cluster's stream keeps
        // what it acknowledges, so that the death of this node loses nothing acknowledged.
        let forwarded = self.conn.forward_needed();
        if forwarded > self.forwarded_seen {
            if let Some(confirmed) = &ctx.confirmed {
                wait_confirmed(confirmed.clone(), forwarded).await;
            }
            self.forwarded_seen = forwarded;
        }
        if yield_first && !self.out.is_empty() {
            // A lightly loaded turn (one or two PUBLISH packets) lets the subscribers it woke
            // and the other publishers read meanwhile write first: its acknowledgements
            // then no longer stand before their deliveries. At 10,000 QoS 1 messages a
            // second from 10 publishers, p50 went from 0.18-0.21 to 0.12-0.14 ms and p99 from
            // 0.77-2.1 to 0.32-0.48 ms; busy turns carry more packets and do not wait.
            tokio::task::yield_now().await;
        }
        if !self.out.is_empty() {
            broker
                .stats
                .bytes_sent
                .fetch_add(self.out.len() as u64, Ordering::Relaxed);
            if self.transport.write_all(&self.out).await.is_err() {
                return Err(End::Lost);
            }
            self.out.clear();
        }
        // Nothing pending: the buffers go back to the thread's spares, so an idle client costs
        // nothing here and the next turn on this thread allocates nothing.
        Spare::Output.take_back(&mut self.out);
        Spare::Input.take_back(&mut self.input);
        step
    }

    fn restart_keep_alive(&mut self) {
        self.deadline = Instant::now() + self.conn.silence_limit().unwrap_or(NO_TIMEOUT);
    }
}

/// Waits until the cluster link has confirmed `ticket` (or is gone, or `CONFIRM_WAIT` passed).
async fn wait_confirmed(mut confirmed: watch::Receiver<u64>, ticket: u64) {
    let _ = tokio::time::timeout(CONFIRM_WAIT, confirmed.wait_for(|&c| c >= ticket)).await;
}

/// Publishes a will when its delay has passed, unless its session was resumed meanwhile.
pub(crate) async fn publish_will_later(broker: Arc<Broker>, will: DelayedWill) {
    tokio::time::sleep(will.delay).await;
    broker.publish_delayed_will(will, now());
}

fn closed(conn: &mut Connection, close: Close, out: &mut Vec<u8>) -> End {
    conn.close(&close, out);
    End::Closed(close.reason)
}

/// What [`handle_next`] did with the next packet in the input.
enum Next {
    /// Handled a packet of `used` bytes.
    Handled {
        used: usize,
        publish: bool,
        disconnect: Option<ReasonCode>,
        outcome: Result<(), Close>,
    },
    /// The next packet is a CONNECT to authenticate before it is handled.
    Connect,
    /// The next packet has not fully arrived.
    Incomplete,
    Malformed(tern_proto::DecodeError),
}

/// Decodes the packet at the start of `input` and hands it to the broker, unless it is a
/// CONNECT still to be authenticated. Not `async`: a decoded packet (several hundred bytes)
/// then lives on the stack for a moment instead of in the connection's turn future.
fn handle_next(
    conn: &mut Connection,
    input: &[u8],
    authenticated: bool,
    now: std::time::Instant,
    out: &mut Vec<u8>,
) -> Next {
    let decoded = decode(input, conn.version(), conn.max_packet_size());
    let (packet, used) = match &decoded {
        Ok(Some((packet, used))) => (packet, *used),
        Ok(None) => return Next::Incomplete,
        Err(err) => return Next::Malformed(*err),
    };
    let (publish, disconnect) = match packet {
        Packet::Connect(_) if !authenticated && conn.session().is_none() => return Next::Connect,
        Packet::Publish(_) => (true, None),
        Packet::Disconnect(d) => (false, Some(d.reason)),
        _ => (false, None),
    };
    Next::Handled {
        used,
        publish,
        disconnect,
        outcome: conn.handle_in_turn(packet, now, out),
    }
}

/// Decodes and handles every whole packet in `input`, then sends what the session may.
/// Returns the outcome and what was consumed (for the throttle).
async fn handle_input(
    ctx: &Context,
    ip: IpAddr,
    conn: &mut Connection,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    allowance: Allowance,
) -> (Result<(), End>, Handled) {
    let mut used_total = 0;
    let mut publishes = 0;
    let mut starved = false;
    // One clock reading per turn, the time every packet of it is handled at: a reading per
    // packet was a twentieth of the broker's time at a million messages a second, and
    // QoS 0 publications of one turn are routed together anyway. The handling-time
    // histogram gets the turn's time shared evenly among its PUBLISH packets.
    let mut clock = now();
    let mut started = clock;
    let mut authenticated = false;
    let result = loop {
        if publishes >= allowance.publishes || used_total >= allowance.bytes {
            starved = used_total < input.len();
            break Ok(());
        }
        match handle_next(conn, &input[used_total..], authenticated, clock, out) {
            Next::Handled {
                used,
                publish,
                disconnect,
                outcome,
            } => {
                used_total += used;
                publishes += usize::from(publish);
                if let Err(close) = outcome {
                    break Err(closed(conn, close, out));
                }
                if let Some(reason) = disconnect {
                    break Err(End::Disconnected(reason));
                }
                if publish && conn.is_held() {
                    // The rest waits until the subscribers' queues drain (see `Hold`).
                    break Ok(());
                }
            }
            Next::Connect => {
                // Decoded again for what authentication needs, so that no packet is kept
                // across the waits below.
                let (credentials, client_id, clean_start) = {
                    let rest = &input[used_total..];
                    let Ok(Some((Packet::Connect(c), _))) =
                        decode(rest, conn.version(), conn.max_packet_size())
                    else {
                        unreachable!("handle_next found a CONNECT here");
                    };
                    (conn.credentials(&c), c.client_id, c.clean_start)
                };
                // Boxed: it runs once per connection, and its state (a login delay, a
                // blocking task) would otherwise enlarge every idle connection.
                Box::pin(authenticate(ctx, ip, conn, credentials)).await;
                // Only an authenticated client may have its session brought here.
                if let (Some(mover), true) = (&ctx.sessions, conn.is_authenticated()) {
                    Box::pin(mover.claim(client_id, clean_start)).await;
                }
                // The wait for authentication is not the handling of a PUBLISH.
                clock = now();
                started = clock;
                authenticated = true;
            }
            Next::Incomplete => break Ok(()),
            Next::Malformed(err) => {
                debug!(error = %err, "malformed packet");
                let close = conn.reject(err, out);
                break Err(End::Closed(close.reason));
            }
        }
    };
    input.drain(..used_total);
    let result = result.and_then(|()| conn.flush(clock, out).map_err(|c| closed(conn, c, out)));
    if publishes > 0 {
        let spent = now().saturating_duration_since(started);
        ctx.metrics
            .publish_handling
            .observe_shared(spent, publishes);
    }
    (
        result,
        Handled {
            publishes,
            bytes: used_total,
            starved,
        },
    )
}

/// Authenticates a CONNECT away from the async workers (password hashing is slow on
/// purpose), after holding logins from an address with recent failures for a while.
async fn authenticate(
    ctx: &Context,
    ip: IpAddr,
    conn: &mut Connection,
    credentials: tern_broker::Credentials,
) {
    if let Some(users) = &ctx.users {
        let delay = users.login_delay(ip);
        if !delay.is_zero() {
            debug!(%ip, ?delay, "holding a login from an address with recent failures");
            tokio::time::sleep(delay).await;
        }
    }
    // Only a password can be expensive to check; without one, answering here is cheaper than
    // a trip to the blocking pool (which would also grow by a thread per concurrent CONNECT).
    let outcome = if credentials.password.is_none() {
        ctx.broker.access.authenticate(&credentials)
    } else {
        let broker = ctx.broker.clone();
        tokio::task::spawn_blocking(move || broker.access.authenticate(&credentials))
            .await
            .unwrap_or(Err(ReasonCode::SERVER_UNAVAILABLE))
    };
    let failed = outcome
        .as_ref()
        .is_err_and(|c| *c == ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    if failed {
        ctx.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    } else if outcome.is_err() {
        ctx.metrics.connect_refusals.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(users) = &ctx.users {
        users.record_login(ip, !failed);
    }
    conn.set_authentication(outcome);
}
