//! A read cache of recent data, bounded in bytes, evicting the oldest insert first.
//!
//! The syncer inserts each durable batch whole: the buffer it was written from, which
//! holds every frame of the batch, so a busy log spread over many segments costs one
//! entry per group commit, not one per frame. Reads insert the frames they read back
//! from a log file and the chunks they fetched from Tier-2, one entry each.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};

use super::format::append_data;

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A log frame's data: file id, frame position.
    Frame(u64, u64),
    /// A Tier-2 chunk: data id, data offset of its first byte.
    Chunk(u64, u64),
}

/// An entry, in insertion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    One(CacheKey),
    /// A written batch: file id, position of its first frame.
    Batch(u64, u64),
}

/// Bounded FIFO cache of frame data.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<CacheKey, Bytes>,
    /// Written batches by file id and position: their frames, back to back, and the
    /// bytes of memory they hold (their whole buffer, which is what counts).
    batches: BTreeMap<(u64, u64), (Bytes, usize)>,
    order: VecDeque<Entry>,
    bytes: usize,
    capacity_bytes: usize,
}

impl Cache {
    /// A cache holding at most `capacity_bytes` of data, or one batch if that is more.
    pub fn new(capacity_bytes: usize) -> Self {
        Cache {
            map: HashMap::new(),
            batches: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            capacity_bytes,
        }
    }

    /// The cached data of a frame or chunk.
    pub fn get(&self, key: CacheKey) -> Option<Bytes> {
        if let Some(d) = self.map.get(&key) {
            return Some(d.clone());
        }
        let CacheKey::Frame(file, pos) = key else {
            return None;
        };
        let (&(f, start), (batch, _)) = self.batches.range(..=(file, pos)).next_back()?;
        let at = usize::try_from(pos - start).ok()?;
        if f != file || at >= batch.len() {
            return None;
        }
        let data = append_data(&batch[at..])?;
        Some(batch.slice(at + data.start..at + data.end))
    }

    /// Caches a frame's data or a chunk, unless it is larger than the whole cache.
    pub fn insert(&mut self, key: CacheKey, data: Bytes) {
        if data.len() > self.capacity_bytes || self.map.contains_key(&key) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(key, data);
        self.order.push_back(Entry::One(key));
        self.evict();
    }

    /// Caches a batch written at `pos` of file `file_id`: `frames`, back to back, a
    /// slice of a buffer of `held` bytes (block padding and alignment included), which
    /// is what the batch counts against the capacity. The newest batch stays even if it
    /// is larger than the cache's capacity.
    pub fn insert_batch(&mut self, file_id: u64, pos: u64, frames: Bytes, held: usize) {
        if frames.is_empty() {
            return;
        }
        let held = held.max(frames.len());
        self.bytes += held;
        if let Some((_, old)) = self.batches.insert((file_id, pos), (frames, held)) {
            self.bytes -= old;
        } else {
            self.order.push_back(Entry::Batch(file_id, pos));
        }
        self.evict();
    }

    /// Drops the oldest entries until the bound holds or one entry is left.
    fn evict(&mut self) {
        while self.bytes > self.capacity_bytes && self.order.len() > 1 {
            let freed = match self.order.pop_front() {
                Some(Entry::One(k)) => self.map.remove(&k).map(|d| d.len()),
                Some(Entry::Batch(f, p)) => self.batches.remove(&(f, p)).map(|(_, held)| held),
                None => None,
            };
            self.bytes -= freed.unwrap_or(0);
        }
    }

    /// Drops one entry.
    pub fn forget(&mut self, key: CacheKey) {
        if let Some(d) = self.map.remove(&key) {
            self.bytes -= d.len();
            self.order.retain(|k| *k != Entry::One(key));
        }
    }

    /// Drops everything cached from a file.
    pub fn forget_file(&mut self, file_id: u64) {
        let other = |e: &Entry| match e {
            Entry::One(CacheKey::Frame(f, _)) | Entry::Batch(f, _) => *f != file_id,
            Entry::One(CacheKey::Chunk(..)) => true,
        };
        let before = self.order.len();
        self.order.retain(other);
        if self.order.len() != before {
            self.map.retain(|k, _| other(&Entry::One(*k)));
            self.batches.retain(|(f, _), _| *f != file_id);
            self.bytes = self.map.values().map(Bytes::len).sum::<usize>()
                + self.batches.values().map(|(_, held)| held).sum::<usize>();
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_frame, Op};
    use super::*;

    #[test]
    fn stays_within_its_bound() {
        let mut c = Cache::new(100);
        for i in 0..10 {
            c.insert(CacheKey::Frame(0, i), Bytes::from(vec![0u8; 30]));
            assert!(c.bytes() <= 100);
        }
        assert!(c.get(CacheKey::Frame(0, 9)).is_some());
        assert!(c.get(CacheKey::Frame(0, 0)).is_none());
        c.forget_file(0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_batch_serves_each_of_its_append_frames() {
        let append = |seg, data: &[u8]| Op::Append {
            seg,
            data_offset: 0,
            len: data.len() as u64,
            attrs: vec![(7, 1)],
        };
        let mut frames = Vec::new();
        encode_frame(&mut frames, 1, &append(1, b"first"), b"first");
        let second = frames.len() as u64;
        encode_frame(&mut frames, 1, &Op::Seal { seg: 1 }, &[]);
        let third = frames.len() as u64;
        encode_frame(&mut frames, 1, &append(2, b"third"), b"third");
        let mut c = Cache::new(1 << 20);
        c.insert_batch(3, 1000, Bytes::from(frames.clone()), frames.len());
        assert_eq!(
            c.get(CacheKey::Frame(3, 1000)).as_deref(),
            Some(&b"first"[..])
        );
        assert_eq!(
            c.get(CacheKey::Frame(3, 1000 + second)),
            None,
            "not an append"
        );
        assert_eq!(
            c.get(CacheKey::Frame(3, 1000 + third)).as_deref(),
            Some(&b"third"[..])
        );
        assert_eq!(c.get(CacheKey::Frame(3, 999)), None, "before the batch");
        assert_eq!(c.get(CacheKey::Frame(2, 1000)), None, "another file");
        let past = 1000 + frames.len() as u64;
        assert_eq!(c.get(CacheKey::Frame(3, past)), None, "after the batch");

        // The newest batch stays even when it alone exceeds the bound; older ones go.
        let mut small = Cache::new(10);
        small.insert_batch(3, 0, Bytes::from(frames.clone()), frames.len());
        small.insert_batch(3, past, Bytes::from(frames.clone()), frames.len());
        assert!(small.get(CacheKey::Frame(3, 0)).is_none());
        assert_eq!(
            small.get(CacheKey::Frame(3, past)).as_deref(),
            Some(&b"first"[..])
        );
        small.forget_file(3);
        assert_eq!(small.bytes(), 0);

        // A batch counts the whole buffer it is a slice of.
        assert!(frames.len() < 300);
        let mut c = Cache::new(1000);
        c.insert_batch(3, 0, Bytes::from(frames.clone()), 600);
        c.insert_batch(3, past, Bytes::from(frames.clone()), 600);
        assert_eq!(c.bytes(), 600);
        assert!(c.get(CacheKey::Frame(3, 0)).is_none(), "evicted");
        c.forget_file(3);
        assert_eq!(c.bytes(), 0);
    }
}
