//! The segment log on a full disk (a real tmpfs, mounted here as root): appends are
//! refused below the reserve and taken again once there is room; a batch whose write
//! fails with ENOSPC (the disk filled by someone else) waits and is written again,
//! so it becomes durable once there is room, and nothing is lost or doubled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tributary::log::{AppendOptions, LogConfig, LogError, SegmentLog};

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

/// Fills the file system of `dir` to the last byte with `dir/filler`.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = f.sync_all();
    path
}

fn config() -> LogConfig {
    LogConfig {
        max_file_bytes: 1 << 20,
        max_batch_bytes: 64 << 10,
        reserve_bytes: 1 << 20,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

async fn read_all(log: &SegmentLog) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let r = log
            .read("s", out.len() as u64, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        if r.is_empty() {
            return out;
        }
        out.extend_from_slice(&r.to_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_hits_enospc_waits_for_room_and_the_reserve_refuses_appends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 8);
    let dir = disk.0.join("log");
    let log = SegmentLog::open(&dir, config()).expect("open");
    log.create("s").await.expect("create");
    let opts = AppendOptions::default();
    let mut want = Vec::new();
    for i in 0..50u8 {
        let data = vec![i; 1000];
        log.append("s", &data, &opts).await.expect("append");
        want.extend_from_slice(&data);
    }

    // Someone else fills the disk. The next append is taken (the log has not looked
    // yet), its write fails with ENOSPC, and it waits instead of failing the log.
    let filler = fill(&disk.0);
    let data = vec![0xaa; 20_000];
    let (_, ticket) = log.submit_append("s", &data, &opts).expect("taken");
    want.extend_from_slice(&data);
    let waiting = tokio::time::timeout(Duration::from_secs(2), log.durable(ticket)).await;
    assert!(waiting.is_err(), "durable on a full disk");
    assert!(log.failure().is_none(), "a full disk is not a failure");
    assert!(log.disk_full());
    let e = log
        .submit_append("s", &data, &opts)
        .expect_err("refused while full");
    assert!(matches!(e, LogError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");

    // Room again: the batch goes through, appends are taken again.
    std::fs::remove_file(&filler).expect("free the disk");
    tokio::time::timeout(Duration::from_secs(10), log.durable(ticket))
        .await
        .expect("durable once there is room")
        .expect("durable");
    let more = vec![0xbb; 5000];
    let mut taken = false;
    for _ in 0..50 {
        match log.append("s", &more, &opts).await {
            Ok(_) => {
                taken = true;
                break;
            }
            Err(LogError::DiskFull { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(taken, "appends are taken again by themselves");
    assert!(!log.disk_full());
    want.extend_from_slice(&more);
    assert!(read_all(&log).await == want, "every append once, in order");
    log.close().expect("close");
    let log = SegmentLog::open(&dir, config()).expect("reopen");
    assert!(read_all(&log).await == want, "and after a reopen");

    // The reserve: with the disk filled but for less than it, appends are refused
    // before any write fails.
    let filler = fill(&disk.0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| {
            let len = f.metadata()?.len();
            f.set_len(len.saturating_sub(512 << 10))
        })
        .expect("leave 512 KiB");
    let mut refused = None;
    for _ in 0..200 {
        match log.append("s", &[1u8; 1000], &opts).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(LogError::DiskFull { .. })),
        "{refused:?}"
    );
    assert!(log.failure().is_none());
    log.close().expect("close");
}
