//! PUBACK, PUBREC, PUBREL and PUBCOMP from a client: the QoS 1 and 2 handshakes.
//!
//! Each step of a stored message is recorded after the session's lock is released (lock
//! order: the store, then a session). What a crash must not undo makes the connection's
//! output wait for the disk: PUBREC received (after the PUBREL that follows, the subscriber may
//! forget the packet id, so the PUBLISH must never be sent again) and a released QoS 2 packet
//! id of the client's own (after PUBCOMP the publisher may reuse the id). A lost Done record
//! only means a message or a PUBREL is sent again after a crash, which QoS 1 and 2 allow.

use tern_proto::{Ack, Packet, ReasonCode};

use crate::broker::Broker;
use crate::connection::{send, Attached, Close};
use crate::persist::Step;
use crate::session::Inflight;

/// Records `step` for a persistent session (entry 0 is not stored: nothing to record). It
/// waits in the connection until the flush that follows the packets read in this turn
/// (`deliver::flush`), which writes all of them in one frame before any output leaves.
fn log(broker: &Broker, a: &mut Attached, step: Step) {
    if broker.store().is_none() || !a.session.is_persistent() {
        return;
    }
    let (stored, wait) = match step {
        Step::Done(seq) => (seq != 0, false),
        Step::Released(seq) => (seq != 0, true),
        Step::IncomingReleased(_) => (true, true),
    };
    if stored {
        a.steps.push(step);
        a.steps_wait |= wait;
    }
}

/// Ends the delivery in flight under `id` if `ends` says this acknowledgement ends it, and
/// returns its store entry.
fn finish(a: &mut Attached, id: u16, ends: impl Fn(&Inflight) -> Option<u64>) -> Option<u64> {
    let ended = a.session.lock().inflight.remove_if(id, ends)?;
    // The entry (often the last reference to its message) is freed after the lock is
    // released, so a publisher routing into this session waits less.
    Some(ended.0)
}

/// PUBACK ends a QoS 1 delivery [MQTT-4.3.2-1].
pub(crate) fn handle_puback(broker: &Broker, a: &mut Attached, ack: Ack<'_>) -> Result<(), Close> {
    let ends = |e: &Inflight| match e {
        Inflight::Publish(o) => Some(o.seq),
        Inflight::Release { .. } => None,
    };
    if let Some(seq) = finish(a, ack.packet_id.get(), ends) {
        log(broker, a, Step::Done(seq));
    }
    Ok(())
}

/// PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-4]. A failure reason
/// ends the exchange with no PUBREL.
pub(crate) fn handle_pubrec(
    broker: &Broker,
    a: &mut Attached,
    ack: Ack<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let id = ack.packet_id.get();
    let mut state = a.session.lock();
    let seq = match state.inflight.get(&id) {
        Some(Inflight::Publish(o)) => Some(o.seq),
        Some(Inflight::Release { seq }) => Some(*seq),
        None => None,
    };
    if !ack.reason.is_success() {
        state.inflight.remove(&id);
        drop(state);
        if let Some(seq) = seq {
            log(broker, a, Step::Done(seq));
        }
        return Ok(());
    }
    let mut rel = Ack::new(ack.packet_id);
    match seq {
        Some(seq) => {
            state.inflight.insert(id, Inflight::Release { seq });
            drop(state);
            log(broker, a, Step::Released(seq));
        }
        None => {
            drop(state);
            rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
    }
    send(out, &Packet::PubRel(rel), a.version);
    Ok(())
}

/// Forgets a QoS 2 packet id the client sent, in the store too. Returns whether it was known.
pub(crate) fn release_incoming(broker: &Broker, a: &mut Attached, id: u16) -> bool {
    let known = a.session.lock().incoming_qos2.remove(&id);
    if known {
        log(broker, a, Step::IncomingReleased(id));
    }
    known
}

/// PUBREL: the client releases a QoS 2 message it sent; answer PUBCOMP [MQTT-4.3.3-11].
pub(crate) fn handle_pubrel(
    broker: &Broker,
    a: &mut Attached,
    ack: Ack<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let known = release_incoming(broker, a, ack.packet_id.get());
    let mut comp = Ack::new(ack.packet_id);
    if !known {
        comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    }
    send(out, &Packet::PubComp(comp), a.version);
    Ok(())
}

/// PUBCOMP ends a QoS 2 delivery [MQTT-4.3.3-7].
pub(crate) fn handle_pubcomp(broker: &Broker, a: &mut Attached, ack: Ack<'_>) -> Result<(), Close> {
    let ends = |e: &Inflight| match e {
        Inflight::Release { seq } => Some(*seq),
        Inflight::Publish(_) => None,
    };
    if let Some(seq) = finish(a, ack.packet_id.get(), ends) {
        log(broker, a, Step::Done(seq));
    }
    Ok(())
}
