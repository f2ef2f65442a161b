//! Errors of the segment log.

use std::path::PathBuf;

/// Everything the segment log can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The named segment does not exist (never created, deleted, or merged away).
    #[error("segment {0:?} does not exist")]
    NoSuchSegment(String),
    /// A segment with this name already exists.
    #[error("segment {0:?} already exists")]
    SegmentExists(String),
    /// The segment name breaks the naming rules.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The segment is sealed and takes no more appends.
    #[error("segment {0:?} is sealed")]
    Sealed(String),
    /// A conditional append expected another current length.
    #[error("conditional append to {segment:?} expected length {expected}, but it is {actual}")]
    BadOffset {
        /// Segment name.
        segment: String,
        /// Length the caller expected.
        expected: u64,
        /// Length the segment has (including appends not yet durable).
        actual: u64,
    },
    /// An attribute condition failed; nothing was appended.
    #[error("attribute {id:#x} of {segment:?} is {current:?}; the update's condition failed")]
    AttributeConflict {
        /// Segment name.
        segment: String,
        /// Attribute id.
        id: u128,
        /// Current value (including appends not yet durable).
        current: Option<i64>,
    },
    /// An append larger than the configured maximum.
    #[error("append of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the refused append.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// More than 65535 attribute updates in one segment's batch.
    #[error("too many attribute updates in one append")]
    TooManyAttributes,
    /// A read below the segment's start offset.
    #[error("offset {offset} of {segment:?} is truncated; data starts at {start}")]
    Truncated {
        /// Segment name.
        segment: String,
        /// Requested offset.
        offset: u64,
        /// First offset still stored.
        start: u64,
    },
    /// A read or truncation beyond the segment's durable length.
    #[error("offset {offset} is beyond the end of {segment:?} (length {length})")]
    BeyondEnd {
        /// Segment name.
        segment: String,
        /// Requested offset.
        offset: u64,
        /// Durable length.
        length: u64,
    },
    /// A merge that cannot be done.
    #[error("cannot merge {source_name:?} into {target:?}: {reason}")]
    BadMerge {
        /// Target segment.
        target: String,
        /// Source segment.
        source_name: String,
        /// Why not.
        reason: &'static str,
    },
    /// Too many bytes are waiting for the next group commit; wait and retry.
    #[error("{0} bytes are waiting for the disk; retry when the log has room")]
    Backpressure(usize),
    /// A log file holds bytes that are not what was written.
    #[error("corrupt log file {path}, offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Bytes of a segment cannot be read (their log frame or Tier-2 chunk is corrupt or
    /// missing); the segment's other bytes still read.
    #[error("bytes {from}..{to} of segment {segment:?} cannot be read: {reason}")]
    Unreadable {
        /// Segment name.
        segment: String,
        /// First unreadable offset.
        from: u64,
        /// End of the unreadable piece.
        to: u64,
        /// Why (the file and offset, or the chunk).
        reason: String,
    },
    /// A log file that holds live data or must be replayed is missing.
    #[error("log file {path} is missing: {reason}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Why it is needed.
        reason: String,
    },
    /// The metadata store (sled) failed or holds something unreadable.
    #[error("metadata store {path}: {reason}")]
    Meta {
        /// The sled directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A file system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Tier-2 failed, holds a corrupt chunk, or is not configured.
    #[error("tier-2: {0}")]
    Tier2(String),

    /// Tier-2 is behind: more data than allowed is only in the log. Retry later.
    #[error(
        "{bytes} bytes are not on Tier-2 yet (at most {limit} may wait): Tier-2 ({tier2}) is \
         slow or unreachable; retry later"
    )]
    Tier2Backlog {
        /// Bytes only in the log.
        bytes: u64,
        /// The configured bound.
        limit: u64,
        /// Where Tier-2 is.
        tier2: String,
    },
    /// The disk has less free space than the log keeps in reserve: appends are refused
    /// until there is room again (the log takes them again by itself).
    #[error(
        "disk full: {free} bytes free in {dir}, below the {reserve} bytes the log keeps in \
         reserve; appends are taken again once there is room"
    )]
    DiskFull {
        /// The log's directory.
        dir: PathBuf,
        /// Free bytes when last looked at.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// A write or fsync failed earlier; the log refuses everything until it is reopened.
    #[error("the log stopped after a write failure and must be reopened: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is the disk being full (ENOSPC, in a log file or, by its text, in
    /// the metadata store, whose errors are kept as text).
    pub fn is_disk_full(&self) -> bool {
        match self {
            LogError::DiskFull { .. } => true,
            LogError::Io { source, .. } => super::room::is_full(source),
            LogError::Meta { reason, .. } => reason.contains("No space left on device"),
            _ => false,
        }
    }
}

/// Result with [`LogError`].
pub type Result<T, E = LogError> = std::result::Result<T, E>;
