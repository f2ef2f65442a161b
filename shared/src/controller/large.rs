//! Large events written in-process (the edge ingesting a video file as one event).
//!
//! An event larger than one log append keeps the ordinary event frame (see
//! [`crate::event`]); it is written in chunks into a temporary segment (named under
//! [`crate::stream::LARGE_EVENT_PREFIX`]), which is sealed and then merged onto the
//! stream segment owning the routing key. The merge is one log operation, so readers
//! see the whole event or nothing, also if the process dies half-way; temporary
//! segments a crash left behind are deleted when the controller opens, never merged.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Controller, ControllerError, Result};
use crate::event::event_header;
use crate::log::{AppendOptions, AttributeUpdate, LogError, SegmentLog};
use crate::stream::{
    is_large_event_segment, key_point, large_event_segment_name, segment_name, SegmentId,
    StreamError,
};

/// Routing attempts of one large event when the owning segment keeps being sealed
/// (scaling) between routing and merging.
const MAX_ROUTES: usize = 16;

/// Where a large event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargeEventStored {
    /// The stream segment holding it.
    pub segment: SegmentId,
    /// Offset of its frame in that segment.
    pub offset: u64,
    /// Bytes it takes there, framing included.
    pub length: u64,
}

/// A large event's temporary segment, deleted unless it was merged: explicitly on an
/// error, or from `drop` (in a task of the current runtime) when the write's future is
/// dropped half-way. What neither deletes (the process died), the next
/// [`Controller::open`] does.
struct TempSegment {
    log: Arc<SegmentLog>,
    name: String,
    done: bool,
}

impl TempSegment {
    /// It was merged: nothing to delete.
    fn merged(mut self) {
        self.done = true;
    }

    /// Deletes it now; one already gone is fine.
    async fn discard(mut self) {
        self.done = true;
        if let Err(e) = delete_temp(&self.log, &self.name).await {
            tracing::warn!(segment = %self.name, error = %e, "cannot delete a large event's temporary segment");
        }
    }
}

impl Drop for TempSegment {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (log, name) = (self.log.clone(), std::mem::take(&mut self.name));
            rt.spawn(async move {
                let _ = delete_temp(&log, &name).await;
            });
        }
    }
}

async fn delete_temp(log: &SegmentLog, name: &str) -> std::result::Result<(), LogError> {
    match log.delete(name).await {
        Ok(()) | Err(LogError::NoSuchSegment(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Controller {
    /// Appends one event of `len` payload bytes, read from `data`, to `scope/stream`,
    /// routed by `key` like [`crate::service::EventWriter`] routes it. The payload may
    /// be far larger than one log append (up to
    /// [`crate::event::MAX_LARGE_EVENT_BYTES`]); it is streamed into a temporary
    /// segment in chunks of at most one append (memory stays bounded by the log's
    /// batch limits, whatever `len` is), then merged onto the segment owning the key,
    /// together with `attributes` (set on that segment in the same atomic operation;
    /// if a condition fails, nothing is stored and the error is
    /// [`LogError::AttributeConflict`]).
    ///
    /// Readers see the whole event or nothing. If the owning segment is sealed before
    /// the merge (the stream scaled), the event is routed again to its successor, with
    /// no data written twice. Exactly `len` bytes are read from `data`; if it ends
    /// earlier, or fails, nothing is stored. Returns where the event is; it is durable.
    pub async fn append_large_event<R: AsyncRead + Unpin>(
        &self,
        scope: &str,
        stream: &str,
        key: &[u8],
        len: u64,
        data: R,
        attributes: &[AttributeUpdate],
    ) -> Result<LargeEventStored> {
        let header = event_header(key, len).map_err(ControllerError::InvalidEvent)?;
        let framed = header.len() as u64 + len;
        // Refuse a missing or sealed stream before reading any data.
        if self.describe_settled(scope, stream).await?.sealed {
            return Err(StreamError::Sealed.into());
        }
        let name = large_event_segment_name();
        self.log.create(&name).await?;
        let temp = TempSegment {
            log: self.log.clone(),
            name,
            done: false,
        };
        let input = (&header[..]).chain(data).take(framed);
        if let Err(e) = self.fill(&temp.name, input, framed).await {
            temp.discard().await;
            return Err(e);
        }
        match self
            .merge_routed(scope, stream, key, &temp.name, attributes)
            .await
        {
            Ok((segment, target, offset)) => {
                temp.merged();
                self.record_append(&target, 1, framed);
                Ok(LargeEventStored {
                    segment,
                    offset,
                    length: framed,
                })
            }
            Err(e) => {
                temp.discard().await;
                Err(e)
            }
        }
    }

    /// Appends all `framed` bytes of `input` to the temporary segment in chunks, without
    /// waiting for each to be durable, then seals it (durable once that returns).
    async fn fill(&self, temp: &str, mut input: impl AsyncRead + Unpin, framed: u64) -> Result<()> {
        let cfg = self.log.config();
        let chunk = cfg.max_append_bytes.min(cfg.max_batch_bytes).max(1);
        let mut buf = vec![0u8; chunk];
        let mut written: u64 = 0;
        while written < framed {
            let mut filled = 0;
            while filled < chunk {
                let n = input
                    .read(&mut buf[filled..])
                    .await
                    .map_err(ControllerError::Input)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Err(ControllerError::InvalidEvent(format!(
                    "the data ended after {written} of {framed} bytes (framing included)"
                )));
            }
            loop {
                match self
                    .log
                    .submit_append(temp, &buf[..filled], &AppendOptions::default())
                {
                    Ok(_) => break,
                    Err(LogError::Backpressure(_)) => self.log.wait_for_room().await,
                    Err(e) => return Err(e.into()),
                }
            }
            written += filled as u64;
        }
        // The seal is logged after every chunk: once it is durable, so are they.
        self.log.seal(temp).await?;
        Ok(())
    }

    /// Merges the sealed temporary segment onto the active segment owning `key`,
    /// routing again while that segment turns out sealed. Returns the segment, its
    /// name and the offset where the event starts.
    async fn merge_routed(
        &self,
        scope: &str,
        stream: &str,
        key: &[u8],
        temp: &str,
        attributes: &[AttributeUpdate],
    ) -> Result<(SegmentId, String, u64)> {
        let point = key_point(key);
        for _ in 0..MAX_ROUTES {
            let meta = self.describe_settled(scope, stream).await?;
            if meta.sealed {
                return Err(StreamError::Sealed.into());
            }
            let Some(owner) = meta.active().into_iter().find(|s| s.range.contains(point)) else {
                return Err(ControllerError::Meta(format!(
                    "no active segment of {scope}/{stream} owns key point {point}"
                )));
            };
            let target = segment_name(scope, stream, owner.id);
            match self.log.merge_with(&target, temp, attributes).await {
                Ok(offset) => return Ok((owner.id, target, offset)),
                // Scaled meanwhile: the successors own the key now.
                Err(LogError::Sealed(s)) if s == target => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Meta(format!(
            "{scope}/{stream} kept scaling; the large event was routed {MAX_ROUTES} times without being stored"
        )))
    }

    /// Deletes every large event's temporary segment (what a crash left half written or
    /// not merged); called by [`Controller::open`], before anyone writes.
    pub(super) async fn delete_large_event_segments(&self) -> Result<()> {
        for name in self.log.list() {
            if is_large_event_segment(&name) {
                tracing::info!(segment = %name, "deleting an unfinished large event");
                delete_temp(&self.log, &name).await?;
            }
        }
        Ok(())
    }
}
