//! Entry points for the fuzz targets (`fuzz/`): the parts of the server that read bytes a
//! stranger chooses, other than MQTT packets (fuzzed in `tern-proto` and `tern-broker`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;

/// Parses configuration text; must never panic, whatever the text.
pub fn config(text: &str) {
    if let Err(e) = Config::parse(text) {
        assert!(!e.0.is_empty(), "a configuration error says nothing");
    }
}

/// A stream that yields fixed bytes, the upgrade request in reads of its own (a client sends
/// frames only once answered), and swallows what is written.
struct Replay<'a> {
    request: &'a [u8],
    input: &'a [u8],
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let from_request = !self.request.is_empty();
        let source = if from_request {
            self.request
        } else {
            self.input
        };
        let n = source.len().min(buf.remaining());
        buf.put_slice(&source[..n]);
        if from_request {
            self.request = &self.request[n..];
        } else {
            self.input = &self.input[n..];
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs the WebSocket listener's path over `data` from a client: the upgrade on `/mqtt`, then
/// reading MQTT bytes out of frames until the stream ends or fails. With `handshake`, a valid
/// upgrade request is sent first, so the frames are what `data` exercises. Must never panic
/// or loop for ever; returns the MQTT bytes read.
pub fn websocket(data: &[u8], handshake: bool) -> usize {
    const REQUEST: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    let request: &[u8] = if handshake { REQUEST } else { &[] };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return 0;
    };
    runtime.block_on(async {
        let stream = Replay {
            request,
            input: data,
        };
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async(stream, crate::websocket_check("/mqtt".into()))
                .await
        else {
            return 0;
        };
        let mut mqtt = Vec::new();
        // Each turn consumes input or ends: bounded by the input's length.
        for _ in 0..=data.len() {
            match crate::transport::read_ws(&mut ws, &mut mqtt).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        mqtt.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_frame_after_the_upgrade_is_read() {
        // A binary frame carrying PINGREQ (0xC0 0x00) masked with 1 2 3 4, then a close frame.
        let frame = [0x82, 0x82, 1, 2, 3, 4, 0xC1, 0x02, 0x88, 0x80, 0, 0, 0, 0];
        assert_eq!(websocket(&frame, true), 2);
        assert_eq!(websocket(b"garbage", false), 0);
        config("[limits]\nmax_inflight = 0\n");
    }
}
