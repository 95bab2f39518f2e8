//! A short run of each scenario against tern in-process: the accounting adds up. No timing is
//! asserted: this machine is shared and noisy.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use tern_bench::{run, Scenario, Settings};
use tern_proto::{ProtocolVersion, QoS};

async fn broker() -> (tern_server::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tern_server::Config::default();
    config.data_dir = dir.path().to_owned();
    config.listeners = vec![tern_server::config::ListenerConfig::tcp(
        "127.0.0.1:0".parse().unwrap(),
    )];
    config.sys.interval = 0;
    (tern_server::Server::start(&config).await.unwrap(), dir)
}

fn settings(server: &tern_server::Server, scenario: Scenario, qos: QoS) -> Settings {
    Settings {
        broker: server.local_addrs()[0],
        sub_broker: None,
        scenario,
        clients: 3,
        qos,
        size: 64,
        duration: Duration::from_millis(300),
        window: 50,
        version: ProtocolVersion::V3_1_1,
        rate: 300,
        persistent: false,
        open_loop: false,
        progress: false,
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_scenarios_account_for_every_message() {
    let (server, _dir) = broker().await;
    for (scenario, qos) in [
        (Scenario::P2p, QoS::AtMostOnce),
        (Scenario::P2p, QoS::AtLeastOnce),
        (Scenario::P2p, QoS::ExactlyOnce),
        (Scenario::Fanin, QoS::AtLeastOnce),
    ] {
        let r = run(settings(&server, scenario, qos)).await.unwrap();
        assert!(r.published > 0, "{scenario:?} {qos:?}: {r:?}");
        // QoS 1 and 2 lose nothing; nothing is duplicated on a healthy connection.
        if qos != QoS::AtMostOnce {
            assert_eq!(r.lost, 0, "{scenario:?} {qos:?}: {r:?}");
        }
        assert_eq!(r.duplicated, 0, "{r:?}");
        assert_eq!(r.delivered + r.lost, r.expected, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_scenario_opens_every_connection() {
    let (server, _dir) = broker().await;
    let mut s = settings(&server, Scenario::Conn, QoS::AtMostOnce);
    s.clients = 200;
    let r = run(s).await.unwrap();
    assert_eq!(r.connections, 200);
    assert_eq!(r.alive_after_hold, 200);
    assert!(r.connack_p50_ms <= r.connack_p99_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_scenario_reports_ordered_percentiles() {
    let (server, _dir) = broker().await;
    let r = run(settings(&server, Scenario::Latency, QoS::AtLeastOnce))
        .await
        .unwrap();
    assert!(r.delivered > 0 && r.lost == 0, "{r:?}");
    assert!(
        r.latency_p50_ms <= r.latency_p99_ms
            && r.latency_p99_ms <= r.latency_p999_ms
            && r.latency_p999_ms <= r.latency_max_ms,
        "{r:?}"
    );
}
