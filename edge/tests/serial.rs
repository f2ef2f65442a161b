//! The serial source against real pseudo-terminals: `socat` makes a pty pair, the
//! source reads one end as its device, the test writes the other end as the sensor.
//! Killing `socat` is the device being unplugged; starting it again on the same link
//! paths is the device coming back.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tributary_adapters::framing::{cobs, FrameError};
use tributary_edge::serial::{run, Framing, SerialConfig, SerialStats};

use common::{PtyPair, PATIENCE};

/// A source running on a task, with what the test needs to drive and watch it.
struct Running {
    frames: mpsc::Receiver<Bytes>,
    stats: Arc<SerialStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts a source on `device` with fast reopening; `capacity` is the channel's.
    fn start(device: &Path, framing: Framing, capacity: usize) -> Running {
        init_logs();
        let mut cfg = SerialConfig::new(device, 115_200, framing);
        cfg.reopen_backoff = Duration::from_millis(20);
        cfg.max_reopen_backoff = Duration::from_millis(200);
        cfg.presence_check = Duration::from_millis(50);
        cfg.validate().expect("a valid config");
        let stats = Arc::new(SerialStats::for_config(&cfg));
        let (tx, frames) = mpsc::channel(capacity);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(cfg, tx, stats.clone(), async {
            let _ = stopped.await;
        }));
        Running {
            frames,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// The next frame the source hands on.
    async fn next(&mut self) -> Bytes {
        tokio::time::timeout(PATIENCE, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("the source is running")
    }

    /// Waits until `cond` holds of the stats.
    async fn until(&self, what: &str, cond: impl Fn(&SerialStats) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(&self.stats) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}: {:?}",
                self.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Completes `shutdown` and waits for the source to return.
    async fn stop(mut self) -> Arc<SerialStats> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the source stops in time")
            .expect("the source did not panic");
        self.stats.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tributary_edge=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn send(sensor: &mut std::fs::File, bytes: &[u8]) {
    sensor.write_all(bytes).expect("writing to the sensor end");
    sensor.flush().expect("flushing the sensor end");
}

#[tokio::test]
async fn lines_arrive_and_bad_lines_are_counted() {
    let dir = TempDir::new().expect("temp dir");
    let pty = PtyPair::start(dir.path());
    let mut src = Running::start(
        &pty.device,
        Framing::Lines {
            max_len: 16,
            utf8: true,
        },
        16,
    );
    src.until("connected", SerialStats::connected).await;

    let mut sensor = pty.sensor();
    send(&mut sensor, b"alpha\nbeta\r\n\n\r\n");
    send(
        &mut sensor,
        b"this line is much longer than sixteen bytes\n",
    );
    send(&mut sensor, b"caf\xc3\xa9\n\xff\xfe bad\n");
    send(&mut sensor, b"gamma\n");
    for want in ["alpha", "beta", "café", "gamma"] {
        assert_eq!(src.next().await, want.as_bytes());
    }

    let stats = src.stop().await;
    assert_eq!(stats.frames(), 4);
    assert_eq!(stats.bad_frames(FrameError::TooLong), 1);
    assert_eq!(stats.bad_frames(FrameError::NotUtf8), 1);
    let snap = stats.snapshot();
    assert_eq!(snap.frame_bytes, 5 + 4 + 5 + 5);
    assert!(!snap.connected);
    let json = serde_json::to_value(&snap).expect("a snapshot is JSON");
    assert_eq!(json["frames"], 4);
    assert_eq!(json["bad_frames"], 2);
    let metrics = stats.prometheus();
    let device = pty.device.display();
    assert!(
        metrics.contains(&format!(
            "tributary_edge_serial_frames_total{{device=\"{device}\"}} 4\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "tributary_edge_serial_bad_frames_total{{device=\"{device}\",reason=\"too_long\"}} 1\n"
    )));
}

#[tokio::test]
async fn cobs_frames_arrive_through_garbage() {
    let dir = TempDir::new().expect("temp dir");
    let pty = PtyPair::start(dir.path());
    let mut src = Running::start(&pty.device, Framing::Cobs { max_len: 300 }, 64);
    src.until("connected", SerialStats::connected).await;

    let payloads: Vec<Vec<u8>> = vec![
        vec![0x01, 0x00, 0x02],
        vec![],
        vec![0; 10],
        (0..=255u8).collect(),
        b"\x00temperature=21.5\x00".to_vec(),
        (0..300).map(|i| (i * 7 % 256) as u8).collect(),
    ];
    let garbage: [&[u8]; 6] = [
        b"\x13\x37\xff\xfe",
        b"",
        b"\x00\x00\x05\x01",
        b"noise on the line",
        b"\xff",
        &[0xAA; 700],
    ];
    let mut wire = Vec::new();
    for (junk, payload) in garbage.iter().zip(&payloads) {
        wire.extend_from_slice(junk);
        wire.extend_from_slice(&cobs::encode(payload));
    }
    // In uneven pieces, so frames span reads.
    let mut sensor = pty.sensor();
    for piece in wire.chunks(97) {
        send(&mut sensor, piece);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for want in &payloads {
        assert_eq!(src.next().await, &want[..]);
    }

    let stats = src.stop().await;
    assert_eq!(stats.frames(), payloads.len() as u64);
    let snap = stats.snapshot();
    // Every stretch of garbage with a nonzero byte is rejected at least once.
    assert!(snap.bad_frames >= 5, "{snap:?}");
    assert!(stats.bad_frames(FrameError::TooLong) >= 1, "{snap:?}");
    assert_eq!(snap.read_bytes, wire.len() as u64);
}

#[tokio::test]
async fn reopens_after_the_device_goes_away_and_comes_back() {
    let dir = TempDir::new().expect("temp dir");
    let mut pty = PtyPair::start(dir.path());
    let mut src = Running::start(
        &pty.device,
        Framing::Lines {
            max_len: 64,
            utf8: false,
        },
        16,
    );
    src.until("connected", SerialStats::connected).await;

    let mut sensor = pty.sensor();
    send(&mut sensor, b"one\n");
    assert_eq!(src.next().await, &b"one"[..]);
    // A line cut short by the unplug: read, then dropped with the connection.
    send(&mut sensor, b"partial");
    src.until("the partial line is read", |s| {
        s.snapshot().read_bytes == 11
    })
    .await;

    // Unplug: socat dies, its ptys hang up.
    drop(sensor);
    pty.kill();
    src.until("the loss is noticed", |s| !s.connected()).await;
    src.until("reopening fails while it is gone", |s| {
        s.snapshot().open_errors >= 2
    })
    .await;
    let snap = src.stats.snapshot();
    assert_eq!(snap.disconnects, 1);
    assert_eq!(src.stats.bad_frames(FrameError::Truncated), 1);
    assert!(snap.last_error.is_some());

    // Plug it back in: new ptys behind the same paths.
    let pty = PtyPair::start(dir.path());
    src.until("reconnected", SerialStats::connected).await;
    assert_eq!(src.stats.snapshot().reopens, 1);
    let mut sensor = pty.sensor();
    send(&mut sensor, b"two\nthree\n");
    assert_eq!(src.next().await, &b"two"[..]);
    assert_eq!(src.next().await, &b"three"[..]);

    // And once more, with the sensor writing through the outage.
    drop(sensor);
    drop(pty);
    src.until("the second loss is noticed", |s| !s.connected())
        .await;
    let pty = PtyPair::start(dir.path());
    src.until("reconnected again", SerialStats::connected).await;
    send(&mut pty.sensor(), b"four\n");
    assert_eq!(src.next().await, &b"four"[..]);

    let stats = src.stop().await;
    let snap = stats.snapshot();
    assert_eq!((snap.frames, snap.reopens, snap.disconnects), (4, 2, 2));
}

#[tokio::test]
async fn waits_for_a_device_that_is_not_there_yet() {
    let dir = TempDir::new().expect("temp dir");
    let mut src = Running::start(
        &dir.path().join("device"),
        Framing::Lines {
            max_len: 64,
            utf8: false,
        },
        16,
    );
    src.until("opening fails a few times", |s| {
        s.snapshot().open_errors >= 3
    })
    .await;
    assert!(!src.stats.connected());

    let pty = PtyPair::start(dir.path());
    src.until("connected", SerialStats::connected).await;
    send(&mut pty.sensor(), b"hello\n");
    assert_eq!(src.next().await, &b"hello"[..]);
    let stats = src.stop().await;
    // The first open is not a reopen, however late it came.
    assert_eq!(stats.snapshot().reopens, 0);
}

#[tokio::test]
async fn a_full_channel_holds_the_source_back_without_losing_frames() {
    let dir = TempDir::new().expect("temp dir");
    let pty = PtyPair::start(dir.path());
    let mut src = Running::start(
        &pty.device,
        Framing::Lines {
            max_len: 64,
            utf8: false,
        },
        1,
    );
    src.until("connected", SerialStats::connected).await;
    let mut sensor = pty.sensor();
    for i in 0..20 {
        send(&mut sensor, format!("line {i}\n").as_bytes());
    }
    // Nobody receives: the source holds one frame in the channel and waits.
    src.until("the channel is full", |s| s.frames() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(src.stats.frames(), 1);
    for i in 0..20 {
        assert_eq!(src.next().await, format!("line {i}").as_bytes());
    }
    src.stop().await;
}

#[tokio::test]
async fn stops_on_shutdown_while_waiting_and_when_the_receiver_goes() {
    let dir = TempDir::new().expect("temp dir");

    // While backing off, with no device.
    let src = Running::start(&dir.path().join("device"), Framing::default(), 4);
    src.until("an open failed", |s| s.snapshot().open_errors >= 1)
        .await;
    src.stop().await;

    // While blocked on a full channel.
    let pty = PtyPair::start(dir.path());
    let src = Running::start(&pty.device, Framing::default(), 1);
    src.until("connected", SerialStats::connected).await;
    send(&mut pty.sensor(), b"a\nb\nc\n");
    src.until("the channel is full", |s| s.frames() == 1).await;
    let stats = src.stop().await;
    assert!(!stats.connected());

    // When the receiver is dropped.
    let mut src = Running::start(&pty.device, Framing::default(), 1);
    src.until("connected", SerialStats::connected).await;
    src.frames.close();
    send(&mut pty.sensor(), b"nobody listens\n");
    tokio::time::timeout(PATIENCE, &mut src.task)
        .await
        .expect("the source stops once the receiver is gone")
        .expect("the source did not panic");
}

#[tokio::test]
async fn a_device_path_that_vanishes_counts_as_a_lost_device() {
    let dir = TempDir::new().expect("temp dir");
    let pty = PtyPair::start(dir.path());
    let mut src = Running::start(
        &pty.device,
        Framing::Lines {
            max_len: 64,
            utf8: false,
        },
        16,
    );
    src.until("connected", SerialStats::connected).await;
    let mut sensor = pty.sensor();
    send(&mut sensor, b"before\n");
    assert_eq!(src.next().await, &b"before"[..]);

    // The device node goes (as udev removes it) while the open device stays quiet.
    let target = std::fs::read_link(&pty.device).expect("the device link");
    std::fs::remove_file(&pty.device).expect("removing the device link");
    src.until("the loss is noticed", |s| !s.connected()).await;
    let snap = src.stats.snapshot();
    assert_eq!(snap.disconnects, 1);
    let error = snap.last_error.expect("the loss is recorded");
    assert!(error.contains("gone"), "{error}");

    // It comes back under the same name.
    std::os::unix::fs::symlink(&target, &pty.device).expect("restoring the device link");
    src.until("reconnected", SerialStats::connected).await;
    send(&mut sensor, b"after\n");
    assert_eq!(src.next().await, &b"after"[..]);
    let stats = src.stop().await;
    assert_eq!(stats.snapshot().reopens, 1);
}
