//! The event reader: one member of a reader group. Tailing and historical reads are
//! the same call, [`EventReader::next`].
//!
//! The reader holds the segments its group gave it. It reads them ahead into buffers,
//! delivers whole events one at a time (round robin over its segments), and tells the
//! group, at each sync, the position up to which it has *delivered* each segment and
//! which segments it finished. The group answers with what it holds now; a segment
//! taken away is dropped with its buffer, so the next holder starts exactly after the
//! last delivered event. A reader that stops syncing loses its segments after the
//! group's timeout, and they are read again from the last reported positions.
//!
//! An event may span many reads (a large event, up to
//! [`crate::event::MAX_LARGE_EVENT_BYTES`]): its bytes gather in one buffer, sized
//! once from the event's length field, and it is delivered whole.
//! [`ReaderConfig::max_event_bytes`] bounds that buffer; a longer event is an error
//! ([`ClientError::EventTooLarge`]), never an allocation.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::client::{Client, ClientError};
use crate::event::{decode_events, framed_len, framed_len_at, Event, MAX_FRAMED_EVENT_BYTES};
use crate::stream::{segment_name, GroupSegment, ReaderReport, SegmentId};
use crate::wire::ErrorCode;

/// How a reader behaves.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Time between syncs with the group (position reports and rebalancing).
    pub sync_interval: Duration,
    /// Bytes asked for per read.
    pub read_bytes: u32,
    /// Longest a single read waits at a segment's tail.
    pub tail_wait: Duration,
    /// Largest event the reader takes, in bytes it takes in the segment (framing and
    /// routing key included): the most it buffers for one event. A longer event stops
    /// the reader with [`ClientError::EventTooLarge`]. Default
    /// [`MAX_FRAMED_EVENT_BYTES`], the largest event a writer writes.
    pub max_event_bytes: u64,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            sync_interval: Duration::from_secs(1),
            read_bytes: 1 << 20,
            tail_wait: Duration::from_millis(500),
            max_event_bytes: MAX_FRAMED_EVENT_BYTES,
        }
    }
}

/// Most bytes asked for in one read while an event is incomplete (the server sends at
/// most 4 MiB; the frame limit is 16 MiB).
const MAX_READ_BYTES: u64 = 8 << 20;

/// An event with where it was read, or a gap record.
///
/// A mirror stream (the cloud's copy of an edge stream) may hold **gap records**: data
/// its edge gave up before the cloud had it. The reader hands each out in its place
/// in the segment, as an item with `gap` set and an empty key and payload; readers
/// that take events only must skip those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEvent {
    /// Stream it is in (one of the group's).
    pub stream: Arc<str>,
    /// Segment it is in.
    pub segment: SegmentId,
    /// Its offset in the segment.
    pub offset: u64,
    /// Routing key it was written with.
    pub key: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Set when this is a gap record, not an event: what was lost, and why.
    pub gap: Option<crate::event::Gap>,
    /// Bytes it takes in the segment, framing included: the next item is at
    /// `offset + size`.
    pub size: u64,
}

#[derive(Debug)]
struct Held {
    /// The segment's stream, handed out with each of its events.
    stream: Arc<str>,
    /// Delivered up to here.
    position: u64,
    /// Where reading the segment started.
    started_at: u64,
    /// Bytes read end here.
    fetched: u64,
    /// Read bytes not yet decoded (a partial event).
    partial: BytesMut,
    /// Bytes the partial event at the front of `partial` takes in all, once its
    /// length field is there.
    need: Option<u64>,
    /// Decoded events not yet delivered, with their offsets.
    events: VecDeque<(u64, Event)>,
    /// The segment is sealed and everything in it was fetched.
    ended: bool,
    /// Reading stopped at an event it cannot take (longer than allowed); the error is
    /// returned once the events before it are delivered.
    stalled: Option<ClientError>,
}

impl Held {
    fn at(stream: Arc<str>, offset: u64) -> Held {
        Held {
            stream,
            position: offset,
            started_at: offset,
            fetched: offset,
            partial: BytesMut::new(),
            need: None,
            events: VecDeque::new(),
            ended: false,
            stalled: None,
        }
    }

    /// Bytes to ask for in the next read: more while a long event is incomplete.
    fn read_len(&self, read_bytes: u32) -> u32 {
        let missing = self
            .need
            .map_or(0, |n| n.saturating_sub(self.partial.len() as u64));
        let len = missing.min(MAX_READ_BYTES).max(u64::from(read_bytes));
        u32::try_from(len).unwrap_or(u32::MAX)
    }
}

/// A reader in a reader group.
#[derive(Debug)]
pub struct EventReader {
    client: Client,
    scope: String,
    group: String,
    reader: String,
    config: ReaderConfig,
    held: BTreeMap<GroupSegment, Held>,
    finished: Vec<(GroupSegment, u64)>,
    last_sync: Instant,
    /// The segment round-robin delivery served last.
    turn: Option<GroupSegment>,
    /// Bytes received from the server so far.
    bytes_read: u64,
}

type FetchResult = (GroupSegment, u64, Result<(Bytes, bool), ClientError>);

impl EventReader {
    /// Joins `group` (created beforehand with [`Client::create_reader_group`]) as
    /// `reader`, a name unique in the group.
    pub async fn join(
        client: &Client,
        scope: &str,
        group: &str,
        reader: &str,
        config: ReaderConfig,
    ) -> Result<EventReader, ClientError> {
        let mut r = EventReader {
            client: client.clone(),
            scope: scope.to_string(),
            group: group.to_string(),
            reader: reader.to_string(),
            config,
            held: BTreeMap::new(),
            finished: Vec::new(),
            last_sync: Instant::now(),
            turn: None,
            bytes_read: 0,
        };
        r.sync().await?;
        Ok(r)
    }

    /// Bytes received from the server so far. It grows while a large event arrives,
    /// before the event is delivered: a caller that gives up after a time without
    /// events can tell a slow event from none.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The segments it holds now.
    pub fn segments(&self) -> Vec<GroupSegment> {
        self.held.keys().cloned().collect()
    }

    /// Reports delivered positions and finished segments to the group, and takes the
    /// group's answer: what this reader holds now.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        let report = self.report();
        let assigned = match self
            .client
            .sync_reader(
                &self.scope,
                &self.group,
                &self.reader,
                report.clone(),
                false,
            )
            .await
        {
            Err(e) if e.is_transient() => {
                // The server restarted or the network blinked: one new connection.
                self.client = self.client.reconnect().await?;
                self.client
                    .sync_reader(&self.scope, &self.group, &self.reader, report, false)
                    .await?
            }
            r => r?,
        };
        self.finished.clear();
        self.last_sync = Instant::now();
        let mut held = BTreeMap::new();
        for (seg, offset) in assigned {
            match self.held.remove(&seg) {
                Some(h) if h.position == offset => {
                    held.insert(seg, h);
                }
                _ => {
                    let stream: Arc<str> = Arc::from(seg.stream.as_str());
                    held.insert(seg, Held::at(stream, offset));
                }
            }
        }
        self.held = held;
        Ok(())
    }

    fn report(&self) -> ReaderReport {
        ReaderReport {
            positions: self
                .held
                .iter()
                .map(|(seg, h)| (seg.clone(), h.position))
                .collect(),
            finished: self.finished.clone(),
        }
    }

    /// Leaves the group; its segments go to the other readers at the positions
    /// delivered so far.
    pub async fn leave(self) -> Result<(), ClientError> {
        let report = self.report();
        self.client
            .sync_reader(&self.scope, &self.group, &self.reader, report, true)
            .await?;
        Ok(())
    }

    /// The next event, waiting up to `timeout` for one; `None` if none came.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<ReadEvent>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.finished.is_empty() || self.last_sync.elapsed() >= self.config.sync_interval {
                self.sync().await?;
            }
            if let Some(e) = self.deliver() {
                return Ok(Some(e));
            }
            // Everything before an event it cannot take is delivered: now the error.
            if let Some(e) = self.held.values_mut().find_map(|h| h.stalled.take()) {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let until_sync = self
                .config
                .sync_interval
                .saturating_sub(self.last_sync.elapsed());
            let wait = self
                .config
                .tail_wait
                .min(deadline - now)
                .min(until_sync.max(Duration::from_millis(10)));
            if self.held.is_empty() {
                tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                continue;
            }
            self.fetch(wait).await?;
        }
    }

    /// Delivers the next buffered event, round robin over the segments; moves ended
    /// segments to `finished`.
    fn deliver(&mut self) -> Option<ReadEvent> {
        // Round robin: the first segment with an event after the last one served.
        let next = match &self.turn {
            Some(after) => self
                .held
                .range((Excluded(after), Unbounded))
                .chain(self.held.range(..=after))
                .find(|(_, h)| !h.events.is_empty()),
            None => self.held.iter().find(|(_, h)| !h.events.is_empty()),
        }
        .map(|(seg, _)| seg.clone());
        if let Some(seg) = next {
            let h = self.held.get_mut(&seg)?;
            let (offset, e) = h.events.pop_front()?;
            let size = framed_len(&e.key, &e.payload) as u64;
            h.position = offset + size;
            // A gap record's payload is its encoding: nothing for the caller.
            let (key, payload) = match e.gap {
                Some(_) => (Bytes::new(), Bytes::new()),
                None => (e.key, e.payload),
            };
            let event = ReadEvent {
                stream: h.stream.clone(),
                segment: seg.id,
                offset,
                key,
                payload,
                gap: e.gap,
                size,
            };
            self.turn = Some(seg);
            return Some(event);
        }
        // Nothing buffered anywhere: segments read to their end are finished.
        let finished = &mut self.finished;
        self.held.retain(|seg, h| {
            let done = h.ended && h.partial.is_empty();
            if done {
                finished.push((seg.clone(), h.position));
            }
            !done
        });
        None
    }

    /// Reads every held segment that has nothing buffered, concurrently, until one
    /// returns something or all waited `wait` at their tails. A segment in the middle
    /// of a long event is read on as soon as each read returns (for up to `wait`, so
    /// the reader still syncs with its group while a large event arrives).
    async fn fetch(&mut self, wait: Duration) -> Result<(), ClientError> {
        let until = Instant::now() + wait;
        let mut reads: JoinSet<FetchResult> = JoinSet::new();
        let ready: Vec<GroupSegment> = self
            .held
            .iter()
            .filter(|(_, h)| h.events.is_empty() && !h.ended && h.stalled.is_none())
            .map(|(seg, _)| seg.clone())
            .collect();
        for seg in ready {
            self.spawn_read(&mut reads, seg, wait);
        }
        while let Some(done) = reads.join_next().await {
            let Ok((id, offset, r)) = done else { continue };
            if self.take(&id, offset, r).await? {
                break;
            }
            let arriving = self
                .held
                .get(&id)
                .is_some_and(|h| h.need.is_some() && h.fetched > offset && !h.ended);
            if arriving && Instant::now() < until {
                self.spawn_read(&mut reads, id, wait);
            }
        }
        Ok(())
    }

    /// Reads the segment on from where its fetched bytes end.
    fn spawn_read(&self, reads: &mut JoinSet<FetchResult>, id: GroupSegment, wait: Duration) {
        let Some(h) = self.held.get(&id) else {
            return;
        };
        let client = self.client.clone();
        let name = segment_name(&self.scope, &id.stream, id.id);
        let (offset, max) = (h.fetched, h.read_len(self.config.read_bytes));
        reads.spawn(async move {
            let r = client.read(&name, offset, max, wait).await;
            (id, offset, r)
        });
    }

    /// Takes one read's result; true if it brought events or an end.
    async fn take(
        &mut self,
        id: &GroupSegment,
        offset: u64,
        r: Result<(Bytes, bool), ClientError>,
    ) -> Result<bool, ClientError> {
        let Some(h) = self.held.get_mut(id) else {
            return Ok(false);
        };
        if h.fetched != offset {
            return Ok(false);
        }
        match r {
            Ok((data, end)) => {
                self.bytes_read += data.len() as u64;
                h.fetched += data.len() as u64;
                h.partial.extend_from_slice(&data);
                // Whole events at the front of the buffer; the incomplete one after them
                // stays (its buffer sized once, from its length field).
                let start = h.fetched - h.partial.len() as u64;
                let mut whole = 0usize;
                h.need = None;
                let mut too_large = None;
                while let Some(len) = framed_len_at(&h.partial[whole..]) {
                    if len > self.config.max_event_bytes {
                        too_large = Some(ClientError::EventTooLarge {
                            segment: id.id,
                            offset: start + whole as u64,
                            started_at: h.started_at,
                            size: len,
                            max: self.config.max_event_bytes,
                        });
                        break;
                    }
                    let have = (h.partial.len() - whole) as u64;
                    if have < len {
                        h.need = Some(len);
                        // Within max_event_bytes, which the caller sized for memory.
                        let more = usize::try_from(len - have).unwrap_or(usize::MAX);
                        if whole == 0 {
                            h.partial.reserve(more);
                        }
                        break;
                    }
                    whole += len as usize;
                }
                if whole > 0 {
                    let buf = h.partial.split_to(whole).freeze();
                    let (events, used) = decode_events(&buf).map_err(|e| {
                        ClientError::Protocol(format!("segment {id} at {start}: {e}"))
                    })?;
                    debug_assert_eq!(used, whole);
                    let mut at = start;
                    for e in events {
                        let len = framed_len(&e.key, &e.payload) as u64;
                        h.events.push_back((at, e));
                        at += len;
                    }
                }
                if too_large.is_some() {
                    h.stalled = too_large;
                    return Ok(true);
                }
                if end && !h.partial.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "segment {id} ends inside an event ({} bytes left over)",
                        h.partial.len()
                    )));
                }
                h.ended = end;
                Ok(!h.events.is_empty() || end)
            }
            Err(ClientError::Server {
                code: ErrorCode::Truncated,
                ..
            }) => {
                // Retention dropped data this reader had not read: go on from the start.
                let name = segment_name(&self.scope, &id.stream, id.id);
                let start = self.client.segment_info(&name).await?.start;
                *h = Held::at(h.stream.clone(), start);
                Ok(false)
            }
            Err(ClientError::Server {
                code: ErrorCode::NoSuchSegment,
                ..
            }) => {
                // Deleted by a truncation of the stream: nothing more to read in it.
                h.ended = true;
                h.partial.clear();
                Ok(true)
            }
            Err(e) if e.is_transient() => {
                self.client = self.client.reconnect().await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
