//! Messages of the protocol (CBOR through serde). Adding a variant is compatible;
//! changing or removing one needs a new protocol version.

use serde::{Deserialize, Serialize};

use crate::log::LogError;

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request of a connection: the protocol versions the client speaks.
    Hello {
        /// Versions, any order.
        versions: Vec<u16>,
        /// Free text naming the client, for logs.
        client: String,
    },
    /// Create a segment.
    CreateSegment {
        /// Segment name.
        segment: String,
    },
    /// Describe a segment.
    SegmentInfo {
        /// Segment name.
        segment: String,
    },
    /// Seal a segment.
    SealSegment {
        /// Segment name.
        segment: String,
    },
    /// Drop a segment's data below `offset`.
    TruncateSegment {
        /// Segment name.
        segment: String,
        /// New start.
        offset: u64,
    },
    /// Append the sealed `source` to `target`.
    MergeSegments {
        /// Target segment.
        target: String,
        /// Source segment.
        source: String,
    },
    /// Delete a segment.
    DeleteSegment {
        /// Segment name.
        segment: String,
    },
    /// Start appending to a segment on this stream as `writer_id`; data frames with
    /// [`DataHeader::Append`] follow. The reply says what the segment already holds
    /// from this writer.
    SetupAppend {
        /// Segment name.
        segment: String,
        /// The writer's id (a UUID).
        writer_id: u128,
    },
    /// Read from a segment; the reply is a data frame [`DataHeader::Read`].
    Read {
        /// Segment name.
        segment: String,
        /// First byte.
        offset: u64,
        /// Most bytes to return.
        max_len: u32,
        /// How long to wait at the tail for data, in milliseconds.
        wait_ms: u32,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The handshake succeeded with this version.
    HelloOk {
        /// Version chosen.
        version: u16,
    },
    /// The request succeeded and has nothing to return.
    Ok,
    /// A segment's state.
    Info(SegmentInfoWire),
    /// Append session ready.
    AppendSetup {
        /// Last event number stored for this writer, if any.
        last_event_number: Option<i64>,
        /// Segment length.
        length: u64,
    },
    /// Appends up to and including `event_number` are durable (or were already
    /// stored: a resend is acknowledged without being stored twice).
    Appended {
        /// Last event number of the acknowledged block.
        event_number: i64,
        /// Segment offset after the block (its end), or of the first byte not stored
        /// when the block was a duplicate.
        end_offset: u64,
        /// The block had been stored before and was not stored again.
        duplicate: bool,
    },
    /// The request failed.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// Header of a data frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataHeader {
    /// A block of whole events to append (after `SetupAppend`).
    Append {
        /// Number of the block's last event (the writer numbers its events).
        event_number: i64,
        /// Events in the block.
        event_count: u32,
    },
    /// Bytes read.
    Read {
        /// Offset of the first byte.
        offset: u64,
        /// The segment is sealed and this is its end.
        end_of_segment: bool,
    },
}

/// A segment's state, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfoWire {
    /// Name.
    pub name: String,
    /// First readable offset.
    pub start: u64,
    /// Length.
    pub length: u64,
    /// Sealed.
    pub sealed: bool,
}

/// Stable error codes. A retired code is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed = 1,
    /// The frame is larger than the protocol allows.
    TooLarge = 2,
    /// No common protocol version.
    UnsupportedVersion = 3,
    /// The client may not do this.
    Unauthorized = 4,
    /// The message is not valid here (e.g. data before `SetupAppend`).
    UnexpectedMessage = 5,
    /// No such segment.
    NoSuchSegment = 10,
    /// The segment exists already.
    SegmentExists = 11,
    /// Invalid segment name.
    InvalidName = 12,
    /// The segment is sealed.
    Sealed = 13,
    /// Conditional append or attribute check failed.
    Conflict = 14,
    /// Read below the segment's start.
    Truncated = 15,
    /// Offset beyond the end.
    BeyondEnd = 16,
    /// The server is busy; retry.
    Busy = 17,
    /// The server is shutting down; retry elsewhere or later.
    ShuttingDown = 18,
    /// Storage failed on the server.
    Storage = 19,
}

impl From<&LogError> for ErrorCode {
    fn from(e: &LogError) -> Self {
        match e {
            LogError::NoSuchSegment(_) => ErrorCode::NoSuchSegment,
            LogError::SegmentExists(_) => ErrorCode::SegmentExists,
            LogError::InvalidName { .. } => ErrorCode::InvalidName,
            LogError::Sealed(_) => ErrorCode::Sealed,
            LogError::BadOffset { .. } | LogError::AttributeConflict { .. } => ErrorCode::Conflict,
            LogError::BadMerge { .. } => ErrorCode::Conflict,
            LogError::TooLarge { .. } | LogError::TooManyAttributes => ErrorCode::TooLarge,
            LogError::Truncated { .. } => ErrorCode::Truncated,
            LogError::BeyondEnd { .. } => ErrorCode::BeyondEnd,
            LogError::Backpressure(_) => ErrorCode::Busy,
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::Corrupt { .. }
            | LogError::MissingFile { .. }
            | LogError::Meta { .. }
            | LogError::Io { .. }
            | LogError::Tier2(_)
            | LogError::Failed(_) => ErrorCode::Storage,
        }
    }
}

impl Response {
    /// The error reply for a storage error.
    pub fn error(e: &LogError) -> Self {
        Response::Error {
            code: e.into(),
            message: e.to_string(),
        }
    }
}
