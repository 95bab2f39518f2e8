//! PUBACK, PUBREC, PUBREL and PUBCOMP from a client: the QoS 1 and 2 handshakes.
//!
//! Each step of a stored message is recorded after the session's lock is released (lock
//! order: the store, then a session). What a crash must not undo makes the connection's
//! output wait for the disk: PUBREC received (after the PUBREL that follows, the subscriber may
//! forget the packet id, so the PUBLISH must never be sent again) and a released QoS 2 packet
//! id of the client's own (after PUBCOMP the publisher may reuse the id). A lost Done record
//! only means a message or a PUBREL is sent again after a crash, which QoS 1 and 2 allow.

use tern_proto::{Ack, Packet, ReasonCode};
use tern_store::Record;

use crate::broker::Broker;
use crate::connection::{send, Attached, Close};
use crate::persist::Step;
use crate::session::Inflight;

/// Records `record` for a persistent session; with `wait`, the connection's output waits
/// for it to be durable.
///
/// The record waits in the connection until the flush that follows the packets read in this
/// turn (`deliver::flush`), which writes all of them in one frame before any output leaves.
fn log(broker: &Broker, a: &mut Attached, record: Record<'_>, wait: bool) {
    if broker.store().is_none() || !a.session.is_persistent() {
        return;
    }
    let step = match record {
        Record::Done { seq, .. } => Step::Done(seq),
        Record::Released { seq, .. } => Step::Released(seq),
        Record::IncomingReleased { packet_id, .. } => Step::IncomingReleased(packet_id),
        _ => return,
    };
    a.steps.push(step);
    a.steps_wait |= wait;
}

/// PUBACK ends a QoS 1 delivery [MQTT-4.3.2-1].
pub(crate) fn handle_puback(broker: &Broker, a: &mut Attached, ack: Ack<'_>) -> Result<(), Close> {
    let id = ack.packet_id.get();
    let seq = {
        let mut state = a.session.lock();
        match state.inflight.get(&id) {
            Some(Inflight::Publish(o)) => {
                let seq = o.seq;
                state.inflight.remove(&id);
                seq
            }
            _ => 0,
        }
    };
    if seq != 0 {
        let client = a.client_id.clone();
        log(
            broker,
            a,
            Record::Done {
                client: &client,
                seq,
            },
            false,
        );
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
    let client = a.client_id.clone();
    if !ack.reason.is_success() {
        state.inflight.remove(&id);
        drop(state);
        if let Some(seq) = seq.filter(|s| *s != 0) {
            log(
                broker,
                a,
                Record::Done {
                    client: &client,
                    seq,
                },
                false,
            );
        }
        return Ok(());
    }
    let mut rel = Ack::new(ack.packet_id);
    match seq {
        Some(seq) => {
            state.inflight.insert(id, Inflight::Release { seq });
            drop(state);
            if seq != 0 {
                log(
                    broker,
                    a,
                    Record::Released {
                        client: &client,
                        seq,
                    },
                    true,
                );
            }
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
        let client = a.client_id.clone();
        log(
            broker,
            a,
            Record::IncomingReleased {
                client: &client,
                packet_id: id,
            },
            true,
        );
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
    let id = ack.packet_id.get();
    let seq = {
        let mut state = a.session.lock();
        match state.inflight.get(&id) {
            Some(Inflight::Release { seq }) => {
                let seq = *seq;
                state.inflight.remove(&id);
                seq
            }
            _ => 0,
        }
    };
    if seq != 0 {
        let client = a.client_id.clone();
        log(
            broker,
            a,
            Record::Done {
                client: &client,
                seq,
            },
            false,
        );
    }
    Ok(())
}
