//! One client connection: read, decode, hand to the broker, write what it answers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Broker, Close, Connection, End};
use tern_proto::{decode, Packet, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use crate::now;

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A deadline far enough away to never come (keep alive 0).
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Connection::new(broker.clone(), peer.to_string());
    let mut stream = stream;
    // Buffers grow only when a client sends or is sent something, and the read chunk lives on
    // the stack only while reading: an idle connection keeps little more than its task.
    let mut input: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut deadline = Instant::now() + CONNECT_TIMEOUT;

    let end = loop {
        let session = conn.session().cloned();
        let wake = async {
            match &session {
                Some(s) => s.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            ready = stream.readable() => match ready.and_then(|()| read_available(&stream, &mut input)) {
                Ok(Read::Nothing) => Ok(()),
                Ok(Read::Eof) | Err(_) => Err(End::Lost),
                Ok(Read::Data(n)) => {
                    broker.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    let step = handle_input(&mut conn, &mut input, &mut out);
                    // [MQTT-3.1.2-22] any packet restarts the keep alive timer; keep alive 0 turns
                    // it off [MQTT-3.1.2-10]. Before CONNECT the connect timeout stands.
                    if conn.session().is_some() {
                        deadline = Instant::now() + conn.silence_limit().unwrap_or(NO_TIMEOUT);
                    }
                    step
                }
            },
            _ = wake => conn.flush(now(), &mut out).map_err(|c| closed(&mut conn, c, &mut out)),
            _ = sleep_until(deadline) => {
                // [MQTT-3.1.2-24] silent for 1.5 times the keep alive, or no CONNECT in time.
                let close = match conn.session() {
                    Some(_) => Close::new(ReasonCode::KEEP_ALIVE_TIMEOUT).because("no packet for 1.5 times the keep alive"),
                    None => Close::new(ReasonCode::MAXIMUM_CONNECT_TIME).because("no CONNECT in time"),
                };
                Err(closed(&mut conn, close, &mut out))
            }
            _ = shutdown.changed() => {
                conn.close(&Close::new(ReasonCode::SERVER_SHUTTING_DOWN), &mut out);
                Err(End::Shutdown)
            }
        };
        if !out.is_empty() {
            broker
                .stats
                .bytes_sent
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            if stream.write_all(&out).await.is_err() {
                break End::Lost;
            }
            out.clear();
            if out.capacity() > 64 * 1024 {
                out.shrink_to(4096);
            }
        }
        if let Err(end) = step {
            break end;
        }
    };
    let _ = stream.shutdown().await;
    if let Some(will) = conn.end(end, now()) {
        let broker = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(will.delay).await;
            broker.publish_delayed_will(will, now());
        });
    }
}

/// What a non-blocking read found.
enum Read {
    Data(usize),
    Eof,
    Nothing,
}

/// Reads what the socket has, up to 64 KiB so one busy client cannot starve its task's other
/// duties, appending to `input`.
fn read_available(stream: &TcpStream, input: &mut Vec<u8>) -> std::io::Result<Read> {
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.try_read(&mut chunk) {
            // End of stream: handle what came with it first; the next read sees the end again.
            Ok(0) if total > 0 => return Ok(Read::Data(total)),
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => {
                input.extend_from_slice(&chunk[..n]);
                total += n;
                if total >= 64 * 1024 {
                    return Ok(Read::Data(total));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(if total > 0 {
                    Read::Data(total)
                } else {
                    Read::Nothing
                });
            }
            Err(e) => return Err(e),
        }
    }
}

fn closed(conn: &mut Connection, close: Close, out: &mut Vec<u8>) -> End {
    conn.close(&close, out);
    End::Closed(close.reason)
}

/// Decodes and handles every whole packet in `input`, then sends what the session may.
fn handle_input(conn: &mut Connection, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), End> {
    let mut used_total = 0;
    let result = loop {
        match decode(&input[used_total..], conn.version(), conn.max_packet_size()) {
            Ok(Some((packet, used))) => {
                used_total += used;
                let disconnect = match packet {
                    Packet::Disconnect(d) => Some(d.reason),
                    _ => None,
                };
                if let Err(close) = conn.handle(packet, now(), out) {
                    break Err(closed(conn, close, out));
                }
                if let Some(reason) = disconnect {
                    break Err(End::Disconnected(reason));
                }
            }
            Ok(None) => break Ok(()),
            Err(err) => {
                debug!(error = %err, "malformed packet");
                let close = conn.reject(err, out);
                break Err(End::Closed(close.reason));
            }
        }
    };
    input.drain(..used_total);
    if input.capacity() > 64 * 1024 && input.len() < 4096 {
        input.shrink_to(4096);
    }
    result?;
    conn.flush(now(), out).map_err(|c| closed(conn, c, out))
}
