//! The command source: each run of a command (a camera's snapshot tool, `ffmpeg`
//! writing a short clip to standard output, a script) becomes one event, its whole
//! standard output, stored as a large event (atomically: a reader gets all of it or
//! nothing). The command runs again `every_secs` after the previous run started (at
//! once if 0, one second after a failure). A run that exits with an error, or writes
//! more than `max_event_mb`, stores nothing and counts as a failure.
//!
//! The output is held in memory until the command ends (the event's length goes
//! first in its frame), so `max_event_mb` bounds the memory a run takes; files larger
//! than memory belong in a watched directory, which streams them from disk.
//!
//! ```toml
//! [[pipe]]
//! command = ["libcamera-still", "-n", "-o", "-"]
//! stream = "cameras/front"
//! key = "front"                 # routing key (default: the program's name)
//! every_secs = 10
//! max_event_mb = 64
//! ```

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use toml::Spanned;
use tributary::node::config::Validator;

use crate::config::{stream_ref, StreamSpec};
use crate::local::{source_attribute, LocalStream};

/// A command whose runs become events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Index into the configured streams.
    pub stream: usize,
    /// Routing key of its events.
    pub key: String,
    /// Time from one run's start to the next.
    pub every: Duration,
    /// Largest output stored, in bytes.
    pub max_bytes: u64,
}

/// `[[pipe]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipe {
    command: Spanned<Vec<String>>,
    stream: Spanned<String>,
    key: Option<String>,
    every_secs: Option<Spanned<u64>>,
    max_event_mb: Option<Spanned<u64>>,
}

/// Validates the `[[pipe]]` sections.
pub fn parse(
    v: &mut Validator<'_>,
    raw: Vec<Spanned<RawPipe>>,
    streams: &[StreamSpec],
) -> Vec<PipeSpec> {
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let p = p.into_inner();
        let key = |k: &str| format!("pipe[{i}].{k}");
        let stream = stream_ref(v, &key("stream"), &p.stream, streams);
        let command = p.command.get_ref().clone();
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            v.error::<()>(
                &key("command"),
                p.command.span().start,
                "must name a program: [\"program\", \"arg\", ...]".into(),
            );
            continue;
        }
        let every =
            Duration::from_secs(v.within(&key("every_secs"), p.every_secs.as_ref(), 0..=86_400, 0));
        let max_bytes = v.within(&key("max_event_mb"), p.max_event_mb.as_ref(), 1..=1024, 64) << 20;
        let Some(stream) = stream else { continue };
        let program = std::path::Path::new(&command[0])
            .file_name()
            .map_or_else(|| command[0].clone(), |n| n.to_string_lossy().to_string());
        out.push(PipeSpec {
            key: p.key.unwrap_or(program),
            command,
            stream,
            every,
            max_bytes,
        });
    }
    out
}

/// A command source's counters.
#[derive(Debug, Default)]
pub struct PipeStats {
    events: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `status` shows of a command source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeStatus {
    /// The command line.
    pub command: String,
    /// Runs stored as events.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Runs that failed (nothing stored).
    pub failures: u64,
    /// The last failure, if any since the last success.
    pub last_error: Option<String>,
}

impl PipeStats {
    /// The counters now.
    pub fn status(&self, spec: &PipeSpec) -> PipeStatus {
        PipeStatus {
            command: spec.command.join(" "),
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// Runs the command again and again until `stopped` turns true; a run cut short by
/// the stop stores nothing.
pub async fn run(
    spec: PipeSpec,
    stream: Arc<LocalStream>,
    stats: Arc<PipeStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let source = source_attribute("pipe", spec.command.join("\0").as_bytes(), 0);
    loop {
        let started = Instant::now();
        let next = tokio::select! {
            r = run_once(&spec, &stream, source) => match r {
                Ok(0) => spec.every,
                Ok(bytes) => {
                    stats.events.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                    stats.set_error(None);
                    spec.every
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(command = %spec.command.join(" "), error = %e, "command run not stored");
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    stats.set_error(Some(e));
                    spec.every.max(Duration::from_secs(1))
                }
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        tokio::select! {
            () = tokio::time::sleep_until((started + next).into()) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// One run: its whole output as one event (none if it wrote nothing). Returns the
/// bytes stored.
async fn run_once(
    spec: &PipeSpec,
    stream: &LocalStream,
    source: tributary::log::AttributeId,
) -> anyhow::Result<u64> {
    use anyhow::{bail, Context};
    let mut child = tokio::process::Command::new(&spec.command[0])
        .args(&spec.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {:?}", spec.command[0]))?;
    let Some(stdout) = child.stdout.take() else {
        bail!("no standard output");
    };
    let mut out = Vec::new();
    stdout
        .take(spec.max_bytes + 1)
        .read_to_end(&mut out)
        .await
        .context("reading its output")?;
    if out.len() as u64 > spec.max_bytes {
        let _ = child.kill().await;
        bail!(
            "its output is larger than max_event_mb ({} MiB); nothing stored",
            spec.max_bytes >> 20
        );
    }
    let status = child.wait().await.context("waiting for it")?;
    if !status.success() {
        bail!(
            "it {status}; its output ({} bytes) was not stored",
            out.len()
        );
    }
    if out.is_empty() {
        return Ok(0);
    }
    let len = out.len() as u64;
    stream
        .submit_large(spec.key.as_bytes(), len, &out[..], source, None)
        .await?;
    Ok(len)
}
