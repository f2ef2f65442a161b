//! The real `tributary-cloud standalone` binary: started on a temporary data directory,
//! reached over HTTP and over QUIC with the client profile it writes, stopped with
//! SIGTERM, restarted on the same data.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tributary::profile::ClientProfile;
use tributary::service::Client;
use tributary::tls::{client_config, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_tributary-cloud");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node; killed (by PID) if the test ends without stopping it.
struct Node {
    child: Option<Child>,
    http: SocketAddr,
    stderr: PathBuf,
}

impl Node {
    /// Starts the node in `dir` (its working directory), its log going to `dir/name`.
    fn start(dir: &Path, name: &str, args: &[&str], http: SocketAddr) -> Node {
        let stderr = dir.join(name);
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new(BIN)
            .current_dir(dir)
            .arg("standalone")
            .args(args)
            .args(["--http", &http.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn tributary-cloud");
        let mut node = Node {
            child: Some(child),
            http,
            stderr,
        };
        node.wait_healthy();
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, body)) = http_get(self.http, "/health") {
                assert_eq!(body, "ok\n");
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "the node exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no /health within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (within `STOP_TIMEOUT`).
    fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port nothing listens on right now (bound, then released).
fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    l.local_addr().expect("addr").port()
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("addr").port()
}

/// GET over a fresh connection: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let bad = || std::io::Error::other(format!("bad reply {out:?}"));
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

fn metrics(node: &Node) -> String {
    let (status, body) = http_get(node.http, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

async fn connect(profile: &ClientProfile) -> Client {
    let tls = client_config(&profile.identity()).expect("client TLS from the profile");
    Client::connect(profile.endpoint, &profile.server_name, tls)
        .await
        .expect("connect with the profile")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

const SEGMENT: &str = "test/stream/0";

#[test]
fn standalone_serves_stops_on_sigterm_and_keeps_its_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical tempdir");
    let data = dir.join("data");
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let data_arg = data.to_str().expect("utf-8 path");
    let node = Node::start(
        &dir,
        "run1.log",
        &["--data-dir", data_arg, "--listen", &quic.to_string()],
        http,
    );

    let m = metrics(&node);
    assert!(m.contains("\ntributary_up 1\n"), "{m}");
    assert!(m.contains("\ntributary_segments 0\n"), "{m}");
    let (status, _) = http_get(http, "/nothing").expect("GET /nothing");
    assert_eq!(status, 404);

    // The development PKI and the client profile.
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(data.join("tls").join(f).is_file(), "tls/{f} missing");
    }
    let profile_path = data.join("client").join("profile.toml");
    let profile = ClientProfile::load(&profile_path).expect("client profile");
    assert_eq!(profile.endpoint, quic);
    assert_eq!(profile.server_name, "localhost");
    assert_eq!(
        profile.identity(),
        Identity {
            ca: data.join("tls/ca.pem"),
            cert: data.join("tls/client.pem"),
            key: data.join("tls/client.key"),
        }
    );
    let log = node.log();
    for part in [
        "tributary-cloud standalone started",
        &quic.to_string(),
        &http.to_string(),
        data_arg,
        profile_path.to_str().expect("utf-8 path"),
    ] {
        assert!(log.contains(part), "startup line lacks {part:?}:\n{log}");
    }

    // A segment with data, over QUIC with the profile's identity.
    runtime().block_on(async {
        let c = connect(&profile).await;
        c.create_segment(SEGMENT).await.expect("create segment");
        let mut s = c.append_session(SEGMENT, 7).await.expect("append session");
        s.send(1, 1, b"hello").await.expect("send");
        let ack = s.ack().await.expect("ack");
        assert_eq!(ack.end_offset, 5);
        s.finish().expect("finish");
        c.close().await;
    });
    let m = metrics(&node);
    assert!(m.contains("\ntributary_segments 1\n"), "{m}");

    let status = node.terminate();
    assert!(status.success(), "exit status {status}");

    // Again on the same data, given as a relative path, and with the QUIC port picked
    // by the system: the profile tells where it is, with absolute paths.
    let node = Node::start(
        &dir,
        "run2.log",
        &["--data-dir", "data", "--listen", "127.0.0.1:0"],
        http,
    );
    let profile = ClientProfile::load(&profile_path).expect("client profile");
    assert_ne!(profile.endpoint.port(), 0);
    assert_eq!(profile.ca, data.join("tls/ca.pem"));
    runtime().block_on(async {
        let c = connect(&profile).await;
        let info = c
            .segment_info(SEGMENT)
            .await
            .expect("segment after restart");
        assert_eq!((info.length, info.sealed), (5, false));
        let (data, _) = c.read(SEGMENT, 0, 100, Duration::ZERO).await.expect("read");
        assert_eq!(&data[..], b"hello");
        c.close().await;
    });
    let m = metrics(&node);
    assert!(m.contains("\ntributary_segments 1\n"), "{m}");
    let log = node.log();
    let status = node.terminate();
    assert!(status.success(), "exit status {status}:\n{log}");
}

#[test]
fn standalone_with_tls_from_the_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(&pki)
        .args(["--server-name", "node.test", "--client", "alice"])
        .output()
        .expect("run certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[quic]\nlisten = \"127.0.0.1:0\"\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
         server_name = \"node.test\"\n[log]\ncache_mb = 1\n",
    )
    .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let node = Node::start(tmp.path(), "run.log", &["--config", config_arg], http);
    let data = tmp.path().join("data");
    assert!(
        data.join("log").is_dir(),
        "the config's data_dir is not used"
    );
    assert!(!data.join("tls").exists(), "a development PKI was made");
    assert!(!data.join("client").exists(), "a profile was written");

    // The QUIC port is in the startup line: `quic=127.0.0.1:PORT`.
    let log = node.log();
    let quic: SocketAddr = log
        .split("quic=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no quic= in the log:\n{log}"));
    let profile = ClientProfile {
        endpoint: quic,
        server_name: "node.test".into(),
        ca: pki.join("ca.pem"),
        cert: pki.join("alice.pem"),
        key: pki.join("alice.key"),
    };
    runtime().block_on(async {
        let c = connect(&profile).await;
        c.create_segment(SEGMENT).await.expect("create segment");
        c.close().await;
    });
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn standalone_refuses_a_bad_config_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "[http]\nlisten = \"everywhere\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("standalone")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: http.listen:"), "{err}");
}
