//! Lists inside packets (SUBSCRIBE's filters, SUBACK's codes...), without allocation.

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Writer};
use crate::ProtocolVersion;

/// An item of a packet's payload list, readable and writable in any protocol version.
pub trait ListItem<'a>: Sized + Copy {
    /// Reads one item.
    fn read(r: &mut Reader<'a>, version: ProtocolVersion) -> Result<Self, DecodeError>;
    /// Writes one item.
    fn write(&self, w: &mut Writer<'_>, version: ProtocolVersion) -> Result<(), EncodeError>;
}

/// A list of items: either the payload bytes it was decoded from (already checked), or a
/// slice the sender gave.
#[derive(Debug, Clone, Copy)]
pub enum List<'a, T> {
    /// Decoded bytes, read again on iteration.
    Wire {
        /// The payload holding the items.
        bytes: &'a [u8],
        /// The version they were decoded in.
        version: ProtocolVersion,
    },
    /// Items given by the sender.
    Items(&'a [T]),
}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// Reads and checks every item of `r`, keeping the bytes; fails on the first bad item.
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        version: ProtocolVersion,
    ) -> Result<(Self, usize), DecodeError> {
        let bytes = r.rest();
        let mut check = Reader::new(bytes);
        let mut count = 0;
        while !check.is_empty() {
            T::read(&mut check, version)?;
            count += 1;
        }
        Ok((List::Wire { bytes, version }, count))
    }

    /// The items, in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        let (bytes, version, items): (&'a [u8], ProtocolVersion, &'a [T]) = match *self {
            List::Wire { bytes, version } => (bytes, version, &[]),
            List::Items(items) => (&[], ProtocolVersion::V5, items),
        };
        let mut r = Reader::new(bytes);
        // Wire bytes were checked when decoded, so reading them again cannot fail; should it,
        // the iteration ends rather than panic.
        core::iter::from_fn(move || {
            if r.is_empty() {
                None
            } else {
                T::read(&mut r, version).ok()
            }
        })
        .chain(items.iter().copied())
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub(crate) fn encode(
        &self,
        w: &mut Writer<'_>,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        self.iter().try_for_each(|item| item.write(w, version))
    }
}

impl<'a, T: ListItem<'a> + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl<'a, T: ListItem<'a> + Eq> Eq for List<'a, T> {}
