//! A real cloud node for replication tests: `tributary-cloud standalone` in a network
//! namespace of its own, joined to the host by a veth pair, with a PKI made by
//! `tributary-cloud certs`; and a UDP relay on the host that adds delay and loss to
//! the edge's QUIC packets on their way over the veth link.
//!
//! Why a relay and not `tc netem`: the kernel these tests run on has no `sch_netem`
//! (`tc qdisc add ... netem` answers "Specified qdisc kind is unknown"). Partitions
//! are real (the veth link is taken down); delay and loss are applied to real
//! datagrams by the relay.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tributary::service::Client;
use tributary::tls::{client_config, Identity};

/// The cloud binary: `$TRIBUTARY_CLOUD_BIN` if set (cross/test runs the edge under
/// qemu against a native x86-64 cloud, as gateways talk to a cloud), else the one
/// beside `tributary-edge`.
pub fn cloud_bin() -> PathBuf {
    std::env::var_os("TRIBUTARY_CLOUD_BIN").map_or_else(
        || sibling_bin("tributary-cloud", "tributary-cloud"),
        PathBuf::from,
    )
}

/// A binary of this workspace beside `tributary-edge` (built if missing).
pub fn sibling_bin(name: &str, package: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tributary-edge"))
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("cargo build");
        assert!(ok.success(), "building {name} failed");
    }
    bin
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace joined to the host by a veth pair: the host side is `host_ip`,
/// the namespace side `ns_ip` (a /24 of 10.0.0.0/8 chosen from the process id).
/// Dropping it deletes both.
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    /// Needs root (the test command runs as root, as CI does).
    pub fn create() -> Netns {
        let pid = std::process::id();
        let name = format!("trib{pid}");
        let host_if = format!("tv{pid}h");
        let ns_if = format!("tv{pid}c");
        let (a, b) = (100 + ((pid >> 8) % 150) as u8, (pid % 256) as u8);
        let host_ip = Ipv4Addr::new(10, a, b, 1);
        let ns_ip = Ipv4Addr::new(10, a, b, 2);
        let n = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
        };
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &name])?;
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &name])?;
            ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if])?;
            inside(&["link", "set", &ns_if, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            panic!(
                "cannot make the test network (the replication tests need root, iproute2 \
                 and network namespaces): {e}"
            );
        }
        n
    }

    /// Gives the host side a new address (`.last`) and removes the old one, as when a
    /// cellular gateway's address changes under a running connection.
    pub fn change_host_address(&self, last: u8) {
        let [a, b, c, _] = self.host_ip.octets();
        let new = Ipv4Addr::new(a, b, c, last);
        // Keep the new (secondary) address when the primary goes.
        std::fs::write(
            format!(
                "/proc/sys/net/ipv4/conf/{}/promote_secondaries",
                self.host_if
            ),
            "1",
        )
        .expect("promote_secondaries");
        ip(&["addr", "add", &format!("{new}/24"), "dev", &self.host_if]).expect("add");
        ip(&[
            "addr",
            "del",
            &format!("{}/24", self.host_ip),
            "dev",
            &self.host_if,
        ])
        .expect("del");
    }

    /// Cuts the link (a partition) or restores it.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.host_if, state]).expect("link state");
        if up {
            // The host's route to the namespace comes back with the link; wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !Command::new("ip")
                .args(["route", "get", &self.ns_ip.to_string()])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&self.host_if))
            {
                assert!(
                    Instant::now() < deadline,
                    "no route back after the partition"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A PKI made with `tributary-cloud certs`: the cloud's server certificate (for
/// "localhost") and client certificates named as asked, with their serial numbers.
pub struct Pki {
    pub dir: PathBuf,
    serials: HashMap<String, String>,
}

impl Pki {
    pub fn make(dir: &Path, clients: &[&str]) -> Pki {
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            serials: HashMap::new(),
        };
        let mut args = vec!["--server-name", "localhost"];
        for c in clients {
            args.extend(["--client", c]);
        }
        pki.certs(&args);
        pki
    }

    /// Runs `tributary-cloud certs --out DIR ARGS`, keeping the serials it prints.
    fn certs(&mut self, args: &[&str]) {
        let out = Command::new(cloud_bin())
            .arg("certs")
            .arg("--out")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("tributary-cloud certs");
        assert!(
            out.status.success(),
            "certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "NAME: serial HEX, valid until DATE"
            if let Some((name, rest)) = line.split_once(": serial ") {
                let serial = rest.split(',').next().unwrap_or_default();
                self.serials.insert(name.to_string(), serial.to_string());
            }
        }
    }

    /// The serial of `client`'s certificate now.
    pub fn serial(&self, client: &str) -> String {
        self.serials.get(client).cloned().expect("a serial")
    }

    /// Issues `client` a new certificate in place of its files (a rotation); returns
    /// its serial.
    pub fn renew(&mut self, client: &str) -> String {
        self.certs(&["--client", client]);
        self.serial(client)
    }

    pub fn identity(&self, client: &str) -> Identity {
        Identity {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{client}.pem")),
            key: self.dir.join(format!("{client}.key")),
        }
    }
}

/// What the cloud logs once it serves.
const STARTED: &str = "tributary-cloud standalone started";
/// What the cloud logs once a SIGHUP took effect.
const RELOADED: &str = "grants, revoked certificates and the TLS identity reloaded";

/// `tributary-cloud standalone` inside the namespace, stopped by its PID when dropped.
pub struct Cloud {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    ns: String,
    config: PathBuf,
    child: Option<Child>,
}

impl Cloud {
    /// Writes `dir/cloud.toml`: TLS from `pki`, admin rights for "admin", and `grants`
    /// (TOML `[[grant]]` tables) appended.
    pub fn new(dir: &Path, net: &Netns, pki: &Pki, grants: &str) -> Cloud {
        std::fs::create_dir_all(dir).expect("cloud dir");
        let quic = SocketAddr::new(IpAddr::V4(net.ns_ip), 9190);
        let http = SocketAddr::new(IpAddr::V4(net.ns_ip), 9191);
        let config = dir.join("cloud.toml");
        let p = |f: &str| pki.dir.join(f).display().to_string();
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[quic]\nlisten = \"{quic}\"\n[http]\nlisten = \"{http}\"\n\
                 [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\n\
                 revoked = \"{}\"\n[[grant]]\nidentity = \"admin\"\nadmin = true\n{grants}",
                dir.join("data").display(),
                p("ca.pem"),
                p("server.pem"),
                p("server.key"),
                dir.join("revoked.txt").display(),
            ),
        )
        .expect("write cloud.toml");
        std::fs::write(dir.join("revoked.txt"), "# revoked client certificates\n")
            .expect("write revoked.txt");
        Cloud {
            dir: dir.to_path_buf(),
            quic,
            http,
            ns: net.name.clone(),
            config,
            child: None,
        }
    }

    /// Starts it and waits until it says it started (in its log: during a partition
    /// nothing on the host can reach it).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let before = self.log().matches(STARTED).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cloud.log"))
            .expect("log");
        // `ip netns exec` execs the command: the child's PID is the cloud's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(cloud_bin())
            .arg("standalone")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tributary-cloud");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(STARTED).count() == before {
            assert!(
                Instant::now() < deadline,
                "the cloud did not start\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cloud.log")).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Adds `serial` to its revocation list and sends SIGHUP; returns once it has
    /// reloaded (its log says so).
    pub async fn revoke(&self, serial: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("revoked.txt"))
            .expect("revoked.txt");
        writeln!(f, "{serial}").expect("write revoked.txt");
        let before = self.log().matches(RELOADED).count();
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .expect("kill -HUP");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(RELOADED).count() == before {
            assert!(Instant::now() < deadline, "no reload\n{}", self.tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await.unwrap_or_default()
    }

    /// A client with the "admin" identity of `pki`.
    pub async fn admin(&self, pki: &Pki) -> Client {
        let tls = client_config(&pki.identity("admin")).expect("tls");
        Client::connect(self.quic, "localhost", tls)
            .await
            .expect("connect to the cloud")
    }

    pub fn tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- cloud.log (end)\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` over HTTP/1.0; the body, or `None` if it does not answer 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

/// What the relay does to datagrams, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// One-way delay (the round trip gets twice this).
    pub delay: Duration,
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Bytes per second each way at most (a slow uplink); `None`: no limit. As at a
    /// real uplink's router, datagrams queue for at most [`LINK_BUFFER`] and beyond
    /// that are dropped: an unbounded queue would let a sender put seconds of data in
    /// flight, ahead of anything it sends later, whatever its priority.
    pub rate: Option<u64>,
}

/// How long datagrams may wait for a rate-limited link before it drops them.
pub const LINK_BUFFER: Duration = Duration::from_millis(100);

/// A UDP relay on 127.0.0.1 to `upstream`: each client address gets its own upstream
/// socket, so the cloud sees one peer per edge connection.
pub struct Relay {
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr, faults: Faults) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let addr = front.local_addr().expect("addr");
        let faults = Arc::new(Mutex::new(faults));
        let f = faults.clone();
        let task = tokio::spawn(async move {
            let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let (up_link, down_link) = (Arc::new(Link::default()), Arc::new(Link::default()));
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                let up = match peers.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("0.0.0.0:0").await else {
                            continue;
                        };
                        let u = Arc::new(u);
                        peers.insert(from, u.clone());
                        let (u2, front2, f2) = (u.clone(), front.clone(), f.clone());
                        let down = down_link.clone();
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                let data = buf[..n].to_vec();
                                let front = front2.clone();
                                forward(&f2, &down, n, async move {
                                    let _ = front.send_to(&data, from).await;
                                });
                            }
                        });
                        u
                    }
                };
                let data = buf[..n].to_vec();
                forward(&f, &up_link, n, async move {
                    let _ = up.send_to(&data, upstream).await;
                });
            }
        });
        Relay { addr, faults, task }
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().expect("faults") = faults;
    }
}

/// One direction of the relay: when it is free again, under a rate limit.
#[derive(Default)]
struct Link {
    free_at: Mutex<Option<tokio::time::Instant>>,
}

/// Sends (`send`, a datagram of `len` bytes) after the delay and its turn on `link`,
/// unless the datagram is lost.
fn forward(
    faults: &Mutex<Faults>,
    link: &Link,
    len: usize,
    send: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let f = *faults.lock().expect("faults");
    if f.loss > 0.0 && rand::random::<f64>() < f.loss {
        return;
    }
    let now = tokio::time::Instant::now();
    let at = match f.rate {
        Some(rate) => {
            let mut free = link.free_at.lock().expect("link");
            let start = free.map_or(now, |t| t.max(now));
            if start > now + LINK_BUFFER {
                return;
            }
            let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
            *free = Some(done);
            done
        }
        None => now,
    } + f.delay;
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        send.await;
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
