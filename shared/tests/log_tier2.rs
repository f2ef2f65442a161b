//! Moving segment data from the log to Tier-2 (filesystem backend): reads do not change,
//! log files are deleted once their data has moved, truncation deletes chunks, and all of
//! it survives a restart. The manifest: a pass writes a delta of what it changed, a full
//! manifest comes back once the deltas outgrow it or a new process writes its first,
//! replaced deltas are deleted, and a node that lost its disk restores everything the
//! last delta covers, and refuses to restore while a delta that later ones need is
//! missing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tributary::log::tier2::BoxFuture;
use tributary::log::{
    AppendOptions, FsTier2, LogConfig, LogError, MoveStats, SegmentLog, Tier2, Tier2Error,
};

fn config() -> LogConfig {
    LogConfig {
        max_file_bytes: 16 << 10,
        cache_bytes: 4 << 10,
        ..LogConfig::default()
    }
}

/// The test configuration with no cache: every read goes to the files.
fn uncached() -> LogConfig {
    LogConfig {
        cache_bytes: 0,
        ..config()
    }
}

/// A log directory, a Tier-2 directory, and a file-system Tier-2 on the latter.
fn fs_tier2() -> (tempfile::TempDir, tempfile::TempDir, Arc<dyn Tier2>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(t2dir.path()).expect("tier2"));
    (dir, t2dir, tier2)
}

fn count(dir: &Path, matches: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| matches(&e.file_name().to_string_lossy()))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Chunk objects in an FsTier2 directory.
fn chunks(dir: &Path) -> usize {
    count(dir, |n| n.starts_with("c-"))
}

async fn read_all(log: &SegmentLog, seg: &str) -> Vec<u8> {
    let info = log.info(seg).expect("info");
    let mut out = Vec::new();
    let mut at = info.start;
    while at < info.length {
        let r = log.read(seg, at, 3000, Duration::ZERO).await.expect("read");
        at += r.len() as u64;
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// Checks that `s0`, `s1`, … read back as `expect` says.
async fn check_all(log: &SegmentLog, expect: &[Vec<u8>]) {
    for (s, want) in expect.iter().enumerate() {
        assert_eq!(&read_all(log, &format!("s{s}")).await, want, "s{s}");
    }
}

/// Restores the container `dir` from `tier2` alone.
async fn restore(dir: &Path, tier2: &dyn Tier2) -> tributary::log::RestoreReport {
    SegmentLog::restore_from_tier2(dir, tier2)
        .await
        .expect("restore")
        .expect("a manifest")
}

#[tokio::test]
async fn data_moves_to_tier2_and_reads_do_not_change() {
    let (dir, t2dir, tier2) = fs_tier2();
    let wal = dir.path().join("wal");
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    {
        let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("open");
        for s in 0..3 {
            log.create(&format!("s{s}")).await.expect("create");
        }
        for i in 0..300u32 {
            let s = (i % 3) as usize;
            let data = format!("{i:05}-").repeat(50).into_bytes();
            log.append(&format!("s{s}"), &data, &AppendOptions::default())
                .await
                .expect("append");
            expect[s].extend_from_slice(&data);
        }
        let files_before = count(&wal, |n| n.ends_with(".log"));
        assert!(files_before > 3);
        let mut stats = MoveStats::default();
        log.move_to_tier2(8 << 10, &mut stats).await.expect("move");
        assert!(stats.chunks_written >= 3, "{stats:?}");
        assert_eq!(
            stats.bytes_moved,
            expect.iter().map(|e| e.len() as u64).sum::<u64>()
        );
        let files_after = count(&wal, |n| n.ends_with(".log"));
        assert!(
            files_after <= 2,
            "moved files should be deleted ({files_before} -> {files_after})"
        );
        assert_eq!(chunks(t2dir.path()) as u64, stats.chunks_written);
        check_all(&log, &expect).await;
        // New data lands in the log again, after the tiered part.
        log.append("s0", b"tail", &AppendOptions::default())
            .await
            .expect("append");
        expect[0].extend_from_slice(b"tail");
        assert_eq!(read_all(&log, "s0").await, expect[0]);
    }
    // Restart: chunk locations come back from the metadata store.
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("reopen");
    check_all(&log, &expect).await;
    // Truncation makes chunks garbage; the next pass deletes them.
    let before = chunks(t2dir.path());
    let len = log.info("s1").expect("info").length;
    log.truncate("s1", len).await.expect("truncate");
    log.delete("s2").await.expect("delete");
    let mut stats = MoveStats::default();
    log.move_to_tier2(8 << 10, &mut stats).await.expect("move");
    assert!(stats.chunks_deleted > 0, "{stats:?}");
    assert!(chunks(t2dir.path()) < before);
    assert!(matches!(
        log.read("s1", 0, 10, Duration::ZERO).await,
        Err(LogError::Truncated { .. })
    ));
    assert_eq!(read_all(&log, "s0").await, expect[0]);
    drop(log);

    // Without its Tier-2, the container refuses to open rather than lose data.
    let e = SegmentLog::open(dir.path(), config()).expect_err("needs tier2");
    assert!(e.to_string().contains("Tier-2"), "{e}");
}

#[tokio::test]
async fn merge_spans_tiers_and_corrupt_chunks_are_refused() {
    let (dir, t2dir, tier2) = fs_tier2();
    let cfg = uncached();
    let log = SegmentLog::open_tiered(dir.path(), cfg, tier2).expect("open");
    log.create("t").await.expect("create");
    log.create("x").await.expect("create");
    log.append("t", &[1u8; 5000], &AppendOptions::default())
        .await
        .expect("append");
    log.append("x", &[2u8; 5000], &AppendOptions::default())
        .await
        .expect("append");
    log.move_to_tier2(1 << 20, &mut MoveStats::default())
        .await
        .expect("move");
    log.seal("x").await.expect("seal");
    log.append("t", &[3u8; 10], &AppendOptions::default())
        .await
        .expect("append");
    log.merge("t", "x").await.expect("merge");
    let got = read_all(&log, "t").await;
    assert_eq!(got.len(), 10_010);
    assert!(got[..5000].iter().all(|b| *b == 1));
    assert!(got[5000..5010].iter().all(|b| *b == 3));
    assert!(got[5010..].iter().all(|b| *b == 2));

    // Flip a byte in a chunk: the read fails and names the chunk.
    let chunk = std::fs::read_dir(t2dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("c-"))
        .expect("a chunk")
        .path();
    let mut bytes = std::fs::read(&chunk).expect("read chunk");
    bytes[100] ^= 1;
    std::fs::write(&chunk, bytes).expect("write chunk");
    let mut errors = 0;
    for at in [0u64, 5010] {
        if let Err(e) = log.read("t", at, 100, Duration::ZERO).await {
            assert!(matches!(e, LogError::Unreadable { .. }), "{e}");
            assert!(e.to_string().contains("chunk c-"), "{e}");
            errors += 1;
        }
    }
    assert_eq!(errors, 1, "exactly the corrupted chunk is refused");
}

/// A filesystem Tier-2 that refuses the first chunk written to it.
#[derive(Debug)]
/// A file-system Tier-2 that refuses the first object whose name starts with `prefix`.
struct RefusesOnce {
    fs: FsTier2,
    prefix: &'static str,
    refused: std::sync::atomic::AtomicBool,
}

impl RefusesOnce {
    fn new(dir: &Path, prefix: &'static str) -> RefusesOnce {
        RefusesOnce {
            fs: FsTier2::new(dir).expect("tier2"),
            prefix,
            refused: false.into(),
        }
    }
}

impl Tier2 for RefusesOnce {
    fn describe(&self) -> String {
        self.fs.describe()
    }
    fn supports_append(&self) -> bool {
        self.fs.supports_append()
    }
    fn put<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), Tier2Error>> {
        let first = name.starts_with(self.prefix) && !self.refused.swap(true, Ordering::SeqCst);
        match first {
            true => Box::pin(async { Err(Tier2Error("refused on purpose".into())) }),
            false => self.fs.put(name, data),
        }
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Tier2Error>> {
        self.fs.get(name)
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>> {
        self.fs.delete(name)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, Tier2Error>> {
        self.fs.list()
    }
}

/// A pass moves several segments' chunks at once; when one of them fails, the others
/// are still stored and recorded, the pass reports the failure, and the next pass
/// moves what is left. Reads never change.
#[tokio::test]
async fn a_chunk_that_fails_to_move_leaves_the_others_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2 = Arc::new(RefusesOnce::new(t2dir.path(), "c-"));
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2).expect("open");
    let mut expect = Vec::new();
    for s in 0..3u8 {
        let name = format!("s{s}");
        log.create(&name).await.expect("create");
        let data = vec![b'a' + s; 3000];
        log.append(&name, &data, &AppendOptions::default())
            .await
            .expect("append");
        expect.push((name, data));
    }
    let mut stats = MoveStats::default();
    let e = log
        .move_to_tier2(1 << 20, &mut stats)
        .await
        .expect_err("one chunk refused");
    assert!(e.to_string().contains("refused on purpose"), "{e}");
    // The failed pass still reports what it moved (the node's metrics count it).
    assert_eq!((stats.chunks_written, stats.bytes_moved), (2, 6000));
    assert_eq!(chunks(t2dir.path()), 2, "the other two chunks are stored");
    assert_eq!(
        log.tier2_backlog(),
        3000,
        "and recorded: one segment's data waits"
    );
    for (name, data) in &expect {
        assert_eq!(&read_all(&log, name).await, data);
    }
    let mut stats = MoveStats::default();
    log.move_to_tier2(1 << 20, &mut stats)
        .await
        .expect("move the rest");
    assert_eq!((stats.chunks_written, stats.bytes_moved), (1, 3000));
    assert_eq!(chunks(t2dir.path()), 3);
    assert_eq!(log.tier2_backlog(), 0);
    for (name, data) in &expect {
        assert_eq!(&read_all(&log, name).await, data);
    }
}

/// A log frame that cannot be read (a byte flipped in an old log file) holds back only
/// its own segment: every other segment moves to Tier-2 in full, the pass reports the
/// corruption naming the file, and the unreadable data stays in the log, refused on
/// read as before.
#[tokio::test]
async fn an_unreadable_frame_holds_back_only_its_segment() {
    let (dir, t2dir, tier2) = fs_tier2();
    let cfg = uncached();
    let mut expect = Vec::new();
    {
        let log = SegmentLog::open_tiered(dir.path(), cfg.clone(), tier2.clone()).expect("open");
        for s in 0..3u8 {
            let name = format!("s{s}");
            log.create(&name).await.expect("create");
            let mut all = Vec::new();
            for i in 0..4u8 {
                let data = vec![s * 10 + i; 5000];
                log.append(&name, &data, &AppendOptions::default())
                    .await
                    .expect("append");
                all.extend_from_slice(&data);
            }
            expect.push((name, all));
        }
        log.close().expect("close");
    }
    // File 0 (old: not replayed on open) holds s0's first appends.
    let file0 = dir.path().join("wal").join(format!("{:016x}.log", 0));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file0)
        .expect("open file 0");
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 2000).expect("read");
    f.write_all_at(&[b[0] ^ 0x40], 2000).expect("flip");
    drop(f);

    let log = SegmentLog::open_tiered(dir.path(), cfg, tier2).expect("reopen");
    let mut stats = MoveStats::default();
    // Chunks of at most one append: each segment takes several rounds of moves.
    let e = log
        .move_to_tier2(8 << 10, &mut stats)
        .await
        .expect_err("s0's first frame is corrupt");
    assert!(matches!(e, LogError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{:016x}.log", 0)), "{e}");
    assert_eq!((stats.chunks_written, stats.bytes_moved), (8, 40_000));
    assert_eq!(log.tier2_backlog(), 20_000, "s0's data stays in the log");
    for (name, data) in &expect[1..] {
        assert_eq!(&read_all(&log, name).await, data);
    }
    let e = log
        .read("s0", 0, 100, Duration::ZERO)
        .await
        .expect_err("corrupt data is not served");
    assert!(matches!(e, LogError::Unreadable { .. }), "{e}");

    // Chunks freed meanwhile are deleted all the same: the pass wrote its manifest.
    log.delete("s1").await.expect("delete");
    let before = chunks(t2dir.path());
    let mut stats = MoveStats::default();
    let e = log
        .move_to_tier2(8 << 10, &mut stats)
        .await
        .expect_err("s0 is still corrupt");
    assert!(matches!(e, LogError::Corrupt { .. }), "{e}");
    assert_eq!(stats.chunks_deleted, 4, "{stats:?}");
    assert_eq!(chunks(t2dir.path()), before - 4);
}

// The manifest: full manifests and deltas.

/// Small chunks, so that the full manifest lists many of them.
const CHUNK: u64 = 1024;

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read tier2 dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn deltas(dir: &Path) -> Vec<String> {
    names(dir, "manifest-")
}

fn full(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("manifest")).expect("the full manifest")
}

/// Appends `n` records of 96 bytes to each of `s0..s2`, as `expect` records.
async fn append(log: &SegmentLog, expect: &mut [Vec<u8>], round: usize, n: usize) {
    for i in 0..n {
        for (s, e) in expect.iter_mut().enumerate() {
            let data = format!("{round:03}-{i:05}-{s}|").repeat(8).into_bytes();
            log.append(&format!("s{s}"), &data, &AppendOptions::default())
                .await
                .expect("append");
            e.extend_from_slice(&data);
        }
    }
}

/// Appends one record of 1,000 bytes (with `CHUNK`, a chunk) to each of `s0..s2`, as
/// `expect` records.
async fn append_chunk(log: &SegmentLog, expect: &mut [Vec<u8>], round: usize) {
    for (s, e) in expect.iter_mut().enumerate() {
        let data = vec![(round * 3 + s) as u8; 1000];
        log.append(&format!("s{s}"), &data, &AppendOptions::default())
            .await
            .expect("append");
        e.extend_from_slice(&data);
    }
}

/// A tiered log with segments `s0..s2`.
async fn three_segments(dir: &Path, tier2: &Arc<dyn Tier2>) -> SegmentLog {
    let log = SegmentLog::open_tiered(dir, config(), tier2.clone()).expect("open");
    for s in 0..3 {
        log.create(&format!("s{s}")).await.expect("create");
    }
    log
}

async fn pass(log: &SegmentLog) -> MoveStats {
    let mut stats = MoveStats::default();
    log.move_to_tier2(CHUNK, &mut stats).await.expect("move");
    assert!(stats.manifest_written, "{stats:?}");
    stats
}

/// Loses the log's disk and restores it from Tier-2 alone.
async fn lose_disk_and_restore(
    log: SegmentLog,
    dir: &Path,
    tier2: &Arc<dyn Tier2>,
    deltas: u32,
) -> SegmentLog {
    log.close().expect("close");
    std::fs::remove_dir_all(dir).expect("lose the disk");
    let report = restore(dir, tier2.as_ref()).await;
    assert!(report.missing.is_empty(), "{report}");
    assert_eq!(report.segments, 3, "{report}");
    assert_eq!(report.deltas, deltas, "{report}");
    SegmentLog::open_tiered(dir, config(), tier2.clone()).expect("open restored")
}

#[tokio::test]
async fn passes_write_deltas_and_a_restore_applies_them() {
    let (dir, t2dir, tier2) = fs_tier2();
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let log = three_segments(dir.path(), &tier2).await;

    // The first pass writes the full manifest.
    append(&log, &mut expect, 0, 400).await;
    let first = pass(&log).await;
    assert!(first.chunks_written > 100, "{first:?}");
    let full_bytes = full(t2dir.path()).len() as u64;
    assert_eq!(first.manifest_bytes, full_bytes);
    assert!(deltas(t2dir.path()).is_empty());

    // The next ones write deltas: the chunks they added (and freed), not all of them.
    let before = full(t2dir.path());
    append(&log, &mut expect, 1, 5).await;
    let second = pass(&log).await;
    assert!(second.chunks_written > 0, "{second:?}");
    assert!(
        second.manifest_bytes < full_bytes / 4,
        "a delta of {} bytes for a full manifest of {full_bytes}",
        second.manifest_bytes
    );
    assert_eq!(
        full(t2dir.path()),
        before,
        "the full manifest was rewritten"
    );
    assert_eq!(deltas(t2dir.path()).len(), 1);

    // Truncation frees chunks: the delta names them, then they are deleted.
    let chunks_before = names(t2dir.path(), "c-").len();
    let cut = log.info("s1").expect("info").length / 2;
    log.truncate("s1", cut).await.expect("truncate");
    expect[1].drain(..cut as usize);
    append(&log, &mut expect, 2, 5).await;
    let third = pass(&log).await;
    assert!(third.chunks_deleted > 0, "{third:?}");
    assert!(names(t2dir.path(), "c-").len() < chunks_before);
    assert_eq!(deltas(t2dir.path()).len(), 2);

    // A node that lost its disk gets everything back: the full manifest and both
    // deltas.
    let log = lose_disk_and_restore(log, dir.path(), &tier2, 2).await;
    check_all(&log, &expect).await;
    assert_eq!(log.info("s1").expect("info").start, cut);

    // The restored node's first pass writes a full manifest of its own and deletes the
    // deltas it replaces.
    let old = full(t2dir.path());
    append(&log, &mut expect, 3, 5).await;
    pass(&log).await;
    assert_ne!(full(t2dir.path()), old);
    assert!(deltas(t2dir.path()).is_empty());

    // Deltas follow until they add up to the full manifest; then a full one replaces
    // them all.
    let full_bytes = full(t2dir.path()).len() as u64;
    let mut delta_bytes = 0;
    let mut round = 4;
    while delta_bytes < full_bytes {
        append(&log, &mut expect, round, 5).await;
        delta_bytes += pass(&log).await.manifest_bytes;
        round += 1;
        assert_eq!(deltas(t2dir.path()).len(), round - 4);
    }
    append(&log, &mut expect, round, 5).await;
    let compacted = pass(&log).await;
    assert_eq!(compacted.manifest_bytes, full(t2dir.path()).len() as u64);
    assert!(deltas(t2dir.path()).is_empty());

    let log = lose_disk_and_restore(log, dir.path(), &tier2, 0).await;
    check_all(&log, &expect).await;
    log.close().expect("close");
}

#[tokio::test]
async fn a_restore_refuses_a_missing_delta_and_deletes_nothing() {
    let (dir, t2dir, tier2) = fs_tier2();
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let log = three_segments(dir.path(), &tier2).await;
    append(&log, &mut expect, 0, 100).await;
    pass(&log).await;
    append(&log, &mut expect, 1, 5).await;
    pass(&log).await;
    append(&log, &mut expect, 2, 5).await;
    pass(&log).await;
    let d = deltas(t2dir.path());
    assert_eq!(d.len(), 2, "{d:?}");
    log.close().expect("close");
    std::fs::remove_dir_all(dir.path()).expect("lose the disk");

    // The first delta is lost: the second needs it.
    std::fs::remove_file(t2dir.path().join(&d[0])).expect("remove delta");
    let chunks_before = names(t2dir.path(), "c-");
    let e = SegmentLog::restore_from_tier2(dir.path(), tier2.as_ref())
        .await
        .expect_err("a delta is missing");
    assert!(e.to_string().contains(&d[0]), "{e}");
    assert!(e.to_string().contains(&d[1]), "{e}");
    assert_eq!(names(t2dir.path(), "c-"), chunks_before, "nothing deleted");
    assert!(!dir.path().exists(), "nothing restored");

    // Deleting the later one accepts the loss: the restore goes back to the full
    // manifest, and the chunks only the deltas named are deleted.
    std::fs::remove_file(t2dir.path().join(&d[1])).expect("remove delta");
    let report = restore(dir.path(), tier2.as_ref()).await;
    assert!(report.missing.is_empty(), "{report}");
    assert!(report.orphans_deleted > 0, "{report}");
    assert_eq!(report.deltas, 0, "{report}");
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("open");
    for (s, all) in expect.iter().enumerate() {
        let got = read_all(&log, &format!("s{s}")).await;
        assert_eq!(got.len(), 100 * 96, "s{s}: as of the full manifest");
        assert_eq!(&got[..], &all[..got.len()], "s{s}");
    }
    log.close().expect("close");
}

#[tokio::test]
async fn a_refused_delta_is_written_on_the_next_pass_and_64_deltas_bring_a_full_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2: Arc<dyn Tier2> = Arc::new(RefusesOnce::new(t2dir.path(), "manifest-"));
    let log = three_segments(dir.path(), &tier2).await;
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    // A full manifest of 2,100 chunks, far larger than a delta.
    for round in 0..700 {
        append_chunk(&log, &mut expect, round).await;
    }
    pass(&log).await;
    let before = full(t2dir.path());

    // The first delta is refused: the pass says so, and the next one writes it, with
    // the chunks the refused one named, under the same number, though nothing new
    // waits.
    append_chunk(&log, &mut expect, 700).await;
    let mut stats = MoveStats::default();
    let e = log
        .move_to_tier2(CHUNK, &mut stats)
        .await
        .expect_err("the delta is refused");
    assert!(e.to_string().contains("refused on purpose"), "{e}");
    assert_eq!(stats.chunks_written, 3);
    assert!(deltas(t2dir.path()).is_empty());
    let retry = pass(&log).await;
    assert_eq!(retry.chunks_written, 0);
    let d = deltas(t2dir.path());
    assert!(d.len() == 1 && d[0].ends_with("-00000001"), "{d:?}");
    // A node restored from a copy of Tier-2 now has everything.
    let copy = tempfile::tempdir().expect("tempdir");
    for name in names(t2dir.path(), "") {
        std::fs::copy(t2dir.path().join(&name), copy.path().join(&name)).expect("copy");
    }
    let copy_tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(copy.path()).expect("tier2"));
    let restored = tempfile::tempdir().expect("tempdir");
    let report = restore(restored.path(), copy_tier2.as_ref()).await;
    assert_eq!(report.deltas, 1, "{report}");
    let other = SegmentLog::open_tiered(restored.path(), config(), copy_tier2).expect("open");
    check_all(&other, &expect).await;
    other.close().expect("close");

    // Up to 64 deltas on one full manifest, then a full one again.
    for round in 701..764 {
        append_chunk(&log, &mut expect, round).await;
        pass(&log).await;
    }
    assert_eq!(deltas(t2dir.path()).len(), 64);
    assert_eq!(full(t2dir.path()), before);
    append_chunk(&log, &mut expect, 764).await;
    pass(&log).await;
    assert_ne!(full(t2dir.path()), before);
    assert!(deltas(t2dir.path()).is_empty());

    let log = lose_disk_and_restore(log, dir.path(), &tier2, 0).await;
    check_all(&log, &expect).await;
    log.close().expect("close");
}
