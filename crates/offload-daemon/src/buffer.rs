//! A fixed-size byte queue: the plaintext waiting between a client and its
//! TLS connection, in either direction. Its size bounds what one client can
//! make the daemon hold.

/// Bytes queued in a fixed allocation, read from the front, written at the back.
pub(crate) struct Buffer {
    bytes: Box<[u8]>,
    head: usize,
    tail: usize,
}

impl Buffer {
    /// An empty queue holding at most `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { bytes: vec![0; capacity].into_boxed_slice(), head: 0, tail: 0 }
    }

    /// The queued bytes.
    pub(crate) fn data(&self) -> &[u8] {
        &self.bytes[self.head..self.tail]
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// How many more bytes fit.
    pub(crate) fn room(&self) -> usize {
        self.bytes.len() - (self.tail - self.head)
    }

    /// Drops the first `n` queued bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        self.head += n.min(self.tail - self.head);
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// The free space at the back, moving the queued bytes to the front
    /// first when the back is full or few bytes are queued, so that it is
    /// empty only when [`Buffer::room`] is 0. Report what was written with
    /// [`Buffer::filled`].
    pub(crate) fn space(&mut self) -> &mut [u8] {
        if self.head > 0 && (self.tail == self.bytes.len() || self.tail - self.head < self.bytes.len() / 2) {
            self.bytes.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        &mut self.bytes[self.tail..]
    }

    /// Records that `n` bytes were written into [`Buffer::space`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.tail = (self.tail + n).min(self.bytes.len());
    }

    /// Queues as much of `data` as fits and says how much that was.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let space = self.space();
        let n = data.len().min(space.len());
        space[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_in_order_and_never_beyond_capacity() {
        let mut b = Buffer::new(8);
        assert_eq!(b.push(b"abcdef"), 6);
        assert_eq!(b.push(b"ghij"), 2);
        assert_eq!(b.room(), 0);
        assert_eq!(b.data(), b"abcdefgh");
        b.consume(5);
        assert_eq!(b.data(), b"fgh");
        // Five bytes are free, but only after compaction are they contiguous.
        assert_eq!(b.push(b"12345678"), 5);
        assert_eq!(b.data(), b"fgh12345");
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(b.room(), 8);
    }
}
