//! Room on the disk: a full disk is a state the log waits out, not a failure.
//!
//! The log keeps [`super::LogConfig::reserve_bytes`] free for what must never fail for
//! want of space — a roll's new file, the checkpoint and file index sled writes then —
//! on top of two batches (`max_batch_bytes` each: the one being written and the one
//! being built, taken before the log noticed). The writer looks at the free space
//! before each batch; below that, new appends are refused with [`LogError::DiskFull`]
//! (the batches taken are still written), and once space is back above it they are
//! taken again, by themselves. Should the disk fill anyway (another program), a write or fsync that
//! fails with `ENOSPC` is not a failure either: the syncer still holds the batch, so it
//! waits and writes the whole batch again at the same place, then fsyncs it, until it
//! goes through. Nothing of such a batch was acknowledged, and writing it again makes
//! its pages dirty again, so the later fsync covers them (unlike retrying an fsync
//! alone, which may report success for pages the kernel dropped).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{LogError, Result};

/// How often a log refusing appends for want of space looks again.
const RECHECK_EVERY: Duration = Duration::from_millis(200);
/// How long the syncer waits before writing a batch again after `ENOSPC`.
pub(crate) const RETRY_FULL_EVERY: Duration = Duration::from_millis(500);

/// Free bytes on the file system of `dir` (for an unprivileged writer), if it tells.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    fs2::available_space(dir).ok()
}

/// Whether `e` is the file system saying it is full.
pub fn is_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// The log's view of its disk's free space.
#[derive(Debug)]
pub(crate) struct Room {
    dir: PathBuf,
    reserve: u64,
    full: AtomicBool,
    /// When `full` was last looked at, in ms since `epoch`.
    checked_ms: AtomicU64,
    epoch: Instant,
    /// Free bytes at the last look.
    free: AtomicU64,
}

impl Room {
    /// `reserve` bytes kept free, plus `in_flight`: what the log may still write of
    /// appends it took before it noticed (two batches: the one being written and the
    /// one being built).
    pub fn new(dir: &Path, reserve: u64, in_flight: u64) -> Self {
        let room = Room {
            dir: dir.to_path_buf(),
            reserve: reserve + in_flight,
            full: AtomicBool::new(false),
            checked_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            free: AtomicU64::new(u64::MAX),
        };
        room.look();
        room
    }

    /// Looks at the free space now; returns whether the disk is full (below the
    /// reserve).
    pub fn look(&self) -> bool {
        let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        self.free.store(free, Ordering::Relaxed);
        self.checked_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let full = free < self.reserve;
        let was = self.full.swap(full, Ordering::Relaxed);
        if full && !was {
            tracing::warn!(dir = %self.dir.display(), free_bytes = free, reserve_bytes = self.reserve, "disk full: refusing appends until there is room again");
        } else if was && !full {
            tracing::info!(dir = %self.dir.display(), free_bytes = free, "room on the disk again: taking appends");
        }
        full
    }

    /// Marks the disk full (a write failed with `ENOSPC`).
    pub fn filled(&self) {
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(dir = %self.dir.display(), "disk full (a write failed with ENOSPC): the batch waits and is written again");
        }
    }

    /// Refuses an append while the disk is full, looking again at most every
    /// [`RECHECK_EVERY`].
    pub fn check(&self) -> Result<()> {
        if !self.full.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let since = now.saturating_sub(self.checked_ms.load(Ordering::Relaxed));
        if since >= RECHECK_EVERY.as_millis() as u64 && !self.look() {
            return Ok(());
        }
        Err(LogError::DiskFull {
            dir: self.dir.clone(),
            free: self.free.load(Ordering::Relaxed),
            reserve: self.reserve,
        })
    }
}
