//! The MQTT client of tern, one client for boards and desktops.
//!
//! - [`core`]: a sans-IO protocol state machine (`no_std`, no allocator): connect, publish at
//!   QoS 0/1/2, subscribe, keep alive, packet identifiers and in-flight tracking, MQTT 3.1.1
//!   and 5.0. Transports drive it with bytes and the time.
//! - `embedded` (feature `embedded`): an async client over any `embedded-io-async` stream, for
//!   boards (embassy-net TCP, embedded-tls).
//! - `tokio` (feature `tokio`): a desktop client over TCP, TLS or WebSocket, optionally robust:
//!   it reconnects with backoff, resubscribes and resends what was not acknowledged.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]

pub mod core;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use crate::core::{Error, Event, Options, Outgoing, Protocol, Step};
pub use tern_proto::{ProtocolVersion, QoS, ReasonCode};
