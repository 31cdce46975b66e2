//! Fixed-size I/O buffers from a per-worker pool. A connection holds a buffer only while it has
//! bytes in flight; an idle keep-alive connection holds none. After warm-up the pool reuses the
//! same allocations, so the hot path allocates nothing.
//!
//! Invariant: `start <= end <= data.len()`; the readable bytes are `data[start..end]`.

use crate::limits::BUF_BYTES;

pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    /// Bytes waiting to be consumed.
    pub fn filled(&self) -> &[u8] {
        self.data.get(self.start..self.end).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room after the filled bytes; compacts first when that makes more room.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.end == self.data.len() {
            self.compact();
        }
        self.data.get_mut(self.end..).unwrap_or(&mut [])
    }

    pub fn spare_len(&self) -> usize {
        self.data.len() - self.end + self.start
    }

    /// Marks `n` bytes of `spare()` as filled.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end = (self.end + n).min(self.data.len());
    }

    /// Drops `n` filled bytes from the front. An emptied buffer rewinds to its start but keeps
    /// its contents, which lets a request head be re-sent (`rewind`).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes the first `n` bytes of the storage readable again: used to re-send a request head
    /// that was written at the start of an otherwise empty buffer.
    pub fn rewind(&mut self, n: usize) {
        self.start = 0;
        self.end = n.min(self.data.len());
    }

    /// Appends `bytes` if all of them fit; returns false (and appends nothing) otherwise.
    pub fn put(&mut self, bytes: &[u8]) -> bool {
        if self.spare_len() < bytes.len() {
            return false;
        }
        let spare = self.spare();
        match spare.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.commit(bytes.len());
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn compact(&mut self) {
        self.data.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// Per-worker free list. `take` allocates only while the pool has never been this deep.
pub struct BufPool {
    free: Vec<Box<[u8]>>,
}

impl BufPool {
    pub fn new(prealloc: usize) -> Self {
        let mut free = Vec::with_capacity(prealloc.max(64));
        for _ in 0..prealloc {
            free.push(vec![0u8; BUF_BYTES].into_boxed_slice());
        }
        BufPool { free }
    }

    pub fn take(&mut self) -> Buf {
        let data = self.free.pop().unwrap_or_else(|| vec![0u8; BUF_BYTES].into_boxed_slice());
        Buf { data, start: 0, end: 0 }
    }

    pub fn give(&mut self, buf: Buf) {
        self.free.push(buf.data);
    }

    /// Ensures `slot` holds a buffer.
    pub fn fill_slot<'a>(&mut self, slot: &'a mut Option<Buf>) -> &'a mut Buf {
        slot.get_or_insert_with(|| self.take())
    }

    /// Returns the slot's buffer to the pool if it holds no bytes.
    pub fn release_if_empty(&mut self, slot: &mut Option<Buf>) {
        if slot.as_ref().is_some_and(Buf::is_empty)
            && let Some(b) = slot.take()
        {
            self.give(b);
        }
    }

    pub fn release(&mut self, slot: &mut Option<Buf>) {
        if let Some(b) = slot.take() {
            self.give(b);
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}
