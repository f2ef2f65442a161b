//! Large events over the wire: [`super::EventWriter::write_large`]'s work.
//!
//! The event's frame is streamed, in blocks pipelined on one append session, into a
//! new temporary segment (named under [`crate::stream::LARGE_EVENT_PREFIX`]); the
//! segment is sealed and merged onto the stream segment owning the routing key with
//! `MergeWithAttributes`, which sets the writer's attribute to the event's number in
//! the same atomic step. So the writer's rule holds for large events too: event `n`
//! with key `k` is stored iff some segment whose range contains `k` holds writer
//! attribute `>= n`. Readers see the whole event or nothing.
//!
//! What a failure means for the event:
//! - before the merge is sent (reading the data, the upload, the seal): not stored. The
//!   temporary segment is deleted here, or by the server when the connection ends, or
//!   when the server starts again; it is never merged.
//! - the merge is refused because the segment was sealed: routed again and merged onto
//!   the successor, without sending the data again.
//! - the connection is lost around the merge: the writer reconnects and finds out. A
//!   temporary segment that still exists can still be merged, so it merges it again
//!   (at most one of the two merges can succeed); one that is gone can never be merged
//!   any more, so the writer's positions tell for sure whether the event was stored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::client::{Client, ClientError};
use crate::log::{AttributeCondition, AttributeUpdate};
use crate::stream::{key_point, large_event_segment_name, random_id, segment_name, StreamMeta};
use crate::wire::{ErrorCode, WriterPosition};

/// Routing attempts of one event when the owning segment keeps being sealed (scaling)
/// between routing and merging.
const MAX_ROUTES: usize = 16;

/// How a large event ended, when it is certain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stored now.
    Stored,
    /// Stored before (an earlier run or attempt with this writer id).
    AlreadyStored,
}

/// Why a large event failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// It is certainly not stored, and cannot be stored later by what was sent.
    NotStored(ClientError),
    /// Whether it is stored cannot be found out (the server stayed away).
    Unknown(ClientError),
}

/// One large event to write.
#[derive(Debug)]
pub(super) struct LargeWrite<'a> {
    pub client: &'a mut Client,
    pub scope: &'a str,
    pub stream: &'a str,
    pub writer_id: u128,
    pub number: i64,
    pub key: &'a [u8],
    pub block_bytes: usize,
    pub max_unacked_bytes: usize,
    pub retry_for: Duration,
}

fn stored(positions: &[WriterPosition], point: u64, number: i64) -> bool {
    positions
        .iter()
        .any(|w| w.range.contains(point) && w.last_event_number.is_some_and(|l| l >= number))
}

fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    matches!(e, ClientError::Server { code: c, .. } if *c == code)
}

impl LargeWrite<'_> {
    /// Writes the event: `framed` bytes of `input` (its framing, then its payload).
    pub async fn run(
        mut self,
        input: impl AsyncRead + Unpin,
        framed: u64,
    ) -> Result<Outcome, Failure> {
        if self.client.is_closed() {
            *self.client = self.client.reconnect().await.map_err(Failure::NotStored)?;
        }
        // A rerun with the same writer id skips what an earlier run stored.
        if self.is_stored().await.map_err(Failure::NotStored)? {
            return Ok(Outcome::AlreadyStored);
        }
        let temp = large_event_segment_name();
        self.client
            .create_segment(&temp)
            .await
            .map_err(Failure::NotStored)?;
        let uploaded = match self.upload(&temp, input, framed).await {
            Ok(()) => self.client.seal_segment(&temp).await,
            Err(e) => Err(e),
        };
        if let Err(e) = uploaded {
            self.discard(&temp).await;
            return Err(Failure::NotStored(e));
        }
        self.merge(&temp).await
    }

    /// Whether the stream holds the event already, by the writer's rule.
    async fn is_stored(&self) -> Result<bool, ClientError> {
        let positions = self
            .client
            .writer_positions(self.scope, self.stream, self.writer_id)
            .await?;
        Ok(stored(&positions, key_point(self.key), self.number))
    }

    /// Deletes the temporary segment, if the server is there to hear it (otherwise the
    /// server deletes it itself).
    async fn discard(&self, temp: &str) {
        if let Err(e) = self.client.delete_segment(temp).await {
            if !is_code(&e, ErrorCode::NoSuchSegment) {
                tracing::debug!(segment = %temp, error = %e, "large event left for the server to delete");
            }
        }
    }

    /// Sends `framed` bytes of `input` to the temporary segment in blocks, pipelined up
    /// to `max_unacked_bytes`, and waits until all are durable.
    async fn upload(
        &self,
        temp: &str,
        mut input: impl AsyncRead + Unpin,
        framed: u64,
    ) -> Result<(), ClientError> {
        // The temporary segment's own writer id: its attribute goes away with the merge.
        let mut session = self.client.append_session(temp, random_id()).await?;
        let Some(mut acks) = session.take_acks() else {
            return Err(ClientError::Protocol("append session without acks".into()));
        };
        let block = self.block_bytes.max(1);
        let mut buf = vec![0u8; block];
        let mut unacked: VecDeque<(i64, usize)> = VecDeque::new();
        let mut unacked_bytes = 0;
        let (mut sent, mut number) = (0u64, 0i64);
        let mut durable_end = 0;
        while sent < framed {
            let want = usize::try_from(framed - sent).map_or(block, |left| left.min(block));
            let mut filled = 0;
            while filled < want {
                let n = input
                    .read(&mut buf[filled..want])
                    .await
                    .map_err(|e| ClientError::InvalidInput(format!("reading the event: {e}")))?;
                if n == 0 {
                    return Err(ClientError::InvalidInput(format!(
                        "the event's data ended after {} of {framed} bytes (framing included)",
                        sent + filled as u64
                    )));
                }
                filled += n;
            }
            number += 1;
            let piece = Bytes::copy_from_slice(&buf[..filled]);
            session.send(number, 0, &[piece]).await?;
            sent += filled as u64;
            unacked.push_back((number, filled));
            unacked_bytes += filled;
            while unacked_bytes > self.max_unacked_bytes {
                durable_end = next_ack(&mut acks, &mut unacked, &mut unacked_bytes).await?;
            }
        }
        session.finish()?;
        while !unacked.is_empty() {
            durable_end = next_ack(&mut acks, &mut unacked, &mut unacked_bytes).await?;
        }
        if durable_end != framed {
            return Err(ClientError::Protocol(format!(
                "the temporary segment holds {durable_end} bytes, {framed} were sent"
            )));
        }
        Ok(())
    }

    /// Merges the sealed temporary segment onto the segment owning the key, with the
    /// writer's attribute; routes again after a seal, and finds out after a lost
    /// connection (see the module docs). Deletes the temporary segment unless merged.
    async fn merge(&mut self, temp: &str) -> Result<Outcome, Failure> {
        let deadline = Instant::now() + self.retry_for;
        let attributes = [AttributeUpdate {
            id: self.writer_id,
            value: self.number,
            condition: AttributeCondition::Greater,
        }];
        let point = key_point(self.key);
        let (mut routes, mut lost) = (0, false);
        let refusal = loop {
            let e = match self.route(point).await {
                Ok(target) => match self
                    .client
                    .merge_with_attributes(&target, temp, &attributes)
                    .await
                {
                    Ok(_) => return Ok(Outcome::Stored),
                    // Scaled meanwhile: the successors own the key now.
                    Err(e) if is_code(&e, ErrorCode::Sealed) && routes < MAX_ROUTES => {
                        routes += 1;
                        continue;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !e.is_transient() {
                break e;
            }
            // Lost around the merge: ours may have been done. While the temporary
            // segment exists, merging it again is safe (at most one merge of it
            // succeeds); once it is gone, the merge below is refused.
            lost = true;
            self.reconnect(deadline, &e).await?;
        };
        // Refused, or the temporary segment is gone. Delete it, if still there, so that
        // no merge of it can happen any more: then the writer's positions are final.
        loop {
            let r = match self.client.delete_segment(temp).await {
                Ok(()) => self.is_stored().await,
                Err(e) if is_code(&e, ErrorCode::NoSuchSegment) => self.is_stored().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(true) if lost => return Ok(Outcome::Stored),
                Ok(true) => return Ok(Outcome::AlreadyStored),
                Ok(false) => return Err(Failure::NotStored(refusal)),
                Err(e) if e.is_transient() => self.reconnect(deadline, &e).await?,
                Err(e) => return Err(Failure::Unknown(e)),
            }
        }
    }

    /// A new connection, retried with backoff until `deadline`; then the outcome of
    /// the event is unknown.
    async fn reconnect(&mut self, deadline: Instant, why: &ClientError) -> Result<(), Failure> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if Instant::now() >= deadline {
                return Err(Failure::Unknown(ClientError::Failed(format!(
                    "cannot tell whether the large event {} was stored; the server stayed \
                     away for {:?}: {why}",
                    self.number, self.retry_for
                ))));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if let Ok(c) = self.client.reconnect().await {
                *self.client = c;
                return Ok(());
            }
        }
    }

    /// The name of the active segment owning `point`, as the server settles it.
    async fn route(&self, point: u64) -> Result<String, ClientError> {
        let meta: StreamMeta = self.client.describe_stream(self.scope, self.stream).await?;
        if meta.sealed {
            return Err(ClientError::Server {
                code: ErrorCode::Sealed,
                message: format!("stream {}/{} is sealed", self.scope, self.stream),
            });
        }
        let owner = meta
            .active()
            .into_iter()
            .find(|s| s.range.contains(point))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "no active segment of {}/{} owns key point {point}",
                    self.scope, self.stream
                ))
            })?;
        Ok(segment_name(self.scope, self.stream, owner.id))
    }
}

/// Waits for the next acknowledgement of the upload; returns the durable length.
async fn next_ack(
    acks: &mut super::client::AckStream,
    unacked: &mut VecDeque<(i64, usize)>,
    unacked_bytes: &mut usize,
) -> Result<u64, ClientError> {
    let Some(a) = acks.next().await? else {
        return Err(ClientError::Connection(
            "the server ended the upload early".into(),
        ));
    };
    while unacked.front().is_some_and(|(n, _)| *n <= a.event_number) {
        if let Some((_, len)) = unacked.pop_front() {
            *unacked_bytes -= len;
        }
    }
    Ok(a.end_offset)
}
