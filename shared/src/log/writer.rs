//! Group commit: appenders fill a [`Batch`]; a writer thread takes it whole and writes it
//! with one `pwrite` (direct I/O where the file system allows: see [`super::direct`]); a
//! syncer thread `fdatasync`s it, applies it to the durable table and tells waiters.
//! Concurrent appends to any number of segments share that one fsync, and the next batch
//! is written while the previous one is being fsync'ed.
//!
//! The fsyncs of the write path, in order:
//! 1. every batch: `fdatasync` of the active log file before anything is acknowledged;
//! 2. on roll: the new file's header (`fsync`), its directory entry (`fsync` of `wal/`),
//!    then the checkpoint and the old file's index in sled (`flush`);
//! 3. on deleting a file: `fsync` of `wal/`.

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};

use super::cache::CacheKey;
use super::container::{lock, Inner};
use super::direct::DirectFile;
use super::error::{LogError, Result};
use super::files::{create_file, file_path};
use super::format::{encode_frame_head, Op, FILE_HEADER_LEN};
use super::index::Extent;

/// Bytes a frame header takes, roughly (an append frame without attributes: 35).
const HEADER_ESTIMATE: usize = 40;

/// Attribute updates one append frame may carry before it is closed.
pub const MAX_FRAME_ATTRIBUTES: usize = 4096;

/// A frame of a batch: its header in the batch's header buffer, its data beside it.
#[derive(Debug)]
pub(crate) struct FrameMeta {
    /// Position of the frame in the batch as written.
    pos: usize,
    /// The header's range in the batch's header buffer.
    head: std::ops::Range<usize>,
    data: Bytes,
    op: Op,
}

#[derive(Debug)]
struct OpenAppend {
    data_offset: u64,
    attrs: Vec<(u128, i64)>,
    data: Vec<u8>,
}

/// Operations waiting for the next group commit. Appends to one segment are coalesced
/// into one frame (up to `max_frame_data_bytes`), so a busy batch costs one frame header
/// per segment, not per event.
#[derive(Debug)]
pub(crate) struct Batch {
    pub seq: u64,
    /// Frame headers, back to back; the data of each frame is in its `FrameMeta`.
    buf: Vec<u8>,
    /// Bytes the frames take in the log.
    len: usize,
    frames: Vec<FrameMeta>,
    open: HashMap<u64, OpenAppend>,
    open_bytes: usize,
    pub first_at: Option<Instant>,
}

impl Batch {
    /// An empty batch with header room for as many frames as `previous` will have, so
    /// a busy log does not regrow the buffer every time.
    pub fn new(seq: u64, previous: Option<&Batch>) -> Self {
        let frames = previous.map_or(0, |b| b.frames.len() + b.open.len());
        Batch {
            seq,
            buf: Vec::with_capacity(frames * HEADER_ESTIMATE),
            len: 0,
            frames: Vec::new(),
            open: HashMap::new(),
            open_bytes: 0,
            first_at: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.open.is_empty()
    }

    /// Bytes this batch will write, roughly.
    pub fn bytes(&self) -> usize {
        self.len + self.open_bytes
    }

    fn encode(&mut self, op: Op, data: Bytes) {
        let start = self.buf.len();
        encode_frame_head(&mut self.buf, self.seq, &op, &data);
        let head = start..self.buf.len();
        let pos = self.len;
        self.len += head.len() + data.len();
        self.frames.push(FrameMeta {
            pos,
            head,
            data,
            op,
        });
    }

    fn close(&mut self, seg: u64) {
        if let Some(o) = self.open.remove(&seg) {
            self.open_bytes -= o.data.len();
            let op = Op::Append {
                seg,
                data_offset: o.data_offset,
                len: o.data.len() as u64,
                attrs: o.attrs,
            };
            let mut data = o.data;
            // The read cache counts `len`; do not let it hold much unused capacity.
            if data.capacity() > data.len() + data.len() / 4 {
                data.shrink_to_fit();
            }
            self.encode(op, Bytes::from(data));
        }
    }

    fn touch(&mut self) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
    }

    /// Adds a non-append operation after the appends already batched for its segments.
    pub fn push_op(&mut self, op: Op) {
        match &op {
            Op::Merge { target, source, .. } => {
                self.close(*target);
                self.close(*source);
            }
            Op::Seal { seg } | Op::Truncate { seg, .. } | Op::Delete { seg } => self.close(*seg),
            Op::Create { .. } | Op::Append { .. } => {}
        }
        self.touch();
        self.encode(op, Bytes::new());
    }

    /// Adds an append (validated against the pending table).
    pub fn push_append(&mut self, op: Op, data: &[u8], max_frame_data_bytes: usize) {
        let Op::Append {
            seg,
            data_offset,
            attrs,
            ..
        } = op
        else {
            return self.push_op(op);
        };
        self.touch();
        if let Some(o) = self.open.get(&seg) {
            if o.data.len() + data.len() > max_frame_data_bytes
                || o.attrs.len() + attrs.len() > MAX_FRAME_ATTRIBUTES
            {
                self.close(seg);
            }
        }
        let o = self.open.entry(seg).or_insert_with(|| OpenAppend {
            data_offset,
            attrs: Vec::new(),
            // Room for a few more like it, so a busy frame regrows rarely.
            data: Vec::with_capacity((data.len() * 8).clamp(256, max_frame_data_bytes)),
        });
        debug_assert_eq!(o.data_offset + o.data.len() as u64, data_offset);
        o.data.extend_from_slice(data);
        self.open_bytes += data.len();
        for (id, v) in attrs {
            match o.attrs.iter_mut().find(|(i, _)| *i == id) {
                Some(a) => a.1 = v,
                None => o.attrs.push((id, v)),
            }
        }
    }

    /// Encodes the appends still open; call once, before writing.
    pub fn finish(&mut self) {
        let mut segs: Vec<u64> = self.open.keys().copied().collect();
        segs.sort_unstable();
        for s in segs {
            self.close(s);
        }
    }
}

/// The writer thread's state: the active file it appends to.
#[derive(Debug)]
pub(crate) struct Writer {
    pub file: Arc<File>,
    pub file_id: u64,
    pub file_len: u64,
    /// The same file opened for direct writes, unless its file system refuses them.
    direct: Option<DirectFile>,
}

/// The syncer thread's state: what the active file holds, and the last durable batch.
#[derive(Debug)]
pub(crate) struct Syncer {
    pub file_id: u64,
    /// Extents written to the active file, stored in sled when it is rolled.
    pub file_extents: Vec<(u64, Extent)>,
    /// Last batch made durable.
    pub last_seq: u64,
}

/// From the writer to the syncer, in log order.
enum Written {
    /// A batch written (not yet fsync'ed) at `base` of file `file_id`.
    Batch {
        seq: u64,
        frames: Vec<FrameMeta>,
        file: Arc<File>,
        file_id: u64,
        base: u64,
    },
    /// Every later batch goes to this new file (created and fsync'ed).
    Rolled { file_id: u64, file: Arc<File> },
}

/// The writer thread: takes batches and writes them; a syncer thread it starts fsyncs,
/// applies and acknowledges them. The hand-over is a rendezvous, so batch k+1 is being
/// written while batch k is fsync'ed, and a batch grows while both are busy.
pub(crate) fn run(inner: Arc<Inner>, mut w: Writer, s: Syncer) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Written>(0);
    let syncer = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("tributary-log-sync".into())
            .spawn(move || s.run(&inner, rx))
    };
    let syncer = match syncer {
        Ok(h) => h,
        Err(e) => {
            inner.fail(format!("cannot start the log's sync thread: {e}"));
            return;
        }
    };
    while let Some(batch) = next_batch(&inner) {
        match w.write(&inner, batch, &tx) {
            Ok(true) => {}
            Ok(false) => break, // the syncer stopped after a failure
            Err(e) => {
                tracing::error!(dir = %inner.dir.display(), error = %e, "segment log write failed; refusing all writes until reopened");
                inner.fail(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let _ = syncer.join();
    inner.durable_tx.send_modify(|m| m.closed = true);
}

fn next_batch(inner: &Inner) -> Option<Batch> {
    let cfg = &inner.config;
    let mut p = lock(&inner.pending);
    loop {
        if p.batch.is_empty() {
            if p.closing {
                return None;
            }
            p = inner.writer_cv.wait(p).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        if !p.closing && p.batch.bytes() < cfg.max_batch_bytes {
            if let Some(first) = p.batch.first_at {
                let deadline = first + cfg.commit_delay;
                let now = Instant::now();
                if now < deadline {
                    p = inner
                        .writer_cv
                        .wait_timeout(p, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
            }
        }
        let next = Batch::new(p.batch.seq + 1, Some(&p.batch));
        let mut b = std::mem::replace(&mut p.batch, next);
        drop(p);
        inner.room.notify_waiters();
        b.finish();
        return Some(b);
    }
}

impl Writer {
    /// The writer of active file `file_id` (logical length `file_len`), writing with
    /// direct I/O where the file system allows it.
    pub fn new(wal_dir: &Path, file: Arc<File>, file_id: u64, file_len: u64) -> Result<Writer> {
        let path = file_path(wal_dir, file_id);
        let direct =
            DirectFile::open(&path, &file, file_len).map_err(|e| LogError::io(&path, e))?;
        if direct.is_none() {
            tracing::debug!(file = %path.display(), "no direct I/O on this file system: writing through the page cache");
        }
        Ok(Writer {
            file,
            file_id,
            file_len,
            direct,
        })
    }

    /// Writes one batch (rolling to a new file first if the active one is full) and
    /// hands it to the syncer. `Ok(false)`: the syncer has stopped.
    fn write(&mut self, inner: &Inner, b: Batch, tx: &SyncSender<Written>) -> Result<bool> {
        if self.file_len >= inner.config.max_file_bytes {
            let file_id = self.file_id + 1;
            let file = Arc::new(create_file(&inner.wal_dir, file_id)?);
            *self = Writer::new(&inner.wal_dir, file.clone(), file_id, FILE_HEADER_LEN)?;
            if tx.send(Written::Rolled { file_id, file }).is_err() {
                return Ok(false);
            }
        }
        let base = self.file_len;
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(b.frames.len() * 2);
        for fm in &b.frames {
            slices.push(IoSlice::new(&b.buf[fm.head.clone()]));
            if !fm.data.is_empty() {
                slices.push(IoSlice::new(&fm.data));
            }
        }
        let file_id = self.file_id;
        let path = || file_path(&inner.wal_dir, file_id);
        let written = match &mut self.direct {
            Some(d) => d.write(base, &slices),
            None => write_all_vectored_at(&self.file, &mut slices, base),
        };
        match written {
            Ok(()) => {}
            // Opened for direct I/O but not allowed to write that way (some FUSE and
            // network file systems): through the page cache from now on.
            Err(e) if self.direct.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(file = %path().display(), error = %e, "direct writes refused: writing through the page cache");
                self.direct = None;
                write_all_vectored_at(&self.file, &mut slices, base)
                    .map_err(|e| LogError::io(path(), e))?;
            }
            Err(e) => return Err(LogError::io(path(), e)),
        }
        drop(slices);
        self.file_len += b.len as u64;
        let sent = tx.send(Written::Batch {
            seq: b.seq,
            frames: b.frames,
            file: self.file.clone(),
            file_id: self.file_id,
            base,
        });
        Ok(sent.is_ok())
    }
}

impl Syncer {
    fn run(mut self, inner: &Inner, rx: Receiver<Written>) {
        for w in rx {
            let done = match w {
                Written::Batch {
                    seq,
                    frames,
                    file,
                    file_id,
                    base,
                } => {
                    let started = std::time::Instant::now();
                    let synced = file.sync_data();
                    inner.fsync.record(started.elapsed());
                    synced
                        .map_err(|e| LogError::io(file_path(&inner.wal_dir, file_id), e))
                        .and_then(|()| self.apply(inner, seq, &frames, file_id, base))
                }
                Written::Rolled { file_id, file } => self.roll(inner, file_id, file),
            };
            if let Err(e) = done {
                tracing::error!(dir = %inner.dir.display(), error = %e, "segment log sync failed; refusing all writes until reopened");
                inner.fail(e.to_string());
                return;
            }
        }
    }

    /// Applies a durable batch to the durable table and index, caches its data,
    /// acknowledges it, and deletes files it emptied.
    fn apply(
        &mut self,
        inner: &Inner,
        seq: u64,
        frames: &[FrameMeta],
        file_id: u64,
        base: u64,
    ) -> Result<()> {
        let mut emptied = Vec::new();
        {
            let mut d = inner.durable.write().unwrap_or_else(|e| e.into_inner());
            for fm in frames {
                let released = d
                    .table
                    .apply(&fm.op)
                    .map_err(|r| LogError::Failed(format!("internal inconsistency: {r}")))?;
                if let Op::Append {
                    seg,
                    data_offset,
                    len,
                    ..
                } = fm.op
                {
                    if len > 0 {
                        let e = Extent {
                            data_offset,
                            len,
                            file_id,
                            frame_pos: base + fm.pos as u64,
                        };
                        d.index.add(seg, e);
                        self.file_extents.push((seg, e));
                    }
                }
                for r in released {
                    let freed = d.index.release(r);
                    emptied.extend(freed.files);
                    lock(&inner.garbage).extend(freed.chunks.into_iter().map(|c| (r.data_id, c)));
                }
            }
            inner
                .untiered
                .store(d.index.log_bytes(), std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut c = lock(&inner.cache);
            for fm in frames {
                if !fm.data.is_empty() {
                    c.insert(
                        CacheKey::Frame(file_id, base + fm.pos as u64),
                        fm.data.clone(),
                    );
                }
            }
        }
        // After the durable lock is released: submitters take `pending`, then `durable`.
        lock(&inner.pending).settled(seq);
        self.last_seq = seq;
        inner.durable_tx.send_modify(|m| m.seq = seq);
        inner.delete_files(emptied)
    }

    /// Every batch of the previous file is durable and applied: checkpoint, so that
    /// recovery replays from the new file, and delete files nothing needs.
    fn roll(&mut self, inner: &Inner, new_id: u64, reader: Arc<File>) -> Result<()> {
        let cp = {
            let d = inner.durable.read().unwrap_or_else(|e| e.into_inner());
            inner
                .meta
                .encode_checkpoint(self.last_seq, new_id, &d.table)?
        };
        let index = std::mem::take(&mut self.file_extents);
        inner.meta.save(cp, &[(self.file_id, index)])?;
        let dead: Vec<u64> = {
            let mut d = inner.durable.write().unwrap_or_else(|e| e.into_inner());
            d.files.insert(new_id, reader);
            d.files
                .keys()
                .copied()
                .filter(|id| *id < new_id && !d.index.is_live(*id))
                .collect()
        };
        tracing::debug!(file = new_id, "log file rolled");
        self.file_id = new_id;
        inner
            .replay_from
            .store(new_id, std::sync::atomic::Ordering::SeqCst);
        inner.delete_files(dead)
    }
}

/// Most buffers one `writev` takes (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes all of `slices` at `pos`, with as few `writev` calls as `IOV_MAX` allows. The
/// writer thread is the only user of the file's cursor (reads use `pread`).
fn write_all_vectored_at(file: &File, slices: &mut [IoSlice<'_>], pos: u64) -> std::io::Result<()> {
    let mut f = file;
    f.seek(SeekFrom::Start(pos))?;
    let mut rest = slices;
    while !rest.is_empty() {
        let take = rest.len().min(IOV_MAX);
        let n = f.write_vectored(&rest[..take])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
