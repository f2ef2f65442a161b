//! Corrupted files on disk: flipped bytes, truncated files, missing files. Each is
//! reported with an error naming the file (and offset); none is served as data, none
//! panics.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tributary::log::{AppendOptions, LogConfig, LogError, SegmentLog};

const EVENT: usize = 500;
const EVENTS: usize = 200;

fn config() -> LogConfig {
    LogConfig {
        max_file_bytes: 16 << 10,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

fn wal(dir: &Path, id: u64) -> PathBuf {
    dir.join("wal").join(format!("{id:016x}.log"))
}

fn last_file(dir: &Path) -> (u64, PathBuf) {
    let mut ids: Vec<u64> = std::fs::read_dir(dir.join("wal"))
        .expect("wal")
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            u64::from_str_radix(n.strip_suffix(".log")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    let id = *ids.last().expect("a log file");
    (id, wal(dir, id))
}

/// A log with one segment of EVENTS appends of EVENT bytes, spread over several files.
fn build(dir: &Path) -> Vec<u8> {
    let rt = rt();
    rt.block_on(async {
        let log = SegmentLog::open(dir, config()).expect("open");
        log.create("s").await.expect("create");
        let mut all = Vec::new();
        for i in 0..EVENTS {
            let data = vec![(i % 251) as u8; EVENT];
            log.append("s", &data, &AppendOptions::default())
                .await
                .expect("append");
            all.extend_from_slice(&data);
        }
        log.close().expect("close");
        all
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn read_all(log: &SegmentLog) -> Result<Vec<u8>, LogError> {
    rt().block_on(async {
        let mut out = Vec::new();
        loop {
            let r = log
                .read("s", out.len() as u64, 1 << 20, Duration::ZERO)
                .await?;
            if r.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&r.to_bytes());
        }
    })
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    b[0] ^= 0x40;
    f.write_all_at(&b, at).expect("write byte");
}

fn assert_names(e: &LogError, path: &Path) {
    let msg = e.to_string();
    let name = path.file_name().expect("name").to_string_lossy();
    assert!(msg.contains(name.as_ref()), "{msg:?} does not name {name}");
}

#[test]
fn flipped_byte_in_an_old_file_is_reported_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = build(dir.path());
    // Byte 200 of file 0 lies in the data of its first append frame.
    flip(&wal(dir.path(), 0), 200);
    let log = SegmentLog::open(dir.path(), config()).expect("old files are checked on read");
    let e = read_all(&log).expect_err("corruption must not be served");
    assert!(matches!(e, LogError::Unreadable { .. }), "{e}");
    assert_names(&e, &wal(dir.path(), 0));
    // What comes before the damaged frame is served; a read that starts at it gets an
    // error naming the bytes it spans; what comes after it is served.
    let (from, to) = match &e {
        LogError::Unreadable { from, to, .. } => (*from, *to),
        _ => unreachable!(),
    };
    assert_eq!(from, 0, "the damaged frame is the first");
    let after = rt()
        .block_on(log.read("s", to, 1 << 20, Duration::ZERO))
        .expect("read after the damage");
    assert!(after.to_bytes()[..] == data[to as usize..to as usize + after.len()]);
    // Data in the other files is still served.
    let info = log.info("s").expect("info");
    assert_eq!(info.length as usize, data.len());
    let tail = rt()
        .block_on(log.read("s", info.length - 100, 100, Duration::ZERO))
        .expect("tail read");
    assert_eq!(&tail.to_bytes()[..], &data[data.len() - 100..]);
}

#[test]
fn a_read_serves_the_data_before_a_damaged_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = build(dir.path());
    // The second frame of file 0 (each append is one frame of EVENT data bytes).
    flip(&wal(dir.path(), 0), 200 + (EVENT + 100) as u64);
    let log = SegmentLog::open(dir.path(), config()).expect("open");
    let r = rt()
        .block_on(log.read("s", 0, 1 << 20, Duration::ZERO))
        .expect("the intact bytes before the damage");
    assert!(!r.is_empty() && !r.end_of_segment, "{}", r.len());
    assert!(r.to_bytes()[..] == data[..r.len()]);
    let e = rt()
        .block_on(log.read("s", r.len() as u64, 1 << 20, Duration::ZERO))
        .expect_err("the damaged bytes");
    match &e {
        LogError::Unreadable {
            segment, from, to, ..
        } => {
            assert_eq!((segment.as_str(), *from), ("s", r.len() as u64));
            assert!(*to > *from, "{e}");
        }
        other => panic!("expected Unreadable, got {other}"),
    }
    assert_names(&e, &wal(dir.path(), 0));
    // The range is kept for `status` and metrics.
    let damaged = log.damaged();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(
        (damaged[0].segment.as_str(), damaged[0].from),
        ("s", r.len() as u64)
    );
}

#[test]
fn flipped_data_byte_in_the_replayed_file_is_kept_to_its_frame_and_the_node_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = build(dir.path());
    let (_, path) = last_file(dir.path());
    // In the data of the replayed file's first frame (header 8, kind, batch, segment,
    // data offset, attribute count: 35 bytes, then data): a bit rotted on the card.
    flip(&path, 32 + 35 + 10);
    let log = SegmentLog::open(dir.path(), config()).expect("the log opens");
    // The damage is known from the start, named by segment and range.
    let damaged = log.damaged();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    let (from, to) = (damaged[0].from, damaged[0].to);
    assert_eq!(damaged[0].segment, "s");
    assert_eq!(to - from, EVENT as u64, "one append's bytes");
    assert!(damaged[0].reason.contains("CRC"), "{damaged:?}");
    assert_names_str(&damaged[0].reason, &path);
    // Before it, after it: served. At it: an error naming the range.
    let before = rt()
        .block_on(log.read("s", 0, from as usize, Duration::ZERO))
        .expect("before");
    assert!(before.to_bytes()[..] == data[..before.len()]);
    let e = rt()
        .block_on(log.read("s", from, 1 << 20, Duration::ZERO))
        .expect_err("the damaged bytes are not served");
    match &e {
        LogError::Unreadable { from: f, to: t, .. } => assert_eq!((*f, *t), (from, to)),
        other => panic!("expected Unreadable, got {other}"),
    }
    let mut after = Vec::new();
    loop {
        let r = rt()
            .block_on(log.read("s", to + after.len() as u64, 1 << 20, Duration::ZERO))
            .expect("after");
        if r.is_empty() {
            break;
        }
        after.extend_from_slice(&r.to_bytes());
    }
    assert!(
        after[..] == data[to as usize..],
        "every byte after the damage"
    );
    // Appends go on, and the next open knows the same.
    rt().block_on(log.append("s", b"after", &AppendOptions::default()))
        .expect("appends go on");
    data.extend_from_slice(b"after");
    log.close().expect("close");
    let log = SegmentLog::open(dir.path(), config()).expect("opens again");
    assert_eq!(log.damaged(), damaged);
    assert_eq!(log.info("s").expect("info").length as usize, data.len());
}

fn assert_names_str(msg: &str, path: &Path) {
    let name = path.file_name().expect("name").to_string_lossy();
    assert!(msg.contains(name.as_ref()), "{msg:?} does not name {name}");
}

/// A damaged frame *header* (its kind here) leaves nothing to go by: the log refuses to
/// open, naming the file and offset (`repair` cuts it, see below).
#[test]
fn flipped_byte_in_the_replayed_file_fails_open_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let (_, path) = last_file(dir.path());
    let len = std::fs::metadata(&path).expect("meta").len();
    assert!(
        len > 3 * EVENT as u64,
        "the active file should hold several frames"
    );
    // Inside the first frame: later batches follow it, so it cannot be a torn write.
    flip(&path, 40);
    let e = SegmentLog::open(dir.path(), config()).expect_err("corrupt log must not open");
    match &e {
        LogError::Corrupt { offset, .. } => assert_eq!(*offset, 32),
        other => panic!("expected Corrupt, got {other}"),
    }
    assert_names(&e, &path);
}

#[test]
fn repair_says_what_a_cut_drops_and_cuts_the_log_at_a_damaged_frame() {
    use tributary::log::repair::repair;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = build(dir.path());
    let (_, path) = last_file(dir.path());
    // The replayed file's first frame: later batches follow it, so it is corruption.
    flip(&path, 40);
    let frames_in_file = {
        let bytes = std::fs::read(&path).expect("read");
        bytes.iter().rposition(|b| *b != 0).expect("frames") as u64 + 1
    };
    // Without --yes: the report, and nothing changed.
    let cuts = repair(dir.path(), &config(), None, false).expect("report");
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    let cut = &cuts[0];
    assert_eq!((cut.file.as_path(), cut.offset), (path.as_path(), 32));
    // Every append of the file but the damaged one is readable, all to "s".
    let dropped = cut.appends.get("s").copied().unwrap_or(0);
    let appends_in_file = (frames_in_file - 32) / (EVENT as u64 + 35);
    assert_eq!(dropped, (appends_in_file - 1) * EVENT as u64, "{cut}");
    assert!(cut.to_string().contains("bytes appended to s"), "{cut}");
    SegmentLog::open(dir.path(), config()).expect_err("still damaged");
    // With --yes: cut, and the log opens with everything before the damaged frame.
    let cuts = repair(dir.path(), &config(), None, true).expect("repair");
    assert_eq!(cuts.len(), 1);
    let log = SegmentLog::open(dir.path(), config()).expect("opens after the cut");
    let got = read_all(&log).expect("read");
    let kept = data.len() - (appends_in_file as usize) * EVENT;
    assert_eq!(got.len(), kept);
    assert!(got == data[..kept]);
    rt().block_on(log.append("s", b"after", &AppendOptions::default()))
        .expect("appends go on");
    log.close().expect("close");
    assert!(repair(dir.path(), &config(), None, false)
        .expect("nothing left")
        .is_empty());
}

#[test]
fn flipped_file_header_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    flip(&wal(dir.path(), 0), 3);
    let e = SegmentLog::open(dir.path(), config()).expect_err("bad header");
    assert!(matches!(e, LogError::Corrupt { offset: 0, .. }), "{e}");
    assert_names(&e, &wal(dir.path(), 0));
}

#[test]
fn torn_tail_is_cut_and_the_rest_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = build(dir.path());
    let (_, path) = last_file(dir.path());
    // Where the frames end: direct writes zero-pad the file to a 4 KiB boundary, and the
    // last frame ends in a byte of its data, which is not zero.
    let bytes = std::fs::read(&path).expect("read");
    let len = bytes.iter().rposition(|b| *b != 0).expect("frames") as u64 + 1;
    // Cut the last frame in half, as a power loss during its write would.
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(len - (EVENT as u64) / 2).expect("truncate");
    // And garbage after a cut (zeros from a preallocated or half-written page).
    f.write_all_at(&[0u8; 3000], len - (EVENT as u64) / 2)
        .expect("zeros");
    drop(f);
    let log = SegmentLog::open(dir.path(), config()).expect("a torn tail is not an error");
    let got = read_all(&log).expect("read");
    assert_eq!(
        got.len(),
        data.len() - EVENT,
        "exactly the torn append is gone"
    );
    assert_eq!(got, data[..got.len()]);
    // The log takes appends again after the cut, and keeps them.
    rt().block_on(log.append("s", b"after", &AppendOptions::default()))
        .expect("append after cut");
    log.close().expect("close");
    let log = SegmentLog::open(dir.path(), config()).expect("reopen");
    let got = read_all(&log).expect("read");
    assert!(got.ends_with(b"after"));
}

/// Tears the last frame of the last file, as a failed write does; returns where the
/// frames of that file ended.
fn tear_last_frame(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    let len = bytes.iter().rposition(|b| *b != 0).expect("frames") as u64 + 1;
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.set_len(len - (EVENT as u64) / 2).expect("truncate");
}

#[test]
fn a_failed_write_before_a_roll_that_wrote_nothing_is_a_torn_tail() {
    // The writer rolls to the next file while the full file's last batch is being
    // written; when that write fails (a full disk, a power loss), the new file holds
    // its header, part of one, or nothing. Each is recovered without an operator.
    let torn_headers: [&dyn Fn(u64) -> Vec<u8>; 3] = [
        &|id| tributary::log::format::encode_file_header(id).to_vec(),
        &|id| tributary::log::format::encode_file_header(id)[..10].to_vec(),
        &|_| Vec::new(),
    ];
    for header in torn_headers {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = build(dir.path());
        let (id, path) = last_file(dir.path());
        tear_last_frame(&path);
        let next = wal(dir.path(), id + 1);
        std::fs::write(&next, header(id + 1)).expect("the rolled-to file");
        let log = SegmentLog::open(dir.path(), config()).expect("recovered");
        assert!(!next.exists(), "the empty rolled-to file is removed");
        let got = read_all(&log).expect("read");
        assert_eq!(
            got,
            data[..data.len() - EVENT],
            "exactly the torn append is gone"
        );
        // Appends go on (into a new file after a roll), and survive a reopen.
        for _ in 0..40 {
            rt().block_on(log.append("s", &[7u8; EVENT], &AppendOptions::default()))
                .expect("append after recovery");
        }
        log.close().expect("close");
        let log = SegmentLog::open(dir.path(), config()).expect("reopen");
        let got = read_all(&log).expect("read");
        assert_eq!(got.len(), data.len() - EVENT + 40 * EVENT);
        assert!(got.ends_with(&[7u8; EVENT]));
    }
}

#[test]
fn truncated_old_file_is_reported_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let path = wal(dir.path(), 1);
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(1000).expect("truncate");
    drop(f);
    let log = SegmentLog::open(dir.path(), config()).expect("open");
    let e = read_all(&log).expect_err("truncated data must not be served");
    assert!(matches!(e, LogError::Unreadable { .. }), "{e}");
    assert_names(&e, &path);
}

#[test]
fn missing_files_are_reported() {
    // An old file with live data.
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    std::fs::remove_file(wal(dir.path(), 1)).expect("rm");
    let e = SegmentLog::open(dir.path(), config()).expect_err("missing file");
    assert!(matches!(e, LogError::MissingFile { .. }), "{e}");
    assert_names(&e, &wal(dir.path(), 1));

    // The active file.
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let (_, path) = last_file(dir.path());
    std::fs::remove_file(&path).expect("rm");
    let e = SegmentLog::open(dir.path(), config()).expect_err("missing active file");
    assert!(matches!(e, LogError::MissingFile { .. }), "{e}");
    assert_names(&e, &path);

    // The metadata store.
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    std::fs::remove_dir_all(dir.path().join("meta")).expect("rm meta");
    let e = SegmentLog::open(dir.path(), config()).expect_err("missing metadata");
    assert!(matches!(e, LogError::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("meta"), "{e}");
}

#[test]
fn corruption_never_panics_anywhere_in_a_file() {
    // Flip one byte at a spread of positions in every file; opening and reading must
    // return data or an error, never panic or serve wrong bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = build(dir.path());
    let pristine = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), pristine.path());
    let (last, _) = last_file(dir.path());
    for id in 0..=last {
        let len = std::fs::metadata(wal(dir.path(), id)).expect("meta").len();
        for at in (0..len).step_by(997) {
            let _ = std::fs::remove_dir_all(dir.path());
            copy_dir(pristine.path(), dir.path());
            flip(&wal(dir.path(), id), at);
            let Ok(log) = SegmentLog::open(dir.path(), config()) else {
                continue;
            };
            if let Ok(got) = read_all(&log) {
                // A flip in the final frame may be taken for a torn write and cut;
                // whatever is served must be a prefix of what was written.
                assert_eq!(
                    got,
                    data[..got.len()],
                    "file {id} byte {at}: wrong data served"
                );
                assert!(
                    got.len() >= data.len() - EVENT,
                    "file {id} byte {at}: lost more than the last append"
                );
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}
