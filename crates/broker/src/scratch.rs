//! Lists a hot path needs for a moment, kept per thread for their room.
//!
//! Routing and sending a message each build a list (of matches, of sessions, of messages to
//! send); allocated per PUBLISH and grown element by element, they were a large part of the
//! allocator's work. Each thread keeps the last list of each kind, emptied, up to `KEPT`
//! elements: what is kept is bounded by the thread count.

use std::cell::Cell;
use std::thread::LocalKey;

/// Lists with room for more elements than this are freed rather than kept.
const KEPT: usize = 4096;

/// A thread's kept list of one kind.
pub(crate) type Slot<T> = LocalKey<Cell<Vec<T>>>;

/// Empties `list` and keeps it in `slot` for the next user on this thread (`slot.take()`).
pub(crate) fn give_back<T>(slot: &'static Slot<T>, mut list: Vec<T>) {
    list.clear();
    if list.capacity() <= KEPT {
        slot.set(list);
    }
}
