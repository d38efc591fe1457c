//! An output buffer that several threads write disjoint parts of.

/// A pointer to an output buffer that the threads of one kernel write, each its own
/// disjoint part: it crosses to rayon's threads as a pointer (keeping its provenance,
/// unlike an address cast to `usize`), and only [`SharedOut::get`] yields it, so that a
/// closure captures the wrapper (which is `Send`) rather than the raw field.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: the wrapper only carries the pointer; every writer through it is an `unsafe`
// block whose comment says which part of the buffer it writes and why no other thread
// writes that part, and the buffer outlives the kernel's threads (they are joined before
// the kernel returns).
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send`: shared between threads, the pointer is only copied, never
// dereferenced outside those blocks.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps the start of the buffer.
    pub(crate) fn new(ptr: *mut f32) -> Self {
        SharedOut(ptr)
    }

    /// The pointer, for the block that writes its part.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
