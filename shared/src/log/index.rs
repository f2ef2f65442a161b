//! Where durable data lives: for each data id, its extents in the log files, and how
//! many live extents each file holds (a file with none can be deleted).

use std::collections::{BTreeMap, HashMap, VecDeque};

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

/// Extents of every live data id.
#[derive(Debug, Default)]
pub struct DataIndex {
    by_data: HashMap<u64, VecDeque<Extent>>,
    file_refs: BTreeMap<u64, u64>,
}

impl DataIndex {
    /// Adds an extent after the data id's last one.
    pub fn add(&mut self, data_id: u64, e: Extent) {
        self.by_data.entry(data_id).or_default().push_back(e);
        *self.file_refs.entry(e.file_id).or_default() += 1;
    }

    /// Drops the extents that lie entirely below the release point; returns the files
    /// that no longer hold any live extent.
    pub fn release(&mut self, r: Release) -> Vec<u64> {
        let mut emptied = Vec::new();
        let Some(q) = self.by_data.get_mut(&r.data_id) else {
            return emptied;
        };
        while let Some(e) = q.front() {
            if e.data_offset + e.len > r.below {
                break;
            }
            let file_id = e.file_id;
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

    /// The extents covering `[data_offset, data_offset + len)` of a data id, each with
    /// how many of its bytes to skip and take. `None` if some byte is not indexed.
    pub fn find(
        &self,
        data_id: u64,
        data_offset: u64,
        len: u64,
    ) -> Option<Vec<(Extent, u64, u64)>> {
        let q = self.by_data.get(&data_id)?;
        let mut i = q.partition_point(|e| e.data_offset + e.len <= data_offset);
        let mut at = data_offset;
        let end = data_offset + len;
        let mut out = Vec::new();
        while at < end {
            let e = q.get(i)?;
            if e.data_offset > at {
                return None;
            }
            let skip = at - e.data_offset;
            let take = (e.len - skip).min(end - at);
            out.push((*e, skip, take));
            at += take;
            i += 1;
        }
        Some(out)
    }

    /// Data ids with at least one extent.
    pub fn data_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_data.keys().copied()
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

const INDEX_ENTRY_LEN: usize = 40;

/// Encodes the extents of one log file for the metadata store: per extent
/// `data_id, data_offset, len, file_id, frame_pos` (u64 LE each), then a CRC32C.
pub fn encode_file_index(extents: &[(u64, Extent)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(extents.len() * INDEX_ENTRY_LEN + 4);
    for (id, e) in extents {
        for v in [*id, e.data_offset, e.len, e.file_id, e.frame_pos] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes [`encode_file_index`]; `Err` names what is wrong.
pub fn decode_file_index(b: &[u8]) -> Result<Vec<(u64, Extent)>, String> {
    if b.len() < 4 || (b.len() - 4) % INDEX_ENTRY_LEN != 0 {
        return Err(format!("file index of impossible length {}", b.len()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("file index CRC mismatch".into());
    }
    let u = |s: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    };
    Ok(body
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|c| {
            (
                u(&c[0..8]),
                Extent {
                    data_offset: u(&c[8..16]),
                    len: u(&c[16..24]),
                    file_id: u(&c[24..32]),
                    frame_pos: u(&c[32..40]),
                },
            )
        })
        .collect())
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
        assert_eq!(got, vec![(ext(0, 10, 0), 5, 5), (ext(10, 10, 1), 0, 5)]);
        assert!(ix.find(1, 15, 10).is_none());
        assert_eq!(
            ix.release(Release {
                data_id: 1,
                below: 12
            }),
            vec![0]
        );
        assert!(!ix.is_live(0));
        assert_eq!(
            ix.release(Release {
                data_id: 1,
                below: u64::MAX
            }),
            Vec::<u64>::new()
        );
        assert_eq!(
            ix.release(Release {
                data_id: 2,
                below: u64::MAX
            }),
            vec![1]
        );
    }

    #[test]
    fn file_index_roundtrip_and_corruption() {
        let v = vec![(3, ext(0, 10, 7)), (4, ext(5, 1, 7))];
        let enc = encode_file_index(&v);
        assert_eq!(decode_file_index(&enc), Ok(v));
        let mut bad = enc.clone();
        bad[3] ^= 1;
        assert!(decode_file_index(&bad).is_err());
        assert!(decode_file_index(&enc[..enc.len() - 1]).is_err());
    }
}
