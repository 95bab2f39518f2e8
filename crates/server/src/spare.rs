//! Buffers lent to a connection for one turn of work and given back after it.
//!
//! An idle connection holds no input or output buffer; a busy one would otherwise allocate
//! and free both on every turn (several per message at high rates). Each worker thread keeps
//! one spare of each kind, so a turn takes the buffer the previous turn on that thread gave
//! back. Buffers that grew past `KEPT` are freed instead, which bounds what is kept to two
//! buffers per thread.

use std::cell::Cell;

/// The largest buffer kept for the next turn.
const KEPT: usize = 128 * 1024;

thread_local! {
    static INPUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static OUTPUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Which spare.
#[derive(Clone, Copy)]
pub(crate) enum Spare {
    Input,
    Output,
}

impl Spare {
    fn with<R>(self, f: impl FnOnce(&Cell<Vec<u8>>) -> R) -> R {
        match self {
            Spare::Input => INPUT.with(f),
            Spare::Output => OUTPUT.with(f),
        }
    }

    /// Lends this thread's spare (empty, possibly without capacity) to `buf` when `buf` has
    /// no capacity of its own.
    pub(crate) fn lend_to(self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0 {
            *buf = self.with(Cell::take);
        }
    }

    /// Takes `buf` back when it is empty, leaving the connection without a buffer.
    pub(crate) fn take_back(self, buf: &mut Vec<u8>) {
        if !buf.is_empty() || buf.capacity() == 0 {
            return;
        }
        let buf = std::mem::take(buf);
        if buf.capacity() <= KEPT {
            // The spare it replaces (another connection's, left by a turn on this thread
            // that took none) is freed.
            self.with(|spare| spare.set(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reuses_the_buffer_the_previous_turn_gave_back() {
        let mut first = Vec::new();
        Spare::Input.lend_to(&mut first);
        first.extend_from_slice(&[1; 100]);
        let at = first.as_ptr();
        first.clear();
        Spare::Input.take_back(&mut first);
        assert_eq!(first.capacity(), 0, "the connection keeps nothing");
        let mut second = Vec::new();
        Spare::Input.lend_to(&mut second);
        assert_eq!(second.as_ptr(), at);
        assert!(second.is_empty() && second.capacity() >= 100);
    }

    #[test]
    fn pending_bytes_and_large_buffers_are_not_taken_back() {
        let mut pending = vec![1u8; 10];
        Spare::Output.take_back(&mut pending);
        assert_eq!(pending.len(), 10);
        let mut large = Vec::with_capacity(KEPT + 1);
        Spare::Output.take_back(&mut large);
        assert_eq!(large.capacity(), 0);
        let mut next = Vec::new();
        Spare::Output.lend_to(&mut next);
        assert!(next.capacity() <= KEPT);
    }
}
