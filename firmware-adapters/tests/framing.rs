//! Property tests of the frame decoders: no input makes them panic or hand out
//! anything over their limit, and good frames survive any garbage around them.

use proptest::prelude::*;
use tributary_adapters::framing::{cobs, Cobs, Decoder, FrameError, Lines};

/// Feeds `input` cut at the given points (taken modulo its length); returns the frames
/// and the rejections, in order.
fn run<D: Decoder>(d: &mut D, input: &[u8], cuts: &[usize]) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    let max = d.max_frame_len();
    let mut out = Vec::new();
    for w in points.windows(2) {
        let mut piece = &input[w[0]..w[1]];
        while let Some(r) = d.decode(&mut piece) {
            if let Ok(f) = r {
                assert!(
                    f.len() <= max,
                    "frame of {} bytes over the limit {max}",
                    f.len()
                );
            }
            out.push(r.map(<[u8]>::to_vec));
        }
        assert!(
            piece.is_empty(),
            "decode returned None before consuming its input"
        );
    }
    out
}

fn frames(out: &[Result<Vec<u8>, FrameError>]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect()
}

fn errors(out: &[Result<Vec<u8>, FrameError>]) -> usize {
    out.iter().filter(|r| r.is_err()).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn garbage_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        max in 0usize..64,
    ) {
        let mut lines = Lines::new(max);
        for f in frames(&run(&mut lines, &input, &cuts)) {
            prop_assert!(!f.is_empty() && !f.contains(&b'\n'));
        }
        lines.reset();
        let mut strict = Lines::new(max).require_utf8(true);
        for f in frames(&run(&mut strict, &input, &cuts)) {
            prop_assert!(std::str::from_utf8(&f).is_ok());
        }
        strict.reset();
        let mut cobs = Cobs::new(max);
        run(&mut cobs, &input, &cuts);
        cobs.reset();
        // Whatever the garbage left behind, a fresh frame after it decodes.
        let out = run(&mut cobs, &cobs::encode(&[0x42; 3][..max.min(3)]), &cuts);
        prop_assert_eq!(frames(&out), vec![vec![0x42; max.min(3)]]);
    }

    #[test]
    fn cobs_frames_survive_garbage_between_them(
        items in prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..48),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            1..12,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut wire = Vec::new();
        let mut dirty = 0;
        for (garbage, payload) in &items {
            wire.extend_from_slice(garbage);
            dirty += usize::from(garbage.iter().any(|&b| b != 0));
            wire.extend_from_slice(&cobs::encode(payload));
        }
        let mut d = Cobs::new(300);
        let out = run(&mut d, &wire, &cuts);
        let want: Vec<Vec<u8>> = items.iter().map(|(_, p)| p.clone()).collect();
        // A stretch of garbage passes as a frame only if its CRC-32 matches by chance
        // (odds 2^-32 per stretch): ignored here.
        prop_assert_eq!(frames(&out), want);
        prop_assert!(errors(&out) >= dirty, "{} rejections for {} stretches of garbage", errors(&out), dirty);
        prop_assert_eq!(d.reset(), None);
    }

    #[test]
    fn lines_survive_rejected_lines_between_them(
        items in prop::collection::vec(
            (
                // Garbage that must be rejected: too long, or not UTF-8.
                prop_oneof![
                    prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 33..100),
                    prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..20)
                        .prop_map(|mut v| { v.push(0xFF); v }),
                ],
                "[a-zA-Z0-9 =.,;:é-]{1,16}",
                any::<bool>(),
                0usize..3,
            ),
            1..12,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (garbage, line, crlf, blank) in &items {
            let eol: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
            wire.extend_from_slice(garbage);
            wire.extend_from_slice(eol);
            for _ in 0..*blank {
                wire.extend_from_slice(eol);
            }
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(eol);
            want.push(line.as_bytes().to_vec());
        }
        let mut d = Lines::new(32).require_utf8(true);
        let out = run(&mut d, &wire, &cuts);
        prop_assert_eq!(frames(&out), want);
        prop_assert_eq!(errors(&out), items.len());
        prop_assert_eq!(d.reset(), None);
    }

    #[test]
    fn cobs_round_trips_any_payload(
        payload in prop::collection::vec(any::<u8>(), 0..1200),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let frame = cobs::encode(&payload);
        prop_assert!(frame.len() <= cobs::max_encoded_len(payload.len()));
        prop_assert_eq!(frame.first(), Some(&0));
        prop_assert_eq!(frame.last(), Some(&0));
        prop_assert!(!frame[1..frame.len() - 1].contains(&0));
        let mut d = Cobs::new(payload.len());
        prop_assert_eq!(run(&mut d, &frame, &cuts), vec![Ok(payload)]);
    }
}
