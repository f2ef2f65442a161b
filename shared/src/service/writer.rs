//! The event writer: routing keys, pipelined appends, idempotence and scaling.
//!
//! One task owns the writer's state. Events are numbered in the order they are
//! written (the writer id's event numbers). Each event goes to the active segment
//! owning its routing key; events for one segment gather into a block, sent as soon
//! as the writer has nothing more queued (or the block is full), without waiting for
//! earlier blocks' acknowledgements. The segment store stores a block together with
//! the writer id's attribute set to the block's last event number, under the
//! condition "greater than stored", so a resent block is never stored twice.
//!
//! When a segment is sealed (scaling) or the connection fails, the writer stops
//! sending, lets every open session acknowledge what it took, reconnects if it must,
//! asks the server what each segment holds from this writer id, and resends the
//! events not stored, in event-number order, to the segments that own their keys now.
//! Because every resend goes out in number order before any newer event, a segment
//! holding event `n` of this writer holds every earlier event of its key range that is
//! not in one of its predecessors; so "event `n` with key `k` is stored" is exactly
//! "some segment whose range contains `k` holds an event number `>= n`". That rule
//! also lets a new writer with the same id skip what an earlier run stored.
//!
//! A large event ([`EventWriter::write_large`], beyond one append block) is numbered
//! like any other, written after every earlier event is durable, and merged onto its
//! segment with the writer's attribute set to its number in the same atomic step (see
//! the `large` module), so the same rule covers it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
// Looked up for every event: SipHash (std's) took about 5 % of `bench write`'s client.
use foldhash::{HashMap, HashMapExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::client::{AckStream, AppendSession, Client, ClientError};
use super::large::{Failure, LargeWrite, Outcome};
use crate::event::{encode_event, event_header, framed_len, MAX_KEY_LEN};
use crate::stream::{key_point, random_id, segment_name, KeyRange, SegmentId, StreamMeta};
use crate::wire::{ErrorCode, WriterPosition};

/// Largest event payload [`EventWriter::write`] takes: with the largest routing key and
/// the framing it still fits one append (the log's default limit is 8 MiB). Larger
/// events, up to [`crate::event::MAX_LARGE_EVENT_BYTES`], go through
/// [`EventWriter::write_large`].
pub const MAX_EVENT_BYTES: usize = (8 << 20) - (128 << 10);

/// Most events handed to the writer task at once.
const MAX_HANDOVER: usize = 1024;
/// Most bytes handed to the writer task at once (more wait for room).
const MAX_HANDOVER_BYTES: usize = 256 << 10;
/// Bytes reserved at a time for framing events.
const FRAMING_CHUNK: usize = 64 << 10;
/// Backoff of the first retry without an acknowledgement since the last one.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How a writer behaves.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The writer's id. With the same id and the same events in the same order, a
    /// later writer skips the events an earlier one stored. `None` picks a random id.
    pub writer_id: Option<u128>,
    /// Number of the first event written.
    pub first_event_number: i64,
    /// Largest append block.
    pub max_block_bytes: usize,
    /// Bytes sent and not yet acknowledged, at most; `write` waits beyond it.
    pub max_unacked_bytes: usize,
    /// How long to keep reconnecting when the server is away before failing.
    pub retry_for: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            writer_id: None,
            first_event_number: 1,
            max_block_bytes: 1 << 20,
            max_unacked_bytes: 8 << 20,
            retry_for: Duration::from_secs(60),
        }
    }
}

/// What a writer did, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Events acknowledged as durable (a resent block the server recognised as
    /// stored counts too).
    pub acknowledged: u64,
    /// Events recognised as stored by an earlier run or attempt and not stored again.
    pub already_stored: u64,
    /// Times the writer lost its connection and reconnected.
    pub reconnects: u64,
    /// Times it moved events to successors of a sealed segment.
    pub rerouted: u64,
}

enum Cmd {
    Events(Vec<Pending>),
    Flush(oneshot::Sender<Result<WriterStats, ClientError>>),
    /// A large event was written beside the task (after every earlier one was durable).
    Large {
        number: i64,
        outcome: Outcome,
    },
    /// Whether a large event was stored cannot be told: the writer must stop.
    Fail(ClientError),
}

/// One event waiting for its acknowledgement.
#[derive(Debug, Clone)]
struct Pending {
    number: i64,
    /// Where its routing key falls in the key space.
    point: u64,
    /// The event, framed as stored.
    framed: Bytes,
}

/// Events from this size on join a block as they are, not copied: QUIC sends them from
/// where they were framed. Smaller ones are copied together (one piece costs more to
/// send than copying a few kilobytes).
const HOLD_MIN: usize = 4 << 10;

/// A block sent or being built for one segment: its events' bytes, in order, as pieces.
#[derive(Debug, Default)]
struct Block {
    pieces: Vec<Bytes>,
    /// Small events copied together, the block's last piece once it is sent.
    tail: BytesMut,
    len: usize,
    events: Vec<Pending>,
}

impl Block {
    /// Adds an event to a block of at most `max` bytes. The first event makes room for
    /// a full block of its kind: grown by doubling, copies and reallocations took about
    /// 12 % of a writer of 100 B events. A block sent far from full gives that room
    /// back ([`Block::take_bytes`]).
    fn push(&mut self, p: Pending, max: usize) {
        let size = p.framed.len();
        if self.events.is_empty() {
            self.events.reserve(max / size.max(64));
        }
        self.len += size;
        if size >= HOLD_MIN {
            if !self.tail.is_empty() {
                self.pieces.push(self.tail.split().freeze());
            }
            self.pieces.push(p.framed.clone());
        } else {
            if self.tail.capacity() == 0 {
                self.tail.reserve(max);
            }
            self.tail.extend_from_slice(&p.framed);
        }
        self.events.push(p);
    }

    /// The block's bytes, in order, to send. They are not kept: a resend frames the
    /// block again from its events, so an unacknowledged block holds its events only,
    /// and no more room than a quarter beyond them (a block of a few small events
    /// would otherwise hold a whole block's memory until acknowledged).
    fn take_bytes(&mut self) -> Vec<Bytes> {
        let room = self.tail.capacity();
        let tail = std::mem::take(&mut self.tail);
        if !tail.is_empty() {
            self.pieces.push(match tail.len() < room / 4 {
                true => Bytes::copy_from_slice(&tail),
                false => tail.freeze(),
            });
        }
        if self.events.len() < self.events.capacity() / 4 {
            self.events.shrink_to_fit();
        }
        std::mem::take(&mut self.pieces)
    }
}

/// Writes events to one stream. `write` only queues; `flush` waits for durability.
#[derive(Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<Cmd>,
    /// Events framed here, not yet handed to the task, and their bytes.
    batch: Vec<Pending>,
    batch_bytes: usize,
    /// Where events are framed (split off one by one, without copying).
    buf: BytesMut,
    acked: watch::Receiver<i64>,
    task: tokio::task::JoinHandle<()>,
    writer_id: u128,
    next_number: i64,
    /// For large events, which the caller's task writes itself.
    client: Client,
    scope: String,
    stream: String,
    config: WriterConfig,
}

impl EventWriter {
    /// A writer on `scope/stream`.
    pub async fn new(
        client: &Client,
        scope: &str,
        stream: &str,
        config: WriterConfig,
    ) -> Result<EventWriter, ClientError> {
        let writer_id = config.writer_id.unwrap_or_else(random_id);
        let meta = client.describe_stream(scope, stream).await?;
        if meta.sealed {
            return Err(sealed_stream(scope, stream));
        }
        let resume = match config.writer_id {
            Some(id) => client.writer_positions(scope, stream, id).await?,
            None => Vec::new(),
        };
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let next_number = config.first_event_number;
        let (acked_tx, acked) = watch::channel(next_number - 1);
        let large_config = config.clone();
        let task = Task {
            acked: acked_tx,
            client: client.clone(),
            scope: scope.to_string(),
            stream: stream.to_string(),
            writer_id,
            config,
            active: active_ranges(&meta),
            sessions: HashMap::new(),
            open: HashMap::new(),
            resume,
            unacked_bytes: 0,
            stats: WriterStats::default(),
            flushes: VecDeque::new(),
            last_number: next_number - 1,
            ack_tx,
            ack_rx,
            failed: None,
            retrying: None,
            last_trouble: None,
        };
        Ok(EventWriter {
            tx,
            batch: Vec::new(),
            batch_bytes: 0,
            buf: BytesMut::new(),
            acked,
            task: tokio::spawn(task.run(rx)),
            writer_id,
            next_number,
            client: client.clone(),
            scope: scope.to_string(),
            stream: stream.to_string(),
            config: large_config,
        })
    }

    /// The highest event number `n` such that every event up to `n` is durable (or
    /// was stored before); it only grows.
    pub fn acknowledged(&self) -> watch::Receiver<i64> {
        self.acked.clone()
    }

    /// The writer's id.
    pub fn writer_id(&self) -> u128 {
        self.writer_id
    }

    /// Queues an event; it is durable once a later [`EventWriter::flush`] returns.
    /// Returns its event number. Waits while too much is unacknowledged. While the
    /// writer is saturated, events gather here and go out with the next `write` or
    /// `flush`.
    pub async fn write(&mut self, key: &[u8], payload: &[u8]) -> Result<i64, ClientError> {
        if key.len() > MAX_KEY_LEN {
            return Err(ClientError::InvalidInput(format!(
                "routing key of {} bytes; the limit is {MAX_KEY_LEN}",
                key.len()
            )));
        }
        if payload.len() > MAX_EVENT_BYTES {
            return Err(ClientError::InvalidInput(format!(
                "event of {} bytes; the limit is {MAX_EVENT_BYTES}",
                payload.len()
            )));
        }
        let number = self.next_number;
        if self.buf.capacity() - self.buf.len() < framed_len(key, payload) {
            self.buf
                .reserve(framed_len(key, payload).max(FRAMING_CHUNK));
        }
        encode_event(&mut self.buf, key, payload);
        self.batch_bytes += self.buf.len();
        self.batch.push(Pending {
            number,
            point: key_point(key),
            framed: self.buf.split().freeze(),
        });
        self.next_number += 1;
        // Hand the events over now if the writer task has room; while it has none,
        // they gather into larger hand-overs (fewer wake-ups under load).
        let full = match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Cmd::Events(std::mem::take(&mut self.batch)));
                self.batch_bytes = 0;
                false
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.batch.len() >= MAX_HANDOVER || self.batch_bytes >= MAX_HANDOVER_BYTES
            }
            Err(mpsc::error::TrySendError::Closed(())) => true,
        };
        if full {
            self.hand_over().await?;
        }
        Ok(number)
    }

    /// Hands the gathered events to the writer task, waiting for room.
    async fn hand_over(&mut self) -> Result<(), ClientError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if self.tx.send(Cmd::Events(events)).await.is_err() {
            return Err(failure());
        }
        Ok(())
    }

    /// Writes one event of `len` payload bytes read from `data`, which may be far
    /// larger than one append (up to [`crate::event::MAX_LARGE_EVENT_BYTES`]), and
    /// waits until it is durable; returns its event number. Every event written before
    /// is made durable first (so per-key order holds), then the payload is streamed to
    /// the server in blocks, never held whole in memory, into a temporary segment that
    /// is merged onto the segment owning `key` in one atomic step: readers see the
    /// whole event or nothing, also if this process dies half-way. If that segment is
    /// sealed meanwhile (scaling), the event goes to its successor without being sent
    /// again. With a writer id, a rerun skips an event an earlier run stored (`data`
    /// is then not read).
    ///
    /// Exactly `len` bytes are read from `data`. If `data` ends early or fails, or the
    /// connection is lost during the upload, the event is not stored, the error says
    /// so, and the writer goes on (its number is given to the next event). Only if it
    /// cannot be found out whether the event was stored (the server stayed away for
    /// [`WriterConfig::retry_for`] around the merge) does the writer stop, as after
    /// any failure it cannot recover from.
    pub async fn write_large<R: AsyncRead + Unpin>(
        &mut self,
        key: &[u8],
        len: u64,
        data: R,
    ) -> Result<i64, ClientError> {
        let header = event_header(key, len).map_err(ClientError::InvalidInput)?;
        let framed = header.len() as u64 + len;
        // The rule "stored iff some segment of the key holds a number >= n" needs every
        // earlier event stored before this one.
        self.flush().await?;
        let number = self.next_number;
        let write = LargeWrite {
            client: &mut self.client,
            scope: &self.scope,
            stream: &self.stream,
            writer_id: self.writer_id,
            number,
            key,
            block_bytes: self.config.max_block_bytes,
            max_unacked_bytes: self.config.max_unacked_bytes,
            retry_for: self.config.retry_for,
        };
        let input = (&header[..]).chain(data).take(framed);
        match write.run(input, framed).await {
            Ok(outcome) => {
                self.next_number += 1;
                if self.tx.send(Cmd::Large { number, outcome }).await.is_err() {
                    return Err(failure());
                }
                Ok(number)
            }
            Err(Failure::NotStored(e)) => Err(e),
            Err(Failure::Unknown(e)) => {
                let _ = self
                    .tx
                    .send(Cmd::Fail(ClientError::Failed(e.to_string())))
                    .await;
                Err(e)
            }
        }
    }

    /// Waits until every event written so far is durable (or was stored before).
    pub async fn flush(&mut self) -> Result<WriterStats, ClientError> {
        self.hand_over().await?;
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_err() {
            return Err(failure());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(failure()),
        }
    }

    /// Flushes and stops the writer.
    pub async fn close(mut self) -> Result<WriterStats, ClientError> {
        let r = self.flush().await;
        drop(self.tx);
        let _ = self.task.await;
        r
    }
}

/// The error after the writer task has ended (its reason went to the flush that saw
/// it first).
fn failure() -> ClientError {
    ClientError::Failed("the writer stopped after an earlier error".into())
}

fn sealed_stream(scope: &str, stream: &str) -> ClientError {
    ClientError::Server {
        code: ErrorCode::Sealed,
        message: format!("stream {scope}/{stream} is sealed"),
    }
}

enum AckMsg {
    Acked {
        segment: SegmentId,
        event_number: i64,
    },
    Ended {
        segment: SegmentId,
        error: Option<ClientError>,
    },
}

struct Session {
    session: AppendSession,
    sent: VecDeque<(i64, Block)>,
    /// Its acknowledgement stream has ended.
    ended: bool,
}

struct Task {
    acked: watch::Sender<i64>,
    client: Client,
    scope: String,
    stream: String,
    writer_id: u128,
    config: WriterConfig,
    /// The stream's active segments by key range (they cover the key space).
    active: Vec<(KeyRange, SegmentId)>,
    sessions: HashMap<SegmentId, Session>,
    /// Blocks not sent yet, per segment, oldest first (the last one is being filled).
    open: HashMap<SegmentId, VecDeque<Block>>,
    /// What an earlier run stored (positions at start); emptied once passed.
    resume: Vec<WriterPosition>,
    unacked_bytes: usize,
    stats: WriterStats,
    /// Flushes waiting, with the last event number they cover.
    flushes: VecDeque<(i64, oneshot::Sender<Result<WriterStats, ClientError>>)>,
    /// Number of the last event received.
    last_number: i64,
    ack_tx: mpsc::UnboundedSender<AckMsg>,
    ack_rx: mpsc::UnboundedReceiver<AckMsg>,
    failed: Option<String>,
    /// Since when recoveries have followed each other with no acknowledgement in
    /// between, and the next one's backoff (see [`Task::recover`]).
    retrying: Option<(Instant, Duration)>,
    /// The last refusal or failure recovered from (what a give-up says).
    last_trouble: Option<String>,
}

/// Why the writer must stop sending and recover.
enum Trouble {
    /// A segment was sealed or the connection failed: recover and go on.
    Recover,
    /// Nothing to do about it.
    Fatal(ClientError),
}

fn active_ranges(meta: &StreamMeta) -> Vec<(KeyRange, SegmentId)> {
    meta.active().iter().map(|s| (s.range, s.id)).collect()
}

fn stored(positions: &[WriterPosition], p: u64, number: i64) -> bool {
    positions
        .iter()
        .any(|w| w.range.contains(p) && w.last_event_number.is_some_and(|l| l >= number))
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let room = self.unacked_bytes < self.config.max_unacked_bytes;
            let r = tokio::select! {
                cmd = rx.recv(), if room => match cmd {
                    Some(cmd) => self.command(cmd, &mut rx).await,
                    None => break,
                },
                Some(msg) = self.ack_rx.recv() => self.ack(msg),
            };
            let r = match r {
                Err(Trouble::Recover) => self.recover().await,
                other => other,
            };
            if let Err(Trouble::Fatal(e)) = r {
                self.fail(e);
                // Keep answering flushes with the reason until the writer is dropped.
                while let Some(cmd) = rx.recv().await {
                    if let Cmd::Flush(tx) = cmd {
                        let _ = tx.send(Err(self.failed_error()));
                    }
                }
                return;
            }
            self.answer_flushes();
        }
        for (_, s) in self.sessions.iter_mut() {
            let _ = s.session.finish();
        }
    }

    fn failed_error(&self) -> ClientError {
        ClientError::Failed(self.failed.clone().unwrap_or_default())
    }

    fn fail(&mut self, e: ClientError) {
        tracing::warn!(error = %e, "writer failed");
        self.failed = Some(e.to_string());
        while let Some((_, tx)) = self.flushes.pop_front() {
            let _ = tx.send(Err(ClientError::Failed(e.to_string())));
        }
    }

    /// Takes one command and everything queued behind it, then sends the blocks.
    async fn command(&mut self, first: Cmd, rx: &mut mpsc::Receiver<Cmd>) -> Result<(), Trouble> {
        let mut cmd = Some(first);
        while let Some(c) = cmd.take() {
            match c {
                Cmd::Events(events) => {
                    let mut events = events.into_iter();
                    while let Some(p) = events.next() {
                        self.last_number = p.number;
                        // Only a full block makes a future (it is large: moving one
                        // per event cost about 7 % of a writer of 100 B events).
                        let sent = match self.route(p) {
                            Some(seg) => self.send_blocks(seg).await,
                            None => Ok(()),
                        };
                        if let Err(t) = sent {
                            // The events after the one whose block failed are queued,
                            // not dropped: the recovery resends them with the rest (it
                            // leaves out what the server turns out to hold).
                            for p in events {
                                self.last_number = p.number;
                                self.queue(p);
                            }
                            return Err(t);
                        }
                    }
                }
                Cmd::Flush(tx) => self.flushes.push_back((self.last_number, tx)),
                Cmd::Large { number, outcome } => {
                    self.last_number = number;
                    match outcome {
                        Outcome::Stored => self.stats.acknowledged += 1,
                        Outcome::AlreadyStored => self.stats.already_stored += 1,
                    }
                }
                Cmd::Fail(e) => return Err(Trouble::Fatal(e)),
            }
            if self.unacked_bytes < self.config.max_unacked_bytes {
                cmd = rx.try_recv().ok();
            }
        }
        self.send_all().await
    }

    /// Sends every block not sent yet.
    async fn send_all(&mut self) -> Result<(), Trouble> {
        let ready: Vec<SegmentId> = self.open.keys().copied().collect();
        for seg in ready {
            self.send_blocks(seg).await?;
        }
        Ok(())
    }

    /// Puts an event in the open block of the segment owning its key (unless an earlier
    /// run stored it); returns the segment if that filled a block, to send it (with the
    /// fresh one) right away.
    fn route(&mut self, p: Pending) -> Option<SegmentId> {
        if !self.resume.is_empty() {
            if stored(&self.resume, p.point, p.number) {
                self.stats.already_stored += 1;
                return None;
            }
            let max = self
                .resume
                .iter()
                .filter_map(|w| w.last_event_number)
                .max()
                .unwrap_or(i64::MIN);
            if p.number > max {
                self.resume.clear();
            }
        }
        self.queue(p)
    }

    /// Queues an event in the last block of the segment owning its key; returns the
    /// segment if that filled a block.
    fn queue(&mut self, p: Pending) -> Option<SegmentId> {
        let seg = self
            .active
            .iter()
            .find(|(r, _)| r.contains(p.point))
            .map_or(
                SegmentId {
                    number: 0,
                    epoch: 0,
                },
                |(_, id)| *id,
            );
        let size = p.framed.len();
        self.unacked_bytes += size;
        let max = self.config.max_block_bytes;
        let blocks = self.open.entry(seg).or_default();
        let fits = blocks
            .back()
            .is_some_and(|b| b.events.is_empty() || b.len + size <= max);
        if !fits {
            blocks.push_back(Block::default());
        }
        blocks.back_mut()?.push(p, max);
        (blocks.len() > 1).then_some(seg)
    }

    /// Sends the segment's blocks in order; on a failure the unsent ones stay queued
    /// (and the one being sent counts as sent: it may have reached the server).
    async fn send_blocks(&mut self, seg: SegmentId) -> Result<(), Trouble> {
        let Some(mut blocks) = self.open.remove(&seg) else {
            return Ok(());
        };
        blocks.retain(|b| !b.events.is_empty());
        if blocks.is_empty() {
            return Ok(());
        }
        if !self.sessions.contains_key(&seg) {
            let name = segment_name(&self.scope, &self.stream, seg);
            match self.client.append_session(&name, self.writer_id).await {
                Ok(mut session) => {
                    if let Some(acks) = session.take_acks() {
                        self.spawn_ack_reader(seg, acks);
                    }
                    self.sessions.insert(
                        seg,
                        Session {
                            session,
                            sent: VecDeque::new(),
                            ended: false,
                        },
                    );
                }
                Err(e) => {
                    self.open.insert(seg, blocks);
                    return Err(self.trouble(e));
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&seg) else {
            return Ok(());
        };
        while let Some(mut block) = blocks.pop_front() {
            let last = block.events.last().map(|e| e.number).unwrap_or(0);
            let count = block.events.len() as u32;
            let r = s.session.send(last, count, &block.take_bytes()).await;
            s.sent.push_back((last, block));
            if let Err(e) = r {
                self.open.insert(seg, blocks);
                return Err(self.trouble(e));
            }
        }
        Ok(())
    }

    fn trouble(&mut self, e: ClientError) -> Trouble {
        match &e {
            ClientError::Server {
                code: ErrorCode::Sealed,
                ..
            } => Trouble::Recover,
            e if e.is_transient() => {
                self.last_trouble = Some(e.to_string());
                Trouble::Recover
            }
            _ => Trouble::Fatal(e),
        }
    }

    fn spawn_ack_reader(&self, seg: SegmentId, mut acks: AckStream) {
        let tx = self.ack_tx.clone();
        tokio::spawn(async move {
            loop {
                match acks.next().await {
                    Ok(Some(a)) => {
                        let msg = AckMsg::Acked {
                            segment: seg,
                            event_number: a.event_number,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(AckMsg::Ended {
                            segment: seg,
                            error: None,
                        });
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(AckMsg::Ended {
                            segment: seg,
                            error: Some(e),
                        });
                        return;
                    }
                }
            }
        });
    }

    fn ack(&mut self, msg: AckMsg) -> Result<(), Trouble> {
        match msg {
            AckMsg::Acked {
                segment,
                event_number,
            } => {
                let Some(s) = self.sessions.get_mut(&segment) else {
                    return Ok(());
                };
                while s
                    .sent
                    .front()
                    .is_some_and(|(last, _)| *last <= event_number)
                {
                    if let Some((_, b)) = s.sent.pop_front() {
                        self.unacked_bytes -= b.len;
                        self.stats.acknowledged += b.events.len() as u64;
                        self.retrying = None;
                    }
                }
                Ok(())
            }
            AckMsg::Ended { segment, error } => {
                let Some(s) = self.sessions.get_mut(&segment) else {
                    return Ok(());
                };
                s.ended = true;
                match error {
                    Some(e) => Err(self.trouble(e)),
                    None if s.sent.is_empty() => {
                        self.sessions.remove(&segment);
                        Ok(())
                    }
                    None => Err(Trouble::Recover),
                }
            }
        }
    }

    fn lowest_unacked(&self) -> Option<i64> {
        let sent = self
            .sessions
            .values()
            .filter_map(|s| s.sent.front())
            .filter_map(|(_, b)| b.events.first().map(|e| e.number));
        let open = self
            .open
            .values()
            .filter_map(|q| q.front())
            .filter_map(|b| b.events.first().map(|e| e.number));
        sent.chain(open).min()
    }

    fn answer_flushes(&mut self) {
        let low = self.lowest_unacked();
        let through = low.map_or(self.last_number, |l| l - 1);
        self.acked.send_if_modified(|a| {
            let grew = through > *a;
            if grew {
                *a = through;
            }
            grew
        });
        while let Some((n, _)) = self.flushes.front() {
            if low.is_some_and(|l| l <= *n) {
                break;
            }
            if let Some((_, tx)) = self.flushes.pop_front() {
                let _ = tx.send(Ok(self.stats));
            }
        }
    }

    /// Stops sending, collects every unacknowledged event, reconnects if needed,
    /// drops what the server already holds, refreshes the stream's segments, and
    /// resends the rest in event-number order.
    ///
    /// The first attempt after an acknowledgement goes at once (a sealed segment, a
    /// restarted server); attempts with none in between wait a backoff that doubles,
    /// and the writer gives up `retry_for` after the first of them. The refusal of a
    /// resent block (`Busy`) comes back after the resend itself succeeded, so this
    /// state lives across calls: otherwise a refusing server would get everything
    /// unacknowledged again every few milliseconds, forever.
    async fn recover(&mut self) -> Result<(), Trouble> {
        let mut events: Vec<Pending> = Vec::new();
        loop {
            self.drain_sessions().await;
            for (_, s) in self.sessions.drain() {
                for (_, b) in s.sent {
                    events.extend(b.events);
                }
            }
            for (_, blocks) in self.open.drain() {
                for b in blocks {
                    events.extend(b.events);
                }
            }
            events.sort_by_key(|e| e.number);
            events.dedup_by_key(|e| e.number);
            self.unacked_bytes = 0;
            match self.retrying {
                None => self.retrying = Some((Instant::now(), FIRST_BACKOFF)),
                Some((since, _)) if since.elapsed() >= self.config.retry_for => {
                    return Err(Trouble::Fatal(ClientError::Failed(format!(
                        "gave up after retrying for {:?}; {} events not acknowledged{}",
                        self.config.retry_for,
                        events.len(),
                        self.last_trouble
                            .as_ref()
                            .map_or_else(String::new, |t| format!(" (last: {t})"))
                    ))))
                }
                Some((since, backoff)) => {
                    tracing::info!(?backoff, "writer retrying");
                    tokio::time::sleep(backoff).await;
                    self.retrying = Some((since, (backoff * 2).min(MAX_BACKOFF)));
                }
            }
            match self.resend(&mut events).await {
                Ok(()) => return Ok(()),
                Err(Trouble::Fatal(e)) => return Err(Trouble::Fatal(e)),
                Err(Trouble::Recover) => {}
            }
        }
    }

    /// Ends every session and waits until each has acknowledged what it took.
    async fn drain_sessions(&mut self) {
        for s in self.sessions.values_mut() {
            let _ = s.session.finish();
        }
        while self.sessions.values().any(|s| !s.ended) {
            let Some(msg) = self.ack_rx.recv().await else {
                return;
            };
            let _ = self.ack(msg);
        }
    }

    /// Resends `events` (taken only once the server answered, so a failure before
    /// that keeps them for the next attempt).
    async fn resend(&mut self, events: &mut Vec<Pending>) -> Result<(), Trouble> {
        if self.client.is_closed() {
            self.client = self.client.reconnect().await.map_err(|e| self.trouble(e))?;
            self.stats.reconnects += 1;
            tracing::info!(writer_id = self.writer_id, "writer reconnected");
        } else {
            self.stats.rerouted += 1;
        }
        let positions = self
            .client
            .writer_positions(&self.scope, &self.stream, self.writer_id)
            .await
            .map_err(|e| self.trouble(e))?;
        let meta = self
            .client
            .describe_stream(&self.scope, &self.stream)
            .await
            .map_err(|e| self.trouble(e))?;
        self.active = active_ranges(&meta);
        let (already, todo): (Vec<Pending>, Vec<Pending>) = std::mem::take(events)
            .into_iter()
            .partition(|e| stored(&positions, e.point, e.number));
        self.stats.already_stored += already.len() as u64;
        if todo.is_empty() {
            return Ok(());
        }
        if meta.sealed {
            return Err(Trouble::Fatal(sealed_stream(&self.scope, &self.stream)));
        }
        // Queue everything first: a failure while sending leaves every event queued
        // or sent, so the next attempt finds them all.
        for p in todo {
            self.queue(p);
        }
        self.send_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(number: i64, len: usize) -> Pending {
        Pending {
            number,
            point: 0,
            framed: Bytes::from(vec![number as u8; len]),
        }
    }

    #[test]
    fn a_block_sent_far_from_full_holds_no_more_than_its_events() {
        let max = 1 << 20;
        let mut b = Block::default();
        b.push(event(1, 100), max);
        assert!(b.tail.capacity() >= max, "room for a full block");
        let bytes = b.take_bytes();
        assert_eq!(bytes.concat(), vec![1u8; 100]);
        assert_eq!(b.tail.capacity(), 0);
        assert_eq!(b.events.capacity(), 1);
        // A full block goes out as one piece holding every event.
        let mut b = Block::default();
        for n in 0..(max / 100) as i64 {
            b.push(event(n, 100), max);
        }
        let bytes = b.take_bytes();
        assert_eq!(bytes.len(), 1);
        assert_eq!(bytes[0].len(), max / 100 * 100);
        assert_eq!(b.events.len(), max / 100);
    }
}
