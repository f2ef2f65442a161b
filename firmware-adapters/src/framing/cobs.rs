//! Binary records: COBS framing with a CRC-32 per frame.
//!
//! For sensors that send binary records over a serial line. COBS (Consistent Overhead
//! Byte Stuffing, Cheshire and Baker, IEEE/ACM Transactions on Networking, 1999)
//! removes every `00` byte from the data, so `00` can only mean "end of frame"; it
//! costs one byte per 254 bytes of data at most. A CRC-32 inside each frame catches
//! corrupted frames.
//!
//! # On the wire
//!
//! A frame carrying a payload of `n` bytes (any bytes, `n` ≥ 0) is sent as:
//!
//! ```text
//! 00                         delimiter: ends whatever came before (garbage, a torn frame)
//! COBS(payload ‖ crc)        n + 4 bytes, stuffed: no 00 in it
//! 00                         delimiter: ends this frame
//! ```
//!
//! - `crc` is the CRC-32 of the payload ([`crc32`](super::crc32): IEEE 802.3 / zlib,
//!   check value `CBF43926`), as 4 bytes **little-endian**.
//! - COBS splits the data at each `00` into blocks. Each block is sent as a *code*
//!   byte `c` (`01`..=`FF`) followed by `c - 1` data bytes, none of them `00`. A code
//!   below `FF` stands for its data bytes followed by one `00`, except for the last
//!   block of the frame, whose `00` is not part of the data; `FF` stands for 254
//!   data bytes and no `00` (the data goes on in the next block).
//! - The leading delimiter is what lets a receiver that joined mid-frame, or lost
//!   bytes, resynchronise with the very next frame. Two delimiters in a row (the end of
//!   one frame and the start of the next) make an empty frame, which is skipped.
//!   Senders should send it; the decoder also accepts frames without it.
//!
//! Example: the payload `01 00 02` has CRC-32 `108DD209`, so the data is
//! `01 00 02 09 D2 8D 10`, in two blocks (`01`, then `02 09 D2 8D 10`):
//!
//! ```text
//! 00  02 01  06 02 09 D2 8D 10  00
//! ```
//!
//! # What the decoder rejects
//!
//! Each rejection is reported once, as a [`FrameError`], and the decoder resumes at
//! the next `00`:
//!
//! - [`Malformed`](FrameError::Malformed): a delimiter inside a block (its code
//!   promised more bytes) — garbage, or bytes lost on the line;
//! - [`TooShort`](FrameError::TooShort): fewer than 4 data bytes, no room for the CRC;
//! - [`BadChecksum`](FrameError::BadChecksum): the CRC does not match the payload;
//! - [`TooLong`](FrameError::TooLong): more data than the decoder's buffer holds
//!   (payload limit + 4).
//!
//! Garbage between frames thus costs one rejection per stretch between delimiters,
//! and never a good frame, because every good frame starts with its own delimiter.

use super::crc32::{crc32, Crc32};
use super::{Decoder, FrameBuf, FrameError};

/// Bytes of CRC at the end of each frame's data.
pub const CRC_LEN: usize = 4;

/// The most bytes [`encode_into`] writes for a payload of `payload_len` bytes: both
/// delimiters, the data, its CRC and the COBS code bytes.
pub const fn max_encoded_len(payload_len: usize) -> usize {
    let data = payload_len + CRC_LEN;
    2 + data + data / 254 + 1
}

/// The output buffer given to [`encode_into`] is shorter than
/// [`max_encoded_len`] of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall;

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("output buffer too small for the encoded frame")
    }
}

impl core::error::Error for BufferTooSmall {}

/// Encodes `payload` as one complete frame, delimiters included, into the front of
/// `out`; returns the number of bytes written. `out` must hold at least
/// [`max_encoded_len`]`(payload.len())` bytes.
pub fn encode_into(payload: &[u8], out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    if out.len() < max_encoded_len(payload.len()) {
        return Err(BufferTooSmall);
    }
    let crc = crc32(payload).to_le_bytes();
    let total = payload.len() + CRC_LEN;
    out[0] = 0;
    // Where the current block's code byte goes, the next byte to write, the code.
    let mut code_at = 1;
    let mut w = 2;
    let mut code: u8 = 1;
    for (i, &b) in payload.iter().chain(crc.iter()).enumerate() {
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            // A full block; open the next one only if data follows.
            if code == 0xFF && i + 1 < total {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out[w] = 0;
    Ok(w + 1)
}

/// Encodes `payload` as one complete frame, delimiters included.
#[cfg(feature = "alloc")]
pub fn encode(payload: &[u8]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec![0; max_encoded_len(payload.len())];
    let n = match encode_into(payload, &mut out) {
        Ok(n) => n,
        Err(BufferTooSmall) => unreachable!("sized by max_encoded_len"),
    };
    out.truncate(n);
    out
}

/// Decodes COBS frames with a CRC-32 (see the [module docs](self)); returns each
/// frame's payload, without its CRC.
///
/// The buffer holds a frame's payload and CRC: it is the storage `S` given to
/// [`with_buffer`](Cobs::with_buffer) (payloads up to its length − 4), or one
/// [`new`](Cobs::new) allocates.
#[derive(Clone)]
pub struct Cobs<S> {
    buf: FrameBuf<S>,
    state: State,
    /// Data bytes left in the current block.
    remaining: u8,
    /// The current block stands for a `00` after its data, if more data follows.
    zero_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: the next nonzero byte is a frame's first code byte.
    Idle,
    /// Inside a frame.
    Frame,
    /// The frame was rejected: skip to the next delimiter.
    Discard,
}

#[cfg(feature = "alloc")]
impl Cobs<alloc::boxed::Box<[u8]>> {
    /// A decoder for payloads of at most `max_payload` bytes, with a buffer on the
    /// heap.
    pub fn new(max_payload: usize) -> Self {
        Cobs::with_buffer(alloc::vec![0; max_payload.saturating_add(CRC_LEN)].into_boxed_slice())
    }
}

impl<S: AsMut<[u8]>> Cobs<S> {
    /// A decoder that buffers frames in `storage`: payloads may be as long as it is,
    /// less the 4 bytes of CRC.
    pub fn with_buffer(storage: S) -> Self {
        Cobs {
            buf: FrameBuf::new(storage),
            state: State::Idle,
            remaining: 0,
            zero_pending: false,
        }
    }

    /// Appends a data byte; on overflow rejects the frame.
    fn push(&mut self, b: u8) -> Result<(), FrameError> {
        if self.buf.push(b) {
            Ok(())
        } else {
            self.buf.len = 0;
            self.state = State::Discard;
            Err(FrameError::TooLong)
        }
    }

    /// Takes a nonzero byte of a frame: a data byte of the current block, or the code
    /// byte that starts the next one.
    fn data_or_code(&mut self, b: u8) -> Result<(), FrameError> {
        if self.remaining > 0 {
            self.remaining -= 1;
            return self.push(b);
        }
        // The previous block's implied zero, now that data follows it.
        if self.state == State::Frame && self.zero_pending {
            self.push(0)?;
        }
        self.state = State::Frame;
        self.remaining = b - 1;
        self.zero_pending = b != 0xFF;
        Ok(())
    }

    /// The frame ended at a delimiter: check it and hand out its payload.
    fn finish(&mut self) -> Result<&[u8], FrameError> {
        let complete = self.remaining == 0;
        self.remaining = 0;
        self.zero_pending = false;
        let data = self.buf.take();
        if !complete {
            return Err(FrameError::Malformed);
        }
        let Some(split) = data.len().checked_sub(CRC_LEN) else {
            return Err(FrameError::TooShort);
        };
        let (payload, crc) = data.split_at(split);
        let mut sent = [0u8; CRC_LEN];
        sent.copy_from_slice(crc);
        let mut c = Crc32::new();
        c.update(payload);
        if c.finish() != u32::from_le_bytes(sent) {
            return Err(FrameError::BadChecksum);
        }
        Ok(payload)
    }
}

impl<S: AsMut<[u8]>> Decoder for Cobs<S> {
    fn decode<'a>(&'a mut self, input: &mut &[u8]) -> Option<Result<&'a [u8], FrameError>> {
        while let Some((&b, rest)) = input.split_first() {
            *input = rest;
            match self.state {
                State::Discard => {
                    if b == 0 {
                        self.state = State::Idle;
                    }
                }
                // An empty frame, or an idle line.
                State::Idle if b == 0 => {}
                State::Frame if b == 0 => {
                    self.state = State::Idle;
                    return Some(self.finish());
                }
                State::Idle | State::Frame => {
                    if let Err(e) = self.data_or_code(b) {
                        self.remaining = 0;
                        self.zero_pending = false;
                        return Some(Err(e));
                    }
                }
            }
        }
        None
    }

    fn reset(&mut self) -> Option<FrameError> {
        let partial = self.state == State::Frame;
        self.buf.len = 0;
        self.state = State::Idle;
        self.remaining = 0;
        self.zero_pending = false;
        partial.then_some(FrameError::Truncated)
    }

    fn max_frame_len(&self) -> usize {
        self.buf.cap.saturating_sub(CRC_LEN)
    }
}

impl<S> core::fmt::Debug for Cobs<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cobs")
            .field("buffered", &self.buf.len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `chunk` bytes; returns everything decoded.
    fn run<D: Decoder>(d: &mut D, input: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        for mut piece in input.chunks(chunk.max(1)) {
            while let Some(r) = d.decode(&mut piece) {
                out.push(r.map(<[u8]>::to_vec));
            }
        }
        out
    }

    /// Bytes from hex pairs separated by spaces.
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
            .collect()
    }

    #[test]
    fn the_documented_example() {
        assert_eq!(encode(&[1, 0, 2]), hex("00 02 01 06 02 09 D2 8D 10 00"));
        let mut d = Cobs::new(16);
        assert_eq!(
            run(&mut d, &hex("00 02 01 06 02 09 D2 8D 10 00"), 1),
            [Ok(vec![1, 0, 2])]
        );
    }

    #[test]
    fn cobs_blocks_follow_the_paper() {
        // The empty payload: data is its CRC, 00 00 00 00 → four blocks of one code.
        assert_eq!(encode(&[]), hex("00 01 01 01 01 01 00"));
        // "hi": CRC D8932AAC → data 68 69 AC 2A 93 D8, no zero: one block.
        assert_eq!(encode(b"hi"), hex("00 07 68 69 AC 2A 93 D8 00"));
        // 254 nonzero bytes fill one block exactly; the CRC starts the next one.
        let long: Vec<u8> = (1..=254u8).collect();
        let frame = encode(&long);
        assert_eq!(frame[1], 0xFF);
        assert_eq!(&frame[2..256], &long[..]);
        assert!(frame.len() <= max_encoded_len(long.len()));
        assert!(!frame[1..frame.len() - 1].contains(&0));
    }

    #[test]
    fn a_block_of_254_at_the_very_end_needs_no_extra_code() {
        // Find a 250-byte nonzero payload whose CRC has no zero byte: then the data is
        // exactly 254 nonzero bytes, one full block, and nothing follows it.
        let payload = (1..=255u8)
            .map(|seed| {
                (0..250)
                    .map(|i| ((i + usize::from(seed)) % 255 + 1) as u8)
                    .collect::<Vec<u8>>()
            })
            .find(|p| !crc32(p).to_le_bytes().contains(&0))
            .expect("some payload has a CRC without zero bytes");
        let frame = encode(&payload);
        assert_eq!(frame.len(), 1 + 1 + 254 + 1);
        assert_eq!(frame[1], 0xFF);
        let mut d = Cobs::new(250);
        assert_eq!(run(&mut d, &frame, 7), [Ok(payload.clone())]);
        // A sender that does add the trailing 01 code is understood the same.
        let mut padded = frame[..frame.len() - 1].to_vec();
        padded.extend_from_slice(&[0x01, 0x00]);
        assert_eq!(run(&mut d, &padded, 7), [Ok(payload)]);
    }

    #[test]
    fn round_trip_in_any_chunking() {
        let payloads: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0, 0],
            b"hello".to_vec(),
            (0..=255u8).collect(),
            (0..600).map(|i| (i % 7) as u8).collect(),
        ];
        let wire: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        for chunk in [1, 2, 5, 254, 255, 4096] {
            let mut d = Cobs::new(600);
            let got = run(&mut d, &wire, chunk);
            let want: Vec<_> = payloads.iter().cloned().map(Ok).collect();
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(d.reset(), None);
        }
    }

    #[test]
    fn frames_without_a_leading_delimiter_are_accepted() {
        let mut wire = encode(b"one")[1..].to_vec();
        wire.extend_from_slice(&encode(b"two")[1..]);
        let mut d = Cobs::new(8);
        assert_eq!(
            run(&mut d, &wire, 3),
            [Ok(b"one".to_vec()), Ok(b"two".to_vec())]
        );
    }

    #[test]
    fn corrupted_frames_are_rejected_and_the_next_frame_is_kept() {
        let good = encode(b"reading");
        let mut d = Cobs::new(16);

        // A flipped bit in the payload: the CRC catches it.
        let mut flipped = good.clone();
        flipped[3] ^= 0x10;
        let mut wire = flipped;
        wire.extend_from_slice(&good);
        assert_eq!(
            run(&mut d, &wire, 4),
            [Err(FrameError::BadChecksum), Ok(b"reading".to_vec())]
        );

        // A code byte promising more than there is: malformed.
        assert_eq!(
            run(&mut d, &[0x00, 0x05, 0x11, 0x00], 1),
            [Err(FrameError::Malformed)]
        );
        // Data too short for a CRC.
        assert_eq!(
            run(&mut d, &[0x00, 0x03, 0x11, 0x22, 0x00], 1),
            [Err(FrameError::TooShort)]
        );

        // Lost bytes: the frame is cut and the rest of it runs into the next one's
        // leading delimiter.
        let mut wire = good[..5].to_vec();
        wire.extend_from_slice(&good);
        assert_eq!(
            run(&mut d, &wire, 2),
            [Err(FrameError::Malformed), Ok(b"reading".to_vec())]
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_rejected_once() {
        let mut d = Cobs::new(4);
        let mut wire = encode(b"12345");
        wire.extend_from_slice(&encode(b"1234"));
        wire.extend_from_slice(&[0xFF; 600]);
        wire.extend_from_slice(&encode(b""));
        assert_eq!(
            run(&mut d, &wire, 3),
            [
                Err(FrameError::TooLong),
                Ok(b"1234".to_vec()),
                Err(FrameError::TooLong),
                Ok(vec![]),
            ]
        );
        assert_eq!(d.max_frame_len(), 4);
    }

    #[test]
    fn an_overflowing_implied_zero_is_rejected() {
        // Blocks of code 01 stand for zeros: 10 of them overflow an 8-byte buffer.
        let mut wire = vec![0x00];
        wire.extend_from_slice(&[0x01; 10]);
        wire.push(0x00);
        wire.extend_from_slice(&encode(b"ok"));
        let mut d = Cobs::new(4);
        assert_eq!(
            run(&mut d, &wire, 1),
            [Err(FrameError::TooLong), Ok(b"ok".to_vec())]
        );
    }

    #[test]
    fn reset_reports_a_partial_frame() {
        let frame = encode(b"abc");
        let mut d = Cobs::new(8);
        assert_eq!(run(&mut d, &frame[..4], 1), []);
        assert_eq!(d.reset(), Some(FrameError::Truncated));
        assert_eq!(run(&mut d, &frame[4..], 1), [Err(FrameError::Malformed)]);
        assert_eq!(run(&mut d, &frame, 1), [Ok(b"abc".to_vec())]);
        assert_eq!(d.reset(), None);
    }

    #[test]
    fn runs_on_a_borrowed_buffer_and_encodes_into_a_slice() {
        let mut out = [0u8; max_encoded_len(3)];
        let n = encode_into(b"xyz", &mut out).expect("fits");
        assert_eq!(encode_into(b"xyz", &mut out[..n - 1]), Err(BufferTooSmall));
        let mut d = Cobs::with_buffer([0u8; 7]);
        let mut input = &out[..n];
        assert_eq!(d.decode(&mut input), Some(Ok(&b"xyz"[..])));
        assert_eq!(d.decode(&mut input), None);
        assert_eq!(Cobs::with_buffer([0u8; 2]).max_frame_len(), 0);
    }
}
