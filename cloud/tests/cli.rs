//! `tributary-cloud check-config` and `tributary-cloud certs`, run as the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use tributary::controller::Controller;
use tributary::log::{LogConfig, SegmentLog};
use tributary::service::{Client, SegmentServer};
use tributary::tls::{client_config, server_config, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_tributary-cloud");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tributary-cloud")
}

/// Runs `check-config` on a file holding `text`; it must refuse it. Returns stderr
/// and the file's path.
fn check_config_refuses(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cloud.toml");
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("utf-8 path").to_string();
    let out = run(&["check-config", &path]);
    assert!(!out.status.success(), "accepted");
    (stderr(&out), path)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/cloud-standalone.toml"
    );
    let out = run(&["check-config", example]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{example}: ok\n")
    );
}

#[test]
fn check_config_refuses_an_unknown_key_naming_it_and_its_line() {
    let (err, file) = check_config_refuses(
        "# a comment\n[quic]\nlisten = \"127.0.0.1:9190\"\n\n[log]\ncache_mb = 8\ncahce_mb = 8\n",
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("{file}:7: log.cahce_mb: unknown field")),
        "{err}"
    );
}

#[test]
fn check_config_reports_every_invalid_value() {
    let (err, _) = check_config_refuses(
        "[quic]\nlisten = \"localhost:9190\"\n[tls]\nca = \"ca.pem\"\n[log]\nmax_file_bytes = 0\n",
    );
    let keys: Vec<&str> = err
        .lines()
        .map(|l| l.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        ["quic.listen", "tls.cert", "tls.key", "log.max_file_bytes"],
        "{err}"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn certs_issue_working_certificates_and_reuse_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("pki");
    let out = out_dir.to_str().expect("utf-8 path");
    let o = run(&[
        "certs",
        "--out",
        out,
        "--server-name",
        "node.test",
        "127.0.0.1",
        "--client",
        "alice",
        "--client",
        "bob",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["ca", "server", "alice", "bob"] {
        assert!(out_dir.join(format!("{f}.pem")).is_file(), "{f}.pem");
        assert_eq!(mode(&out_dir.join(format!("{f}.key"))), 0o600, "{f}.key");
    }
    let ca = std::fs::read(out_dir.join("ca.pem")).expect("ca.pem");

    // A second run reuses the CA: earlier certificates stay valid.
    let o = run(&[
        "certs",
        "--out",
        out,
        "--server-name",
        "node.test",
        "--server-name",
        "127.0.0.1",
        "--client",
        "carol",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).expect("ca.pem"), ca);

    // The certificates work for mutual TLS: the server (from the second run) accepts
    // alice (from the first) and carol, on both of its names.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log =
            Arc::new(SegmentLog::open(dir.path().join("log"), LogConfig::default()).expect("log"));
        let id = |name: &str| Identity {
            ca: out_dir.join("ca.pem"),
            cert: out_dir.join(format!("{name}.pem")),
            key: out_dir.join(format!("{name}.key")),
        };
        let controller = Arc::new(Controller::open(log).await.expect("controller"));
        let tls = server_config(&id("server")).expect("server TLS");
        let server = SegmentServer::start(
            ([127, 0, 0, 1], 0).into(),
            tls,
            controller,
            tributary::service::Access::open(),
        )
        .expect("serve");
        let addr = server.local_addr().expect("addr");
        for (client, name) in [("alice", "node.test"), ("carol", "127.0.0.1")] {
            let tls = client_config(&id(client)).expect("client TLS");
            let c = Client::connect(addr, name, tls)
                .await
                .unwrap_or_else(|e| panic!("{client} via {name}: {e}"));
            c.create_segment(client).await.expect("create");
            c.close().await;
        }
        // bob's certificate was issued in the first run, but "other.test" is not a
        // name of the server.
        let tls = client_config(&id("bob")).expect("client TLS");
        assert!(Client::connect(addr, "other.test", tls).await.is_err());
        server.shutdown().await;
    });
}

#[test]
fn certs_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8 path");
    for (args, want) in [
        (vec!["--client", "../x"], "--client \"../x\""),
        (vec!["--client", "server"], "--client \"server\""),
    ] {
        let mut a = vec!["certs", "--out", out, "--server-name", "n"];
        a.extend(args);
        let o = run(&a);
        assert!(!o.status.success(), "{a:?} accepted");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    // Half a CA is refused rather than replaced.
    std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
    let o = run(&["certs", "--out", out, "--server-name", "n"]);
    assert!(!o.status.success(), "accepted half a CA");
    assert!(stderr(&o).contains("ca.key"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"),
        b"x"
    );
}

#[test]
fn repair_reports_a_damaged_frame_then_cuts_the_log_there_with_yes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = LogConfig {
        max_file_bytes: 16 << 10,
        ..LogConfig::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let log = SegmentLog::open(data.join("log"), cfg).expect("log");
            log.create("s").await.expect("create");
            for i in 0..100u8 {
                log.append("s", &[i; 500], &Default::default())
                    .await
                    .expect("append");
            }
            log.close().expect("close");
        });
    // A bad byte in the first frame of the file recovery replays.
    let last = common::last_log_file(&data);
    let mut bytes = std::fs::read(&last).expect("read");
    bytes[40] ^= 0x40;
    std::fs::write(&last, bytes).expect("write");

    let d = data.to_str().expect("utf-8 path");
    let o = run(&["repair", "--data-dir", d]);
    assert!(!o.status.success(), "damage left as it is is an error");
    let err = stderr(&o);
    let name = last
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        err.contains(&name) && err.contains("offset 32") && err.contains("appended to s"),
        "{err}"
    );
    assert!(err.contains("run again with --yes"), "{err}");
    let o = run(&["repair", "--data-dir", d, "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cut: the log opens now"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = run(&["repair", "--data-dir", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to repair"));
}

#[test]
fn check_config_checks_the_certificate_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let p = pki.to_str().expect("utf-8 path");
    let o = run(&[
        "certs",
        "--out",
        p,
        "--server-name",
        "localhost",
        "--client",
        "gw",
        "--days",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = |key: &str| {
        format!(
            "[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/server.pem\"\nkey = \"{p}/{key}\"\n\
             [[grant]]\nidentity = \"gw\"\nadmin = true\n"
        )
    };
    let file = dir.path().join("cloud.toml");
    let f = file.to_str().expect("utf-8 path");
    // Valid, but expiring within 30 days: ok, with a warning.
    std::fs::write(&file, config("server.key")).expect("write");
    let o = run(&["check-config", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("renew it"),
        "{}",
        stderr(&o)
    );
    // Another identity's key; a key file that is not there.
    for (key, want) in [("gw.key", "KeyMismatch"), ("nope.key", "nope.key")] {
        std::fs::write(&file, config(key)).expect("write");
        let o = run(&["check-config", f]);
        assert!(!o.status.success(), "accepted {key}");
        assert!(
            stderr(&o).contains("[tls]") && stderr(&o).contains(want),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_read_only_data_dir_is_named_as_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&ro).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let data = ro.join("data");
    let o = run(&[
        "standalone",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    let _ = Command::new("umount").arg("-l").arg(&ro).status();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("creating the data directory {}", data.display()))
            && err.contains("Read-only file system"),
        "{err}"
    );
}

#[test]
fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let data = dir.path().join("data");
    let o = run(&[
        "standalone",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--listen",
        &addr,
        "--http",
        "127.0.0.1:0",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains(&format!("listening on {addr}")), "{err}");
    assert_eq!(last.matches("Address already in use").count(), 1, "{last}");
}
