//! Reading a file forward through a bounded window, so that probing a 2 GiB file uses as much
//! memory as probing a small one. Every read spends from the probe's budget what it hands out:
//! each loop of the probe reads, so each is bounded by it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::audio::budget::{Budget, exhausted_io};

/// How much of the file is held at once (plus what one request asks for).
const WINDOW: usize = 1 << 20;
/// Work is counted here and handed to the budget this much at a time: the frame scan asks for
/// bytes tens of millions of times a second, and the shared budget's atomics would halve it.
const SPEND_EVERY: u64 = 1 << 14;

pub(super) struct Source {
    file: File,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    len: u64,
    budget: Budget,
    /// Work done but not yet spent from `budget`.
    unspent: u64,
}

impl Source {
    /// `file`, `len` bytes long.
    pub(super) fn new(file: File, len: u64, budget: Budget) -> Self {
        Self {
            file,
            start: 0,
            buf: Vec::new(),
            len,
            budget,
            unspent: 0,
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `n` bytes at `pos` (fewer at the end of the file). Positions only move forward:
    /// bytes before the last `pos` asked for may be forgotten.
    pub(super) fn bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        self.spend(n as u64)?;
        self.unspent_bytes(pos, n)
    }

    /// Spends `units` of work from the probe's budget.
    pub(super) fn spend(&mut self, units: u64) -> io::Result<()> {
        self.unspent += units;
        if self.unspent >= SPEND_EVERY {
            let units = std::mem::take(&mut self.unspent);
            self.budget.spend(units).map_err(exhausted_io)?;
        }
        Ok(())
    }

    /// [`Source::bytes`] without spending: the caller spends for what it really looks at.
    pub(super) fn unspent_bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let end = pos.saturating_add(n as u64).min(self.len);
        if pos >= end {
            return Ok(&[]);
        }
        let held_end = self.start + self.buf.len() as u64;
        if pos < self.start || end > held_end {
            self.refill(pos, (end - pos) as usize)?;
        }
        let from = (pos - self.start) as usize;
        let to = (end - self.start) as usize;
        Ok(&self.buf[from..to.min(self.buf.len())])
    }

    fn refill(&mut self, pos: u64, need: usize) -> io::Result<()> {
        let held_end = self.start + self.buf.len() as u64;
        if pos >= self.start && pos <= held_end {
            // Keep what is still ahead, read on from where the window ends.
            self.buf.drain(..(pos - self.start) as usize);
        } else {
            self.buf.clear();
            self.file.seek(SeekFrom::Start(pos))?;
        }
        self.start = pos;
        let want = need.max(WINDOW).min((self.len - pos) as usize);
        let have = self.buf.len();
        if want > have {
            let read_from = pos + have as u64;
            self.file.seek(SeekFrom::Start(read_from))?;
            self.buf.resize(want, 0);
            let mut filled = have;
            while filled < want {
                match self.file.read(&mut self.buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            self.buf.truncate(filled);
        }
        Ok(())
    }

    /// Reads `n` bytes at `pos` without disturbing the window (tags at the end of the file).
    pub(super) fn read_at(&mut self, pos: u64, n: usize) -> io::Result<Vec<u8>> {
        self.spend(n as u64)?;
        let n = n.min(self.len.saturating_sub(pos) as usize);
        let mut out = vec![0; n];
        self.file.seek(SeekFrom::Start(pos))?;
        self.file.read_exact(&mut out)?;
        // The window's idea of the file position is restored by its next refill (it seeks).
        self.buf.clear();
        self.start = 0;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn forward_window_reads_match_the_file() {
        let data: Vec<u8> = (0..3 * WINDOW + 123).map(|i| (i % 253) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let budget = Budget::new(u64::MAX, None, None);
        let mut s = Source::new(File::open(f.path()).unwrap(), data.len() as u64, budget);
        let tail = s.read_at(data.len() as u64 - 10, 100).unwrap();
        assert_eq!(tail, &data[data.len() - 10..]);
        let mut pos = 0u64;
        while pos < data.len() as u64 {
            let got = s.bytes(pos, 5000).unwrap().to_vec();
            let end = (pos as usize + 5000).min(data.len());
            assert_eq!(got, &data[pos as usize..end]);
            pos += 4999;
        }
        assert!(s.bytes(data.len() as u64, 4).unwrap().is_empty());
    }
}
