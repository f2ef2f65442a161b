//! The systemd units in `systemd/`, checked and run the way systemd runs them: the
//! unit files pass `systemd-analyze verify` and are hardened; their `ExecStartPre`
//! refuses a bad config; their `ExecStart` started with systemd's environment
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `JOURNAL_STREAM`) reports `READY=1`, pings the
//! watchdog, logs without its own timestamps, and on SIGTERM reports `STOPPING=1`
//! and exits 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cloud::cloud_bin;
use common::free_port;
use tokio::net::UnixDatagram;

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd");

/// The `[Service]` settings of a unit file, in order.
fn service(unit: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(UNITS).join(unit)).expect("unit file");
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

fn one<'a>(s: &'a [(String, String)], key: &str) -> &'a str {
    let v: Vec<&str> = s
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(v.len(), 1, "{key}= once: {v:?}");
    v[0]
}

/// A command line of the unit with the installed paths replaced by the test's.
fn command(line: &str, bin: &Path, config: &Path, unit_config: &str) -> Command {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w.starts_with("/usr/local/bin/") {
                bin.display().to_string()
            } else if w == unit_config {
                config.display().to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut c = Command::new(&words[0]);
    c.args(&words[1..]);
    c
}

/// Runs `systemd-analyze` on a copy of the unit whose binary path exists here.
fn analyze(unit: &str, bin: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(Path::new(UNITS).join(unit)).expect("unit");
    let name = bin.file_name().expect("name").to_string_lossy().to_string();
    let text = text.replace(
        &format!("/usr/local/bin/{name}"),
        &bin.display().to_string(),
    );
    let copy = dir.path().join(unit);
    std::fs::write(&copy, text).expect("copy");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "{unit}: {complaints}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout).to_string();
    assert!(security.status.success(), "{unit}: {report}");
    report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default()
        .to_string()
}

/// Collects notifications until `want` arrived `times` times.
async fn receive(
    notify: &UnixDatagram,
    messages: &mut Vec<String>,
    want: &str,
    times: usize,
    deadline: Instant,
) {
    let mut buf = vec![0u8; 4096];
    while messages.iter().filter(|m| m.contains(want)).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, notify.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want} in time; got {messages:?}"))
            .expect("recv");
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
}

async fn run_as_unit(unit: &str, bin: PathBuf, unit_config: &str, config_body: &str) {
    let s = service(unit);
    assert_eq!(one(&s, "Type"), "notify", "{unit}");
    assert_eq!(one(&s, "User"), "tributary", "{unit}");
    assert_eq!(one(&s, "ProtectSystem"), "strict", "{unit}");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes", "{unit}");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "", "{unit}");
    let state = one(&s, "StateDirectory");
    assert_eq!(
        one(&s, "ReadWritePaths"),
        format!("/var/lib/{state}"),
        "{unit}: the data dir is the one writable path"
    );
    let watchdog = one(&s, "WatchdogSec");
    assert!(watchdog.ends_with('s') && watchdog != "0s", "{unit}");
    let exposure = analyze(unit, &bin);
    eprintln!("{unit}: {exposure}");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("unit.toml");
    let (quic, http) = (free_port(), free_port());
    let good = format!(
        "data_dir = \"{}\"\n[quic]\nlisten = \"127.0.0.1:{quic}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{config_body}",
        dir.path().join("data").display()
    );

    // ExecStartPre keeps a bad config from starting.
    let pre = one(&s, "ExecStartPre");
    std::fs::write(&config, format!("{good}colour = \"blue\"\n")).expect("config");
    let out = command(pre, &bin, &config, unit_config)
        .output()
        .expect("ExecStartPre");
    assert!(!out.status.success(), "{unit}: a bad config passed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("colour"),
        "{unit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&config, &good).expect("config");
    let out = command(pre, &bin, &config, unit_config)
        .output()
        .expect("ExecStartPre");
    assert!(
        out.status.success(),
        "{unit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ExecStart with systemd's environment.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let log = dir.path().join("journal.log");
    let mut child = command(one(&s, "ExecStart"), &bin, &config, unit_config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", "8:12345")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("ExecStart");
    let pid = child.id();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    receive(&notify, &mut messages, "READY=1", 1, deadline).await;
    assert!(
        messages[0].contains("STATUS=serving QUIC on 127.0.0.1"),
        "{messages:?}"
    );
    receive(&notify, &mut messages, "WATCHDOG=1", 3, deadline).await;

    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    receive(&notify, &mut messages, "STOPPING=1", 1, deadline).await;
    let status = child.wait().expect("wait");
    let journal = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{unit}: {status}\n{journal}");
    assert!(journal.contains("stopped"), "{journal}");
    assert!(
        journal.lines().all(|l| !l.starts_with("20")),
        "journald stamps lines itself: {journal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_runs_as_its_unit_says() {
    run_as_unit(
        "tributary-edge.service",
        PathBuf::from(env!("CARGO_BIN_EXE_tributary-edge")),
        "/etc/tributary/edge.toml",
        "[[stream]]\nname = \"site/sensors\"\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_runs_as_its_unit_says() {
    run_as_unit(
        "tributary-cloud.service",
        cloud_bin(),
        "/etc/tributary/cloud.toml",
        "[tier2]\nkind = \"none\"\n",
    )
    .await;
}
