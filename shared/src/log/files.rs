//! Log files on disk: naming, creation (with the fsyncs that make a new file durable),
//! scanning for recovery, and reading one frame back with its CRC checked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::direct::{self, is_padding, BLOCK};
use super::error::{LogError, Result};
use super::format::{
    check_file_header, decode_damaged_frame, decode_frame, encode_file_header, frame_len, Frame,
    Op, APPEND_FIXED_LEN, FILE_HEADER_LEN, FRAME_HEADER_LEN,
};

/// Largest frame body any configuration can produce; a length field above it is garbage.
pub const MAX_FRAME_BODY: usize = 80 << 20;

/// Path of log file `id` in `wal_dir`.
pub fn file_path(wal_dir: &Path, id: u64) -> PathBuf {
    wal_dir.join(format!("{id:016x}.log"))
}

/// Ids of the log files in `wal_dir`, ascending. Other files are ignored.
pub fn list_files(wal_dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let rd = std::fs::read_dir(wal_dir).map_err(|e| LogError::io(wal_dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| LogError::io(wal_dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 16 {
            if let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Fsyncs a directory, so that a created or deleted entry survives power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Creates log file `id` with its header, fsyncs it and its directory.
pub fn create_file(wal_dir: &Path, id: u64) -> Result<File> {
    let path = file_path(wal_dir, id);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    f.write_all(&encode_file_header(id))
        .and_then(|_| f.sync_all())
        .map_err(|e| LogError::io(&path, e))?;
    sync_dir(wal_dir)?;
    Ok(f)
}

/// Opens log file `id` for reading and writing and checks its header.
pub fn open_file(wal_dir: &Path, id: u64) -> Result<File> {
    let path = file_path(wal_dir, id);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LogError::MissingFile {
                    path: path.clone(),
                    reason: "it holds live data".into(),
                }
            } else {
                LogError::io(&path, e)
            }
        })?;
    check_header(&f, &path, id)?;
    Ok(f)
}

/// Checks the header of an open log file.
fn check_header(f: &File, path: &Path, id: u64) -> Result<()> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    let n = read_up_to(f, &mut h, 0).map_err(|e| LogError::io(path, e))?;
    check_file_header(&h[..n], id).map_err(|reason| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    })
}

/// Reads the frame at `pos` into `buf` and checks it. The outer error is an I/O
/// failure; the inner one says why the bytes there are not a frame.
fn read_frame_at(
    f: &File,
    pos: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<std::result::Result<Frame, String>> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    let n = read_up_to(f, &mut h, pos)?;
    let Some(len) = frame_len(&h[..n]).filter(|l| *l <= MAX_FRAME_BODY + FRAME_HEADER_LEN) else {
        return Ok(Err("frame header unreadable".into()));
    };
    buf.resize(len, 0);
    let n = read_up_to(f, buf, pos)?;
    Ok(decode_frame(&buf[..n], MAX_FRAME_BODY).map_err(|e| e.to_string()))
}

fn read_up_to(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the frame at `pos` and returns its append data, after checking length and CRC.
pub fn read_frame_data(f: &File, path: &Path, pos: u64) -> Result<Bytes> {
    let mut buf = Vec::new();
    let frame = read_frame_at(f, pos, &mut buf)
        .map_err(|e| LogError::io(path, e))?
        .map_err(|reason| LogError::Corrupt {
            path: path.to_path_buf(),
            offset: pos,
            reason,
        })?;
    Ok(Bytes::from(buf).slice(frame.data_pos..))
}

/// Like [`read_frame_data`], from `f` opened with [`direct::open_direct_read`]: the
/// frame's blocks go from the disk into an aligned buffer, not through the page cache.
/// `data_len`, the frame's data length as indexed, sizes the read; a frame whose
/// header holds more attributes than fit in the block read beside it takes a second.
pub(crate) fn read_frame_data_direct(
    f: &File,
    path: &Path,
    pos: u64,
    data_len: u64,
) -> Result<Bytes> {
    let at = pos - pos % BLOCK as u64;
    let skip = (pos - at) as usize;
    let mut want = skip + APPEND_FIXED_LEN + data_len as usize;
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: pos,
        reason,
    };
    loop {
        let size = want.next_multiple_of(BLOCK);
        let (mut buf, start) = direct::aligned(size);
        let n = read_up_to(f, &mut buf[start..], at).map_err(|e| LogError::io(path, e))?;
        let frame = buf[start..start + n].get(skip..).unwrap_or_default();
        match frame_len(frame) {
            Some(len) if len > frame.len() && n == size && skip + len > want => {
                if len > MAX_FRAME_BODY + FRAME_HEADER_LEN {
                    return Err(corrupt("frame header unreadable".into()));
                }
                want = skip + len;
                continue;
            }
            _ => {}
        }
        let fr = decode_frame(frame, MAX_FRAME_BODY).map_err(|e| corrupt(e.to_string()))?;
        let from = start + skip;
        return Ok(Bytes::from(buf).slice(from + fr.data_pos..from + fr.frame_len));
    }
}

/// What a scan of one log file found.
#[derive(Debug)]
pub struct Scan {
    /// Frames with their positions: valid ones, and the damaged appends of `damaged`.
    pub frames: Vec<(u64, Frame)>,
    /// Positions of damaged append frames kept (see [`scan_file`]).
    pub damaged: Vec<(u64, String)>,
    /// End of the last valid frame.
    pub valid_end: u64,
    /// A bad frame at this position that ends the file, and why it is bad.
    pub bad_tail: Option<(u64, String)>,
}

/// Reads every frame of a log file, stopping at the first that does not check (a
/// direct write's zero padding after the last frame is no bad frame) — unless it is a
/// *damaged append*: its length field leads to a valid frame, and its body reads as an
/// append (a flipped bit in its data, the bulk of a log). That one is kept, with its
/// attributes dropped (they may be what is damaged) and the next frame's batch number,
/// and listed in `damaged`; reads of its bytes fail, the rest of the log serves.
/// A crash cannot leave one: a torn write is the last frame.
pub fn scan_file(f: &File, path: &Path, id: u64) -> Result<Scan> {
    let io = |e| LogError::io(path, e);
    let file_len = f.metadata().map_err(io)?.len();
    check_header(f, path, id)?;
    let mut frames = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    let mut buf = Vec::new();
    let mut bad_tail = None;
    let mut damaged = Vec::new();
    while pos < file_len {
        match read_frame_at(f, pos, &mut buf).map_err(io)? {
            Ok(fr) => {
                let len = fr.frame_len as u64;
                frames.push((pos, fr));
                pos += len;
            }
            Err(reason) => {
                if let Some((fr, claimed)) =
                    damaged_append(f, pos, file_len, &mut buf).map_err(io)?
                {
                    // Corruption, not a torn write, only if a frame follows that was
                    // written after this one was durable (see `later_batch_follows`).
                    // Its batch is between the sound frames around it; its own number,
                    // unchecked, says which (a torn write's header is usually whole).
                    let before = frames.last().map_or(fr.seq, |(_, p): &(u64, Frame)| p.seq);
                    let batch = claimed.clamp(before, fr.seq);
                    if later_batch_follows(f, path, pos + 1, batch + BATCHES_AFTER_DURABLE)? {
                        let len = fr.frame_len as u64;
                        damaged.push((pos, reason));
                        frames.push((pos, fr));
                        pos += len;
                        continue;
                    }
                }
                let mut rest = vec![0u8; (file_len - pos).min(BLOCK as u64) as usize];
                let n = read_up_to(f, &mut rest, pos).map_err(io)?;
                if !is_padding(&rest[..n], file_len) {
                    bad_tail = Some((pos, reason));
                }
                break;
            }
        }
    }
    Ok(Scan {
        frames,
        damaged,
        valid_end: pos,
        bad_tail,
    })
}

/// The frame at `pos`, which does not check, as a damaged append (see [`scan_file`]),
/// with the batch number it claims: `None` unless a valid frame starts where its length
/// field says it ends and its body reads as an append.
fn damaged_append(
    f: &File,
    pos: u64,
    file_len: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Frame, u64)>> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    let n = read_up_to(f, &mut h, pos)?;
    let Some(len) = frame_len(&h[..n]).filter(|l| *l <= MAX_FRAME_BODY + FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let next = pos + len as u64;
    if next >= file_len {
        return Ok(None);
    }
    let mut after = Vec::new();
    let Ok(following) = read_frame_at(f, next, &mut after)? else {
        return Ok(None);
    };
    buf.resize(len, 0);
    let n = read_up_to(f, buf, pos)?;
    match decode_damaged_frame(&buf[..n], MAX_FRAME_BODY) {
        Ok(Frame {
            seq: claimed,
            op:
                Op::Append {
                    seg,
                    data_offset,
                    len: data_len,
                    ..
                },
            data_pos,
            frame_len,
        }) => Ok(Some((
            Frame {
                seq: following.seq,
                op: Op::Append {
                    seg,
                    data_offset,
                    len: data_len,
                    attrs: Vec::new(),
                },
                data_pos,
                frame_len,
            },
            claimed,
        ))),
        _ => Ok(None),
    }
}

/// Whether log file `id` holds no frame: its creation was cut off (a short or missing
/// header, nothing after it), or it is its header and at most zero padding. A file a
/// roll creates is written to only after every batch of the file before it is durable,
/// so while it holds no frame, a bad tail of the file before it can be a torn write.
pub fn holds_no_frame(wal_dir: &Path, id: u64) -> Result<bool> {
    let path = file_path(wal_dir, id);
    let len = std::fs::metadata(&path)
        .map_err(|e| LogError::io(&path, e))?
        .len();
    match open_file(wal_dir, id) {
        Ok(f) => {
            let scan = scan_file(&f, &path, id)?;
            Ok(scan.frames.is_empty() && scan.bad_tail.is_none())
        }
        Err(LogError::Corrupt { .. }) => Ok(len <= FILE_HEADER_LEN),
        Err(e) => Err(e),
    }
}

/// A frame of batch `q` was written after batch `q - 2` was durable: the writer hands
/// each batch to the syncer through a rendezvous, so it writes batch `q` only once the
/// syncer took `q - 1`, having made `q - 2` durable.
pub const BATCHES_AFTER_DURABLE: u64 = 2;

/// Whether a valid frame from a batch numbered `min_seq` or later starts anywhere in
/// `[from, end of file)`. With `min_seq` [`BATCHES_AFTER_DURABLE`] past the bad frame's
/// batch at `from - 1`, that bad frame is corruption, not a torn write.
pub fn later_batch_follows(f: &File, path: &Path, from: u64, min_seq: u64) -> Result<bool> {
    let io = |e| LogError::io(path, e);
    let file_len = f.metadata().map_err(io)?.len();
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    let mut buf = Vec::new();
    for pos in from..file_len.saturating_sub(FRAME_HEADER_LEN as u64 - 1) {
        // Only lengths that fit in the file are worth reading at every byte offset.
        read_up_to(f, &mut hdr, pos).map_err(io)?;
        if frame_len(&hdr).is_some_and(|len| len as u64 <= file_len - pos) {
            if let Ok(fr) = read_frame_at(f, pos, &mut buf).map_err(io)? {
                if fr.seq >= min_seq {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{encode_frame, Op};

    #[test]
    fn a_direct_read_gives_what_a_buffered_read_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("frames");
        // Frames at positions off the block boundaries: small, across boundaries, and
        // one whose attributes make its header longer than a block (read twice).
        let mut bytes = vec![0u8; 100];
        let mut frames = Vec::new();
        for (i, (len, attrs)) in [(10, 0), (9000, 1), (70_000, 0), (5, 400)]
            .into_iter()
            .enumerate()
        {
            frames.push((bytes.len() as u64, len));
            let op = Op::Append {
                seg: 1,
                data_offset: 0,
                len: len as u64,
                attrs: (0..attrs).map(|a| (a as u128, a as i64)).collect(),
            };
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            encode_frame(&mut bytes, 1, &op, &data);
        }
        // As the log's direct writes leave a file: padded to a whole block.
        bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
        std::fs::write(&path, &bytes).expect("write");
        let f = File::open(&path).expect("open");
        let Some(d) = direct::open_direct_read(&path).expect("open direct") else {
            eprintln!("no direct I/O on {}: nothing to compare", path.display());
            return;
        };
        for &(pos, len) in &frames {
            let want = read_frame_data(&f, &path, pos).expect("buffered read");
            let got = read_frame_data_direct(&d, &path, pos, len as u64).expect("direct read");
            assert_eq!(got.len(), len);
            assert!(got == want, "frame at {pos}");
        }
        // A frame the file's end cuts short is refused, not read as what is there.
        let (pos, len) = frames[2];
        let cut = (pos as usize + len).next_multiple_of(BLOCK) - BLOCK;
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let d = direct::open_direct_read(&path)
            .expect("open")
            .expect("direct");
        let r = read_frame_data_direct(&d, &path, pos, len as u64);
        assert!(matches!(r, Err(LogError::Corrupt { .. })), "{r:?}");
    }
}
