//! Tiering: a node's segment data moves from its log to Tier-2 in the background, and
//! the node reports how far behind that is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::log::{MoveStats, RestoreReport, SegmentLog, Tier2};

/// A node's Tier-2 and how data moves there.
#[derive(Debug, Clone)]
pub struct Tiering {
    /// Where data goes.
    pub backend: Arc<dyn Tier2>,
    /// How often a pass moves everything the log holds (and retries after a failure);
    /// a pass also starts once the backlog reaches a quarter of its limit.
    pub flush_interval: Duration,
    /// Largest chunk written.
    pub chunk_bytes: u64,
}

/// What the tiering task did, for `/metrics`.
#[derive(Debug, Default)]
pub struct TierMetrics {
    bytes_moved: AtomicU64,
    chunks_written: AtomicU64,
    chunks_deleted: AtomicU64,
    manifests: AtomicU64,
    manifest_bytes: AtomicU64,
    errors: AtomicU64,
    restored_at_ms: AtomicU64,
}

impl TierMetrics {
    /// Records the restore the node started with.
    pub fn restored(&self, report: &RestoreReport) {
        self.restored_at_ms
            .store(report.taken_at_ms, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, log: &SegmentLog) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "tributary_tier2_backlog_bytes",
            "gauge",
            "Segment data only in the local log, not yet on Tier-2.",
            log.tier2_backlog(),
        );
        metric(
            "tributary_tier2_backlog_limit_bytes",
            "gauge",
            "Backlog at which appends are refused until Tier-2 catches up.",
            log.config().max_tier2_backlog_bytes,
        );
        metric(
            "tributary_tier2_moved_bytes_total",
            "counter",
            "Bytes moved to Tier-2.",
            get(&self.bytes_moved),
        );
        metric(
            "tributary_tier2_chunks_written_total",
            "counter",
            "Chunks written to Tier-2.",
            get(&self.chunks_written),
        );
        metric(
            "tributary_tier2_chunks_deleted_total",
            "counter",
            "Chunks deleted from Tier-2 (truncation, deletion, crash leftovers).",
            get(&self.chunks_deleted),
        );
        metric(
            "tributary_tier2_manifests_written_total",
            "counter",
            "Manifest objects (full manifests and deltas) written to Tier-2.",
            get(&self.manifests),
        );
        metric(
            "tributary_tier2_manifest_bytes_total",
            "counter",
            "Bytes of manifest objects written to Tier-2.",
            get(&self.manifest_bytes),
        );
        metric(
            "tributary_tier2_errors_total",
            "counter",
            "Tier-2 passes that failed (each is retried on the next).",
            get(&self.errors),
        );
        let restored = get(&self.restored_at_ms);
        if restored > 0 {
            out.push_str(&format!(
                "# HELP tributary_tier2_restored_snapshot_seconds When the Tier-2 manifest \
                 this node was restored from was taken (Unix time).\n\
                 # TYPE tributary_tier2_restored_snapshot_seconds gauge\n\
                 tributary_tier2_restored_snapshot_seconds {}.{:03}\n",
                restored / 1000,
                restored % 1000
            ));
        }
        out
    }
}

/// Runs tiering passes until aborted (or the log is gone): every `flush_interval`,
/// and sooner whenever the backlog reaches [`early_pass_at`], so that a node taking
/// data faster than one interval's worth moves it while it comes in instead of
/// refusing appends at the backlog limit. After a failed pass, the early one counts
/// from what the failed pass left: a pass that could not move one segment (a corrupt
/// log frame) still moves the others as they come in, and a Tier-2 that is down is
/// not retried in a loop.
pub(crate) fn spawn(
    log: Weak<SegmentLog>,
    tiering: &Tiering,
    metrics: Arc<TierMetrics>,
) -> tokio::task::JoinHandle<()> {
    let interval = tiering.flush_interval;
    let chunk_bytes = tiering.chunk_bytes;
    let tier2 = tiering.backend.describe();
    tokio::spawn(async move {
        let Some((backlog, limit)) = log
            .upgrade()
            .map(|l| (l.backlog(), l.config().max_tier2_backlog_bytes))
        else {
            return;
        };
        let mut failing = false;
        // What the last pass left in the log if it failed (0 after a pass that moved
        // everything).
        let mut left = 0u64;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = backlog.reaches(early_pass_at(left, chunk_bytes, limit)) => {}
            }
            let Some(log) = log.upgrade() else { return };
            let mut stats = MoveStats::default();
            let result = log.move_to_tier2(chunk_bytes, &mut stats).await;
            drop(log);
            // A failed pass counts what it moved before failing, too.
            let add = |a: &AtomicU64, v: u64| a.fetch_add(v, Ordering::Relaxed);
            add(&metrics.bytes_moved, stats.bytes_moved);
            add(&metrics.chunks_written, stats.chunks_written);
            add(&metrics.chunks_deleted, stats.chunks_deleted);
            add(&metrics.manifests, u64::from(stats.manifest_written));
            add(&metrics.manifest_bytes, stats.manifest_bytes);
            left = match result {
                Ok(()) => 0,
                Err(_) => backlog.bytes(),
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(%tier2, "Tier-2 reachable again; flushing resumed");
                        failing = false;
                    }
                    if stats.chunks_written > 0 {
                        tracing::debug!(?stats, "moved data to Tier-2");
                    }
                }
                Err(e) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, "moving data to Tier-2 failed; retrying every {interval:?}, and sooner as data comes in");
                    }
                    failing = true;
                }
            }
        }
    })
}

/// Backlog at which a pass starts before its interval is up, after a pass that left
/// `left` bytes it could not move (0 after one that moved everything): a quarter of
/// the limit at which appends are refused on top of that, at most the limit, and
/// never less than a chunk on top (no pass starts early for less than a chunk, and
/// one that could move nothing is not repeated before that much has come in).
fn early_pass_at(left: u64, chunk_bytes: u64, backlog_limit: u64) -> u64 {
    left.saturating_add(backlog_limit / 4)
        .min(backlog_limit)
        .max(left.saturating_add(chunk_bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::log::{AppendOptions, FsTier2, LogConfig};

    async fn append(log: &SegmentLog, seg: &str, n: u8) {
        for i in 0..n {
            log.append(seg, &[i; 5000], &AppendOptions::default())
                .await
                .expect("append");
        }
    }

    /// Waits up to 10 s for `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn early_passes_count_from_what_a_failed_pass_left() {
        const MIB: u64 = 1 << 20;
        let at = |left, chunk, limit| early_pass_at(left * MIB, chunk * MIB, limit * MIB) / MIB;
        assert_eq!(at(0, 16, 1024), 256, "a quarter of the limit");
        assert_eq!(at(0, 16, 32), 16, "at least a chunk");
        assert_eq!(at(300, 16, 1024), 556);
        assert_eq!(at(900, 16, 1024), 1024, "at most the limit");
        assert_eq!(at(1020, 16, 1024), 1036, "a chunk more: only the interval");
    }

    #[tokio::test]
    async fn early_passes_go_on_past_a_segment_that_cannot_move() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t2dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn Tier2> = Arc::new(FsTier2::new(t2dir.path()).expect("tier2"));
        let config = LogConfig {
            max_file_bytes: 16 << 10,
            cache_bytes: 0,
            max_tier2_backlog_bytes: 128 << 10,
            ..LogConfig::default()
        };
        {
            let log =
                SegmentLog::open_tiered(dir.path(), config.clone(), backend.clone()).expect("open");
            log.create("s0").await.expect("create");
            log.create("s1").await.expect("create");
            append(&log, "s0", 8).await;
            log.close().expect("close");
        }
        // A flipped byte in s0's first frame, in a file not replayed on open.
        let file0 = dir.path().join("wal").join(format!("{:016x}.log", 0));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file0)
            .expect("open file 0");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 2000).expect("read");
        f.write_all_at(&[b[0] ^ 0x40], 2000).expect("flip");
        drop(f);

        let log =
            Arc::new(SegmentLog::open_tiered(dir.path(), config, backend.clone()).expect("reopen"));
        let tiering = Tiering {
            backend,
            // Only early passes happen during the test.
            flush_interval: Duration::from_secs(3600),
            chunk_bytes: 4 << 10,
        };
        let metrics = Arc::new(TierMetrics::default());
        let errors = || metrics.errors.load(Ordering::Relaxed);
        let task = spawn(Arc::downgrade(&log), &tiering, metrics.clone());
        // Early passes start at 32 KiB, a quarter of the limit: the first at once, on
        // s0's 40,000 bytes, which it cannot move.
        until("the first pass", || errors() == 1).await;
        assert_eq!(log.tier2_backlog(), 40_000);
        // The next starts once 32 KiB more have come in: it fails on s0 again, and
        // moves s1.
        append(&log, "s1", 7).await;
        until("the second pass", || errors() == 2).await;
        assert_eq!(log.tier2_backlog(), 40_000);
        append(&log, "s1", 6).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(errors(), 2, "no pass below 40,000 + 32 KiB");
        assert_eq!(log.tier2_backlog(), 70_000);
        append(&log, "s1", 1).await;
        until("the third pass", || errors() == 3).await;
        assert_eq!(log.tier2_backlog(), 40_000);
        assert_eq!(metrics.bytes_moved.load(Ordering::Relaxed), 70_000);
        task.abort();
    }
}
