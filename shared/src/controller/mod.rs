//! The controller: scopes and streams, persisted in sled, driving the segment log.
//!
//! Every change is persisted first, then carried out on the segment log with idempotent
//! steps; [`Controller::open`] reconciles the log with the metadata, so a crash between
//! the two leaves nothing half done (a scale's successors exist, its predecessors are
//! sealed, a deleted stream's segments are gone). A writer moves to successors only
//! after its segment reports `Sealed`, and readers finish predecessors first, so
//! per-key order holds across scaling.

mod groups;
mod large;
mod mirror;
mod policies;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::{LogError, SegmentLog};
use crate::stream::{
    segment_name, validate_scoped_name, KeyRange, SegmentId, StreamConfig, StreamCut, StreamError,
    StreamMeta,
};
use crate::wire::WriterPosition;

pub use large::LargeEventStored;
pub use mirror::{mirror_shift, MIRROR_SHIFT};
pub use policies::PolicySettings;

/// What the controller refuses or fails with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The stream model refused the request.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The segment log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The metadata store failed.
    #[error("controller metadata: {0}")]
    Meta(String),
    /// No such scope.
    #[error("scope {0:?} does not exist")]
    NoSuchScope(String),
    /// The scope exists.
    #[error("scope {0:?} already exists")]
    ScopeExists(String),
    /// The scope still holds streams.
    #[error("scope {0:?} still holds streams; delete them first")]
    ScopeNotEmpty(String),
    /// No such stream.
    #[error("stream {0:?} does not exist")]
    NoSuchStream(String),
    /// The stream exists.
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    /// The stream must be sealed first.
    #[error("stream {0:?} must be sealed before it is deleted")]
    NotSealed(String),
    /// No such reader group or checkpoint.
    #[error("{0}")]
    NoSuchGroup(String),
    /// The reader group exists and reads another stream.
    #[error("reader group {0} already exists for other streams")]
    GroupExists(String),
    /// A large event that cannot be stored as given (key or length above the limit,
    /// data shorter than announced).
    #[error("{0}")]
    InvalidEvent(String),
    /// A mirror stream cannot follow its source as asked (it is not a mirror, a
    /// sealed segment misses data, the histories differ), or a client tried to scale
    /// a mirror.
    #[error("{0}")]
    Mirror(String),
    /// Another edge stream feeds this mirror; nothing was written.
    #[error("{stream} mirrors {owner}; {refused} may not mirror into it{hint}")]
    MirrorOwned {
        /// The mirror, `scope/stream`.
        stream: String,
        /// Who feeds it.
        owner: Box<crate::stream::MirrorSource>,
        /// Who was refused.
        refused: Box<crate::stream::MirrorSource>,
        /// What to do about it.
        hint: &'static str,
    },
    /// Reading a large event's data failed; nothing was stored.
    #[error("reading the event's data: {0}")]
    Input(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, ControllerError>;

fn meta_err(e: impl ToString) -> ControllerError {
    ControllerError::Meta(e.to_string())
}

/// Scopes and streams of one node.
#[derive(Debug)]
pub struct Controller {
    scopes: sled::Tree,
    streams: sled::Tree,
    groups: sled::Tree,
    log: Arc<SegmentLog>,
    /// Serializes reader-group updates; holds when each reader last synced.
    live: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// A reader silent for this long leaves its group.
    reader_timeout: Duration,
    /// Appends per segment since the last policy tick: (events, bytes).
    load: Mutex<HashMap<String, (u64, u64)>>,
    /// State of the retention and scaling policies between ticks.
    policy: Mutex<policies::PolicyState>,
    /// Held by every change of a stream's metadata (read, modify, persist, carry
    /// out), so concurrent changes (a client's scale, a retention tick) never lose
    /// each other's updates.
    changes: tokio::sync::Mutex<()>,
}

fn stream_key(scope: &str, stream: &str) -> Vec<u8> {
    format!("{scope}/{stream}").into_bytes()
}

impl Controller {
    /// Opens the controller's metadata (kept in the log's metadata store), reconciles
    /// `log` with it, and deletes the temporary segments of large events a crash left
    /// (they are never merged).
    pub async fn open(log: Arc<SegmentLog>) -> Result<Self> {
        let c = Controller {
            scopes: log.meta_tree("scopes")?,
            streams: log.meta_tree("streams")?,
            groups: log.meta_tree("groups")?,
            log,
            live: Mutex::new(HashMap::new()),
            reader_timeout: Duration::from_secs(10),
            load: Mutex::new(HashMap::new()),
            policy: Mutex::new(policies::PolicyState::default()),
            changes: tokio::sync::Mutex::new(()),
        };
        for kv in c.streams.iter() {
            let (k, v) = kv.map_err(meta_err)?;
            let name = String::from_utf8_lossy(&k).to_string();
            let meta = decode(&v)?;
            let (scope, stream) = name.split_once('/').unwrap_or((name.as_str(), ""));
            c.reconcile(scope, stream, &meta).await?;
        }
        c.delete_large_event_segments().await?;
        Ok(c)
    }

    /// Makes the segment log match the stream's metadata (idempotent).
    async fn reconcile(&self, scope: &str, stream: &str, meta: &StreamMeta) -> Result<()> {
        let before_head = meta.before(&meta.head);
        for rec in meta.segments.values() {
            let name = segment_name(scope, stream, rec.id);
            if before_head.contains(&rec.id) {
                self.delete_segment(&name).await?;
                continue;
            }
            match self.log.create(&name).await {
                Ok(()) | Err(LogError::SegmentExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Seal only once every successor exists: a reader that sees a segment's end
        // moves on to its successors, which must be there.
        for rec in meta.segments.values() {
            if before_head.contains(&rec.id) {
                continue;
            }
            let name = segment_name(scope, stream, rec.id);
            // Each step is a durable log operation: skip the ones already done.
            if (rec.sealed_epoch.is_some() || meta.sealed) && !self.log.info(&name)?.sealed {
                self.log.seal(&name).await?;
            }
        }
        for (id, offset) in &meta.head.positions {
            let name = segment_name(scope, stream, *id);
            let info = self.log.info(&name)?;
            if info.start < *offset {
                self.log.truncate(&name, (*offset).min(info.length)).await?;
            }
        }
        Ok(())
    }

    /// Deletes a segment of the log; one already gone is fine.
    async fn delete_segment(&self, name: &str) -> Result<()> {
        match self.log.delete(name).await {
            Ok(()) | Err(LogError::NoSuchSegment(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a stream's metadata with `f`, persists it and carries it out on the
    /// log, all under the change lock.
    async fn change<T>(
        &self,
        scope: &str,
        stream: &str,
        f: impl FnOnce(&mut StreamMeta) -> Result<T>,
    ) -> Result<T> {
        let _change = self.changes.lock().await;
        let mut meta = self.describe(scope, stream)?;
        let out = f(&mut meta)?;
        self.persist(scope, stream, &meta)?;
        self.reconcile(scope, stream, &meta).await?;
        Ok(out)
    }

    /// Creates a scope.
    pub fn create_scope(&self, scope: &str) -> Result<()> {
        validate_scoped_name(scope)?;
        let done = self
            .scopes
            .compare_and_swap(scope.as_bytes(), None::<&[u8]>, Some(b"".as_ref()))
            .map_err(meta_err)?;
        if done.is_err() {
            return Err(ControllerError::ScopeExists(scope.into()));
        }
        self.scopes.flush().map_err(meta_err)?;
        Ok(())
    }

    /// All scopes, sorted.
    pub fn list_scopes(&self) -> Result<Vec<String>> {
        self.scopes
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).to_string())
                    .map_err(meta_err)
            })
            .collect()
    }

    /// Deletes an empty scope.
    pub fn delete_scope(&self, scope: &str) -> Result<()> {
        self.require_scope(scope)?;
        if !self.list_streams(scope)?.is_empty() {
            return Err(ControllerError::ScopeNotEmpty(scope.into()));
        }
        self.scopes.remove(scope.as_bytes()).map_err(meta_err)?;
        self.scopes.flush().map_err(meta_err)?;
        Ok(())
    }

    fn require_scope(&self, scope: &str) -> Result<()> {
        match self
            .scopes
            .contains_key(scope.as_bytes())
            .map_err(meta_err)?
        {
            true => Ok(()),
            false => Err(ControllerError::NoSuchScope(scope.into())),
        }
    }

    /// The streams of a scope, sorted.
    pub fn list_streams(&self, scope: &str) -> Result<Vec<String>> {
        self.require_scope(scope)?;
        let prefix = format!("{scope}/");
        self.streams
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k[prefix.len()..]).to_string())
                    .map_err(meta_err)
            })
            .collect()
    }

    /// A stream's metadata once no change is under way: every segment it names exists
    /// in the log, and every sealed one is sealed there (what clients are told).
    pub async fn describe_settled(&self, scope: &str, stream: &str) -> Result<StreamMeta> {
        let _change = self.changes.lock().await;
        self.describe(scope, stream)
    }

    /// A stream's metadata.
    pub fn describe(&self, scope: &str, stream: &str) -> Result<StreamMeta> {
        match self
            .streams
            .get(stream_key(scope, stream))
            .map_err(meta_err)?
        {
            Some(v) => decode(&v),
            None => Err(ControllerError::NoSuchStream(format!("{scope}/{stream}"))),
        }
    }

    /// The id of `scope/stream` ([`StreamMeta::uid`]), made and stored now if the
    /// stream was created before streams had ids.
    pub async fn stream_uid(&self, scope: &str, stream: &str) -> Result<u128> {
        let _change = self.changes.lock().await;
        let mut meta = self.describe(scope, stream)?;
        if meta.uid == 0 {
            meta.uid = StreamMeta::new(meta.config)?.uid;
            self.persist(scope, stream, &meta)?;
        }
        Ok(meta.uid)
    }

    fn persist(&self, scope: &str, stream: &str, meta: &StreamMeta) -> Result<()> {
        let mut buf = Vec::new();
        ciborium::into_writer(meta, &mut buf).map_err(meta_err)?;
        self.streams
            .insert(stream_key(scope, stream), buf)
            .map_err(meta_err)?;
        self.streams.flush().map_err(meta_err)?;
        Ok(())
    }

    /// Creates a stream with its initial segments.
    pub async fn create_stream(
        &self,
        scope: &str,
        stream: &str,
        config: StreamConfig,
    ) -> Result<StreamMeta> {
        let _change = self.changes.lock().await;
        self.require_scope(scope)?;
        validate_scoped_name(stream)?;
        if self
            .streams
            .contains_key(stream_key(scope, stream))
            .map_err(meta_err)?
        {
            return Err(ControllerError::StreamExists(format!("{scope}/{stream}")));
        }
        let meta = StreamMeta::new(config)?;
        self.persist(scope, stream, &meta)?;
        self.reconcile(scope, stream, &meta).await?;
        Ok(meta)
    }

    /// Changes a stream's scaling and retention policies.
    pub async fn update_stream(
        &self,
        scope: &str,
        stream: &str,
        config: StreamConfig,
    ) -> Result<StreamMeta> {
        let _change = self.changes.lock().await;
        let mut meta = self.describe(scope, stream)?;
        StreamMeta::new(config)?; // validates
        meta.config = config;
        self.persist(scope, stream, &meta)?;
        Ok(meta)
    }

    /// Seals `seal` and creates successors over `new_ranges`; returns them.
    pub async fn scale(
        &self,
        scope: &str,
        stream: &str,
        seal: &[SegmentId],
        new_ranges: &[KeyRange],
    ) -> Result<Vec<SegmentId>> {
        self.change(scope, stream, |meta| {
            if meta.mirror {
                return Err(ControllerError::Mirror(format!(
                    "{scope}/{stream} mirrors an edge stream: it scales when its source does"
                )));
            }
            Ok(meta.scale(seal, new_ranges)?)
        })
        .await
    }

    /// Seals every segment of the stream.
    pub async fn seal_stream(&self, scope: &str, stream: &str) -> Result<()> {
        self.change(scope, stream, |meta| {
            meta.seal();
            Ok(())
        })
        .await
    }

    /// Truncates the stream at `cut`: data before it is dropped, segments entirely
    /// before it are deleted.
    pub async fn truncate_stream(&self, scope: &str, stream: &str, cut: &StreamCut) -> Result<()> {
        self.change(scope, stream, |meta| Ok(meta.truncate(cut).map(|_| ())?))
            .await
    }

    /// Deletes a sealed stream and its segments.
    pub async fn delete_stream(&self, scope: &str, stream: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        let meta = self.describe(scope, stream)?;
        if !meta.sealed {
            return Err(ControllerError::NotSealed(format!("{scope}/{stream}")));
        }
        // Segments first: if we crash, the stream is still listed and deleting again
        // finishes the job.
        for rec in meta.segments.values() {
            self.delete_segment(&segment_name(scope, stream, rec.id))
                .await?;
        }
        self.streams
            .remove(stream_key(scope, stream))
            .map_err(meta_err)?;
        self.streams.flush().map_err(meta_err)?;
        Ok(())
    }

    /// Sets how long a silent reader keeps its segments (default 10 s).
    pub fn set_reader_timeout(&mut self, timeout: Duration) {
        self.reader_timeout = timeout;
    }

    /// The segment log it drives.
    pub fn log(&self) -> &Arc<SegmentLog> {
        &self.log
    }

    /// What each existing segment of the stream holds from `writer_id`.
    pub async fn writer_positions(
        &self,
        scope: &str,
        stream: &str,
        writer_id: u128,
    ) -> Result<Vec<WriterPosition>> {
        let meta = self.describe(scope, stream)?;
        // Include appends still waiting for their fsync (see `SegmentLog::settle`).
        self.log.settle().await?;
        let mut out = Vec::new();
        for rec in meta.segments.values() {
            match self
                .log
                .attribute(&segment_name(scope, stream, rec.id), writer_id)
            {
                Ok(last_event_number) => out.push(WriterPosition {
                    segment: rec.id,
                    range: rec.range,
                    last_event_number,
                }),
                Err(LogError::NoSuchSegment(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// The stream's current tail: each active segment at its length.
    pub fn tail_cut(&self, scope: &str, stream: &str) -> Result<StreamCut> {
        let meta = self.describe(scope, stream)?;
        let mut cut = StreamCut::default();
        for rec in meta.active() {
            let length = self.log.info(&segment_name(scope, stream, rec.id))?.length;
            cut.positions.insert(rec.id, length);
        }
        Ok(cut)
    }
}

fn decode(v: &[u8]) -> Result<StreamMeta> {
    ciborium::from_reader(v).map_err(|e| meta_err(format!("unreadable stream metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::log::{AppendOptions, LogConfig};
    use crate::stream::{RetentionPolicy, ScalingPolicy};

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            Node {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        async fn open(&self) -> (Controller, Arc<SegmentLog>) {
            let log = Arc::new(
                SegmentLog::open(self.dir.path().join("log"), LogConfig::default()).expect("log"),
            );
            let c = Controller::open(log.clone()).await.expect("controller");
            (c, log)
        }
    }

    fn fixed(n: u32) -> StreamConfig {
        StreamConfig {
            scaling: ScalingPolicy::Fixed { segments: n },
            retention: RetentionPolicy::Forever,
        }
    }

    #[tokio::test]
    async fn scopes_and_streams_survive_restart() {
        let node = Node::new();
        {
            let (c, log) = node.open().await;
            c.create_scope("site").expect("scope");
            assert!(matches!(
                c.create_scope("site"),
                Err(ControllerError::ScopeExists(_))
            ));
            assert!(c.create_scope("bad/name").is_err());
            assert!(matches!(
                c.create_stream("nope", "s", fixed(1)).await,
                Err(ControllerError::NoSuchScope(_))
            ));
            let meta = c
                .create_stream("site", "temps", fixed(3))
                .await
                .expect("stream");
            for rec in meta.active() {
                log.info(&segment_name("site", "temps", rec.id))
                    .expect("segment created");
            }
            assert!(matches!(
                c.delete_scope("site"),
                Err(ControllerError::ScopeNotEmpty(_))
            ));
        }
        let (c, _log) = node.open().await;
        assert_eq!(c.list_scopes().expect("scopes"), vec!["site"]);
        assert_eq!(c.list_streams("site").expect("streams"), vec!["temps"]);
        assert_eq!(c.describe("site", "temps").expect("meta").active().len(), 3);
    }

    #[tokio::test]
    async fn scale_seals_predecessors_in_the_log_and_open_finishes_an_interrupted_scale() {
        let node = Node::new();
        let (old, new) = {
            let (c, log) = node.open().await;
            c.create_scope("s").expect("scope");
            let meta = c.create_stream("s", "t", fixed(1)).await.expect("stream");
            let old = meta.active()[0].id;
            let name = segment_name("s", "t", old);
            log.append(&name, b"before", &AppendOptions::default())
                .await
                .expect("append");
            let new = c
                .scale("s", "t", &[old], &KeyRange::ALL.split(2))
                .await
                .expect("scale");
            assert!(matches!(
                log.append(&name, b"late", &AppendOptions::default()).await,
                Err(LogError::Sealed(_))
            ));
            for id in &new {
                log.info(&segment_name("s", "t", *id))
                    .expect("successor exists");
            }
            // Persist a further scale without carrying it out: a crash in between.
            let mut meta = c.describe("s", "t").expect("meta");
            let r = meta.segment(new[0]).expect("seg").range;
            let newer = meta.scale(&[new[0]], &r.split(2)).expect("scale");
            c.persist("s", "t", &meta).expect("persist");
            (new[0], newer)
        };
        let (_c, log) = node.open().await;
        assert!(log.info(&segment_name("s", "t", old)).expect("info").sealed);
        for id in &new {
            log.info(&segment_name("s", "t", *id))
                .expect("reconcile created the successor");
        }
    }

    #[tokio::test]
    async fn truncation_deletes_segments_before_the_cut_and_delete_needs_a_seal() {
        let node = Node::new();
        let (c, log) = node.open().await;
        c.create_scope("s").expect("scope");
        let meta = c.create_stream("s", "t", fixed(1)).await.expect("stream");
        let old = meta.active()[0].id;
        let new = c
            .scale("s", "t", &[old], &KeyRange::ALL.split(2))
            .await
            .expect("scale");
        for id in &new {
            log.append(
                &segment_name("s", "t", *id),
                b"0123456789",
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        }
        let mut cut = c.tail_cut("s", "t").expect("tail");
        for v in cut.positions.values_mut() {
            *v = 4;
        }
        c.truncate_stream("s", "t", &cut).await.expect("truncate");
        assert!(matches!(
            log.info(&segment_name("s", "t", old)),
            Err(LogError::NoSuchSegment(_))
        ));
        let n0 = segment_name("s", "t", new[0]);
        assert_eq!(log.info(&n0).expect("info").start, 4);
        let r = log
            .read(&n0, 4, 100, Duration::ZERO)
            .await
            .expect("read after the cut");
        assert_eq!(&r.to_bytes()[..], b"456789");
        assert!(matches!(
            c.delete_stream("s", "t").await,
            Err(ControllerError::NotSealed(_))
        ));
        c.seal_stream("s", "t").await.expect("seal");
        c.delete_stream("s", "t").await.expect("delete");
        assert!(log.info(&n0).is_err());
        c.delete_scope("s").expect("empty scope");
    }
}
