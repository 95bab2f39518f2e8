//! The byte streams MQTT arrives on: TCP, TLS, WebSocket and WebSocket over TLS, behind one
//! read/write interface for the connection task.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::spare::Spare;

/// A client's stream.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
    /// WebSocket on the console's port, upgraded from its HTTP connection.
    Upgraded(Box<WebSocketStream<TokioIo<Upgraded>>>),
}

/// Largest read in one turn, so one busy client cannot starve its task's other duties.
const READ_TURN: usize = 64 * 1024;

/// The first read of a turn, into a buffer on the stack.
const FIRST_READ: usize = 16 * 1024;

impl Transport {
    /// Waits for bytes and appends them to `input`; `Ok(0)` at the end of the stream.
    pub(crate) async fn read_into(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            // Polled rather than awaited through `readable()`, whose future is 150 bytes of
            // every idle connection's task.
            Transport::Tcp(s) => std::future::poll_fn(|cx| poll_read_tcp(s, cx, input)).await,
            // Boxed: the state of these reads would otherwise enlarge every connection's
            // task, plain TCP ones included, by the largest of them.
            Transport::Tls(s) => {
                input.reserve(4096);
                Box::pin(s.read_buf(input)).await
            }
            Transport::Ws(ws) => Box::pin(read_ws(ws, input)).await,
            Transport::Wss(ws) => Box::pin(read_ws(ws, input)).await,
            Transport::Upgraded(ws) => Box::pin(read_ws(ws, input)).await,
        }
    }

    /// Writes all of `data` (one WebSocket binary message on WebSocket transports).
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(data).await,
            Transport::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Transport::Ws(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(io::Error::other),
            Transport::Wss(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(io::Error::other),
            Transport::Upgraded(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the stream politely, where the protocol has a way to.
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
            Transport::Ws(ws) => WebSocketStream::close(ws, None)
                .await
                .map_err(io::Error::other),
            Transport::Wss(ws) => WebSocketStream::close(ws, None)
                .await
                .map_err(io::Error::other),
            Transport::Upgraded(ws) => WebSocketStream::close(ws, None)
                .await
                .map_err(io::Error::other),
        };
    }
}

/// Reads what a TCP socket has into `input`, or registers `cx` to wait when it has nothing.
///
/// The first read goes to a stack buffer, so an idle connection holds no read buffer and a
/// turn allocates what arrived, once; a full stack buffer means more may wait, and the rest
/// is read straight into `input`. A short read tells tokio the socket is drained (it clears
/// the readiness), which spares the read that would only answer `WouldBlock`.
fn poll_read_tcp(
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    input: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut buf = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
    let first = buf.filled();
    let mut total = first.len();
    if total > 0 {
        Spare::Input.lend_to(input);
    }
    if total == FIRST_READ {
        input.reserve(READ_TURN);
    }
    input.extend_from_slice(first);
    if total < FIRST_READ {
        return Poll::Ready(Ok(total));
    }
    while total < READ_TURN {
        match stream.try_read_buf(input) {
            Ok(0) => break,
            Ok(n) => total += n,
            // What was read is handed over first; an error shows again on the next read.
            Err(_) => break,
        }
    }
    Poll::Ready(Ok(total))
}

/// MQTT over WebSocket travels in binary messages, which need not align with packets.
pub(crate) async fn read_ws<S>(
    ws: &mut WebSocketStream<S>,
    input: &mut Vec<u8>,
) -> io::Result<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) if data.is_empty() => continue,
            Some(Ok(Message::Binary(data))) => {
                input.extend_from_slice(&data);
                return Ok(data.len());
            }
            Some(Ok(Message::Close(_))) | None => return Ok(0),
            // Pings are answered by the WebSocket layer itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            // MQTT over WebSocket is binary only.
            Some(Ok(Message::Text(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text WebSocket message",
                ));
            }
            Some(Err(e)) => return Err(io::Error::other(e)),
        }
    }
}
