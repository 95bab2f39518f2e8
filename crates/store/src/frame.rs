//! Files and frames: how records sit on disk.
//!
//! A file starts with a 12-byte header: 8 bytes of magic (`TERNWAL\0` for a log segment,
//! `TERNSNP\0` for a snapshot) and the format version as a little-endian `u32`. Then frames:
//! a `u32` body length, the CRC-32 (IEEE) of the body, and the body, which is one or more
//! whole records. A frame is the unit of atomicity: after a crash a frame is either all there
//! with its checksum right, or it is the torn end of the log.

use crate::record::FORMAT_VERSION;

/// Magic of a log segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"TERNWAL\0";
/// Magic of a snapshot.
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"TERNSNP\0";
/// Bytes before the first frame.
pub(crate) const HEADER_LEN: usize = 12;
/// Bytes before a frame's body.
pub(crate) const FRAME_HEADER_LEN: usize = 8;

/// The header of a file of kind `magic`.
pub(crate) fn header(magic: &[u8; 8]) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// What is wrong with a file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Too short, or not a tern file of the expected kind.
    NotOurs,
    /// Written by a format this code does not read.
    Version(u32),
}

/// Checks that `bytes` start with the header of kind `magic` in our format version.
pub(crate) fn check_header(bytes: &[u8], magic: &[u8; 8]) -> Result<(), HeaderError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != magic {
        return Err(HeaderError::NotOurs);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(())
}

/// Starts a frame at the end of `buf`; returns where it starts, for [`end_frame`].
pub(crate) fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    start
}

/// Fills in the length and checksum of the frame begun at `start`, whose body is everything
/// after its header. Returns false (and removes the frame) if the body is empty.
pub(crate) fn end_frame(buf: &mut Vec<u8>, start: usize) -> bool {
    let body = start + FRAME_HEADER_LEN;
    if buf.len() == body {
        buf.truncate(start);
        return false;
    }
    // A frame holds what one transaction wrote: bounded by the broker's packet limits.
    let len = u32::try_from(buf.len() - body).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Why reading frames stopped before the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadFrame {
    /// Where the bad frame starts.
    pub(crate) offset: usize,
    /// What is wrong with it.
    pub(crate) why: &'static str,
}

/// The frame at `at` in `bytes`: the range of its body, `None` at the end of the file.
pub(crate) fn read_frame(
    bytes: &[u8],
    at: usize,
) -> Result<Option<std::ops::Range<usize>>, BadFrame> {
    if at == bytes.len() {
        return Ok(None);
    }
    let bad = |why| BadFrame { offset: at, why };
    if bytes.len() - at < FRAME_HEADER_LEN {
        return Err(bad("file ends inside a frame header"));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let len = word(at) as usize;
    let crc = word(at + 4);
    let body = at + FRAME_HEADER_LEN;
    if len == 0 {
        return Err(bad("empty frame"));
    }
    if bytes.len() - body < len {
        return Err(bad("file ends inside a frame"));
    }
    if crc32fast::hash(&bytes[body..body + len]) != crc {
        return Err(bad("frame checksum does not match"));
    }
    Ok(Some(body..body + len))
}
