//! The serial source: reads a serial device, cuts what it sends into frames, and hands
//! each good frame on as one event.
//!
//! [`run`] owns one device for the life of the daemon:
//!
//! 1. It opens the device (8 data bits, no parity, 1 stop bit, no flow control, raw,
//!    exclusive) at the configured baud rate.
//! 2. It reads, feeds the bytes to the [`Framing`]'s decoder, and sends each good
//!    frame on the `out` channel, waiting while the channel is full: the receiving
//!    side stores frames durably, and a source never runs ahead of it. (While it
//!    waits it does not read, so a device that outpaces storage for long overflows
//!    the kernel's serial buffer and loses bytes there; the decoder then rejects the
//!    torn frames.)
//! 3. Rejected input is counted in [`SerialStats`] by reason and logged in summary:
//!    the first rejection at once, the next ones as one line per
//!    [`BAD_FRAME_LOG_INTERVAL`].
//! 4. When the device fails or vanishes — a read error (`EIO` when a USB adapter is
//!    unplugged), end of file (the other end of a pty hung up), or the device path
//!    gone or now naming another device — it closes the device, drops the partial
//!    frame (counted as [`FrameError::Truncated`]), and reopens the path with capped
//!    exponential backoff until it is back, logging the outage once when it starts
//!    and once when it ends.
//!
//! It stops only when `shutdown` completes or the receiving side of `out` is closed.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tributary_edge::serial::{render_prometheus, run, Framing, SerialConfig, SerialStats};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let cfg = SerialConfig::new("/dev/ttyUSB0", 115_200, Framing::Cobs { max_len: 512 });
//! cfg.validate()?;
//! let stats = Arc::new(SerialStats::for_config(&cfg));
//! let (frames_tx, mut frames) = tokio::sync::mpsc::channel(64);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let source = tokio::spawn(run(cfg, frames_tx, stats.clone(), async {
//!     let _ = stopped.await;
//! }));
//!
//! // The storing side: one event per frame.
//! while let Some(frame) = frames.recv().await {
//!     # let _ = frame;
//!     // append `frame` to the local stream …
//!     # break;
//! }
//!
//! // `/metrics` and a status page.
//! let mut metrics = String::new();
//! render_prometheus([&*stats], &mut metrics);
//! let status = stats.snapshot();
//! # let _ = status;
//!
//! let _ = stop.send(());
//! source.await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tributary::node::http::label_value;
use tributary_adapters::framing::{Cobs, Decoder, FrameError, Lines};

use crate::lines::LineFormat;

/// The longest frame a framing may be configured for.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// How often rejected input is summarised in the log, at most.
pub const BAD_FRAME_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes asked for per read from the device.
const READ_BUF: usize = 4096;

/// How the bytes from a device are cut into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Text lines ended by `\n` or `\r\n` ([`Lines`]): empty lines are skipped, longer
    /// lines than `max_len` bytes rejected.
    Lines {
        /// Longest line kept, in bytes, without its line ending.
        max_len: usize,
        /// Reject lines that are not valid UTF-8.
        utf8: bool,
    },
    /// Binary records framed with COBS and a CRC-32 ([`Cobs`]; the wire format is in
    /// [`tributary_adapters::framing::cobs`]).
    Cobs {
        /// Longest payload kept, in bytes, without its CRC.
        max_len: usize,
    },
}

impl Framing {
    /// A fresh decoder for this framing.
    pub fn decoder(&self) -> Box<dyn Decoder + Send> {
        match *self {
            Framing::Lines { max_len, utf8 } => Box::new(Lines::new(max_len).require_utf8(utf8)),
            Framing::Cobs { max_len } => Box::new(Cobs::new(max_len)),
        }
    }

    /// The longest frame this framing hands on.
    pub fn max_len(&self) -> usize {
        match *self {
            Framing::Lines { max_len, .. } | Framing::Cobs { max_len } => max_len,
        }
    }

    /// A short name: `lines` or `cobs`.
    pub fn name(&self) -> &'static str {
        match self {
            Framing::Lines { .. } => "lines",
            Framing::Cobs { .. } => "cobs",
        }
    }
}

impl Default for Framing {
    /// Lines of up to 4 KiB, any bytes.
    fn default() -> Self {
        Framing::Lines {
            max_len: 4096,
            utf8: false,
        }
    }
}

/// One serial source: which device, how to talk to it, how to recover when it goes.
///
/// Plain data; [`SerialConfig::new`] fills in the defaults and
/// [`validate`](SerialConfig::validate) checks the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// The device, e.g. `/dev/ttyUSB0`; better a stable name such as
    /// `/dev/serial/by-id/…`, which names the same adapter after a re-plug.
    pub device: PathBuf,
    /// Line speed in bits per second (8N1).
    pub baud: u32,
    /// How bytes are cut into frames.
    pub framing: Framing,
    /// With lines framing: the sensor id and format of lines that become readings
    /// ([`crate::lines`]); `None` stores each frame as it is.
    pub readings: Option<(String, LineFormat)>,
    /// The wait before reopening the device after it failed or vanished; doubled
    /// after each failed attempt up to `max_reopen_backoff`, back to this once the
    /// device delivered a frame again.
    pub reopen_backoff: Duration,
    /// The longest wait between two attempts to reopen the device.
    pub max_reopen_backoff: Duration,
    /// How often to check that the device path still names the open device, which
    /// catches a device removed without a read error.
    pub presence_check: Duration,
}

impl SerialConfig {
    /// A config for `device` at `baud` with `framing`: reopen after 500 ms, backing
    /// off to 30 s; check the device path every second.
    pub fn new(device: impl Into<PathBuf>, baud: u32, framing: Framing) -> Self {
        SerialConfig {
            device: device.into(),
            baud,
            framing,
            readings: None,
            reopen_backoff: Duration::from_millis(500),
            max_reopen_backoff: Duration::from_secs(30),
            presence_check: Duration::from_secs(1),
        }
    }

    /// Checks that the values make sense, naming the first that does not.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.device.as_os_str().is_empty() {
            bail!("serial device: the path is empty");
        }
        if self.device.to_str().is_none() {
            bail!(
                "serial device {}: the path is not UTF-8",
                self.device.display()
            );
        }
        let device = self.device.display();
        if self.baud == 0 {
            bail!("serial device {device}: baud must be above 0");
        }
        let max_len = self.framing.max_len();
        if max_len == 0 || max_len > MAX_FRAME_LEN {
            bail!(
                "serial device {device}: the {} framing's max_len {max_len} is not within 1..={MAX_FRAME_LEN}",
                self.framing.name()
            );
        }
        if let (Some((_, format)), Framing::Cobs { .. }) = (&self.readings, &self.framing) {
            bail!(
                "serial device {device}: the {} format reads lines, not the cobs framing",
                format.name()
            );
        }
        if self.reopen_backoff.is_zero() {
            bail!("serial device {device}: reopen_backoff must be above 0");
        }
        if self.max_reopen_backoff < self.reopen_backoff {
            bail!(
                "serial device {device}: max_reopen_backoff ({:?}) is below reopen_backoff ({:?})",
                self.max_reopen_backoff,
                self.reopen_backoff
            );
        }
        if self.presence_check.is_zero() {
            bail!("serial device {device}: presence_check must be above 0");
        }
        Ok(())
    }
}

/// Counters of one serial source, shared between the source and whoever reports them
/// (`/metrics`, a status page). All updates are lock-free, except the last error.
#[derive(Debug)]
pub struct SerialStats {
    device: String,
    connected: AtomicBool,
    read_bytes: AtomicU64,
    frames: AtomicU64,
    frame_bytes: AtomicU64,
    bad_frames: [AtomicU64; FrameError::ALL.len()],
    disconnects: AtomicU64,
    reopens: AtomicU64,
    open_errors: AtomicU64,
    /// Whether the device was ever opened: later opens are reopens.
    opened_once: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The counters of a [`SerialStats`] at one moment, for a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialSnapshot {
    /// The device path, as configured.
    pub device: String,
    /// Whether the device is open now.
    pub connected: bool,
    /// Bytes read from the device.
    pub read_bytes: u64,
    /// Good frames handed on.
    pub frames: u64,
    /// Bytes in the good frames handed on.
    pub frame_bytes: u64,
    /// Rejected frames, all reasons.
    pub bad_frames: u64,
    /// Rejected frames by reason ([`FrameError::label`]), reasons seen only.
    pub bad_frames_by_reason: BTreeMap<&'static str, u64>,
    /// Times the open device failed or vanished.
    pub disconnects: u64,
    /// Times the device was opened again after the first open.
    pub reopens: u64,
    /// Failed attempts to open the device.
    pub open_errors: u64,
    /// The latest error opening or reading the device, if any yet.
    pub last_error: Option<String>,
}

impl SerialStats {
    /// Zeroed counters for the device named `device` (the label in metrics).
    pub fn new(device: impl Into<String>) -> Self {
        SerialStats {
            device: device.into(),
            connected: AtomicBool::new(false),
            read_bytes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            frame_bytes: AtomicU64::new(0),
            bad_frames: std::array::from_fn(|_| AtomicU64::new(0)),
            disconnects: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            open_errors: AtomicU64::new(0),
            opened_once: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// Zeroed counters labelled with `cfg`'s device path.
    pub fn for_config(cfg: &SerialConfig) -> Self {
        SerialStats::new(cfg.device.display().to_string())
    }

    /// The device label.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether the device is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Good frames handed on so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Rejected frames of kind `kind` so far.
    pub fn bad_frames(&self, kind: FrameError) -> u64 {
        self.bad_frames[kind.index()].load(Ordering::Relaxed)
    }

    /// Reads of the counters (each exact, together not one atomic picture).
    pub fn snapshot(&self) -> SerialSnapshot {
        let bad: BTreeMap<&'static str, u64> = FrameError::ALL
            .iter()
            .map(|k| (k.label(), self.bad_frames(*k)))
            .filter(|(_, n)| *n > 0)
            .collect();
        SerialSnapshot {
            device: self.device.clone(),
            connected: self.connected(),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            frames: self.frames(),
            frame_bytes: self.frame_bytes.load(Ordering::Relaxed),
            bad_frames: bad.values().sum(),
            bad_frames_by_reason: bad,
            disconnects: self.disconnects.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            open_errors: self.open_errors.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }

    /// The metrics of this source alone in the Prometheus text format; see
    /// [`render_prometheus`] for several.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        render_prometheus([self], &mut out);
        out
    }

    fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_last_error(&self, error: String) {
        match self.last_error.lock() {
            Ok(mut e) => *e = Some(error),
            Err(poisoned) => *poisoned.into_inner() = Some(error),
        }
    }

    fn count_bad(&self, kind: FrameError) {
        self.bad_frames[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Appends the metrics of the serial sources `sources` to `out` in the Prometheus
/// text format: each family's `# HELP` and `# TYPE` once, then one sample per source
/// labelled `device="…"` (and `reason="…"` for rejected frames, every reason listed).
pub fn render_prometheus<'a>(sources: impl IntoIterator<Item = &'a SerialStats>, out: &mut String) {
    /// One sample per source, or `None`: one per source and rejection reason.
    type Sample = Option<fn(&SerialStats) -> u64>;
    let sources: Vec<&SerialStats> = sources.into_iter().collect();
    if sources.is_empty() {
        return;
    }
    let families: [(&str, &str, &str, Sample); 8] = [
        (
            "tributary_edge_serial_connected",
            "gauge",
            "Whether the serial device is open (1) or not (0).",
            Some(|s| u64::from(s.connected())),
        ),
        (
            "tributary_edge_serial_read_bytes_total",
            "counter",
            "Bytes read from the serial device.",
            Some(|s| s.read_bytes.load(Ordering::Relaxed)),
        ),
        (
            "tributary_edge_serial_frames_total",
            "counter",
            "Good frames read from the serial device and handed on for storage.",
            Some(|s| s.frames.load(Ordering::Relaxed)),
        ),
        (
            "tributary_edge_serial_frame_bytes_total",
            "counter",
            "Bytes in the good frames handed on.",
            Some(|s| s.frame_bytes.load(Ordering::Relaxed)),
        ),
        (
            "tributary_edge_serial_bad_frames_total",
            "counter",
            "Input rejected by the frame decoder, by reason; never stored.",
            None,
        ),
        (
            "tributary_edge_serial_disconnects_total",
            "counter",
            "Times the open serial device failed or vanished.",
            Some(|s| s.disconnects.load(Ordering::Relaxed)),
        ),
        (
            "tributary_edge_serial_reopens_total",
            "counter",
            "Times the serial device was opened again after the first open.",
            Some(|s| s.reopens.load(Ordering::Relaxed)),
        ),
        (
            "tributary_edge_serial_open_errors_total",
            "counter",
            "Failed attempts to open the serial device.",
            Some(|s| s.open_errors.load(Ordering::Relaxed)),
        ),
    ];
    for (name, kind, help, sample) in families {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for s in &sources {
            let device = label_value(&s.device);
            match sample {
                Some(sample) => {
                    let _ = writeln!(out, "{name}{{device=\"{device}\"}} {}", sample(s));
                }
                None => {
                    for k in FrameError::ALL {
                        let _ = writeln!(
                            out,
                            "{name}{{device=\"{device}\",reason=\"{}\"}} {}",
                            k.label(),
                            s.bad_frames(k)
                        );
                    }
                }
            }
        }
    }
}

/// Runs the serial source described by `cfg` until `shutdown` completes or `out`'s
/// receiver is dropped: opens the device, reads, decodes, sends each good frame to
/// `out` (waiting while it is full), counts everything in `stats`, and reopens the
/// device whenever it fails or vanishes. See the [module docs](self).
///
/// It never returns on a device error. `cfg` should have passed
/// [`SerialConfig::validate`]; a path that is not UTF-8 only ever fails to open.
/// A frame waiting for room in `out` when `shutdown` completes is dropped.
pub async fn run<F>(
    cfg: SerialConfig,
    out: mpsc::Sender<Bytes>,
    stats: Arc<SerialStats>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut source = Source {
        decoder: cfg.framing.decoder(),
        bad_log: BadFrameLog::new(stats.device().to_string()),
        cfg,
        out,
        stats,
    };
    let device = source.cfg.device.display().to_string();
    let mut backoff = source.cfg.reopen_backoff;
    // Set while the device is not open: since when, and how many opens failed.
    let mut outage: Option<(Instant, u64)> = None;
    loop {
        match open(&source.cfg) {
            Ok((port, id)) => {
                let reopen = source.stats.opened_once.swap(true, Ordering::Relaxed);
                if reopen {
                    source.stats.reopens.fetch_add(1, Ordering::Relaxed);
                }
                match outage.take() {
                    Some((since, failures)) => tracing::info!(
                        device = %device,
                        down_for = ?since.elapsed(),
                        failed_opens = failures,
                        "serial device back"
                    ),
                    None => tracing::info!(
                        device = %device,
                        baud = source.cfg.baud,
                        framing = source.cfg.framing.name(),
                        "serial device opened"
                    ),
                }
                source.stats.connected.store(true, Ordering::Relaxed);
                let (end, delivered) = source.session(port, id, shutdown.as_mut()).await;
                source.stats.connected.store(false, Ordering::Relaxed);
                match end {
                    End::Lost(reason) => {
                        source.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            device = %device,
                            reason,
                            "serial device lost; reopening it once it is back"
                        );
                        source.stats.set_last_error(reason);
                        // The partial frame, if any, was torn by the loss.
                        if let Some(e) = source.decoder.reset() {
                            source.rejected(e);
                        }
                        outage = Some((Instant::now(), 0));
                        if delivered {
                            backoff = source.cfg.reopen_backoff;
                        }
                        source.bad_log.flush(true);
                    }
                    End::Shutdown | End::ReceiverClosed => {
                        if let Some(e) = source.decoder.reset() {
                            source.rejected(e);
                        }
                        source.bad_log.flush(true);
                        let why = if matches!(end, End::Shutdown) {
                            "shutdown"
                        } else {
                            "the receiver closed"
                        };
                        tracing::info!(device = %device, why, "serial source stopped");
                        return;
                    }
                }
            }
            Err(error) => {
                // With its causes: "opening: No such file or directory".
                let error = format!("{error:#}");
                source.stats.open_errors.fetch_add(1, Ordering::Relaxed);
                match &mut outage {
                    Some((_, failures)) => {
                        *failures += 1;
                        tracing::debug!(device = %device, %error, "serial device still unavailable");
                    }
                    None => {
                        tracing::warn!(
                            device = %device,
                            %error,
                            "cannot open serial device; retrying until it is there"
                        );
                        outage = Some((Instant::now(), 1));
                    }
                }
                source.stats.set_last_error(error);
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => {
                tracing::info!(device = %device, why = "shutdown", "serial source stopped");
                return;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(source.cfg.max_reopen_backoff);
    }
}

/// Why a session with an open device ended.
#[derive(Debug)]
enum End {
    /// The device failed or vanished: reopen it.
    Lost(String),
    /// `shutdown` completed.
    Shutdown,
    /// Nobody receives frames any more.
    ReceiverClosed,
}

/// What identifies the device a path names: a different one means the device was
/// replaced behind the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceId {
    dev: u64,
    ino: u64,
    rdev: u64,
}

impl DeviceId {
    /// The device `path` names now (following symbolic links).
    fn of(path: &Path) -> std::io::Result<DeviceId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(DeviceId {
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
        })
    }
}

/// Opens a serial device 8N1, raw, exclusive, no flow control.
pub fn open_port(device: &str, baud: u32) -> tokio_serial::Result<SerialStream> {
    tokio_serial::new(device, baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
}

/// Opens the device; returns it and what its path names.
fn open(cfg: &SerialConfig) -> anyhow::Result<(SerialStream, DeviceId)> {
    let Some(path) = cfg.device.to_str() else {
        bail!("the device path is not UTF-8");
    };
    let port = open_port(path, cfg.baud).context("opening")?;
    let id = DeviceId::of(&cfg.device).context("reading the device's metadata")?;
    Ok((port, id))
}

/// A running source: its config, decoder and outputs.
struct Source {
    cfg: SerialConfig,
    decoder: Box<dyn Decoder + Send>,
    out: mpsc::Sender<Bytes>,
    stats: Arc<SerialStats>,
    bad_log: BadFrameLog,
}

impl Source {
    /// Reads the open device until it fails or vanishes, `shutdown` completes or the
    /// receiver goes; returns why, and whether any frame was delivered.
    async fn session<F: Future<Output = ()>>(
        &mut self,
        mut port: SerialStream,
        id: DeviceId,
        mut shutdown: Pin<&mut F>,
    ) -> (End, bool) {
        let mut buf = vec![0u8; READ_BUF];
        let mut delivered = false;
        let mut check = tokio::time::interval(self.cfg.presence_check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.as_mut() => return (End::Shutdown, delivered),
                r = port.read(&mut buf) => match r {
                    Ok(0) => return (End::Lost("end of file (hung up)".into()), delivered),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return (End::Lost(format!("read error: {e}")), delivered),
                },
                _ = check.tick() => {
                    self.bad_log.flush(false);
                    match DeviceId::of(&self.cfg.device) {
                        Ok(now) if now == id => continue,
                        Ok(_) => return (End::Lost("the path now names another device".into()), delivered),
                        Err(e) => return (End::Lost(format!("the device path is gone: {e}")), delivered),
                    }
                }
            };
            self.stats.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
            let mut input = &buf[..n];
            while let Some(r) = self.decoder.decode(&mut input) {
                let frame = match (r, &self.cfg.readings) {
                    (Ok(f), None) => Bytes::copy_from_slice(f),
                    (Ok(f), Some((sensor, format))) => match format.reading(sensor, f) {
                        Ok(Some(reading)) => Bytes::from(reading.to_cbor()),
                        Ok(None) => continue,
                        Err(e) => {
                            self.rejected(e);
                            continue;
                        }
                    },
                    (Err(e), _) => {
                        self.rejected(e);
                        continue;
                    }
                };
                let len = frame.len() as u64;
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => return (End::Shutdown, delivered),
                    r = self.out.send(frame) => if r.is_err() {
                        return (End::ReceiverClosed, delivered);
                    },
                }
                delivered = true;
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                self.stats.frame_bytes.fetch_add(len, Ordering::Relaxed);
            }
            self.bad_log.flush(false);
        }
    }

    /// Counts and logs a rejection.
    fn rejected(&mut self, kind: FrameError) {
        self.stats.count_bad(kind);
        self.bad_log.note(kind);
    }
}

/// Logs rejected input without flooding the log: the first rejection at once, then
/// the count of the next ones, by reason, once per [`BAD_FRAME_LOG_INTERVAL`]. After an
/// interval without rejections, the next one is logged at once again.
#[derive(Debug)]
struct BadFrameLog {
    device: String,
    /// When the current summary window opened; `None` when no rejection is recent.
    window: Option<Instant>,
    /// Rejections in the window not logged yet, by [`FrameError::index`].
    pending: [u64; FrameError::ALL.len()],
}

impl BadFrameLog {
    fn new(device: String) -> Self {
        BadFrameLog {
            device,
            window: None,
            pending: [0; FrameError::ALL.len()],
        }
    }

    fn note(&mut self, kind: FrameError) {
        tracing::trace!(device = %self.device, reason = kind.label(), "rejected frame");
        if self.window.is_none() {
            tracing::warn!(
                device = %self.device,
                reason = kind.label(),
                "serial input rejected: {kind}; further rejections are summarised every {}s",
                BAD_FRAME_LOG_INTERVAL.as_secs()
            );
            self.window = Some(Instant::now());
        } else {
            self.pending[kind.index()] += 1;
        }
    }

    /// Logs the pending rejections if the window is over (or `now`).
    fn flush(&mut self, now: bool) {
        let Some(opened) = self.window else { return };
        if !now && opened.elapsed() < BAD_FRAME_LOG_INTERVAL {
            return;
        }
        let total: u64 = self.pending.iter().sum();
        if total == 0 {
            self.window = None;
            return;
        }
        let mut reasons = String::new();
        for k in FrameError::ALL {
            let n = self.pending[k.index()];
            if n > 0 {
                let sep = if reasons.is_empty() { "" } else { ", " };
                let _ = write!(reasons, "{sep}{} {n}", k.label());
            }
        }
        tracing::warn!(
            device = %self.device,
            rejected = total,
            reasons = %reasons,
            "serial input rejected {total} more times in the last {:.0?}",
            opened.elapsed()
        );
        self.pending = [0; FrameError::ALL.len()];
        self.window = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_value() {
        let good = SerialConfig::new("/dev/ttyUSB0", 115_200, Framing::default());
        good.validate().expect("defaults are valid");
        type Spoil = fn(&mut SerialConfig);
        let cases: [(Spoil, &str); 6] = [
            (|c| c.device = PathBuf::new(), "path is empty"),
            (|c| c.baud = 0, "baud"),
            (|c| c.framing = Framing::Cobs { max_len: 0 }, "max_len 0"),
            (
                |c| {
                    c.framing = Framing::Lines {
                        max_len: MAX_FRAME_LEN + 1,
                        utf8: true,
                    }
                },
                "lines framing",
            ),
            (
                |c| c.max_reopen_backoff = Duration::from_millis(1),
                "max_reopen_backoff",
            ),
            (|c| c.presence_check = Duration::ZERO, "presence_check"),
        ];
        for (spoil, want) in cases {
            let mut cfg = good.clone();
            spoil(&mut cfg);
            let err = cfg.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn framing_makes_its_decoder() {
        let mut lines = Framing::Lines {
            max_len: 8,
            utf8: true,
        }
        .decoder();
        let mut input: &[u8] = b"\xff\nok\n";
        assert_eq!(lines.decode(&mut input), Some(Err(FrameError::NotUtf8)));
        assert_eq!(lines.decode(&mut input), Some(Ok(&b"ok"[..])));
        let mut cobs = Framing::Cobs { max_len: 8 }.decoder();
        assert_eq!(cobs.max_frame_len(), 8);
        let frame = tributary_adapters::framing::cobs::encode(b"ok");
        let mut input = &frame[..];
        assert_eq!(cobs.decode(&mut input), Some(Ok(&b"ok"[..])));
    }

    #[test]
    fn prometheus_lists_each_family_once_and_every_device() {
        let a = SerialStats::new("/dev/ttyUSB0");
        let b = SerialStats::new("/dev/odd\"name\\");
        a.frames.fetch_add(3, Ordering::Relaxed);
        a.count_bad(FrameError::BadChecksum);
        b.connected.store(true, Ordering::Relaxed);
        let mut out = String::new();
        render_prometheus([&a, &b], &mut out);
        assert_eq!(
            out.matches("# TYPE tributary_edge_serial_frames_total counter")
                .count(),
            1
        );
        assert!(out.contains("tributary_edge_serial_frames_total{device=\"/dev/ttyUSB0\"} 3\n"));
        assert!(out.contains(
            "tributary_edge_serial_bad_frames_total{device=\"/dev/ttyUSB0\",reason=\"bad_checksum\"} 1\n"
        ));
        assert!(
            out.contains("tributary_edge_serial_connected{device=\"/dev/odd\\\"name\\\\\"} 1\n")
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("a sample line");
            value.parse::<u64>().expect("an integer sample");
        }
        assert_eq!(
            a.prometheus()
                .lines()
                .filter(|l| l.contains("ttyUSB0"))
                .count(),
            7 + 6
        );
        let mut empty = String::new();
        render_prometheus([], &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn snapshot_sums_rejections_and_lists_only_seen_reasons() {
        let s = SerialStats::new("dev");
        s.count_bad(FrameError::TooLong);
        s.count_bad(FrameError::TooLong);
        s.count_bad(FrameError::Truncated);
        s.set_last_error("gone".into());
        let snap = s.snapshot();
        assert_eq!(snap.bad_frames, 3);
        assert_eq!(
            snap.bad_frames_by_reason,
            BTreeMap::from([("too_long", 2), ("truncated", 1)])
        );
        assert_eq!(snap.last_error.as_deref(), Some("gone"));
        assert!(!snap.connected);
    }

    #[test]
    fn bad_frame_log_summarises_within_a_window() {
        let mut log = BadFrameLog::new("dev".into());
        log.note(FrameError::Malformed);
        assert!(log.window.is_some());
        log.note(FrameError::Malformed);
        log.note(FrameError::BadChecksum);
        assert_eq!(log.pending.iter().sum::<u64>(), 2);
        log.flush(false); // the window is not over
        assert_eq!(log.pending.iter().sum::<u64>(), 2);
        log.flush(true);
        assert_eq!(log.pending.iter().sum::<u64>(), 0);
        assert!(log.window.is_some());
        log.flush(true); // a window without rejections closes it
        assert!(log.window.is_none());
    }
}
