//! The broker's protocol logic driven by arbitrary sequences of valid and invalid packets from
//! three clients (MQTT 3.1.1 and 5, clean and persistent sessions, any QoS, raw bytes), with an
//! observer subscribed to `#` that acknowledges everything. Checked after every sequence:
//! - nothing panics, and everything the broker writes decodes as packets;
//! - every QoS 1/2 publication the broker acknowledged to a publisher reached the observer
//!   (it matches `#` and the observer stays connected);
//! - once every client is gone and expiry has run, only persistent sessions remain, and the
//!   subscription tree holds exactly the subscriptions the remaining sessions hold.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern_broker::{Broker, Connection, End, Limits, Origin};
use tern_proto::{
    decode, Ack, Connect, Disconnect, List, Packet, PacketId, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
    TopicName, Unsubscribe,
};

const FILTERS: [&str; 6] = ["a/#", "a/b", "+/b", "#", "$share/g/a/b", "$SYS/#"];
const TOPICS: [&str; 4] = ["a/b", "a/c", "x/b", "a"];

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { c: u8, v5: bool, clean: bool, expiry: u8, keep_alive: u8 },
    Subscribe { c: u8, f: u8, qos: u8 },
    Unsubscribe { c: u8, f: u8 },
    Publish { c: u8, t: u8, qos: u8, retain: bool },
    Ack { c: u8, kind: u8, id: u16 },
    Disconnect { c: u8, reason: u8 },
    Lost { c: u8 },
    Raw { c: u8, bytes: Vec<u8> },
    Wait { secs: u8 },
}

struct Client {
    conn: Option<Connection>,
    version: ProtocolVersion,
}

fn origin(n: usize) -> Origin {
    Origin {
        peer: format!("127.0.0.1:{}", 1000 + n),
        loopback: true,
        allow_anonymous: None,
        certificate_name: None,
        refusal: None,
    }
}

fn packets(out: &[u8], version: ProtocolVersion) -> Vec<(u8, Option<u16>, QoS, Vec<u8>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < out.len() {
        match decode(&out[at..], version, u32::MAX) {
            Ok(Some((packet, used))) => {
                at += used;
                let kind = match &packet {
                    Packet::Publish(_) => 3,
                    Packet::PubAck(_) => 4,
                    Packet::PubRec(_) => 5,
                    Packet::PubRel(_) => 6,
                    _ => 0,
                };
                match packet {
                    Packet::Publish(p) => found.push((kind, p.packet_id.map(PacketId::get), p.qos, p.payload.to_vec())),
                    Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) => {
                        found.push((kind, Some(a.packet_id.get()), QoS::AtMostOnce, vec![a.reason.value()]))
                    }
                    _ => {}
                }
            }
            other => panic!("the broker wrote bytes that do not decode: {other:?}"),
        }
    }
    found
}

/// Lets the observer take and acknowledge everything queued for it; returns the payloads.
fn drain_observer(observer: &mut Connection, now: Instant, seen: &mut HashSet<Vec<u8>>) {
    for _ in 0..1000 {
        let mut out = Vec::new();
        let _ = observer.flush(now, &mut out);
        if out.is_empty() {
            return;
        }
        for (kind, id, qos, payload) in packets(&out, ProtocolVersion::V5) {
            let Some(id) = id.and_then(PacketId::new) else {
                if kind == 3 {
                    seen.insert(payload);
                }
                continue;
            };
            let mut answer = Vec::new();
            let reply = match (kind, qos) {
                (3, QoS::AtLeastOnce) => {
                    seen.insert(payload);
                    Packet::PubAck(Ack::new(id))
                }
                (3, QoS::ExactlyOnce) => {
                    seen.insert(payload);
                    Packet::PubRec(Ack::new(id))
                }
                (6, _) => Packet::PubComp(Ack::new(id)),
                _ => continue,
            };
            observer.handle(reply, now, &mut answer).expect("the observer's answers are valid");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let broker: Arc<Broker> = Broker::new(Limits::default(), now);
    let mut observer = Connection::new(broker.clone(), origin(99));
    let mut out = Vec::new();
    let connect = Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: "observer",
        will: None,
        username: None,
        password: None,
    };
    observer.handle(Packet::Connect(connect), now, &mut out).expect("observer connects");
    let all = [Subscription { filter: TopicFilter::new("#").expect("valid"), options: SubscriptionOptions::new(QoS::ExactlyOnce) }];
    let subscribe = Subscribe { packet_id: PacketId::new(1).expect("valid"), properties: Properties::default(), subscriptions: List::Items(&all) };
    observer.handle(Packet::Subscribe(subscribe), now, &mut out).expect("observer subscribes");

    let mut clients: Vec<Client> = (0..3).map(|_| Client { conn: None, version: ProtocolVersion::V3_1_1 }).collect();
    let mut acknowledged: HashSet<Vec<u8>> = HashSet::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut counter = 0u32;
    let mut next_id = 1u16;

    for op in ops.into_iter().take(200) {
        let c = |n: u8| usize::from(n % 3);
        match op {
            Op::Connect { c: n, v5, clean, expiry, keep_alive } => {
                let i = c(n);
                if let Some(mut old) = clients[i].conn.take() {
                    old.end(End::Lost, now);
                }
                let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
                let id = format!("c{i}");
                let properties = Properties { session_expiry_interval: (v5 && expiry > 0).then_some(u32::from(expiry)), ..Properties::default() };
                let connect = Connect { version, clean_start: clean, keep_alive: u16::from(keep_alive), properties, client_id: &id, will: None, username: None, password: None };
                let mut conn = Connection::new(broker.clone(), origin(i));
                let mut out = Vec::new();
                if conn.handle(Packet::Connect(connect), now, &mut out).is_ok() {
                    packets(&out, version);
                    clients[i] = Client { conn: Some(conn), version };
                } else {
                    conn.end(End::Lost, now);
                }
            }
            Op::Subscribe { c: n, f, qos } => {
                let i = c(n);
                let Some(conn) = clients[i].conn.as_mut() else { continue };
                let filter = FILTERS[usize::from(f) % FILTERS.len()];
                let subs = [Subscription { filter: TopicFilter::new(filter).expect("valid"), options: SubscriptionOptions::new(QoS::from_u8(qos % 3).unwrap_or(QoS::AtMostOnce)) }];
                let s = Subscribe { packet_id: PacketId::new(next_id.max(1)).expect("nonzero"), properties: Properties::default(), subscriptions: List::Items(&subs) };
                next_id = next_id.wrapping_add(1).max(1);
                let mut out = Vec::new();
                if conn.handle(Packet::Subscribe(s), now, &mut out).is_err() {
                    if let Some(mut conn) = clients[i].conn.take() { conn.end(End::Lost, now); }
                } else {
                    packets(&out, clients[i].version);
                }
            }
            Op::Unsubscribe { c: n, f } => {
                let i = c(n);
                let Some(conn) = clients[i].conn.as_mut() else { continue };
                let filters = [TopicFilter::new(FILTERS[usize::from(f) % FILTERS.len()]).expect("valid")];
                let u = Unsubscribe { packet_id: PacketId::new(next_id.max(1)).expect("nonzero"), properties: Properties::default(), filters: List::Items(&filters) };
                next_id = next_id.wrapping_add(1).max(1);
                let mut out = Vec::new();
                if conn.handle(Packet::Unsubscribe(u), now, &mut out).is_err() {
                    if let Some(mut conn) = clients[i].conn.take() { conn.end(End::Lost, now); }
                }
            }
            Op::Publish { c: n, t, qos, retain } => {
                let i = c(n);
                let version = clients[i].version;
                let Some(conn) = clients[i].conn.as_mut() else { continue };
                counter += 1;
                let payload = format!("m{counter}").into_bytes();
                let qos = QoS::from_u8(qos % 3).unwrap_or(QoS::AtMostOnce);
                let packet_id = (qos != QoS::AtMostOnce).then(|| { let id = PacketId::new(next_id.max(1)).expect("nonzero"); next_id = next_id.wrapping_add(1).max(1); id });
                let p = Publish { dup: false, qos, retain, topic: TopicName::new(TOPICS[usize::from(t) % TOPICS.len()]).expect("valid"), packet_id, properties: Properties::default(), payload: &payload };
                let mut out = Vec::new();
                if conn.handle(Packet::Publish(p), now, &mut out).is_err() {
                    if let Some(mut conn) = clients[i].conn.take() { conn.end(End::Lost, now); }
                    continue;
                }
                let acked = packets(&out, version).iter().any(|(kind, id, _, reason)| {
                    (*kind == 4 || *kind == 5) && *id == packet_id.map(PacketId::get) && reason.first().is_none_or(|r| *r < 0x80)
                });
                if acked {
                    acknowledged.insert(payload);
                }
            }
            Op::Ack { c: n, kind, id } => {
                let i = c(n);
                let Some(conn) = clients[i].conn.as_mut() else { continue };
                let Some(id) = PacketId::new(id % 8 + 1) else { continue };
                let ack = Ack::new(id);
                let packet = match kind % 4 { 0 => Packet::PubAck(ack), 1 => Packet::PubRec(ack), 2 => Packet::PubRel(ack), _ => Packet::PubComp(ack) };
                let mut out = Vec::new();
                if conn.handle(packet, now, &mut out).is_err() {
                    if let Some(mut conn) = clients[i].conn.take() { conn.end(End::Lost, now); }
                }
            }
            Op::Disconnect { c: n, reason } => {
                let i = c(n);
                let Some(mut conn) = clients[i].conn.take() else { continue };
                let reason = if reason % 2 == 0 { ReasonCode::SUCCESS } else { ReasonCode::DISCONNECT_WITH_WILL_MESSAGE };
                let mut out = Vec::new();
                let _ = conn.handle(Packet::Disconnect(Disconnect::new(reason)), now, &mut out);
                conn.end(End::Disconnected(reason), now);
            }
            Op::Lost { c: n } => {
                if let Some(mut conn) = clients[c(n)].conn.take() {
                    conn.end(End::Lost, now);
                }
            }
            Op::Raw { c: n, bytes } => {
                let i = c(n);
                let version = clients[i].version;
                let Some(conn) = clients[i].conn.as_mut() else { continue };
                let mut out = Vec::new();
                let failed = match decode(&bytes, version, conn.max_packet_size()) {
                    Ok(Some((packet, _))) => conn.handle(packet, now, &mut out).is_err(),
                    Ok(None) => false,
                    Err(e) => { conn.reject(e, &mut out); true }
                };
                if failed {
                    if let Some(mut conn) = clients[i].conn.take() { conn.end(End::Lost, now); }
                }
            }
            Op::Wait { secs } => {
                now += Duration::from_secs(u64::from(secs));
                broker.expire_sessions(now);
            }
        }
        for client in clients.iter_mut() {
            if let Some(conn) = client.conn.as_mut() {
                let mut out = Vec::new();
                if conn.flush(now, &mut out).is_err() {
                    if let Some(mut conn) = client.conn.take() { conn.end(End::Lost, now); }
                } else {
                    packets(&out, client.version);
                }
            }
        }
        drain_observer(&mut observer, now, &mut seen);
    }

    let missing: Vec<_> = acknowledged.difference(&seen).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered to the `#` observer: {missing:?}");

    for client in clients.iter_mut() {
        if let Some(mut conn) = client.conn.take() {
            conn.end(End::Lost, now);
        }
    }
    observer.end(End::Lost, now);
    now += Duration::from_secs(u64::from(u32::MAX) + 1);
    broker.expire_sessions(now);
    let sessions = broker.sessions_list();
    let mut held = 0;
    for s in &sessions {
        let state = s.lock();
        assert!(state.owner.is_none(), "a session still owned after every connection ended");
        assert_eq!(state.expiry_interval, u32::MAX, "session {} outlived its expiry", s.client_id);
        held += state.subscriptions.len();
    }
    assert_eq!(broker.subscription_count(), held, "the subscription tree and the sessions disagree");
});
