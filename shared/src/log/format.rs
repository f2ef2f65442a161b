//! On-disk format of a container's write-ahead log. Pure encode/decode, no I/O.
//!
//! A container's log is a sequence of files `wal/{file_id:016x}.log`, numbered from 0
//! without gaps. Each file is:
//!
//! ```text
//! file header (32 bytes):
//!   0  magic      8 bytes  "TRIBWAL1"
//!   8  version    u32 LE   = 1
//!  12  reserved   u32      = 0
//!  16  file_id    u64 LE   (equals the number in the file name)
//!  24  reserved   u32      = 0
//!  28  crc32c     u32 LE   over bytes 0..28
//! then frames, back to back, until the end of the file:
//!   0  body_len   u32 LE   length of the body (the bytes after this 8-byte header)
//!   4  crc32c     u32 LE   over the 4 body_len bytes followed by the body
//!   8  body:
//!        kind     u8       1 append, 2 create, 3 seal, 4 truncate, 5 merge, 6 delete,
//!                          7 merge with attributes
//!        seq      u64 LE   group-commit batch number (strictly increasing across files)
//!        ...      kind-specific fields, all LE:
//!        append:   segment u64, data_offset u64, n_attrs u16, n × (id u128, value i64), data
//!        create:   segment u64, name_len u16, name (UTF-8)
//!        seal:     segment u64
//!        truncate: segment u64, new_start u64
//!        merge:    target u64, source u64
//!        delete:   segment u64
//!        merge with attributes:
//!                  target u64, source u64, n_attrs u16, n × (id u128, value i64)
//! ```
//!
//! A merge that sets none of the target's attributes is written as kind 5, so logs that
//! do not use attributes on merges stay readable by code that predates kind 7.
//!
//! An append frame carries the bytes of one or more appends to one segment that were
//! committed in the same batch, and the final values of the attributes they set. A frame
//! is all-or-nothing: on recovery, a frame whose length or CRC does not check is either a
//! torn tail (cut) or corruption (reported), never data.

use std::fmt;

/// Magic bytes at the start of every log file.
pub const FILE_MAGIC: [u8; 8] = *b"TRIBWAL1";
/// Version of the log file format written by this code.
pub const FILE_VERSION: u32 = 1;
/// Length of the file header.
pub const FILE_HEADER_LEN: u64 = 32;
/// Length of the frame header (body length + CRC).
pub const FRAME_HEADER_LEN: usize = 8;
/// Smallest valid body: kind + seq.
const MIN_BODY_LEN: usize = 9;
/// Bytes of an append frame before its data, with no attributes.
pub const APPEND_FIXED_LEN: usize = FRAME_HEADER_LEN + MIN_BODY_LEN + 8 + 8 + 2;
/// Bytes one attribute adds to an append frame.
pub const ATTRIBUTE_LEN: usize = 16 + 8;

const KIND_APPEND: u8 = 1;
const KIND_CREATE: u8 = 2;
const KIND_SEAL: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_MERGE: u8 = 5;
const KIND_DELETE: u8 = 6;
const KIND_MERGE_ATTRS: u8 = 7;

/// One logged operation. Append data travels beside it (see [`encode_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A segment was created with this id and name.
    Create { seg: u64, name: String },
    /// `len` bytes were appended to the segment's own data at `data_offset`, and the
    /// attributes were set to these values.
    Append {
        seg: u64,
        data_offset: u64,
        len: u64,
        attrs: Vec<(u128, i64)>,
    },
    /// The segment was sealed.
    Seal { seg: u64 },
    /// Data below `start` was dropped.
    Truncate { seg: u64, start: u64 },
    /// `source` (sealed) was appended to the end of `target` and ceased to exist, and
    /// the target's attributes were set to these values.
    Merge {
        target: u64,
        source: u64,
        attrs: Vec<(u128, i64)>,
    },
    /// The segment was deleted.
    Delete { seg: u64 },
}

/// Encodes the file header for `file_id`.
pub fn encode_file_header(file_id: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&file_id.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header; returns a reason when it is not a valid header for `file_id`.
pub fn check_file_header(h: &[u8], file_id: u64) -> Result<(), String> {
    if h.len() < FILE_HEADER_LEN as usize {
        return Err(format!(
            "file header truncated: {} of {FILE_HEADER_LEN} bytes",
            h.len()
        ));
    }
    if h[0..8] != FILE_MAGIC {
        return Err("bad magic: not a Tributary log file".into());
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc != crc32c::crc32c(&h[0..28]) {
        return Err("file header CRC mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FILE_VERSION {
        return Err(format!("unsupported log format version {version}"));
    }
    let id = u64::from_le_bytes(h[16..24].try_into().map_err(|_| "short header")?);
    if id != file_id {
        return Err(format!("header names file {id}, expected {file_id}"));
    }
    Ok(())
}

/// Appends one frame holding `op` (and `data` for an append) to `out`.
/// For `Op::Append`, `len` must equal `data.len()`.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, op: &Op, data: &[u8]) {
    let start = out.len();
    encode_frame_head(out, seq, op, data.len());
    out.extend_from_slice(data);
    seal_frame(&mut out[start..]);
}

/// Bytes [`encode_frame_head`] writes for `op`.
pub fn frame_head_len(op: &Op) -> usize {
    let fixed = FRAME_HEADER_LEN + MIN_BODY_LEN;
    match op {
        Op::Append { attrs, .. } => APPEND_FIXED_LEN + attrs.len() * ATTRIBUTE_LEN,
        Op::Create { name, .. } => fixed + 8 + 2 + name.len(),
        Op::Seal { .. } | Op::Delete { .. } => fixed + 8,
        Op::Truncate { .. } => fixed + 16,
        Op::Merge { attrs, .. } if attrs.is_empty() => fixed + 16,
        Op::Merge { attrs, .. } => fixed + 16 + 2 + attrs.len() * ATTRIBUTE_LEN,
    }
}

/// Appends everything of a frame but its data to `out`, its length counting the
/// `data_len` bytes the caller puts right after; then [`seal_frame`] sets the CRC.
pub fn encode_frame_head(out: &mut Vec<u8>, seq: u64, op: &Op, data_len: usize) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let put64 = |o: &mut Vec<u8>, v: u64| o.extend_from_slice(&v.to_le_bytes());
    match op {
        Op::Append {
            seg,
            data_offset,
            len,
            attrs,
        } => {
            debug_assert_eq!(*len as usize, data_len);
            out.push(KIND_APPEND);
            put64(out, seq);
            put64(out, *seg);
            put64(out, *data_offset);
            put_attrs(out, attrs);
        }
        Op::Create { seg, name } => {
            out.push(KIND_CREATE);
            put64(out, seq);
            put64(out, *seg);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        Op::Seal { seg } => {
            out.push(KIND_SEAL);
            put64(out, seq);
            put64(out, *seg);
        }
        Op::Truncate { seg, start } => {
            out.push(KIND_TRUNCATE);
            put64(out, seq);
            put64(out, *seg);
            put64(out, *start);
        }
        Op::Merge {
            target,
            source,
            attrs,
        } => {
            out.push(if attrs.is_empty() {
                KIND_MERGE
            } else {
                KIND_MERGE_ATTRS
            });
            put64(out, seq);
            put64(out, *target);
            put64(out, *source);
            if !attrs.is_empty() {
                put_attrs(out, attrs);
            }
        }
        Op::Delete { seg } => {
            out.push(KIND_DELETE);
            put64(out, seq);
            put64(out, *seg);
        }
    }
    debug_assert_eq!(out.len() - start, frame_head_len(op));
    let body_len = (out.len() - start - FRAME_HEADER_LEN + data_len) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
}

/// Sets the CRC of the complete frame `frame` (header and data, as encoded).
pub fn seal_frame(frame: &mut [u8]) {
    set_frame_crc(frame, frame_crc(frame));
}

/// The CRC of `frame` as encoded so far: what the frame's CRC covers of it. Continue it
/// over the data appended after with `crc32c::crc32c_append`, and store it with
/// [`set_frame_crc`].
pub fn frame_crc(frame: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&frame[0..4]), &frame[FRAME_HEADER_LEN..])
}

/// Stores `crc` as the CRC of `frame`.
pub fn set_frame_crc(frame: &mut [u8], crc: u32) {
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Where the data of the append frame at the start of `buf` lies in `buf`, read from
/// its header without checking the CRC: for frames this process wrote and kept in
/// memory. `None` if `buf` does not start with a whole append frame.
pub fn append_data(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let end = frame_len(buf)?;
    if buf.get(FRAME_HEADER_LEN) != Some(&KIND_APPEND) {
        return None;
    }
    let n: [u8; 2] = buf
        .get(APPEND_FIXED_LEN - 2..APPEND_FIXED_LEN)?
        .try_into()
        .ok()?;
    let start = APPEND_FIXED_LEN + u16::from_le_bytes(n) as usize * ATTRIBUTE_LEN;
    (start <= end && end <= buf.len()).then_some(start..end)
}

/// Writes `n_attrs u16, n × (id u128, value i64)`; callers keep `n` within `u16`.
fn put_attrs(out: &mut Vec<u8>, attrs: &[(u128, i64)]) {
    out.extend_from_slice(&(attrs.len() as u16).to_le_bytes());
    for (id, v) in attrs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A frame read back from disk.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// Batch number.
    pub seq: u64,
    /// The operation.
    pub op: Op,
    /// Where the append data starts, counted from the frame's first byte.
    pub data_pos: usize,
    /// Total length of the frame on disk.
    pub frame_len: usize,
}

/// Why bytes are not a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame header announces: `need` bytes in all.
    Incomplete { need: usize },
    /// Not a valid frame.
    Invalid(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { need } => {
                write!(f, "frame truncated: needs {need} bytes")
            }
            FrameError::Invalid(r) => f.write_str(r),
        }
    }
}

/// Length of the frame starting at `buf`, from its header, or `None` if the header
/// itself is not complete. Does not check the CRC.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let h: [u8; 4] = buf.get(0..4)?.try_into().ok()?;
    Some(FRAME_HEADER_LEN + u32::from_le_bytes(h) as usize)
}

/// Decodes the frame at the start of `buf`, checking length and CRC. `max_body_len`
/// bounds what a length field may claim, so garbage never makes us allocate or read
/// gigabytes.
pub fn decode_frame(buf: &[u8], max_body_len: usize) -> Result<Frame, FrameError> {
    decode(buf, max_body_len, true)
}

/// Decodes the frame at the start of `buf` like [`decode_frame`], but without checking
/// its CRC: for a frame known to be damaged, to learn what it claims to be (recovery
/// keeps a damaged append whose neighbours are sound, and reads of it fail).
pub fn decode_damaged_frame(buf: &[u8], max_body_len: usize) -> Result<Frame, FrameError> {
    decode(buf, max_body_len, false)
}

fn decode(buf: &[u8], max_body_len: usize, check_crc: bool) -> Result<Frame, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Incomplete {
            need: FRAME_HEADER_LEN,
        });
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if body_len < MIN_BODY_LEN || body_len > max_body_len {
        return Err(FrameError::Invalid(format!(
            "impossible frame length {body_len}"
        )));
    }
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return Err(FrameError::Incomplete { need: total });
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME_HEADER_LEN..total];
    if check_crc && crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), body) != crc {
        return Err(FrameError::Invalid("frame CRC mismatch".into()));
    }
    let mut r = Reader { b: body, pos: 0 };
    let kind = r.u8()?;
    let seq = r.u64()?;
    let mut data_pos = total;
    let op = match kind {
        KIND_APPEND => {
            let seg = r.u64()?;
            let data_offset = r.u64()?;
            let attrs = r.attrs()?;
            data_pos = FRAME_HEADER_LEN + r.pos;
            Op::Append {
                seg,
                data_offset,
                len: (total - data_pos) as u64,
                attrs,
            }
        }
        KIND_CREATE => {
            let seg = r.u64()?;
            let n = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(n)?)
                .map_err(|_| FrameError::Invalid("segment name is not UTF-8".into()))?
                .to_string();
            Op::Create { seg, name }
        }
        KIND_SEAL => Op::Seal { seg: r.u64()? },
        KIND_TRUNCATE => Op::Truncate {
            seg: r.u64()?,
            start: r.u64()?,
        },
        KIND_MERGE => Op::Merge {
            target: r.u64()?,
            source: r.u64()?,
            attrs: Vec::new(),
        },
        KIND_MERGE_ATTRS => Op::Merge {
            target: r.u64()?,
            source: r.u64()?,
            attrs: r.attrs()?,
        },
        KIND_DELETE => Op::Delete { seg: r.u64()? },
        k => return Err(FrameError::Invalid(format!("unknown frame kind {k}"))),
    };
    if !matches!(op, Op::Append { .. }) && r.pos != body.len() {
        return Err(FrameError::Invalid("trailing bytes in frame".into()));
    }
    Ok(Frame {
        seq,
        op,
        data_pos,
        frame_len: total,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| FrameError::Invalid("frame body too short for its fields".into()))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn u128(&mut self) -> Result<u128, FrameError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(a))
    }
    fn attrs(&mut self) -> Result<Vec<(u128, i64)>, FrameError> {
        let n = self.u16()? as usize;
        let mut attrs = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let id = self.u128()?;
            let v = self.u64()? as i64;
            attrs.push((id, v));
        }
        Ok(attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(op: Op, data: &[u8]) {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &op, data);
        let f = decode_frame(&buf, 1 << 20).expect("decodes");
        assert_eq!(f.seq, 42);
        assert_eq!(f.op, op);
        assert_eq!(f.frame_len, buf.len());
        assert_eq!(&buf[f.data_pos..], data);
        assert_eq!(frame_len(&buf), Some(buf.len()));
        assert_eq!(buf.len(), frame_head_len(&op) + data.len());
        let in_memory = matches!(op, Op::Append { .. }).then_some(f.data_pos..buf.len());
        assert_eq!(append_data(&buf), in_memory);
    }

    #[test]
    fn every_op_roundtrips() {
        roundtrip(
            Op::Append {
                seg: 7,
                data_offset: 100,
                len: 5,
                attrs: vec![(u128::MAX, -1), (3, 4)],
            },
            b"hello",
        );
        roundtrip(
            Op::Create {
                seg: 1,
                name: "scope/stream/0".into(),
            },
            b"",
        );
        roundtrip(Op::Seal { seg: 1 }, b"");
        roundtrip(Op::Truncate { seg: 1, start: 9 }, b"");
        roundtrip(
            Op::Merge {
                target: 1,
                source: 2,
                attrs: Vec::new(),
            },
            b"",
        );
        roundtrip(
            Op::Merge {
                target: 1,
                source: 2,
                attrs: vec![(u128::MAX, i64::MIN), (5, 6)],
            },
            b"",
        );
        roundtrip(Op::Delete { seg: 1 }, b"");
        // A merge without attributes keeps the original kind and layout.
        let mut buf = Vec::new();
        let merge = Op::Merge {
            target: 1,
            source: 2,
            attrs: Vec::new(),
        };
        encode_frame(&mut buf, 1, &merge, b"");
        assert_eq!(buf[FRAME_HEADER_LEN], KIND_MERGE);
        assert_eq!(buf.len(), FRAME_HEADER_LEN + MIN_BODY_LEN + 16);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        let op = Op::Append {
            seg: 1,
            data_offset: 0,
            len: 3,
            attrs: vec![(1, 2)],
        };
        encode_frame(&mut buf, 1, &op, b"abc");
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_frame(&b, 1 << 20).is_err(), "flip of bit {i} missed");
        }
    }

    #[test]
    fn truncated_frame_is_incomplete_and_garbage_is_invalid() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &Op::Seal { seg: 3 }, b"");
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_frame(&buf[..cut], 1 << 20),
                Err(FrameError::Incomplete { .. })
            ));
        }
        assert!(matches!(
            decode_frame(&[0u8; 64], 1 << 20),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            decode_frame(&[0xff; 64], 1 << 20),
            Err(FrameError::Invalid(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_frame(&bytes, 1 << 20);
            let _ = check_file_header(&bytes, 0);
            let _ = frame_len(&bytes);
        }

        #[test]
        fn a_frame_with_any_content_roundtrips(
            seq in proptest::num::u64::ANY,
            seg in proptest::num::u64::ANY,
            attrs in proptest::collection::vec((proptest::num::u128::ANY, proptest::num::i64::ANY), 0..8),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let op = Op::Append { seg, data_offset: 0, len: data.len() as u64, attrs };
            let mut buf = Vec::new();
            encode_frame(&mut buf, seq, &op, &data);
            let f = decode_frame(&buf, 1 << 20).expect("decodes");
            proptest::prop_assert_eq!(f.op, op);
            proptest::prop_assert_eq!(&buf[f.data_pos..], &data[..]);
        }
    }

    #[test]
    fn file_header_checks() {
        let h = encode_file_header(5);
        assert!(check_file_header(&h, 5).is_ok());
        assert!(check_file_header(&h, 6).is_err());
        assert!(check_file_header(&h[..10], 5).is_err());
        let mut bad = h;
        bad[17] ^= 1;
        assert!(check_file_header(&bad, 5).is_err());
    }
}
