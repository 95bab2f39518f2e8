//! The MQTT data representations of section 1.5: integers, Variable Byte Integers,
//! UTF-8 strings and binary data, read from a borrowed buffer and written to a caller's one.
//!
//! Owns the byte-level rules (minimal Variable Byte Integer encoding, no U+0000 in strings,
//! 16-bit length prefixes). Knows nothing about packets.

use crate::error::{DecodeError, EncodeError};

/// The largest value a Variable Byte Integer can carry (four bytes).
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Reads MQTT data representations from a complete, bounded byte slice.
///
/// Running out of bytes here is a malformed packet, never "need more": the caller only hands
/// a reader the body of a packet whose full length has arrived.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, starting at its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// A one-byte integer.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian two-byte integer.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian four-byte integer.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer [MQTT-1.5.5-1].
    pub fn variable_u32(&mut self) -> Result<u32, DecodeError> {
        match decode_variable_u32(&self.buf[self.pos..])? {
            Some((value, used)) => {
                self.pos += used;
                Ok(value)
            }
            None => Err(DecodeError::Truncated),
        }
    }

    /// Binary Data: a two-byte length, then that many bytes.
    pub fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A UTF-8 Encoded String: well-formed UTF-8 without U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    pub fn string(&mut self) -> Result<&'a str, DecodeError> {
        check_string(self.binary()?)
    }
}

/// Checks bytes are an MQTT UTF-8 string: valid UTF-8 (which excludes the surrogates
/// U+D800..U+DFFF) [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2].
pub fn check_string(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = core::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(DecodeError::NulInString);
    }
    Ok(s)
}

/// Decodes a Variable Byte Integer at the start of `buf`.
///
/// `Ok(None)` means the integer is not complete yet. Encodings longer than four bytes and
/// encodings that are not the shortest for their value are malformed [MQTT-1.5.5-1].
pub fn decode_variable_u32(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero last byte after the first one means a shorter encoding existed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVariableByteInteger);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVariableByteInteger)
    } else {
        Ok(None)
    }
}

/// How many bytes `value` takes as a Variable Byte Integer.
pub fn variable_u32_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes MQTT data representations into a caller's buffer, or only counts them.
///
/// Encoding runs every packet's writer twice: once counting (to learn the Remaining Length
/// and property lengths that prefix the body) and once writing. One code path for both keeps
/// lengths and bytes from disagreeing.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: Option<&'b mut [u8]>,
    pos: usize,
}

impl<'b> Writer<'b> {
    /// A writer into `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Writer {
            buf: Some(buf),
            pos: 0,
        }
    }

    /// A writer that only counts the bytes it would write.
    pub fn counter() -> Writer<'static> {
        Writer { buf: None, pos: 0 }
    }

    /// Bytes written (or counted) so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + data.len();
        if let Some(buf) = self.buf.as_deref_mut() {
            let Some(dst) = buf.get_mut(self.pos..end) else {
                return Err(EncodeError::BufferTooSmall);
            };
            dst.copy_from_slice(data);
        }
        self.pos = end;
        Ok(())
    }

    /// A one-byte integer.
    pub fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    /// A big-endian two-byte integer.
    pub fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian four-byte integer.
    pub fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// A Variable Byte Integer in its shortest form.
    pub fn variable_u32(&mut self, mut v: u32) -> Result<(), EncodeError> {
        if v > MAX_VARIABLE_BYTE_INTEGER {
            return Err(EncodeError::ValueTooLarge);
        }
        loop {
            let mut byte = (v & 0x7f) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            self.u8(byte)?;
            if v == 0 {
                return Ok(());
            }
        }
    }

    /// Binary Data with its two-byte length.
    pub fn binary(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(data.len()).map_err(|_| EncodeError::ValueTooLarge)?;
        self.u16(len)?;
        self.bytes(data)
    }

    /// A UTF-8 Encoded String with its two-byte length.
    pub fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        self.binary(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integer_boundaries() {
        // [MQTT-1.5.5-1] the values at each size boundary, from the table in section 1.5.5.
        let table: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for &(value, bytes) in table {
            assert_eq!(decode_variable_u32(bytes), Ok(Some((value, bytes.len()))));
            let mut out = [0u8; 4];
            let mut w = Writer::new(&mut out);
            w.variable_u32(value).unwrap();
            let len = w.position();
            assert_eq!(&out[..len], bytes);
            assert_eq!(variable_u32_len(value), bytes.len());
        }
    }

    #[test]
    fn variable_byte_integer_errors() {
        // [MQTT-1.5.5-1] at most four bytes, shortest form only.
        assert_eq!(
            decode_variable_u32(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
        assert_eq!(
            decode_variable_u32(&[0x80, 0x00]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
        assert_eq!(decode_variable_u32(&[0x80, 0x80]), Ok(None));
        assert_eq!(decode_variable_u32(&[]), Ok(None));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        // [MQTT-1.5.4-1] ill-formed UTF-8, including an encoded surrogate.
        assert_eq!(
            check_string(&[0xed, 0xa0, 0x80]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(check_string(&[0xc0, 0x80]), Err(DecodeError::InvalidUtf8));
        // [MQTT-1.5.4-2] U+0000.
        assert_eq!(check_string(b"a\0b"), Err(DecodeError::NulInString));
        assert_eq!(check_string("caf\u{e9}".as_bytes()), Ok("caf\u{e9}"));
    }
}
