//! Tiering with the real `tributary-cloud standalone` binary, against a real S3 server
//! (Garage on loopback) and against the filesystem backend: data moves out and reads
//! back byte-identical, truncation deletes chunks, a Tier-2 outage back-pressures
//! writers and loses nothing, and a node whose local disk is lost comes back from
//! Tier-2 alone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::garage::Garage;
use common::{connect, free_tcp_port, http_get, runtime, Node};
use tributary::event::decode_events;
use tributary::log::{FsTier2, Tier2};
use tributary::profile::ClientProfile;
use tributary::service::{Client, EventWriter, WriterConfig};
use tributary::stream::{segment_name, StreamConfig, StreamCut};
use tributary_cloud::s3::S3Tier2;

const SCOPE: &str = "t";
const STREAM: &str = "s";
const SEGMENT: &str = "t/s/0.#epoch.0";
const EVENT_BYTES: usize = 2000;

/// Where a test node's Tier-2 is.
enum Backend {
    Fs(PathBuf),
    S3(Garage),
}

impl Backend {
    fn fs(dir: &Path) -> Backend {
        Backend::Fs(dir.join("tier2"))
    }

    fn s3(dir: &Path) -> Backend {
        Backend::S3(Garage::start(&dir.join("garage")))
    }

    fn section(&self) -> String {
        match self {
            Backend::Fs(p) => format!("kind = \"fs\"\npath = \"{}\"\n", p.display()),
            Backend::S3(g) => g.toml("node-1/"),
        }
    }

    /// Names of the chunk objects.
    async fn chunks(&self) -> Vec<String> {
        let names = match self {
            Backend::Fs(p) => FsTier2::new(p).expect("tier2 dir").list().await,
            Backend::S3(g) => S3Tier2::new(&g.settings("node-1/")).await.list().await,
        };
        names
            .expect("list Tier-2")
            .into_iter()
            .filter(|n| n.starts_with("c-"))
            .collect()
    }
}

/// A node's directory, config and ports.
struct Setup {
    dir: PathBuf,
    http: std::net::SocketAddr,
}

impl Setup {
    fn new(dir: &Path, backend: &Backend, max_backlog_mb: u64) -> Setup {
        Setup::with_interval(dir, backend, max_backlog_mb, 1)
    }

    fn with_interval(dir: &Path, backend: &Backend, max_backlog_mb: u64, secs: u64) -> Setup {
        let config = format!(
            "[log]\nmax_file_bytes = 1048576\ncache_mb = 1\n\n[tier2]\n{}\
             flush_interval_secs = {secs}\nchunk_mb = 1\nmax_backlog_mb = {max_backlog_mb}\n",
            backend.section()
        );
        std::fs::write(dir.join("cloud.toml"), config).expect("config");
        Setup {
            dir: dir.to_path_buf(),
            http: ([127, 0, 0, 1], free_tcp_port()).into(),
        }
    }

    fn start(&self, log: &str) -> Node {
        Node::start(
            &self.dir,
            log,
            &[
                "--config",
                "cloud.toml",
                "--data-dir",
                "data",
                "--listen",
                "127.0.0.1:0",
            ],
            self.http,
        )
    }

    async fn client(&self) -> Client {
        let profile =
            ClientProfile::load(self.dir.join("data/client/profile.toml")).expect("client profile");
        connect(&profile).await
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.http, "/metrics").expect("GET /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// Waits until Tier-2 holds everything written (the backlog is empty), then for the
    /// pass that emptied it to finish (its manifest).
    fn wait_flushed(&self, node: &Node) {
        eventually(node, 60, || {
            if self.metric("tributary_tier2_backlog_bytes") == 0 {
                Ok(())
            } else {
                Err("Tier-2 backlog did not drain".into())
            }
        });
        std::thread::sleep(Duration::from_secs(3));
    }

    fn wal_files(&self) -> Vec<(String, u64)> {
        std::fs::read_dir(self.dir.join("data/log/wal"))
            .expect("wal dir")
            .filter_map(|e| {
                let e = e.ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect()
    }
}

/// Checks every 100 ms until `check` passes; after `secs`, fails with its last reason
/// and the node's log.
fn eventually(node: &Node, secs: u64, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(why) => assert!(Instant::now() < deadline, "{why}:\n{}", node.log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("{i:010}:").into_bytes();
    p.resize(EVENT_BYTES, b'a' + (i % 26) as u8);
    p
}

async fn write(client: &Client, from: u64, to: u64) {
    let mut w = EventWriter::new(
        client,
        SCOPE,
        STREAM,
        WriterConfig {
            retry_for: Duration::from_secs(120),
            ..WriterConfig::default()
        },
    )
    .await
    .expect("writer");
    for i in from..to {
        w.write(b"k", &payload(i)).await.expect("write");
    }
    w.close().await.expect("close writer");
}

async fn read_segment(client: &Client, from: u64) -> Bytes {
    let info = client.segment_info(SEGMENT).await.expect("info");
    let mut out = Vec::new();
    let mut at = from;
    while at < info.length {
        let (data, _) = client
            .read(SEGMENT, at, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        assert!(!data.is_empty(), "empty read at {at} of {}", info.length);
        at += data.len() as u64;
        out.extend_from_slice(&data);
    }
    Bytes::from(out)
}

/// Every event in `bytes` is the next of `expect`, exactly once, byte for byte.
fn check_events(bytes: &Bytes, expect: std::ops::Range<u64>) {
    let (events, used) = decode_events(bytes).expect("whole events");
    assert_eq!(used, bytes.len(), "a partial event at the end");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| {
            assert_eq!(e.payload.len(), EVENT_BYTES);
            let n: u64 = std::str::from_utf8(&e.payload[..10])
                .expect("number")
                .parse()
                .expect("number");
            assert_eq!(&e.payload[..], &payload(n)[..], "event {n} changed");
            n
        })
        .collect();
    let want: Vec<u64> = expect.collect();
    if numbers != want {
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for n in &numbers {
            *seen.entry(*n).or_default() += 1;
        }
        let dup: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        let missing: Vec<_> = want.iter().filter(|n| !seen.contains_key(n)).collect();
        panic!(
            "{} events; duplicated {:?}; missing {:?}",
            numbers.len(),
            &dup[..dup.len().min(10)],
            &missing[..missing.len().min(10)]
        );
    }
}

async fn create_stream(client: &Client) {
    client.create_scope(SCOPE).await.expect("scope");
    client
        .create_stream(SCOPE, STREAM, StreamConfig::default())
        .await
        .expect("stream");
}

fn tiers_out_reads_back_and_truncation_deletes_chunks(backend: Backend, dir: &Path) {
    let setup = Setup::new(dir, &backend, 1024);
    let node = setup.start("node.log");
    let rt = runtime();
    let client = rt.block_on(setup.client());
    rt.block_on(create_stream(&client));
    // 4000 events of 2000 bytes: about 8 MiB, eight 1 MiB log files.
    rt.block_on(write(&client, 0, 4000));
    setup.wait_flushed(&node);

    let chunks = rt.block_on(backend.chunks());
    assert!(chunks.len() >= 8, "{chunks:?}");
    // The log files that held it are gone but the active one (which can hold up to
    // `max_file_bytes` plus one batch): the local disk keeps little.
    let files = setup.wal_files();
    assert_eq!(files.len(), 1, "log files left: {files:?}");
    // Read from the head, from Tier-2 (the cache holds 1 MiB): byte-identical.
    let all = rt.block_on(read_segment(&client, 0));
    check_events(&all, 0..4000);
    assert!(setup.metric("tributary_tier2_moved_bytes_total") >= all.len() as u64);

    // Truncate at the middle: the chunks wholly before it go.
    let event = tributary::event::framed_len(b"k", &payload(0)) as u64;
    let cut_at_event = all.len() as u64 / 2 / event * event;
    let mut cut: StreamCut = rt
        .block_on(client.stream_tail(SCOPE, STREAM))
        .expect("tail");
    assert_eq!(cut.positions.len(), 1);
    for (id, at) in cut.positions.iter_mut() {
        assert_eq!(segment_name(SCOPE, STREAM, *id), SEGMENT);
        *at = cut_at_event;
    }
    rt.block_on(client.truncate_stream(SCOPE, STREAM, &cut))
        .expect("truncate");
    // Chunk names hold their offset: a chunk ends where the next begins.
    let offset = |name: &str| {
        u64::from_str_radix(name.rsplit('-').next().expect("offset"), 16).expect("hex offset")
    };
    let mut keep: Vec<String> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if chunks
            .get(i + 1)
            .is_none_or(|next| offset(next) > cut_at_event)
        {
            keep.push(c.clone());
        }
    }
    assert!(keep.len() < chunks.len(), "{chunks:?}");
    eventually(&node, 30, || {
        let left = rt.block_on(backend.chunks());
        if left == keep {
            Ok(())
        } else {
            Err(format!("chunks left {left:?}, expected {keep:?}"))
        }
    });
    let rest = rt.block_on(read_segment(&client, cut_at_event));
    assert_eq!(rest, all.slice(cut_at_event as usize..));
    let below = rt.block_on(client.read(SEGMENT, 0, 100, Duration::ZERO));
    assert!(below.is_err(), "data below the cut is gone");
    drop(client);
    assert!(node.terminate().success());
}

/// Stops Tier-2: kills the S3 server, or puts a file where the directory was.
fn outage(backend: &mut Backend) {
    match backend {
        Backend::Fs(p) => {
            std::fs::rename(p.as_path(), p.with_extension("away")).expect("move tier2 away");
            std::fs::write(p.as_path(), b"not a directory").expect("block tier2");
        }
        Backend::S3(g) => g.kill(),
    }
}

fn recover(backend: &mut Backend) {
    match backend {
        Backend::Fs(p) => {
            std::fs::remove_file(p.as_path()).expect("unblock");
            std::fs::rename(p.with_extension("away"), p.as_path()).expect("tier2 back");
        }
        Backend::S3(g) => g.restart(),
    }
}

fn outage_back_pressures_and_loses_nothing(mut backend: Backend, dir: &Path) {
    let setup = Setup::new(dir, &backend, 2);
    let node = setup.start("node.log");
    let rt = runtime();
    let client = rt.block_on(setup.client());
    rt.block_on(create_stream(&client));
    rt.block_on(write(&client, 0, 1000));
    setup.wait_flushed(&node);

    outage(&mut backend);
    // 6000 more events (12 MiB) against a 2 MiB bound: the writer is held back.
    let writer = rt.spawn({
        let client = client.clone();
        async move { write(&client, 1000, 7000).await }
    });
    eventually(&node, 60, || {
        if setup.metric("tributary_tier2_backlog_bytes") >= 2 << 20
            && setup.metric("tributary_tier2_errors_total") > 0
        {
            Ok(())
        } else {
            Err("the backlog never reached its bound".into())
        }
    });
    // A writer now gets a clear, retryable refusal.
    let refused = rt.block_on(async {
        let mut s = client.append_session(SEGMENT, 7).await.expect("session");
        let block = tributary::event::frame_event(b"k", b"x");
        s.send(1, 1, &[block]).await.expect("send");
        s.ack().await.expect_err("refused while Tier-2 is down")
    });
    assert!(refused.is_transient(), "{refused}");
    assert!(
        refused.to_string().contains("not on Tier-2 yet"),
        "{refused}"
    );
    assert!(!writer.is_finished());
    // A writer that retries for less than the outage gives up, and says how many of
    // its events are not stored.
    let give_up = async {
        let config = WriterConfig {
            retry_for: Duration::from_secs(2),
            ..WriterConfig::default()
        };
        let mut w = EventWriter::new(&client, SCOPE, STREAM, config)
            .await
            .expect("writer");
        for i in 0..10 {
            w.write(b"k", &payload(i)).await.expect("write (queued)");
        }
        w.close().await.expect_err("Tier-2 is still down")
    };
    let gave_up = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), give_up).await })
        .expect("the writer gives up within a minute");
    assert!(
        gave_up.to_string().contains("10 events not acknowledged"),
        "{gave_up}"
    );

    recover(&mut backend);
    rt.block_on(writer).expect("writer task");
    setup.wait_flushed(&node);
    let all = rt.block_on(read_segment(&client, 0));
    check_events(&all, 0..7000);
    drop(client);
    assert!(node.terminate().success());
}

/// A node taking data faster than its flush interval moves it while it comes in: with
/// passes an hour apart and an 8 MiB backlog limit, 24 MiB are written and Tier-2 gets
/// them, because passes start once the backlog reaches 2 MiB. The writer may meet a
/// short refusal (Busy) when it outruns a pass on a slow disk, and then resends; with
/// only the hourly passes it would be refused until it gave up after `retry_for`.
fn moves_while_data_comes_in(backend: Backend, dir: &Path) {
    let setup = Setup::with_interval(dir, &backend, 8, 3600);
    let node = setup.start("node.log");
    let rt = runtime();
    let client = rt.block_on(setup.client());
    rt.block_on(create_stream(&client));
    let events = 12_000;
    let stats = rt.block_on(async {
        let config = WriterConfig {
            retry_for: Duration::from_secs(20),
            ..WriterConfig::default()
        };
        let mut w = EventWriter::new(&client, SCOPE, STREAM, config)
            .await
            .expect("writer");
        for i in 0..events {
            w.write(b"k", &payload(i)).await.expect("write");
        }
        w.close().await
    });
    let stats = stats.unwrap_or_else(|e| panic!("the writer gave up: {e}\n{}", node.log()));
    // An event the writer finds stored when it recovers from a refusal counts as
    // already stored, not acknowledged; each is stored once either way (read below).
    assert_eq!(
        stats.acknowledged + stats.already_stored,
        events,
        "{stats:?}"
    );
    // A pass counts what it moved when it ends; the last may still be running.
    eventually(&node, 20, || {
        let moved = setup.metric("tributary_tier2_moved_bytes_total");
        if moved >= 12 << 20 {
            Ok(())
        } else {
            Err(format!("only {moved} bytes moved"))
        }
    });
    check_events(&rt.block_on(read_segment(&client, 0)), 0..events);
    drop(client);
    assert!(node.terminate().success());
}

fn restarts_from_tier2_alone(backend: Backend, dir: &Path) {
    let setup = Setup::new(dir, &backend, 1024);
    let node = setup.start("node1.log");
    let rt = runtime();
    let client = rt.block_on(setup.client());
    rt.block_on(create_stream(&client));
    rt.block_on(write(&client, 0, 3000));
    setup.wait_flushed(&node);
    // A later pass writes a manifest delta on the first pass's full manifest.
    rt.block_on(write(&client, 3000, 3500));
    setup.wait_flushed(&node);
    assert!(setup.metric("tributary_tier2_manifests_written_total") >= 2);
    drop(client);

    // The disk is lost: SIGKILL, and the whole data directory goes.
    node.kill();
    std::fs::remove_dir_all(dir.join("data")).expect("lose the data dir");
    let node = setup.start("node2.log");
    let log = node.log();
    assert!(
        log.contains("restored 1 segments")
            && log.contains("from the Tier-2 manifest")
            && !log.contains("plus 0 of its deltas"),
        "{log}"
    );
    assert!(setup.metric("tributary_tier2_restored_snapshot_seconds") > 0);
    let client = rt.block_on(setup.client());
    let meta = rt
        .block_on(client.describe_stream(SCOPE, STREAM))
        .expect("the stream is back");
    assert!(!meta.sealed);
    check_events(&rt.block_on(read_segment(&client, 0)), 0..3500);
    // And it carries on.
    rt.block_on(write(&client, 3500, 3600));
    check_events(&rt.block_on(read_segment(&client, 0)), 0..3600);
    drop(client);
    assert!(node.terminate().success());
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    (tmp, dir)
}

#[test]
fn s3_tiers_out_reads_back_and_truncation_deletes_chunks() {
    let (_tmp, dir) = tempdir();
    tiers_out_reads_back_and_truncation_deletes_chunks(Backend::s3(&dir), &dir);
}

#[test]
fn fs_tiers_out_reads_back_and_truncation_deletes_chunks() {
    let (_tmp, dir) = tempdir();
    tiers_out_reads_back_and_truncation_deletes_chunks(Backend::fs(&dir), &dir);
}

#[test]
fn s3_outage_back_pressures_and_loses_nothing() {
    let (_tmp, dir) = tempdir();
    outage_back_pressures_and_loses_nothing(Backend::s3(&dir), &dir);
}

#[test]
fn fs_outage_back_pressures_and_loses_nothing() {
    let (_tmp, dir) = tempdir();
    outage_back_pressures_and_loses_nothing(Backend::fs(&dir), &dir);
}

#[test]
fn fs_moves_while_data_comes_in() {
    let (_tmp, dir) = tempdir();
    moves_while_data_comes_in(Backend::fs(&dir), &dir);
}

#[test]
fn s3_restart_from_tier2_alone() {
    let (_tmp, dir) = tempdir();
    restarts_from_tier2_alone(Backend::s3(&dir), &dir);
}

#[test]
fn fs_restart_from_tier2_alone() {
    let (_tmp, dir) = tempdir();
    restarts_from_tier2_alone(Backend::fs(&dir), &dir);
}
