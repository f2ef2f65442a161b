//! The Tier-2 manifest: what a node needs to come back from Tier-2 alone when its local
//! disk is lost.
//!
//! Every [`crate::log::SegmentLog::move_to_tier2`] pass that changed something ends by
//! writing one manifest object: the segment table and the metadata trees (the
//! controller's scopes, streams, reader groups) as they were when the pass began, and
//! the chunks. The pass moved everything durable at its start, so each byte of that
//! table is in a listed chunk, or was truncated or deleted during the pass. Chunks that
//! truncation or deletion freed are deleted only after a manifest object that no
//! longer needs them has been written.
//!
//! The object is either the **full manifest** (`manifest`, [`Manifest`]: every chunk)
//! or a **delta** on it (`manifest-{epoch}-{number}`, [`Delta`]: the chunks recorded
//! and freed since the previous object). Each full manifest gets a new random epoch;
//! its deltas are numbered from 1. A full manifest is written by a process's first
//! pass, after [`MAX_DELTAS`] deltas, and once the deltas since the last one add up to
//! its size; then the deltas it replaces are deleted. Why: the chunk list grows with
//! the data kept (about 46 bytes a chunk, 50 MB for a million), and every pass
//! rewrote all of it; now a pass writes what it changed, and a full list after at most
//! [`MAX_DELTAS`] deltas (on 40,000 chunks, a pass adding 300 wrote 1.76 MB, now 25 KB).
//!
//! [`restore`] reads the full manifest and applies its deltas in order (a missing
//! one before others is refused: restoring without it would lose what they name),
//! then builds a container directory: the table (a segment whose
//! oldest chunks are gone starts after them), the chunk records and the trees. Data
//! appended after the last object's snapshot was only on the lost disk.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::files::{create_file, list_files, sync_dir};
use super::format::Op;
use super::index::{chunk_name, is_chunk_name, Chunk};
use super::meta::{Meta, Trees};
use super::table::Table;
use super::tier2::Tier2;

/// The full manifest's object name.
pub const MANIFEST: &str = "manifest";
/// Version 2 added epochs and deltas; a version 1 manifest has no deltas.
const VERSION: u32 = 2;
/// Most deltas written on one full manifest (a restore reads each).
pub(crate) const MAX_DELTAS: u32 = 64;

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
    /// Names its deltas (0, the default: none, as in version 1).
    #[serde(default)]
    pub epoch: u64,
}

/// The changes since the previous manifest object of its epoch (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delta {
    pub version: u32,
    pub epoch: u64,
    /// 1 for the first delta on a full manifest, then one more each.
    pub number: u32,
    pub taken_at_ms: u64,
    pub table: Table,
    pub trees: Trees,
    /// Chunks recorded since the previous object.
    pub added: Vec<ChunkRecord>,
    /// Chunks freed since then, by data id and data offset (applied after `added`).
    pub removed: Vec<(u64, u64)>,
}

/// A delta's object name.
pub(crate) fn delta_name(epoch: u64, number: u32) -> String {
    format!("manifest-{epoch:016x}-{number:08x}")
}

/// The epoch and number of a delta's object name.
pub(crate) fn parse_delta_name(name: &str) -> Option<(u64, u32)> {
    let (epoch, number) = name.strip_prefix("manifest-")?.split_once('-')?;
    if epoch.len() != 16 || number.len() != 8 {
        return None;
    }
    Some((
        u64::from_str_radix(epoch, 16).ok()?,
        u32::from_str_radix(number, 16).ok()?,
    ))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    ciborium::into_writer(value, &mut buf)
        .map_err(|e| LogError::Tier2(format!("encoding the manifest: {e}")))?;
    Ok(buf)
}

fn decode<T: DeserializeOwned>(b: &[u8], what: &str) -> Result<T> {
    ciborium::from_reader(b).map_err(|e| LogError::Tier2(format!("{what}: {e}")))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Manifest {
    fn decode(b: &[u8], tier2: &str) -> Result<Manifest> {
        let what = format!("the manifest in {tier2}");
        let mut m: Manifest = decode(b, &what)?;
        if m.version != 1 && m.version != VERSION {
            return Err(LogError::Tier2(format!(
                "{what}: version {} (this build reads 1 and {VERSION})",
                m.version
            )));
        }
        m.table.reindex();
        Ok(m)
    }

    /// Applies the deltas written on it (`objects` lists Tier-2), in order; returns
    /// how many. A missing one before others is refused: deltas are written one after
    /// the other and deleted only together, so that object was lost or deleted, and
    /// restoring without it would delete the chunks the later ones name.
    async fn apply_deltas(&mut self, objects: &HashSet<String>, tier2: &dyn Tier2) -> Result<u32> {
        let mut numbers: Vec<u32> = objects
            .iter()
            .filter_map(|n| parse_delta_name(n))
            .filter(|(epoch, _)| self.epoch != 0 && *epoch == self.epoch)
            .map(|(_, number)| number)
            .collect();
        numbers.sort_unstable();
        let mut chunks: BTreeMap<(u64, u64), ChunkRecord> = std::mem::take(&mut self.chunks)
            .into_iter()
            .map(|c| ((c.data_id, c.data_offset), c))
            .collect();
        let mut applied = 0;
        let last = numbers.last().copied().unwrap_or(0);
        let where_ = tier2.describe();
        for number in numbers {
            let name = delta_name(self.epoch, number);
            let missing = |n: u32| {
                LogError::Tier2(format!(
                    "manifest delta {} is missing from {where_}, and later ones (up to {}) \
                     need it; nothing was restored. To restore as of the delta before it, \
                     delete the later ones",
                    delta_name(self.epoch, n),
                    delta_name(self.epoch, last)
                ))
            };
            if number != applied + 1 {
                return Err(missing(applied + 1));
            }
            let what = format!("manifest delta {name} in {where_}");
            let Some(b) = tier2
                .get(&name)
                .await
                .map_err(|e| LogError::Tier2(format!("reading {what}: {e}")))?
            else {
                return Err(missing(number));
            };
            let mut d: Delta = decode(&b, &what)?;
            if d.version != VERSION || d.epoch != self.epoch || d.number != number {
                return Err(LogError::Tier2(format!(
                    "{what}: version {}, epoch {:x}, number {} do not match its name",
                    d.version, d.epoch, d.number
                )));
            }
            d.table.reindex();
            for c in d.added {
                chunks.insert((c.data_id, c.data_offset), c);
            }
            for key in d.removed {
                chunks.remove(&key);
            }
            self.table = d.table;
            self.trees = d.trees;
            self.taken_at_ms = d.taken_at_ms;
            applied = number;
        }
        self.chunks = chunks.into_values().collect();
        Ok(applied)
    }
}

/// What a pass saw when it began, as each manifest object records it.
pub(crate) struct Snapshot {
    pub taken_at_ms: u64,
    /// The last durable batch and the metadata trees' checksum.
    pub at: (u64, u32),
    pub table: Table,
    pub trees: Trees,
}

/// What the mover knows of the manifest objects it wrote, to write the next one.
#[derive(Debug, Default)]
pub(crate) struct ManifestWriter {
    /// The snapshot's `at` of the last object written.
    written_at: Option<(u64, u32)>,
    /// The epoch of the last full manifest this process wrote (`None` before the
    /// first), the deltas written on it and their bytes, and its own bytes.
    epoch: Option<u64>,
    deltas: u32,
    delta_bytes: u64,
    full_bytes: u64,
    /// Chunks recorded since the last manifest object was written.
    added: Vec<ChunkRecord>,
    /// Delta objects to delete once the next full manifest is written.
    superseded: Vec<String>,
}

impl ManifestWriter {
    /// A chunk was recorded; the next manifest object must list it.
    pub fn added(&mut self, data_id: u64, c: &Chunk) {
        self.added.push(ChunkRecord {
            data_id,
            data_offset: c.data_offset,
            len: c.len,
            crc: c.crc,
        });
    }

    /// Whether the last object written still holds: its snapshot was taken at `at`,
    /// and no chunk was recorded since (one that a failed write named, too).
    pub fn is_current(&self, at: (u64, u32)) -> bool {
        self.written_at == Some(at) && self.added.is_empty()
    }

    /// Delta objects found in Tier-2 (of an earlier process): they go once this
    /// process has written a full manifest.
    pub fn supersede(&mut self, names: impl IntoIterator<Item = String>) {
        self.superseded.extend(names);
    }

    /// Writes the next manifest object: the full manifest (every chunk `all_chunks`
    /// gives) or a delta (the chunks added since the last object, and `removed`).
    /// Returns the bytes written.
    pub async fn write(
        &mut self,
        tier2: &dyn Tier2,
        snapshot: Snapshot,
        removed: Vec<(u64, u64)>,
        all_chunks: impl FnOnce() -> Vec<ChunkRecord>,
    ) -> Result<u64> {
        let t2err = |doing: &str, e: super::tier2::Tier2Error| {
            LogError::Tier2(format!("{doing} in {}: {e}", tier2.describe()))
        };
        let delta_on = self
            .epoch
            .filter(|_| self.deltas < MAX_DELTAS && self.delta_bytes < self.full_bytes);
        match delta_on {
            Some(epoch) => {
                let number = self.deltas + 1;
                let delta = Delta {
                    version: VERSION,
                    epoch,
                    number,
                    taken_at_ms: snapshot.taken_at_ms,
                    table: snapshot.table,
                    trees: snapshot.trees,
                    added: std::mem::take(&mut self.added),
                    removed,
                };
                let name = delta_name(epoch, number);
                let written = match encode(&delta) {
                    Ok(bytes) => {
                        let len = bytes.len() as u64;
                        let put = tier2.put(&name, bytes.into()).await;
                        put.map(|()| len)
                            .map_err(|e| t2err("writing the manifest delta", e))
                    }
                    Err(e) => Err(e),
                };
                let len = match written {
                    Ok(len) => len,
                    Err(e) => {
                        // The next object must still list them.
                        self.added = delta.added;
                        return Err(e);
                    }
                };
                self.written_at = Some(snapshot.at);
                self.deltas = number;
                self.delta_bytes += len;
                self.superseded.push(name);
                Ok(len)
            }
            None => {
                let epoch = crate::stream::random_id() as u64 | 1;
                let manifest = Manifest {
                    version: VERSION,
                    taken_at_ms: snapshot.taken_at_ms,
                    table: snapshot.table,
                    chunks: all_chunks(),
                    trees: snapshot.trees,
                    epoch,
                };
                let bytes = encode(&manifest)?;
                let len = bytes.len() as u64;
                tier2
                    .put(MANIFEST, bytes.into())
                    .await
                    .map_err(|e| t2err("writing the manifest", e))?;
                *self = ManifestWriter {
                    written_at: Some(snapshot.at),
                    epoch: Some(epoch),
                    full_bytes: len,
                    superseded: std::mem::take(&mut self.superseded),
                    ..ManifestWriter::default()
                };
                // What a restore no longer reads; one that stays is ignored (another
                // epoch) and deleted after the next full manifest.
                while let Some(name) = self.superseded.pop() {
                    if let Err(e) = tier2.delete(&name).await {
                        tracing::warn!(object = %name, error = %e, "deleting a replaced manifest delta failed; retried after the next full manifest");
                        self.superseded.push(name);
                        break;
                    }
                }
                Ok(len)
            }
        }
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
    /// Deltas applied on the full manifest.
    pub deltas: u32,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = now_ms().saturating_sub(self.taken_at_ms) / 1000;
        write!(
            f,
            "restored {} segments ({} bytes) from the Tier-2 manifest in {} plus {} of its \
             deltas, taken at Unix time {}.{:03} ({ago} s ago): data durable before then is \
             back; data appended after it was only on the lost disk",
            self.segments,
            self.bytes,
            self.tier2,
            self.deltas,
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
    let mut m = Manifest::decode(&bytes, &where_)?;
    let objects: HashSet<String> = tier2
        .list()
        .await
        .map_err(|e| t2err("listing objects", e))?
        .into_iter()
        .collect();
    let deltas = m.apply_deltas(&objects, tier2).await?;

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
        deltas,
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
    fn a_version_1_manifest_reads_as_one_without_deltas() {
        #[derive(Serialize)]
        struct V1 {
            version: u32,
            taken_at_ms: u64,
            table: Table,
            chunks: Vec<ChunkRecord>,
            trees: Trees,
        }
        let chunk = ChunkRecord {
            data_id: 3,
            data_offset: 0,
            len: 10,
            crc: 7,
        };
        let v1 = V1 {
            version: 1,
            taken_at_ms: 5,
            table: Table::default(),
            chunks: vec![chunk],
            trees: Trees::default(),
        };
        let m = Manifest::decode(&encode(&v1).expect("encode"), "t").expect("decode");
        assert_eq!((m.version, m.epoch, m.chunks.len()), (1, 0, 1));
        let future = Manifest {
            version: VERSION + 1,
            ..m
        };
        let e = Manifest::decode(&encode(&future).expect("encode"), "t").expect_err("newer");
        assert!(e.to_string().contains("version 3"), "{e}");
    }

    #[test]
    fn delta_names_parse_back() {
        assert_eq!(parse_delta_name(&delta_name(0xabc, 7)), Some((0xabc, 7)));
        assert_eq!(parse_delta_name("manifest"), None);
        assert_eq!(parse_delta_name("manifest-abc-1"), None);
        assert_eq!(
            parse_delta_name("c-0000000000000001-0000000000000000"),
            None
        );
    }

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
