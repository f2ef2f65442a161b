//! Direct I/O for the active log file: batches go from a block-aligned buffer to the
//! disk with `O_DIRECT`, not through the page cache.
//!
//! Why: copying into the page cache is most of a write's CPU. On the 2-core machines
//! this was built on, `dd` of 1 GiB with `conv=fdatasync` took 4.2 s of system time
//! (218 MB/s), and with `oflag=direct` 0.24 s (833 MB/s); a cloud node receiving
//! replication spends that CPU beside its QUIC and TLS work, and a gateway beside its
//! ingest.
//!
//! Direct writes start and end on block boundaries. The writer builds each batch in a
//! block-aligned buffer ([`DirectFile::buffer`]) that starts with the file's last
//! partial block, written again, and ends zero-padded to a whole block; the same
//! buffer then serves the read cache, so the batch is not copied to be written. The
//! writer thread prepares a buffer ([`DirectFile::prepare`]) and the syncer thread
//! writes it before its `fdatasync`, so building batch k+1 overlaps batch k's I/O.
//!
//! So a log file may end in fewer than [`BLOCK`] zero bytes after its last frame, the
//! file's length a multiple of [`BLOCK`]: a scan takes that as the end of the frames
//! ([`is_padding`]). Fsyncs are unchanged: the syncer's
//! `fdatasync` makes the file's new length and the device's cache durable.
//!
//! Where the file system refuses `O_DIRECT` (tmpfs), the log writes through the page
//! cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Alignment of direct writes: offsets, lengths and buffer addresses. 4096 covers
/// devices with 512-byte and 4 KiB logical blocks.
pub const BLOCK: usize = 4096;

/// The active log file opened for direct writes.
#[derive(Debug)]
pub struct DirectFile {
    file: Arc<File>,
    /// The file's logical length (where the next frame goes).
    end: u64,
    /// The bytes of the file's last partial block, written again before the next ones.
    tail: Vec<u8>,
}

impl DirectFile {
    /// Opens `path`, whose logical length is `end`, for direct writes; `reader` is an
    /// ordinary handle of the same file, to read its last partial block. `None` if the
    /// file system does not support direct I/O.
    pub fn open(path: &Path, reader: &File, end: u64) -> io::Result<Option<DirectFile>> {
        let Some(file) = open_direct(path)? else {
            return Ok(None);
        };
        let tail_len = end % BLOCK as u64;
        let mut tail = vec![0u8; tail_len as usize];
        reader.read_exact_at(&mut tail, end - tail_len)?;
        Ok(Some(DirectFile {
            file: Arc::new(file),
            end,
            tail,
        }))
    }

    /// A buffer for the next write, with room for `len` new bytes: the bytes from
    /// `start` on begin on a block boundary with the file's last partial block. Push
    /// the new bytes, then hand it to [`DirectFile::write`]; it must not grow beyond
    /// its capacity (that would move it off the boundary).
    pub fn buffer(&self, len: usize) -> (Vec<u8>, usize) {
        let mut buf = Vec::with_capacity(self.tail.len() + len + 2 * BLOCK);
        let start = to_block_boundary(&buf);
        buf.resize(start, 0);
        buf.extend_from_slice(&self.tail);
        (buf, start)
    }

    /// Writes the new bytes of `buf` (from [`DirectFile::buffer`]) at `pos`, which must
    /// be the file's logical end. Pads `buf` with zeros to a whole block.
    pub fn write(&mut self, pos: u64, buf: &mut Vec<u8>, start: usize) -> io::Result<()> {
        let w = self.prepare(pos, buf, start)?;
        w.write(buf)
    }

    /// The CPU half of [`DirectFile::write`]: pads `buf` and takes its bytes as the
    /// file's new end; the returned write puts them there. The log's writer thread
    /// prepares a batch and its syncer thread writes it, so the next batch is built
    /// while this one goes to the disk. Writes must be done in the order prepared.
    pub fn prepare(&mut self, pos: u64, buf: &mut Vec<u8>, start: usize) -> io::Result<Prepared> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if pos != self.end {
            return invalid(format!(
                "a direct write at {pos}, but the file ends at {}",
                self.end
            ));
        }
        let filled = buf.len() - start;
        buf.resize(start + filled.next_multiple_of(BLOCK), 0);
        let block = &buf[start..];
        if block.as_ptr() as usize % BLOCK != 0 {
            return invalid("a direct write from a buffer off the block boundary".into());
        }
        debug_assert_eq!(&block[..self.tail.len()], &self.tail[..]);
        let at = pos - self.tail.len() as u64;
        self.end = pos + (filled - self.tail.len()) as u64;
        self.tail.clear();
        self.tail
            .extend_from_slice(&block[filled - filled % BLOCK..filled]);
        Ok(Prepared {
            file: self.file.clone(),
            at,
            start,
        })
    }
}

/// A direct write prepared by [`DirectFile::prepare`].
#[derive(Debug)]
pub struct Prepared {
    file: Arc<File>,
    /// File offset of `buf[start..]` (a block boundary).
    at: u64,
    start: usize,
}

impl Prepared {
    /// Writes the prepared buffer's blocks.
    pub fn write(&self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(&buf[self.start..], self.at)
    }
}

/// Opens the existing file `path` for direct writes; `None` if its file system does
/// not support direct I/O.
pub fn open_direct(path: &Path) -> io::Result<Option<File>> {
    open_with(path, OpenOptions::new().write(true))
}

/// Opens the existing file `path` for direct reads; `None` if its file system does
/// not support direct I/O. Read whole blocks at block offsets into a buffer from
/// [`aligned`].
pub fn open_direct_read(path: &Path) -> io::Result<Option<File>> {
    open_with(path, OpenOptions::new().read(true))
}

fn open_with(path: &Path, options: &mut OpenOptions) -> io::Result<Option<File>> {
    match options.custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A zeroed buffer whose bytes from `start` (the second value) on, `len` of them, begin
/// on a block boundary.
pub fn aligned(len: usize) -> (Vec<u8>, usize) {
    let mut buf = Vec::with_capacity(len + BLOCK);
    let start = to_block_boundary(&buf);
    buf.resize(start + len, 0);
    (buf, start)
}

/// How far into `buf`'s allocation its first block boundary is.
fn to_block_boundary(buf: &[u8]) -> usize {
    (BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK
}

/// Bytes [`write_blocks`] copies into its aligned buffer at a time.
const STRETCH: usize = 1 << 20;

/// Writes the whole blocks of `data` from the start of `file` (opened with
/// [`open_direct`]), copied a stretch at a time into a block-aligned buffer; returns
/// how many bytes that is, a multiple of [`BLOCK`]. The rest is the caller's to write
/// through the page cache.
pub fn write_blocks(file: &File, data: &[u8]) -> io::Result<usize> {
    let whole = data.len() - data.len() % BLOCK;
    let (mut buf, start) = aligned(STRETCH.min(whole));
    for (i, part) in data[..whole].chunks(STRETCH).enumerate() {
        buf[start..start + part.len()].copy_from_slice(part);
        file.write_all_at(&buf[start..start + part.len()], (i * STRETCH) as u64)?;
    }
    Ok(whole)
}

/// Whether `rest`, the bytes from a position to the end of a file of `file_len` bytes,
/// is a direct write's padding: all zero, shorter than a block, the file ending on a
/// block boundary.
pub fn is_padding(rest: &[u8], file_len: u64) -> bool {
    rest.len() < BLOCK && file_len % BLOCK as u64 == 0 && rest.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `data` the way the log's writer does.
    fn write(d: &mut DirectFile, pos: u64, data: &[u8]) -> io::Result<()> {
        let (mut buf, start) = d.buffer(data.len());
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        buf.extend_from_slice(data);
        d.write(pos, &mut buf, start)?;
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (ptr, cap),
            "no reallocation"
        );
        Ok(())
    }

    #[test]
    fn writes_land_where_a_buffered_write_would_put_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"header").expect("write");
        let reader = File::open(&path).expect("open");
        let Some(mut d) = DirectFile::open(&path, &reader, 6).expect("open direct") else {
            // tmpfs: the log writes through the page cache; nothing more to check.
            return;
        };
        let mut want = b"header".to_vec();
        // Sizes that end inside a block, on a boundary, and span many blocks.
        for (i, len) in [10, 4080, 3, BLOCK, (1 << 20) + 17, 2 << 20, 1]
            .into_iter()
            .enumerate()
        {
            let a: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8 | 1).collect();
            write(&mut d, want.len() as u64, &a).expect("write");
            want.extend_from_slice(&a);
            let got = std::fs::read(&path).expect("read");
            assert_eq!(got.len() % BLOCK, 0);
            assert_eq!(&got[..want.len()], &want[..]);
            assert!(is_padding(&got[want.len()..], got.len() as u64));
        }
        // A write anywhere but the end is refused.
        assert!(write(&mut d, 3, b"x").is_err());
        // Reopened at its logical end, the writer carries on from the partial block.
        let mut d = DirectFile::open(&path, &reader, want.len() as u64)
            .expect("reopen")
            .expect("direct");
        write(&mut d, want.len() as u64, b"more").expect("write");
        want.extend_from_slice(b"more");
        assert_eq!(
            &std::fs::read(&path).expect("read")[..want.len()],
            &want[..]
        );
    }

    #[test]
    fn only_short_zero_runs_to_a_block_boundary_are_padding() {
        assert!(is_padding(&[0; 100], 8192));
        assert!(is_padding(&[], 4096));
        assert!(
            !is_padding(&[0; 100], 8000),
            "the file does not end on a block"
        );
        assert!(!is_padding(&[0, 0, 1], 8192), "not all zero");
        assert!(!is_padding(&[0; BLOCK], 8192), "a whole block of zeros");
    }
}
