//! Each segment-log operation against a real directory, with restarts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary::log::{
    AppendOptions, AttributeCondition, AttributeUpdate, LogConfig, LogError, Payload, SegmentLog,
    SHARED_MIN,
};

fn small_files() -> LogConfig {
    LogConfig {
        max_file_bytes: 16 << 10,
        ..LogConfig::default()
    }
}

fn none() -> AppendOptions {
    AppendOptions::default()
}

async fn read_all(log: &SegmentLog, seg: &str, from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let r = log
            .read(seg, at, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        if r.is_empty() {
            return out;
        }
        at += r.len() as u64;
        out.extend_from_slice(&r.to_bytes());
    }
}

#[tokio::test]
async fn appends_survive_restart_and_offsets_are_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    {
        let log = SegmentLog::open(dir.path(), small_files()).expect("open");
        log.create("s").await.expect("create");
        for i in 0..500u32 {
            let data = format!("event-{i};").into_bytes();
            let off = log.append("s", &data, &none()).await.expect("append");
            assert_eq!(off, expected.len() as u64);
            expected.extend_from_slice(&data);
        }
        assert_eq!(read_all(&log, "s", 0).await, expected);
        log.close().expect("close");
    }
    let files = std::fs::read_dir(dir.path().join("wal"))
        .expect("wal")
        .count();
    assert!(files > 1, "small max_file_bytes should have rolled files");
    let log = SegmentLog::open(dir.path(), small_files()).expect("reopen");
    assert_eq!(log.info("s").expect("info").length, expected.len() as u64);
    assert_eq!(read_all(&log, "s", 0).await, expected);
    assert_eq!(read_all(&log, "s", 100).await, expected[100..]);
}

/// Appends whose buffers the batch holds (large, shared) and appends it copies (small,
/// or borrowed), to two segments in one batch, split into several frames: each
/// segment reads back in order, before and after a restart.
#[tokio::test]
async fn held_and_copied_appends_keep_their_order_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || LogConfig {
        commit_delay: Duration::from_millis(100),
        max_frame_data_bytes: 64 << 10,
        ..LogConfig::default()
    };
    let mut expected = [Vec::new(), Vec::new()];
    {
        let log = SegmentLog::open(dir.path(), config()).expect("open");
        let names = ["a", "b"];
        for n in names {
            log.create(n).await.expect("create");
        }
        let mut last = None;
        for i in 0..40usize {
            let seg = i % 2;
            let len = match i % 5 {
                0 | 3 => 100 + i,
                _ => SHARED_MIN + 1000 * i,
            };
            let data: Vec<u8> = (0..len).map(|j| (i * 7 + j / 3) as u8).collect();
            let pieces: Vec<Bytes> = data
                .chunks(len / 3 + 1)
                .map(Bytes::copy_from_slice)
                .collect();
            let payload = match i % 3 {
                0 => Payload::Borrowed(&data),
                _ => Payload::Shared(&pieces),
            };
            let (offset, ticket) = log
                .submit_append(names[seg], payload, &none())
                .expect("submit");
            assert_eq!(offset, expected[seg].len() as u64);
            expected[seg].extend_from_slice(&data);
            last = Some(ticket);
        }
        log.durable(last.expect("a ticket")).await.expect("durable");
        assert_eq!(read_all(&log, "a", 0).await, expected[0]);
        assert_eq!(read_all(&log, "b", 0).await, expected[1]);
        log.close().expect("close");
    }
    let log = SegmentLog::open(dir.path(), config()).expect("reopen");
    assert_eq!(read_all(&log, "a", 0).await, expected[0]);
    assert_eq!(read_all(&log, "b", 0).await, expected[1]);
}

#[tokio::test]
async fn conditional_append_checks_the_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
    log.create("s").await.expect("create");
    let at = |n| AppendOptions {
        expected_length: Some(n),
        attributes: vec![],
    };
    assert_eq!(log.append("s", b"abc", &at(0)).await.expect("first"), 0);
    match log.append("s", b"xyz", &at(0)).await {
        Err(LogError::BadOffset {
            expected: 0,
            actual: 3,
            ..
        }) => {}
        other => panic!("expected BadOffset, got {other:?}"),
    }
    // Pipelined: the second conditional append sees the first before it is durable.
    let (o1, _) = log.submit_append("s", b"de", &at(3)).expect("submit");
    let (o2, t2) = log.submit_append("s", b"f", &at(5)).expect("submit");
    assert_eq!((o1, o2), (3, 5));
    log.durable(t2).await.expect("durable");
    assert_eq!(read_all(&log, "s", 0).await, b"abcdef");
}

/// Pipelined appends: a condition sees the attributes of appends submitted but not yet
/// durable (the pending state), then the durable ones, then those recovered.
#[tokio::test]
async fn conditions_see_appends_not_yet_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = || LogConfig {
        commit_delay: Duration::from_millis(200),
        ..LogConfig::default()
    };
    let event = |n: i64| AppendOptions {
        expected_length: None,
        attributes: vec![AttributeUpdate {
            id: 42,
            value: n,
            condition: AttributeCondition::Greater,
        }],
    };
    let refused = |r: Result<(u64, tributary::log::Ticket), LogError>, current| match r {
        Err(LogError::AttributeConflict { current: c, .. }) => assert_eq!(c, Some(current)),
        other => panic!("expected AttributeConflict at {current}, got {other:?}"),
    };
    {
        let log = SegmentLog::open(dir.path(), slow()).expect("open");
        log.create("s").await.expect("create");
        let (_, t1) = log.submit_append("s", b"1", &event(1)).expect("1");
        let (_, t2) = log.submit_append("s", b"2", &event(2)).expect("2");
        refused(log.submit_append("s", b"2", &event(2)), 2);
        assert_eq!(
            log.attribute("s", 42).expect("attribute"),
            None,
            "nothing durable yet"
        );
        log.durable(t1).await.expect("durable 1");
        log.durable(t2).await.expect("durable 2");
        assert_eq!(log.attribute("s", 42).expect("attribute"), Some(2));
        refused(log.submit_append("s", b"2", &event(2)), 2);
        let (_, t3) = log.submit_append("s", b"3", &event(3)).expect("3");
        log.durable(t3).await.expect("durable 3");
    }
    let log = SegmentLog::open(dir.path(), slow()).expect("reopen");
    refused(log.submit_append("s", b"3", &event(3)), 3);
    let (_, t4) = log.submit_append("s", b"4", &event(4)).expect("4");
    log.durable(t4).await.expect("durable 4");
    assert_eq!(read_all(&log, "s", 0).await, b"1234");
}

#[tokio::test]
async fn attributes_are_stored_with_the_append_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = 0xfeed_beef_u128 << 64;
    let event = |n: i64| AppendOptions {
        expected_length: None,
        attributes: vec![AttributeUpdate {
            id: writer,
            value: n,
            condition: AttributeCondition::Greater,
        }],
    };
    {
        let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
        log.create("s").await.expect("create");
        log.append("s", b"1", &event(1)).await.expect("1");
        log.append("s", b"2", &event(2)).await.expect("2");
        // A duplicate (resent event 2) is refused and stores nothing.
        match log.append("s", b"2", &event(2)).await {
            Err(LogError::AttributeConflict {
                current: Some(2), ..
            }) => {}
            other => panic!("expected AttributeConflict, got {other:?}"),
        }
        assert_eq!(log.info("s").expect("info").length, 2);
    }
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("reopen");
    let info = log.info("s").expect("info");
    assert_eq!(log.attribute("s", writer).expect("attribute"), Some(2));
    assert_eq!(info.length, 2);
    let eq = AppendOptions {
        expected_length: None,
        attributes: vec![AttributeUpdate {
            id: 7,
            value: 1,
            condition: AttributeCondition::Equals(None),
        }],
    };
    log.append("s", b"x", &eq)
        .await
        .expect("absent matches None");
    assert!(log.append("s", b"x", &eq).await.is_err());
}

#[tokio::test]
async fn seal_refuses_appends_and_ends_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
        log.create("s").await.expect("create");
        log.append("s", b"hello", &none()).await.expect("append");
        assert_eq!(log.seal("s").await.expect("seal"), 5);
        assert!(matches!(
            log.append("s", b"x", &none()).await,
            Err(LogError::Sealed(_))
        ));
        let r = log
            .read("s", 0, 100, Duration::from_secs(5))
            .await
            .expect("read");
        assert!(r.end_of_segment);
        assert_eq!(&r.to_bytes()[..], b"hello");
    }
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("reopen");
    let started = Instant::now();
    let r = log
        .read("s", 5, 100, Duration::from_secs(5))
        .await
        .expect("read");
    assert!(r.end_of_segment && r.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a sealed end must not wait"
    );
    assert!(log.info("s").expect("info").sealed);
}

#[tokio::test]
async fn truncate_drops_the_prefix_and_deletes_old_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_files();
    let log = SegmentLog::open(dir.path(), cfg.clone()).expect("open");
    log.create("s").await.expect("create");
    let chunk = vec![7u8; 1000];
    for _ in 0..100 {
        log.append("s", &chunk, &none()).await.expect("append");
    }
    let wal = dir.path().join("wal");
    let before = std::fs::read_dir(&wal).expect("wal").count();
    log.truncate("s", 90_000).await.expect("truncate");
    assert!(matches!(
        log.read("s", 10, 10, Duration::ZERO).await,
        Err(LogError::Truncated { start: 90_000, .. })
    ));
    assert_eq!(read_all(&log, "s", 90_000).await.len(), 10_000);
    // Files are deleted once they are older than the checkpoint: roll one more.
    for _ in 0..40 {
        log.append("s", &chunk, &none()).await.expect("append");
    }
    let after = std::fs::read_dir(&wal).expect("wal").count();
    assert!(
        after < before,
        "truncated files should be deleted ({before} -> {after})"
    );
    log.close().expect("close");
    let log = SegmentLog::open(dir.path(), cfg).expect("reopen");
    let info = log.info("s").expect("info");
    assert_eq!((info.start, info.length), (90_000, 140_000));
    assert_eq!(read_all(&log, "s", 90_000).await.len(), 50_000);
    assert!(matches!(
        log.truncate("s", 200_000).await,
        Err(LogError::BeyondEnd { .. })
    ));
}

#[tokio::test]
async fn merge_is_atomic_and_copies_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = SegmentLog::open(dir.path(), small_files()).expect("open");
        log.create("stream/0").await.expect("create");
        log.create("stream/0#txn.1").await.expect("create");
        log.append("stream/0", b"before;", &none())
            .await
            .expect("a");
        log.append("stream/0#txn.1", b"txn-data;", &none())
            .await
            .expect("b");
        assert!(matches!(
            log.merge("stream/0", "stream/0#txn.1").await,
            Err(LogError::BadMerge { .. })
        ));
        log.seal("stream/0#txn.1").await.expect("seal");
        assert_eq!(
            log.merge("stream/0", "stream/0#txn.1")
                .await
                .expect("merge"),
            7
        );
        assert!(matches!(
            log.info("stream/0#txn.1"),
            Err(LogError::NoSuchSegment(_))
        ));
        log.append("stream/0", b"after", &none()).await.expect("c");
        assert_eq!(
            read_all(&log, "stream/0", 0).await,
            b"before;txn-data;after"
        );
    }
    let log = SegmentLog::open(dir.path(), small_files()).expect("reopen");
    assert_eq!(
        read_all(&log, "stream/0", 0).await,
        b"before;txn-data;after"
    );
    assert_eq!(log.list(), vec!["stream/0".to_string()]);
}

#[tokio::test]
async fn a_merge_sets_attributes_atomically_and_a_failed_condition_merges_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = |value| AttributeUpdate {
        id: 0xabc,
        value,
        condition: AttributeCondition::Greater,
    };
    {
        let log = SegmentLog::open(dir.path(), small_files()).expect("open");
        log.create("stream/0").await.expect("create");
        for (name, data) in [("tmp/1", &b"first;"[..]), ("tmp/2", b"second;")] {
            log.create(name).await.expect("create");
            log.append(name, data, &none()).await.expect("append");
            log.seal(name).await.expect("seal");
        }
        let at = log
            .merge_with("stream/0", "tmp/1", &[writer(5)])
            .await
            .expect("merge");
        assert_eq!(at, 0);
        assert!(matches!(
            log.merge_with("stream/0", "tmp/2", &[writer(5)]).await,
            Err(LogError::AttributeConflict {
                current: Some(5),
                ..
            })
        ));
        assert_eq!(read_all(&log, "stream/0", 0).await, b"first;");
        assert!(log.info("tmp/2").is_ok(), "the refused source stays");
    }
    // The attribute comes back from the log with the merge (replayed, not checkpointed).
    let log = SegmentLog::open(dir.path(), small_files()).expect("reopen");
    let info = log.info("stream/0").expect("info");
    assert_eq!(
        log.attribute("stream/0", 0xabc).expect("attribute"),
        Some(5)
    );
    assert_eq!(info.length, 6);
    log.merge_with("stream/0", "tmp/2", &[writer(6)])
        .await
        .expect("merge with a greater value");
    assert_eq!(read_all(&log, "stream/0", 0).await, b"first;second;");
}

#[tokio::test]
async fn tail_read_waits_for_data_and_times_out_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        std::sync::Arc::new(SegmentLog::open(dir.path(), LogConfig::default()).expect("open"));
    log.create("s").await.expect("create");
    let started = Instant::now();
    let r = log
        .read("s", 0, 10, Duration::from_millis(200))
        .await
        .expect("read");
    assert!(r.is_empty() && !r.end_of_segment);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let reader = {
        let log = log.clone();
        tokio::spawn(async move { log.read("s", 0, 10, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append("s", b"wake", &none()).await.expect("append");
    let r = reader.await.expect("join").expect("read");
    assert_eq!(&r.to_bytes()[..], b"wake");
}

#[tokio::test]
async fn delete_and_recreate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
    log.create("s").await.expect("create");
    log.append("s", b"old", &none()).await.expect("append");
    assert!(matches!(
        log.create("s").await,
        Err(LogError::SegmentExists(_))
    ));
    log.delete("s").await.expect("delete");
    assert!(matches!(
        log.append("s", b"x", &none()).await,
        Err(LogError::NoSuchSegment(_))
    ));
    log.create("s").await.expect("recreate");
    log.append("s", b"new", &none()).await.expect("append");
    drop(log);
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(read_all(&log, "s", 0).await, b"new");
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        max_append_bytes: 1000,
        ..LogConfig::default()
    };
    let log = SegmentLog::open(dir.path(), cfg).expect("open");
    for bad in ["", "a b", "../x", "a//b"] {
        assert!(matches!(
            log.create(bad).await,
            Err(LogError::InvalidName { .. })
        ));
    }
    log.create("s").await.expect("create");
    let e = log
        .append("s", &[0u8; 1001], &none())
        .await
        .expect_err("too large");
    assert!(matches!(
        e,
        LogError::TooLarge {
            size: 1001,
            max: 1000
        }
    ));
    assert!(e.to_string().contains("1001"));
    assert!(matches!(
        log.read("nope", 0, 1, Duration::ZERO).await,
        Err(LogError::NoSuchSegment(_))
    ));
    assert!(matches!(
        log.read("s", 5, 1, Duration::ZERO).await,
        Err(LogError::BeyondEnd { .. })
    ));
}

#[tokio::test]
async fn concurrent_appends_to_many_segments_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        std::sync::Arc::new(SegmentLog::open(dir.path(), LogConfig::default()).expect("open"));
    for s in 0..50 {
        log.create(&format!("s{s}")).await.expect("create");
    }
    let mut tickets = Vec::new();
    for i in 0..5000u32 {
        let seg = format!("s{}", i % 50);
        let (_, t) = log
            .submit_append(&seg, &i.to_be_bytes(), &none())
            .expect("submit");
        tickets.push(t);
    }
    let distinct: std::collections::BTreeSet<_> = tickets.iter().collect();
    assert!(
        distinct.len() < 5000 / 10,
        "5000 appends took {} batches",
        distinct.len()
    );
    for t in tickets {
        log.durable(t).await.expect("durable");
    }
    for s in 0..50u32 {
        let data = read_all(&log, &format!("s{s}"), 0).await;
        let got: Vec<u32> = data
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want: Vec<u32> = (0..5000).filter(|i| i % 50 == s).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn backpressure_refuses_then_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        max_batch_bytes: 4096,
        commit_delay: Duration::from_millis(300),
        ..LogConfig::default()
    };
    let log = SegmentLog::open(dir.path(), cfg).expect("open");
    log.create("s").await.expect("create");
    let mut refused = false;
    for _ in 0..100 {
        match log.submit_append("s", &[1u8; 1000], &none()) {
            Ok(_) => {}
            Err(LogError::Backpressure(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "a full batch must push back");
    // The async append waits for room instead.
    log.append("s", &[2u8; 1000], &none())
        .await
        .expect("append");
}

#[tokio::test]
async fn no_op_operations_do_not_wait_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
    log.create("s").await.expect("create");
    log.append("s", b"abc", &none()).await.expect("append");
    log.truncate("s", 2).await.expect("truncate");
    let quick = Duration::from_secs(5);
    tokio::time::timeout(quick, log.truncate("s", 1))
        .await
        .expect("a truncate below the start returns at once")
        .expect("ok");
    log.seal("s").await.expect("seal");
    tokio::time::timeout(quick, log.seal("s"))
        .await
        .expect("a second seal returns at once")
        .expect("ok");
}

#[tokio::test]
async fn a_second_open_of_the_same_container_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open");
    let e = SegmentLog::open(dir.path(), LogConfig::default()).expect_err("locked");
    assert!(e.to_string().contains("another process"), "{e}");
    log.close().expect("close");
    // Once closed, it opens again at once.
    SegmentLog::open(dir.path(), LogConfig::default()).expect("reopen");
}
