//! The Tier-2 manifest: what a node needs to come back from Tier-2 alone when its local
//! disk is lost.
//!
//! Every [`crate::log::SegmentLog::move_to_tier2`] pass that changed something ends by
//! replacing the object `manifest` (CBOR, [`Manifest`]): the segment table and the
//! metadata trees (the controller's scopes, streams, reader groups) as they were when
//! the pass began, and every chunk recorded when it ended. The pass moved everything
//! durable at its start, so each byte of that table is in a listed chunk, or was
//! truncated or deleted during the pass. Chunks that truncation or deletion freed are
//! deleted only after a manifest that no longer needs them has been written.
//!
//! [`restore`] builds a container directory from the manifest: the table (a segment
//! whose oldest chunks are gone starts after them), the chunk records and the trees.
//! Data appended after the manifest's snapshot was only on the lost disk.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::files::{create_file, list_files, sync_dir};
use super::format::Op;
use super::index::{chunk_name, is_chunk_name, Chunk};
use super::meta::{Meta, Trees};
use super::table::Table;
use super::tier2::Tier2;

/// The manifest's object name.
pub const MANIFEST: &str = "manifest";
const VERSION: u32 = 1;

/// One chunk as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChunkRecord {
    pub data_id: u64,
    pub data_offset: u64,
    pub len: u64,
    pub crc: u32,
}

impl ChunkRecord {
    pub fn chunk(&self) -> Chunk {
        Chunk {
            data_offset: self.data_offset,
            len: self.len,
            crc: self.crc,
            name: chunk_name(self.data_id, self.data_offset).into(),
        }
    }
}

/// The manifest (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub version: u32,
    /// When the snapshot of the table and trees was taken (Unix milliseconds).
    pub taken_at_ms: u64,
    pub table: Table,
    pub chunks: Vec<ChunkRecord>,
    pub trees: Trees,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Manifest {
    pub fn new(taken_at_ms: u64, table: Table, chunks: Vec<ChunkRecord>, trees: Trees) -> Self {
        Manifest {
            version: VERSION,
            taken_at_ms,
            table,
            chunks,
            trees,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        ciborium::into_writer(self, &mut buf)
            .map_err(|e| LogError::Tier2(format!("encoding the manifest: {e}")))?;
        Ok(buf)
    }

    fn decode(b: &[u8], tier2: &str) -> Result<Manifest> {
        let bad = |reason: String| LogError::Tier2(format!("the manifest in {tier2}: {reason}"));
        let mut m: Manifest = ciborium::from_reader(b).map_err(|e| bad(e.to_string()))?;
        if m.version != VERSION {
            return Err(bad(format!(
                "version {} (this build reads {VERSION})",
                m.version
            )));
        }
        m.table.reindex();
        Ok(m)
    }
}

/// Data the manifest's table held but Tier-2 no longer has: the segment now starts at
/// `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingData {
    /// The segment.
    pub segment: String,
    /// Its start in the manifest.
    pub from: u64,
    /// Its start now.
    pub to: u64,
}

/// What a restore from Tier-2 brought back, and how far that reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Where the manifest was ([`Tier2::describe`]).
    pub tier2: String,
    /// When its snapshot was taken (Unix milliseconds): everything durable before then
    /// is back, anything appended later was only on the lost disk.
    pub taken_at_ms: u64,
    /// Segments restored.
    pub segments: usize,
    /// Bytes readable in them.
    pub bytes: u64,
    /// Segments whose oldest data was missing from Tier-2.
    pub missing: Vec<MissingData>,
    /// Chunk objects no manifest listed (written after it), deleted.
    pub orphans_deleted: usize,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = now_ms().saturating_sub(self.taken_at_ms) / 1000;
        write!(
            f,
            "restored {} segments ({} bytes) from the Tier-2 manifest in {}, taken at Unix \
             time {}.{:03} ({ago} s ago): data durable before then is back; data appended \
             after it was only on the lost disk",
            self.segments,
            self.bytes,
            self.tier2,
            self.taken_at_ms / 1000,
            self.taken_at_ms % 1000,
        )?;
        for m in &self.missing {
            write!(
                f,
                "; {} lost bytes {}..{} (missing from Tier-2)",
                m.segment, m.from, m.to
            )?;
        }
        Ok(())
    }
}

/// Bytes at the end of `[off, off + len)` of a data id that `chunks` (sorted by
/// offset) hold without a gap.
fn covered_suffix(chunks: &[(u64, u64)], off: u64, len: u64) -> u64 {
    let end = off + len;
    let mut at = end;
    while at > off {
        // The chunk holding byte at - 1.
        let i = chunks.partition_point(|(o, _)| *o < at);
        match i.checked_sub(1).map(|i| chunks[i]) {
            Some((o, l)) if o + l >= at => at = o,
            _ => break,
        }
    }
    end - at.max(off)
}

/// If `dir` holds no container and Tier-2 holds a manifest, builds the container from
/// it (atomically: in a sibling directory renamed into place) and says what came back.
/// `Ok(None)`: there was nothing to restore, or `dir` already holds a container.
pub(crate) async fn restore(dir: &Path, tier2: &dyn Tier2) -> Result<Option<RestoreReport>> {
    let has_files = list_files(&dir.join("wal")).is_ok_and(|f| !f.is_empty());
    if dir.join("meta").exists() || has_files {
        return Ok(None);
    }
    let where_ = tier2.describe();
    let t2err = |doing: &str, e: super::tier2::Tier2Error| {
        LogError::Tier2(format!("{doing} in {where_}: {e}"))
    };
    let Some(bytes) = tier2
        .get(MANIFEST)
        .await
        .map_err(|e| t2err("reading the manifest", e))?
    else {
        return Ok(None);
    };
    let m = Manifest::decode(&bytes, &where_)?;
    let objects: HashSet<String> = tier2
        .list()
        .await
        .map_err(|e| t2err("listing objects", e))?
        .into_iter()
        .collect();

    // The chunks that are there, by data id.
    let mut by_data: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut kept = Vec::new();
    let mut listed = HashSet::new();
    for c in &m.chunks {
        let name = chunk_name(c.data_id, c.data_offset);
        listed.insert(name.clone());
        if objects.contains(&name) {
            by_data
                .entry(c.data_id)
                .or_default()
                .push((c.data_offset, c.len));
            kept.push(c.clone());
        }
    }
    for v in by_data.values_mut() {
        v.sort_unstable();
    }

    // Each segment keeps the part Tier-2 holds without a gap up to its end.
    let mut table = m.table.clone();
    let mut report = RestoreReport {
        tier2: where_.clone(),
        taken_at_ms: m.taken_at_ms,
        segments: 0,
        bytes: 0,
        missing: Vec::new(),
        orphans_deleted: 0,
    };
    let mut truncations = Vec::new();
    for s in m.table.segments() {
        let mut new_start = s.length;
        for p in s.pieces.iter().rev() {
            let chunks = by_data.get(&p.data_id).map_or(&[][..], Vec::as_slice);
            let got = covered_suffix(chunks, p.data_offset, p.len);
            new_start = p.seg_offset + p.len - got;
            if got < p.len {
                break;
            }
        }
        if new_start > s.start {
            report.missing.push(MissingData {
                segment: s.name.clone(),
                from: s.start,
                to: new_start,
            });
            truncations.push(Op::Truncate {
                seg: s.id,
                start: new_start,
            });
        }
        report.segments += 1;
        report.bytes += s.length - new_start.max(s.start);
    }
    for op in &truncations {
        table
            .apply(op)
            .map_err(|e| LogError::Tier2(format!("the manifest in {where_}: {e}")))?;
    }

    // Build the container beside `dir`, then move it into place.
    let tmp = PathBuf::from(format!("{}.restoring", dir.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    }
    let wal = tmp.join("wal");
    std::fs::create_dir_all(&wal).map_err(|e| LogError::io(&wal, e))?;
    create_file(&wal, 0)?;
    {
        let meta = Meta::open(&tmp.join("meta"))?;
        for c in &kept {
            meta.put_chunk(c.data_id, &c.chunk())?;
        }
        meta.load_trees(&m.trees)?;
        meta.save(meta.encode_checkpoint(0, 0, &table)?, &[])?;
    }
    if dir.exists() {
        // Only an empty container directory gets here (checked above).
        std::fs::remove_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| LogError::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }

    // Chunks written after the manifest belong to data that is gone.
    for name in objects
        .iter()
        .filter(|n| is_chunk_name(n) && !listed.contains(*n))
    {
        tier2
            .delete(name)
            .await
            .map_err(|e| t2err("deleting an orphan chunk", e))?;
        report.orphans_deleted += 1;
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_suffix_stops_at_a_gap() {
        let chunks = [(0, 10), (10, 10), (30, 10)];
        assert_eq!(covered_suffix(&chunks, 0, 20), 20);
        assert_eq!(covered_suffix(&chunks, 5, 10), 10);
        assert_eq!(covered_suffix(&chunks, 0, 40), 10);
        assert_eq!(covered_suffix(&chunks, 0, 25), 0);
        assert_eq!(covered_suffix(&[], 0, 5), 0);
        assert_eq!(covered_suffix(&chunks, 3, 0), 0);
    }
}
