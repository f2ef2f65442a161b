//! Model-based property test: random operations and restarts against a simple
//! in-memory model of segments. Tiny log files make rolls, checkpoints and file
//! deletion happen constantly. Fault steps: a power loss in the middle of an append
//! (through the log's fault seam), the loss of the local disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tributary::log::faults::{Fault, FaultSeam, Faults};
use tributary::log::{
    AppendOptions, AttributeCondition, AttributeUpdate, FsTier2, LogConfig, LogError, MoveStats,
    Payload, SegmentLog, Tier2,
};

const NAMES: [&str; 4] = ["a", "b/0", "c/0#txn", "d"];

#[derive(Debug, Clone)]
enum Step {
    Create(usize),
    Append {
        seg: usize,
        len: usize,
        byte: u8,
        /// Handed over as this many shared buffers; 0: as a borrowed slice.
        pieces: usize,
        expect_len: Option<bool>,
        attr: Option<(u8, i64)>,
    },
    Seal(usize),
    Truncate(usize, f64),
    Merge(usize, usize),
    Delete(usize),
    Read(usize, f64, usize),
    MoveToTier2,
    Restart,
    /// Move everything to Tier-2, lose the local disk, restore from Tier-2 alone.
    LoseDisk,
    /// Power goes during an append: the process dies at its write (or at its fsync, the
    /// bytes written then kept as a torn block with a flipped bit), the disk keeps what
    /// was fsync'ed. The append was not acknowledged: the log comes back without it,
    /// or (its bytes on disk whole) with all of it.
    CrashingAppend {
        seg: usize,
        len: usize,
        at_sync: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let seg = 0..NAMES.len();
    prop_oneof![
        2 => seg.clone().prop_map(Step::Create),
        // Some appends are large enough for the batch to hold their buffers (SHARED_MIN).
        8 => (seg.clone(), prop_oneof![6 => 0..3000usize, 1 => 16_000..40_000usize], any::<u8>(),
              0..4usize, proptest::option::of(any::<bool>()), proptest::option::of((0..3u8, 0..20i64)))
            .prop_map(|(seg, len, byte, pieces, expect_len, attr)| Step::Append { seg, len, byte, pieces, expect_len, attr }),
        1 => seg.clone().prop_map(Step::Seal),
        1 => (seg.clone(), 0.0..1.0f64).prop_map(|(s, f)| Step::Truncate(s, f)),
        1 => (seg.clone(), seg.clone()).prop_map(|(a, b)| Step::Merge(a, b)),
        1 => seg.clone().prop_map(Step::Delete),
        3 => (seg.clone(), 0.0..1.0f64, 1..5000usize).prop_map(|(s, f, n)| Step::Read(s, f, n)),
        1 => Just(Step::MoveToTier2),
        1 => Just(Step::Restart),
        1 => Just(Step::LoseDisk),
        1 => (seg, 1..3000usize, any::<bool>())
            .prop_map(|(seg, len, at_sync)| Step::CrashingAppend { seg, len, at_sync }),
    ]
}

#[derive(Debug, Clone, Default)]
struct Model {
    data: Vec<u8>,
    start: usize,
    sealed: bool,
    attrs: BTreeMap<u128, i64>,
}

fn kind(e: &LogError) -> &'static str {
    match e {
        LogError::NoSuchSegment(_) => "missing",
        LogError::SegmentExists(_) => "exists",
        LogError::Sealed(_) => "sealed",
        LogError::BadOffset { .. } => "offset",
        LogError::AttributeConflict { .. } => "attr",
        LogError::BadMerge { .. } => "merge",
        LogError::Truncated { .. } => "truncated",
        LogError::BeyondEnd { .. } => "beyond",
        other => panic!("unexpected error: {other}"),
    }
}

fn config() -> LogConfig {
    LogConfig {
        max_file_bytes: 8 << 10,
        cache_bytes: 16 << 10,
        max_frame_data_bytes: 2 << 10,
        ..LogConfig::default()
    }
}

fn config_with(seam: &Arc<Faults>) -> LogConfig {
    LogConfig {
        faults: Some(FaultSeam(seam.clone())),
        ..config()
    }
}

async fn check_all(log: &SegmentLog, model: &HashMap<usize, Model>) {
    let mut names: Vec<String> = model.keys().map(|i| NAMES[*i].to_string()).collect();
    names.sort();
    assert_eq!(log.list(), names);
    for (i, m) in model {
        let info = log.info(NAMES[*i]).expect("info");
        assert_eq!(info.length as usize, m.data.len(), "{}", NAMES[*i]);
        assert_eq!(info.start as usize, m.start);
        assert_eq!(info.sealed, m.sealed);
        let attributes = log.attributes(NAMES[*i], ..).expect("attributes");
        assert_eq!(attributes, m.attrs);
        let mut at = m.start;
        while at < m.data.len() {
            let r = log
                .read(NAMES[*i], at as u64, 1 << 20, Duration::ZERO)
                .await
                .expect("read");
            assert!(!r.is_empty());
            assert_eq!(&r.to_bytes()[..], &m.data[at..at + r.len()]);
            at += r.len();
        }
    }
}

async fn run(steps: Vec<Step>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t2dir = tempfile::tempdir().expect("tempdir");
    let tier2: Arc<dyn Tier2> = Arc::new(FsTier2::new(t2dir.path()).expect("tier2"));
    let open = || SegmentLog::open_tiered(dir.path(), config(), tier2.clone());
    let mut log = open().expect("open");
    let mut model: HashMap<usize, Model> = HashMap::new();
    for step in steps {
        match step {
            Step::Create(i) => {
                let got = log.create(NAMES[i]).await.map_err(|e| kind(&e));
                let want = match model.entry(i) {
                    std::collections::hash_map::Entry::Occupied(_) => Err("exists"),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Model::default());
                        Ok(())
                    }
                };
                assert_eq!(got, want);
            }
            Step::Append {
                seg,
                len,
                byte,
                pieces,
                expect_len,
                attr,
            } => {
                // Bytes that differ along the append, so a piece out of order shows.
                let data: Vec<u8> = (0..len).map(|i| byte ^ (i * 31 / 7) as u8).collect();
                let shared: Vec<Bytes> = match pieces {
                    0 => Vec::new(),
                    n => {
                        let step = len.div_ceil(n).max(1);
                        data.chunks(step).map(Bytes::copy_from_slice).collect()
                    }
                };
                let m = model.get(&seg);
                let expected_length = expect_len.map(|right| {
                    let l = m.map_or(0, |m| m.data.len() as u64);
                    if right {
                        l
                    } else {
                        l + 1
                    }
                });
                let attributes = attr
                    .map(|(id, value)| AttributeUpdate {
                        id: id as u128,
                        value,
                        condition: AttributeCondition::Greater,
                    })
                    .into_iter()
                    .collect();
                let opts = AppendOptions {
                    expected_length,
                    attributes,
                };
                let payload = match pieces {
                    0 => Payload::Borrowed(&data),
                    _ => Payload::Shared(&shared),
                };
                let got = log
                    .append(NAMES[seg], payload, &opts)
                    .await
                    .map_err(|e| kind(&e));
                let want = match model.get_mut(&seg) {
                    None => Err("missing"),
                    Some(m) if m.sealed => Err("sealed"),
                    Some(m) if expected_length.is_some_and(|l| l != m.data.len() as u64) => {
                        Err("offset")
                    }
                    Some(m)
                        if attr.is_some_and(|(id, v)| {
                            m.attrs.get(&(id as u128)).is_some_and(|c| v <= *c)
                        }) =>
                    {
                        Err("attr")
                    }
                    Some(m) => {
                        let off = m.data.len() as u64;
                        m.data.extend_from_slice(&data);
                        if let Some((id, v)) = attr {
                            m.attrs.insert(id as u128, v);
                        }
                        Ok(off)
                    }
                };
                assert_eq!(got, want);
            }
            Step::Seal(i) => {
                let got = log.seal(NAMES[i]).await.map_err(|e| kind(&e));
                let want = match model.get_mut(&i) {
                    None => Err("missing"),
                    Some(m) => {
                        m.sealed = true;
                        Ok(m.data.len() as u64)
                    }
                };
                assert_eq!(got, want);
            }
            Step::Truncate(i, f) => {
                let at = model
                    .get(&i)
                    .map_or(0, |m| (m.data.len() as f64 * f) as usize);
                let got = log
                    .truncate(NAMES[i], at as u64)
                    .await
                    .map_err(|e| kind(&e));
                let want = match model.get_mut(&i) {
                    None => Err("missing"),
                    Some(m) => {
                        m.start = m.start.max(at);
                        Ok(())
                    }
                };
                assert_eq!(got, want);
            }
            Step::Merge(t, s) => {
                let got = log.merge(NAMES[t], NAMES[s]).await.map_err(|e| kind(&e));
                let want = match (model.get(&t), model.get(&s)) {
                    (None, _) | (_, None) => Err("missing"),
                    _ if t == s => Err("merge"),
                    (_, Some(src)) if !src.sealed => Err("merge"),
                    (Some(tm), _) if tm.sealed => Err("sealed"),
                    (_, Some(src)) if src.start != 0 => Err("merge"),
                    (Some(tm), Some(_)) => {
                        let at = tm.data.len() as u64;
                        let src = model.remove(&s).expect("source");
                        model
                            .get_mut(&t)
                            .expect("target")
                            .data
                            .extend_from_slice(&src.data);
                        Ok(at)
                    }
                };
                assert_eq!(got, want);
            }
            Step::Delete(i) => {
                let got = log.delete(NAMES[i]).await.map_err(|e| kind(&e));
                let want = model.remove(&i).map(|_| ()).ok_or("missing");
                assert_eq!(got, want);
            }
            Step::Read(i, f, n) => {
                let Some(m) = model.get(&i) else {
                    continue;
                };
                let at = (m.data.len() as f64 * f) as usize;
                let got = log
                    .read(NAMES[i], at as u64, n, Duration::ZERO)
                    .await
                    .map(|r| r.to_bytes().to_vec())
                    .map_err(|e| kind(&e));
                let want = if at < m.start {
                    Err("truncated")
                } else {
                    Ok(m.data[at..m.data.len().min(at + n)].to_vec())
                };
                assert_eq!(got, want);
            }
            Step::MoveToTier2 => {
                log.move_to_tier2(4096, &mut MoveStats::default())
                    .await
                    .expect("move to tier 2");
            }
            Step::Restart => {
                log.close().expect("close");
                log = open().expect("reopen");
                check_all(&log, &model).await;
            }
            Step::CrashingAppend { seg, len, at_sync } => {
                log.close().expect("close");
                // The append's write is the first point after opening, its fsync the
                // second (a roll before it would come first: it fails there instead).
                let seam = Faults::failing(u64::from(at_sync), Fault::Crash);
                log = SegmentLog::open_tiered(dir.path(), config_with(&seam), tier2.clone())
                    .expect("open with the seam");
                let data = vec![0xab; len];
                let got = log
                    .append(NAMES[seg], &data, &AppendOptions::default())
                    .await;
                if seam.crashed() {
                    assert!(got.is_err(), "acknowledged through a crash");
                } else if let Ok(off) = got {
                    let m = model.get_mut(&seg).expect("appended to a known segment");
                    assert_eq!(off as usize, m.data.len());
                    m.data.extend_from_slice(&data);
                }
                let _ = log.close();
                seam.lose_unsynced(&dir.path().join("wal"), at_sync)
                    .expect("power loss");
                log = open().expect("recovers after the power loss");
                if let (true, Some(m)) = (seam.crashed(), model.get_mut(&seg)) {
                    let now = log.info(NAMES[seg]).expect("info").length as usize;
                    if now == m.data.len() + len {
                        m.data.extend_from_slice(&data);
                    }
                }
                check_all(&log, &model).await;
            }
            Step::LoseDisk => {
                log.move_to_tier2(4096, &mut MoveStats::default())
                    .await
                    .expect("move to tier 2");
                log.close().expect("close");
                std::fs::remove_dir_all(dir.path()).expect("lose the disk");
                let report = SegmentLog::restore_from_tier2(dir.path(), tier2.as_ref())
                    .await
                    .expect("restore")
                    .expect("a manifest");
                assert!(report.missing.is_empty(), "{report}");
                assert_eq!(report.segments, model.len(), "{report}");
                log = open().expect("open restored");
                check_all(&log, &model).await;
            }
        }
    }
    check_all(&log, &model).await;
    log.close().expect("close");
    let log = open().expect("final reopen");
    check_all(&log, &model).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(steps in proptest::collection::vec(step(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(steps));
    }
}
