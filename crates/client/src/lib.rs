//! The MQTT client of tern, one client for boards and desktops.
//!
//! - [`core`]: a sans-IO protocol state machine (`no_std`, no allocator): connect, publish at
//!   QoS 0/1/2, subscribe, keep alive, packet identifiers and in-flight tracking, MQTT 3.1.1
//!   and 5.0. Transports drive it with bytes and the time.
//! - `embedded` (feature `embedded`): an async client over any `embedded-io-async` stream, for
//!   boards (embassy-net TCP, embedded-tls).
//! - `tokio` (feature `tokio`): a desktop client over TCP, TLS or WebSocket, optionally robust:
//!   it reconnects with backoff, resubscribes and resends what was not acknowledged.
//!
//! The tutorial's two programs, against a broker started here for the example:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let mut config = tern_server::Config::default();
//! # config.data_dir = dir.path().to_owned();
//! # config.listeners = vec![tern_server::config::ListenerConfig::tcp("127.0.0.1:0".parse()?)];
//! # let broker = tern_server::Server::start(&config).await?;
//! # let url = format!("mqtt://127.0.0.1:{}", broker.local_addrs()[0].port());
//! use tern_client::tokio::{connect, Config, Event};
//! use tern_client::QoS;
//!
//! // The subscriber: subscribe, then handle each message as it arrives.
//! let (subscriber, mut events) = connect(Config::new(&url).robust()).await?;
//! subscriber.subscribe("Topic", QoS::AtLeastOnce).await?;
//!
//! // The publisher: a reading every second (three here), each acknowledged by the broker.
//! let (publisher, _) = connect(Config::new(&url).robust()).await?;
//! for reading in 0..3 {
//!     publisher.publish("Topic", format!("reading {reading}"), QoS::AtLeastOnce, false).await?;
//! #   if false {
//!     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//! #   }
//! }
//!
//! let mut got = Vec::new();
//! while got.len() < 3 {
//!     if let Some(Event::Message(m)) = events.recv().await {
//!         got.push(String::from_utf8(m.payload)?);
//!     }
//! }
//! assert_eq!(got, ["reading 0", "reading 1", "reading 2"]);
//! # Ok(()) }
//! ```
//!
//! On a board, the same protocol without sockets or an allocator: the caller moves the bytes.
//!
//! ```
//! use tern_client::{Event, Options, Protocol, QoS};
//!
//! let mut mqtt = Protocol::<4>::new();
//! let mut out = [0u8; 128];
//! let mut options = Options::new("pico-pub");
//! options.keep_alive = 7200;
//! let n = mqtt.connect(&options, 0, &mut out)?;          // send out[..n] to the broker
//! # let _ = n;
//! let step = mqtt.handle(&[0x20, 2, 0, 0], 0, &mut out)?.unwrap(); // CONNACK arrived
//! assert_eq!(step.event, Some(Event::Connected { session_present: false }));
//! let (n, id) = mqtt.publish("Topic", b"21.5", QoS::AtLeastOnce, false, 10, &mut out)?;
//! # let _ = n;
//! let ack = [0x40, 2, 0, id.unwrap().get() as u8];     // PUBACK arrived
//! let step = mqtt.handle(&ack, 20, &mut out)?.unwrap();
//! assert!(matches!(step.event, Some(Event::Published { .. })));
//! # Ok::<(), tern_client::Error>(())
//! ```
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]

pub mod core;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use crate::core::{Error, Event, Options, Outgoing, Protocol, Step};
pub use tern_proto::{ProtocolVersion, QoS, ReasonCode};
