//! Reader groups: which reader reads which segment, from where. Pure logic; the
//! controller persists it and serves it to readers.
//!
//! A group holds a position for each segment that is ready to be read (the offset up
//! to which its events have been delivered to the application), who holds each, and
//! the segments read to their end. Readers call [`GroupState::sync`] periodically with
//! the positions they have delivered and the segments they finished; the answer is
//! what they hold now. A successor becomes ready only when all its predecessors are
//! finished, so the events of a routing key are delivered in order across scaling.
//! Each reader holds at most `ceil(ready / readers)` segments: it gives up the extra
//! ones at its next sync, at the position it reported, and a reader below its share
//! takes free ones.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{SegmentId, StreamCut, StreamMeta};

/// One reader group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The stream read.
    pub stream: String,
    /// Ready or held segments, at the position delivered so far.
    pub positions: BTreeMap<SegmentId, u64>,
    /// Who holds which segment.
    pub owners: BTreeMap<SegmentId, String>,
    /// Segments read to their end, with their length.
    pub finished: BTreeMap<SegmentId, u64>,
    /// Readers in the group.
    pub readers: BTreeSet<String>,
    /// Saved positions, by name.
    pub checkpoints: BTreeMap<String, StreamCut>,
}

/// What a reader reports at a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderReport {
    /// Delivered position of each segment it holds.
    pub positions: Vec<(SegmentId, u64)>,
    /// Segments it read to their (sealed) end, with that end.
    pub finished: Vec<(SegmentId, u64)>,
}

impl GroupState {
    /// A group reading `stream` from `start`.
    pub fn new(stream: &str, start: &StreamCut) -> Self {
        GroupState {
            stream: stream.to_string(),
            positions: start.positions.clone(),
            owners: BTreeMap::new(),
            finished: BTreeMap::new(),
            readers: BTreeSet::new(),
            checkpoints: BTreeMap::new(),
        }
    }

    fn record(&mut self, reader: &str, report: &ReaderReport, meta: &StreamMeta) {
        let holds = |s: &GroupState, id: &SegmentId| s.owners.get(id).is_some_and(|o| o == reader);
        for (id, offset) in &report.positions {
            if holds(self, id) {
                if let Some(p) = self.positions.get_mut(id) {
                    *p = (*p).max(*offset);
                }
            }
        }
        for (id, end) in &report.finished {
            if !holds(self, id) {
                continue;
            }
            self.positions.remove(id);
            self.owners.remove(id);
            self.finished.insert(*id, *end);
            let Ok(rec) = meta.segment(*id) else { continue };
            for succ in &rec.successors {
                if self.positions.contains_key(succ) || self.finished.contains_key(succ) {
                    continue;
                }
                let ready = meta
                    .segment(*succ)
                    .is_ok_and(|s| s.predecessors.iter().all(|p| self.finished.contains_key(p)));
                if ready {
                    self.positions.insert(*succ, 0);
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
        meta: &StreamMeta,
    ) -> Vec<(SegmentId, u64)> {
        self.readers.insert(reader.to_string());
        self.record(reader, report, meta);
        let share = self.positions.len().div_ceil(self.readers.len());
        let mut held: Vec<SegmentId> = self
            .owners
            .iter()
            .filter(|(_, o)| *o == reader)
            .map(|(id, _)| *id)
            .collect();
        while held.len() > share {
            if let Some(id) = held.pop() {
                self.owners.remove(&id);
            }
        }
        let free: Vec<SegmentId> = self
            .positions
            .keys()
            .filter(|id| !self.owners.contains_key(id))
            .copied()
            .collect();
        for id in free.into_iter().take(share - held.len()) {
            self.owners.insert(id, reader.to_string());
            held.push(id);
        }
        held.sort();
        held.iter()
            .map(|id| (*id, self.positions.get(id).copied().unwrap_or(0)))
            .collect()
    }

    /// A reader leaves (or is declared dead): its segments become free at the
    /// positions it reported.
    pub fn leave(&mut self, reader: &str, report: &ReaderReport, meta: &StreamMeta) {
        self.record(reader, report, meta);
        self.owners.retain(|_, o| o != reader);
        self.readers.remove(reader);
    }

    /// The group's position as a stream cut: every ready or held segment at its
    /// delivered position, and every finished segment whose successors are not all
    /// ready yet at its end. Restarting from it re-delivers nothing that was delivered
    /// before the readers' last sync.
    pub fn cut(&self, meta: &StreamMeta) -> StreamCut {
        let mut positions = self.positions.clone();
        for (id, end) in &self.finished {
            let successors = meta
                .segment(*id)
                .map(|r| r.successors.clone())
                .unwrap_or_default();
            let pending = successors.is_empty()
                || successors
                    .iter()
                    .any(|s| !self.positions.contains_key(s) && !self.finished.contains_key(s));
            if pending {
                positions.insert(*id, *end);
            }
        }
        StreamCut { positions }
    }

    /// Saves the group's current position under `name`.
    pub fn checkpoint(&mut self, name: &str, meta: &StreamMeta) -> StreamCut {
        let cut = self.cut(meta);
        self.checkpoints.insert(name.to_string(), cut.clone());
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{KeyRange, StreamConfig};

    fn report(positions: &[(SegmentId, u64)], finished: &[(SegmentId, u64)]) -> ReaderReport {
        ReaderReport {
            positions: positions.to_vec(),
            finished: finished.to_vec(),
        }
    }

    #[test]
    fn readers_share_segments_and_rebalance_on_join_and_leave() {
        let meta = StreamMeta::new(StreamConfig {
            scaling: crate::stream::ScalingPolicy::Fixed { segments: 4 },
            ..StreamConfig::default()
        })
        .expect("meta");
        let mut g = GroupState::new("s", &meta.head_cut());
        let a = g.sync("a", &ReaderReport::default(), &meta);
        assert_eq!(a.len(), 4);
        // b joins: a must give up two at its next sync, at the positions it reports.
        assert!(g.sync("b", &ReaderReport::default(), &meta).is_empty());
        let reported: Vec<_> = a.iter().map(|(id, _)| (*id, 10)).collect();
        let a = g.sync("a", &report(&reported, &[]), &meta);
        assert_eq!(a.len(), 2);
        let b = g.sync("b", &ReaderReport::default(), &meta);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|(_, off)| *off == 10), "{b:?}");
        // a leaves: b takes everything.
        g.leave("a", &report(&[(a[0].0, 20)], &[]), &meta);
        let b = g.sync("b", &ReaderReport::default(), &meta);
        assert_eq!(b.len(), 4);
        assert!(b.contains(&(a[0].0, 20)));
    }

    #[test]
    fn a_merge_successor_waits_for_both_predecessors() {
        let mut meta = StreamMeta::new(StreamConfig {
            scaling: crate::stream::ScalingPolicy::Fixed { segments: 2 },
            ..StreamConfig::default()
        })
        .expect("meta");
        let old: Vec<SegmentId> = meta.active().iter().map(|s| s.id).collect();
        let new = meta.scale(&old, &[KeyRange::ALL]).expect("merge");
        let mut g = GroupState::new("s", &meta.head_cut());
        g.sync("a", &ReaderReport::default(), &meta);
        let held = g.sync("a", &report(&[], &[(old[0], 5)]), &meta);
        assert_eq!(held, vec![(old[1], 0)], "successor not ready yet");
        let cut = g.cut(&meta);
        assert_eq!(cut.positions.get(&old[0]), Some(&5));
        meta.validate_cut(&cut)
            .expect("the group's cut is a valid cut");
        let held = g.sync("a", &report(&[], &[(old[1], 7)]), &meta);
        assert_eq!(held, vec![(new[0], 0)]);
        assert_eq!(g.cut(&meta).positions.len(), 1);
        // A reader that does not hold a segment cannot finish it.
        let mut g2 = GroupState::new("s", &meta.head_cut());
        g2.sync("x", &ReaderReport::default(), &meta);
        g2.sync("y", &report(&[], &[(old[0], 5)]), &meta);
        assert!(g2.finished.is_empty());
    }
}
