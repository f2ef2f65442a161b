//! Video files from a watched directory: stored as one event each, only once complete,
//! read back byte-identical with `trib read --out`.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{wait_status, Edge};
use rand::RngCore;

fn trib() -> PathBuf {
    common::cloud::sibling_bin("trib", "tributary-cli")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_file_is_one_event_once_complete_and_reads_back_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let video = dir.path().join("video");
    std::fs::create_dir_all(&video).expect("mkdir");
    let mut edge = Edge::new(
        dir.path(),
        "[[stream]]\nname = \"cam/front\"\n\
         [[watch]]\ndir = \"video\"\nstream = \"cam/front\"\nsettle_ms = 1500\npoll_ms = 100\n",
    );
    edge.start();
    edge.ready().await;

    let mut clip = vec![0u8; 50 << 20];
    rand::thread_rng().fill_bytes(&mut clip);
    // A camera writing the clip in two halves, with a pause shorter than the settle time.
    let path = video.join("clip-0001.mp4");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&clip[..25 << 20]).expect("write");
    f.flush().expect("flush");
    // A file under a temporary name is never taken.
    std::fs::write(video.join("clip-0002.mp4.part"), b"still recording").expect("write");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = edge.status().await.expect("status");
    assert_eq!(
        s.watch[0].files, 0,
        "a file still being written was taken: {s:?}"
    );
    f.write_all(&clip[25 << 20..]).expect("write");
    drop(f);

    let s = wait_status(&edge, 60, "the clip stored", |s| s.watch[0].files == 1).await;
    assert_eq!(s.streams[0].events, 1, "{s:?}");
    assert_eq!(s.watch[0].bytes, 50 << 20);
    assert!(!path.exists(), "the stored clip is deleted");
    assert!(video.join("clip-0002.mp4.part").exists());

    let out = dir.path().join("out");
    let run = Command::new(trib())
        .arg("--profile")
        .arg(dir.path().join("data/client/profile.toml"))
        .args([
            "read",
            "cam/front",
            "--max",
            "1",
            "--timeout",
            "20",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("trib read");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed = String::from_utf8_lossy(&run.stdout);
    let file = printed.lines().next().expect("one path printed").trim();
    let got = std::fs::read(file).expect("read the event file");
    assert!(
        got == clip,
        "the clip read back differs ({} bytes)",
        got.len()
    );

    // Renamed when done: taken then.
    std::fs::rename(
        video.join("clip-0002.mp4.part"),
        video.join("clip-0002.mp4"),
    )
    .expect("rename");
    wait_status(&edge, 30, "the renamed clip stored", |s| {
        s.watch[0].files == 2
    })
    .await;
    assert_eq!(edge.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stored_just_before_a_sigkill_is_not_stored_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let video = dir.path().join("video");
    std::fs::create_dir_all(&video).expect("mkdir");
    let config = "[[stream]]\nname = \"cam/front\"\n\
         [[watch]]\ndir = \"video\"\nstream = \"cam/front\"\nsettle_ms = 200\npoll_ms = 50\n";
    // Hold each stored file 30 s before deleting it: the SIGKILL lands in between.
    let mut edge = Edge::new(dir.path(), config).env("TRIBUTARY_EDGE_TEST_WATCH_HOLD_MS", "30000");
    edge.start();
    edge.ready().await;
    let mut clip = vec![0u8; 3 << 20];
    rand::thread_rng().fill_bytes(&mut clip);
    let path = video.join("clip.mp4");
    std::fs::write(&path, &clip).expect("write");
    wait_status(&edge, 30, "the clip stored", |s| s.watch[0].files == 1).await;
    edge.kill();
    assert!(path.exists(), "killed before the delete");

    let mut edge = Edge::new(dir.path(), config);
    edge.start();
    edge.ready().await;
    let s = wait_status(&edge, 30, "recognised as stored", |s| {
        s.watch[0].already_stored == 1
    })
    .await;
    assert_eq!(s.watch[0].files, 0, "{s:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the clip was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = edge.client().await;
    let events = common::read_all(&c, "cam", "front", Duration::from_secs(1)).await;
    assert_eq!(events.len(), 1, "stored once");
    assert!(events[0].1 == clip, "byte-identical");
}
