//! Group commit: appenders fill a [`Batch`]; a writer thread takes it whole and lays its
//! frames out in one buffer (block-aligned for direct I/O where the file system allows:
//! see [`super::direct`]); a syncer thread writes that buffer with one `pwrite`,
//! `fdatasync`s it, applies it to the durable table and tells waiters. Concurrent
//! appends to any number of segments share that one fsync, and the next batch is built
//! while the previous one goes to the disk.
//!
//! The fsyncs of the write path, in order:
//! 1. every batch: `fdatasync` of the active log file before anything is acknowledged;
//! 2. on roll: the new file's header (`fsync`), its directory entry (`fsync` of `wal/`),
//!    then the checkpoint and the old file's index in sled (`flush`);
//! 3. on deleting a file: `fsync` of `wal/`.

use std::collections::hash_map::Entry;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};

use super::container::{lock, Inner};
use super::direct::{DirectFile, Prepared};
use super::error::{LogError, Result};
use super::faults::Point;
use super::files::{create_file, file_path};
use super::format::{
    encode_frame_head, frame_crc, frame_head_len, seal_frame, set_frame_crc, Op, APPEND_FIXED_LEN,
    ATTRIBUTE_LEN, FILE_HEADER_LEN,
};
use super::index::Extent;
use super::room::{is_full, RETRY_FULL_EVERY};

/// Bytes [`Batch::build`] copies before taking their CRC: well within a core's L1/L2
/// cache.
const COPY_STRETCH: usize = 16 << 10;

/// Bytes a frame header takes, roughly (an append frame without attributes: 35).
const HEADER_ESTIMATE: usize = 40;

/// Attribute updates one append frame may carry before it is closed.
pub const MAX_FRAME_ATTRIBUTES: usize = 4096;

/// Largest `max_batch_bytes`: the batch's arena, that plus one append, is indexed by
/// `u32`.
pub const MAX_BATCH_BYTES: usize = 1 << 30;

/// A frame of a written batch: where it is, and its operation.
#[derive(Debug)]
pub(crate) struct FrameMeta {
    /// Position of the frame in the batch as written.
    pos: usize,
    /// Whether it carries data (an append of at least one byte).
    has_data: bool,
    op: Op,
}

/// An append's bytes as handed to the log.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Bytes the batch copies.
    Borrowed(&'a [u8]),
    /// Buffers, one after the other, that the batch holds until they are written
    /// instead of copying them, when they make at least [`SHARED_MIN`] bytes: a large
    /// append received from the network is then copied once, into the buffer written
    /// to disk.
    Shared(&'a [Bytes]),
}

/// Bytes from which a [`Payload::Shared`] is held rather than copied; below it, a
/// copy costs less than keeping the buffers.
pub const SHARED_MIN: usize = 16 << 10;

impl Payload<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Borrowed(b) => b.len(),
            Payload::Shared(bufs) => bufs.iter().map(Bytes::len).sum(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(b: &'a [u8]) -> Self {
        Payload::Borrowed(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Payload<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Payload::Borrowed(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Payload<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Payload::Borrowed(b)
    }
}

impl<'a> From<&'a Bytes> for Payload<'a> {
    fn from(b: &'a Bytes) -> Self {
        Payload::Shared(std::slice::from_ref(b))
    }
}

impl<'a> From<&'a [Bytes]> for Payload<'a> {
    fn from(bufs: &'a [Bytes]) -> Self {
        Payload::Shared(bufs)
    }
}

/// Bytes of a batch: of its arena (`buf` is [`ARENA`]) or of one of the buffers it
/// holds; one or more appends to one segment, and the next piece of the same segment's
/// frame (`NO_PIECE`: none).
#[derive(Debug, Clone, Copy)]
struct Piece {
    buf: u32,
    start: u32,
    len: u32,
    next: u32,
}

const NO_PIECE: u32 = u32::MAX;
const ARENA: u32 = u32::MAX;

impl Piece {
    fn new(buf: u32, start: u32, len: u32) -> Self {
        Piece {
            buf,
            start,
            len,
            next: NO_PIECE,
        }
    }
}

/// Adds `p` to the end of `o`'s pieces: onto its last piece if `p` continues it in the
/// arena, else as the next piece.
#[inline]
fn link(pieces: &mut Vec<Piece>, o: &mut OpenAppend, p: Piece) {
    let i = pieces.len() as u32;
    match pieces.get_mut(o.last as usize) {
        Some(last) if last.buf == ARENA && p.buf == ARENA && last.start + last.len == p.start => {
            last.len += p.len;
            return;
        }
        Some(last) => last.next = i,
        None => o.first = i,
    }
    o.last = i;
    pieces.push(p);
}

/// The appends to one segment that will make one frame.
#[derive(Debug)]
struct OpenAppend {
    data_offset: u64,
    attrs: Vec<(u128, i64)>,
    len: usize,
    first: u32,
    last: u32,
}

/// A frame to write, in log order.
#[derive(Debug)]
enum Planned {
    Append { seg: u64, o: OpenAppend },
    Op(Op),
}

/// Operations waiting for the next group commit. Appenders copy data into one arena, in
/// the order it comes, or hand over large buffers ([`Payload::Shared`]); the appends to
/// one segment are chained and become one frame (up to `max_frame_data_bytes`), so a
/// busy batch costs one frame header per segment, not per event, and no allocation per
/// segment. The writer lays the frames out in the buffer it writes from
/// ([`Batch::build`]).
#[derive(Debug)]
pub(crate) struct Batch {
    pub seq: u64,
    arena: Vec<u8>,
    /// Buffers held instead of copied, and their bytes.
    held: Vec<Bytes>,
    held_bytes: usize,
    pieces: Vec<Piece>,
    /// Frames closed so far, in log order; the open appends follow, by segment id.
    planned: Vec<Planned>,
    open: HashMap<u64, OpenAppend>,
    pub first_at: Option<Instant>,
}

/// A batch laid out for writing.
struct Built {
    /// The bytes to write, from `start`: for a direct write, the file's last partial
    /// block first (see [`DirectFile::buffer`]).
    buf: Vec<u8>,
    start: usize,
    /// Where the frames are in `buf`.
    frames_at: usize,
    frames_len: usize,
    frames: Vec<FrameMeta>,
}

impl Batch {
    /// An empty batch with room for as much as `previous` held, so a busy log does not
    /// regrow its buffers every time.
    pub fn new(seq: u64, previous: Option<&Batch>) -> Self {
        let (bytes, pieces, segs) = previous.map_or((0, 0, 0), |b| {
            (
                b.arena.len(),
                b.pieces.len(),
                b.planned.len() + b.open.len(),
            )
        });
        Batch {
            seq,
            arena: Vec::with_capacity(bytes),
            held: Vec::new(),
            held_bytes: 0,
            pieces: Vec::with_capacity(pieces),
            planned: Vec::new(),
            open: HashMap::with_capacity(segs),
            first_at: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.planned.is_empty() && self.open.is_empty()
    }

    /// Bytes this batch will write, roughly.
    pub fn bytes(&self) -> usize {
        self.arena.len()
            + self.held_bytes
            + (self.planned.len() + self.open.len()) * HEADER_ESTIMATE
    }

    fn close(&mut self, seg: u64) {
        if let Some(o) = self.open.remove(&seg) {
            self.planned.push(Planned::Append { seg, o });
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
        self.planned.push(Planned::Op(op));
    }

    /// Adds an append (validated against the pending table) with its bytes. Inlined
    /// into `submit_append` (with [`link`]): called apart, `trib bench log` at 100 B
    /// ran about 10 % slower.
    #[inline]
    pub fn push_append(&mut self, op: Op, data: Payload<'_>, max_frame_data_bytes: usize) {
        let Op::Append {
            seg,
            data_offset,
            len,
            attrs,
        } = op
        else {
            return self.push_op(op);
        };
        self.touch();
        let len = len as usize;
        // Held buffers are in place before the frame's pieces name them; copied bytes
        // go to the arena last. Within u32: appends are refused once a batch holds
        // `max_batch_bytes` (at most MAX_BATCH_BYTES), and one append is far below 3 GiB.
        let held_from = self.held.len();
        let copy = match data {
            Payload::Shared(bufs) if len >= SHARED_MIN => {
                self.held
                    .extend(bufs.iter().filter(|b| !b.is_empty()).cloned());
                self.held_bytes += len;
                None
            }
            copied => Some(copied),
        };
        let fresh = OpenAppend {
            data_offset,
            attrs: Vec::new(),
            len: 0,
            first: NO_PIECE,
            last: NO_PIECE,
        };
        let o = match self.open.entry(seg) {
            Entry::Occupied(e)
                if e.get().len + len > max_frame_data_bytes
                    || e.get().attrs.len() + attrs.len() > MAX_FRAME_ATTRIBUTES =>
            {
                // The frame is full: it is planned, and this append starts the next.
                let o = e.into_mut();
                let full = std::mem::replace(o, fresh);
                self.planned.push(Planned::Append { seg, o: full });
                o
            }
            Entry::Occupied(e) => {
                let o = e.into_mut();
                debug_assert_eq!(o.data_offset + o.len as u64, data_offset);
                o
            }
            Entry::Vacant(e) => e.insert(fresh),
        };
        match copy {
            None => {
                for (i, b) in self.held.iter().enumerate().skip(held_from) {
                    link(&mut self.pieces, o, Piece::new(i as u32, 0, b.len() as u32));
                }
            }
            Some(data) if len > 0 => {
                let at = self.arena.len() as u32;
                link(&mut self.pieces, o, Piece::new(ARENA, at, len as u32));
                match data {
                    Payload::Borrowed(b) => self.arena.extend_from_slice(b),
                    Payload::Shared(bufs) => {
                        bufs.iter().for_each(|b| self.arena.extend_from_slice(b))
                    }
                }
            }
            Some(_) => {}
        }
        o.len += len;
        for (id, v) in attrs {
            match o.attrs.iter_mut().find(|(i, _)| *i == id) {
                Some(a) => a.1 = v,
                None => o.attrs.push((id, v)),
            }
        }
    }

    /// Closes the appends still open, by segment id; call once, before building.
    pub fn finish(&mut self) {
        let mut segs: Vec<u64> = self.open.keys().copied().collect();
        segs.sort_unstable();
        for s in segs {
            self.close(s);
        }
    }

    /// Encodes the frames into the buffer they are written from: `direct`'s buffer
    /// (block-aligned, after the file's last partial block), or a plain one.
    fn build(self, direct: Option<&DirectFile>) -> Built {
        let head = |p: &Planned| match p {
            Planned::Append { o, .. } => APPEND_FIXED_LEN + o.attrs.len() * ATTRIBUTE_LEN,
            Planned::Op(op) => frame_head_len(op),
        };
        let len = self.arena.len() + self.held_bytes + self.planned.iter().map(head).sum::<usize>();
        let (mut buf, start) = match direct {
            Some(d) => d.buffer(len),
            None => (Vec::with_capacity(len), 0),
        };
        let frames_at = buf.len();
        let mut frames = Vec::with_capacity(self.planned.len());
        for p in self.planned {
            let at = buf.len();
            let (op, has_data) = match p {
                Planned::Op(op) => {
                    encode_frame_head(&mut buf, self.seq, &op, 0);
                    seal_frame(&mut buf[at..]);
                    (op, false)
                }
                Planned::Append { seg, o } => {
                    let op = Op::Append {
                        seg,
                        data_offset: o.data_offset,
                        len: o.len as u64,
                        attrs: o.attrs,
                    };
                    encode_frame_head(&mut buf, self.seq, &op, o.len);
                    // The CRC is taken over each stretch just copied, while it is in
                    // the cache, not over the whole frame afterwards.
                    let mut crc = frame_crc(&buf[at..]);
                    let mut i = o.first;
                    while i != NO_PIECE {
                        let p = self.pieces[i as usize];
                        let (from, to) = (p.start as usize, (p.start + p.len) as usize);
                        let bytes = match p.buf {
                            ARENA => &self.arena[from..to],
                            h => &self.held[h as usize][from..to],
                        };
                        for stretch in bytes.chunks(COPY_STRETCH) {
                            buf.extend_from_slice(stretch);
                            crc = crc32c::crc32c_append(crc, stretch);
                        }
                        i = p.next;
                    }
                    set_frame_crc(&mut buf[at..], crc);
                    (op, o.len > 0)
                }
            };
            frames.push(FrameMeta {
                pos: at - frames_at,
                has_data,
                op,
            });
        }
        Built {
            frames_len: buf.len() - frames_at,
            buf,
            start,
            frames_at,
            frames,
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
    /// A batch built for `base` of file `file_id`, to write and fsync.
    Batch {
        seq: u64,
        frames: Vec<FrameMeta>,
        /// Holds the frames back to back at `frames_at`, `frames_len` bytes.
        buf: Vec<u8>,
        frames_at: usize,
        frames_len: usize,
        /// How `buf` goes to the file: a prepared direct write, or (`None`) the frames
        /// through the page cache at `base`.
        direct: Option<Prepared>,
        file: Arc<File>,
        file_id: u64,
        base: u64,
    },
    /// Every later batch goes to this new file (created and fsync'ed).
    Rolled { file_id: u64, file: Arc<File> },
}

/// The writer thread: takes batches and builds them; a syncer thread it starts writes,
/// fsyncs, applies and acknowledges them. The hand-over is a rendezvous, so batch k+1 is
/// being built while batch k is written and fsync'ed, and a batch grows while both are
/// busy. (Building is a copy and a CRC of every byte: with 10 KB events, done between
/// the writes it held the log at 0.73 of the raw disk.)
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

    /// Builds one batch (rolling to a new file first if the active one is full) and
    /// hands it to the syncer, which writes it. `Ok(false)`: the syncer has stopped.
    fn write(&mut self, inner: &Inner, b: Batch, tx: &SyncSender<Written>) -> Result<bool> {
        let b_seq = b.seq;
        // Appends are refused from here on if this leaves too little room.
        inner.disk.look();
        if self.file_len >= inner.config.max_file_bytes {
            let file_id = self.file_id + 1;
            let file = Arc::new(create_rolled(inner, file_id)?);
            *self = Writer::new(&inner.wal_dir, file.clone(), file_id, FILE_HEADER_LEN)?;
            if tx.send(Written::Rolled { file_id, file }).is_err() {
                return Ok(false);
            }
        }
        if inner.direct_refused.load(Ordering::Relaxed) {
            self.direct = None;
        }
        let base = self.file_len;
        let Built {
            mut buf,
            start,
            frames_at,
            frames_len,
            frames,
        } = b.build(self.direct.as_ref());
        let direct = match &mut self.direct {
            Some(d) => Some(
                d.prepare(base, &mut buf, start)
                    .map_err(|e| LogError::io(file_path(&inner.wal_dir, self.file_id), e))?,
            ),
            None => None,
        };
        self.file_len += frames_len as u64;
        let sent = tx.send(Written::Batch {
            seq: b_seq,
            frames,
            buf,
            frames_at,
            frames_len,
            direct,
            file: self.file.clone(),
            file_id: self.file_id,
            base,
        });
        Ok(sent.is_ok())
    }
}

/// Passes a fault-injection point (see [`super::faults`]; nothing without a seam).
fn fault(inner: &Inner, at: Point) -> std::io::Result<()> {
    match &inner.config.faults {
        Some(s) => s.0.point(at),
        None => Ok(()),
    }
}

/// Whether the log is being closed (a batch waiting for room gives up then).
fn closing(inner: &Inner) -> bool {
    lock(&inner.pending).closing
}

/// Creates the file a roll goes to; on a full disk, removes what it made of it and
/// tries again until there is room (or the log closes).
fn create_rolled(inner: &Inner, file_id: u64) -> Result<File> {
    let path = file_path(&inner.wal_dir, file_id);
    loop {
        let created = fault(inner, Point::Create)
            .map_err(|e| LogError::io(&path, e))
            .and_then(|()| create_file(&inner.wal_dir, file_id));
        if let (Ok(_), Some(s)) = (&created, &inner.config.faults) {
            s.0.durable(&path, super::format::FILE_HEADER_LEN);
        }
        match created {
            Err(LogError::Io { source, .. }) if is_full(&source) && !closing(inner) => {
                inner.disk.filled();
                let _ = std::fs::remove_file(file_path(&inner.wal_dir, file_id));
                std::thread::sleep(RETRY_FULL_EVERY);
            }
            r => return r,
        }
    }
}

impl Syncer {
    fn run(mut self, inner: &Inner, rx: Receiver<Written>) {
        for w in rx {
            let done = match w {
                Written::Batch {
                    seq,
                    frames,
                    buf,
                    frames_at,
                    frames_len,
                    direct,
                    file,
                    file_id,
                    base,
                } => {
                    let path = || file_path(&inner.wal_dir, file_id);
                    let frame_bytes = &buf[frames_at..frames_at + frames_len];
                    let written = fault(inner, Point::Write).and_then(|()| match &direct {
                        Some(d) => match d.write(&buf) {
                            // Opened for direct I/O but not allowed to write that way
                            // (some FUSE and network file systems): through the page
                            // cache from now on.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                tracing::warn!(file = %path().display(), error = %e, "direct writes refused: writing through the page cache");
                                inner.direct_refused.store(true, Ordering::Relaxed);
                                file.write_all_at(frame_bytes, base)
                            }
                            r => r,
                        },
                        None => file.write_all_at(frame_bytes, base),
                    });
                    let started = std::time::Instant::now();
                    let mut synced = written
                        .and_then(|()| fault(inner, Point::Sync))
                        .and_then(|()| file.sync_data());
                    inner.fsync.record(started.elapsed());
                    // A full disk: the whole batch again, at the same place, until it
                    // goes through (see `room`).
                    while synced.as_ref().is_err_and(is_full) && !closing(inner) {
                        inner.disk.filled();
                        std::thread::sleep(RETRY_FULL_EVERY);
                        let again =
                            fault(inner, Point::Write).and_then(|()| match direct.as_ref() {
                                Some(d) if !inner.direct_refused.load(Ordering::Relaxed) => {
                                    d.write(&buf)
                                }
                                _ => file.write_all_at(frame_bytes, base),
                            });
                        synced = again
                            .and_then(|()| fault(inner, Point::Sync))
                            .and_then(|()| file.sync_data());
                        if synced.is_ok() {
                            inner.disk.look();
                        }
                    }
                    if let (Ok(()), Some(s)) = (&synced, &inner.config.faults) {
                        s.0.durable(&path(), base + frames_len as u64);
                    }
                    let held = buf.capacity();
                    let data = Bytes::from(buf).slice(frames_at..frames_at + frames_len);
                    synced
                        .map_err(|e| LogError::io(path(), e))
                        .and_then(|()| self.apply(inner, seq, &frames, (data, held), file_id, base))
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

    /// Applies a durable batch to the durable table and index, caches its data (its
    /// frames, a slice of a buffer of `held` bytes), acknowledges it, and deletes files
    /// it emptied.
    fn apply(
        &mut self,
        inner: &Inner,
        seq: u64,
        frames: &[FrameMeta],
        (data, held): (Bytes, usize),
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
            inner.untiered.set(d.index.log_bytes());
        }
        if frames.iter().any(|f| f.has_data) {
            lock(&inner.cache).insert_batch(file_id, base, data, held);
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
        fault(inner, Point::Checkpoint).map_err(|e| LogError::io(&inner.dir, e))?;
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
