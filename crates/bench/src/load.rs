//! The scenarios and their accounting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_proto::{
    decode, Ack, Connect, List, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::frame::{self, Seen};

/// QoS 1/2 messages a publisher leaves unacknowledged at most.
const INFLIGHT: u64 = 20;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open `clients` connections and hold them.
    Conn,
    /// `clients` publisher/subscriber pairs.
    P2p,
    /// `clients` publishers, one subscriber to all.
    Fanin,
    /// One publisher, `clients` subscribers.
    Fanout,
    /// `clients` pairs publishing at a fixed total `rate`; reports delivery latency.
    Latency,
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker.
    pub broker: SocketAddr,
    /// Where subscribers connect, if not to `broker` (another node of a cluster).
    pub sub_broker: Option<SocketAddr>,
    /// The scenario.
    pub scenario: Scenario,
    /// Pairs, publishers, subscribers or connections, by scenario.
    pub clients: usize,
    /// QoS of publications and subscriptions.
    pub qos: QoS,
    /// Payload bytes (at least 16: publisher and sequence numbers).
    pub size: usize,
    /// How long to publish.
    pub duration: Duration,
    /// Messages a publisher may have undelivered at once.
    pub window: u64,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Messages per second in all, for `latency` (open loop: the window is not used).
    pub rate: u64,
    /// Clients keep persistent sessions (client ids are unique per run, so none is resumed).
    pub persistent: bool,
    /// Throughput scenarios publish `rate` messages per second in all whatever the
    /// subscribers receive (a flood), instead of keeping a window.
    pub open_loop: bool,
    /// Print a progress line on standard error every second.
    pub progress: bool,
    /// Connect over TLS (see [`tls`]).
    pub tls: Option<Tls>,
}

/// A TLS client configuration and the server name the broker's certificate must carry.
pub type Tls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// A byte stream to the broker: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// TLS settings trusting the PEM CA certificates in `path`, for a broker named `name`.
pub fn tls(path: &std::path::Path, name: &str) -> std::io::Result<Tls> {
    let name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|_| std::io::Error::other(format!("{name} is not a host name or address")))?;
    Ok((tls_config(path)?, name))
}

fn tls_config(path: &std::path::Path) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(std::io::Error::other)?
    {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Option<Scenario>,
    /// Connections opened.
    pub connections: u64,
    /// Connections per second while opening them.
    pub connect_rate: f64,
    /// `conn`: connections that still answered a PINGREQ after being held.
    pub alive_after_hold: u64,
    /// Median CONNECT-to-CONNACK time, milliseconds.
    pub connack_p50_ms: f64,
    /// 99th percentile CONNECT-to-CONNACK time, milliseconds.
    pub connack_p99_ms: f64,
    /// Messages published (acknowledged, for QoS 1/2).
    pub published: u64,
    /// Deliveries expected: published times the subscribers each reaches.
    pub expected: u64,
    /// Deliveries received, duplicates excluded.
    pub delivered: u64,
    /// Expected deliveries that never came.
    pub lost: u64,
    /// Deliveries of a message already received.
    pub duplicated: u64,
    /// Seconds from the first publication to the last delivery seen (throughput scenarios).
    pub seconds: f64,
    /// Deliveries per second.
    pub delivered_per_second: f64,
    /// Median publish-to-delivery time, milliseconds (`latency`).
    pub latency_p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub latency_p99_ms: f64,
    /// 99.9th percentile, milliseconds.
    pub latency_p999_ms: f64,
    /// Slowest delivery, milliseconds.
    pub latency_max_ms: f64,
}

fn encode(packet: &Packet<'_>, version: ProtocolVersion, out: &mut Vec<u8>) {
    if let Ok(len) = packet.encoded_len(version) {
        let start = out.len();
        out.resize(start + len, 0);
        if packet.encode(version, &mut out[start..]).is_err() {
            out.truncate(start);
        }
    }
}

/// A raw MQTT connection with a read buffer.
struct Conn {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    version: ProtocolVersion,
}

impl Conn {
    async fn open(s: &Settings, addr: SocketAddr, client_id: &str) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &s.tls {
            Some((config, name)) => Box::new(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?,
            ),
            None => Box::new(tcp),
        };
        let mut c = Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            version: s.version,
        };
        let connect = Connect {
            version: s.version,
            // 3.1.1 keeps a session only with Clean Session 0; MQTT 5 by its expiry.
            clean_start: !s.persistent || s.version.is_v5(),
            // Not 0 (no keep alive): some brokers (rumqttd) refuse it. Runs and held
            // connections last less than this, so no PINGREQ is needed.
            keep_alive: 600,
            properties: Properties {
                session_expiry_interval: (s.persistent && s.version.is_v5()).then_some(300),
                ..Properties::default()
            },
            client_id,
            will: None,
            username: None,
            password: None,
        };
        let mut out = Vec::new();
        encode(&Packet::Connect(connect), s.version, &mut out);
        c.stream.write_all(&out).await?;
        match c
            .next(|p| matches!(p, Packet::ConnAck(a) if a.code.is_success()))
            .await?
        {
            true => Ok(c),
            false => Err(std::io::Error::other("CONNACK refused the connection")),
        }
    }

    /// Reads the next packet and gives it to `f`.
    async fn next<R>(&mut self, f: impl FnOnce(Packet<'_>) -> R) -> std::io::Result<R> {
        loop {
            match decode(&self.buf, self.version, u32::MAX) {
                Ok(Some((packet, used))) => {
                    let r = f(packet);
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends PINGREQ; whether PINGRESP came back.
    async fn ping(&mut self) -> std::io::Result<bool> {
        let mut out = Vec::new();
        encode(&Packet::PingReq, self.version, &mut out);
        self.stream.write_all(&out).await?;
        self.next(|p| matches!(p, Packet::PingResp)).await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        let f = TopicFilter::new(filter).map_err(|e| std::io::Error::other(e.to_string()))?;
        let subs = [Subscription {
            filter: f,
            options: SubscriptionOptions::new(qos),
        }];
        let id = PacketId::new(1).ok_or_else(|| std::io::Error::other("packet id"))?;
        let mut out = Vec::new();
        encode(
            &Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties::default(),
                subscriptions: List::Items(&subs),
            }),
            self.version,
            &mut out,
        );
        self.stream.write_all(&out).await?;
        while !self.next(|p| matches!(p, Packet::SubAck(_))).await? {}
        Ok(())
    }
}

/// Per publisher: how many it published, and deliveries of its messages seen by subscribers.
struct Flow {
    published: AtomicU64,
    delivered: AtomicU64,
    progress: Notify,
}

/// Runs a scenario against the broker and reports.
pub async fn run(s: Settings) -> std::io::Result<Report> {
    match s.scenario {
        Scenario::Conn => connections(&s).await,
        _ => throughput(&s).await,
    }
}

async fn connections(s: &Settings) -> std::io::Result<Report> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(s.clients);
    // At most 256 handshakes in flight, as a real fleet reconnecting would.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..s.clients {
        let s = s.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let t = Instant::now();
            let mut conn = Conn::open(&s, s.broker, &format!("bench-conn-{i}"))
                .await
                .ok()?;
            // Held idle: no room kept for reading (10,000 connections held 640 MB here).
            conn.buf = Vec::new();
            Some((t.elapsed(), conn))
        }));
    }
    let mut latencies = Vec::with_capacity(s.clients);
    let mut held = Vec::with_capacity(s.clients);
    for t in tasks {
        if let Ok(Some((latency, conn))) = t.await {
            latencies.push(latency.as_secs_f64() * 1000.0);
            held.push(conn);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    // Hold them idle for the rest of the duration (a moment at least), then check that each
    // is still there: a PINGREQ answered.
    let hold_until = (start + s.duration).max(Instant::now() + Duration::from_millis(200));
    tokio::time::sleep_until(hold_until.into()).await;
    let mut alive = 0;
    for conn in &mut held {
        let answered = tokio::time::timeout(Duration::from_secs(5), conn.ping()).await;
        alive += u64::from(matches!(answered, Ok(Ok(true))));
    }
    let report = Report {
        scenario: Some(Scenario::Conn),
        connections: held.len() as u64,
        connect_rate: held.len() as f64 / elapsed,
        connack_p50_ms: pct(0.5),
        connack_p99_ms: pct(0.99),
        alive_after_hold: alive,
        ..Report::default()
    };
    drop(held);
    Ok(report)
}

async fn throughput(s: &Settings) -> std::io::Result<Report> {
    let (publishers, subscribers) = match s.scenario {
        Scenario::P2p => (s.clients, s.clients),
        Scenario::Fanin => (s.clients, 1),
        Scenario::Fanout => (1, s.clients),
        Scenario::Latency => (s.clients, s.clients),
        Scenario::Conn => (0, 0),
    };
    // How many subscribers each publisher reaches.
    let reach = |_: usize| -> u64 {
        match s.scenario {
            Scenario::P2p | Scenario::Fanin | Scenario::Latency => 1,
            _ => subscribers as u64,
        }
    };
    let run_id = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
    let topic = |p: usize| format!("bench/{run_id}/{p}");
    let flows: Arc<Vec<Flow>> = Arc::new(
        (0..publishers)
            .map(|_| Flow {
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                progress: Notify::new(),
            })
            .collect(),
    );
    let lost = Arc::new(AtomicU64::new(0));
    let duplicated = Arc::new(AtomicU64::new(0));

    // Publish times travel in the payload as nanoseconds since this instant.
    let base = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));

    // Subscribers first, so that nothing published is missed.
    let mut sub_conns = Vec::new();
    for i in 0..subscribers {
        let mut c = Conn::open(
            s,
            s.sub_broker.unwrap_or(s.broker),
            &format!("bench-sub-{run_id}-{i}"),
        )
        .await?;
        match s.scenario {
            Scenario::P2p | Scenario::Latency => c.subscribe(&topic(i), s.qos).await?,
            _ => c.subscribe(&format!("bench/{run_id}/+"), s.qos).await?,
        }
        sub_conns.push(c);
    }
    let mut receivers = Vec::new();
    for mut c in sub_conns {
        let flows = flows.clone();
        let (lost, duplicated) = (lost.clone(), duplicated.clone());
        let samples = samples.clone();
        let timed = s.scenario == Scenario::Latency;
        receivers.push(tokio::spawn(async move {
            // Next expected sequence per publisher this subscriber hears.
            let mut next = vec![0u64; flows.len()];
            // Publishers this read delivered for.
            let mut heard = vec![false; flows.len()];
            let mut heard_from = Vec::new();
            let mut acks = Vec::new();
            loop {
                // No timer per read (a million reads a second in the fan-out): the run ends
                // these tasks once deliveries go quiet.
                if !matches!(c.stream.read_buf(&mut c.buf).await, Ok(n) if n > 0) {
                    break;
                }
                let mut used = 0;
                loop {
                    let (seen, n) = match frame::next(&c.buf[used..], c.version) {
                        Ok(Some(packet)) => packet,
                        Ok(None) => break,
                        // The broker's bytes do not frame: nothing more on this connection
                        // can be counted.
                        Err(_) => return,
                    };
                    used += n;
                    let payload = match seen {
                        Seen::Publish {
                            qos,
                            packet_id,
                            payload,
                        } => {
                            if let Some(id) = packet_id.and_then(PacketId::new) {
                                let ack = match qos {
                                    2 => Packet::PubRec(Ack::new(id)),
                                    _ => Packet::PubAck(Ack::new(id)),
                                };
                                encode(&ack, c.version, &mut acks);
                            }
                            payload
                        }
                        // QoS 2: the broker releases, the subscriber completes.
                        Seen::PubRel(id) => {
                            if let Some(id) = PacketId::new(id) {
                                encode(&Packet::PubComp(Ack::new(id)), c.version, &mut acks);
                            }
                            continue;
                        }
                        Seen::Other => continue,
                    };
                    let (Some(pid), Some(seq)) = (payload.get(..8), payload.get(8..16)) else {
                        continue;
                    };
                    let publisher = u64::from_be_bytes(pid.try_into().unwrap_or_default()) as usize;
                    let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
                    let Some(expected) = next.get_mut(publisher) else {
                        continue;
                    };
                    if seq < *expected {
                        duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Skipped sequences are lost; they count as settled for the window so a
                    // lossy broker cannot stall the closed loop.
                    let skipped = seq - *expected;
                    lost.fetch_add(skipped, Ordering::Relaxed);
                    *expected = seq + 1;
                    flows[publisher]
                        .delivered
                        .fetch_add(1 + skipped, Ordering::Relaxed);
                    if !heard[publisher] {
                        heard[publisher] = true;
                        heard_from.push(publisher);
                    }
                    if let Some(sent) = payload.get(16..24).filter(|_| timed) {
                        let sent = u64::from_be_bytes(sent.try_into().unwrap_or_default());
                        let now = base.elapsed().as_nanos() as u64;
                        let ms = now.saturating_sub(sent) as f64 / 1e6;
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                    }
                }
                // A publisher waiting for room hears once per read, not once per message.
                for publisher in heard_from.drain(..) {
                    heard[publisher] = false;
                    flows[publisher].progress.notify_one();
                }
                c.buf.drain(..used);
                if !acks.is_empty() {
                    if c.stream.write_all(&acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
            }
        }));
    }

    let start = Instant::now();
    let deadline = start + s.duration;
    let mut senders = Vec::new();
    for i in 0..publishers {
        let mut c = Conn::open(s, s.broker, &format!("bench-pub-{run_id}-{i}")).await?;
        let flows = flows.clone();
        let s = s.clone();
        let topic = topic(i);
        let reach = reach(i);
        senders.push(tokio::spawn(async move {
            let flow = &flows[i];
            let mut payload = vec![0u8; s.size.max(24)];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let name = TopicName::new(&topic).ok()?;
            let mut out = Vec::with_capacity(64 * 1024);
            let mut id: u16 = 0;
            let mut unacked = 0u64;
            let timed = s.scenario == Scenario::Latency;
            let pace = Duration::from_secs_f64(publishers as f64 / s.rate.max(1) as f64);
            let mut ticker = tokio::time::interval(pace);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let per_publisher = s.rate.max(1) as f64 / publishers as f64;
            let mut flood_tick = tokio::time::interval(Duration::from_millis(1));
            while Instant::now() < deadline {
                let room = if timed {
                    // Open loop at a fixed rate: one message per tick, timestamped.
                    ticker.tick().await;
                    1
                } else if s.open_loop {
                    // Flood: what the rate says is due by now, whatever was delivered.
                    flood_tick.tick().await;
                    let due = (start.elapsed().as_secs_f64() * per_publisher) as u64;
                    let room = due.saturating_sub(flow.published.load(Ordering::Relaxed));
                    if room == 0 {
                        continue;
                    }
                    room
                } else {
                    // Closed loop: wait while the window has no room for a whole message to
                    // every subscriber (waiting, not spinning: the receivers need the threads).
                    let published = flow.published.load(Ordering::Relaxed);
                    let settled = flow.delivered.load(Ordering::Relaxed);
                    let room =
                        (s.window * reach + settled).saturating_sub(published * reach) / reach;
                    if room == 0 {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(50),
                            flow.progress.notified(),
                        )
                        .await;
                        continue;
                    }
                    room
                };
                // QoS 1/2: no more unacknowledged than any broker accepts (Mosquitto's default
                // is 20), or a broker that enforces its Receive Maximum would cut us off.
                let room = if s.qos == QoS::AtMostOnce {
                    room
                } else {
                    room.min(INFLIGHT.saturating_sub(unacked))
                };
                for _ in 0..room.min(64) {
                    let seq = flow.published.load(Ordering::Relaxed);
                    payload[8..16].copy_from_slice(&seq.to_be_bytes());
                    if timed {
                        payload[16..24]
                            .copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                    }
                    id = if id == u16::MAX { 1 } else { id + 1 };
                    let p = Publish {
                        dup: false,
                        qos: s.qos,
                        retain: false,
                        topic: name,
                        packet_id: (s.qos != QoS::AtMostOnce)
                            .then(|| PacketId::new(id))
                            .flatten(),
                        properties: Properties::default(),
                        payload: &payload,
                    };
                    encode(&Packet::Publish(p), s.version, &mut out);
                    flow.published.fetch_add(1, Ordering::Relaxed);
                    if s.qos != QoS::AtMostOnce {
                        unacked += 1;
                    }
                }
                c.stream.write_all(&out).await.ok()?;
                out.clear();
                // Take the broker's acknowledgements that have arrived (PUBREC gets PUBREL).
                while unacked > 0 {
                    // Wait for acknowledgements when the in-flight allowance is used up.
                    let wait = if unacked >= INFLIGHT {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    };
                    match tokio::time::timeout(wait, c.stream.read_buf(&mut c.buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                    let mut used = 0;
                    while let Ok(Some((packet, n))) = decode(&c.buf[used..], c.version, u32::MAX) {
                        used += n;
                        match packet {
                            Packet::PubAck(_) | Packet::PubComp(_) => {
                                unacked = unacked.saturating_sub(1)
                            }
                            Packet::PubRec(a) => {
                                encode(&Packet::PubRel(Ack::new(a.packet_id)), c.version, &mut out)
                            }
                            _ => {}
                        }
                    }
                    c.buf.drain(..used);
                    // PUBRELs go out at once: the PUBCOMPs that free the allowance wait on them.
                    if !out.is_empty() {
                        c.stream.write_all(&out).await.ok()?;
                        out.clear();
                    }
                }
            }
            Some(())
        }));
    }
    let progress = s.progress.then(|| {
        let flows = flows.clone();
        let total = s.duration;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0u64;
            loop {
                tick.tick().await;
                let sum = |f: fn(&Flow) -> &AtomicU64| -> u64 {
                    flows.iter().map(|x| f(x).load(Ordering::Relaxed)).sum()
                };
                let (published, delivered) = (sum(|f| &f.published), sum(|f| &f.delivered));
                let elapsed = start.elapsed().as_secs().min(total.as_secs());
                eprint!(
                    "\r{elapsed:>4}/{} s  published {published:>12}  delivered {delivered:>12}  {:>10}/s   ",
                    total.as_secs(),
                    delivered - last
                );
                last = delivered;
            }
        })
    });
    for t in senders {
        let _ = t.await;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    // Let the last deliveries arrive: quiet for half a second (or every subscriber's
    // connection closed) means everything is in. The run lasts until the last delivery was
    // seen: a broker that piled messages up while the publishers ran is timed until it has
    // delivered them, not credited with what it sends after.
    let seen_so_far = || -> u64 {
        flows
            .iter()
            .map(|f| f.delivered.load(Ordering::Relaxed))
            .sum::<u64>()
            + duplicated.load(Ordering::Relaxed)
    };
    let poll = Duration::from_millis(10);
    let (mut last, mut last_seen) = (seen_so_far(), Instant::now());
    while last_seen.elapsed() < Duration::from_millis(500)
        && !receivers.iter().all(|r| r.is_finished())
    {
        tokio::time::sleep(poll).await;
        let now = seen_so_far();
        if now != last {
            (last, last_seen) = (now, Instant::now());
        }
    }
    let seconds = last_seen.duration_since(start).as_secs_f64();
    for r in &receivers {
        r.abort();
    }
    for r in receivers {
        let _ = r.await;
    }
    let published: u64 = flows
        .iter()
        .map(|f| f.published.load(Ordering::Relaxed))
        .sum();
    let expected: u64 = (0..publishers)
        .map(|p| flows[p].published.load(Ordering::Relaxed) * reach(p))
        .sum();
    let duplicated = duplicated.load(Ordering::Relaxed);
    let delivered: u64 = flows
        .iter()
        .map(|f| f.delivered.load(Ordering::Relaxed))
        .sum::<u64>()
        - lost.load(Ordering::Relaxed);
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Report {
        scenario: Some(s.scenario),
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        latency_p999_ms: pct(0.999),
        latency_max_ms: samples.last().copied().unwrap_or(0.0),
        connections: (publishers + subscribers) as u64,
        published,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated,
        seconds,
        delivered_per_second: delivered as f64 / seconds,
        ..Report::default()
    })
}
