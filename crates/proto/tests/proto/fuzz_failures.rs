//! Every input the fuzzers found a fault with, replayed through the same checks as the
//! `roundtrip` fuzz target. Files are `tests/fuzz-failures/<target>-NNNN.bin`: a selector
//! byte (version = selector % 3), then the packet bytes.

use tern_proto::{decode, Packet, ProtocolVersion};

fn roundtrip(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let version = [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ][usize::from(selector % 3)];
    let Ok(Some((packet, _))) = decode(bytes, version, u32::MAX) else {
        return;
    };
    let version = match packet {
        Packet::Connect(c) => c.version,
        _ => version,
    };
    let mut out = vec![0u8; packet.encoded_len(version).unwrap()];
    packet.encode(version, &mut out).unwrap();
    assert_eq!(
        decode(&out, version, u32::MAX),
        Ok(Some((packet, out.len())))
    );
}

#[test]
fn replay_fuzz_failures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-failures");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        roundtrip(&data);
        count += 1;
    }
    assert!(count > 0, "the fuzz-failures folder went missing");
}

/// roundtrip-0001: a 3.1 CONNACK with its reserved first byte set decoded as Session Present,
/// which 3.1 does not have, and re-encoded without it.
#[test]
fn r0001_v31_connack_reserved_byte() {
    assert_eq!(
        decode(&[0x20, 2, 1, 2], ProtocolVersion::V3_1, 16),
        Err(tern_proto::DecodeError::ConnAckReservedFlags)
    );
}
