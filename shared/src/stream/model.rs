//! Streams, segments, key ranges, epochs, stream cuts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Size of the routing-key space: points are `0..KEY_SPACE`.
pub const KEY_SPACE: u64 = 1 << 32;

/// What the stream model refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A scope or stream name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// The rule.
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid stream configuration: {0}")]
    InvalidConfig(String),
    /// A scale that does not fit the stream's current segments.
    #[error("invalid scale: {0}")]
    InvalidScale(String),
    /// The stream is sealed.
    #[error("the stream is sealed")]
    Sealed,
    /// A stream cut that does not fit the stream.
    #[error("invalid stream cut: {0}")]
    InvalidCut(String),
    /// No such segment in this stream.
    #[error("segment {}.{} is not part of this stream", .0.number, .0.epoch)]
    NoSuchSegment(SegmentId),
}

/// Checks a scope or stream name: 1 to 128 characters of `A-Z a-z 0-9 _ -`.
pub fn validate_scoped_name(name: &str) -> Result<(), StreamError> {
    let bad = |reason| {
        Err(StreamError::InvalidName {
            name: name.chars().take(200).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("only A-Z a-z 0-9 _ - are allowed");
    }
    Ok(())
}

/// The point of the key space a routing key maps to.
pub fn key_point(routing_key: &[u8]) -> u64 {
    u64::from(crc32c::crc32c(routing_key))
}

/// A half-open range `[low, high)` of the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// First point.
    pub low: u64,
    /// One past the last point.
    pub high: u64,
}

impl KeyRange {
    /// The whole key space.
    pub const ALL: KeyRange = KeyRange {
        low: 0,
        high: KEY_SPACE,
    };

    /// Whether `point` is in the range.
    pub fn contains(&self, point: u64) -> bool {
        self.low <= point && point < self.high
    }

    /// Splits the range into `n` nearly equal ranges.
    pub fn split(&self, n: u64) -> Vec<KeyRange> {
        let n = n.max(1);
        let width = self.high - self.low;
        (0..n)
            .map(|i| KeyRange {
                low: self.low + width * i / n,
                high: self.low + width * (i + 1) / n,
            })
            .collect()
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frac = |v: u64| v as f64 / KEY_SPACE as f64;
        write!(f, "[{:.4}, {:.4})", frac(self.low), frac(self.high))
    }
}

/// A segment of a stream: its number (unique in the stream) and the epoch it was
/// created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentId {
    /// Number, unique within the stream.
    pub number: u32,
    /// Epoch of creation.
    pub epoch: u32,
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.#epoch.{}", self.number, self.epoch)
    }
}

/// Name of a stream segment in the segment store.
pub fn segment_name(scope: &str, stream: &str, id: SegmentId) -> String {
    format!("{scope}/{stream}/{id}")
}

/// The scope and stream of a stream segment's name (the inverse of [`segment_name`]);
/// `None` for any other segment.
pub fn segment_stream(name: &str) -> Option<(&str, &str)> {
    let (scope, rest) = name.split_once('/')?;
    let (stream, _id) = rest.split_once('/')?;
    Some((scope, stream))
}

/// Where the temporary segments of large events live in the segment store. No stream
/// segment starts with it (scope names cannot hold `#`); every segment that does is a
/// large event being written, which only its writer merges. The controller deletes
/// all of them when it opens (a crash left them), and the segment service those a
/// connection created when it ends.
pub const LARGE_EVENT_PREFIX: &str = "#large/";

/// A new, unique name for the temporary segment of a large event.
pub fn large_event_segment_name() -> String {
    format!("{LARGE_EVENT_PREFIX}{:032x}", random_id())
}

/// Whether `name` is the temporary segment of a large event.
pub fn is_large_event_segment(name: &str) -> bool {
    name.starts_with(LARGE_EVENT_PREFIX)
}

/// A random 128-bit id (writer ids, temporary segment names): the process-wide
/// randomly keyed hasher over the clock and the process id.
pub(crate) fn random_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut id: u128 = 0;
    for i in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        id |= u128::from(h.finish()) << (64 * i);
    }
    id
}

/// How a stream scales.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScalingPolicy {
    /// A fixed number of segments.
    Fixed {
        /// Number of segments.
        segments: u32,
    },
    /// Split a segment above `target_events_per_s` (sustained), merge neighbours
    /// well below it.
    EventRate {
        /// Target events per second per segment.
        target_events_per_s: u64,
        /// Into how many segments a hot segment splits.
        scale_factor: u32,
        /// Never fewer segments than this.
        min_segments: u32,
    },
    /// The same by bytes per second.
    ByteRate {
        /// Target KiB per second per segment.
        target_kib_per_s: u64,
        /// Into how many segments a hot segment splits.
        scale_factor: u32,
        /// Never fewer segments than this.
        min_segments: u32,
    },
}

impl ScalingPolicy {
    /// Segments a new stream starts with.
    pub fn initial_segments(&self) -> u32 {
        match *self {
            ScalingPolicy::Fixed { segments } => segments,
            ScalingPolicy::EventRate { min_segments, .. }
            | ScalingPolicy::ByteRate { min_segments, .. } => min_segments,
        }
    }

    fn validate(&self) -> Result<(), StreamError> {
        let bad = |m: &str| Err(StreamError::InvalidConfig(m.to_string()));
        let n = self.initial_segments();
        if n == 0 || n > 1024 {
            return bad("the number of segments must be between 1 and 1024");
        }
        match *self {
            ScalingPolicy::Fixed { .. } => Ok(()),
            ScalingPolicy::EventRate {
                target_events_per_s: t,
                scale_factor,
                ..
            }
            | ScalingPolicy::ByteRate {
                target_kib_per_s: t,
                scale_factor,
                ..
            } => {
                if t == 0 {
                    return bad("the target rate must be positive");
                }
                if !(2..=16).contains(&scale_factor) {
                    return bad("scale_factor must be between 2 and 16");
                }
                Ok(())
            }
        }
    }
}

/// How long data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RetentionPolicy {
    /// Keep everything.
    Forever,
    /// Keep at least this many seconds of data.
    Time {
        /// Seconds.
        seconds: u64,
    },
    /// Keep at least this many bytes.
    Size {
        /// Bytes.
        bytes: u64,
    },
}

/// A stream's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Scaling.
    pub scaling: ScalingPolicy,
    /// Retention.
    pub retention: RetentionPolicy,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            scaling: ScalingPolicy::Fixed { segments: 1 },
            retention: RetentionPolicy::Forever,
        }
    }
}

/// One segment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Id.
    pub id: SegmentId,
    /// Key range.
    pub range: KeyRange,
    /// Epoch in which it was sealed by a scale, if it was.
    pub sealed_epoch: Option<u32>,
    /// Segments it replaced.
    pub predecessors: Vec<SegmentId>,
    /// Segments that replaced it.
    pub successors: Vec<SegmentId>,
}

/// A position in a stream: an offset in each of a set of segments that together cover
/// the key space once, without a segment that is another's predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamCut {
    /// Offset per segment.
    pub positions: BTreeMap<SegmentId, u64>,
}

impl fmt::Display for StreamCut {
    /// `NUMBER.EPOCH:OFFSET` per segment, comma-separated (what `trib read --from`
    /// takes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (id, off)) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}.{}:{off}", id.number, id.epoch)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for StreamCut {
    type Err = StreamError;

    fn from_str(s: &str) -> Result<Self, StreamError> {
        let bad = || {
            StreamError::InvalidCut(format!(
                "{s:?} is not a stream cut (expected NUMBER.EPOCH:OFFSET,...)"
            ))
        };
        let mut positions = BTreeMap::new();
        for part in s.split(',') {
            let (id, off) = part.trim().split_once(':').ok_or_else(bad)?;
            let (number, epoch) = id.split_once('.').ok_or_else(bad)?;
            let id = SegmentId {
                number: number.parse().map_err(|_| bad())?,
                epoch: epoch.parse().map_err(|_| bad())?,
            };
            positions.insert(id, off.parse().map_err(|_| bad())?);
        }
        Ok(StreamCut { positions })
    }
}

/// A stream's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Configuration.
    pub config: StreamConfig,
    /// Current epoch.
    pub epoch: u32,
    /// Every segment the stream ever had, by number.
    pub segments: BTreeMap<u32, SegmentRecord>,
    /// Sealed streams take no more events.
    pub sealed: bool,
    /// Where the stream starts after truncation (empty: at the beginning).
    pub head: StreamCut,
    /// The stream mirrors a stream of an edge node: only that edge's replication
    /// changes it (it scales as its source did, never by itself or a client).
    #[serde(default)]
    pub mirror: bool,
    /// Who feeds a mirror stream: set by the first edge stream that mirrors into it,
    /// after which only that edge stream may (`None`: not a mirror, or a mirror made
    /// before sources were recorded, which the next edge to mirror into it claims).
    #[serde(default)]
    pub source: Option<Box<MirrorSource>>,
    /// This stream's id, random, made when it was created (0: created before ids
    /// were; [`crate::controller::Controller::stream_uid`] gives it one). An edge
    /// stream's id names it to the mirror it feeds, so a re-created data dir (a new
    /// stream of the same name) is never taken for the stream the mirror copied.
    #[serde(default)]
    pub uid: u128,
    next_number: u32,
}

/// An edge stream as its edge names it to the cloud: `scope/stream` on the edge and
/// the stream's id ([`StreamMeta::uid`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStream {
    /// `scope/stream` on the edge.
    pub stream: String,
    /// The edge stream's id.
    pub uid: u128,
}

/// The one edge stream a mirror copies: the edge's identity (its certificate's
/// common name) and the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSource {
    /// The edge's identity.
    pub identity: String,
    /// The edge stream.
    pub stream: SourceStream,
}

impl std::fmt::Display for MirrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}'s {} (stream id {:032x})",
            self.identity, self.stream.stream, self.stream.uid
        )
    }
}

/// One scale of a stream's history: in `epoch`, `sealed` were sealed and `created`
/// made over their ranges (in the order [`StreamMeta::scale`] numbers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRecord {
    /// The epoch the scale began.
    pub epoch: u32,
    /// Segments sealed by it.
    pub sealed: Vec<SegmentId>,
    /// Segments created by it, with their ranges.
    pub created: Vec<(SegmentId, KeyRange)>,
}

impl StreamMeta {
    /// A new stream with the policy's initial segments, evenly over the key space.
    pub fn new(config: StreamConfig) -> Result<Self, StreamError> {
        config.scaling.validate()?;
        let mut segments = BTreeMap::new();
        let ranges = KeyRange::ALL.split(u64::from(config.scaling.initial_segments()));
        for (i, range) in ranges.into_iter().enumerate() {
            let id = SegmentId {
                number: i as u32,
                epoch: 0,
            };
            segments.insert(
                id.number,
                SegmentRecord {
                    id,
                    range,
                    sealed_epoch: None,
                    predecessors: Vec::new(),
                    successors: Vec::new(),
                },
            );
        }
        let next_number = segments.len() as u32;
        Ok(StreamMeta {
            config,
            epoch: 0,
            segments,
            sealed: false,
            head: StreamCut::default(),
            mirror: false,
            source: None,
            uid: random_id(),
            next_number,
        })
    }

    /// Every scale since the stream was created, oldest first. Replaying them with
    /// [`StreamMeta::scale`] on a new stream of the same configuration gives the same
    /// segments, numbers and all (how a mirror follows its source).
    pub fn scale_history(&self) -> Vec<ScaleRecord> {
        (1..=self.epoch)
            .map(|epoch| {
                let mut created: Vec<(SegmentId, KeyRange)> = self
                    .segments
                    .values()
                    .filter(|s| s.id.epoch == epoch)
                    .map(|s| (s.id, s.range))
                    .collect();
                created.sort();
                ScaleRecord {
                    epoch,
                    sealed: self
                        .segments
                        .values()
                        .filter(|s| s.sealed_epoch == Some(epoch))
                        .map(|s| s.id)
                        .collect(),
                    created,
                }
            })
            .collect()
    }

    /// The active segments, by key range.
    pub fn active(&self) -> Vec<&SegmentRecord> {
        let mut v: Vec<&SegmentRecord> = self
            .segments
            .values()
            .filter(|s| s.sealed_epoch.is_none())
            .collect();
        v.sort_by_key(|s| s.range);
        v
    }

    /// A segment's record.
    pub fn segment(&self, id: SegmentId) -> Result<&SegmentRecord, StreamError> {
        self.segments
            .get(&id.number)
            .filter(|s| s.id == id)
            .ok_or(StreamError::NoSuchSegment(id))
    }

    /// The active segment owning a routing key.
    pub fn segment_for_key(&self, routing_key: &[u8]) -> SegmentId {
        let p = key_point(routing_key);
        self.active()
            .into_iter()
            .find(|s| s.range.contains(p))
            .map(|s| s.id)
            // The active ranges always cover the key space (checked by every scale).
            .unwrap_or(SegmentId {
                number: 0,
                epoch: 0,
            })
    }

    /// Seals the `seal` segments (active, covering one contiguous range) and creates
    /// successors over `new_ranges` (which must cover exactly that range). Returns the
    /// new segments; each new segment's predecessors are the sealed segments it
    /// overlaps.
    pub fn scale(
        &mut self,
        seal: &[SegmentId],
        new_ranges: &[KeyRange],
    ) -> Result<Vec<SegmentId>, StreamError> {
        if self.sealed {
            return Err(StreamError::Sealed);
        }
        let bad = |m: String| Err(StreamError::InvalidScale(m));
        if seal.is_empty() || new_ranges.is_empty() {
            return bad("a scale seals at least one segment and creates at least one".into());
        }
        let mut old: Vec<SegmentRecord> = Vec::new();
        for id in seal {
            let s = self.segment(*id)?;
            if s.sealed_epoch.is_some() {
                return bad(format!("segment {id} is already sealed"));
            }
            if old.iter().any(|o| o.id == *id) {
                return bad(format!("segment {id} is listed twice"));
            }
            old.push(s.clone());
        }
        old.sort_by_key(|s| s.range);
        if old.windows(2).any(|w| w[0].range.high != w[1].range.low) {
            return bad("the sealed segments must be neighbours".into());
        }
        let mut new: Vec<KeyRange> = new_ranges.to_vec();
        new.sort();
        let (low, high) = (old[0].range.low, old[old.len() - 1].range.high);
        if new[0].low != low
            || new[new.len() - 1].high != high
            || new.windows(2).any(|w| w[0].high != w[1].low)
            || new.iter().any(|r| r.low >= r.high)
        {
            return bad(format!(
                "the new ranges must exactly cover {}",
                KeyRange { low, high }
            ));
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let mut created = Vec::new();
        for range in new {
            let id = SegmentId {
                number: self.next_number,
                epoch,
            };
            self.next_number += 1;
            let preds: Vec<SegmentId> = old
                .iter()
                .filter(|o| o.range.low < range.high && range.low < o.range.high)
                .map(|o| o.id)
                .collect();
            for p in &preds {
                if let Some(rec) = self.segments.get_mut(&p.number) {
                    rec.successors.push(id);
                }
            }
            self.segments.insert(
                id.number,
                SegmentRecord {
                    id,
                    range,
                    sealed_epoch: None,
                    predecessors: preds,
                    successors: Vec::new(),
                },
            );
            created.push(id);
        }
        for o in &old {
            if let Some(rec) = self.segments.get_mut(&o.id.number) {
                rec.sealed_epoch = Some(epoch);
            }
        }
        Ok(created)
    }

    /// Seals the whole stream.
    pub fn seal(&mut self) {
        self.sealed = true;
    }

    /// The cut at the start of the stream (its head, after any truncation).
    pub fn head_cut(&self) -> StreamCut {
        if !self.head.positions.is_empty() {
            return self.head.clone();
        }
        StreamCut {
            positions: self
                .segments
                .values()
                .filter(|s| s.id.epoch == 0)
                .map(|s| (s.id, 0))
                .collect(),
        }
    }

    /// Checks that a cut covers the key space exactly once with segments of this
    /// stream.
    pub fn validate_cut(&self, cut: &StreamCut) -> Result<(), StreamError> {
        let mut ranges = Vec::new();
        for id in cut.positions.keys() {
            let s = self
                .segment(*id)
                .map_err(|_| StreamError::InvalidCut(format!("unknown segment {id}")))?;
            ranges.push(s.range);
        }
        ranges.sort();
        let covers = ranges.first().is_some_and(|r| r.low == 0)
            && ranges.last().is_some_and(|r| r.high == KEY_SPACE)
            && ranges.windows(2).all(|w| w[0].high == w[1].low);
        if !covers {
            return Err(StreamError::InvalidCut(
                "the segments must cover the key space exactly once".into(),
            ));
        }
        Ok(())
    }

    /// Moves the head to `cut` (retention or explicit truncation). Returns the
    /// segments now entirely before the head (they can be deleted) and, per segment
    /// of the cut, the offset below which it can be truncated.
    pub fn truncate(&mut self, cut: &StreamCut) -> Result<Vec<SegmentId>, StreamError> {
        self.validate_cut(cut)?;
        let before = self.before(cut);
        if cut.positions.keys().any(|id| before.contains(id)) {
            return Err(StreamError::InvalidCut(
                "a segment of the cut precedes another one of it".into(),
            ));
        }
        self.head = cut.clone();
        Ok(before)
    }

    /// The segments entirely before `cut`: every (transitive) predecessor of its
    /// segments, sorted.
    pub fn before(&self, cut: &StreamCut) -> Vec<SegmentId> {
        let mut before = Vec::new();
        let mut stack: Vec<SegmentId> = cut.positions.keys().copied().collect();
        while let Some(id) = stack.pop() {
            let Ok(rec) = self.segment(id) else { continue };
            for p in &rec.predecessors {
                if !before.contains(p) {
                    before.push(*p);
                    stack.push(*p);
                }
            }
        }
        before.sort();
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> StreamMeta {
        StreamMeta::new(StreamConfig {
            scaling: ScalingPolicy::Fixed { segments: n },
            retention: RetentionPolicy::Forever,
        })
        .expect("valid")
    }

    fn covers_once(m: &StreamMeta) -> bool {
        let a = m.active();
        a[0].range.low == 0
            && a[a.len() - 1].range.high == KEY_SPACE
            && a.windows(2).all(|w| w[0].range.high == w[1].range.low)
    }

    #[test]
    fn names_and_configs_are_validated() {
        assert!(validate_scoped_name("site-7_a").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(validate_scoped_name(bad).is_err(), "{bad}");
        }
        for bad in [
            ScalingPolicy::Fixed { segments: 0 },
            ScalingPolicy::EventRate {
                target_events_per_s: 0,
                scale_factor: 2,
                min_segments: 1,
            },
            ScalingPolicy::ByteRate {
                target_kib_per_s: 10,
                scale_factor: 1,
                min_segments: 1,
            },
        ] {
            assert!(StreamMeta::new(StreamConfig {
                scaling: bad,
                retention: RetentionPolicy::Forever
            })
            .is_err());
        }
    }

    #[test]
    fn split_and_merge_keep_the_key_space_covered_and_link_segments() {
        let mut m = stream(2);
        let s0 = m.active()[0].id;
        let halves = m.segment(s0).expect("s0").range.split(2);
        let new = m.scale(&[s0], &halves).expect("split");
        assert_eq!(new.len(), 2);
        assert!(covers_once(&m));
        assert_eq!(m.segment(s0).expect("s0").successors, new);
        assert_eq!(m.segment(new[0]).expect("n").predecessors, vec![s0]);
        // Merge the two halves back.
        let merged = m
            .scale(&new, &[m.segment(s0).expect("s0").range])
            .expect("merge");
        assert_eq!(m.segment(merged[0]).expect("m").predecessors, new);
        assert!(covers_once(&m));
        assert_eq!(m.epoch, 2);
        // Routing follows the active segments.
        let key = b"sensor-42";
        let owner = m.segment_for_key(key);
        assert!(m
            .segment(owner)
            .expect("owner")
            .range
            .contains(key_point(key)));
    }

    #[test]
    fn bad_scales_are_refused() {
        let mut m = stream(3);
        let a = m.active().iter().map(|s| s.id).collect::<Vec<_>>();
        let ranges: Vec<KeyRange> = a
            .iter()
            .map(|id| m.segment(*id).expect("s").range)
            .collect();
        let r = |i: usize| ranges[i];
        // Not neighbours.
        assert!(m
            .scale(
                &[a[0], a[2]],
                &[KeyRange {
                    low: 0,
                    high: KEY_SPACE
                }]
            )
            .is_err());
        // Ranges that do not cover the sealed range.
        assert!(m
            .scale(
                &[a[0]],
                &[KeyRange {
                    low: 0,
                    high: r(0).high - 1
                }]
            )
            .is_err());
        // Overlapping ranges.
        let half = r(0).high / 2;
        assert!(m
            .scale(
                &[a[0]],
                &[
                    KeyRange {
                        low: 0,
                        high: half + 1
                    },
                    KeyRange {
                        low: half,
                        high: r(0).high
                    }
                ]
            )
            .is_err());
        // Already sealed.
        m.scale(&[a[0]], &r(0).split(2)).expect("split");
        assert!(m.scale(&[a[0]], &[r(0)]).is_err());
        m.seal();
        assert_eq!(m.scale(&[a[1]], &[r(1)]), Err(StreamError::Sealed));
    }

    #[test]
    fn cuts_are_validated_and_truncation_drops_predecessors() {
        let mut m = stream(1);
        let s0 = m.active()[0].id;
        assert_eq!(m.head_cut().positions, BTreeMap::from([(s0, 0)]));
        let new = m.scale(&[s0], &KeyRange::ALL.split(2)).expect("split");
        // A cut with only one half does not cover the key space.
        let half = StreamCut {
            positions: BTreeMap::from([(new[0], 5)]),
        };
        assert!(m.truncate(&half).is_err());
        // A predecessor next to its successor is not a cut.
        let mixed = StreamCut {
            positions: BTreeMap::from([(s0, 0), (new[0], 0)]),
        };
        assert!(m.validate_cut(&mixed).is_err());
        let cut = StreamCut {
            positions: BTreeMap::from([(new[0], 5), (new[1], 7)]),
        };
        assert_eq!(m.truncate(&cut).expect("truncate"), vec![s0]);
        assert_eq!(m.head_cut(), cut);
    }

    #[test]
    fn replaying_the_scale_history_gives_the_same_segments() {
        let mut src = stream(2);
        let a = src
            .active()
            .iter()
            .map(|s| (s.id, s.range))
            .collect::<Vec<_>>();
        let new = src.scale(&[a[0].0], &a[0].1.split(3)).expect("split");
        let merged = src.active()[..2].iter().map(|s| s.id).collect::<Vec<_>>();
        let r = KeyRange {
            low: src.active()[0].range.low,
            high: src.active()[1].range.high,
        };
        src.scale(&merged, &[r]).expect("merge");
        assert_eq!(new.len(), 3);
        let mut mirror = stream(2);
        for s in src.scale_history() {
            let ranges: Vec<KeyRange> = s.created.iter().map(|c| c.1).collect();
            let created = mirror.scale(&s.sealed, &ranges).expect("replay");
            assert_eq!(created, s.created.iter().map(|c| c.0).collect::<Vec<_>>());
        }
        assert_eq!(mirror.segments, src.segments);
        assert_eq!(mirror.epoch, src.epoch);
    }

    #[test]
    fn a_segment_name_gives_back_its_stream() {
        let id = SegmentId {
            number: 3,
            epoch: 1,
        };
        assert_eq!(
            segment_stream(&segment_name("a", "b", id)),
            Some(("a", "b"))
        );
        assert_eq!(segment_stream(&large_event_segment_name()), None);
        assert_eq!(segment_stream("raw"), None);
    }
}
