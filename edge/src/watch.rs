//! The watched-directory source, for video and other large data: each complete file a
//! camera or ffmpeg writes into the directory becomes one event (up to 1 GiB), written
//! through a temporary segment and merged atomically, so a reader gets the whole file
//! back or nothing ([`tributary::controller::Controller::append_large_event`]).
//!
//! **Complete files only.** A file is taken once its size and modification time have
//! not changed for `settle` (default 2 s). Hidden files (`.name`) and names ending in
//! `.part`, `.partial`, `.tmp`, `.crdownload` or `~` are never taken: writers that
//! write under a temporary name and rename when done are taken at once after the
//! rename settles.
//!
//! **Once.** Files are taken one at a time. With each file's event the source stores
//! an attribute, in the same atomic merge: this directory's last file = a fingerprint
//! of its name, size and modification time (conditional: not stored if it already
//! holds that value). Then the file is deleted (`after = "delete"`) or recorded as
//! done in the node's metadata store (`after = "keep"`). A crash between the merge and
//! that step leaves exactly this file in doubt, and the attribute settles it: stored,
//! so only the delete or record is redone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tributary::controller::ControllerError;
use tributary::log::{AttributeCondition, AttributeId, AttributeUpdate, LogError};
use tributary::stream::segment_name;

use crate::local::{fingerprint, source_attribute, LocalStream};

/// What happens to a file once it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    /// Deleted (the default: the stream is the storage).
    #[default]
    Delete,
    /// Left where it is, and never taken again.
    Keep,
}

/// A watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The directory.
    pub dir: PathBuf,
    /// Index into the configured streams.
    pub stream: usize,
    /// How long a file must stay unchanged to count as complete.
    pub settle: Duration,
    /// How often the directory is listed.
    pub poll: Duration,
    /// What happens to a stored file.
    pub after: After,
}

/// Counters of one watched directory.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Files stored.
    pub files: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Files found stored already after a crash (finished without storing again).
    pub already_stored: AtomicU64,
    /// Failed attempts (retried at the next poll).
    pub errors: AtomicU64,
}

/// A snapshot for the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// The directory.
    pub dir: String,
    /// Files stored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files found stored already after a crash.
    #[serde(default)]
    pub already_stored: u64,
    /// Failed attempts.
    pub errors: u64,
}

impl WatchStats {
    /// The counters now.
    pub fn status(&self, dir: &Path) -> WatchStatus {
        WatchStatus {
            dir: dir.display().to_string(),
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            already_stored: self.already_stored.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Names never taken: hidden or still being written under a temporary name.
fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || [".part", ".partial", ".tmp", ".crdownload", "~"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// What a file looked like when last listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    len: u64,
    mtime_ns: u128,
    since: Instant,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    spec: WatchSpec,
    stream: Arc<LocalStream>,
    stats: Arc<WatchStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let done = match stream
        .log()
        .meta_tree(&format!("watch:{}", spec.dir.display()))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(dir = %spec.dir.display(), error = %e, "watched directory: no metadata store; not watching");
            return;
        }
    };
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut warned = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(spec.poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let listed = match list(&spec.dir) {
            Ok(l) => {
                warned = false;
                l
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(dir = %spec.dir.display(), error = %e, "cannot list the watched directory; retrying");
                    warned = true;
                }
                continue;
            }
        };
        let now = Instant::now();
        let names: HashSet<&String> = listed.iter().map(|(n, _, _)| n).collect();
        seen.retain(|n, _| names.contains(n));
        let mut ready = Vec::new();
        for (name, len, mtime_ns) in &listed {
            let s = seen.entry(name.clone()).or_insert(Seen {
                len: *len,
                mtime_ns: *mtime_ns,
                since: now,
            });
            if s.len != *len || s.mtime_ns != *mtime_ns {
                *s = Seen {
                    len: *len,
                    mtime_ns: *mtime_ns,
                    since: now,
                };
            } else if now.duration_since(s.since) >= spec.settle {
                ready.push((name.clone(), *len, *mtime_ns));
            }
        }
        // Oldest first, so a stream holds the files in the order they were made.
        ready.sort_by_key(|(name, _, mtime)| (*mtime, name.clone()));
        for (name, len, mtime_ns) in ready {
            if *shutdown.borrow() {
                return;
            }
            let fp = file_fingerprint(&name, len, mtime_ns);
            if spec.after == After::Keep
                && done.get(name.as_bytes()).ok().flatten().as_deref()
                    == Some(&fp.to_be_bytes()[..])
            {
                continue;
            }
            match ingest(&spec, &stream, &stats, &name, len, fp).await {
                Ok(()) => {
                    hold_for_crash_tests().await;
                    seen.remove(&name);
                    if let Err(e) = finish(&spec, &done, &name, fp) {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(file = %spec.dir.join(&name).display(), error = %e, "stored, but could not be deleted or recorded; it will be recognised as stored");
                    }
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %spec.dir.join(&name).display(), error = %e, "storing a file failed; retrying at the next poll");
                }
            }
        }
    }
}

/// Crash tests set this (milliseconds) to hold each file between storing it and
/// deleting or recording it, so that a SIGKILL lands in that window.
const HOLD_ENV: &str = "TRIBUTARY_EDGE_TEST_WATCH_HOLD_MS";

async fn hold_for_crash_tests() {
    if let Some(ms) = std::env::var(HOLD_ENV).ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Regular files that may be taken: (name, size, mtime in ns).
fn list(dir: &Path) -> std::io::Result<Vec<(String, u64, u128)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if ignored(&name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push((name, meta.len(), mtime));
    }
    Ok(out)
}

/// This directory's "last file stored" attribute.
fn last_file_attribute(dir: &Path) -> AttributeId {
    source_attribute("watch", dir.as_os_str().as_encoded_bytes(), 0xffff)
}

fn file_fingerprint(name: &str, len: u64, mtime_ns: u128) -> i64 {
    fingerprint(&[name.as_bytes(), &len.to_be_bytes(), &mtime_ns.to_be_bytes()])
}

/// Stores the file as one event, unless the last file stored from this directory is
/// this one (a crash between storing and deleting it).
async fn ingest(
    spec: &WatchSpec,
    stream: &LocalStream,
    stats: &WatchStats,
    name: &str,
    len: u64,
    fp: i64,
) -> anyhow::Result<()> {
    let attr = last_file_attribute(&spec.dir);
    if already_stored(stream, attr, fp).await? {
        stats.already_stored.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %spec.dir.join(name).display(), "stored before a restart; finishing it");
        return Ok(());
    }
    let file = tokio::fs::File::open(spec.dir.join(name)).await?;
    let condition = AttributeUpdate {
        id: attr,
        value: fp,
        condition: AttributeCondition::NotEquals(fp),
    };
    let started = Instant::now();
    let data = tokio::io::BufReader::with_capacity(1 << 20, file);
    match stream
        .submit_large(name.as_bytes(), len, data, attr, Some(condition))
        .await
    {
        Ok(at) => {
            stats.files.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(len, Ordering::Relaxed);
            tracing::info!(file = %spec.dir.join(name).display(), bytes = len, segment = %at.segment, offset = at.offset, took = ?started.elapsed(), "file stored");
            Ok(())
        }
        Err(ControllerError::Log(LogError::AttributeConflict { id, .. })) if id == attr => {
            stats.already_stored.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn already_stored(stream: &LocalStream, attr: AttributeId, fp: i64) -> anyhow::Result<bool> {
    let s = stream.spec();
    let meta = stream
        .controller()
        .describe_settled(&s.scope, &s.stream)
        .await?;
    for r in meta.segments.values() {
        let seg = segment_name(&s.scope, &s.stream, r.id);
        if stream.log().attribute(&seg, attr)? == Some(fp) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes the stored file, or records it as done.
fn finish(spec: &WatchSpec, done: &sled::Tree, name: &str, fp: i64) -> anyhow::Result<()> {
    match spec.after {
        After::Delete => match std::fs::remove_file(spec.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        },
        After::Keep => {
            done.insert(name.as_bytes(), &fp.to_be_bytes())?;
            done.flush()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_hidden_files_are_ignored() {
        for n in [
            ".x.mp4",
            "a.mp4.part",
            "a.tmp",
            "a.partial",
            "a.crdownload",
            "a~",
        ] {
            assert!(ignored(n), "{n}");
        }
        assert!(!ignored("clip-0001.mp4"));
        assert_ne!(file_fingerprint("a", 1, 2), file_fingerprint("a", 1, 3));
        assert_ne!(
            last_file_attribute(Path::new("/a")),
            last_file_attribute(Path::new("/b"))
        );
    }
}
