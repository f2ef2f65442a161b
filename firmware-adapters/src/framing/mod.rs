//! Frame decoders: cut the byte stream of a serial line into frames.
//!
//! A serial line delivers bytes in arbitrary pieces, and a sensor may start talking
//! mid-frame, reset, or be plugged in while it sends. A [`Decoder`] is fed whatever
//! arrived and gives back, one at a time, every frame the input completes — or an
//! error for each piece of input it rejects. It keeps at most one partial frame, in a
//! buffer of fixed size chosen when it is made, and resynchronises on the next
//! delimiter after anything it rejects.
//!
//! Two framings:
//!
//! | decoder | wire format | rejects |
//! |---|---|---|
//! | [`Lines`] | text, `\n` or `\r\n` after each line | lines over the length limit, invalid UTF-8 (if asked) |
//! | [`Cobs`] | `00`, COBS(payload ‖ CRC-32), `00` — see [`cobs`] | broken COBS, frames too short or too long, bad CRC |
//!
//! # Example
//!
//! ```
//! use tributary_adapters::framing::{Decoder, FrameError, Lines};
//!
//! let mut lines = Lines::new(16);
//! let mut input: &[u8] = b"t=21.5\r\nthis line is far too long\nrh=40";
//! let mut got = Vec::new();
//! while let Some(frame) = lines.decode(&mut input) {
//!     got.push(frame.map(|f| f.to_vec()));
//! }
//! assert_eq!(got, [Ok(b"t=21.5".to_vec()), Err(FrameError::TooLong)]);
//! // "rh=40" waits for its newline; dropping it is reported as a truncated frame.
//! assert_eq!(lines.reset(), Some(FrameError::Truncated));
//! ```

pub mod cobs;
pub mod crc32;
mod lines;

pub use cobs::Cobs;
pub use lines::Lines;

/// A push-based frame decoder: bytes in, complete frames (or rejections) out.
///
/// Decoders never allocate while decoding and never panic on any input.
pub trait Decoder {
    /// Consumes bytes from the front of `input` until it completes a frame or rejects
    /// a piece of input, and returns that; `input` is left at the first byte not yet
    /// consumed. Returns `None` once all of `input` is consumed without completing
    /// anything; a partial frame stays buffered for the next call.
    ///
    /// Call it in a loop until it returns `None`. Each rejected piece of input is
    /// reported once; the bytes after it up to the next delimiter are discarded
    /// silently.
    fn decode<'a>(&'a mut self, input: &mut &[u8]) -> Option<Result<&'a [u8], FrameError>>;

    /// Drops the partial frame, if any, and starts afresh, as at a new connection.
    /// Returns [`FrameError::Truncated`] if a partial frame was dropped.
    fn reset(&mut self) -> Option<FrameError>;

    /// The longest frame [`decode`](Decoder::decode) returns, in bytes.
    fn max_frame_len(&self) -> usize;
}

impl<D: Decoder + ?Sized> Decoder for &mut D {
    fn decode<'a>(&'a mut self, input: &mut &[u8]) -> Option<Result<&'a [u8], FrameError>> {
        (**self).decode(input)
    }

    fn reset(&mut self) -> Option<FrameError> {
        (**self).reset()
    }

    fn max_frame_len(&self) -> usize {
        (**self).max_frame_len()
    }
}

#[cfg(feature = "alloc")]
impl<D: Decoder + ?Sized> Decoder for alloc::boxed::Box<D> {
    fn decode<'a>(&'a mut self, input: &mut &[u8]) -> Option<Result<&'a [u8], FrameError>> {
        (**self).decode(input)
    }

    fn reset(&mut self) -> Option<FrameError> {
        (**self).reset()
    }

    fn max_frame_len(&self) -> usize {
        (**self).max_frame_len()
    }
}

/// Why a decoder rejected a piece of input. Rejected input is never returned as a
/// frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame grew past the decoder's limit; it is discarded up to the next
    /// delimiter.
    TooLong,
    /// A line that is not valid UTF-8 ([`Lines::require_utf8`]).
    NotUtf8,
    /// Input that is not valid in the framing, such as a COBS block cut short by a
    /// delimiter: usually garbage, or bytes lost on the line.
    Malformed,
    /// A frame too short to hold its checksum.
    TooShort,
    /// A frame whose checksum does not match its content.
    BadChecksum,
    /// A partial frame dropped by [`Decoder::reset`], e.g. when the device went away.
    Truncated,
}

impl FrameError {
    /// Every kind, in the order of [`index`](FrameError::index).
    pub const ALL: [FrameError; 6] = [
        FrameError::TooLong,
        FrameError::NotUtf8,
        FrameError::Malformed,
        FrameError::TooShort,
        FrameError::BadChecksum,
        FrameError::Truncated,
    ];

    /// A short snake_case name, fit for a metric label.
    pub const fn label(self) -> &'static str {
        match self {
            FrameError::TooLong => "too_long",
            FrameError::NotUtf8 => "not_utf8",
            FrameError::Malformed => "malformed",
            FrameError::TooShort => "too_short",
            FrameError::BadChecksum => "bad_checksum",
            FrameError::Truncated => "truncated",
        }
    }

    /// The position of this kind in [`ALL`](FrameError::ALL), for per-kind counters.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::TooLong => "frame longer than the limit",
            FrameError::NotUtf8 => "line is not valid UTF-8",
            FrameError::Malformed => "malformed frame encoding",
            FrameError::TooShort => "frame shorter than its checksum",
            FrameError::BadChecksum => "frame checksum mismatch",
            FrameError::Truncated => "partial frame dropped",
        })
    }
}

impl core::error::Error for FrameError {}

/// A byte buffer of fixed capacity over borrowed or owned storage.
#[derive(Clone)]
struct FrameBuf<S> {
    storage: S,
    /// Bytes held.
    len: usize,
    /// The storage's length, fixed at creation.
    cap: usize,
}

impl<S: AsMut<[u8]>> FrameBuf<S> {
    fn new(mut storage: S) -> Self {
        let cap = storage.as_mut().len();
        FrameBuf {
            storage,
            len: 0,
            cap,
        }
    }

    /// Appends `b`; `false` (and nothing appended) if the buffer is full.
    fn push(&mut self, b: u8) -> bool {
        match self.storage.as_mut().get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Empties the buffer and returns what it held.
    fn take(&mut self) -> &[u8] {
        let n = core::mem::take(&mut self.len);
        &self.storage.as_mut()[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in FrameError::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let mut labels: Vec<_> = FrameError::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FrameError::ALL.len());
    }

    #[test]
    fn decoders_work_through_references_and_boxes() {
        let mut boxed: Box<dyn Decoder + Send> = Box::new(Lines::new(8));
        let mut input: &[u8] = b"abc\n";
        assert_eq!(boxed.decode(&mut input), Some(Ok(&b"abc"[..])));
        assert_eq!(boxed.max_frame_len(), 8);
        let by_ref = &mut boxed;
        let mut input: &[u8] = b"xy";
        assert_eq!(by_ref.decode(&mut input), None);
        assert_eq!(by_ref.reset(), Some(FrameError::Truncated));
    }
}
