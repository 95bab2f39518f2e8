//! The broker on a real socket: a server started in-process on 127.0.0.1 port 0, driven by
//! raw MQTT clients that send packets and expect exact answers. Each test names the
//! normative statement it checks. One test binary for the crate.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod access;
mod client;
mod connect;
mod limits;
mod mqtt5;
mod persistence;
mod publish;
mod session;
mod subscribe;
mod umqtt;
