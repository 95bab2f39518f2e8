//! What a subscriber of the load generator reads from the broker: just enough of each packet
//! to count it and answer it.
//!
//! A subscriber reads millions of packets a second in the fan-out scenarios, where a full
//! decode (every field, every property, the topic's UTF-8) took a third of the load
//! generator's core and capped the figure below what a broker can deliver. The broker's
//! output is checked in full by the protocol and interop tests; here only the framing, the
//! packet identifier and the payload matter, and a packet that does not frame is an error.

use tern_proto::wire::{decode_variable_u32, Reader};
use tern_proto::{DecodeError, ProtocolVersion};

/// A packet, as far as a bench subscriber cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen<'a> {
    /// PUBLISH: its QoS, its packet identifier (QoS 1 and 2) and its payload.
    Publish {
        qos: u8,
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    /// PUBREL: its packet identifier.
    PubRel(u16),
    /// Anything else.
    Other,
}

/// The packet at the start of `buf` and its length in bytes; `Ok(None)` until all of it is
/// there.
pub(crate) fn next(
    buf: &[u8],
    version: ProtocolVersion,
) -> Result<Option<(Seen<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((len, len_bytes)) = decode_variable_u32(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + len_bytes + len as usize;
    let Some(body) = buf.get(1 + len_bytes..total) else {
        return Ok(None);
    };
    let mut r = Reader::new(body);
    let seen = match first >> 4 {
        3 => {
            let qos = (first >> 1) & 3;
            r.binary()?;
            let packet_id = if qos > 0 { Some(r.u16()?) } else { None };
            if version.is_v5() {
                let properties = r.variable_u32()? as usize;
                r.take(properties)?;
            }
            Seen::Publish {
                qos,
                packet_id,
                payload: r.rest(),
            }
        }
        6 => Seen::PubRel(r.u16()?),
        _ => Seen::Other,
    };
    Ok(Some((seen, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{Packet, PacketId, Properties, Publish, QoS, TopicName};

    fn encoded(packet: &Packet<'_>, version: ProtocolVersion) -> Vec<u8> {
        let mut out = vec![0; packet.encoded_len(version).unwrap()];
        packet.encode(version, &mut out).unwrap();
        out
    }

    #[test]
    fn a_publication_reads_as_its_qos_identifier_and_payload_in_both_versions() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let publish = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicName::new("bench/1/2").unwrap(),
                packet_id: PacketId::new(7),
                properties: Properties {
                    message_expiry_interval: version.is_v5().then_some(60),
                    ..Properties::default()
                },
                payload: b"0123456789abcdef",
            };
            let mut bytes = encoded(&Packet::Publish(publish), version);
            let whole = bytes.len();
            bytes.extend_from_slice(&encoded(&Packet::PingResp, version));
            assert_eq!(
                next(&bytes, version).unwrap(),
                Some((
                    Seen::Publish {
                        qos: 1,
                        packet_id: Some(7),
                        payload: b"0123456789abcdef"
                    },
                    whole
                ))
            );
            assert_eq!(
                next(&bytes[whole..], version).unwrap(),
                Some((Seen::Other, 2))
            );
            // A packet cut short anywhere waits for the rest.
            for cut in 0..whole {
                assert_eq!(next(&bytes[..cut], version).unwrap(), None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_release_reads_as_its_identifier_and_a_bad_frame_is_an_error() {
        let v = ProtocolVersion::V3_1_1;
        assert_eq!(
            next(&[0x62, 2, 0, 9], v).unwrap(),
            Some((Seen::PubRel(9), 4))
        );
        // A topic length past the end of the packet.
        assert!(next(&[0x30, 3, 0, 9, b'a'], v).is_err());
        // A remaining length of five bytes [MQTT-1.5.5-1].
        assert!(next(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], v).is_err());
    }
}
