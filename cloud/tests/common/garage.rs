//! A real S3-compatible server for the tests: Garage (installed by `scripts/test` with
//! `cargo install garage`), one node on loopback ports with one bucket and one key,
//! started as a child process and killed by its PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_cloud::config::S3Settings;

use super::free_tcp_port;

/// The bucket the server makes at start.
pub const BUCKET: &str = "tributary-test";
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A running Garage; killed (by PID) when dropped.
#[derive(Debug)]
pub struct Garage {
    child: Option<Child>,
    dir: PathBuf,
    /// The S3 API address.
    pub s3: SocketAddr,
}

/// The `garage` binary: on PATH, else where `cargo install` puts it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("garage"))
            .find(|f| f.is_file())
    });
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .or_else(|| {
            cargo_home
                .map(|c| c.join("bin").join("garage"))
                .filter(|f| f.is_file())
        })
        .expect("garage is not installed: ./scripts/test installs it (cargo install garage)")
}

impl Garage {
    /// Starts a new server with its data in `dir`.
    pub fn start(dir: &Path) -> Garage {
        std::fs::create_dir_all(dir).expect("garage dir");
        let s3: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let rpc: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let config = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\n\
             replication_factor = 1\nrpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"us-east-1\"\n\
             api_bind_addr = \"{s3}\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = SECRET,
        );
        std::fs::write(dir.join("garage.toml"), config).expect("garage.toml");
        let mut g = Garage {
            child: None,
            dir: dir.to_path_buf(),
            s3,
        };
        g.restart();
        g
    }

    /// (Re)starts the server on the same data and ports; returns once S3 answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .expect("garage log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", KEY_ID)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn garage");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&self.s3, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("garage exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not listen within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not serving yet: wait for the bucket to answer.
        let settings = self.settings("ready/");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let t2 = tributary_cloud::s3::S3Tier2::new(&settings).await;
            loop {
                match tributary::log::Tier2::list(&t2).await {
                    Ok(_) => return,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "garage's bucket did not answer within 60 s: {e}\n{}",
                        self.log()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// SIGKILL; [`Garage::restart`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Settings for objects under `prefix` in the test bucket.
    pub fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            endpoint: Some(format!("http://{}", self.s3)),
            region: Some("us-east-1".into()),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            path_style: true,
            credentials: Some((KEY_ID.into(), SECRET.into())),
        }
    }

    /// The `[tier2]` section for a node using `prefix`.
    pub fn toml(&self, prefix: &str) -> String {
        format!(
            "kind = \"s3\"\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\n\
             prefix = \"{prefix}\"\npath_style = true\naccess_key_id = \"{KEY_ID}\"\n\
             secret_access_key = \"{SECRET}\"\n",
            self.s3
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
