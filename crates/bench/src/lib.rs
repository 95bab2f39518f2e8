//! `tern bench`: load for any MQTT broker, with exact accounting of what was published,
//! delivered, lost and duplicated.
//!
//! Scenarios: `conn` (open connections at once and hold them; connect rate and CONNACK
//! latency), `p2p` (N publisher/subscriber pairs, a topic each), `fanin` (N publishers, one
//! wildcard subscriber), `fanout` (one publisher, N subscribers). Throughput scenarios run
//! closed-loop: a publisher keeps at most `window` messages that its subscribers have not all
//! received, so the figure is what the broker delivers, not the backlog it can pile up.
//!
//! Payloads carry the publisher's number and a sequence number. Within one publisher's topic
//! MQTT keeps order, so a subscriber tells a duplicate (a sequence it has passed) from a loss
//! (a sequence it skipped) without remembering every message.

mod frame;
mod load;

pub use load::{run, tls, Report, Scenario, Settings, Tls};
