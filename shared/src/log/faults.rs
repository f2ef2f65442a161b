//! A seam for fault-injection tests: every write, fsync, file creation and checkpoint
//! of the log's files passes a numbered *point* here, and a plan makes one point fail
//! the way a disk does — a full disk, an I/O error, or a crash (that point and every
//! later one fail, as if the process had died there). The seam also records how much
//! of each log file was durable (written and fsync'ed), so a test can then drop
//! everything after it ([`Faults::lose_unsynced`]): a power loss in which the disk kept
//! only what was fsync'ed.
//!
//! Off (no plan) it only counts, so a test learns how many points a workload has and
//! can enumerate them one run each. Production code never sets it
//! ([`super::LogConfig::faults`] is `None`).
//!
//! Not covered: sled's own writes (a checkpoint or a chunk record is one point, as a
//! whole) and the Tier-2 directory's writes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What fails at the chosen point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ENOSPC`, once (the log waits for room and tries again).
    DiskFull,
    /// `EIO`, once.
    Io,
    /// The process dies there: this point and every later one fail.
    Crash,
}

/// Where a point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Writing a batch's frames to a log file.
    Write,
    /// The fsync that makes them durable.
    Sync,
    /// Creating the next log file (a roll).
    Create,
    /// Saving a checkpoint and the full file's index (a roll).
    Checkpoint,
    /// Recording a chunk Tier-2 holds (a move), after the chunk is written.
    Chunk,
    /// Deleting a log file nothing needs any more.
    Delete,
}

#[derive(Debug, Default)]
struct State {
    /// The point that fails, and how.
    plan: Option<(u64, Fault)>,
    /// Set once the planned crash happened.
    crashed: bool,
    /// Per log file: the bytes known durable.
    durable: BTreeMap<PathBuf, u64>,
    /// The points passed, in order (for the test's report).
    trace: Vec<Point>,
}

/// The seam: shared by a log and the test that plans its faults.
#[derive(Debug, Default)]
pub struct Faults {
    passed: AtomicU64,
    state: Mutex<State>,
    /// Where durable lengths are also written, one `PATH LEN` line each (a whole node
    /// under test, SIGKILLed: the test reads it to apply the power loss).
    ledger: Option<Mutex<std::fs::File>>,
}

/// A [`Faults`] held by a [`super::LogConfig`]: equal only to itself.
#[derive(Debug, Clone)]
pub struct FaultSeam(pub Arc<Faults>);

impl PartialEq for FaultSeam {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FaultSeam {}

impl Faults {
    /// A seam that counts points and fails none.
    pub fn counting() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// A seam that fails nothing and appends each durable length to the file `path`
    /// (created or truncated), for [`Faults::apply_ledger`] after the process is killed.
    pub fn ledger(path: &Path) -> io::Result<Arc<Faults>> {
        let file = std::fs::File::create(path)?;
        Ok(Arc::new(Faults {
            ledger: Some(Mutex::new(file)),
            ..Faults::default()
        }))
    }

    /// A power loss after a process using [`Faults::ledger`] was killed: each log file
    /// in `wal_dir` is cut to the last durable length the ledger at `path` gives for
    /// it, and one it does not name is removed (never made durable).
    pub fn apply_ledger(path: &Path, wal_dir: &Path) -> io::Result<()> {
        let text = std::fs::read_to_string(path)?;
        let mut durable: BTreeMap<PathBuf, u64> = BTreeMap::new();
        for line in text.lines() {
            // A line cut short by the kill is not a record.
            if let Some((p, len)) = line.rsplit_once(' ') {
                if let Ok(len) = len.parse::<u64>() {
                    let d = durable.entry(PathBuf::from(p)).or_insert(0);
                    *d = (*d).max(len);
                }
            }
        }
        let f = Faults::default();
        f.lock().durable = durable;
        f.lose_unsynced(wal_dir, false)
    }

    /// A seam whose point `n` (from 0) fails with `fault`.
    pub fn failing(n: u64, fault: Fault) -> Arc<Faults> {
        let f = Faults::default();
        f.lock().plan = Some((n, fault));
        Arc::new(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passes a point: `Err` if the plan fails it.
    pub fn point(&self, at: Point) -> io::Result<()> {
        let n = self.passed.fetch_add(1, Ordering::SeqCst);
        let mut s = self.lock();
        s.trace.push(at);
        if s.crashed {
            return Err(io::Error::other(
                "injected: the process crashed before this",
            ));
        }
        match s.plan {
            Some((p, Fault::Crash)) if p == n => {
                s.crashed = true;
                Err(io::Error::other("injected: crash"))
            }
            Some((p, Fault::DiskFull)) if p == n => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some((p, Fault::Io)) if p == n => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }

    /// Records that `path` is durable up to `len` bytes.
    pub fn durable(&self, path: &Path, len: u64) {
        let mut s = self.lock();
        let d = s.durable.entry(path.to_path_buf()).or_insert(0);
        *d = (*d).max(len);
        if let Some(l) = &self.ledger {
            use std::io::Write;
            let mut f = l.lock().unwrap_or_else(|e| e.into_inner());
            // Written whole, in one call; the page cache keeps it through a SIGKILL.
            let _ = f.write_all(format!("{} {len}\n", path.display()).as_bytes());
        }
    }

    /// Points passed so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }

    /// Whether the planned crash happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The kinds of the points passed, in order.
    pub fn trace(&self) -> Vec<Point> {
        self.lock().trace.clone()
    }

    /// A power loss, after the log is closed: every log file in `wal_dir` is cut to
    /// what was durable, and one never made durable is removed (its creation was not).
    /// `torn`: the 4 KiB block where the durable part ends was being written and is
    /// kept whole, with one bit flipped in the first frame past the durable end (a
    /// torn, garbled block).
    pub fn lose_unsynced(&self, wal_dir: &Path, torn: bool) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let s = self.lock();
        for entry in std::fs::read_dir(wal_dir)? {
            let path = entry?.path();
            let Some(durable) = s.durable.get(&path).copied() else {
                std::fs::remove_file(&path)?;
                continue;
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            let len = f.metadata()?.len();
            let keep = if torn {
                len.min((durable / 4096 + 1) * 4096)
            } else {
                durable
            };
            if len > keep {
                f.set_len(keep)?;
            }
            if keep > durable {
                // In the frame header or the first bytes after it (not in the zero
                // padding a direct write leaves after the last frame).
                let at = durable + (keep - durable - 1).min(12);
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at)?;
                f.write_all_at(&[b[0] ^ 0x10], at)?;
            }
        }
        Ok(())
    }
}
