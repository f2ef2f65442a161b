//! [`SegmentLog`]: the segments of one container over one write-ahead log. Opening it
//! recovers: load the checkpoint and file indexes from sled, replay the newer files, cut
//! a torn tail, refuse corruption.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};
use tokio::sync::{watch, Notify};

use super::cache::{Cache, CacheKey};
use super::config::LogConfig;
use super::direct::open_direct_read;
use super::error::{LogError, Result};
use super::files::{
    create_file, file_path, holds_no_frame, later_batch_follows, list_files, open_file,
    read_frame_data, read_frame_data_direct, scan_file, sync_dir, BATCHES_AFTER_DURABLE,
};
use super::format::{Op, FILE_HEADER_LEN};
use super::fsync::FsyncHistogram;
use super::index::{chunk_name, is_chunk_name, Chunk, DataIndex, Extent, Source};
use super::manifest::{
    now_ms, parse_delta_name, ChunkRecord, ManifestWriter, RestoreReport, Snapshot,
};
use super::meta::{Checkpoint, Meta};
use super::table::{AppendOptions, AttributeBase, AttributeId, AttributeUpdate, Release, Table};
use super::tier2::Tier2;
use super::writer::{run, Batch, Payload, Syncer, Writer};

/// Locks a mutex, ignoring poisoning (a panicked holder leaves consistent data here:
/// every mutation is validated before it is made).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Identifies the group commit an operation rides on; see [`SegmentLog::durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the writer has made durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mark {
    pub seq: u64,
    pub failed: Option<String>,
    pub closed: bool,
}

pub(crate) struct Pending {
    /// The segments with every submitted operation applied; of the attributes, only
    /// those set by batches not yet durable (see [`AttributeBase`]).
    pub table: Table,
    /// Those attributes, `(segment id, attribute id)`, with the last batch that set each.
    pub fresh: HashMap<(u64, AttributeId), u64>,
    pub batch: Batch,
    pub failed: Option<String>,
    pub closing: bool,
}

impl Pending {
    /// Applies a validated operation to the pending table; it goes in the open batch.
    fn apply(&mut self, op: &Op) -> Result<()> {
        self.table.apply(op).map_err(LogError::Failed)?;
        self.record_fresh(op);
        Ok(())
    }

    /// Validates an append and applies it to the table ([`Table::append`]).
    fn append(
        &mut self,
        segment: &str,
        len: u64,
        opts: &AppendOptions,
        base: AttributeBase<'_>,
    ) -> Result<(Op, u64)> {
        let (op, offset) = self.table.append(segment, len, opts, base)?;
        self.record_fresh(&op);
        Ok((op, offset))
    }

    /// Remembers which batch set the attributes `op` sets.
    fn record_fresh(&mut self, op: &Op) {
        let seq = self.batch.seq;
        if let Op::Append { seg, attrs, .. }
        | Op::Merge {
            target: seg, attrs, ..
        } = op
        {
            for (id, _) in attrs {
                self.fresh.insert((*seg, *id), seq);
            }
        }
    }

    /// Batch `seq` is in the durable table: drop the attributes no later batch set.
    pub fn settled(&mut self, seq: u64) {
        let table = &mut self.table;
        self.fresh.retain(|(seg, id), set_by| {
            let keep = *set_by > seq;
            if !keep {
                table.forget_attribute(*seg, *id);
            }
            keep
        });
    }
}

pub(crate) struct Durable {
    pub table: Table,
    pub index: DataIndex,
    pub files: BTreeMap<u64, Arc<File>>,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub wal_dir: PathBuf,
    pub config: LogConfig,
    pub pending: Mutex<Pending>,
    pub writer_cv: Condvar,
    pub room: Notify,
    pub durable: RwLock<Durable>,
    pub durable_tx: watch::Sender<Mark>,
    pub cache: Mutex<Cache>,
    pub meta: Meta,
    pub tier2: Option<Arc<dyn Tier2>>,
    /// First file the persisted checkpoint replays; older files may be deleted.
    pub replay_from: AtomicU64,
    /// Bytes only in the log (the index's `log_bytes`), published by whoever changes
    /// the index, so that the append path checks the Tier-2 backlog without a lock.
    pub untiered: Arc<Backlog>,
    /// Tier-2 chunks no segment needs any more, to delete on the next move.
    pub garbage: Mutex<Vec<(u64, Chunk)>>,
    /// Serializes Tier-2 passes; what the last one left.
    pub mover: tokio::sync::Mutex<MoverState>,
    /// Tier-2 chunks being fetched (by a read or a prefetch), so each is fetched once.
    pub fetching: Mutex<HashMap<CacheKey, Arc<ChunkFetch>>>,
    /// How long the group-commit fsyncs take.
    pub fsync: FsyncHistogram,
    /// The file system refused a direct write: the writer builds batches for the page
    /// cache from then on.
    pub direct_refused: AtomicBool,
    /// Free space on the disk (appends are refused below the reserve).
    pub disk: super::room::Room,
    /// Damaged ranges reads met.
    pub damage: super::repair::DamageLog,
}

/// Bytes of segment data only in the log, not yet on Tier-2, and a way to wait for
/// them to grow (the Tier-2 mover starts a pass early when they do).
#[derive(Debug)]
pub(crate) struct Backlog {
    bytes: AtomicU64,
    grew: Notify,
}

impl Backlog {
    fn new(bytes: u64) -> Self {
        Backlog {
            bytes: AtomicU64::new(bytes),
            grew: Notify::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Publishes the backlog (once per batch or chunk moved).
    pub fn set(&self, bytes: u64) {
        if self.bytes.swap(bytes, Ordering::Relaxed) < bytes {
            self.grew.notify_waiters();
        }
    }

    /// Returns once the backlog is at least `bytes`.
    pub async fn reaches(&self, bytes: u64) {
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if self.bytes() >= bytes {
                return;
            }
            grew.await;
        }
    }
}

/// One fetch of a chunk, shared by everyone who wants it meanwhile.
pub(crate) type ChunkFetch = tokio::sync::OnceCell<std::result::Result<Bytes, String>>;

/// What the Tier-2 passes remember between runs.
#[derive(Debug, Default)]
pub(crate) struct MoverState {
    /// Chunk objects no record names (left by a crash) were looked for and deleted.
    swept: bool,
    manifests: ManifestWriter,
}

impl Inner {
    /// One log frame's data if the cache holds it.
    fn cached_frame(&self, e: &Extent) -> Option<Bytes> {
        let d = lock(&self.cache).get(CacheKey::Frame(e.file_id, e.frame_pos))?;
        (d.len() as u64 == e.len).then_some(d)
    }

    /// The data of one log frame, from the cache or the file (CRC checked).
    fn frame_data(&self, e: &Extent, file: Option<Arc<File>>) -> Result<Bytes> {
        match self.cached_frame(e) {
            Some(d) => Ok(d),
            None => self.read_frame(e, file),
        }
    }

    /// The data of one log frame, read from its file (CRC checked) and cached.
    fn read_frame(&self, e: &Extent, file: Option<Arc<File>>) -> Result<Bytes> {
        let key = CacheKey::Frame(e.file_id, e.frame_pos);
        let path = file_path(&self.wal_dir, e.file_id);
        let file = file.ok_or_else(|| LogError::MissingFile {
            path: path.clone(),
            reason: "it holds live data".into(),
        })?;
        let d = read_frame_data(&file, &path, e.frame_pos)?;
        if d.len() as u64 != e.len {
            return Err(LogError::Corrupt {
                path,
                offset: e.frame_pos,
                reason: format!("frame holds {} bytes, index says {}", d.len(), e.len),
            });
        }
        lock(&self.cache).insert(key, d.clone());
        Ok(d)
    }

    /// The data of one log frame for a move: from the cache, else read with direct I/O
    /// (through `direct`, the files opened that way so far), else as
    /// [`Inner::read_frame`] reads it. A move reads its data once: through the page
    /// cache, that took about a sixth of a standalone node's CPU under `trib bench
    /// write` (perf: the kernel's `_copy_to_iter` and page allocation).
    fn frame_data_to_move(
        &self,
        e: &Extent,
        file: Option<Arc<File>>,
        direct: &mut HashMap<u64, Option<File>>,
    ) -> Result<Bytes> {
        if let Some(d) = self.cached_frame(e) {
            return Ok(d);
        }
        let path = file_path(&self.wal_dir, e.file_id);
        let handle = direct
            .entry(e.file_id)
            .or_insert_with(|| open_direct_read(&path).ok().flatten());
        if let Some(h) = handle {
            if let Ok(d) = read_frame_data_direct(h, &path, e.frame_pos, e.len) {
                if d.len() as u64 == e.len {
                    return Ok(d);
                }
            }
            // Whatever went wrong, the ordinary read finds it again and says what.
        }
        self.read_frame(e, file)
    }

    /// A durable attribute (for the pending table: see [`AttributeBase`]). Takes the
    /// durable state's read lock: the caller may hold `pending`, never the reverse.
    fn durable_attribute(&self, seg: u64, id: AttributeId) -> Option<i64> {
        let d = self.durable.read().unwrap_or_else(|e| e.into_inner());
        d.table.attribute(seg, id)
    }

    pub fn fail(&self, reason: String) {
        lock(&self.pending).failed = Some(reason.clone());
        self.durable_tx.send_modify(|m| m.failed = Some(reason));
        self.room.notify_waiters();
    }

    /// Deletes the files among `candidates` that hold no live data and are no longer
    /// replayed, then fsyncs the directory.
    pub fn delete_files(&self, candidates: Vec<u64>) -> Result<()> {
        let replay_from = self.replay_from.load(Ordering::SeqCst);
        let mut deleted = false;
        for id in candidates {
            {
                let mut d = self.durable.write().unwrap_or_else(|e| e.into_inner());
                if id >= replay_from || d.index.is_live(id) {
                    continue;
                }
                d.files.remove(&id);
            }
            if let Some(s) = &self.config.faults {
                s.0.point(super::faults::Point::Delete)
                    .map_err(|e| LogError::io(file_path(&self.wal_dir, id), e))?;
            }
            remove_log_file(&self.wal_dir, &self.meta, id)?;
            lock(&self.cache).forget_file(id);
            tracing::debug!(
                file = id,
                "log file deleted: all its data truncated or moved"
            );
            deleted = true;
        }
        if deleted {
            sync_dir(&self.wal_dir)?;
        }
        Ok(())
    }
}

/// Most chunks a Tier-2 pass moves at once (each of another data id; each holds its
/// data, up to `chunk_mb`, in memory until Tier-2 has it).
const CONCURRENT_MOVES: usize = 4;

/// Log extents of one data id to move into one chunk, in order, and their files.
type Run = (u64, Vec<Extent>, Vec<Option<Arc<File>>>);

/// Why a chunk's move failed.
enum MoveFailure {
    /// The log could not give the run's data (a corrupt frame, a missing file): only
    /// that data id is held back, in the log.
    Unreadable(u64, LogError),
    /// Tier-2 or the metadata store failed: the pass stops.
    Failed(LogError),
}

/// Reads one run of log extents (off the runtime's threads), writes it to Tier-2 as a
/// new chunk, and returns the chunk, not yet recorded.
async fn store_chunk(
    inner: Arc<Inner>,
    tier2: Arc<dyn Tier2>,
    (data_id, run, files): Run,
) -> std::result::Result<(u64, Chunk), MoveFailure> {
    let data_offset = run.first().map_or(0, |e| e.data_offset);
    let len: u64 = run.iter().map(|e| e.len).sum();
    let (data, crc) = tokio::task::spawn_blocking(move || {
        let mut data = BytesMut::with_capacity(len as usize);
        let mut direct = HashMap::new();
        for (e, f) in run.iter().zip(files) {
            data.extend_from_slice(&inner.frame_data_to_move(e, f, &mut direct)?);
        }
        let crc = crc32c::crc32c(&data);
        Ok::<_, LogError>((data.freeze(), crc))
    })
    .await
    .map_err(|e| {
        MoveFailure::Failed(LogError::Tier2(format!(
            "reading a chunk's data failed: {e}"
        )))
    })?
    .map_err(|e| MoveFailure::Unreadable(data_id, e))?;
    let chunk = Chunk {
        data_offset,
        len,
        crc,
        name: chunk_name(data_id, data_offset).into(),
    };
    tier2.put(&chunk.name, data).await.map_err(|e| {
        MoveFailure::Failed(t2err(
            tier2.as_ref(),
            &format!("writing chunk {}", chunk.name),
            e,
        ))
    })?;
    Ok((data_id, chunk))
}

/// What [`SegmentLog::move_to_tier2`] passes did (each adds to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Chunks written to Tier-2.
    pub chunks_written: u64,
    /// Bytes moved.
    pub bytes_moved: u64,
    /// Chunks deleted from Tier-2 because no segment needs them (or, on the first pass,
    /// because no record names them).
    pub chunks_deleted: u64,
    /// A manifest object was written (see [`crate::log::manifest`]).
    pub manifest_written: bool,
    /// Bytes of manifest objects written.
    pub manifest_bytes: u64,
}

/// Chunks fetched ahead of a sequential reader, at most.
const PREFETCH_CHUNKS: u64 = 2;

/// A segment as readers see it (durable state only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Name.
    pub name: String,
    /// First readable offset.
    pub start: u64,
    /// Durable length.
    pub length: u64,
    /// Sealed.
    pub sealed: bool,
}

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Offset of the first byte read.
    pub offset: u64,
    /// The bytes read, in order, in the pieces the log holds them in (log frames,
    /// Tier-2 chunks): nothing is copied to join them. None when the wait timed out at
    /// the tail or at the end of a sealed segment.
    pub parts: Vec<Bytes>,
    /// The segment is sealed and `offset + len()` is its end.
    pub end_of_segment: bool,
}

impl ReadResult {
    /// Bytes read.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The bytes read in one buffer (copied together when there are several parts).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut b = BytesMut::with_capacity(self.len());
                parts.iter().for_each(|p| b.extend_from_slice(p));
                b.freeze()
            }
        }
    }
}

/// Segments of one container sharing one write-ahead log. See the module docs of
/// [`crate::log`].
pub struct SegmentLog {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Free bytes a log needs on its disk to open (its metadata store writes then); at
/// most the configured reserve.
const OPEN_ROOM: u64 = 8 << 20;

impl SegmentLog {
    /// Opens the container in `dir` (created if absent), recovering from whatever a crash
    /// left: a torn tail is cut, corruption is refused with an error naming the file and
    /// offset. The log is the only storage (the edge).
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<SegmentLog> {
        Self::open_with(dir, config, None)
    }

    /// Like [`SegmentLog::open`], with a Tier-2 that [`SegmentLog::move_to_tier2`] moves
    /// data to (the cloud).
    pub fn open_tiered(
        dir: impl AsRef<Path>,
        config: LogConfig,
        tier2: Arc<dyn Tier2>,
    ) -> Result<SegmentLog> {
        Self::open_with(dir, config, Some(tier2))
    }

    /// Opens the log; on a full disk, waits for room and tries again (recovery is
    /// idempotent), so a node restarted on a full disk starts by itself once there is
    /// room instead of failing in its metadata store.
    fn open_with(
        dir: impl AsRef<Path>,
        config: LogConfig,
        tier2: Option<Arc<dyn Tier2>>,
    ) -> Result<SegmentLog> {
        let dir = dir.as_ref();
        let mut warned = false;
        let mut wait = |why: &dyn std::fmt::Display| {
            if !warned {
                tracing::warn!(dir = %dir.display(), reason = %why,
                    "the disk is full: the log opens once there is room");
                warned = true;
            }
            std::thread::sleep(super::room::RETRY_FULL_EVERY);
        };
        loop {
            // The metadata store writes as it opens, and a write it cannot finish
            // leaves it unreadable (sled: an empty snapshot file, then "corrupted
            // data"): it opens only with room for that.
            let need = config.reserve_bytes.min(OPEN_ROOM);
            match super::room::free_bytes(dir.parent().unwrap_or(dir)) {
                Some(free) if free < need => {
                    wait(&format!("{free} bytes free, {need} needed to open"));
                    continue;
                }
                _ => {}
            }
            match Self::open_once(dir, config.clone(), tier2.clone()) {
                Err(e) if e.is_disk_full() => {
                    super::meta::forget_empty_snapshots(&dir.join("meta"));
                    wait(&e);
                }
                r => return r,
            }
        }
    }

    fn open_once(
        dir: &Path,
        config: LogConfig,
        tier2: Option<Arc<dyn Tier2>>,
    ) -> Result<SegmentLog> {
        config.validate()?;
        let dir = dir.to_path_buf();
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| LogError::io(&wal_dir, e))?;
        let meta_dir = dir.join("meta");
        let files_on_disk = list_files(&wal_dir)?;
        if !meta_dir.exists() && !files_on_disk.is_empty() {
            return Err(LogError::MissingFile {
                path: meta_dir,
                reason: "log files exist but their metadata store does not".into(),
            });
        }
        let meta = Meta::open(&meta_dir)?;
        let recovered = recover(&wal_dir, &meta, &files_on_disk)?;
        let Recovered {
            table,
            index,
            files,
            writer,
            syncer,
            replay_from,
            garbage,
            damaged,
        } = recovered;
        if tier2.is_none() && index.tiered_ids().next().is_some() {
            return Err(LogError::Meta {
                path: meta_dir,
                reason: "segment data is on Tier-2, but no Tier-2 is configured".into(),
            });
        }
        if let Some(seam) = &config.faults {
            // What recovery left is durable (the seam's power loss keeps it).
            for id in files.keys() {
                let path = file_path(&wal_dir, *id);
                if let Ok(m) = std::fs::metadata(&path) {
                    seam.0.durable(&path, m.len());
                }
            }
        }
        let last_seq = syncer.last_seq;
        let untiered = Arc::new(Backlog::new(index.log_bytes()));
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            wal_dir,
            pending: Mutex::new(Pending {
                table: table.without_attributes(),
                fresh: HashMap::new(),
                batch: Batch::new(last_seq + 1, None),
                failed: None,
                closing: false,
            }),
            writer_cv: Condvar::new(),
            room: Notify::new(),
            durable: RwLock::new(Durable {
                table,
                index,
                files,
            }),
            durable_tx: watch::channel(Mark {
                seq: last_seq,
                ..Mark::default()
            })
            .0,
            cache: Mutex::new(Cache::new(config.cache_bytes)),
            disk: super::room::Room::new(
                &dir,
                config.reserve_bytes,
                2 * config.max_batch_bytes as u64,
            ),
            config,
            meta,
            tier2,
            replay_from: AtomicU64::new(replay_from),
            untiered,
            garbage: Mutex::new(garbage),
            mover: tokio::sync::Mutex::new(MoverState::default()),
            fsync: FsyncHistogram::default(),
            direct_refused: AtomicBool::new(false),
            fetching: Mutex::new(HashMap::new()),
            damage: super::repair::DamageLog::with(damaged),
        });
        let thread_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("tributary-log-writer".into())
            .spawn(move || run(thread_inner, writer, syncer))
            .map_err(|e| LogError::io(&dir, e))?;
        Ok(SegmentLog {
            inner,
            writer: Some(writer),
        })
    }

    fn submit<T>(&self, f: impl FnOnce(&mut Pending) -> Result<T>) -> Result<(T, Ticket)> {
        let mut p = lock(&self.inner.pending);
        if let Some(r) = &p.failed {
            return Err(LogError::Failed(r.clone()));
        }
        if p.closing {
            return Err(LogError::Closed);
        }
        let was_empty = p.batch.is_empty();
        let out = f(&mut p)?;
        // Nothing batched (a no-op): wait only for what was submitted before.
        let ticket = Ticket(p.batch.seq - u64::from(p.batch.is_empty()));
        if was_empty || p.batch.bytes() >= self.inner.config.max_batch_bytes {
            self.inner.writer_cv.notify_one();
        }
        Ok((out, ticket))
    }

    /// Submits an append without waiting: returns the offset its data will have and the
    /// ticket to wait on with [`SegmentLog::durable`]. Appends submitted one after the
    /// other are stored in that order; a conditional append sees the ones before it.
    /// Refuses with [`LogError::Backpressure`] while the next batch is full.
    pub fn submit_append<'a>(
        &self,
        segment: &str,
        data: impl Into<Payload<'a>>,
        opts: &AppendOptions,
    ) -> Result<(u64, Ticket)> {
        self.submit_payload(segment, data.into(), opts)
    }

    // Not generic, so that it is compiled (and its callees inlined) once, here.
    fn submit_payload(
        &self,
        segment: &str,
        data: Payload<'_>,
        opts: &AppendOptions,
    ) -> Result<(u64, Ticket)> {
        let len = data.len();
        let cfg = &self.inner.config;
        if len > cfg.max_append_bytes {
            return Err(LogError::TooLarge {
                size: len,
                max: cfg.max_append_bytes,
            });
        }
        if opts.attributes.len() > super::writer::MAX_FRAME_ATTRIBUTES {
            return Err(LogError::TooManyAttributes);
        }
        if let Some(tier2) = &self.inner.tier2 {
            let backlog = self.tier2_backlog();
            if backlog >= cfg.max_tier2_backlog_bytes {
                return Err(LogError::Tier2Backlog {
                    bytes: backlog,
                    limit: cfg.max_tier2_backlog_bytes,
                    tier2: tier2.describe(),
                });
            }
        }
        self.submit(|p| {
            // After `submit`'s own checks: a failed or closed log says so, not "full".
            self.inner.disk.check()?;
            let queued = p.batch.bytes();
            if queued >= cfg.max_batch_bytes {
                return Err(LogError::Backpressure(queued));
            }
            let base = |seg, id| self.inner.durable_attribute(seg, id);
            let (op, offset) = p.append(segment, len as u64, opts, &base)?;
            p.batch.push_append(op, data, cfg.max_frame_data_bytes);
            Ok(offset)
        })
    }

    /// Appends and waits until the data is durable; returns its offset.
    pub async fn append<'a>(
        &self,
        segment: &str,
        data: impl Into<Payload<'a>>,
        opts: &AppendOptions,
    ) -> Result<u64> {
        let data = data.into();
        loop {
            match self.submit_payload(segment, data, opts) {
                Ok((offset, ticket)) => {
                    self.durable(ticket).await?;
                    return Ok(offset);
                }
                Err(LogError::Backpressure(_)) => self.wait_for_room().await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the next batch has room, after [`LogError::Backpressure`].
    pub async fn wait_for_room(&self) {
        let room = self.inner.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        {
            let p = lock(&self.inner.pending);
            if p.batch.bytes() < self.inner.config.max_batch_bytes
                || p.failed.is_some()
                || p.closing
            {
                return;
            }
        }
        room.await
    }

    /// Waits until the batch of `ticket` is durable (fdatasync'ed).
    pub async fn durable(&self, ticket: Ticket) -> Result<()> {
        let mut rx = self.inner.durable_tx.subscribe();
        loop {
            {
                let m = rx.borrow_and_update();
                if m.seq >= ticket.0 {
                    return Ok(());
                }
                if let Some(r) = &m.failed {
                    return Err(LogError::Failed(r.clone()));
                }
                if m.closed {
                    return Err(LogError::Closed);
                }
            }
            rx.changed().await.map_err(|_| LogError::Closed)?;
        }
    }

    /// Waits until everything submitted so far is durable (or refused): afterwards
    /// [`SegmentLog::info`] shows every append submitted before the call.
    pub async fn settle(&self) -> Result<()> {
        let ((), ticket) = self.submit(|_| Ok(()))?;
        self.durable(ticket).await
    }

    /// How long its group-commit fsyncs took so far.
    pub fn fsync_histogram(&self) -> &FsyncHistogram {
        &self.inner.fsync
    }

    /// Whether appends are refused for want of space on the disk now (see
    /// [`LogConfig::reserve_bytes`]); the log takes them again by itself once there is
    /// room.
    pub fn disk_full(&self) -> bool {
        self.inner.disk.check().is_err()
    }

    /// Byte ranges reads could not serve since the log opened (damaged frames or
    /// chunks), for `status`: the first 64.
    pub fn damaged(&self) -> Vec<super::repair::Damage> {
        self.inner.damage.list()
    }

    /// Why the log stopped taking writes (a failed write or fsync), if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.durable_tx.borrow().failed.clone()
    }

    /// Has the batch of `ticket` been made durable? Never waits.
    pub fn is_durable(&self, ticket: Ticket) -> Result<bool> {
        let m = self.inner.durable_tx.borrow();
        if m.seq >= ticket.0 {
            return Ok(true);
        }
        match &m.failed {
            Some(r) => Err(LogError::Failed(r.clone())),
            None => Ok(false),
        }
    }

    async fn submit_op(
        &self,
        f: impl FnOnce(&Table, AttributeBase<'_>) -> Result<Option<Op>>,
    ) -> Result<()> {
        let ((), ticket) = self.submit(|p| {
            let base = |seg, id| self.inner.durable_attribute(seg, id);
            if let Some(op) = f(&p.table, &base)? {
                p.apply(&op)?;
                p.batch.push_op(op);
            }
            Ok(())
        })?;
        self.durable(ticket).await
    }

    /// Creates an empty segment.
    pub async fn create(&self, segment: &str) -> Result<()> {
        self.submit_op(|t, _| t.check_create(segment).map(Some))
            .await
    }

    /// Seals a segment (idempotent); returns its final length.
    pub async fn seal(&self, segment: &str) -> Result<u64> {
        let mut length = 0;
        self.submit_op(|t, _| {
            length = t.get(segment)?.length;
            t.check_seal(segment)
        })
        .await?;
        Ok(length)
    }

    /// Drops the data below `offset`; reads below it fail with [`LogError::Truncated`].
    /// Truncating below the current start does nothing.
    pub async fn truncate(&self, segment: &str, offset: u64) -> Result<()> {
        self.submit_op(|t, _| t.check_truncate(segment, offset))
            .await
    }

    /// Atomically appends the whole of the sealed segment `source` to `target` and
    /// removes `source`; returns the offset in `target` where the source's data starts.
    /// No data is copied; the source's attributes are dropped with it.
    pub async fn merge(&self, target: &str, source: &str) -> Result<u64> {
        self.merge_with(target, source, &[]).await
    }

    /// [`SegmentLog::merge`] that also applies `attributes` to `target`, in the same
    /// atomic operation (one log frame): either the source's data is in `target` and
    /// the attributes are set, or neither. If a condition fails
    /// ([`LogError::AttributeConflict`]), nothing changes and `source` stays.
    pub async fn merge_with(
        &self,
        target: &str,
        source: &str,
        attributes: &[AttributeUpdate],
    ) -> Result<u64> {
        if attributes.len() > super::writer::MAX_FRAME_ATTRIBUTES {
            return Err(LogError::TooManyAttributes);
        }
        let mut at = 0;
        self.submit_op(|t, base| {
            let op = t.check_merge(target, source, attributes, base)?;
            at = t.get(target)?.length;
            Ok(Some(op))
        })
        .await?;
        Ok(at)
    }

    /// Deletes a segment and releases its data.
    pub async fn delete(&self, segment: &str) -> Result<()> {
        self.submit_op(|t, _| t.check_delete(segment).map(Some))
            .await
    }

    /// The durable state of a segment.
    pub fn info(&self, segment: &str) -> Result<SegmentInfo> {
        let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
        let s = d.table.get(segment)?;
        Ok(SegmentInfo {
            name: s.name.clone(),
            start: s.start,
            length: s.length,
            sealed: s.sealed,
        })
    }

    /// The durable value of a segment's attribute `id`.
    pub fn attribute(&self, segment: &str, id: AttributeId) -> Result<Option<i64>> {
        let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
        Ok(d.table.get(segment)?.attributes.get(&id).copied())
    }

    /// The durable attributes of a segment with ids in `ids` (a segment can hold tens
    /// of thousands: ask for the ones needed).
    pub fn attributes(
        &self,
        segment: &str,
        ids: impl std::ops::RangeBounds<AttributeId>,
    ) -> Result<BTreeMap<AttributeId, i64>> {
        let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
        let s = d.table.get(segment)?;
        Ok(s.attributes.range(ids).map(|(k, v)| (*k, *v)).collect())
    }

    /// The limits and timing it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// A named tree in the log's metadata store (sled), for metadata kept next to the
    /// log. The log's own keys live in the default tree.
    pub fn meta_tree(&self, name: &str) -> Result<sled::Tree> {
        self.inner.meta.tree(name)
    }

    /// Names of all segments (durable state), sorted.
    pub fn list(&self) -> Vec<String> {
        let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = d.table.segments().map(|s| s.name.clone()).collect();
        v.sort();
        v
    }

    /// Reads up to `max_len` bytes from `offset`. At the tail of an unsealed segment it
    /// waits up to `timeout` for data and returns empty data if none came.
    pub async fn read(
        &self,
        segment: &str,
        offset: u64,
        max_len: usize,
        timeout: Duration,
    ) -> Result<ReadResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.durable_tx.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.try_read(segment, offset, max_len).await? {
                return Ok(r);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => {
                    return Ok(ReadResult {
                        offset,
                        parts: Vec::new(),
                        end_of_segment: false,
                    })
                }
                Ok(Err(_)) => return Err(LogError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Reads without waiting; `None` at the tail of an unsealed segment.
    async fn try_read(
        &self,
        segment: &str,
        offset: u64,
        max_len: usize,
    ) -> Result<Option<ReadResult>> {
        let (plan, end_of_segment, prefetch) = {
            let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
            let s = d.table.get(segment)?;
            if offset < s.start {
                return Err(LogError::Truncated {
                    segment: segment.to_string(),
                    offset,
                    start: s.start,
                });
            }
            if offset > s.length {
                return Err(LogError::BeyondEnd {
                    segment: segment.to_string(),
                    offset,
                    length: s.length,
                });
            }
            if offset == s.length && !s.sealed {
                return Ok(None);
            }
            let n = (s.length - offset).min(max_len as u64);
            let mut plan: Vec<(u64, Source, Option<Arc<File>>)> = Vec::new();
            for (data_id, data_offset, len) in s.locate(offset, n) {
                let found =
                    d.index
                        .find(data_id, data_offset, len)
                        .ok_or_else(|| LogError::Meta {
                            path: self.inner.dir.join("meta"),
                            reason: format!("no extent for data {data_id} at {data_offset}"),
                        })?;
                for src in found {
                    let file = match &src {
                        Source::Log(e, ..) => d.files.get(&e.file_id).cloned(),
                        Source::Tier2(..) => None,
                    };
                    plan.push((data_id, src, file));
                }
            }
            // A reader in Tier-2 data most likely reads on: fetch the next chunks
            // (as many as the cache holds besides this one).
            let prefetch = match plan.last() {
                Some((data_id, Source::Tier2(c, ..), _)) => {
                    let room = (self.inner.config.cache_bytes as u64 / c.len.max(1))
                        .saturating_sub(1)
                        .min(PREFETCH_CHUNKS);
                    let next = d.index.chunks_after(*data_id, c.data_offset, room as usize);
                    next.into_iter().map(|c| (*data_id, c)).collect()
                }
                _ => Vec::new(),
            };
            (plan, s.sealed && offset + n == s.length, prefetch)
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for (data_id, c) in prefetch {
                rt.spawn(self::prefetch(Arc::downgrade(&self.inner), data_id, c));
            }
        }
        let mut parts = Vec::with_capacity(plan.len());
        let mut at = offset;
        let mut end_of_segment = end_of_segment;
        for (data_id, src, file) in plan {
            let (data, skip, take) = match src {
                Source::Log(e, skip, take) => (self.inner.frame_data(&e, file), skip, take),
                Source::Tier2(c, skip, take) => {
                    (chunk_data(&self.inner, data_id, &c).await, skip, take)
                }
            };
            let data = match data {
                Ok(d) => d,
                // A damaged piece ends the read: what comes before it is served, and a
                // read that starts at it gets an error naming the bytes it spans.
                Err(_) if !parts.is_empty() => {
                    end_of_segment = false;
                    break;
                }
                Err(
                    e @ (LogError::Corrupt { .. }
                    | LogError::MissingFile { .. }
                    | LogError::Tier2(_)),
                ) => {
                    let d = super::repair::Damage {
                        segment: segment.to_string(),
                        from: at,
                        to: at + take,
                        reason: e.to_string(),
                    };
                    self.inner.damage.met(&d);
                    return Err(LogError::Unreadable {
                        segment: d.segment,
                        from: d.from,
                        to: d.to,
                        reason: d.reason,
                    });
                }
                Err(e) => return Err(e),
            };
            if take > 0 {
                parts.push(data.slice(skip as usize..(skip + take) as usize));
                at += take;
            }
        }
        Ok(Some(ReadResult {
            offset,
            parts,
            end_of_segment,
        }))
    }

    fn tier2(&self) -> Result<&Arc<dyn Tier2>> {
        self.inner
            .tier2
            .as_ref()
            .ok_or_else(|| LogError::Tier2("no Tier-2 is configured".into()))
    }

    /// If the container directory `dir` is empty or absent and `tier2` holds a manifest,
    /// restores the container from Tier-2 alone (the node lost its local disk) and says
    /// how far that reaches; then open it with [`SegmentLog::open_tiered`]. `Ok(None)`:
    /// `dir` holds a container already, or Tier-2 holds no manifest.
    pub async fn restore_from_tier2(
        dir: impl AsRef<Path>,
        tier2: &dyn Tier2,
    ) -> Result<Option<RestoreReport>> {
        super::manifest::restore(dir.as_ref(), tier2).await
    }

    /// Bytes of segment data only in the log, not yet on Tier-2. With a Tier-2, appends
    /// are refused with [`LogError::Tier2Backlog`] while this is at
    /// [`LogConfig::max_tier2_backlog_bytes`].
    pub fn tier2_backlog(&self) -> u64 {
        self.inner.untiered.bytes()
    }

    /// The Tier-2 backlog, to wait on without keeping the log open.
    pub(crate) fn backlog(&self) -> Arc<Backlog> {
        self.inner.untiered.clone()
    }

    /// Moves durable data from the log to Tier-2, oldest first, in chunks of up to
    /// `max_chunk_bytes`, writes the manifest (see [`crate::log::manifest`]), and
    /// deletes what no segment needs any more: Tier-2 chunks below a truncation (once a
    /// manifest no longer lists them), and log files whose data has all moved. A chunk
    /// counts only once Tier-2 has it durably and the metadata store records it; a
    /// crash in between leaves the data in the log and an object that the first pass
    /// after a restart deletes. A failed pass changes nothing that matters: the next
    /// one carries on. What the pass did is added to `stats`, also when it fails part
    /// of the way (the chunks moved until then stay moved).
    pub async fn move_to_tier2(&self, max_chunk_bytes: u64, stats: &mut MoveStats) -> Result<()> {
        let tier2 = self.tier2()?.clone();
        let mut state = self.inner.mover.lock().await;
        if !state.swept {
            stats.chunks_deleted += self.sweep(tier2.as_ref(), &mut state.manifests).await?;
            state.swept = true;
        }
        // Garbage first, then the snapshot: every chunk taken here was freed by an
        // operation the snapshot includes, so the manifest written below needs none.
        let garbage = std::mem::take(&mut *lock(&self.inner.garbage));
        let freed: Vec<(u64, u64)> = garbage.iter().map(|(id, c)| (*id, c.data_offset)).collect();
        let result = self.move_pass(&tier2, &mut state, max_chunk_bytes, stats, &freed);
        let unmoved = match result.await {
            Ok(unmoved) => unmoved,
            Err(e) => {
                lock(&self.inner.garbage).extend(garbage);
                return Err(e);
            }
        };
        // A manifest object that no longer needs the garbage is written. Records go
        // first (durably), then objects: a crash in between leaves objects no record
        // names, which the first pass after a start deletes; the other way round it
        // could leave a record naming a deleted object.
        if let Err(e) = self.inner.meta.remove_chunks(freed) {
            lock(&self.inner.garbage).extend(garbage);
            return Err(e);
        }
        let mut garbage = garbage.into_iter();
        while let Some((data_id, c)) = garbage.next() {
            lock(&self.inner.cache).forget(CacheKey::Chunk(data_id, c.data_offset));
            if let Err(e) = tier2.delete(&c.name).await {
                // The rest waits for the next pass.
                let mut g = lock(&self.inner.garbage);
                g.push((data_id, c.clone()));
                g.extend(garbage);
                return Err(t2err(
                    tier2.as_ref(),
                    &format!("deleting chunk {}", c.name),
                    e,
                ));
            }
            stats.chunks_deleted += 1;
        }
        unmoved.map_or(Ok(()), Err)
    }

    /// Snapshot, move everything durable in the log, write a manifest object if
    /// anything changed since the last one; it names `freed` (garbage chunks taken
    /// before the snapshot, by data id and offset) as removed. `Ok(Some(e))`: that
    /// done, some data could not be moved (the log could not give it), and why.
    async fn move_pass(
        &self,
        tier2: &Arc<dyn Tier2>,
        state: &mut MoverState,
        max_chunk_bytes: u64,
        stats: &mut MoveStats,
        freed: &[(u64, u64)],
    ) -> Result<Option<LogError>> {
        let taken_at_ms = now_ms();
        let (table, seq, budget) = {
            let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
            let seq = self.inner.durable_tx.borrow().seq;
            (d.table.clone(), seq, d.index.log_bytes())
        };
        let trees = self.inner.meta.dump_trees()?;
        // Move what the log holds now; data appended meanwhile waits for the next pass.
        // Data the log cannot give (a corrupt frame) stays there, and the pass reports
        // it at the end; the other data ids move on.
        let mut examined = 0;
        let mut unreadable = HashSet::new();
        let mut unmoved = None;
        while examined < budget {
            let runs: Vec<Run> = {
                let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
                d.index
                    .movable(max_chunk_bytes)
                    .into_iter()
                    .filter(|(id, _)| !unreadable.contains(id))
                    .map(|(id, run)| {
                        let files = run
                            .iter()
                            .map(|e| d.files.get(&e.file_id).cloned())
                            .collect();
                        (id, run, files)
                    })
                    .collect()
            };
            if runs.is_empty() {
                break;
            }
            examined += runs
                .iter()
                .flat_map(|(_, run, _)| run.iter().map(|e| e.len))
                .sum::<u64>();
            for (data_id, e) in self
                .move_runs(tier2, runs, stats, &mut state.manifests)
                .await?
            {
                unreadable.insert(data_id);
                match unmoved {
                    None => unmoved = Some(e),
                    Some(_) => tracing::warn!(error = %e, "data could not be moved to Tier-2"),
                }
            }
        }
        let mut encoded_trees = Vec::new();
        ciborium::into_writer(&trees, &mut encoded_trees)
            .map_err(|e| LogError::Tier2(format!("encoding metadata: {e}")))?;
        let at = (seq, crc32c::crc32c(&encoded_trees));
        if state.manifests.is_current(at) && freed.is_empty() {
            return Ok(unmoved);
        }
        let all_chunks = || {
            let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
            d.index
                .chunks()
                .map(|(data_id, c)| ChunkRecord {
                    data_id,
                    data_offset: c.data_offset,
                    len: c.len,
                    crc: c.crc,
                })
                .collect()
        };
        let snapshot = Snapshot {
            taken_at_ms,
            at,
            table,
            trees,
        };
        stats.manifest_bytes += state
            .manifests
            .write(tier2.as_ref(), snapshot, freed.to_vec(), all_chunks)
            .await?;
        stats.manifest_written = true;
        Ok(unmoved)
    }

    /// Deletes chunk objects that no record names (a crash came between writing one and
    /// recording it); returns how many. Manifest deltas of an earlier process are left
    /// to `manifests`, to delete once this process has written a full manifest.
    async fn sweep(&self, tier2: &dyn Tier2, manifests: &mut ManifestWriter) -> Result<u64> {
        let objects = tier2
            .list()
            .await
            .map_err(|e| t2err(tier2, "listing objects", e))?;
        let known: HashSet<Arc<str>> = {
            let d = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
            d.index
                .chunks()
                .map(|(_, c)| c.name.clone())
                .chain(
                    lock(&self.inner.garbage)
                        .iter()
                        .map(|(_, c)| c.name.clone()),
                )
                .collect()
        };
        let mut deleted = 0;
        for name in &objects {
            if is_chunk_name(name) && !known.contains(name.as_str()) {
                tier2
                    .delete(name)
                    .await
                    .map_err(|e| t2err(tier2, &format!("deleting orphan chunk {name}"), e))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, tier2 = %tier2.describe(), "deleted chunks left by a crash");
        }
        manifests.supersede(
            objects
                .into_iter()
                .filter(|n| parse_delta_name(n).is_some()),
        );
        Ok(deleted)
    }

    /// Copies runs of log extents, each of another data id, into new chunks, up to
    /// [`CONCURRENT_MOVES`] at once, and switches reads over to each chunk once it is
    /// stored. One at a time, a standalone node moved about 300 MB/s (read, write and
    /// fsync in turn), less than it takes in (`trib bench write`, 10 KB events), and
    /// the data it moved had long left the cache. Returns the data ids whose data the
    /// log could not give, and why; the others move on. After any other failure the
    /// runs under way still finish (and are kept), the rest wait for the next pass.
    async fn move_runs(
        &self,
        tier2: &Arc<dyn Tier2>,
        runs: Vec<Run>,
        stats: &mut MoveStats,
        manifests: &mut ManifestWriter,
    ) -> Result<Vec<(u64, LogError)>> {
        let mut runs = runs.into_iter();
        let mut moving = tokio::task::JoinSet::new();
        let mut unreadable = Vec::new();
        let mut failed = None;
        loop {
            while moving.len() < CONCURRENT_MOVES && failed.is_none() {
                let Some(run) = runs.next() else {
                    break;
                };
                moving.spawn(store_chunk(self.inner.clone(), tier2.clone(), run));
            }
            let Some(joined) = moving.join_next().await else {
                break;
            };
            let stored = joined
                .map_err(|e| {
                    MoveFailure::Failed(LogError::Tier2(format!("a chunk move failed: {e}")))
                })
                .and_then(|r| r)
                .and_then(|(data_id, chunk)| {
                    self.record_chunk(data_id, chunk, stats, manifests)
                        .map_err(MoveFailure::Failed)
                });
            match stored {
                Ok(()) => {}
                Err(MoveFailure::Unreadable(data_id, e)) => unreadable.push((data_id, e)),
                Err(MoveFailure::Failed(e)) if failed.is_none() => failed = Some(e),
                // The pass reports the first failure; the others are only logged.
                Err(MoveFailure::Failed(e)) => {
                    tracing::warn!(error = %e, "moving a chunk to Tier-2 failed")
                }
            }
        }
        failed.map_or(Ok(unreadable), Err)
    }

    /// Records a chunk Tier-2 holds durably and switches reads over to it.
    fn record_chunk(
        &self,
        data_id: u64,
        chunk: Chunk,
        stats: &mut MoveStats,
        manifests: &mut ManifestWriter,
    ) -> Result<()> {
        let len = chunk.len;
        if let Some(s) = &self.inner.config.faults {
            s.0.point(super::faults::Point::Chunk)
                .map_err(|e| LogError::io(&self.inner.dir, e))?;
        }
        self.inner.meta.put_chunk(data_id, &chunk)?;
        let emptied = {
            let mut d = self
                .inner
                .durable
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let emptied = d.index.add_chunk(data_id, chunk.clone());
            self.inner.untiered.set(d.index.log_bytes());
            emptied
        };
        match emptied {
            Some(files) => {
                stats.chunks_written += 1;
                stats.bytes_moved += len;
                manifests.added(data_id, &chunk);
                self.inner.delete_files(files)
            }
            // Truncated or deleted while it was being written.
            None => {
                lock(&self.inner.garbage).push((data_id, chunk));
                Ok(())
            }
        }
    }

    /// Flushes what is pending, stops the writer and waits for it.
    pub fn close(mut self) -> Result<()> {
        self.stop();
        let m = self.inner.durable_tx.borrow().clone();
        match m.failed {
            Some(r) => Err(LogError::Failed(r)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        lock(&self.inner.pending).closing = true;
        self.inner.writer_cv.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn t2err(tier2: &dyn Tier2, doing: &str, e: super::tier2::Tier2Error) -> LogError {
    LogError::Tier2(format!("{doing} in {}: {e}", tier2.describe()))
}

/// The data of one Tier-2 chunk, from the cache or Tier-2 (length and CRC checked).
/// Concurrent calls for one chunk (a read and a prefetch) share one fetch.
async fn chunk_data(inner: &Inner, data_id: u64, c: &Chunk) -> Result<Bytes> {
    let key = CacheKey::Chunk(data_id, c.data_offset);
    let (tier2, fetch) = match lookup(inner, key)? {
        Lookup::Cached(d) => return Ok(d),
        Lookup::Fetch(tier2, fetch) => (tier2, fetch),
    };
    let got = fetch
        .get_or_init(|| fetch_chunk(tier2.as_ref(), c))
        .await
        .clone();
    fetched(inner, key, &fetch, &got);
    got.map_err(|e| LogError::Tier2(format!("{e} (in {})", tier2.describe())))
}

/// Fetches a chunk ahead of a reader. Holds the log only while it looks and stores,
/// not during the fetch, so that a prefetch never keeps a closed log open.
async fn prefetch(inner: std::sync::Weak<Inner>, data_id: u64, c: Chunk) {
    let key = CacheKey::Chunk(data_id, c.data_offset);
    let Some(Ok(Lookup::Fetch(tier2, fetch))) = inner.upgrade().map(|i| lookup(&i, key)) else {
        return;
    };
    let got = fetch
        .get_or_init(|| fetch_chunk(tier2.as_ref(), &c))
        .await
        .clone();
    if let Some(inner) = inner.upgrade() {
        fetched(&inner, key, &fetch, &got);
    }
    if let Err(e) = got {
        tracing::debug!(chunk = %c.name, error = %e, "prefetch failed");
    }
}

/// A chunk in the cache, or the one shared fetch that brings it (and where from).
enum Lookup {
    Cached(Bytes),
    Fetch(Arc<dyn Tier2>, Arc<ChunkFetch>),
}

fn lookup(inner: &Inner, key: CacheKey) -> Result<Lookup> {
    if let Some(d) = lock(&inner.cache).get(key) {
        return Ok(Lookup::Cached(d));
    }
    let tier2 = inner
        .tier2
        .clone()
        .ok_or_else(|| LogError::Tier2("no Tier-2 is configured".into()))?;
    let fetch = lock(&inner.fetching).entry(key).or_default().clone();
    Ok(Lookup::Fetch(tier2, fetch))
}

async fn fetch_chunk(tier2: &dyn Tier2, c: &Chunk) -> std::result::Result<Bytes, String> {
    let d = match tier2.get(&c.name).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(format!("chunk {} is missing", c.name)),
        Err(e) => return Err(format!("reading chunk {}: {e}", c.name)),
    };
    if d.len() as u64 != c.len || crc32c::crc32c(&d) != c.crc {
        return Err(format!(
            "chunk {} is corrupt: {} bytes, expected {} with CRC {:08x}",
            c.name,
            d.len(),
            c.len,
            c.crc
        ));
    }
    Ok(d)
}

/// Caches a fetched chunk and forgets the fetch (a failed one is retried next time).
fn fetched(
    inner: &Inner,
    key: CacheKey,
    fetch: &Arc<ChunkFetch>,
    got: &std::result::Result<Bytes, String>,
) {
    if let Ok(d) = got {
        lock(&inner.cache).insert(key, d.clone());
    }
    let mut f = lock(&inner.fetching);
    if f.get(&key).is_some_and(|x| Arc::ptr_eq(x, fetch)) {
        f.remove(&key);
    }
}

/// Deletes a log file (already gone is fine) and forgets its index; the caller fsyncs
/// the directory once for all files it removes.
fn remove_log_file(wal_dir: &Path, meta: &Meta, id: u64) -> Result<()> {
    let path = file_path(wal_dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::io(path, e)),
    }
    meta.remove_file_index(id)
}

struct Recovered {
    table: Table,
    index: DataIndex,
    files: BTreeMap<u64, Arc<File>>,
    writer: Writer,
    syncer: Syncer,
    replay_from: u64,
    garbage: Vec<(u64, Chunk)>,
    /// Damaged appends kept by the replay (see [`super::files::scan_file`]).
    damaged: Vec<super::repair::Damage>,
}

/// A damaged append frame the replay kept: where it is, what it claims, and why it
/// does not check.
struct DamagedFrame {
    file_id: u64,
    pos: u64,
    seg: u64,
    data_offset: u64,
    len: u64,
    reason: String,
}

/// Rebuilds the durable state: checkpoint + older files' indexes + replay of the rest.
fn recover(wal_dir: &Path, meta: &Meta, on_disk: &[u64]) -> Result<Recovered> {
    let cp = meta.checkpoint()?;
    let has_cp = cp.is_some();
    let Checkpoint {
        seq: cp_seq,
        replay_from,
        mut table,
    } = cp.unwrap_or(Checkpoint {
        seq: 0,
        replay_from: 0,
        table: Table::default(),
    });

    // Files to replay: contiguous from replay_from.
    let mut replay: Vec<u64> = on_disk
        .iter()
        .copied()
        .filter(|f| *f >= replay_from)
        .collect();
    for (i, id) in replay.iter().enumerate() {
        let expected = replay_from + i as u64;
        if *id != expected {
            return Err(LogError::MissingFile {
                path: file_path(wal_dir, expected),
                reason: format!("files {replay_from:x}.. must be replayed without a gap"),
            });
        }
    }
    if has_cp && replay.is_empty() {
        return Err(LogError::MissingFile {
            path: file_path(wal_dir, replay_from),
            reason: "the checkpoint says replay starts there".into(),
        });
    }

    let mut index = DataIndex::default();
    for (data_id, chunk) in meta.chunks()? {
        index.restore_chunk(data_id, chunk);
    }
    let mut garbage = Vec::new();
    for (id, extents) in meta.file_indexes()? {
        if id < replay_from {
            for (d, e) in extents {
                index.add(d, e);
            }
        }
    }

    // Scan the files to replay.
    let mut files: BTreeMap<u64, Arc<File>> = BTreeMap::new();
    let mut post: Vec<(u64, u64, Op, bool)> = Vec::new();
    let mut damaged_frames: Vec<DamagedFrame> = Vec::new();
    let mut per_file: BTreeMap<u64, Vec<(u64, Extent)>> = BTreeMap::new();
    let mut last_seq = cp_seq;
    let mut last_len = FILE_HEADER_LEN;
    let mut i = 0;
    while i < replay.len() {
        let id = replay[i];
        let is_last = i + 1 == replay.len();
        let path = file_path(wal_dir, id);
        let file = match open_file(wal_dir, id) {
            Ok(f) => f,
            Err(LogError::Corrupt { .. })
                if is_last
                    && (!has_cp || id > replay_from)
                    && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                        <= FILE_HEADER_LEN =>
            {
                tracing::warn!(file = %path.display(), "removing a log file whose creation was cut off by a crash");
                std::fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
                sync_dir(wal_dir)?;
                replay.pop();
                break;
            }
            Err(e) => return Err(e),
        };
        let scan = scan_file(&file, &path, id)?;
        let mut extents = Vec::new();
        for (pos, frame) in scan.frames {
            let damage = scan.damaged.iter().find(|(p, _)| *p == pos);
            if let (
                Some((_, reason)),
                Op::Append {
                    seg,
                    data_offset,
                    len,
                    ..
                },
            ) = (damage, &frame.op)
            {
                tracing::error!(file = %path.display(), offset = pos, %reason, segment = seg, data_offset, len,
                    "a damaged frame in the log: its bytes are kept and reads of them fail; the rest is served");
                damaged_frames.push(DamagedFrame {
                    file_id: id,
                    pos,
                    seg: *seg,
                    data_offset: *data_offset,
                    len: *len,
                    reason: reason.clone(),
                });
            }
            if frame.seq < last_seq && frame.seq > cp_seq {
                return Err(LogError::Corrupt {
                    path,
                    offset: pos,
                    reason: format!("batch {} after batch {last_seq}", frame.seq),
                });
            }
            if let Op::Append {
                seg,
                data_offset,
                len,
                ..
            } = frame.op
            {
                if len > 0 {
                    let e = Extent {
                        data_offset,
                        len,
                        file_id: id,
                        frame_pos: pos,
                    };
                    extents.push((seg, e));
                    if frame.seq <= cp_seq {
                        index.add(seg, e);
                    }
                }
            }
            if frame.seq > cp_seq {
                last_seq = frame.seq;
                post.push((id, pos, frame.op, damage.is_some()));
            }
        }
        last_len = scan.valid_end;
        if let Some((pos, reason)) = scan.bad_tail {
            // The files after this one were made by a roll while its last batch was
            // being written (the writer rolls before that batch is durable); if that
            // write failed (a full disk, a crash), they hold no frame, and this file's
            // bad tail is the log's torn end.
            let mut rolled_empty = Vec::new();
            for later in &replay[i + 1..] {
                if !holds_no_frame(wal_dir, *later)? {
                    rolled_empty.clear();
                    break;
                }
                rolled_empty.push(*later);
            }
            let at_the_end = is_last || rolled_empty.len() == replay.len() - i - 1;
            if !at_the_end
                || later_batch_follows(&file, &path, pos + 1, last_seq + BATCHES_AFTER_DURABLE)?
            {
                return Err(LogError::Corrupt {
                    path,
                    offset: pos,
                    reason,
                });
            }
            for later in rolled_empty {
                let p = file_path(wal_dir, later);
                tracing::warn!(file = %p.display(), "removing a log file rolled to while the write before it failed (disk full, or a crash); it holds no frame");
                std::fs::remove_file(&p).map_err(|e| LogError::io(&p, e))?;
                sync_dir(wal_dir)?;
            }
            replay.truncate(i + 1);
            tracing::warn!(file = %path.display(), offset = pos, %reason, "cutting a torn tail left by a crash");
            file.set_len(pos)
                .and_then(|_| file.sync_all())
                .map_err(|e| LogError::io(&path, e))?;
        }
        per_file.insert(id, extents);
        files.insert(id, Arc::new(file));
        i += 1;
    }

    // Apply newer operations, then drop what the resulting table no longer holds.
    for (file_id, pos, op, damaged) in post {
        // A damaged append takes the batch number of the frame after it, which may be
        // one batch late: one the checkpoint already holds is not applied again.
        let in_table = match &op {
            Op::Append {
                seg,
                data_offset,
                len,
                ..
            } if damaged => table
                .by_id(*seg)
                .is_some_and(|s| s.own_len >= data_offset + len),
            _ => false,
        };
        let released = if in_table {
            Vec::new()
        } else {
            table.apply(&op).map_err(|reason| LogError::Corrupt {
                path: file_path(wal_dir, file_id),
                offset: pos,
                reason: if damaged {
                    format!("a damaged frame (it fails its CRC) that does not fit: {reason}")
                } else {
                    reason
                },
            })?
        };
        if let Op::Append {
            seg,
            data_offset,
            len,
            ..
        } = op
        {
            if len > 0 {
                index.add(
                    seg,
                    Extent {
                        data_offset,
                        len,
                        file_id,
                        frame_pos: pos,
                    },
                );
            }
        }
        for r in released {
            let freed = index.release(r);
            garbage.extend(freed.chunks.into_iter().map(|c| (r.data_id, c)));
        }
    }
    let live = table.live_data();
    let known: Vec<u64> = index.data_ids().chain(index.tiered_ids()).collect();
    for d in known {
        let freed = index.release(Release {
            data_id: d,
            below: live.get(&d).copied().unwrap_or(u64::MAX),
        });
        garbage.extend(freed.chunks.into_iter().map(|c| (d, c)));
    }

    // Older files with live data must be there and sound.
    let live_old: Vec<u64> = index.live_files().filter(|f| *f < replay_from).collect();
    for id in live_old {
        files.insert(id, Arc::new(open_file(wal_dir, id)?));
    }

    // The active file.
    let (file, file_id, file_len) = match replay.last() {
        Some(&id) => {
            let f = files
                .get(&id)
                .ok_or_else(|| LogError::MissingFile {
                    path: file_path(wal_dir, id),
                    reason: "active file".into(),
                })?
                .try_clone()
                .map_err(|e| LogError::io(file_path(wal_dir, id), e))?;
            (f, id, last_len)
        }
        None => {
            let id = on_disk
                .last()
                .map_or(replay_from, |l| (l + 1).max(replay_from));
            let f = create_file(wal_dir, id)?;
            let reader = f
                .try_clone()
                .map_err(|e| LogError::io(file_path(wal_dir, id), e))?;
            files.insert(id, Arc::new(reader));
            (f, id, FILE_HEADER_LEN)
        }
    };
    let active_extents = per_file.remove(&file_id).unwrap_or_default();

    // If more than one file was replayed, checkpoint now so the next recovery does not
    // replay them again.
    let mut replay_from = replay_from;
    if !per_file.is_empty() || (!has_cp && file_id > 0) {
        let cp = meta.encode_checkpoint(last_seq, file_id, &table)?;
        let indexes: Vec<(u64, Vec<(u64, Extent)>)> = per_file.into_iter().collect();
        meta.save(cp, &indexes)?;
        replay_from = file_id;
    }

    // Remove files that hold nothing live and are not replayed.
    let mut removed = false;
    for &id in on_disk {
        if id < replay_from && !index.is_live(id) {
            files.remove(&id);
            remove_log_file(wal_dir, meta, id)?;
            removed = true;
        }
    }
    if removed {
        sync_dir(wal_dir)?;
    }

    let damaged = damaged_frames
        .into_iter()
        .filter_map(|f| {
            let s = table.by_id(f.seg)?;
            // Where the frame's data is in the segment now (after merges and
            // truncations, if still there).
            let p = s.pieces.iter().find(|p| {
                p.data_id == f.seg
                    && p.data_offset < f.data_offset + f.len
                    && f.data_offset < p.data_offset + p.len
            })?;
            // The part of the frame's data this piece still holds.
            let (lo, hi) = (
                f.data_offset.max(p.data_offset),
                (f.data_offset + f.len).min(p.data_offset + p.len),
            );
            Some(super::repair::Damage {
                segment: s.name.clone(),
                from: p.seg_offset + (lo - p.data_offset),
                to: p.seg_offset + (hi - p.data_offset),
                reason: format!(
                    "{}, offset {}: {}",
                    file_path(wal_dir, f.file_id).display(),
                    f.pos,
                    f.reason
                ),
            })
        })
        .collect();
    let seg_count = table.segments().count();
    tracing::info!(
        dir = %wal_dir.display(),
        segments = seg_count,
        batch = last_seq,
        "segment log recovered"
    );
    Ok(Recovered {
        table,
        index,
        files,
        writer: Writer::new(wal_dir, Arc::new(file), file_id, file_len)?,
        syncer: Syncer {
            file_id,
            file_extents: active_extents,
            last_seq,
        },
        replay_from,
        garbage,
        damaged,
    })
}
