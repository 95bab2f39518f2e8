//! `$SYS/broker/...`: the broker's own figures, published as retained messages with the names
//! Mosquitto uses, so existing dashboards work.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Broker, Message};
use tern_proto::{PropertiesBuf, QoS};
use tokio::sync::watch;

use crate::bridge::BridgeStatus;
use crate::cluster::ClusterStatus;
use crate::now;

pub(crate) async fn publish_loop(
    broker: Arc<Broker>,
    bridges: Vec<Arc<BridgeStatus>>,
    cluster: Option<Arc<ClusterStatus>>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_all(&broker, &bridges, cluster.as_deref()),
            _ = shutdown.changed() => return,
        }
    }
}

/// Publishes every `$SYS` figure once: the broker's, each bridge's state under Mosquitto's
/// name (`$SYS/broker/connection/<name>/state`, 1 or 0) with tern's counts beside it, and in
/// cluster mode this node's link (`$SYS/broker/cluster/...`, the figures `/metrics` has).
pub(crate) fn publish_all(
    broker: &Broker,
    bridges: &[Arc<BridgeStatus>],
    cluster: Option<&ClusterStatus>,
) {
    if let Some(c) = cluster {
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed).to_string();
        let figures = [
            ("node", c.node.clone()),
            (
                "connected",
                u8::from(c.connected.load(Ordering::Relaxed)).to_string(),
            ),
            ("messages/out", load(&c.forwarded_out)),
            ("messages/in", load(&c.forwarded_in)),
            ("messages/dropped", load(&c.dropped)),
            ("messages/unconfirmed", load(&c.unconfirmed)),
            ("messages/caught up", load(&c.caught_up)),
            ("messages/duplicates", load(&c.duplicates)),
            ("retained/synced", load(&c.retained_synced)),
            ("clients/taken over", load(&c.taken_over)),
            ("sessions/moved in", load(&c.sessions_moved_in)),
            ("sessions/moved out", load(&c.sessions_moved_out)),
            ("sessions/recovered", load(&c.sessions_recovered)),
            ("sessions/summarised", load(&c.sessions_summarised)),
            (
                "subscriptions",
                c.subjects.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, value) in figures {
            publish(broker, &format!("cluster/{name}"), value);
        }
    }
    for b in bridges {
        let figures = [
            (
                format!("connection/{}/state", b.name),
                u8::from(b.connected.load(Ordering::Relaxed)).to_string(),
            ),
            (
                format!("bridges/{}/queued", b.name),
                b.queued(broker).to_string(),
            ),
            (
                format!("bridges/{}/forwarded/out", b.name),
                b.forwarded_out.load(Ordering::Relaxed).to_string(),
            ),
            (
                format!("bridges/{}/forwarded/in", b.name),
                b.forwarded_in.load(Ordering::Relaxed).to_string(),
            ),
            (
                format!("bridges/{}/errors", b.name),
                b.errors.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, value) in figures {
            publish(broker, &name, value);
        }
    }
    let s = &broker.stats;
    let connected = s.clients_connected.load(Ordering::Relaxed);
    let total = broker.session_count();
    let figures: [(&str, String); 13] = [
        ("version", format!("tern {}", env!("CARGO_PKG_VERSION"))),
        (
            "uptime",
            format!(
                "{} seconds",
                now().saturating_duration_since(broker.started).as_secs()
            ),
        ),
        ("clients/connected", connected.to_string()),
        (
            "clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        ("clients/total", total.to_string()),
        (
            "clients/maximum",
            s.clients_maximum.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/received",
            s.messages_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/sent",
            s.messages_sent.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/dropped",
            s.messages_dropped.load(Ordering::Relaxed).to_string(),
        ),
        (
            "bytes/received",
            s.bytes_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "bytes/sent",
            s.bytes_sent.load(Ordering::Relaxed).to_string(),
        ),
        (
            "subscriptions/count",
            broker.subscription_count().to_string(),
        ),
        (
            "retained messages/count",
            broker.retained_count().to_string(),
        ),
    ];
    for (name, value) in figures {
        publish(broker, name, value);
    }
}

fn publish(broker: &Broker, name: &str, value: String) {
    broker.route(Arc::new(Message {
        topic: Arc::from(format!("$SYS/broker/{name}")),
        payload: value.into_bytes().into(),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: PropertiesBuf::default(),
        publisher: Arc::from("$SYS"),
        stored: Default::default(),
        encoded: Default::default(),
        cluster_id: Default::default(),
        expires_at: None,
    }));
}
