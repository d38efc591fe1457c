//! Tokens waiting to fill a sequence: appended a document at a time, taken a sequence
//! at a time from the front.
//!
//! Taking from the front of a `Vec` with `drain(..n)` moves everything behind it: a
//! 50 MB document on one line was moved once per sequence (quadratic). Here the front
//! is a cursor, and the buffer is compacted only when the taken part is at least half
//! of it, so each token moves at most once on average.

/// A FIFO of token ids.
#[derive(Default)]
pub struct TokenQueue {
    buf: Vec<u32>,
    start: usize,
    /// Tokens moved by compaction so far (what the cost is measured in).
    moved: usize,
}

impl TokenQueue {
    /// Tokens waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether no token waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens at the back.
    pub fn extend(&mut self, tokens: impl IntoIterator<Item = u32>) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.moved += self.buf.len() - self.start;
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend(tokens);
    }

    /// Removes the first `n` tokens (at most [`TokenQueue::len`]) into `out`.
    pub fn take_into(&mut self, n: usize, out: &mut Vec<u32>) {
        let end = self.start + n.min(self.len());
        out.extend_from_slice(&self.buf[self.start..end]);
        self.start = end;
    }

    /// Tokens moved by compaction so far.
    #[cfg(test)]
    pub fn moved(&self) -> usize {
        self.moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_document_is_taken_in_linear_time() {
        let mut q = TokenQueue::default();
        let n = 1_000_000u32;
        q.extend(0..n);
        let mut taken = Vec::new();
        let mut extra = n;
        while q.len() >= 63 {
            q.take_into(63, &mut taken);
            // A one-token document after each sequence, as short lines after a long one.
            q.extend([extra]);
            extra += 1;
        }
        let want: Vec<u32> = (0..extra).take(taken.len()).collect();
        assert_eq!(taken, want, "first in, first out");
        // Every token moves at most once on average; `drain` from the front moved all
        // that remained on each take (about n^2 / 126 tokens here).
        assert!(q.moved() <= 2 * n as usize, "{} tokens moved for {n}", q.moved());
    }
}
