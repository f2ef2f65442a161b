//! Reader groups, persisted in sled (tree `groups`, key `scope/group`). Every update
//! runs under one lock, so concurrent syncs of one group never lose each other's
//! changes; liveness (when each reader last synced) is kept in memory only: after a
//! restart every reader gets a fresh timeout.

use std::collections::HashMap;
use std::time::Instant;

use super::{meta_err, Controller, ControllerError, Result};
use crate::stream::{validate_scoped_name, GroupState, ReaderReport, SegmentId, StreamCut};
use crate::wire::{GroupInfo, StartFrom};

fn group_key(scope: &str, group: &str) -> String {
    format!("{scope}/{group}")
}

impl Controller {
    fn load_group(&self, scope: &str, group: &str) -> Result<GroupState> {
        match self.groups.get(group_key(scope, group)).map_err(meta_err)? {
            Some(v) => ciborium::from_reader(&v[..])
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

    /// Creates a reader group on `scope/stream` starting at `from`, unless it exists
    /// already for the same stream.
    pub fn create_reader_group(
        &self,
        scope: &str,
        group: &str,
        stream: &str,
        from: &StartFrom,
    ) -> Result<()> {
        validate_scoped_name(group)?;
        let meta = self.describe(scope, stream)?;
        let _guard = self.live.lock().map_err(meta_err)?;
        match self.load_group(scope, group) {
            Ok(g) if g.stream == stream => return Ok(()),
            Ok(_) => return Err(ControllerError::GroupExists(group_key(scope, group))),
            Err(ControllerError::NoSuchGroup(_)) => {}
            Err(e) => return Err(e),
        }
        let start = match from {
            StartFrom::Head => meta.head_cut(),
            StartFrom::Tail => self.tail_cut(scope, stream)?,
            StartFrom::Cut(cut) => {
                meta.validate_cut(cut)?;
                cut.clone()
            }
        };
        self.store_group(scope, group, &GroupState::new(stream, &start))
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
    ) -> Result<Vec<(SegmentId, u64)>> {
        let mut live = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        let meta = self.describe(scope, &state.stream)?;
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
            state.leave(&r, &ReaderReport::default(), &meta);
            seen.remove(&r);
        }
        let held = if leave {
            state.leave(reader, report, &meta);
            seen.remove(reader);
            Vec::new()
        } else {
            seen.insert(reader.to_string(), now);
            state.sync(reader, report, &meta)
        };
        self.store_group(scope, group, &state)?;
        Ok(held)
    }

    /// Saves the group's current position (what its readers have reported as
    /// delivered) as checkpoint `name`, and returns it.
    pub fn checkpoint(&self, scope: &str, group: &str, name: &str) -> Result<StreamCut> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let mut state = self.load_group(scope, group)?;
        let meta = self.describe(scope, &state.stream)?;
        let cut = state.checkpoint(name, &meta);
        self.store_group(scope, group, &state)?;
        Ok(cut)
    }

    /// A group's stream, readers, position and checkpoints.
    pub fn describe_reader_group(&self, scope: &str, group: &str) -> Result<GroupInfo> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let state = self.load_group(scope, group)?;
        let position = state.cut(&self.describe(scope, &state.stream)?);
        Ok(GroupInfo {
            stream: state.stream,
            readers: state.readers.into_iter().collect(),
            position,
            checkpoints: state.checkpoints.into_keys().collect(),
        })
    }

    /// Checkpoint `name`, or the group's current position when `name` is `None`.
    pub fn group_position(
        &self,
        scope: &str,
        group: &str,
        name: Option<&str>,
    ) -> Result<StreamCut> {
        let _guard = self.live.lock().map_err(meta_err)?;
        let state = self.load_group(scope, group)?;
        match name {
            None => Ok(state.cut(&self.describe(scope, &state.stream)?)),
            Some(n) => state.checkpoints.get(n).cloned().ok_or_else(|| {
                ControllerError::NoSuchGroup(format!(
                    "reader group {scope}/{group} has no checkpoint {n:?}"
                ))
            }),
        }
    }
}
