//! A read cache of recent frame data, bounded in bytes, evicting the oldest insert first.
//!
//! The syncer inserts each durable frame's data (a buffer of its own); reads insert what
//! they fetched from a log file or from Tier-2.

use std::collections::VecDeque;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A log frame's data: file id, frame position.
    Frame(u64, u64),
    /// A Tier-2 chunk: data id, data offset of its first byte.
    Chunk(u64, u64),
}

/// Bounded FIFO cache of frame data.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<CacheKey, Bytes>,
    order: VecDeque<CacheKey>,
    bytes: usize,
    capacity_bytes: usize,
}

impl Cache {
    /// A cache holding at most `capacity_bytes` of data.
    pub fn new(capacity_bytes: usize) -> Self {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            capacity_bytes,
        }
    }

    /// The cached data of a frame.
    pub fn get(&self, key: CacheKey) -> Option<Bytes> {
        self.map.get(&key).cloned()
    }

    /// Caches a frame's data, evicting the oldest entries to stay within the bound.
    pub fn insert(&mut self, key: CacheKey, data: Bytes) {
        if data.len() > self.capacity_bytes || self.map.contains_key(&key) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(key, data);
        self.order.push_back(key);
        while self.bytes > self.capacity_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }

    /// Drops one entry.
    pub fn forget(&mut self, key: CacheKey) {
        if let Some(d) = self.map.remove(&key) {
            self.bytes -= d.len();
            self.order.retain(|k| *k != key);
        }
    }

    /// Drops everything cached from a file.
    pub fn forget_file(&mut self, file_id: u64) {
        let before = self.map.len();
        let other = |k: &CacheKey| !matches!(k, CacheKey::Frame(f, _) if *f == file_id);
        self.map.retain(|k, _| other(k));
        if self.map.len() != before {
            self.order.retain(other);
            self.bytes = self.map.values().map(Bytes::len).sum();
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
}
