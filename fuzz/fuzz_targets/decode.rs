//! Any bytes, in any protocol version and with any size limit: decode must return a packet,
//! "need more" or an error, never panic, and never claim more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::{decode, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let version = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5][usize::from(selector % 3)];
    let max = if selector & 0x80 != 0 { 64 } else { tern_proto::MAX_PACKET_SIZE };
    let mut rest = bytes;
    while let Ok(Some((_, used))) = decode(rest, version, max) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
