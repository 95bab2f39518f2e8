//! The store replays into the state the broker had: random packet sequences from several
//! clients run against a broker with a real store in a temporary folder; the persistent part
//! of its state (sessions, subscriptions, stored queue entries and their progress, QoS 2 ids,
//! retained messages) must be what a second broker rebuilds from the store. A structured fuzz
//! of the handlers too: any sequence ends without a panic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use tern_proto::{
    Ack, Connect, Disconnect, List, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};
use tern_store::{Options, Store};

use crate::access::AllowAll;
use crate::config::Limits;
use crate::connection::{Connection, End, Origin};
use crate::session::Inflight;
use crate::Broker;

const FILTERS: [&str; 4] = ["a/#", "a/b", "+/b", "$share/g/a/b"];
const TOPICS: [&str; 3] = ["a/b", "a/c", "x/b"];

#[derive(Debug, Clone)]
enum Op {
    Connect {
        c: usize,
        clean: bool,
        v5: bool,
        expiry: u32,
    },
    Subscribe {
        c: usize,
        f: usize,
        qos: u8,
    },
    Unsubscribe {
        c: usize,
        f: usize,
    },
    Publish {
        c: usize,
        t: usize,
        qos: u8,
        retain: bool,
        id: u16,
        empty: bool,
    },
    PubAck {
        c: usize,
        id: u16,
    },
    PubRec {
        c: usize,
        id: u16,
    },
    PubRel {
        c: usize,
        id: u16,
    },
    PubComp {
        c: usize,
        id: u16,
    },
    Flush {
        c: usize,
    },
    Lose {
        c: usize,
    },
    Disconnect {
        c: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..3usize;
    let id = 1..6u16;
    prop_oneof![
        (
            c.clone(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u32), Just(60), Just(u32::MAX)]
        )
            .prop_map(|(c, clean, v5, expiry)| Op::Connect {
                c,
                clean,
                v5,
                expiry
            }),
        (c.clone(), 0..FILTERS.len(), 0..3u8).prop_map(|(c, f, qos)| Op::Subscribe { c, f, qos }),
        (c.clone(), 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsubscribe { c, f }),
        (
            c.clone(),
            0..TOPICS.len(),
            0..3u8,
            any::<bool>(),
            id.clone(),
            prop::bool::weighted(0.1)
        )
            .prop_map(|(c, t, qos, retain, id, empty)| Op::Publish {
                c,
                t,
                qos,
                retain,
                id,
                empty
            }),
        (c.clone(), id.clone()).prop_map(|(c, id)| Op::PubAck { c, id }),
        (c.clone(), id.clone()).prop_map(|(c, id)| Op::PubRec { c, id }),
        (c.clone(), id.clone()).prop_map(|(c, id)| Op::PubRel { c, id }),
        (c.clone(), id).prop_map(|(c, id)| Op::PubComp { c, id }),
        c.clone().prop_map(|c| Op::Flush { c }),
        c.clone().prop_map(|c| Op::Lose { c }),
        c.prop_map(|c| Op::Disconnect { c }),
    ]
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or(PacketId::new(1).expect("1 is a packet id"))
}

struct Run {
    broker: Arc<Broker>,
    conns: Vec<Option<Connection>>,
    names: Vec<String>,
}

impl Run {
    /// Three clients, `c0` to `c2`, none connected yet.
    fn new(broker: Arc<Broker>) -> Run {
        Run {
            broker,
            conns: (0..3).map(|_| None).collect(),
            names: (0..3).map(|i| format!("c{i}")).collect(),
        }
    }

    fn apply(&mut self, op: &Op, now: Instant) {
        let mut out = Vec::new();
        let c = match op {
            Op::Connect { c, .. }
            | Op::Subscribe { c, .. }
            | Op::Unsubscribe { c, .. }
            | Op::Publish { c, .. }
            | Op::PubAck { c, .. }
            | Op::PubRec { c, .. }
            | Op::PubRel { c, .. }
            | Op::PubComp { c, .. }
            | Op::Flush { c }
            | Op::Lose { c }
            | Op::Disconnect { c } => *c,
        };
        if let Op::Connect {
            clean, v5, expiry, ..
        } = op
        {
            if let Some(mut old) = self.conns[c].take() {
                old.end(End::Lost, now);
            }
            let version = if *v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            let mut conn = Connection::new(self.broker.clone(), Origin::default());
            let connect = Connect {
                version,
                clean_start: *clean,
                keep_alive: 0,
                properties: Properties {
                    session_expiry_interval: v5.then_some(*expiry),
                    ..Properties::default()
                },
                client_id: &self.names[c],
                will: None,
                username: None,
                password: None,
            };
            if conn.handle(Packet::Connect(connect), now, &mut out).is_ok() {
                self.conns[c] = Some(conn);
            }
            return;
        }
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        let subs;
        let filters;
        let packet = match op {
            Op::Subscribe { f, qos, .. } => {
                subs = [Subscription {
                    filter: TopicFilter::new(FILTERS[*f]).expect("valid filter"),
                    options: SubscriptionOptions::new(
                        QoS::from_u8(*qos).unwrap_or(QoS::AtMostOnce),
                    ),
                }];
                Packet::Subscribe(Subscribe {
                    packet_id: pid(1),
                    properties: Properties::default(),
                    subscriptions: List::Items(&subs),
                })
            }
            Op::Unsubscribe { f, .. } => {
                filters = [TopicFilter::new(FILTERS[*f]).expect("valid filter")];
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: pid(1),
                    properties: Properties::default(),
                    filters: List::Items(&filters),
                })
            }
            Op::Publish {
                t,
                qos,
                retain,
                id,
                empty,
                ..
            } => {
                let qos = QoS::from_u8(*qos).unwrap_or(QoS::AtMostOnce);
                Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: *retain,
                    topic: TopicName::new(TOPICS[*t]).expect("valid topic"),
                    packet_id: (qos != QoS::AtMostOnce).then(|| pid(*id)),
                    properties: Properties::default(),
                    payload: if *empty { b"" } else { b"payload" },
                })
            }
            Op::PubAck { id, .. } => Packet::PubAck(Ack::new(pid(*id))),
            Op::PubRec { id, .. } => Packet::PubRec(Ack::new(pid(*id))),
            Op::PubRel { id, .. } => Packet::PubRel(Ack::new(pid(*id))),
            Op::PubComp { id, .. } => Packet::PubComp(Ack::new(pid(*id))),
            Op::Flush { .. } => {
                let _ = conn.flush(now, &mut out);
                conn.durable_needed();
                return;
            }
            Op::Lose { .. } => {
                if let Some(mut conn) = self.conns[c].take() {
                    conn.end(End::Lost, now);
                }
                return;
            }
            Op::Disconnect { .. } => Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
            Op::Connect { .. } => return,
        };
        let disconnect = matches!(packet, Packet::Disconnect(_));
        let result = conn.handle(packet, now, &mut out);
        let result = result.and_then(|()| conn.flush(now, &mut out));
        conn.durable_needed();
        match result {
            Err(close) => {
                if let Some(mut conn) = self.conns[c].take() {
                    conn.end(End::Closed(close.reason), now);
                }
            }
            Ok(()) if disconnect => {
                if let Some(mut conn) = self.conns[c].take() {
                    conn.end(End::Disconnected(ReasonCode::SUCCESS), now);
                }
            }
            Ok(()) => {}
        }
    }
}

/// The persistent part of a broker's state, comparable.
fn persistent_state(broker: &Broker) -> String {
    let mut sessions = BTreeMap::new();
    for (client, s) in broker.sessions().iter() {
        if !s.is_persistent() {
            continue;
        }
        let state = s.lock();
        let mut subs: Vec<_> = state
            .subscriptions
            .iter()
            .map(|(f, (o, id))| (f.clone(), o.to_byte(), *id))
            .collect();
        subs.sort();
        let queued: Vec<u64> = state
            .queue
            .iter()
            .map(|o| o.seq)
            .filter(|s| *s != 0)
            .collect();
        let inflight: Vec<(u16, u64, bool)> = state
            .inflight
            .iter()
            .filter_map(|(id, e)| match e {
                Inflight::Publish(o) if o.seq != 0 => Some((*id, o.seq, false)),
                Inflight::Release { seq } if *seq != 0 => Some((*id, *seq, true)),
                _ => None,
            })
            .collect();
        let mut incoming: Vec<u16> = state.incoming_qos2.iter().copied().collect();
        incoming.sort();
        sessions.insert(
            client.to_string(),
            format!("expiry {} subs {subs:?} queued {queued:?} inflight {inflight:?} incoming {incoming:?}", state.expiry_interval),
        );
    }
    let mut retained: Vec<String> = broker
        .retained_pairs()
        .into_iter()
        .filter(|(t, _)| !t.starts_with('$'))
        .map(|(t, p)| format!("{t}={}", String::from_utf8_lossy(&p)))
        .collect();
    retained.sort();
    format!("{sessions:#?}\nretained {retained:?}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_store_replays_into_the_state_the_broker_had(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let now = Instant::now();
        let (store, _, _) = Store::open(dir.path(), Options::default()).expect("store opens");
        let broker = Broker::with_store(Limits::default(), Arc::new(AllowAll), now, Some(Arc::new(store)));
        let mut run = Run::new(broker.clone());
        for op in &ops {
            run.apply(op, now);
        }
        for c in 0..3 {
            if let Some(mut conn) = run.conns[c].take() {
                conn.end(End::Shutdown, now);
            }
        }
        let before = persistent_state(&broker);
        broker.store().expect("a store").close();
        drop(run);
        drop(broker);
        let (store, recovered, _) = Store::open(dir.path(), Options::default()).expect("store opens again");
        let again = Broker::with_store(Limits::default(), Arc::new(AllowAll), now, Some(Arc::new(store)));
        again.restore(recovered, now);
        let after = persistent_state(&again);
        prop_assert_eq!(before, after);
    }
}

/// What a client sees of its session, wherever it is: subscriptions, what waits for it and
/// what is in flight, by content (store entry numbers differ between nodes).
fn client_view(broker: &Broker, client: &str) -> Option<String> {
    let session = broker.session(client)?;
    let state = session.lock();
    let mut subs: Vec<_> = state
        .subscriptions
        .iter()
        .map(|(f, (o, id))| (f.clone(), o.to_byte(), *id))
        .collect();
    subs.sort();
    let describe = |o: &crate::session::Outgoing| {
        format!(
            "{}:{}:{:?}:{}",
            o.message.topic,
            String::from_utf8_lossy(&o.message.payload),
            o.qos,
            o.retain
        )
    };
    let queued: Vec<String> = state.queue.iter().map(describe).collect();
    let inflight: Vec<String> = state
        .inflight
        .iter()
        .map(|(id, e)| match e {
            Inflight::Publish(o) => format!("{id} {}", describe(o)),
            Inflight::Release { .. } => format!("{id} released"),
        })
        .collect();
    let mut incoming: Vec<u16> = state.incoming_qos2.iter().copied().collect();
    incoming.sort();
    Some(format!(
        "expiry {} version {:?} subs {subs:?} queued {queued:?} inflight {inflight:?} incoming {incoming:?}",
        state.expiry_interval, state.version
    ))
}

fn broker_with_store(dir: &std::path::Path, now: Instant) -> Arc<Broker> {
    let (store, _, _) = Store::open(dir, Options::default()).expect("store opens");
    Broker::with_store(
        Limits::default(),
        Arc::new(AllowAll),
        now,
        Some(Arc::new(store)),
    )
}

/// Two cluster nodes' brokers, each with its store in its own temporary folder (returned to
/// live as long as the test).
fn two_nodes(
    now: Instant,
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    Arc<Broker>,
    Arc<Broker>,
) {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("folder"),
        tempfile::tempdir().expect("folder"),
    );
    let a = broker_with_store(dir_a.path(), now);
    let b = broker_with_store(dir_b.path(), now);
    (dir_a, dir_b, a, b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A session moved to another node (cluster mode) is the session the client left: the
    /// same subscriptions, queue, in-flight messages and QoS 2 state [MQTT-4.1.0-1]; it is
    /// gone from the first node, store included; and the second node's store replays it.
    #[test]
    fn a_moved_session_is_the_session_the_client_left(ops in proptest::collection::vec(op(), 1..80)) {
        let now = Instant::now();
        let (dir_a, dir_b, a, b) = two_nodes(now);
        let mut run = Run::new(a.clone());
        for op in &ops {
            run.apply(op, now);
        }
        for c in 0..3 {
            let name = format!("c{c}");
            let before = client_view(&a, &name).filter(|_| {
                a.session(&name).is_some_and(|s| s.lock().expiry_interval > 0)
            });
            let bytes = a.export_session(&name, now);
            prop_assert!(a.session(&name).is_none());
            prop_assert_eq!(bytes.is_some(), before.is_some());
            if let Some(bytes) = bytes {
                b.import_session(&name, &bytes, now).expect("imports");
                prop_assert_eq!(client_view(&b, &name), before);
            }
            // The connection that held it ends without touching the moved session.
            if let Some(mut conn) = run.conns[c].take() {
                conn.end(End::Lost, now);
            }
        }
        prop_assert_eq!(a.session_count(), 0);
        prop_assert_eq!(a.subscription_count(), 0);
        let moved = persistent_state(&b);
        for broker in [a, b] {
            broker.store().expect("a store").close();
        }
        drop(run);
        let (store, recovered, _) = Store::open(dir_a.path(), Options::default()).expect("store opens again");
        let again = Broker::with_store(Limits::default(), Arc::new(AllowAll), now, Some(Arc::new(store)));
        again.restore(recovered, now);
        prop_assert_eq!(again.session_count(), 0);
        let (store, recovered, _) = Store::open(dir_b.path(), Options::default()).expect("store opens again");
        let again = Broker::with_store(Limits::default(), Arc::new(AllowAll), now, Some(Arc::new(store)));
        again.restore(recovered, now);
        prop_assert_eq!(persistent_state(&again), moved);
    }
}

#[test]
fn malformed_session_bytes_are_refused() {
    let broker = Broker::new(Limits::default(), Instant::now());
    for bytes in [
        &b""[..],
        &[1, 9][..],
        &[1, 4, 0, 0, 0, 0, 0, 255, 255, 255, 255][..],
    ] {
        assert_eq!(
            broker.import_session("c", bytes, Instant::now()),
            Err(crate::MoveError::Malformed)
        );
    }
    assert_eq!(broker.session_count(), 0);
}

/// A long queue's payloads leave memory once on disk (`Broker::offload`); a move reads them
/// back first, since the new node's store does not have them.
#[test]
fn a_moved_session_takes_its_offloaded_messages_along() {
    let now = Instant::now();
    let (_dir_a, _dir_b, a, b) = two_nodes(now);
    let mut run = Run::new(a.clone());
    let connect = |c, clean| Op::Connect {
        c,
        clean,
        v5: false,
        expiry: 0,
    };
    run.apply(&connect(0, false), now);
    run.apply(&Op::Subscribe { c: 0, f: 1, qos: 1 }, now);
    run.apply(&Op::Lose { c: 0 }, now);
    run.apply(&connect(1, true), now);
    for i in 0..150u16 {
        let publish = Op::Publish {
            c: 1,
            t: 0,
            qos: 1,
            retain: false,
            id: i + 1,
            empty: false,
        };
        run.apply(&publish, now);
    }
    let session = a.session("c0").expect("c0's session");
    // The store writes on its own thread: poll until the entries past the head are on disk
    // and offloaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while session.lock().queue.offloaded() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was offloaded"
        );
        a.offload();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let bytes = a.export_session("c0", now).expect("a persistent session");
    b.import_session("c0", &bytes, now).expect("imports");
    let moved = b.session("c0").expect("c0's session on b");
    let state = moved.lock();
    assert_eq!(state.queue.len(), 150);
    assert_eq!(state.queue.offloaded(), 0);
    assert!(state
        .queue
        .iter()
        .all(|o| *o.message.payload == *b"payload"));
}

/// A message as a cluster node routes it, with its cluster identity.
fn cluster_message(payload: &str, id: Option<(u64, u64)>) -> Arc<crate::Message> {
    let m = crate::Message {
        topic: Arc::from("a/b"),
        payload: payload.as_bytes().into(),
        qos: tern_proto::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: Arc::from(if id.is_some() { "$cluster/1" } else { "p" }),
        expires_at: None,
        stored: Default::default(),
        encoded: Default::default(),
        cluster_id: Default::default(),
    };
    if let Some(id) = id {
        let _ = m.cluster_id.set(id);
    }
    Arc::new(m)
}

/// The two-step move: the new node collects what is published while the session moves (a
/// placeholder with the subscriptions), the old node keeps queueing until it hands the
/// session over, and the new node keeps each message once, in order: nothing published
/// during the move is lost or doubled.
#[test]
fn a_session_moved_in_two_steps_has_each_message_once() {
    let now = Instant::now();
    let (_dir_a, _dir_b, a, b) = two_nodes(now);
    let numbers = std::sync::atomic::AtomicU64::new(0);
    a.set_forwarder(Box::new(move |m| {
        let n = numbers.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let _ = m.cluster_id.set((7, n));
        0
    }));
    let mut run = Run::new(a.clone());
    let connect = Op::Connect {
        c: 0,
        clean: false,
        v5: false,
        expiry: 0,
    };
    run.apply(&connect, now);
    run.apply(&Op::Subscribe { c: 0, f: 1, qos: 1 }, now);
    // Queued on a before the move starts.
    a.route(cluster_message("m1", None));
    a.route(cluster_message("m2", None));
    let skeleton = a.prepare_move("c0", now).expect("a persistent session");
    assert!(!a.session("c0").expect("still on a").is_connected());
    b.import_placeholder("c0", &skeleton, now)
        .expect("placeholder");
    // Published while both hold the subscription: each node gets its copy.
    a.route(cluster_message("m3", None));
    b.route(cluster_message("m3", Some((7, 3))));
    // Published after a let go: only b gets it.
    let bytes = a.export_session("c0", now).expect("the session");
    b.route(cluster_message("m4", Some((7, 4))));
    let durable = b.import_session("c0", &bytes, now).expect("imports");
    assert!(durable > 0, "the moved session is written to b's store");
    let moved = b.session("c0").expect("on b");
    let state = moved.lock();
    let payloads: Vec<String> = state
        .queue
        .iter()
        .map(|o| String::from_utf8_lossy(&o.message.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["m1", "m2", "m3", "m4"]);
    assert!(moved.is_persistent());
    assert_eq!(b.subscription_count(), 1);
}
