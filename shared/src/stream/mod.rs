//! The stream model, as in Pravega: a scope holds streams; a stream is a set of
//! segments that covers the routing-key space; scaling seals segments and creates
//! successors over the same key ranges, in a new epoch. Pure logic, no I/O: the
//! controller persists it and drives the segment store.
//!
//! The key space is `[0, 2^32)`: a routing key hashes (CRC32C) to a point in it, and each
//! active segment owns a contiguous range. Ranges are printed as fractions of the space.

mod group;
mod model;
mod scaling;

pub use group::{
    name_matches, parse_stream_set, GroupCut, GroupSegment, GroupState, Metas, ReaderReport,
};

pub(crate) use model::random_id;
pub use model::{
    is_large_event_segment, key_point, large_event_segment_name, segment_name, segment_stream,
    validate_scoped_name, KeyRange, MirrorSource, RetentionPolicy, ScaleRecord, ScalingPolicy,
    SegmentId, SegmentRecord, SourceStream, StreamConfig, StreamCut, StreamError, StreamMeta,
    KEY_SPACE, LARGE_EVENT_PREFIX,
};
pub use scaling::{scale_decision, LoadSample, ScaleDecision};
