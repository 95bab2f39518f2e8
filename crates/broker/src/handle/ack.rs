//! PUBACK, PUBREC, PUBREL and PUBCOMP from a client: the QoS 1 and 2 handshakes.

use tern_proto::{Ack, Packet, ReasonCode};

use crate::connection::{send, Attached, Close};
use crate::session::Inflight;

/// PUBACK ends a QoS 1 delivery [MQTT-4.3.2-1].
pub(crate) fn handle_puback(a: &mut Attached, ack: Ack<'_>) -> Result<(), Close> {
    let mut state = a.session.lock();
    if let Some(Inflight::Publish(_)) = state.inflight.get(&ack.packet_id.get()) {
        state.inflight.remove(&ack.packet_id.get());
    }
    Ok(())
}

/// PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-4]. A failure reason
/// ends the exchange with no PUBREL.
pub(crate) fn handle_pubrec(
    a: &mut Attached,
    ack: Ack<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let id = ack.packet_id.get();
    let mut state = a.session.lock();
    let known = matches!(
        state.inflight.get(&id),
        Some(Inflight::Publish(_) | Inflight::Release)
    );
    if !ack.reason.is_success() {
        state.inflight.remove(&id);
        return Ok(());
    }
    let mut rel = Ack::new(ack.packet_id);
    if known {
        state.inflight.insert(id, Inflight::Release);
    } else {
        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    }
    drop(state);
    send(out, &Packet::PubRel(rel), a.version);
    Ok(())
}

/// PUBREL: the client releases a QoS 2 message it sent; answer PUBCOMP [MQTT-4.3.3-11].
pub(crate) fn handle_pubrel(
    a: &mut Attached,
    ack: Ack<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let known = a.session.lock().incoming_qos2.remove(&ack.packet_id.get());
    let mut comp = Ack::new(ack.packet_id);
    if !known {
        comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    }
    send(out, &Packet::PubComp(comp), a.version);
    Ok(())
}

/// PUBCOMP ends a QoS 2 delivery [MQTT-4.3.3-7].
pub(crate) fn handle_pubcomp(a: &mut Attached, ack: Ack<'_>) -> Result<(), Close> {
    let mut state = a.session.lock();
    if let Some(Inflight::Release) = state.inflight.get(&ack.packet_id.get()) {
        state.inflight.remove(&ack.packet_id.get());
    }
    Ok(())
}
