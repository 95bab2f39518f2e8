//! decode -> encode -> decode: whatever decodes must encode, and decode again to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::{decode, Packet, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let version = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5][usize::from(selector % 3)];
    let Ok(Some((packet, _))) = decode(bytes, version, tern_proto::MAX_PACKET_SIZE) else { return };
    let version = match packet {
        Packet::Connect(c) => c.version,
        _ => version,
    };
    let encoded = packet.encode_to_vec(version).expect("a decoded packet encodes");
    let (again, used) = decode(&encoded, version, tern_proto::MAX_PACKET_SIZE)
        .expect("an encoded packet decodes")
        .expect("an encoded packet is complete");
    assert_eq!(used, encoded.len());
    assert_eq!(again, packet);
});
