//! Every fault point of a realistic workload, one run each: appends to several segments,
//! file rolls (each a new file and a checkpoint), a truncation, a seal and a merge, two
//! moves to Tier-2 (chunks recorded, log files deleted). At
//! each point the run injects a crash (that point and every later one fail, then a power
//! loss drops all that was not fsync'ed) or an I/O error (the log fails; then a power
//! loss that keeps a torn 4 KiB block with a flipped bit past the durable end), and at a
//! sample of points a full disk (the log waits and goes on). After each,
//! the log must open by itself and hold every acknowledged append, byte for byte, at
//! its offset. The approach of ALICE and CrashMonkey, through the log's fault seam
//! (`tributary::log::faults`).

use std::sync::Arc;
use std::time::Duration;

use tributary::log::faults::{Fault, FaultSeam, Faults, Point};
use tributary::log::{AppendOptions, FsTier2, LogConfig, MoveStats, SegmentLog, Tier2};

const SEGMENTS: [&str; 3] = ["a", "b", "c"];
const APPENDS: usize = 90;

fn config(seam: &Arc<Faults>) -> LogConfig {
    LogConfig {
        max_file_bytes: 6 << 10,
        cache_bytes: 0,
        reserve_bytes: 0,
        faults: Some(FaultSeam(seam.clone())),
        ..LogConfig::default()
    }
}

fn data(i: usize) -> Vec<u8> {
    let mut d = format!("append {i}:").into_bytes();
    d.resize(200 + (i * 37) % 300, b'a' + (i % 26) as u8);
    d
}

/// What the workload had acknowledged: (segment, offset, bytes), and the truncation of
/// "a" if it was acknowledged.
#[derive(Default)]
struct Acked {
    appends: Vec<(String, u64, Vec<u8>)>,
    truncated_a: Option<u64>,
}

/// Runs the workload until an operation fails (a crash or an I/O error fails every
/// later one); returns what was acknowledged.
async fn workload(log: &SegmentLog) -> Acked {
    let mut acked = Acked::default();
    for s in SEGMENTS.iter().chain(&["tmp"]) {
        if log.create(s).await.is_err() {
            return acked;
        }
    }
    for i in 0..APPENDS {
        let seg = SEGMENTS[i % SEGMENTS.len()];
        let d = data(i);
        match log.append(seg, &d, &AppendOptions::default()).await {
            Ok(offset) => acked.appends.push((seg.to_string(), offset, d)),
            Err(_) => return acked,
        }
        if i == 40 {
            // Truncate "a" after its fourth append.
            let Some(cut) = acked
                .appends
                .iter()
                .filter(|(s, ..)| s == "a")
                .nth(3)
                .map(|(_, o, d)| o + d.len() as u64)
            else {
                return acked;
            };
            if log.truncate("a", cut).await.is_err() {
                return acked;
            }
            acked.truncated_a = Some(cut);
        }
        let mut stats = MoveStats::default();
        if (i == 50 || i == 85) && log.move_to_tier2(2048, &mut stats).await.is_err() {
            return acked;
        }
        if i == 60 {
            // A seal and a merge: "tmp" onto the end of "b".
            let t = b"merged bytes".to_vec();
            if log
                .append("tmp", &t, &AppendOptions::default())
                .await
                .is_err()
                || log.seal("tmp").await.is_err()
            {
                return acked;
            }
            match log.merge("b", "tmp").await {
                Ok(offset) => acked.appends.push(("b".into(), offset, t)),
                Err(_) => return acked,
            }
        }
    }
    acked
}

/// Opens the log in `dir` with `seam`, runs the workload, closes it, applies the power
/// loss, opens it again without faults and checks every acknowledged append.
async fn run(dir: &std::path::Path, seam: &Arc<Faults>, torn: bool, what: &str) {
    let tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(dir.join("tier2")).expect("tier2"));
    let log = SegmentLog::open_tiered(dir.join("log"), config(seam), tier2.clone()).expect("open");
    let acked = workload(&log).await;
    let _ = log.close();
    seam.lose_unsynced(&dir.join("log/wal"), torn)
        .expect("power loss");
    let log = SegmentLog::open_tiered(dir.join("log"), LogConfig::default(), tier2)
        .unwrap_or_else(|e| panic!("{what}: the log does not open: {e}"));
    for (seg, offset, d) in &acked.appends {
        let start = log
            .info(seg)
            .unwrap_or_else(|e| panic!("{what}: {seg}: {e}"))
            .start;
        if offset + d.len() as u64 <= start {
            continue; // truncated, as acknowledged
        }
        let r = log
            .read(seg, *offset, d.len(), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{what}: {seg} at {offset}: {e}"));
        assert!(
            r.to_bytes()[..] == d[..],
            "{what}: {seg} at {offset}: an acknowledged append differs"
        );
    }
    if let Some(cut) = acked.truncated_a {
        let start = log.info("a").expect("a").start;
        assert!(start >= cut, "{what}: a acknowledged truncation was lost");
    }
    log.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_point_of_a_workload_recovers_with_every_acknowledged_append() {
    // tmpfs where there is one: the runs fsync thousands of times.
    let base = std::path::Path::new("/dev/shm");
    let tmp = || {
        if base.is_dir() {
            tempfile::tempdir_in(base).expect("tempdir")
        } else {
            tempfile::tempdir().expect("tempdir")
        }
    };

    // A run without faults: how many points, of which kinds.
    let seam = Faults::counting();
    let dir = tmp();
    run(dir.path(), &seam, false, "no fault").await;
    let points = seam.passed();
    let trace = seam.trace();
    let count = |p: Point| trace.iter().filter(|t| **t == p).count();
    let (creates, checkpoints) = (count(Point::Create), count(Point::Checkpoint));
    assert!(
        creates >= 3 && checkpoints >= 3,
        "rolls: {creates}, {checkpoints}"
    );
    let (chunks, deletes) = (count(Point::Chunk), count(Point::Delete));
    assert!(
        chunks >= 2 && deletes >= 1,
        "Tier-2: {chunks} chunks, {deletes} deletions"
    );

    let mut runs = 0;
    for n in 0..points {
        for fault in [Fault::Crash, Fault::Io] {
            let seam = Faults::failing(n, fault);
            let dir = tmp();
            let torn = fault == Fault::Io;
            run(dir.path(), &seam, torn, &format!("{fault:?} at point {n}")).await;
            runs += 1;
        }
    }
    // A full disk waits half a second each time: a sample.
    let step = (points / 8).max(1) as usize;
    for n in (0..points).step_by(step) {
        let seam = Faults::failing(n, Fault::DiskFull);
        let dir = tmp();
        run(dir.path(), &seam, false, &format!("DiskFull at point {n}")).await;
        runs += 1;
    }
    println!(
        "fault points visited: {points} ({} writes, {} fsyncs, {creates} file creations, \
         {checkpoints} checkpoints, {chunks} Tier-2 chunk records, {deletes} file \
         deletions); {runs} runs, every one recovered with every acknowledged append",
        count(Point::Write),
        count(Point::Sync),
    );
    assert!(points >= 200, "a workload of {points} points");
}
