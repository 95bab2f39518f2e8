//! The broker's protocol logic: sessions, subscriptions, retained messages and delivery, for
//! MQTT 3.1, 3.1.1 and 5.0.
//!
//! Owns what a broker decides: who receives a message, at which QoS, when a session ends,
//! when a will is published. Leaves sockets, TLS, timers and files to `tern-server`: a
//! [`Connection`] is handed decoded packets and the time, and writes its answers into a
//! buffer; a [`Session`]'s `wake` tells the transport there is something to send. What must
//! outlive a crash is written to a `tern-store` as the state changes (`persist.rs`); the
//! transport holds a connection's output until [`Connection::durable_needed`] is on disk.

mod access;
mod admin;
mod broker;
mod config;
mod connection;
mod handle;
mod message;
mod migrate;
mod persist;
#[cfg(test)]
mod persist_tests;
mod scratch;
mod session;
mod tree;

pub use access::{AccessControl, AllowAll, Credentials, Identity};
pub use admin::Removal;
pub use broker::{
    Broker, ConnectHook, DropCause, Forwarder, InterestHook, Observer, Stats,
    CLUSTER_PUBLISHER_PREFIX,
};
pub use config::Limits;
pub use connection::{Close, Connection, DelayedWill, End, Origin};
pub use message::{Message, Payload};
pub use migrate::{MoveError, SessionSummary};
pub use session::{Inflight, InflightMap, Outgoing, Queue, QueueLimit, Session, SessionState};
pub use tree::{Matches, Subscriber, SubscriptionTree};
