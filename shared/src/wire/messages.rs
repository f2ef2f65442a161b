//! Messages of the protocol (CBOR through serde). Adding a variant is compatible;
//! changing or removing one needs a new protocol version.

use serde::{Deserialize, Serialize};

use crate::controller::ControllerError;
use crate::log::{AttributeUpdate, LogError};
use crate::stream::{
    GroupCut, GroupSegment, KeyRange, ReaderReport, ScaleRecord, SegmentId, SourceStream,
    StreamConfig, StreamCut, StreamError, StreamMeta,
};

/// Client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Append the sealed `source` to `target` and apply `attributes` to `target`, in
    /// one atomic step; the reply is [`Response::Merged`]. A failed condition
    /// (`Conflict`) merges nothing and leaves `source`. This is how a large event's
    /// temporary segment becomes part of a stream segment.
    MergeWithAttributes {
        /// Target segment.
        target: String,
        /// Source segment (sealed).
        source: String,
        /// Attribute updates of `target`, checked and applied in order.
        attributes: Vec<AttributeUpdate>,
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
    /// Create a scope.
    CreateScope {
        /// Scope.
        scope: String,
    },
    /// List scopes; the reply is [`Response::Names`].
    ListScopes,
    /// Delete an empty scope.
    DeleteScope {
        /// Scope.
        scope: String,
    },
    /// Create a stream; the reply is [`Response::Stream`].
    CreateStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// Scaling and retention.
        config: StreamConfig,
    },
    /// Change a stream's policies; the reply is [`Response::Stream`].
    UpdateStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// Scaling and retention.
        config: StreamConfig,
    },
    /// List a scope's streams; the reply is [`Response::Names`].
    ListStreams {
        /// Scope.
        scope: String,
    },
    /// A stream's metadata; the reply is [`Response::Stream`].
    DescribeStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
    },
    /// Seal `seal` and create successors over `ranges`; the reply is
    /// [`Response::Segments`], the new segments.
    ScaleStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// Neighbouring active segments to seal.
        seal: Vec<SegmentId>,
        /// Ranges of the successors, covering exactly the sealed ones.
        ranges: Vec<KeyRange>,
    },
    /// Seal a stream.
    SealStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
    },
    /// Drop everything before `cut`.
    TruncateStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// New head.
        cut: StreamCut,
    },
    /// Delete a sealed stream.
    DeleteStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
    },
    /// The stream's tail; the reply is [`Response::Cut`].
    StreamTail {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
    },
    /// What each of the stream's segments holds from a writer; the reply is
    /// [`Response::WriterPositions`].
    WriterPositions {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// Writer id.
        writer_id: u128,
    },
    /// Create a reader group on a stream set, unless it exists for the same set.
    CreateReaderGroup {
        /// Scope of the group and its streams.
        scope: String,
        /// Group name.
        group: String,
        /// The streams read: names and patterns (`sensors-*`, taking in streams as they
        /// appear), comma-separated.
        streams: String,
        /// Where a new group starts.
        from: StartFrom,
    },
    /// Delete a reader group.
    DeleteReaderGroup {
        /// Scope.
        scope: String,
        /// Group.
        group: String,
    },
    /// A reader's periodic sync (see [`crate::stream::GroupState`]); the reply is
    /// [`Response::Assignment`].
    SyncReader {
        /// Scope.
        scope: String,
        /// Group.
        group: String,
        /// Reader id, unique in the group.
        reader: String,
        /// What it delivered and finished.
        report: ReaderReport,
        /// It is leaving the group.
        leave: bool,
    },
    /// A reader group's state; the reply is [`Response::Group`].
    DescribeReaderGroup {
        /// Scope.
        scope: String,
        /// Group.
        group: String,
    },
    /// Save the group's position under a name; the reply is [`Response::GroupCut`].
    Checkpoint {
        /// Scope.
        scope: String,
        /// Group.
        group: String,
        /// Checkpoint name.
        name: String,
    },
    /// A saved checkpoint, or the group's current position when `name` is `None`;
    /// the reply is [`Response::GroupCut`].
    GroupPosition {
        /// Scope.
        scope: String,
        /// Group.
        group: String,
        /// Checkpoint name.
        name: Option<String>,
    },
    /// Makes `scope/stream` the mirror of an edge stream with this configuration and
    /// scale history: creates it (and the scope) if missing, then replays the scales it
    /// does not have yet. A scale seals segments only if each holds exactly its length
    /// in `lengths` (all of its source's data). The reply is [`Response::Stream`].
    /// A mirror has one source: the connection's identity and `source`; any other is
    /// refused with [`ErrorCode::Conflict`] naming the one that feeds it.
    MirrorStream {
        /// Scope.
        scope: String,
        /// Stream.
        stream: String,
        /// The edge stream copied.
        source: SourceStream,
        /// The source stream's configuration.
        config: StreamConfig,
        /// The source's scales to replay, oldest first.
        scales: Vec<ScaleRecord>,
        /// The final length of each segment those scales seal.
        lengths: Vec<(SegmentId, u64)>,
    },
    /// Starts copying bytes into a segment of a mirror stream; data frames with
    /// [`DataHeader::Mirror`] follow. The reply is [`Response::AppendSetup`] (its
    /// `length` is where to continue), then one [`Response::Mirrored`] per frame.
    SetupMirror {
        /// Segment name.
        segment: String,
    },
    /// An edge's replication lag per stream, for the cloud's metrics; the reply is
    /// [`Response::Ok`].
    ReportReplication {
        /// One entry per replicated stream.
        streams: Vec<ReplicationLag>,
    },
}

/// How far a mirror stream is behind its source on the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationLag {
    /// The mirror stream, `scope/stream`.
    pub stream: String,
    /// Bytes the edge holds that the mirror does not.
    pub bytes: u64,
    /// Age of the oldest of them, in milliseconds.
    pub millis: u64,
}

/// Where a new reader group starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFrom {
    /// The stream's head (its oldest data).
    Head,
    /// The stream's tail (only new events).
    Tail,
    /// A saved position (streams it leaves out start at their head).
    Cut(GroupCut),
}

/// A reader group, as described to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The streams it reads, as given (names and patterns).
    pub streams: String,
    /// The streams in it now (in the group's scope).
    pub members: Vec<String>,
    /// Its readers.
    pub readers: Vec<String>,
    /// Its current position.
    pub position: GroupCut,
    /// Names of its checkpoints.
    pub checkpoints: Vec<String>,
}

/// What a stream segment holds from one writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterPosition {
    /// Segment.
    pub segment: SegmentId,
    /// Its key range.
    pub range: KeyRange,
    /// Last event number of the writer stored in it.
    pub last_event_number: Option<i64>,
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A mirror frame is durable (or was already stored: a resend is acknowledged
    /// without being stored twice).
    Mirrored {
        /// Segment offset after the frame's bytes.
        end_offset: u64,
        /// Every byte of it had been stored before.
        duplicate: bool,
    },
    /// The source was merged.
    Merged {
        /// Offset in the target where the source's data starts.
        offset: u64,
    },
    /// Names (scopes or streams), sorted.
    Names(Vec<String>),
    /// A stream's metadata.
    Stream(Box<StreamMeta>),
    /// Segments.
    Segments(Vec<SegmentId>),
    /// A stream cut.
    Cut(StreamCut),
    /// A reader group's position: a stream cut per stream.
    GroupCut(GroupCut),
    /// Per segment, what it holds from a writer.
    WriterPositions(Vec<WriterPosition>),
    /// The segments a reader holds now, with the offsets to read from.
    Assignment(Vec<(GroupSegment, u64)>),
    /// A reader group's state.
    Group(GroupInfo),
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
    /// Bytes of a mirror stream's source segment, at `offset` (after `SetupMirror`).
    Mirror {
        /// Offset of the first byte in the segment.
        offset: u64,
    },
    /// The source gave up its bytes from `offset` before the mirror had them (after
    /// `SetupMirror`; `offset` is where the mirror ends). The payload is the CBOR of a
    /// [`crate::event::Gap`]; the mirror stores it as a gap record and continues at
    /// the gap's end, which the reply ([`Response::Mirrored`]) says.
    MirrorGap {
        /// Offset of the first byte lost, in the source segment.
        offset: u64,
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
    /// No such scope.
    NoSuchScope = 20,
    /// The scope exists already.
    ScopeExists = 21,
    /// The scope still holds streams.
    ScopeNotEmpty = 22,
    /// No such stream.
    NoSuchStream = 23,
    /// The stream exists already.
    StreamExists = 24,
    /// The stream must be sealed first.
    NotSealed = 25,
    /// An argument is invalid (configuration, cut, scale).
    InvalidArgument = 26,
    /// No such reader group or checkpoint.
    NoSuchGroup = 27,
    /// The group reads another stream.
    GroupExists = 28,
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
            LogError::Backpressure(_)
            | LogError::Tier2Backlog { .. }
            | LogError::DiskFull { .. } => ErrorCode::Busy,
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::Corrupt { .. }
            | LogError::Unreadable { .. }
            | LogError::MissingFile { .. }
            | LogError::Meta { .. }
            | LogError::Io { .. }
            | LogError::Tier2(_)
            | LogError::Failed(_) => ErrorCode::Storage,
        }
    }
}

impl From<&ControllerError> for ErrorCode {
    fn from(e: &ControllerError) -> Self {
        match e {
            ControllerError::Log(e) => e.into(),
            ControllerError::Stream(StreamError::Sealed) => ErrorCode::Sealed,
            ControllerError::Stream(StreamError::InvalidName { .. }) => ErrorCode::InvalidName,
            ControllerError::Stream(_) => ErrorCode::InvalidArgument,
            ControllerError::Meta(_) => ErrorCode::Storage,
            ControllerError::NoSuchScope(_) => ErrorCode::NoSuchScope,
            ControllerError::ScopeExists(_) => ErrorCode::ScopeExists,
            ControllerError::ScopeNotEmpty(_) => ErrorCode::ScopeNotEmpty,
            ControllerError::NoSuchStream(_) => ErrorCode::NoSuchStream,
            ControllerError::StreamExists(_) => ErrorCode::StreamExists,
            ControllerError::NotSealed(_) => ErrorCode::NotSealed,
            ControllerError::NoSuchGroup(_) => ErrorCode::NoSuchGroup,
            ControllerError::GroupExists(_) => ErrorCode::GroupExists,
            ControllerError::Mirror(_) | ControllerError::MirrorOwned { .. } => ErrorCode::Conflict,
            ControllerError::InvalidEvent(_) | ControllerError::Input(_) => {
                ErrorCode::InvalidArgument
            }
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

    /// The error reply for a controller error.
    pub fn controller_error(e: &ControllerError) -> Self {
        Response::Error {
            code: e.into(),
            message: e.to_string(),
        }
    }
}
