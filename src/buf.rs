//! Fixed-size I/O buffers from a per-worker pool. A connection holds a buffer only while it has
//! bytes in flight; an idle keep-alive connection holds none. After warm-up the pool reuses the
//! same allocations, so the hot path allocates nothing.
//!
//! Invariant: `start <= end <= BUF_BYTES`; the readable bytes are `data[start..end]`.

use crate::limits::BUF_BYTES;

pub struct Buf<const N: usize = BUF_BYTES> {
    data: Box<[u8; N]>,
    start: u32,
    end: u32,
}

impl<const N: usize> std::fmt::Debug for Buf<N> {
    /// Lengths only: a buffer holds client bytes, which never reach a log raw.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} of {N})", self.len())
    }
}

impl<const N: usize> Buf<N> {
    /// Bytes waiting to be consumed.
    pub fn filled(&self) -> &[u8] {
        debug_assert!(self.start <= self.end && self.end as usize <= N, "Buf invariant");
        self.data.get(self.start as usize..self.end as usize).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room after the filled bytes; compacts first when the room left is short.
    pub fn spare(&mut self) -> &mut [u8] {
        // Compact when the tail is short: bytes move at most once per quarter buffer consumed.
        if self.start > 0 && N - (self.end as usize) < N / 4 {
            self.compact();
        }
        self.data.get_mut(self.end as usize..).unwrap_or(&mut [])
    }

    pub fn filled_mut(&mut self) -> &mut [u8] {
        self.data.get_mut(self.start as usize..self.end as usize).unwrap_or(&mut [])
    }

    /// Makes room for `n` more bytes after the filled ones, moving them to the front if needed
    /// (a record parser waiting for the rest of a record it knows the length of).
    pub fn reserve(&mut self, n: usize) {
        if self.start > 0 && N - (self.end as usize) < n {
            self.compact();
        }
    }

    pub fn spare_len(&self) -> usize {
        N - self.len()
    }

    /// Marks `n` bytes of `spare()` as filled.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end as usize + n <= N);
        self.end = (self.end as usize + n).min(N) as u32;
    }

    /// Drops `n` filled bytes from the front. An emptied buffer rewinds to its start but keeps
    /// its contents, which lets a request head be re-sent (`rewind`).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start = (self.start as usize + n).min(self.end as usize) as u32;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes the first `n` bytes of the storage readable again: used to re-send a request head
    /// that was written at the start of an otherwise empty buffer.
    pub fn rewind(&mut self, n: usize) {
        self.start = 0;
        self.end = n.min(N) as u32;
    }

    /// Appends `bytes` if all of them fit; returns false (and appends nothing) otherwise.
    pub fn put(&mut self, bytes: &[u8]) -> bool {
        if self.spare_len() < bytes.len() {
            return false;
        }
        if N - (self.end as usize) < bytes.len() {
            self.compact();
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
        self.data.copy_within(self.start as usize..self.end as usize, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// A per-worker free list of boxed values (I/O buffers, exchanges): `take` allocates only while
/// the list has never been this deep, so the steady state allocates nothing. Boxes move between
/// the list and their users by pointer, never copied.
pub struct FreeList<T> {
    #[allow(clippy::vec_box)] // boxed on purpose: lent out and returned without a copy
    free: Vec<Box<T>>,
    make: fn() -> Box<T>,
}

impl<T> FreeList<T> {
    pub fn new(prealloc: usize, make: fn() -> Box<T>) -> Self {
        let mut free = Vec::with_capacity(prealloc.max(64));
        for _ in 0..prealloc {
            free.push(make());
        }
        FreeList { free, make }
    }

    pub fn take(&mut self) -> Box<T> {
        self.free.pop().unwrap_or_else(self.make)
    }

    pub fn give(&mut self, b: Box<T>) {
        self.free.push(b);
    }
}

/// Per-worker pool of I/O buffers.
pub struct BufPool<const N: usize = BUF_BYTES> {
    free: FreeList<[u8; N]>,
}

impl<const N: usize> BufPool<N> {
    pub fn new(prealloc: usize) -> Self {
        BufPool { free: FreeList::new(prealloc, || Box::new([0u8; N])) }
    }

    pub fn take(&mut self) -> Buf<N> {
        Buf { data: self.free.take(), start: 0, end: 0 }
    }

    pub fn give(&mut self, buf: Buf<N>) {
        self.free.give(buf.data);
    }

    /// Ensures `slot` holds a buffer.
    pub fn fill_slot<'a>(&mut self, slot: &'a mut Option<Buf<N>>) -> &'a mut Buf<N> {
        slot.get_or_insert_with(|| self.take())
    }

    /// Returns the slot's buffer to the pool if it holds no bytes.
    pub fn release_if_empty(&mut self, slot: &mut Option<Buf<N>>) {
        if slot.as_ref().is_some_and(Buf::is_empty)
            && let Some(b) = slot.take()
        {
            self.give(b);
        }
    }

    pub fn release(&mut self, slot: &mut Option<Buf<N>>) {
        if let Some(b) = slot.take() {
            self.give(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_compacts_when_needed() {
        let mut pool: BufPool = BufPool::new(0);
        let mut b = pool.take();
        assert!(b.put(&[1; BUF_BYTES - 10]));
        b.consume(BUF_BYTES - 20);
        assert_eq!(b.len(), 10);
        assert!(b.put(&[2; 100]), "room exists once the consumed front is reclaimed");
        assert_eq!(b.len(), 110);
        assert_eq!(b.filled()[..10], [1; 10]);
        assert_eq!(b.filled()[10..], [2; 100]);
        assert!(!b.put(&[3; BUF_BYTES]));
        b.consume(110);
        assert!(b.is_empty());
        b.rewind(5);
        assert_eq!(b.filled(), &[1, 1, 1, 1, 1]);
    }
}
