//! `/metrics`: the broker's figures in the Prometheus text format (version 0.0.4), and the
//! figures only the server sees: refused logins and how long the broker takes to handle a
//! PUBLISH.
//!
//! Counters are plain atomics updated where things happen; rendering reads them all once per
//! scrape, so a scrape costs nothing on the message path.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tern_broker::{Broker, DropCause};

use crate::bridge::BridgeStatus;

use crate::now;

/// Upper bounds of the handling-time histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];

/// A histogram of durations with fixed buckets, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_shared(d, 1);
    }

    /// Counts `n` observations that together took `total`, each as the mean.
    pub fn observe_shared(&self, total: Duration, n: usize) {
        if n == 0 {
            return;
        }
        let secs = total.as_secs_f64() / n as f64;
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(n as u64, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            total.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What the server counts besides the broker's [`tern_broker::Stats`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// CONNECTs refused for a wrong or unknown user name or password.
    pub auth_failures: AtomicU64,
    /// CONNECTs whose authentication failed for another reason (e.g. anonymous not allowed).
    pub connect_refusals: AtomicU64,
    /// Console logins refused.
    pub console_login_failures: AtomicU64,
    /// Time the broker spends handling one PUBLISH (routing and queueing included, waiting
    /// for the disk not included), measured per turn and shared among its PUBLISH packets.
    pub publish_handling: Histogram,
    /// The cluster link's figures, in cluster mode.
    pub cluster: std::sync::OnceLock<std::sync::Arc<crate::cluster::ClusterStatus>>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Bytes in the files of `dir` (the store), 0 if it cannot be read.
pub(crate) fn dir_size(dir: &PathBuf) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Everything, in the Prometheus text format.
pub(crate) fn render(
    broker: &Broker,
    metrics: &Metrics,
    store_dir: Option<&PathBuf>,
    bridges: &[std::sync::Arc<BridgeStatus>],
) -> String {
    let s = &broker.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "tern_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    sample(
        &mut out,
        "tern_uptime_seconds",
        "",
        now().saturating_duration_since(broker.started).as_secs(),
    );
    family(
        &mut out,
        "tern_clients_connected",
        "gauge",
        "Client connections open now.",
    );
    sample(
        &mut out,
        "tern_clients_connected",
        "",
        s.clients_connected.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "tern_clients_maximum",
        "gauge",
        "Most client connections open at once.",
    );
    sample(
        &mut out,
        "tern_clients_maximum",
        "",
        s.clients_maximum.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "tern_connects_total",
        "counter",
        "Clients that completed CONNECT.",
    );
    sample(&mut out, "tern_connects_total", "", load(&s.connects));
    family(
        &mut out,
        "tern_publishers_held_total",
        "counter",
        "Times a publisher stopped being read because a subscriber's queue was over its limit.",
    );
    sample(
        &mut out,
        "tern_publishers_held_total",
        "",
        load(&s.publishers_held),
    );
    family(
        &mut out,
        "tern_sessions",
        "gauge",
        "Sessions held, connected or not.",
    );
    sample(&mut out, "tern_sessions", "", broker.session_count());
    family(
        &mut out,
        "tern_subscriptions",
        "gauge",
        "Subscriptions held.",
    );
    sample(
        &mut out,
        "tern_subscriptions",
        "",
        broker.subscription_count(),
    );
    family(
        &mut out,
        "tern_retained_messages",
        "gauge",
        "Retained messages held.",
    );
    sample(
        &mut out,
        "tern_retained_messages",
        "",
        broker.retained_count(),
    );

    family(
        &mut out,
        "tern_messages_total",
        "counter",
        "PUBLISH packets by direction (in: from clients, out: to clients) and QoS.",
    );
    for qos in 0..3 {
        sample(
            &mut out,
            "tern_messages_total",
            &format!("direction=\"in\",qos=\"{qos}\""),
            load(&s.received_by_qos[qos]),
        );
        sample(
            &mut out,
            "tern_messages_total",
            &format!("direction=\"out\",qos=\"{qos}\""),
            load(&s.sent_by_qos[qos]),
        );
    }
    family(
        &mut out,
        "tern_bytes_total",
        "counter",
        "Bytes by direction, all packets.",
    );
    sample(
        &mut out,
        "tern_bytes_total",
        "direction=\"in\"",
        load(&s.bytes_received),
    );
    sample(
        &mut out,
        "tern_bytes_total",
        "direction=\"out\"",
        load(&s.bytes_sent),
    );
    family(
        &mut out,
        "tern_messages_dropped_total",
        "counter",
        "Messages that did not reach a subscriber, by cause.",
    );
    for cause in DropCause::ALL {
        sample(
            &mut out,
            "tern_messages_dropped_total",
            &format!("cause=\"{}\"", cause.name()),
            load(&s.dropped[cause as usize]),
        );
    }

    let (mut queued, mut inflight, mut deepest) = (0usize, 0usize, 0usize);
    for session in broker.sessions_list() {
        let state = session.lock();
        queued += state.queue.len();
        inflight += state.inflight.len();
        deepest = deepest.max(state.queue.len());
    }
    family(
        &mut out,
        "tern_queued_messages",
        "gauge",
        "Messages waiting in session queues.",
    );
    sample(&mut out, "tern_queued_messages", "", queued);
    family(
        &mut out,
        "tern_queue_depth_max",
        "gauge",
        "The longest session queue.",
    );
    sample(&mut out, "tern_queue_depth_max", "", deepest);
    family(
        &mut out,
        "tern_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent to clients and not yet acknowledged.",
    );
    sample(&mut out, "tern_inflight_messages", "", inflight);

    if let Some(dir) = store_dir {
        family(
            &mut out,
            "tern_store_bytes",
            "gauge",
            "Bytes in the store's files on disk.",
        );
        sample(&mut out, "tern_store_bytes", "", dir_size(dir));
        let failing = broker.store().is_some_and(|st| st.is_failing());
        family(
            &mut out,
            "tern_store_failing",
            "gauge",
            "1 while the store cannot write.",
        );
        sample(&mut out, "tern_store_failing", "", u8::from(failing));
    }

    family(
        &mut out,
        "tern_auth_failures_total",
        "counter",
        "CONNECTs refused for a wrong or unknown user name or password.",
    );
    sample(
        &mut out,
        "tern_auth_failures_total",
        "",
        load(&metrics.auth_failures),
    );
    family(
        &mut out,
        "tern_connect_refusals_total",
        "counter",
        "CONNECTs whose authentication failed for another reason (e.g. anonymous not allowed).",
    );
    sample(
        &mut out,
        "tern_connect_refusals_total",
        "",
        load(&metrics.connect_refusals),
    );
    family(
        &mut out,
        "tern_console_login_failures_total",
        "counter",
        "Console logins refused.",
    );
    sample(
        &mut out,
        "tern_console_login_failures_total",
        "",
        load(&metrics.console_login_failures),
    );
    if !bridges.is_empty() {
        family(
            &mut out,
            "tern_bridge_connected",
            "gauge",
            "1 while the bridge is connected to its remote.",
        );
        for b in bridges {
            let label = format!("bridge=\"{}\"", b.name);
            sample(
                &mut out,
                "tern_bridge_connected",
                &label,
                u8::from(b.connected.load(Ordering::Relaxed)),
            );
        }
        family(
            &mut out,
            "tern_bridge_messages_total",
            "counter",
            "Messages forwarded by bridges, by direction (out: to the remote).",
        );
        for b in bridges {
            sample(
                &mut out,
                "tern_bridge_messages_total",
                &format!("bridge=\"{}\",direction=\"out\"", b.name),
                load(&b.forwarded_out),
            );
            sample(
                &mut out,
                "tern_bridge_messages_total",
                &format!("bridge=\"{}\",direction=\"in\"", b.name),
                load(&b.forwarded_in),
            );
        }
        family(
            &mut out,
            "tern_bridge_queued_messages",
            "gauge",
            "Messages waiting for the bridge's remote.",
        );
        for b in bridges {
            sample(
                &mut out,
                "tern_bridge_queued_messages",
                &format!("bridge=\"{}\"", b.name),
                b.queued(broker),
            );
        }
        family(
            &mut out,
            "tern_bridge_errors_total",
            "counter",
            "Bridge connection failures and refused messages.",
        );
        for b in bridges {
            sample(
                &mut out,
                "tern_bridge_errors_total",
                &format!("bridge=\"{}\"", b.name),
                load(&b.errors),
            );
        }
    }
    if let Some(c) = metrics.cluster.get() {
        family(
            &mut out,
            "tern_cluster_connected",
            "gauge",
            "1 while this node is connected to NATS.",
        );
        sample(
            &mut out,
            "tern_cluster_connected",
            "",
            u8::from(c.connected.load(Ordering::Relaxed)),
        );
        for (name, help, out_value, in_value) in [
            (
                "tern_cluster_messages_total",
                "Messages exchanged with the other nodes (out: published on NATS; in: routed here).",
                &c.forwarded_out,
                &c.forwarded_in,
            ),
            (
                "tern_cluster_sessions_moved_total",
                "Persistent sessions taken over from another node (in) or handed to one (out).",
                &c.sessions_moved_out,
                &c.sessions_moved_in,
            ),
        ] {
            family(&mut out, name, "counter", help);
            sample(&mut out, name, "direction=\"out\"", load(out_value));
            sample(&mut out, name, "direction=\"in\"", load(in_value));
        }
        for (name, help, value) in [
            (
                "tern_cluster_dropped_total",
                "Messages not forwarded to the cluster (queue full or NATS refused them).",
                load(&c.dropped),
            ),
            (
                "tern_cluster_caught_up_total",
                "Messages read from the cluster's stream after an outage of the NATS connection.",
                load(&c.caught_up),
            ),
            (
                "tern_cluster_unconfirmed_total",
                "QoS 1/2 messages the cluster's stream did not confirm in time (acknowledged anyway).",
                load(&c.unconfirmed),
            ),
            (
                "tern_cluster_duplicates_total",
                "Extra copies of a message from NATS dropped on arrival.",
                load(&c.duplicates),
            ),
            (
                "tern_cluster_retained_synced_total",
                "Retained messages written to or applied from the replicated bucket.",
                load(&c.retained_synced),
            ),
            (
                "tern_cluster_taken_over_total",
                "Connections closed here because their client connected to another node.",
                load(&c.taken_over),
            ),
            (
                "tern_cluster_sessions_recovered_total",
                "Persistent sessions rebuilt here from the summary of a node that did not answer.",
                load(&c.sessions_recovered),
            ),
        ] {
            family(&mut out, name, "counter", help);
            sample(&mut out, name, "", value);
        }
        for (name, help, value) in [
            (
                "tern_cluster_subscriptions",
                "NATS subscriptions this node holds for its local filters.",
                c.subjects.load(Ordering::Relaxed) as u64,
            ),
            (
                "tern_cluster_sessions_summarised",
                "Persistent sessions of this node whose summary is in the cluster's bucket.",
                load(&c.sessions_summarised),
            ),
        ] {
            family(&mut out, name, "gauge", help);
            sample(&mut out, name, "", value);
        }
    }
    metrics.publish_handling.render(
        &mut out,
        "tern_publish_handling_seconds",
        "Time the broker takes to handle one PUBLISH (route and queue; disk wait excluded; a read's time shared among its PUBLISH packets).",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn a_shared_observation_counts_each_at_the_mean() {
        let h = Histogram::default();
        // 4 PUBLISH packets handled in one turn of 120 us: each 30 us.
        h.observe_shared(Duration::from_micros(120), 4);
        h.observe_shared(Duration::from_secs(1), 0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 0.00012\n"), "{out}");
        assert_eq!(h.count(), 4);
    }
}
