//! What the cloud's tests share: the real `tributary-cloud standalone` binary as a child
//! process (killed by PID if a test ends without stopping it), free ports, plain HTTP,
//! and a client from the profile the node writes.

#![allow(dead_code)] // each test file uses its own part of this

pub mod garage;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tributary::profile::ClientProfile;
use tributary::service::Client;
use tributary::tls::client_config;

pub const BIN: &str = env!("CARGO_BIN_EXE_tributary-cloud");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node; killed (by PID) if the test ends without stopping it.
pub struct Node {
    child: Option<Child>,
    pub http: SocketAddr,
    stderr: PathBuf,
}

impl Node {
    /// Starts the node in `dir` (its working directory), its log going to `dir/name`,
    /// once it answers `/health`.
    pub fn start(dir: &Path, name: &str, args: &[&str], http: SocketAddr) -> Node {
        let mut node = Node::spawn(dir, name, args, http);
        node.wait_healthy();
        node
    }

    /// Starts the node without waiting for it to answer.
    pub fn spawn(dir: &Path, name: &str, args: &[&str], http: SocketAddr) -> Node {
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
        Node {
            child: Some(child),
            http,
            stderr,
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, body)) = http_get(self.http, "/health") {
                // "ok", then what is degraded but serving, one per line.
                assert!(body.starts_with("ok\n"), "{body}");
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
    pub fn terminate(mut self) -> ExitStatus {
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

impl Node {
    /// SIGHUP, and wait until the log says the node reloaded (`Node::reload`).
    pub fn reload(&self) {
        self.hup_until("grants, revoked certificates and the TLS identity reloaded");
    }

    /// SIGHUP, and wait until the log holds `line` once more than before.
    pub fn hup_until(&self, line: &str) {
        let before = self.log().matches(line).count();
        let pid = self.child.as_ref().expect("running").id();
        let hup = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(hup.success(), "kill -HUP failed");
        let deadline = Instant::now() + START_TIMEOUT;
        while self.log().matches(line).count() == before {
            assert!(Instant::now() < deadline, "no {line:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    l.local_addr().expect("addr").port()
}

pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("addr").port()
}

/// GET over a fresh connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
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

pub fn metrics(node: &Node) -> String {
    let (status, body) = http_get(node.http, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn connect(profile: &ClientProfile) -> Client {
    let tls = client_config(&profile.identity()).expect("client TLS from the profile");
    Client::connect(profile.endpoint, &profile.server_name, tls)
        .await
        .expect("connect with the profile")
}

/// The newest log file of the node whose data dir is `data`: the one recovery replays.
pub fn last_log_file(data: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(data.join("log").join("wal"))
        .expect("wal")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.pop().expect("a log file")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}
