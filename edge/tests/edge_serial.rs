//! Serial ingest through the whole edge: pty pairs from socat as devices, a running
//! `tributary-edge`, and the stream read back over QUIC.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::{read_all, wait_status, Edge, PtyPair};
use tributary_adapters::framing::cobs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_and_binary_frames_are_stored_and_garbage_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines_dir = dir.path().join("lines");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&lines_dir).expect("mkdir");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    let mut lines = PtyPair::start(&lines_dir);
    let bin = PtyPair::start(&bin_dir);
    let mut edge = Edge::new(
        dir.path(),
        &format!(
            "[[stream]]\nname = \"plant/serial\"\nsegments = 2\n\
             [[serial]]\ndevice = \"{}\"\nbaud = 115200\nframing = \"lines\"\nmax_frame_bytes = 64\n\
             utf8 = true\nstream = \"plant/serial\"\nkey = \"meter\"\n\
             [[serial]]\ndevice = \"{}\"\nframing = \"cobs\"\nstream = \"plant/serial\"\nkey = \"probe\"\n",
            lines.device.display(),
            bin.device.display()
        ),
    );
    edge.start();
    edge.ready().await;
    wait_status(&edge, 10, "devices open", |s| {
        s.serial.iter().all(|d| d.connected)
    })
    .await;

    let mut meter = lines.sensor();
    meter.write_all(b"kwh=1\r\nkwh=2\n\n").expect("write");
    meter.write_all(&[b'x'; 100]).expect("write");
    meter.write_all(b"\n\xff\xfe\nkwh=3\n").expect("write");
    let mut probe = bin.sensor();
    let mut wire = vec![0x13, 0x37, 0x00, 0x42];
    for payload in [&b"\x00\x01binary"[..], b"\xffrecord"] {
        wire.extend(cobs::encode(payload));
    }
    let mut corrupt = cobs::encode(b"bad crc");
    let n = corrupt.len();
    corrupt[n - 3] ^= 0x55;
    wire.extend(corrupt);
    probe.write_all(&wire).expect("write");
    wait_status(&edge, 10, "frames stored", |s| s.streams[0].events >= 5).await;

    // Unplug the meter and plug it back in: the edge reopens it and goes on.
    drop(meter);
    lines.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = PtyPair::start(&lines_dir);
    wait_status(&edge, 20, "meter reopened", |s| {
        s.serial[0].connected && s.serial[0].disconnects >= 1
    })
    .await;
    lines.sensor().write_all(b"kwh=4\n").expect("write");
    let status = wait_status(&edge, 10, "all frames stored", |s| s.streams[0].events >= 6).await;
    assert_eq!(status.streams[0].events, 6, "{status:?}");
    assert!(
        status.serial[0].bad_frames >= 2,
        "long and non-UTF-8 lines: {status:?}"
    );
    assert!(
        status.serial[1].bad_frames >= 2,
        "garbage and bad CRC: {status:?}"
    );

    let client = edge.client().await;
    let events = read_all(&client, "plant", "serial", Duration::from_secs(1)).await;
    let of = |key: &[u8]| -> Vec<Vec<u8>> {
        events
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
            .collect()
    };
    assert_eq!(
        of(b"meter"),
        vec![
            b"kwh=1".to_vec(),
            b"kwh=2".to_vec(),
            b"kwh=3".to_vec(),
            b"kwh=4".to_vec()
        ]
    );
    assert_eq!(
        of(b"probe"),
        vec![b"\x00\x01binary".to_vec(), b"\xffrecord".to_vec()]
    );
    assert_eq!(events.len(), 6);
    assert_eq!(edge.terminate().code(), Some(0));
}
