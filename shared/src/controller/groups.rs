//! Reader groups, persisted in sled (tree `groups`, key `scope/group`). Every update
//! runs under one lock, so concurrent syncs of one group never lose each other's
//! changes; liveness (when each reader last synced) is kept in memory only: after a
//! restart every reader gets a fresh timeout.
//!
//! A group reads a stream set (see [`crate::stream::group`]): at each sync, streams of
//! the scope that match one of its patterns and are not in it yet join it from their
//! head, and streams deleted since leave it.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Deserialize;

use super::{meta_err, Controller, ControllerError, Result};
use crate::stream::{
    name_matches, parse_stream_set, validate_scoped_name, GroupCut, GroupSegment, GroupState,
    Metas, ReaderReport, SegmentId, StreamCut,
};
use crate::wire::{GroupInfo, StartFrom};

fn group_key(scope: &str, group: &str) -> String {
    format!("{scope}/{group}")
}

/// A group as stored before stream sets (one stream, positions by segment id).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OneStreamGroup {
    stream: String,
    positions: BTreeMap<SegmentId, u64>,
    owners: BTreeMap<SegmentId, String>,
    finished: BTreeMap<SegmentId, u64>,
    readers: std::collections::BTreeSet<String>,
    checkpoints: BTreeMap<String, StreamCut>,
}

impl From<OneStreamGroup> for GroupState {
    fn from(g: OneStreamGroup) -> GroupState {
        let seg = |id: SegmentId| GroupSegment {
            stream: g.stream.clone(),
            id,
        };
        let one = |cut: StreamCut| GroupCut {
            streams: BTreeMap::from([(g.stream.clone(), cut)]),
        };
        GroupState {
            streams: g.stream.clone(),
            members: [g.stream.clone()].into(),
            positions: g.positions.iter().map(|(id, o)| (seg(*id), *o)).collect(),
            owners: g
                .owners
                .iter()
                .map(|(id, r)| (seg(*id), r.clone()))
                .collect(),
            finished: g.finished.iter().map(|(id, o)| (seg(*id), *o)).collect(),
            readers: g.readers.clone(),
            checkpoints: g
                .checkpoints
                .iter()
                .map(|(n, c)| (n.clone(), one(c.clone())))
                .collect(),
        }
    }
}

impl Controller {
    fn load_group(&self, scope: &str, group: &str) -> Result<GroupState> {
        match self.groups.get(group_key(scope, group)).map_err(meta_err)? {
            Some(v) => ciborium::from_reader::<GroupState, _>(&v[..])
                .or_else(|e| {
                    ciborium::from_reader::<OneStreamGroup, _>(&v[..])
                        .map(GroupState::from)
                        .map_err(|_| e)
                })
                .map_err(|e| meta_err(format!("unreadable reader group metadata: {e}"))),
            None => Err(ControllerError::NoSuchGroup(format!(
                "reader group {scope}/{group} does not exist"
            ))),
        }
    }

    fn store_group(&self, scope: &str, group: &str, state: &GroupState) -> Result<()> {
        let mut buf = Vec::new();
        ciborium::into_writer(state, &mut buf).map_err(meta_err)?;
        self.groups
            .insert(group_key(scope, group), buf)
            .map_err(meta_err)?;
        self.groups.flush().map_err(meta_err)?;
        Ok(())
    }

    /// The stream set a group reads, as given (`None`: no such group).
    pub fn group_streams(&self, scope: &str, group: &str) -> Option<String> {
        self.load_group(scope, group).ok().map(|g| g.streams)
    }

    /// The streams of `scope` in the set `parts`: every name (which must exist) and
    /// every stream a pattern matches.
    fn resolve_set(&self, scope: &str, parts: &[String]) -> Result<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        let patterns: Vec<&String> = parts.iter().filter(|p| p.contains('*')).collect();
        for p in parts.iter().filter(|p| !p.contains('*')) {
            self.describe(scope, p)?;
            out.insert(p.clone());
        }
        if !patterns.is_empty() {
            for s in self.list_streams(scope)? {
                if patterns.iter().any(|p| name_matches(p, &s)) {
                    out.insert(s);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Brings `state`'s streams up to date (streams a pattern matches now join from
    /// their head, deleted ones leave) and returns their metadata.
    fn group_metas(&self, scope: &str, state: &mut GroupState) -> Result<Metas> {
        // Only patterns take in streams; a named stream deleted since leaves (below).
        let patterns: Vec<String> = parse_stream_set(&state.streams)?
            .into_iter()
            .filter(|p| p.contains('*'))
            .collect();
        if !patterns.is_empty() {
            for s in self.resolve_set(scope, &patterns)? {
                if !state.members.contains(&s) {
                    let head = self.describe(scope, &s)?.head_cut();
                    tracing::info!(%scope, stream = %s, set = %state.streams, "a stream joins a reader group's set");
                    state.add_stream(&s, &head);
                }
            }
        }
        let mut metas = Metas::new();
        for s in state.members.clone() {
            match self.describe(scope, &s) {
                Ok(m) => {
                    metas.insert(s, m);
                }
                Err(ControllerError::NoSuchStream(_)) => state.remove_stream(&s),
                Err(e) => return Err(e),
            }
        }
        Ok(metas)
    }

    /// Creates a reader group on the stream set `streams` of `scope` (names and
    /// patterns, comma-separated) starting at `from`, unless it exists already for the
    /// same set. Named streams must exist; a pattern may match none yet.
    pub fn create_reader_group(
        &self,
        scope: &str,
        group: &str,
        streams: &str,
        from: &StartFrom,
    ) -> Result<()> {
        validate_scoped_name(group)?;
        let parts = parse_stream_set(streams)?;
        let members = self.resolve_set(scope, &parts)?;
        let _guard = self.live.lock().map_err(meta_err)?;
        match self.load_group(scope, group) {
            Ok(g) if g.streams == streams => return Ok(()),
            Ok(g) => {
                return Err(ControllerError::GroupExists(format!(
                    "{} (it reads {})",
                    group_key(scope, group),
                    g.streams
                )))
            }
            Err(ControllerError::NoSuchGroup(_)) => {}
            Err(e) => return Err(e),
        }
        let mut start = GroupCut::default();
        if let StartFrom::Cut(cut) = from {
            if let Some(s) = cut.streams.keys().find(|s| !members.contains(s)) {
                return Err(crate::stream::StreamError::InvalidCut(format!(
                    "the cut names stream {s}, which is not in {streams}"
                ))
                .into());
            }
        }
        for s in &members {
            let meta = self.describe(scope, s)?;
            let cut = match from {
                StartFrom::Head => meta.head_cut(),
                StartFrom::Tail => self.tail_cut(scope, s)?,
                StartFrom::Cut(cut) => match cut.streams.get(s) {
                    Some(c) => {
                        meta.validate_cut(c)?;
                        c.clone()
                    }
                    None => meta.head_cut(),
                },
            };
            start.streams.insert(s.clone(), cut);
        }
        self.store_group(scope, group, &GroupState::new(streams, &start))
    }

    /// Deletes a reader group.
    pub fn delete_reader_group(&self, scope: &str, group: &str) -> Result<()> {
        let mut live = self.live.lock().map_err(meta_err)?;
        self.load_group(scope, group)?;
        self.groups
            .remove(group_key(scope, group))
            .map_err(meta_err)?;
        self.groups.flush().map_err(meta_err)?;
        live.remove(&group_key(scope, group));
        Ok(())
    }

    /// A reader's sync (see [`GroupState::sync`]): returns the segments it holds now
    /// with the offsets to read from. Readers silent for longer than the reader
    /// timeout leave the group first, so their segments go to the others.
    pub fn sync_reader(
        &self,
        scope: &str,
        group: &str,
        reader: &str,
        report: &ReaderReport,
        leave: bool,
    ) -> Result<Vec<(GroupSegment, u64)>> {
        let mut live = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        let metas = self.group_metas(scope, &mut state)?;
        let now = Instant::now();
        let seen = live
            .entry(group_key(scope, group))
            .or_insert_with(HashMap::new);
        for r in &state.readers {
            seen.entry(r.clone()).or_insert(now);
        }
        let dead: Vec<String> = seen
            .iter()
            .filter(|(r, t)| *r != reader && now.duration_since(**t) > self.reader_timeout)
            .map(|(r, _)| r.clone())
            .collect();
        for r in dead {
            tracing::info!(%scope, %group, reader = %r, "reader timed out; its segments go to the others");
            state.leave(&r, &ReaderReport::default(), &metas);
            seen.remove(&r);
        }
        let held = if leave {
            state.leave(reader, report, &metas);
            seen.remove(reader);
            Vec::new()
        } else {
            seen.insert(reader.to_string(), now);
            state.sync(reader, report, &metas)
        };
        self.store_group(scope, group, &state)?;
        Ok(held)
    }

    /// Saves the group's current position (what its readers have reported as
    /// delivered) as checkpoint `name`, and returns it.
    pub fn checkpoint(&self, scope: &str, group: &str, name: &str) -> Result<GroupCut> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        let metas = self.group_metas(scope, &mut state)?;
        let cut = state.checkpoint(name, &metas);
        self.store_group(scope, group, &state)?;
        Ok(cut)
    }

    /// A group's streams, readers, position and checkpoints.
    pub fn describe_reader_group(&self, scope: &str, group: &str) -> Result<GroupInfo> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        let metas = self.group_metas(scope, &mut state)?;
        let position = state.cut(&metas);
        Ok(GroupInfo {
            streams: state.streams,
            members: state.members.into_iter().collect(),
            readers: state.readers.into_iter().collect(),
            position,
            checkpoints: state.checkpoints.into_keys().collect(),
        })
    }

    /// Checkpoint `name`, or the group's current position when `name` is `None`.
    pub fn group_position(&self, scope: &str, group: &str, name: Option<&str>) -> Result<GroupCut> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        match name {
            None => {
                let metas = self.group_metas(scope, &mut state)?;
                Ok(state.cut(&metas))
            }
            Some(n) => state.checkpoints.get(n).cloned().ok_or_else(|| {
                ControllerError::NoSuchGroup(format!(
                    "reader group {scope}/{group} has no checkpoint {n:?}"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_group_stored_before_stream_sets_reads_as_a_set_of_its_one_stream() {
        let id = |number| SegmentId { number, epoch: 0 };
        let cut = StreamCut {
            positions: BTreeMap::from([(id(0), 7)]),
        };
        let old = OneStreamGroup {
            stream: "temps".into(),
            positions: BTreeMap::from([(id(0), 7), (id(1), 3)]),
            owners: BTreeMap::from([(id(1), "r".to_string())]),
            finished: BTreeMap::from([(id(2), 9)]),
            readers: ["r".to_string()].into(),
            checkpoints: BTreeMap::from([("cp".to_string(), cut.clone())]),
        };
        let mut buf = Vec::new();
        ciborium::into_writer(&old, &mut buf).expect("encode");
        assert!(ciborium::from_reader::<GroupState, _>(&buf[..]).is_err());
        let g = GroupState::from(
            ciborium::from_reader::<OneStreamGroup, _>(&buf[..]).expect("old layout"),
        );
        let seg = |n| GroupSegment {
            stream: "temps".into(),
            id: id(n),
        };
        assert_eq!(g.streams, "temps");
        assert_eq!(g.members, ["temps".to_string()].into());
        assert_eq!(g.positions, BTreeMap::from([(seg(0), 7), (seg(1), 3)]));
        assert_eq!(g.owners, BTreeMap::from([(seg(1), "r".to_string())]));
        assert_eq!(g.finished, BTreeMap::from([(seg(2), 9)]));
        assert_eq!(g.checkpoints["cp"].streams["temps"], cut);
    }
}
