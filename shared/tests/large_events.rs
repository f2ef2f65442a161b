//! Large events end to end (50 MB here; up to 1 GiB in use): written in-process through
//! the controller (as the edge does) and over QUIC with `EventWriter::write_large`,
//! read back byte-identical by `EventReader`; a writer process SIGKILLed half-way
//! leaves nothing visible and no temporary segment; oversized events are refused
//! clearly. Writer children are this test binary re-run as child processes.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;
use tributary::controller::{Controller, ControllerError};
use tributary::event::{frame_event, MAX_LARGE_EVENT_BYTES};
use tributary::log::{AppendOptions, AttributeCondition, AttributeUpdate, LogConfig, SegmentLog};
use tributary::service::{
    Client, ClientError, EventReader, EventWriter, ReadEvent, ReaderConfig, WriterConfig,
};
use tributary::stream::{is_large_event_segment, segment_name};
use tributary::tls::DevPki;

mod common;
use common::{connect, fixed, serve, Node};
use tributary::wire::StartFrom;

const MB: usize = 1_000_000;

/// Temporary segments of large events in a log.
fn temps(log: &SegmentLog) -> Vec<String> {
    log.list()
        .into_iter()
        .filter(|n| is_large_event_segment(n))
        .collect()
}

/// `len` pseudo-random bytes (xorshift), different for each seed.
fn payload(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// What a [`Gated`] reader does at its stop.
enum Gate {
    /// Goes on once this fires.
    Until(oneshot::Receiver<()>),
    /// Never goes on (the writer is killed there).
    Never,
}

/// `data` as an `AsyncRead` that stops after `stop_at` bytes: it says so on `reached`,
/// then waits at its gate. A file that arrives slowly, made deterministic.
struct Gated {
    data: Bytes,
    pos: usize,
    stop_at: usize,
    reached: Option<oneshot::Sender<()>>,
    gate: Gate,
}

impl Gated {
    fn new(data: Bytes, stop_at: usize, gate: Gate) -> (Gated, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let g = Gated {
            data,
            pos: 0,
            stop_at,
            reached: Some(tx),
            gate,
        };
        (g, rx)
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.stop_at {
            if let Some(r) = this.reached.take() {
                let _ = r.send(());
            }
            match &mut this.gate {
                Gate::Until(go) => match Pin::new(go).poll(cx) {
                    Poll::Ready(_) => this.stop_at = usize::MAX,
                    Poll::Pending => return Poll::Pending,
                },
                Gate::Never => return Poll::Pending,
            }
        }
        let end = this.stop_at.min(this.data.len());
        let n = (end - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn fast_reader() -> ReaderConfig {
    ReaderConfig {
        sync_interval: Duration::from_millis(100),
        tail_wait: Duration::from_millis(100),
        ..ReaderConfig::default()
    }
}

async fn reader(c: &Client, group: &str, config: ReaderConfig) -> EventReader {
    c.create_reader_group("s", group, "t", StartFrom::Head)
        .await
        .expect("group");
    EventReader::join(c, "s", group, "r", config)
        .await
        .expect("join")
}

/// Every event until `patience` passes without one.
async fn read_all(r: &mut EventReader, patience: Duration) -> Vec<ReadEvent> {
    let mut got = Vec::new();
    while let Some(e) = r.next(patience).await.expect("read") {
        got.push(e);
    }
    got
}

/// Compares without printing 50 MB on a mismatch.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!("{what}: first difference at byte {at:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_event_written_in_process_reads_back_byte_identical_between_small_ones() {
    let node = Node::start().await;
    let c = node.client().await;
    c.create_scope("s").await.expect("scope");
    c.create_stream("s", "t", fixed(2)).await.expect("stream");
    let mut w = EventWriter::new(&c, "s", "t", WriterConfig::default())
        .await
        .expect("writer");
    w.write(b"cam-1", b"before").await.expect("write");
    w.flush().await.expect("flush");

    let video = payload(50 * MB, 1);
    let tag = AttributeUpdate {
        id: 0x5eed,
        value: 7,
        condition: AttributeCondition::Always,
    };
    // On a task of its own, as the edge runs it (the future is `Send`).
    let controller = node.controller.clone().expect("running");
    let data = std::io::Cursor::new(video.clone());
    let stored = tokio::spawn(async move {
        controller
            .append_large_event(
                "s",
                "t",
                b"cam-1",
                data.get_ref().len() as u64,
                data,
                &[tag],
            )
            .await
    })
    .await
    .expect("task")
    .expect("large event");
    assert_eq!(stored.length, (6 + 5 + video.len()) as u64);
    let name = segment_name("s", "t", stored.segment);
    let log = node.controller().log();
    let info = log.info(&name).expect("info");
    assert_eq!(
        log.attribute(&name, 0x5eed).expect("attribute"),
        Some(7),
        "the attribute came with the merge"
    );
    assert_eq!(info.length, stored.offset + stored.length);
    assert!(
        temps(node.controller().log()).is_empty(),
        "{:?}",
        temps(node.controller().log())
    );

    w.write(b"cam-1", b"after").await.expect("write");
    w.close().await.expect("close");

    let mut r = reader(&c, "g", fast_reader()).await;
    let got = read_all(&mut r, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 3, "before, the large event, after");
    assert_eq!(&got[0].payload[..], b"before");
    assert_eq!(&got[1].key[..], b"cam-1");
    assert_eq!(got[1].segment, stored.segment);
    assert_eq!(got[1].offset, stored.offset);
    assert_same(&got[1].payload, &video, "the large event");
    assert_eq!(&got[2].payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_event_over_quic_follows_a_scale_during_its_upload_and_a_rerun_skips_it() {
    let node = Node::start().await;
    let c = node.client().await;
    c.create_scope("s").await.expect("scope");
    c.create_stream("s", "t", fixed(1)).await.expect("stream");
    let config = WriterConfig {
        writer_id: Some(0xc0ffee),
        ..WriterConfig::default()
    };
    let mut w = EventWriter::new(&c, "s", "t", config.clone())
        .await
        .expect("writer");
    w.write(b"cam-1", b"before").await.expect("write");

    // Half-way through the upload, the only segment is split: the event is merged
    // onto the successor owning its key, after "before" in per-key order.
    let video = payload(50 * MB, 2);
    let (go_tx, go_rx) = oneshot::channel();
    let (input, reached) = Gated::new(video.clone(), video.len() / 2, Gate::Until(go_rx));
    let scale = async {
        reached.await.expect("half-way");
        let meta = c.describe_stream("s", "t").await.expect("describe");
        let only = meta.active()[0].clone();
        c.scale_stream("s", "t", &[only.id], &only.range.split(2))
            .await
            .expect("split");
        let _ = go_tx.send(());
    };
    let (number, ()) = tokio::join!(w.write_large(b"cam-1", video.len() as u64, input), scale);
    assert_eq!(number.expect("large event"), 2);
    assert!(
        temps(node.controller().log()).is_empty(),
        "{:?}",
        temps(node.controller().log())
    );
    w.write(b"cam-1", b"after").await.expect("write");
    let stats = w.close().await.expect("close");
    assert_eq!(stats.acknowledged, 3, "{stats:?}");

    let mut r = reader(&c, "g", fast_reader()).await;
    let got = read_all(&mut r, Duration::from_secs(2)).await;
    let payloads: Vec<usize> = got.iter().map(|e| e.payload.len()).collect();
    assert_eq!(payloads, vec![6, video.len(), 5], "in order, once each");
    assert_eq!(got[1].segment.epoch, 1, "merged onto the successor");
    assert_same(&got[1].payload, &video, "the large event");

    // The same writer id and events again: everything is known as stored, and the
    // large event's data is not even read.
    let mut again = EventWriter::new(&c, "s", "t", config)
        .await
        .expect("writer");
    again.write(b"cam-1", b"before").await.expect("write");
    let n = again
        .write_large(b"cam-1", video.len() as u64, tokio::io::empty())
        .await
        .expect("skipped");
    assert_eq!(n, 2);
    again.write(b"cam-1", b"after").await.expect("write");
    let stats = again.close().await.expect("close");
    assert_eq!((stats.acknowledged, stats.already_stored), (0, 3));
    let info = c
        .segment_info(&segment_name("s", "t", got[1].segment))
        .await
        .expect("info");
    assert_eq!(
        info.length,
        got[2].offset + 6 + 5 + 5,
        "nothing stored twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_short_and_unreadable_large_events_are_refused_and_leave_nothing() {
    let node = Node::start().await;
    let c = node.client().await;
    c.create_scope("s").await.expect("scope");
    c.create_stream("s", "t", fixed(1)).await.expect("stream");
    let mut w = EventWriter::new(&c, "s", "t", WriterConfig::default())
        .await
        .expect("writer");

    // Above the limit: refused before anything is read or sent.
    let too_big = MAX_LARGE_EVENT_BYTES + 1;
    let e = w
        .write_large(b"k", too_big, tokio::io::empty())
        .await
        .expect_err("too large");
    assert!(
        matches!(&e, ClientError::InvalidInput(m) if m.contains("limit is 1073741824")),
        "{e}"
    );
    let e = node
        .controller()
        .append_large_event("s", "t", b"k", too_big, tokio::io::empty(), &[])
        .await
        .expect_err("too large");
    assert!(matches!(e, ControllerError::InvalidEvent(_)), "{e}");

    // Data shorter than announced: nothing stored, no temporary segment left.
    let short = payload(3 * MB, 3);
    let e = w
        .write_large(b"k", 4 * MB as u64, &short[..])
        .await
        .expect_err("short");
    assert!(e.to_string().contains("ended after"), "{e}");
    let e = node
        .controller()
        .append_large_event("s", "t", b"k", 4 * MB as u64, &short[..], &[])
        .await
        .expect_err("short");
    assert!(e.to_string().contains("ended after"), "{e}");
    assert!(
        temps(node.controller().log()).is_empty(),
        "{:?}",
        temps(node.controller().log())
    );

    // The writer goes on: the refused event's number goes to the next one.
    let big = payload(2 * MB, 4);
    assert_eq!(
        w.write_large(b"k", big.len() as u64, &big[..])
            .await
            .expect("large"),
        1
    );
    w.close().await.expect("close");

    // A reader sized for 1 MB events refuses the 2 MB one by name, not by allocating.
    let small_reader = ReaderConfig {
        max_event_bytes: 1 << 20,
        ..fast_reader()
    };
    let mut r = reader(&c, "g", small_reader).await;
    let e = r
        .next(Duration::from_secs(5))
        .await
        .expect_err("event above the reader's limit");
    assert!(
        matches!(e, ClientError::EventTooLarge { offset: 0, size, max: 1048576, .. } if size == 2 * MB as u64 + 7),
        "{e}"
    );
    assert!(e.to_string().contains("max_event_bytes"), "{e}");
    let mut r = reader(&c, "g2", fast_reader()).await;
    let got = read_all(&mut r, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1);
    assert_same(&got[0].payload, &big, "the stored event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_ends_mid_upload_leaves_no_temporary_segment() {
    let node = Node::start().await;
    let c = node.client().await;
    c.create_scope("s").await.expect("scope");
    c.create_stream("s", "t", fixed(1)).await.expect("stream");
    let writer_client = node.client().await;
    let mut w = EventWriter::new(&writer_client, "s", "t", WriterConfig::default())
        .await
        .expect("writer");
    let video = payload(8 * MB, 5);
    let (input, reached) = Gated::new(video.clone(), 4 * MB, Gate::Never);
    let upload = tokio::spawn(async move {
        let _ = w.write_large(b"k", video.len() as u64, input).await;
    });
    reached.await.expect("half-way");
    wait_for(
        || !temps(node.controller().log()).is_empty(),
        "the temporary segment",
    )
    .await;
    // The writing application gives up (or its host goes away): the connection ends.
    upload.abort();
    let _ = upload.await;
    writer_client.close().await;
    wait_for(
        || temps(node.controller().log()).is_empty(),
        "the server deletes it",
    )
    .await;
    let tail = c.stream_tail("s", "t").await.expect("tail");
    assert!(tail.positions.values().all(|l| *l == 0), "{tail:?}");
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const IN_PROCESS_CHILD_ENV: &str = "LARGE_EVENTS_IN_PROCESS_CHILD";
const QUIC_CHILD_ENV: &str = "LARGE_EVENTS_QUIC_CHILD";
/// Bytes a child sends before it stops for its SIGKILL.
const KILLED_AT: usize = 24 * MB;

/// The edge's case: a process with the log and the controller writes a large event and
/// is SIGKILLed half-way. Prints `halfway` once a good part of the temporary segment is
/// durable.
#[test]
fn in_process_writer_child() {
    let Ok(dir) = std::env::var(IN_PROCESS_CHILD_ENV) else {
        return; // Only runs as a child of the SIGKILL test.
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let log = Arc::new(SegmentLog::open(&dir, LogConfig::default()).expect("log"));
        let controller = Controller::open(log.clone()).await.expect("controller");
        let monitor = tokio::spawn(async move {
            loop {
                let durable = temps(&log)
                    .iter()
                    .filter_map(|n| log.info(n).ok())
                    .any(|i| i.length >= (KILLED_AT / 2) as u64);
                if durable {
                    println!("halfway");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let video = payload(50 * MB, 6);
        let (input, _reached) = Gated::new(video.clone(), KILLED_AT, Gate::Never);
        let _ = controller
            .append_large_event("s", "t", b"cam-1", video.len() as u64, input, &[])
            .await;
        let _ = monitor.await;
    });
}

/// A writer over QUIC, SIGKILLed half-way through a large event. Prints `halfway` when
/// it has handed that much to the connection.
#[test]
fn quic_writer_child() {
    let Ok(spec) = std::env::var(QUIC_CHILD_ENV) else {
        return; // Only runs as a child of the SIGKILL test.
    };
    let (pki_dir, addr) = spec.split_once('|').expect("pki|addr");
    let addr: SocketAddr = addr.parse().expect("addr");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pki = DevPki::ensure(&PathBuf::from(pki_dir), "test-client").expect("pki");
        let c = connect(addr, &pki).await;
        let config = WriterConfig {
            writer_id: Some(0xdead),
            ..WriterConfig::default()
        };
        let mut w = EventWriter::new(&c, "s", "t", config)
            .await
            .expect("writer");
        let video = payload(50 * MB, 7);
        let (input, reached) = Gated::new(video.clone(), KILLED_AT, Gate::Never);
        let say = tokio::spawn(async move {
            if reached.await.is_ok() {
                println!("halfway");
            }
        });
        let _ = w.write_large(b"cam-1", video.len() as u64, input).await;
        let _ = say.await;
    });
}

/// Runs a child test of this binary and waits until it prints `halfway`.
fn spawn_child(test: &str, env: &str, value: String) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    for line in BufReader::new(out).lines() {
        match line {
            Ok(l) if l.trim_end().ends_with("halfway") => return child,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let _ = child.kill();
    panic!("the child {test} did not get half-way");
}

fn sigkill(mut child: Child) {
    // SIGKILL, by PID.
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_writer_sigkilled_half_way_leaves_nothing_visible_or_temporary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let before = frame_event(b"cam-1", b"before");
    let segment = {
        let log = Arc::new(SegmentLog::open(&data, LogConfig::default()).expect("log"));
        let c = Controller::open(log.clone()).await.expect("controller");
        c.create_scope("s").expect("scope");
        let meta = c.create_stream("s", "t", fixed(1)).await.expect("stream");
        let name = segment_name("s", "t", meta.active()[0].id);
        log.append(&name, &before, &AppendOptions::default())
            .await
            .expect("append");
        name
    };
    let data_arg = data.to_string_lossy().to_string();
    let child = tokio::task::spawn_blocking(move || {
        spawn_child("in_process_writer_child", IN_PROCESS_CHILD_ENV, data_arg)
    })
    .await
    .expect("child");
    sigkill(child);

    {
        // What the kill left: a temporary segment holding part of the event.
        let log = SegmentLog::open(&data, LogConfig::default()).expect("log");
        let left = temps(&log);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(log.info(&left[0]).expect("info").length >= (KILLED_AT / 2) as u64);
        assert_eq!(
            log.info(&segment).expect("info").length,
            before.len() as u64
        );
    }
    // The node starts again: the controller deletes it, never merges it.
    let pki = DevPki::ensure(&dir.path().join("pki"), "test-client").expect("pki");
    let (server, controller) = serve(&data, &pki, ([127, 0, 0, 1], 0).into()).await;
    assert!(temps(controller.log()).is_empty());
    let info = controller.log().info(&segment).expect("info");
    assert_eq!(info.length, before.len() as u64, "nothing of it is visible");
    let c = connect(server.local_addr().expect("addr"), &pki).await;
    let mut r = reader(&c, "g", fast_reader()).await;
    let got = read_all(&mut r, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_writer_sigkilled_half_way_leaves_nothing_visible_or_temporary() {
    let mut node = Node::start().await;
    let c = node.client().await;
    c.create_scope("s").await.expect("scope");
    c.create_stream("s", "t", fixed(1)).await.expect("stream");
    let spec = format!("{}|{}", node.dir.path().join("pki").display(), node.addr);
    let child =
        tokio::task::spawn_blocking(move || spawn_child("quic_writer_child", QUIC_CHILD_ENV, spec))
            .await
            .expect("child");
    // Part of the event is on the server, in its temporary segment.
    let log = node.controller().log().clone();
    wait_for(
        || {
            temps(&log)
                .iter()
                .filter_map(|n| log.info(n).ok())
                .any(|i| i.length >= 8 * MB as u64)
        },
        "part of the upload",
    )
    .await;
    drop(log);
    sigkill(child);
    let tail = c.stream_tail("s", "t").await.expect("tail");
    assert!(
        tail.positions.values().all(|l| *l == 0),
        "nothing visible: {tail:?}"
    );
    // The server notices the connection is gone and deletes the temporary segment.
    wait_for(
        || temps(node.controller().log()).is_empty(),
        "the server deletes it",
    )
    .await;

    node.restart().await;
    assert!(temps(node.controller().log()).is_empty());
    let c = node.client().await;
    let mut r = reader(&c, "g", fast_reader()).await;
    assert!(read_all(&mut r, Duration::from_millis(500))
        .await
        .is_empty());
    let positions = c
        .writer_positions("s", "t", 0xdead)
        .await
        .expect("positions");
    assert!(positions.iter().all(|p| p.last_event_number.is_none()));
}
