//! The Tier-2 manifest as full manifests and deltas (filesystem backend): a pass writes
//! a delta of what it changed, a full manifest comes back once the deltas outgrow it
//! or a new process writes its first, replaced deltas are deleted, and a node that
//! lost its disk restores everything the last delta covers, and refuses to restore
//! while a delta that later ones need is missing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tributary::log::{AppendOptions, FsTier2, LogConfig, MoveStats, SegmentLog, Tier2};

/// Small chunks, so that the full manifest lists many of them.
const CHUNK: u64 = 1024;

fn config() -> LogConfig {
    LogConfig {
        max_file_bytes: 16 << 10,
        cache_bytes: 4 << 10,
        ..LogConfig::default()
    }
}

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

/// Appends `n` records of 100 bytes to each of `s0..s2`, as `expect` records.
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

async fn pass(log: &SegmentLog) -> MoveStats {
    let mut stats = MoveStats::default();
    log.move_to_tier2(CHUNK, &mut stats).await.expect("move");
    assert!(stats.manifest_written, "{stats:?}");
    stats
}

/// Loses the log's disk and restores it from Tier-2 alone.
async fn lose_disk_and_restore(log: SegmentLog, dir: &Path, tier2: &Arc<dyn Tier2>) -> SegmentLog {
    log.close().expect("close");
    std::fs::remove_dir_all(dir).expect("lose the disk");
    let report = SegmentLog::restore_from_tier2(dir, tier2.as_ref())
        .await
        .expect("restore")
        .expect("a manifest");
    assert!(report.missing.is_empty(), "{report}");
    assert_eq!(report.segments, 3, "{report}");
    SegmentLog::open_tiered(dir, config(), tier2.clone()).expect("open restored")
}

#[tokio::test]
async fn passes_write_deltas_and_a_restore_applies_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(t2dir.path()).expect("tier2"));
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("open");
    for s in 0..3 {
        log.create(&format!("s{s}")).await.expect("create");
    }

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
    let log = lose_disk_and_restore(log, dir.path(), &tier2).await;
    for (s, want) in expect.iter().enumerate() {
        assert_eq!(&read_all(&log, &format!("s{s}")).await, want, "s{s}");
    }
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

    let log = lose_disk_and_restore(log, dir.path(), &tier2).await;
    for (s, want) in expect.iter().enumerate() {
        assert_eq!(&read_all(&log, &format!("s{s}")).await, want, "s{s}");
    }
    log.close().expect("close");
}

#[tokio::test]
async fn a_restore_refuses_a_missing_delta_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(t2dir.path()).expect("tier2"));
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("open");
    for s in 0..3 {
        log.create(&format!("s{s}")).await.expect("create");
    }
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
    let report = SegmentLog::restore_from_tier2(dir.path(), tier2.as_ref())
        .await
        .expect("restore")
        .expect("a manifest");
    assert!(report.missing.is_empty(), "{report}");
    assert!(report.orphans_deleted > 0, "{report}");
    let log = SegmentLog::open_tiered(dir.path(), config(), tier2.clone()).expect("open");
    for (s, all) in expect.iter().enumerate() {
        let got = read_all(&log, &format!("s{s}")).await;
        assert_eq!(got.len(), 100 * 96, "s{s}: as of the full manifest");
        assert_eq!(&got[..], &all[..got.len()], "s{s}");
    }
    log.close().expect("close");
}
