//! Reader groups: which reader reads which segment, from where. Pure logic; the
//! controller persists it and serves it to readers.
//!
//! A group reads a **stream set**: stream names and name patterns (`sensors-*`) of its
//! scope; streams matching a pattern join the group as they appear (from their head), so
//! a fleet's gateways, each mirrored into a stream of its own, are read as one. The
//! group holds a position for each segment that is ready to be read (the offset up to
//! which its events have been delivered to the application), who holds each, and the
//! segments read to their end. Readers call [`GroupState::sync`] periodically with the
//! positions they have delivered and the segments they finished; the answer is what
//! they hold now. A successor becomes ready only when all its predecessors are
//! finished, so the events of a routing key are delivered in order across scaling (per
//! stream: streams are independent). Each reader holds at most `ceil(ready / readers)`
//! segments, over all the streams: it gives up the extra ones at its next sync, at the
//! position it reported, and a reader below its share takes free ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{validate_scoped_name, SegmentId, StreamCut, StreamError, StreamMeta};

/// A segment of one of a group's streams.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupSegment {
    /// The stream (in the group's scope).
    pub stream: String,
    /// The segment.
    pub id: SegmentId,
}

impl fmt::Display for GroupSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.stream, self.id.number, self.id.epoch)
    }
}

/// A position in each stream of a set: a stream cut per stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupCut {
    /// Per stream.
    pub streams: BTreeMap<String, StreamCut>,
}

impl fmt::Display for GroupCut {
    /// `STREAM=CUT` per stream, `;`-separated (what `trib read --from` takes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (stream, cut)) in self.streams.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{stream}={cut}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for GroupCut {
    type Err = StreamError;

    fn from_str(s: &str) -> Result<Self, StreamError> {
        let mut streams = BTreeMap::new();
        for part in s.split(';').filter(|p| !p.trim().is_empty()) {
            let (stream, cut) = part.trim().split_once('=').ok_or_else(|| {
                StreamError::InvalidCut(format!(
                    "{part:?} is not STREAM=NUMBER.EPOCH:OFFSET,... (streams separated by ;)"
                ))
            })?;
            validate_scoped_name(stream)?;
            streams.insert(stream.to_string(), cut.parse()?);
        }
        Ok(GroupCut { streams })
    }
}

/// The streams of a set, as written: names and patterns (`*` matches any run of name
/// characters), comma-separated.
pub fn parse_stream_set(spec: &str) -> Result<Vec<String>, StreamError> {
    let parts: Vec<String> = spec.split(',').map(|p| p.trim().to_string()).collect();
    for p in &parts {
        validate_scoped_name(&p.replace('*', "x")).map_err(|e| match e {
            StreamError::InvalidName { reason, .. } => StreamError::InvalidName {
                name: p.clone(),
                reason,
            },
            e => e,
        })?;
    }
    Ok(parts)
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters. Linear
/// in practice, `O(pattern × text)` at worst (a client's pattern is matched against
/// every stream of a scope): on a mismatch it goes back only to the last `*`.
pub fn name_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    // The last `*` seen, and where in `text` it matches up to now.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((s, m)) = star {
            // The `*` takes one more character.
            star = Some((s, m + 1));
            i = s + 1;
            j = m + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// The metadata of a group's streams, by name.
pub type Metas = BTreeMap<String, StreamMeta>;

/// One reader group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The streams read, as written: names and patterns, comma-separated.
    pub streams: String,
    /// The streams in the group now: those named, and those a pattern matched so far.
    pub members: BTreeSet<String>,
    /// Ready or held segments, at the position delivered so far.
    pub positions: BTreeMap<GroupSegment, u64>,
    /// Who holds which segment.
    pub owners: BTreeMap<GroupSegment, String>,
    /// Segments read to their end, with their length.
    pub finished: BTreeMap<GroupSegment, u64>,
    /// Readers in the group.
    pub readers: BTreeSet<String>,
    /// Saved positions, by name.
    pub checkpoints: BTreeMap<String, GroupCut>,
}

/// What a reader reports at a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderReport {
    /// Delivered position of each segment it holds.
    pub positions: Vec<(GroupSegment, u64)>,
    /// Segments it read to their (sealed) end, with that end.
    pub finished: Vec<(GroupSegment, u64)>,
}

impl GroupState {
    /// A group reading the set `streams`, starting at `start` (which names its streams).
    pub fn new(streams: &str, start: &GroupCut) -> Self {
        let mut g = GroupState {
            streams: streams.to_string(),
            members: BTreeSet::new(),
            positions: BTreeMap::new(),
            owners: BTreeMap::new(),
            finished: BTreeMap::new(),
            readers: BTreeSet::new(),
            checkpoints: BTreeMap::new(),
        };
        for (stream, cut) in &start.streams {
            g.add_stream(stream, cut);
        }
        g
    }

    /// Adds `stream` to the group at `start`, unless it is in it.
    pub fn add_stream(&mut self, stream: &str, start: &StreamCut) {
        if self.members.insert(stream.to_string()) {
            for (id, off) in &start.positions {
                let seg = GroupSegment {
                    stream: stream.to_string(),
                    id: *id,
                };
                self.positions.insert(seg, *off);
            }
        }
    }

    /// Takes `stream` (deleted) out of the group.
    pub fn remove_stream(&mut self, stream: &str) {
        self.members.remove(stream);
        self.positions.retain(|s, _| s.stream != stream);
        self.owners.retain(|s, _| s.stream != stream);
        self.finished.retain(|s, _| s.stream != stream);
    }

    fn record(&mut self, reader: &str, report: &ReaderReport, metas: &Metas) {
        let holds =
            |s: &GroupState, seg: &GroupSegment| s.owners.get(seg).is_some_and(|o| o == reader);
        for (seg, offset) in &report.positions {
            if holds(self, seg) {
                if let Some(p) = self.positions.get_mut(seg) {
                    *p = (*p).max(*offset);
                }
            }
        }
        for (seg, end) in &report.finished {
            if !holds(self, seg) {
                continue;
            }
            self.positions.remove(seg);
            self.owners.remove(seg);
            self.finished.insert(seg.clone(), *end);
            let Some(meta) = metas.get(&seg.stream) else {
                continue;
            };
            let Ok(rec) = meta.segment(seg.id) else {
                continue;
            };
            for succ in &rec.successors {
                let succ = GroupSegment {
                    stream: seg.stream.clone(),
                    id: *succ,
                };
                if self.positions.contains_key(&succ) || self.finished.contains_key(&succ) {
                    continue;
                }
                let ready = meta.segment(succ.id).is_ok_and(|s| {
                    s.predecessors.iter().all(|p| {
                        self.finished.contains_key(&GroupSegment {
                            stream: seg.stream.clone(),
                            id: *p,
                        })
                    })
                });
                if ready {
                    self.positions.insert(succ, 0);
                }
            }
        }
    }

    /// A reader's sync: records its report, rebalances, and returns the segments it
    /// holds now with the positions to read them from.
    pub fn sync(
        &mut self,
        reader: &str,
        report: &ReaderReport,
        metas: &Metas,
    ) -> Vec<(GroupSegment, u64)> {
        self.readers.insert(reader.to_string());
        self.record(reader, report, metas);
        let share = self.positions.len().div_ceil(self.readers.len());
        let mut held: Vec<GroupSegment> = self
            .owners
            .iter()
            .filter(|(_, o)| *o == reader)
            .map(|(seg, _)| seg.clone())
            .collect();
        while held.len() > share {
            if let Some(seg) = held.pop() {
                self.owners.remove(&seg);
            }
        }
        let free: Vec<GroupSegment> = self
            .positions
            .keys()
            .filter(|seg| !self.owners.contains_key(*seg))
            .cloned()
            .collect();
        for seg in free.into_iter().take(share - held.len()) {
            self.owners.insert(seg.clone(), reader.to_string());
            held.push(seg);
        }
        held.sort();
        held.into_iter()
            .map(|seg| {
                let at = self.positions.get(&seg).copied().unwrap_or(0);
                (seg, at)
            })
            .collect()
    }

    /// A reader leaves (or is declared dead): its segments become free at the
    /// positions it reported.
    pub fn leave(&mut self, reader: &str, report: &ReaderReport, metas: &Metas) {
        self.record(reader, report, metas);
        self.owners.retain(|_, o| o != reader);
        self.readers.remove(reader);
    }

    /// The group's position, a stream cut per stream: every ready or held segment at
    /// its delivered position, and every finished segment whose successors are not
    /// all ready yet at its end. Restarting from it re-delivers nothing that was
    /// delivered before the readers' last sync.
    pub fn cut(&self, metas: &Metas) -> GroupCut {
        let mut out = GroupCut::default();
        for stream in &self.members {
            out.streams.insert(stream.clone(), StreamCut::default());
        }
        for (seg, off) in &self.positions {
            if let Some(c) = out.streams.get_mut(&seg.stream) {
                c.positions.insert(seg.id, *off);
            }
        }
        for (seg, end) in &self.finished {
            let successors = metas
                .get(&seg.stream)
                .and_then(|m| m.segment(seg.id).ok())
                .map(|r| r.successors.clone())
                .unwrap_or_default();
            let pending = successors.is_empty()
                || successors.iter().any(|s| {
                    let s = GroupSegment {
                        stream: seg.stream.clone(),
                        id: *s,
                    };
                    !self.positions.contains_key(&s) && !self.finished.contains_key(&s)
                });
            if pending {
                if let Some(c) = out.streams.get_mut(&seg.stream) {
                    c.positions.insert(seg.id, *end);
                }
            }
        }
        out
    }

    /// Saves the group's current position under `name`.
    pub fn checkpoint(&mut self, name: &str, metas: &Metas) -> GroupCut {
        let cut = self.cut(metas);
        self.checkpoints.insert(name.to_string(), cut.clone());
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{KeyRange, ScalingPolicy, StreamConfig};

    fn fixed(n: u32) -> StreamMeta {
        StreamMeta::new(StreamConfig {
            scaling: ScalingPolicy::Fixed { segments: n },
            ..StreamConfig::default()
        })
        .expect("meta")
    }

    fn seg(stream: &str, id: SegmentId) -> GroupSegment {
        GroupSegment {
            stream: stream.into(),
            id,
        }
    }

    fn report(positions: &[(GroupSegment, u64)], finished: &[(GroupSegment, u64)]) -> ReaderReport {
        ReaderReport {
            positions: positions.to_vec(),
            finished: finished.to_vec(),
        }
    }

    fn one(stream: &str, meta: &StreamMeta) -> (GroupCut, Metas) {
        let cut = GroupCut {
            streams: BTreeMap::from([(stream.to_string(), meta.head_cut())]),
        };
        (cut, Metas::from([(stream.to_string(), meta.clone())]))
    }

    #[test]
    fn readers_share_segments_and_rebalance_on_join_and_leave() {
        let (start, metas) = one("s", &fixed(4));
        let mut g = GroupState::new("s", &start);
        let a = g.sync("a", &ReaderReport::default(), &metas);
        assert_eq!(a.len(), 4);
        // b joins: a must give up two at its next sync, at the positions it reports.
        assert!(g.sync("b", &ReaderReport::default(), &metas).is_empty());
        let reported: Vec<_> = a.iter().map(|(s, _)| (s.clone(), 10)).collect();
        let a = g.sync("a", &report(&reported, &[]), &metas);
        assert_eq!(a.len(), 2);
        let b = g.sync("b", &ReaderReport::default(), &metas);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|(_, off)| *off == 10), "{b:?}");
        // a leaves: b takes everything.
        g.leave("a", &report(&[(a[0].0.clone(), 20)], &[]), &metas);
        let b = g.sync("b", &ReaderReport::default(), &metas);
        assert_eq!(b.len(), 4);
        assert!(b.contains(&(a[0].0.clone(), 20)));
    }

    #[test]
    fn a_merge_successor_waits_for_both_predecessors() {
        let mut meta = fixed(2);
        let old: Vec<SegmentId> = meta.active().iter().map(|s| s.id).collect();
        let new = meta.scale(&old, &[KeyRange::ALL]).expect("merge");
        let (start, metas) = one("s", &meta);
        let mut g = GroupState::new("s", &start);
        g.sync("a", &ReaderReport::default(), &metas);
        let held = g.sync("a", &report(&[], &[(seg("s", old[0]), 5)]), &metas);
        assert_eq!(held, vec![(seg("s", old[1]), 0)], "successor not ready yet");
        let cut = g.cut(&metas);
        assert_eq!(cut.streams["s"].positions.get(&old[0]), Some(&5));
        meta.validate_cut(&cut.streams["s"])
            .expect("the group's cut is a valid cut");
        let held = g.sync("a", &report(&[], &[(seg("s", old[1]), 7)]), &metas);
        assert_eq!(held, vec![(seg("s", new[0]), 0)]);
        assert_eq!(g.cut(&metas).streams["s"].positions.len(), 1);
        // A reader that does not hold a segment cannot finish it.
        let mut g2 = GroupState::new("s", &start);
        g2.sync("x", &ReaderReport::default(), &metas);
        g2.sync("y", &report(&[], &[(seg("s", old[0]), 5)]), &metas);
        assert!(g2.finished.is_empty());
    }

    #[test]
    fn a_stream_set_shares_every_streams_segments_and_takes_new_streams() {
        // Three gateways' streams of one segment each: three readers get one each
        // (per-stream sharing would give the first reader all three).
        let metas: Metas = ["sensors-a", "sensors-b", "sensors-c"]
            .iter()
            .map(|s| (s.to_string(), fixed(1)))
            .collect();
        let start = GroupCut {
            streams: metas
                .iter()
                .map(|(s, m)| (s.clone(), m.head_cut()))
                .collect(),
        };
        let mut g = GroupState::new("sensors-*", &start);
        g.sync("r1", &ReaderReport::default(), &metas);
        g.sync("r2", &ReaderReport::default(), &metas);
        g.sync("r3", &ReaderReport::default(), &metas);
        let r1 = g.sync("r1", &ReaderReport::default(), &metas);
        let r2 = g.sync("r2", &ReaderReport::default(), &metas);
        let r3 = g.sync("r3", &ReaderReport::default(), &metas);
        assert_eq!(
            (r1.len(), r2.len(), r3.len()),
            (1, 1, 1),
            "{r1:?} {r2:?} {r3:?}"
        );
        // A fourth gateway appears; a deleted one leaves the group.
        let mut metas = metas;
        metas.insert("sensors-d".into(), fixed(1));
        g.add_stream("sensors-d", &metas["sensors-d"].head_cut());
        g.remove_stream("sensors-a");
        metas.remove("sensors-a");
        let cut = g.cut(&metas);
        assert_eq!(
            cut.streams.keys().collect::<Vec<_>>(),
            ["sensors-b", "sensors-c", "sensors-d"]
        );
        // The cut prints and parses back.
        let text = cut.to_string();
        assert_eq!(text, "sensors-b=0.0:0;sensors-c=0.0:0;sensors-d=0.0:0");
        assert_eq!(text.parse::<GroupCut>().expect("parse"), cut);
        assert!("sensors-b:0.0:0".parse::<GroupCut>().is_err());
    }

    #[test]
    fn stream_sets_are_names_and_patterns() {
        assert_eq!(
            parse_stream_set("a, sensors-*").expect("set"),
            ["a", "sensors-*"]
        );
        assert!(parse_stream_set("a/b").is_err());
        assert!(parse_stream_set("a,,b").is_err());
        assert!(name_matches("sensors-*", "sensors-gw-1"));
        assert!(!name_matches("sensors-*", "video-gw-1"));
        assert!(name_matches("*-gw-*", "sensors-gw-1") && name_matches("*", ""));
        assert!(name_matches("a*b*c", "a-b-b-c") && !name_matches("a*b", "a-c"));
        assert!(name_matches("**x", "abx") && !name_matches("x*", "ax"));
        // A client's pattern cannot make matching exponential.
        let hostile = format!("{}b", "*a".repeat(60));
        let started = std::time::Instant::now();
        assert!(!name_matches(&hostile, &"a".repeat(128)));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }
}
