//! Capped capture of a container's output: kiln keeps the first and last bytes up to a cap
//! and counts what it dropped, so a flood costs bounded memory and the tail (where test
//! failures usually are) survives.

/// Output kept within `cap` bytes: the first half verbatim, then the most recent bytes.
#[derive(Debug)]
pub struct CappedLog {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    dropped: u64,
    total: u64,
}

impl CappedLog {
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        CappedLog {
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            dropped: 0,
            total: 0,
        }
    }

    /// Takes in `chunk`; returns how many of its first bytes went to the head, which is what
    /// the kept output will start with whatever comes later.
    pub fn push(&mut self, mut chunk: &[u8]) -> usize {
        self.total += chunk.len() as u64;
        let room = self.head_cap - self.head.len();
        let take = room.min(chunk.len());
        self.head.extend_from_slice(&chunk[..take]);
        chunk = &chunk[take..];
        if chunk.len() >= self.tail_cap {
            self.dropped += (self.tail.len() + chunk.len() - self.tail_cap) as u64;
            self.tail.clear();
            self.tail.extend(&chunk[chunk.len() - self.tail_cap..]);
            return take;
        }
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(chunk);
        take
    }

    /// Bytes the container wrote in all.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes written but not kept.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// What was kept, with one marker line where bytes were dropped.
    pub fn into_bytes(self) -> Vec<u8> {
        self.into_bytes_redacted(&crate::secrets::Redactor::default())
    }

    /// [`CappedLog::into_bytes`] with every secret hidden, including the part of one that
    /// bytes were dropped from.
    pub fn into_bytes_redacted(self, redactor: &crate::secrets::Redactor) -> Vec<u8> {
        let tail: Vec<u8> = self.tail.into();
        let (mut out, tail) = if self.dropped > 0 {
            redactor.mask_cut(&self.head, &tail)
        } else {
            let mut whole = self.head;
            whole.extend(tail);
            (redactor.bytes(&whole).into_owned(), Vec::new())
        };
        if self.dropped > 0 {
            out.extend_from_slice(
                format!("\n[kiln: {} bytes of output dropped here]\n", self.dropped).as_bytes(),
            );
        }
        out.extend(tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_and_counts_the_drop() {
        let mut log = CappedLog::new(8);
        log.push(b"abcdef");
        log.push(b"ghijklmnop");
        assert_eq!(log.total_bytes(), 16);
        assert_eq!(log.dropped_bytes(), 8);
        let kept = String::from_utf8(log.into_bytes()).unwrap();
        assert!(kept.starts_with("abcd"), "{kept}");
        assert!(kept.ends_with("mnop"), "{kept}");
        assert!(kept.contains("8 bytes of output dropped"), "{kept}");
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut log = CappedLog::new(1024);
        log.push(b"hello ");
        log.push(b"world");
        assert_eq!(log.dropped_bytes(), 0);
        assert_eq!(log.into_bytes(), b"hello world");
    }

    #[test]
    fn many_small_pushes_stay_within_the_cap() {
        let mut log = CappedLog::new(100);
        for _ in 0..10_000 {
            log.push(b"0123456789");
        }
        assert_eq!(log.dropped_bytes(), 100_000 - 100);
        assert!(log.into_bytes().len() < 100 + 64);
    }
}
