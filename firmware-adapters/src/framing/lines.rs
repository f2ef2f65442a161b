//! Newline-delimited text.

use super::{Decoder, FrameBuf, FrameError};

/// Decodes newline-delimited lines: each frame is the bytes before a `\n`, without
/// it and without a `\r` just before it (so both `\n` and `\r\n` end a line; a `\r`
/// anywhere else is part of the line).
///
/// - Empty lines are skipped, not returned.
/// - A line longer than the limit is rejected once, as [`FrameError::TooLong`], as
///   soon as it passes the limit; the rest of it, up to the next `\n`, is discarded.
/// - With [`require_utf8`](Lines::require_utf8), a line that is not valid UTF-8 is
///   rejected as [`FrameError::NotUtf8`], so every frame returned is a valid `str`.
///
/// The buffer is the storage `S` given to [`with_buffer`](Lines::with_buffer) (its
/// length is the limit), or one [`new`](Lines::new) allocates.
#[derive(Clone)]
pub struct Lines<S> {
    buf: FrameBuf<S>,
    utf8: bool,
    /// A `\r` was seen and held back: it ends the line if a `\n` comes next.
    cr: bool,
    /// The current line passed the limit and was rejected: skip to the next `\n`.
    discarding: bool,
}

#[cfg(feature = "alloc")]
impl Lines<alloc::boxed::Box<[u8]>> {
    /// A decoder for lines of at most `max_len` bytes (not counting `\r\n`), with a
    /// buffer of that size on the heap.
    pub fn new(max_len: usize) -> Self {
        Lines::with_buffer(alloc::vec![0; max_len].into_boxed_slice())
    }
}

impl<S: AsMut<[u8]>> Lines<S> {
    /// A decoder that buffers lines in `storage`: lines may be as long as it is.
    pub fn with_buffer(storage: S) -> Self {
        Lines {
            buf: FrameBuf::new(storage),
            utf8: false,
            cr: false,
            discarding: false,
        }
    }

    /// Whether lines must be valid UTF-8 (off by default).
    pub fn require_utf8(mut self, yes: bool) -> Self {
        self.utf8 = yes;
        self
    }

    /// Appends a byte of the current line; on overflow rejects the line.
    fn push(&mut self, b: u8) -> Result<(), FrameError> {
        if self.buf.push(b) {
            Ok(())
        } else {
            self.buf.len = 0;
            self.discarding = true;
            Err(FrameError::TooLong)
        }
    }
}

impl<S: AsMut<[u8]>> Decoder for Lines<S> {
    fn decode<'a>(&'a mut self, input: &mut &[u8]) -> Option<Result<&'a [u8], FrameError>> {
        while let Some((&b, rest)) = input.split_first() {
            *input = rest;
            if b == b'\n' {
                self.cr = false;
                if core::mem::take(&mut self.discarding) || self.buf.len == 0 {
                    continue;
                }
                let utf8 = self.utf8;
                let line = self.buf.take();
                if utf8 && core::str::from_utf8(line).is_err() {
                    return Some(Err(FrameError::NotUtf8));
                }
                return Some(Ok(line));
            }
            if self.discarding {
                continue;
            }
            // A held-back '\r' not followed by '\n' belongs to the line.
            if core::mem::take(&mut self.cr) {
                if let Err(e) = self.push(b'\r') {
                    return Some(Err(e));
                }
            }
            if b == b'\r' {
                self.cr = true;
            } else if let Err(e) = self.push(b) {
                return Some(Err(e));
            }
        }
        None
    }

    fn reset(&mut self) -> Option<FrameError> {
        let partial = self.buf.len > 0 && !self.discarding;
        self.buf.len = 0;
        self.cr = false;
        self.discarding = false;
        partial.then_some(FrameError::Truncated)
    }

    fn max_frame_len(&self) -> usize {
        self.buf.cap
    }
}

impl<S> core::fmt::Debug for Lines<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lines")
            .field("buffered", &self.buf.len)
            .field("utf8", &self.utf8)
            .field("discarding", &self.discarding)
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
            assert!(piece.is_empty());
        }
        out
    }

    fn ok(s: &str) -> Result<Vec<u8>, FrameError> {
        Ok(s.as_bytes().to_vec())
    }

    #[test]
    fn lf_and_crlf_end_lines_and_empty_lines_are_skipped() {
        for chunk in [1, 2, 3, 100] {
            let mut d = Lines::new(32);
            let got = run(&mut d, b"a\r\nbb\n\n\r\n\nccc\r\n", chunk);
            assert_eq!(got, [ok("a"), ok("bb"), ok("ccc")], "chunk {chunk}");
            assert_eq!(d.reset(), None);
        }
    }

    #[test]
    fn a_lone_cr_is_part_of_the_line() {
        let mut d = Lines::new(32);
        assert_eq!(
            run(&mut d, b"a\rb\n\r\rc\r\r\n", 1),
            [ok("a\rb"), ok("\r\rc\r")]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_fits_even_with_crlf() {
        let mut d = Lines::new(4);
        assert_eq!(run(&mut d, b"abcd\r\nabcd\n", 1), [ok("abcd"), ok("abcd")]);
        assert_eq!(d.max_frame_len(), 4);
    }

    #[test]
    fn a_long_line_is_rejected_once_and_the_next_line_is_kept() {
        for chunk in [1, 3, 100] {
            let mut d = Lines::new(4);
            let got = run(&mut d, b"abcdefghijklmnop\r\nok\nabcd\r\r\nxyz\n", chunk);
            assert_eq!(
                got,
                [
                    Err(FrameError::TooLong),
                    ok("ok"),
                    Err(FrameError::TooLong),
                    ok("xyz")
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn the_rejection_comes_as_soon_as_the_limit_is_passed() {
        let mut d = Lines::new(3);
        let mut input: &[u8] = b"abcdefg";
        assert_eq!(d.decode(&mut input), Some(Err(FrameError::TooLong)));
        assert_eq!(input, b"efg");
        assert_eq!(d.decode(&mut input), None);
        // Already reported: dropping the rest is not a second error.
        assert_eq!(d.reset(), None);
    }

    #[test]
    fn utf8_is_checked_only_when_asked() {
        let input = b"caf\xc3\xa9\n\xff\xfe\nok\n";
        let mut lax = Lines::new(16);
        assert_eq!(
            run(&mut lax, input, 1),
            [ok("café"), Ok(vec![0xff, 0xfe]), ok("ok")]
        );
        let mut strict = Lines::new(16).require_utf8(true);
        assert_eq!(
            run(&mut strict, input, 1),
            [ok("café"), Err(FrameError::NotUtf8), ok("ok")]
        );
    }

    #[test]
    fn reset_reports_a_partial_line_and_starts_afresh() {
        let mut d = Lines::new(8);
        assert_eq!(run(&mut d, b"part", 2), []);
        assert_eq!(d.reset(), Some(FrameError::Truncated));
        assert_eq!(run(&mut d, b"ial\nnext\n", 2), [ok("ial"), ok("next")]);
        assert_eq!(d.reset(), None);
    }

    #[test]
    fn runs_on_a_borrowed_buffer_without_alloc() {
        let mut storage = [0u8; 5];
        let mut d = Lines::with_buffer(&mut storage[..]);
        let mut input: &[u8] = b"12345\n123456\n";
        assert_eq!(d.decode(&mut input), Some(Ok(&b"12345"[..])));
        assert_eq!(d.decode(&mut input), Some(Err(FrameError::TooLong)));
        assert_eq!(d.decode(&mut input), None);
        let mut d = Lines::with_buffer([0u8; 0]);
        let mut input: &[u8] = b"\n\nx\n";
        assert_eq!(d.decode(&mut input), Some(Err(FrameError::TooLong)));
        assert_eq!(d.decode(&mut input), None);
    }
}
