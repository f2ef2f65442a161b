//! A full disk, black-box: the real standalone on a small tmpfs (mounted here, as
//! root), filled by a writer with a writer id and a file. The node refuses appends with
//! "disk full" instead of failing, goes on by itself once the file is deleted (same
//! process), and after a restart; rerunning the same input leaves every event once.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{connect, free_tcp_port, http_get, runtime, Node};
use tributary::profile::ClientProfile;
use tributary::service::{Client, EventReader, EventWriter, ReaderConfig, WriterConfig};
use tributary::stream::{RetentionPolicy, ScalingPolicy, StreamConfig};
use tributary::wire::StartFrom;

const EVENTS: usize = 24_000;
const EVENT_BYTES: usize = 1000;
const WRITER: u128 = 0x5eed;

/// A tmpfs of `mb` MiB at `dir`, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn event(i: usize) -> Vec<u8> {
    let mut e = format!("{i:08}:").into_bytes();
    e.resize(EVENT_BYTES, b'a' + (i % 26) as u8);
    e
}

/// Writes every event with the writer id (a rerun skips what is stored); the stats,
/// or the error that stopped it.
async fn write_all(c: &Client) -> Result<tributary::service::WriterStats, String> {
    let cfg = WriterConfig {
        writer_id: Some(WRITER),
        retry_for: Duration::from_secs(3),
        ..WriterConfig::default()
    };
    let mut w = EventWriter::new(c, "s", "t", cfg)
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..EVENTS {
        w.write(b"k", &event(i)).await.map_err(|e| e.to_string())?;
    }
    w.close().await.map_err(|e| e.to_string())
}

fn start(dir: &Path, config: &Path, http: SocketAddr) -> Node {
    let config = config.to_str().expect("utf-8 path");
    Node::start(dir, "node.log", &["--config", config], http)
}

fn disk_full_metric(http: SocketAddr) -> Option<String> {
    let (_, body) = http_get(http, "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with("tributary_log_disk_full "))
        .map(str::to_string)
}

#[test]
fn a_full_disk_refuses_appends_and_the_node_goes_on_by_itself_once_there_is_room() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 48);
    let data = disk.0.join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[quic]\nlisten = \"127.0.0.1:0\"\n[tier2]\nkind = \"none\"\n\
             [log]\nmax_file_bytes = 4194304\nreserve_mb = 4\ncache_mb = 4\n",
            data.display()
        ),
    )
    .expect("config");
    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let node = start(tmp.path(), &config, http);
    let profile = ClientProfile::load(data.join("client/profile.toml")).expect("profile");
    // Leave about 16 MiB free: room for 12 MiB of the 24 MB above the reserve.
    let free = tributary::log::room::free_bytes(&disk.0).expect("free space");
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; (free - (16 << 20)) as usize]).expect("filler");

    let rt = runtime();
    let first = rt.block_on(async {
        let c = connect(&profile).await;
        c.create_scope("s").await.expect("scope");
        let cfg = StreamConfig {
            scaling: ScalingPolicy::Fixed { segments: 1 },
            retention: RetentionPolicy::Forever,
        };
        c.create_stream("s", "t", cfg).await.expect("stream");
        write_all(&c).await
    });
    let e = first.expect_err("the disk cannot hold every event");
    assert!(e.contains("disk full"), "a clear refusal: {e}");
    assert_eq!(
        disk_full_metric(http).as_deref(),
        Some("tributary_log_disk_full 1")
    );
    let health = http_get(http, "/health").expect("health");
    assert_eq!(health.0, 200, "a full disk is a state, not a failure");
    let (_, status) = http_get(http, "/status").expect("status");
    assert!(status.contains("\"disk_full\":true"), "{status}");

    // Room again: the same process takes the rest.
    std::fs::remove_file(&filler).expect("free the disk");
    let second = rt.block_on(async { write_all(&connect(&profile).await).await });
    let s = second.expect("the node goes on by itself");
    assert!(s.already_stored > 0 && s.acknowledged > 0, "{s:?}");
    assert_eq!(
        disk_full_metric(http).as_deref(),
        Some("tributary_log_disk_full 0")
    );

    // And after a restart, a rerun stores nothing; every event is there once, in order.
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");
    let node = start(tmp.path(), &config, http);
    rt.block_on(async {
        let c = rerun_stores_nothing(&data).await;
        c.create_reader_group("s", "g", "t", StartFrom::Head)
            .await
            .expect("group");
        let mut r = EventReader::join(&c, "s", "g", "r", ReaderConfig::default())
            .await
            .expect("join");
        let mut n = 0;
        while let Some(e) = r.next(Duration::from_secs(2)).await.expect("read") {
            assert!(e.payload == event(n), "event {n} differs");
            n += 1;
        }
        assert_eq!(n, EVENTS, "every event once");
    });
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");

    // A restart on a disk full to the last byte: the node waits for room (its metadata
    // store cannot open), says so, and starts by itself once there is room.
    let filler = disk.0.join("filler");
    fill(&filler);
    let mut node = Node::spawn(
        tmp.path(),
        "node-full.log",
        &["--config", &config.to_string_lossy()],
        http,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !node
        .log()
        .contains("the disk is full: the log opens once there is room")
    {
        assert!(node.running(), "the node gave up:\n{}", node.log());
        assert!(
            std::time::Instant::now() < deadline,
            "not waiting for room:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http_get(http, "/health").is_err(), "not serving yet");
    std::fs::remove_file(&filler).expect("free the disk");
    node.wait_healthy();
    rt.block_on(rerun_stores_nothing(&data));
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");
}

/// Writes every event again through the node whose data dir is `data` (a new QUIC port
/// after a restart: the node wrote its profile anew): every one is stored already.
async fn rerun_stores_nothing(data: &Path) -> Client {
    let profile = ClientProfile::load(data.join("client/profile.toml")).expect("profile");
    let c = connect(&profile).await;
    let s = write_all(&c).await.expect("rerun");
    assert_eq!(
        (s.acknowledged, s.already_stored),
        (0, EVENTS as u64),
        "{s:?}"
    );
    c
}

/// Writes `path` until the disk is full to the last byte.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 1 << 16];
    loop {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // The last bytes a block did not fit in.
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    let _ = f.sync_all();
}
