//! Tuning of a segment log.

use std::time::Duration;

use super::error::{LogError, Result};
use super::files::MAX_FRAME_BODY;
use super::writer::MAX_BATCH_BYTES;

/// Limits and timing of a segment log. Every field has a default (see `Default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A log file is closed, and a checkpoint taken, once it holds this many bytes.
    /// Recovery replays about this much at most. Default 64 MiB.
    pub max_file_bytes: u64,
    /// Bytes waiting for the next group commit beyond which appends are back-pressured.
    /// Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Largest single append. Larger events are written in chunks into a temporary
    /// segment that is then merged (see [`crate::event`]). Default 8 MiB.
    pub max_append_bytes: usize,
    /// Appends to one segment in one batch are coalesced into frames of up to this many
    /// data bytes. Default 1 MiB.
    pub max_frame_data_bytes: usize,
    /// How long the writer waits after the first operation of a batch for more to join
    /// it. Zero (the default) commits as soon as the previous fsync is done; on a
    /// gateway at a few events per second, 50–500 ms keeps the SD card from rewriting a
    /// page for every event, at the price of that much ack latency.
    pub commit_delay: Duration,
    /// Bytes of recent data kept in memory for reads (Tier-2 chunks too). Default
    /// 64 MiB.
    pub cache_bytes: usize,
    /// With a Tier-2: bytes that may be only in the log (Tier-2 slow or down) before
    /// appends are refused with [`LogError::Tier2Backlog`]. Default 1 GiB.
    pub max_tier2_backlog_bytes: u64,
    /// Free bytes the log keeps on its disk, on top of two batches
    /// (`max_batch_bytes`): below that, appends are refused with
    /// [`LogError::DiskFull`] until there is room again, so that rolls, checkpoints and
    /// the batches already taken always find space. Default 32 MiB.
    pub reserve_bytes: u64,
    /// Fault injection, for tests only (see [`super::faults`]); `None` in any node.
    pub faults: Option<super::faults::FaultSeam>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_file_bytes: 64 << 20,
            max_batch_bytes: 4 << 20,
            max_append_bytes: 8 << 20,
            max_frame_data_bytes: 1 << 20,
            commit_delay: Duration::ZERO,
            cache_bytes: 64 << 20,
            max_tier2_backlog_bytes: 1 << 30,
            reserve_bytes: 32 << 20,
            faults: None,
        }
    }
}

impl LogConfig {
    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(LogError::Meta {
                path: "<config>".into(),
                reason,
            })
        };
        if self.max_append_bytes == 0 || self.max_append_bytes > MAX_FRAME_BODY / 2 {
            return bad(format!(
                "max_append_bytes must be between 1 and {}",
                MAX_FRAME_BODY / 2
            ));
        }
        if self.max_frame_data_bytes == 0 || self.max_frame_data_bytes > MAX_FRAME_BODY / 4 {
            return bad(format!(
                "max_frame_data_bytes must be between 1 and {}",
                MAX_FRAME_BODY / 4
            ));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > MAX_BATCH_BYTES {
            return bad(format!(
                "max_batch_bytes must be between 1 and {MAX_BATCH_BYTES}"
            ));
        }
        if self.max_file_bytes < 4096 {
            return bad("max_file_bytes must be at least 4096".into());
        }
        if self.commit_delay > Duration::from_secs(10) {
            return bad("commit_delay must be at most 10 s".into());
        }
        Ok(())
    }
}
