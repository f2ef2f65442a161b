//! Test harness: a real mosquitto broker and real `tributary-edge` processes, each
//! stopped by its PID when dropped.

#![allow(dead_code)]

pub mod cloud;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary::profile::ClientProfile;
use tributary::service::Client;
use tributary::tls::client_config;
use tributary_edge::status::Status;

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A pty pair made by `socat`: `device` for the source, `sensor` for the test.
/// Dropping it kills `socat` (by its PID) and removes the links.
pub struct PtyPair {
    child: Child,
    pub device: PathBuf,
    pub sensor: PathBuf,
}

impl PtyPair {
    /// Starts `socat` with its links in `dir`, and waits until both are there.
    pub fn start(dir: &Path) -> PtyPair {
        let device = dir.join("device");
        let sensor = dir.join("sensor");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .arg(format!("pty,raw,echo=0,link={}", sensor.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting socat (scripts/test installs it)");
        let pair = PtyPair {
            child,
            device,
            sensor,
        };
        let deadline = Instant::now() + PATIENCE;
        // Links that resolve, i.e. to the new ptys.
        while !(pair.device.metadata().is_ok() && pair.sensor.metadata().is_ok()) {
            assert!(Instant::now() < deadline, "socat made no pty links");
            std::thread::sleep(Duration::from_millis(10));
        }
        pair
    }

    /// Opens the sensor's end for writing.
    pub fn sensor(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.sensor)
            .expect("opening the sensor end")
    }

    /// Kills `socat` (the device is unplugged) and removes its links at once, so that
    /// they never point at a pty another test gets next.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.device);
        let _ = std::fs::remove_file(&self.sensor);
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (TCP and UDP are both free in practice).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A mosquitto broker on a loopback port, persistence off, queues unbounded, logging
/// every packet (a failing test shows the end of its log).
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    /// mosquitto.conf lines after the listener's.
    settings: String,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        Broker::with_settings(
            dir,
            "max_inflight_messages 0\nmax_queued_messages 0\nlog_dest stderr\nlog_type all\n",
        )
    }

    /// A broker with these mosquitto.conf lines instead of the tests' (benchmarks
    /// leave out the packet log).
    pub fn with_settings(dir: &Path, settings: &str) -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: dir.to_path_buf(),
            settings: settings.to_string(),
            child: None,
        };
        b.restart();
        b
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n{}",
                self.port, self.settings
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).expect("log");
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (is it installed? scripts/test installs it)");
        self.child = Some(child);
        wait_tcp(([127, 0, 0, 1], self.port).into());
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mosquitto() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// A `/proc/PID/status` figure in KiB (`VmHWM:` is the peak RSS); 0 if unknown.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `body` with its Modbus CRC appended.
pub fn modbus_frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend_from_slice(&tributary_adapters::serial::modbus::crc16(body).to_le_bytes());
    f
}

/// A simulated Modbus RTU bus on the test's end of a pty: reads each 8-byte read
/// request (its CRC checked) and writes what `answer(slave, function, start, count)`
/// returns (a whole frame, CRC included), or nothing for `None`, as an absent slave.
/// Runs until the pty goes away.
pub async fn modbus_slave(
    path: PathBuf,
    mut answer: impl FnMut(u8, u8, u16, u16) -> Option<Vec<u8>> + Send,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPortBuilderExt;
    let path = path.to_str().expect("utf-8 path").to_string();
    let mut port = tokio_serial::new(path, 9600)
        .open_native_async()
        .expect("open the slave's end");
    let mut req = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = match port.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        req.extend_from_slice(&buf[..n]);
        while req.len() >= 8 {
            let r: Vec<u8> = req.drain(..8).collect();
            assert_eq!(modbus_frame(&r[..6])[6..], r[6..], "request CRC");
            let start = u16::from_be_bytes([r[2], r[3]]);
            let count = u16::from_be_bytes([r[4], r[5]]);
            if let Some(reply) = answer(r[0], r[1], start, count) {
                port.write_all(&reply).await.expect("reply");
            }
        }
    }
}

/// The `tributary-edge` binary under test: `TRIBUTARY_EDGE_BIN` if set (e.g. the
/// gateway build), else this package's.
pub fn edge_bin() -> PathBuf {
    std::env::var_os("TRIBUTARY_EDGE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tributary-edge")),
        PathBuf::from,
    )
}

/// A `tributary-edge run` process with a config written into `dir`.
pub struct Edge {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Edge {
    /// Writes `dir/edge.toml` with the node sections (data in `dir/data`, free
    /// ports) followed by `body`.
    pub fn new(dir: &Path, body: &str) -> Edge {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let quic: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = dir.join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n[quic]\nlisten = \"{quic}\"\n[http]\nlisten = \"{http}\"\n{body}"
            ),
        )
        .expect("write edge.toml");
        Edge {
            dir: dir.to_path_buf(),
            config,
            http,
            quic,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Edge {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("edge.log"))
            .expect("log");
        let child = Command::new(edge_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tributary-edge");
        self.child = Some(child);
    }

    /// Waits until its HTTP status answers.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "the edge did not start; see {}/edge.log",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> Option<Status> {
        tributary_edge::status::fetch(self.http).await.ok()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait")
    }

    /// A client of its segment service, through the profile it wrote.
    pub async fn client(&self) -> Client {
        let p = ClientProfile::load(self.dir.join("data/client/profile.toml")).expect("profile");
        let tls = client_config(&p.identity()).expect("tls");
        Client::connect(p.endpoint, &p.server_name, tls)
            .await
            .expect("connect to the edge")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge.log")).unwrap_or_default()
    }

    /// The last lines of the edge's and the broker's logs, for failure messages.
    pub fn tail(&self) -> String {
        let last = |file: &str| {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        format!(
            "--- edge.log (end)\n{}\n--- mosquitto.log (end)\n{}",
            last("edge.log"),
            last("mosquitto.log")
        )
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the status until `f` holds (or panics after `secs`).
pub async fn wait_status(
    edge: &Edge,
    secs: u64,
    what: &str,
    f: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = edge.status().await {
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: status {s:?}\n{}",
                edge.tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no status\n{}",
            edge.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every event of `scope/stream` from the head through a fresh reader group;
/// stops after `quiet` without a new event.
pub async fn read_all(
    client: &Client,
    scope: &str,
    stream: &str,
    quiet: Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use tributary::service::{EventReader, ReaderConfig};
    use tributary::wire::StartFrom;
    let group = format!("check-{}", rand::random::<u32>());
    client
        .create_reader_group(scope, &group, stream, StartFrom::Head)
        .await
        .expect("group");
    let mut r = EventReader::join(client, scope, &group, "r", ReaderConfig::default())
        .await
        .expect("join");
    let mut out = Vec::new();
    while let Some(e) = r.next(quiet).await.expect("read") {
        assert!(e.gap.is_none(), "a gap record at {}: {:?}", e.offset, e.gap);
        out.push((e.key.to_vec(), e.payload.to_vec()));
    }
    out
}

/// Publishes `messages` (topic, payload) with QoS 1 and waits until the broker has
/// acknowledged them all.
pub async fn publish(port: u16, messages: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(format!("pub-{}", rand::random::<u32>()), "127.0.0.1", port);
    o.set_max_packet_size(8 << 20, 8 << 20).set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 100);
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for (t, p) in messages {
            client
                .publish(t, QoS::AtLeastOnce, false, p)
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked < n {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("the broker acknowledged {acked} of {n}"),
        }
    }
    let _client = sender.await.expect("sender");
}
