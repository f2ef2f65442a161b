//! Local streams: where the edge's sources store events, in-process, on the node's
//! segment log (no network hop). Each append carries two attributes, updated atomically
//! with it, that `status` reports: the segment's count of events stored by the edge and
//! the time of the last one. A source may add one more attribute with a condition, and
//! the append is stored only if the condition holds (the MQTT source's duplicate check).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tributary::controller::{Controller, ControllerError, LargeEventStored};
use tributary::event::{encode_event, framed_len};
use tributary::log::{
    AppendOptions, AttributeCondition, AttributeId, AttributeUpdate, LogError, SegmentLog, Ticket,
};
use tributary::stream::{segment_name, KeyRange, ScalingPolicy, StreamConfig};

use crate::config::{StreamSpec, WhenFull};
use crate::replicate::Replica;

/// How often a source waiting for room on a full disk tries again.
const DISK_FULL_WAIT: Duration = Duration::from_millis(250);

pub use tributary::event::{EVENTS_ATTRIBUTE, LAST_EVENT_ATTRIBUTE};
/// Attributes `[LARGE_EVENTS, LARGE_EVENTS + 2^32)`: large events stored in the segment,
/// one counter per source that writes them (each source the only writer of its own).
pub const LARGE_EVENTS: AttributeId = 0x7472_6962_6564_6765_0000_0000_8000_0000;
/// Attribute ids at or above this (and below `+ 2^96`) belong to sources.
pub const SOURCE_ATTRIBUTES: AttributeId = 0x7472_6962_6564_6765_0000_0001_0000_0000;

/// A source's attribute: `kind` and `name` say which source (e.g. an MQTT client id,
/// a watched directory), `index` which of its attributes (e.g. a packet id).
pub fn source_attribute(kind: &str, name: &[u8], index: u16) -> AttributeId {
    let h = stable_hash(&[kind.as_bytes(), name]);
    SOURCE_ATTRIBUTES + ((u128::from(h) << 16) | u128::from(index))
}

/// A fingerprint of `parts` to store in an attribute: non-negative, to fit its i64.
pub fn fingerprint(parts: &[&[u8]]) -> i64 {
    (stable_hash(parts) >> 1) as i64
}

/// FNV-1a over length-prefixed parts: a hash kept on disk must never change between
/// builds, which std's does not promise.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in parts {
        eat(&(p.len() as u64).to_be_bytes());
        eat(p);
    }
    h
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The segment log refused or failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The controller failed (looking up the stream's segments).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The event is larger than one append.
    #[error("an event of {size} bytes is larger than the largest append ({max} bytes)")]
    TooLarge {
        /// Framed size.
        size: usize,
        /// The log's limit.
        max: usize,
    },
}

/// What a submit did.
#[derive(Debug)]
pub enum Submitted {
    /// Stored once the ticket is durable.
    Stored(Ticket),
    /// The source's condition failed: an earlier append already stored this event.
    Duplicate,
}

/// One active segment.
#[derive(Debug)]
struct Route {
    range: KeyRange,
    segment: String,
}

/// A local stream, shared by every source that feeds it.
#[derive(Debug)]
pub struct LocalStream {
    spec: StreamSpec,
    controller: Arc<Controller>,
    routes: Mutex<Vec<Route>>,
    /// Sources wait while this is set (the disk budget is reached under `pause`).
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    /// Bytes on disk: measured by the budget check, grown by each submit in between.
    disk_used: AtomicU64,
    /// Its replication to the cloud, if configured.
    replica: OnceLock<Arc<Replica>>,
}

impl LocalStream {
    /// Opens the stream, creating its scope and itself (fixed segments) if missing. An
    /// existing stream is kept as it is, whatever its segments.
    pub async fn open(
        controller: Arc<Controller>,
        spec: StreamSpec,
    ) -> Result<Arc<LocalStream>, SinkError> {
        match controller.create_scope(&spec.scope) {
            Ok(()) | Err(ControllerError::ScopeExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let config = StreamConfig {
            scaling: ScalingPolicy::Fixed {
                segments: spec.segments,
            },
            ..StreamConfig::default()
        };
        match controller
            .create_stream(&spec.scope, &spec.stream, config)
            .await
        {
            Ok(_) | Err(ControllerError::StreamExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let s = LocalStream {
            spec,
            controller,
            routes: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            disk_used: AtomicU64::new(0),
            replica: OnceLock::new(),
        };
        s.refresh().await?;
        Ok(Arc::new(s))
    }

    /// Attaches its replication (once).
    pub fn set_replica(&self, replica: Arc<Replica>) {
        let _ = self.replica.set(replica);
    }

    /// Its replication to the cloud, if configured.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    /// What the configuration says of it.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// The log it appends to.
    pub fn log(&self) -> &Arc<SegmentLog> {
        self.controller.log()
    }

    /// The controller that keeps its metadata.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// Re-reads the active segments (after one was sealed).
    async fn refresh(&self) -> Result<(), SinkError> {
        let meta = self
            .controller
            .describe_settled(&self.spec.scope, &self.spec.stream)
            .await?;
        let mut routes = Vec::new();
        for r in meta.active() {
            let segment = segment_name(&self.spec.scope, &self.spec.stream, r.id);
            routes.push(Route {
                range: r.range,
                segment,
            });
        }
        *lock(&self.routes) = routes;
        Ok(())
    }

    /// Stores one event: submits it and returns the ticket to wait on with
    /// [`LocalStream::durable`], without waiting for the fsync, so a source pipelines.
    /// Events submitted one after the other are stored in that order. `condition` is a
    /// source's attribute update stored with the event, which is not stored at all if
    /// it fails. Waits while the stream is paused (disk budget) or the log's next
    /// batch is full.
    pub async fn submit(
        &self,
        key: &[u8],
        payload: &[u8],
        condition: Option<AttributeUpdate>,
    ) -> Result<Submitted, SinkError> {
        let size = framed_len(key, payload);
        let max = tributary::service::MAX_EVENT_BYTES;
        if size > max {
            return Err(SinkError::TooLarge { size, max });
        }
        let mut frame = BytesMut::with_capacity(size);
        encode_event(&mut frame, key, payload);
        let point = tributary::stream::key_point(key);
        let mut refreshes = 0;
        loop {
            self.wait_unpaused().await;
            let attempt = {
                let mut routes = lock(&self.routes);
                let route = routes.iter_mut().find(|r| r.range.contains(point));
                match route {
                    None => Err(LogError::Sealed(self.spec.name())),
                    Some(route) => {
                        let mut attributes = tributary::event::counted(1).to_vec();
                        attributes.extend(condition);
                        let opts = AppendOptions {
                            expected_length: None,
                            attributes,
                        };
                        let r = self.log().submit_append(&route.segment, &frame[..], &opts);
                        if r.is_ok() {
                            self.controller
                                .record_append(&route.segment, 1, frame.len() as u64);
                        }
                        r.map(|(_, ticket)| ticket)
                    }
                }
            };
            match attempt {
                Ok(ticket) => {
                    self.grow(frame.len() as u64);
                    return Ok(Submitted::Stored(ticket));
                }
                Err(LogError::AttributeConflict { id, .. })
                    if condition.is_some_and(|c| c.id == id) =>
                {
                    return Ok(Submitted::Duplicate)
                }
                Err(LogError::Backpressure(_)) => self.log().wait_for_room().await,
                // A full disk is waited out like a pause (an MQTT message is not
                // acknowledged meanwhile); the log takes appends again once there is
                // room.
                Err(LogError::DiskFull { .. }) => tokio::time::sleep(DISK_FULL_WAIT).await,
                Err(e @ (LogError::Sealed(_) | LogError::NoSuchSegment(_))) => {
                    // A scale sealed the segment: its successors take the key. Twice in
                    // a row means the stream itself is sealed or gone.
                    refreshes += 1;
                    if refreshes > 2 {
                        return Err(e.into());
                    }
                    self.refresh().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stores one large event of exactly `len` bytes read from `data` (a file, a
    /// command's output) through a temporary segment merged atomically, with the
    /// stream's bookkeeping in the same step: `source`'s count of large events in the
    /// segment the key goes to (what `status` counts), the last event time, and
    /// `condition` if any (nothing is stored if it fails). Waits while the stream is
    /// paused or the disk is full. The event is durable when this returns.
    pub async fn submit_large<R: tokio::io::AsyncRead + Unpin>(
        &self,
        key: &[u8],
        len: u64,
        data: R,
        source: AttributeId,
        condition: Option<AttributeUpdate>,
    ) -> Result<LargeEventStored, ControllerError> {
        self.wait_unpaused().await;
        while self.log().disk_full() {
            tokio::time::sleep(DISK_FULL_WAIT).await;
        }
        let counter = LARGE_EVENTS + u128::from((source >> 16) as u32);
        let count = match self.segment_for(key) {
            Some(seg) => self.log().attribute(&seg, counter)?,
            None => None,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut attributes: Vec<AttributeUpdate> = condition.into_iter().collect();
        attributes.push(AttributeUpdate {
            id: counter,
            value: count.unwrap_or(0) + 1,
            condition: AttributeCondition::Always,
        });
        attributes.push(AttributeUpdate {
            id: LAST_EVENT_ATTRIBUTE,
            value: now,
            condition: AttributeCondition::Always,
        });
        self.controller
            .append_large_event(
                &self.spec.scope,
                &self.spec.stream,
                key,
                len,
                data,
                &attributes,
            )
            .await
    }

    /// The active segment a key goes to now.
    pub fn segment_for(&self, key: &[u8]) -> Option<String> {
        let point = tributary::stream::key_point(key);
        lock(&self.routes)
            .iter()
            .find(|r| r.range.contains(point))
            .map(|r| r.segment.clone())
    }

    /// Waits until a submitted event is durable.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), LogError> {
        self.log().durable(ticket).await
    }

    /// Records the bytes the stream keeps on disk, as measured.
    pub fn set_disk_used(&self, bytes: u64) {
        self.disk_used.store(bytes, Ordering::SeqCst);
    }

    /// Counts a submitted event; pauses at once if it crosses a `pause` budget.
    fn grow(&self, bytes: u64) {
        let used = self.disk_used.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if self.spec.when_full == WhenFull::Pause
            && self.spec.disk_budget.is_some_and(|b| used >= b)
        {
            self.set_paused(true);
        }
    }

    /// Pauses or resumes the sources that feed this stream.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Whether sources are paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once the stream is not paused.
    pub async fn wait_unpaused(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
