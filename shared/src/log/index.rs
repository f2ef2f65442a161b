//! Where durable data lives: for each data id, the chunks on Tier-2 that hold its
//! oldest bytes (below `tiered_to`), then its extents in the log files, and how many live
//! extents each file holds (a file with none can be deleted).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::table::Release;

/// A run of one data id's bytes inside one append frame of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the first byte in the data id.
    pub data_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Log file.
    pub file_id: u64,
    /// Position of the frame in the file.
    pub frame_pos: u64,
}

/// A run of one data id's bytes moved to a Tier-2 chunk (the whole chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first byte in the data id.
    pub data_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC32C of the chunk's bytes, checked when it is read back.
    pub crc: u32,
    /// Tier-2 object name ([`chunk_name`] of its data id and offset).
    pub name: Arc<str>,
}

/// The Tier-2 object name of the chunk of `data_id` starting at `data_offset`. A data
/// id's bytes never change, so a chunk written again at the same place (a retry, after
/// a crash before it was recorded) may replace the earlier object.
pub fn chunk_name(data_id: u64, data_offset: u64) -> String {
    format!("c-{data_id:016x}-{data_offset:016x}")
}

/// Whether an object name is a chunk's.
pub fn is_chunk_name(name: &str) -> bool {
    let hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_prefix("c-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(a, b)| hex16(a) && hex16(b))
}

/// Where a range of data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// In a log frame: skip, take.
    Log(Extent, u64, u64),
    /// In a Tier-2 chunk: skip, take.
    Tier2(Chunk, u64, u64),
}

/// What a release freed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Freed {
    /// Files that no longer hold a live extent.
    pub files: Vec<u64>,
    /// Tier-2 chunks no longer part of any segment.
    pub chunks: Vec<Chunk>,
}

/// Extents of every live data id.
#[derive(Debug, Default)]
pub struct DataIndex {
    by_data: HashMap<u64, VecDeque<Extent>>,
    chunks: HashMap<u64, VecDeque<Chunk>>,
    tiered_to: HashMap<u64, u64>,
    file_refs: BTreeMap<u64, u64>,
    log_bytes: u64,
}

impl DataIndex {
    /// Adds an extent after the data id's last one; ignored if that data is already on
    /// Tier-2.
    pub fn add(&mut self, data_id: u64, e: Extent) {
        if e.data_offset + e.len <= self.tiered_to.get(&data_id).copied().unwrap_or(0) {
            return;
        }
        self.by_data.entry(data_id).or_default().push_back(e);
        *self.file_refs.entry(e.file_id).or_default() += 1;
        self.log_bytes += e.len;
    }

    /// Drops the extents and chunks that lie entirely below the release point.
    pub fn release(&mut self, r: Release) -> Freed {
        let mut freed = Freed::default();
        if let Some(q) = self.chunks.get_mut(&r.data_id) {
            while q.front().is_some_and(|c| c.data_offset + c.len <= r.below) {
                freed.chunks.extend(q.pop_front());
            }
            if q.is_empty() {
                self.chunks.remove(&r.data_id);
            }
        }
        if r.below == u64::MAX {
            self.tiered_to.remove(&r.data_id);
        }
        freed.files = self.release_log(r);
        freed
    }

    /// Drops the log extents entirely below the release point; returns emptied files.
    fn release_log(&mut self, r: Release) -> Vec<u64> {
        let mut emptied = Vec::new();
        let Some(q) = self.by_data.get_mut(&r.data_id) else {
            return emptied;
        };
        while let Some(e) = q.front() {
            if e.data_offset + e.len > r.below {
                break;
            }
            let file_id = e.file_id;
            self.log_bytes -= e.len;
            q.pop_front();
            if let Some(n) = self.file_refs.get_mut(&file_id) {
                *n -= 1;
                if *n == 0 {
                    self.file_refs.remove(&file_id);
                    emptied.push(file_id);
                }
            }
        }
        if q.is_empty() {
            self.by_data.remove(&r.data_id);
        }
        emptied
    }

    /// Records that `chunk` now holds its range (which must start at the data id's
    /// first log extent) and drops the log extents it replaces. Returns the files that
    /// no longer hold a live extent, or `None` if that range is no longer live (it was
    /// truncated meanwhile) and the chunk is garbage.
    pub fn add_chunk(&mut self, data_id: u64, chunk: Chunk) -> Option<Vec<u64>> {
        let end = chunk.data_offset + chunk.len;
        let first_log = self
            .by_data
            .get(&data_id)
            .and_then(|q| q.front())
            .map(|e| e.data_offset);
        if first_log != Some(chunk.data_offset) {
            return None;
        }
        self.tiered_to.insert(data_id, end);
        self.chunks.entry(data_id).or_default().push_back(chunk);
        Some(self.release_log(Release {
            data_id,
            below: end,
        }))
    }

    /// Registers a chunk found in the metadata store on recovery (before any extent).
    pub fn restore_chunk(&mut self, data_id: u64, chunk: Chunk) {
        let end = chunk.data_offset + chunk.len;
        let t = self.tiered_to.entry(data_id).or_default();
        *t = (*t).max(end);
        self.chunks.entry(data_id).or_default().push_back(chunk);
    }

    /// Runs of log extents that could move to Tier-2: per data id, the oldest extents,
    /// up to about `max_bytes`.
    pub fn movable(&self, max_bytes: u64) -> Vec<(u64, Vec<Extent>)> {
        let mut out = Vec::new();
        for (id, q) in &self.by_data {
            let mut run: Vec<Extent> = Vec::new();
            let mut bytes = 0;
            for e in q {
                if !run.is_empty() && bytes + e.len > max_bytes {
                    break;
                }
                bytes += e.len;
                run.push(*e);
            }
            if !run.is_empty() {
                out.push((*id, run));
            }
        }
        out.sort_by_key(|(id, run)| (run[0].file_id, *id));
        out
    }

    /// Where `[data_offset, data_offset + len)` of a data id is, in order. `None` if
    /// some byte is not indexed.
    pub fn find(&self, data_id: u64, data_offset: u64, len: u64) -> Option<Vec<Source>> {
        let end = data_offset + len;
        let tiered = self.tiered_to.get(&data_id).copied().unwrap_or(0);
        let mut at = data_offset;
        let mut out = Vec::new();
        if at < tiered {
            let q = self.chunks.get(&data_id)?;
            let mut i = q.partition_point(|c| c.data_offset + c.len <= at);
            while at < end.min(tiered) {
                let c = q.get(i)?;
                if c.data_offset > at {
                    return None;
                }
                let skip = at - c.data_offset;
                let take = (c.len - skip).min(end - at);
                out.push(Source::Tier2(c.clone(), skip, take));
                at += take;
                i += 1;
            }
        }
        if at < end {
            let q = self.by_data.get(&data_id)?;
            let mut i = q.partition_point(|e| e.data_offset + e.len <= at);
            while at < end {
                let e = q.get(i)?;
                if e.data_offset > at {
                    return None;
                }
                let skip = at - e.data_offset;
                let take = (e.len - skip).min(end - at);
                out.push(Source::Log(*e, skip, take));
                at += take;
                i += 1;
            }
        }
        Some(out)
    }

    /// Data ids with at least one log extent.
    pub fn data_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_data.keys().copied()
    }

    /// Bytes held in log extents (not on Tier-2).
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Every chunk, with its data id.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &Chunk)> + '_ {
        self.chunks
            .iter()
            .flat_map(|(d, q)| q.iter().map(move |c| (*d, c)))
    }

    /// Up to `n` chunks of `data_id` after the one starting at `data_offset`.
    pub fn chunks_after(&self, data_id: u64, data_offset: u64, n: usize) -> Vec<Chunk> {
        let Some(q) = self.chunks.get(&data_id) else {
            return Vec::new();
        };
        let i = q.partition_point(|c| c.data_offset <= data_offset);
        q.iter().skip(i).take(n).cloned().collect()
    }

    /// Data ids with Tier-2 chunks.
    pub fn tiered_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.keys().copied()
    }

    /// Files holding at least one live extent.
    pub fn live_files(&self) -> impl Iterator<Item = u64> + '_ {
        self.file_refs.keys().copied()
    }

    /// Whether a file holds a live extent.
    pub fn is_live(&self, file_id: u64) -> bool {
        self.file_refs.contains_key(&file_id)
    }
}

const FILE_INDEX_VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("file index truncated")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("file index varint too long".into())
}

/// Encodes the extents of one log file (in file order) for the metadata store, about six
/// bytes an extent: version u8, then per extent the varints `data_id`, `frame_pos` minus
/// the previous extent's, `len`, and `data_offset + 1` (or 0 when it continues the same
/// data id's previous extent in this file); then a CRC32C of all that.
pub fn encode_file_index(extents: &[(u64, Extent)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(extents.len() * 6 + 5);
    out.push(FILE_INDEX_VERSION);
    let mut next: HashMap<u64, u64> = HashMap::new();
    let mut last_pos = 0;
    for (id, e) in extents {
        put_varint(&mut out, *id);
        put_varint(&mut out, e.frame_pos - last_pos);
        put_varint(&mut out, e.len);
        let continues = next.get(id) == Some(&e.data_offset);
        put_varint(&mut out, if continues { 0 } else { e.data_offset + 1 });
        next.insert(*id, e.data_offset + e.len);
        last_pos = e.frame_pos;
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes [`encode_file_index`] for file `file_id`; `Err` names what is wrong.
pub fn decode_file_index(b: &[u8], file_id: u64) -> Result<Vec<(u64, Extent)>, String> {
    if b.len() < 5 {
        return Err(format!("file index of impossible length {}", b.len()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("file index CRC mismatch".into());
    }
    if body[0] != FILE_INDEX_VERSION {
        return Err(format!("unknown file index version {}", body[0]));
    }
    let mut pos = 1;
    let mut out = Vec::new();
    let mut next: HashMap<u64, u64> = HashMap::new();
    let mut last_pos = 0u64;
    while pos < body.len() {
        let id = get_varint(body, &mut pos)?;
        let frame_pos = last_pos
            .checked_add(get_varint(body, &mut pos)?)
            .ok_or("file index position overflows")?;
        let len = get_varint(body, &mut pos)?;
        let data_offset = match get_varint(body, &mut pos)? {
            0 => *next
                .get(&id)
                .ok_or("file index continues an unknown extent")?,
            v => v - 1,
        };
        next.insert(id, data_offset.saturating_add(len));
        last_pos = frame_pos;
        out.push((
            id,
            Extent {
                data_offset,
                len,
                file_id,
                frame_pos,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(off: u64, len: u64, file: u64) -> Extent {
        Extent {
            data_offset: off,
            len,
            file_id: file,
            frame_pos: off,
        }
    }

    #[test]
    fn find_and_release() {
        let mut ix = DataIndex::default();
        ix.add(1, ext(0, 10, 0));
        ix.add(1, ext(10, 10, 1));
        ix.add(2, ext(0, 5, 1));
        let got = ix.find(1, 5, 10).expect("indexed");
        assert_eq!(
            got,
            vec![
                Source::Log(ext(0, 10, 0), 5, 5),
                Source::Log(ext(10, 10, 1), 0, 5)
            ]
        );
        assert!(ix.find(1, 15, 10).is_none());
        assert_eq!(
            ix.release(Release {
                data_id: 1,
                below: 12
            })
            .files,
            vec![0]
        );
        assert!(!ix.is_live(0));
        assert_eq!(
            ix.release(Release {
                data_id: 1,
                below: u64::MAX
            })
            .files,
            Vec::<u64>::new()
        );
        assert_eq!(
            ix.release(Release {
                data_id: 2,
                below: u64::MAX
            })
            .files,
            vec![1]
        );
    }

    #[test]
    fn chunks_replace_log_extents() {
        let mut ix = DataIndex::default();
        ix.add(1, ext(0, 10, 0));
        ix.add(1, ext(10, 10, 1));
        let chunk = |off, len| Chunk {
            data_offset: off,
            len,
            crc: 0,
            name: chunk_name(1, off).into(),
        };
        assert!(is_chunk_name(&chunk(0, 10).name));
        assert_eq!(ix.add_chunk(1, chunk(0, 10)), Some(vec![0]));
        let got = ix.find(1, 5, 10).expect("indexed");
        assert_eq!(
            got,
            vec![
                Source::Tier2(chunk(0, 10), 5, 5),
                Source::Log(ext(10, 10, 1), 0, 5)
            ]
        );
        // A log extent below the Tier-2 boundary (replayed after recovery) is ignored.
        ix.add(1, ext(0, 10, 0));
        assert!(!ix.is_live(0));
        // A chunk whose range was truncated meanwhile is refused.
        let freed = ix.release(Release {
            data_id: 1,
            below: 20,
        });
        assert_eq!(freed.chunks, vec![chunk(0, 10)]);
        assert_eq!(freed.files, vec![1]);
        assert_eq!(ix.add_chunk(1, chunk(10, 10)), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_file_index_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_file_index(&bytes, 1);
            // Also with a valid CRC, so the body decoder itself is exercised.
            let mut b = bytes.clone();
            b.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            let _ = decode_file_index(&b, 1);
        }
    }

    #[test]
    fn file_index_roundtrip_and_corruption() {
        let e = |off, len, pos| Extent {
            data_offset: off,
            len,
            file_id: 7,
            frame_pos: pos,
        };
        let v = vec![
            (3, e(0, 10, 32)),
            (4, e(500, 1, 80)),
            (3, e(10, 20, 120)),
            (u64::MAX, e(u64::MAX - 1, 1, 300)),
        ];
        let enc = encode_file_index(&v);
        assert!(enc.len() < v.len() * 8 + 40, "{} bytes", enc.len());
        assert_eq!(decode_file_index(&enc, 7), Ok(v));
        let mut bad = enc.clone();
        bad[3] ^= 1;
        assert!(decode_file_index(&bad, 7).is_err());
        assert!(decode_file_index(&enc[..enc.len() - 1], 7).is_err());
        assert_eq!(decode_file_index(&encode_file_index(&[]), 7), Ok(vec![]));
    }
}
