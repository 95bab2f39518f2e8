//! The codec at its boundary: bytes in, packets out, and back. One test binary for the crate.

#![allow(clippy::unwrap_used)]
// Test generators trade type neatness for one place per packet shape.
#![allow(clippy::type_complexity, clippy::large_enum_variant)]

mod fuzz_failures;
mod roundtrip;
mod tables;
