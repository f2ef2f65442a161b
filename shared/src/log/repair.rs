//! Repair: a log that recovery refuses to open because a frame is damaged (a bad byte,
//! not a crash: later frames follow it) is cut at that frame, so the node starts again.
//! Cutting drops every frame after it — acknowledged appends among them — so it is an
//! operator's step (`tributary-cloud repair`, `tributary-edge repair`), and it says
//! first what it drops: the appends per segment and the other operations.
//!
//! Damage met while the log runs (a read that reaches a damaged frame or chunk) does not
//! stop the node; [`DamageLog`] keeps the ranges met so far for `status` and metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{LogError, Result};
use super::files::{file_path, list_files, sync_dir, MAX_FRAME_BODY};
use super::format::{decode_frame, Op, FILE_HEADER_LEN};
use super::meta::Meta;
use super::{LogConfig, SegmentLog, Tier2};

/// What cutting the log at a damaged frame drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The file holding the damaged frame.
    pub file: PathBuf,
    /// Where the damaged frame starts: the file is cut there.
    pub offset: u64,
    /// What recovery found wrong.
    pub reason: String,
    /// Later files, removed whole.
    pub later_files: Vec<PathBuf>,
    /// Bytes dropped from the log (the damaged file's rest and the later files).
    pub bytes: u64,
    /// Data bytes of the readable appends dropped, per segment (by name where the
    /// log knows it, else `#ID`).
    pub appends: BTreeMap<String, u64>,
    /// Readable operations dropped that are not appends (creates, seals, merges,
    /// truncations, deletes).
    pub other_ops: usize,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the log is damaged in {} at offset {} ({}); cutting it there drops {} bytes of \
             log",
            self.file.display(),
            self.offset,
            self.reason,
            self.bytes
        )?;
        if !self.later_files.is_empty() {
            write!(f, " (and {} later files)", self.later_files.len())?;
        }
        write!(f, ", among them")?;
        for (seg, bytes) in &self.appends {
            write!(f, " {bytes} bytes appended to {seg},")?;
        }
        write!(
            f,
            " {} other operations, and whatever the damaged frame held",
            self.other_ops
        )
    }
}

/// Opens the log in `dir` to see whether recovery refuses it for a damaged frame;
/// if so, says what cutting it there drops and, with `apply`, cuts it and opens it
/// again (a second damaged frame before the first is cut the same way). `Ok(None)`:
/// nothing to repair (the log opens).
pub fn repair(
    dir: &Path,
    config: &LogConfig,
    tier2: Option<Arc<dyn Tier2>>,
    apply: bool,
) -> Result<Vec<Cut>> {
    let mut cuts = Vec::new();
    loop {
        let opened = match &tier2 {
            Some(t) => SegmentLog::open_tiered(dir, config.clone(), t.clone()),
            None => SegmentLog::open(dir, config.clone()),
        };
        let (file, offset, reason) = match opened {
            Ok(log) => {
                log.close()?;
                return Ok(cuts);
            }
            Err(LogError::Corrupt {
                path,
                offset,
                reason,
            }) if path.parent() == Some(&dir.join("wal")) && offset >= FILE_HEADER_LEN => {
                (path, offset, reason)
            }
            Err(e) => return Err(e),
        };
        let cut = plan(dir, &file, offset, reason)?;
        if !apply {
            cuts.push(cut);
            return Ok(cuts);
        }
        if cuts
            .iter()
            .any(|c: &Cut| c.file == cut.file && c.offset == cut.offset)
        {
            return Err(LogError::Failed(format!(
                "cutting {} at {} did not make the log open",
                cut.file.display(),
                cut.offset
            )));
        }
        carry_out(dir, &cut)?;
        tracing::warn!("{cut}: cut");
        cuts.push(cut);
    }
}

/// What cutting `file` at `offset` drops.
fn plan(dir: &Path, file: &Path, offset: u64, reason: String) -> Result<Cut> {
    let wal = dir.join("wal");
    let io = |p: &Path, e| LogError::io(p, e);
    let id = list_files(&wal)?
        .into_iter()
        .find(|id| file_path(&wal, *id) == file)
        .ok_or_else(|| LogError::MissingFile {
            path: file.to_path_buf(),
            reason: "not a log file of this directory".into(),
        })?;
    let later: Vec<u64> = list_files(&wal)?.into_iter().filter(|f| *f > id).collect();
    let names = segment_names(dir);
    let mut cut = Cut {
        file: file.to_path_buf(),
        offset,
        reason,
        later_files: later.iter().map(|f| file_path(&wal, *f)).collect(),
        bytes: 0,
        appends: BTreeMap::new(),
        other_ops: 0,
    };
    // The damaged file's rest, read past the damage; then each later file.
    let rest = std::fs::read(file).map_err(|e| io(file, e))?;
    let rest = rest.get(offset as usize..).unwrap_or_default();
    cut.bytes += rest.len() as u64;
    count(&mut cut, rest, 1, &names);
    for f in &cut.later_files.clone() {
        let bytes = std::fs::read(f).map_err(|e| io(f, e))?;
        cut.bytes += bytes.len() as u64;
        count(
            &mut cut,
            bytes.get(FILE_HEADER_LEN as usize..).unwrap_or_default(),
            0,
            &names,
        );
    }
    Ok(cut)
}

/// Adds the readable frames of `bytes` to `cut`, skipping `skip` bytes first and then
/// one byte at a time past anything that is not a frame.
fn count(cut: &mut Cut, bytes: &[u8], skip: usize, names: &BTreeMap<u64, String>) {
    let mut pos = skip;
    while pos < bytes.len() {
        match decode_frame(&bytes[pos..], MAX_FRAME_BODY) {
            Ok(fr) => {
                match &fr.op {
                    Op::Append { seg, len, .. } => {
                        let name = names.get(seg).cloned().unwrap_or_else(|| format!("#{seg}"));
                        *cut.appends.entry(name).or_default() += len;
                    }
                    _ => cut.other_ops += 1,
                }
                pos += fr.frame_len;
            }
            Err(_) => pos += 1,
        }
    }
}

/// Segment names by id, as the last checkpoint knows them (best effort: a report).
fn segment_names(dir: &Path) -> BTreeMap<u64, String> {
    let Ok(meta) = Meta::open(&dir.join("meta")) else {
        return BTreeMap::new();
    };
    match meta.checkpoint() {
        Ok(Some(cp)) => cp
            .table
            .segments()
            .map(|s| (s.id, s.name.clone()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Cuts the file and removes the later ones, durably.
fn carry_out(dir: &Path, cut: &Cut) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&cut.file)
        .map_err(|e| LogError::io(&cut.file, e))?;
    f.set_len(cut.offset)
        .and_then(|()| f.sync_all())
        .map_err(|e| LogError::io(&cut.file, e))?;
    for later in &cut.later_files {
        std::fs::remove_file(later).map_err(|e| LogError::io(later, e))?;
    }
    sync_dir(&dir.join("wal"))
}

/// A byte range of a segment that reads could not serve.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Damage {
    /// Segment name.
    pub segment: String,
    /// First unreadable offset.
    pub from: u64,
    /// End of the unreadable piece.
    pub to: u64,
    /// Why (the file and offset, or the chunk).
    pub reason: String,
}

/// Damaged ranges met by reads since the log opened, at most [`DamageLog::MAX`] (the
/// first ones kept: a report, not an index).
#[derive(Debug, Default)]
pub(crate) struct DamageLog {
    ranges: std::sync::Mutex<BTreeMap<(String, u64), Damage>>,
}

impl DamageLog {
    /// Ranges kept at most.
    pub const MAX: usize = 64;

    /// A log that knows of these ranges from the start (damaged frames its recovery
    /// kept, already logged).
    pub fn with(found: Vec<Damage>) -> DamageLog {
        let ranges = found
            .into_iter()
            .take(Self::MAX)
            .map(|d| ((d.segment.clone(), d.from), d))
            .collect();
        DamageLog {
            ranges: std::sync::Mutex::new(ranges),
        }
    }

    /// Records a range a read could not serve (logged the first time).
    pub fn met(&self, d: &Damage) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        let key = (d.segment.clone(), d.from);
        if ranges.len() < Self::MAX && !ranges.contains_key(&key) {
            tracing::error!(segment = %d.segment, from = d.from, to = d.to, reason = %d.reason, "a read met damaged data; the segment's other bytes are served");
            ranges.insert(key, d.clone());
        }
    }

    /// The ranges met so far.
    pub fn list(&self) -> Vec<Damage> {
        let ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        ranges.values().cloned().collect()
    }
}
