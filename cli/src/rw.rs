//! `trib write` and `trib read`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncBufReadExt;
use tributary::reading::Reading;
use tributary::service::{Client, EventReader, EventWriter, ReadEvent, ReaderConfig, WriterConfig};
use tributary::stream::{GroupCut, SegmentId, StreamCut};
use tributary::wire::StartFrom;

use crate::connect::scoped;

#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// SCOPE/STREAM.
    stream: String,
    /// Routing key of every event (events with one key stay in order). Without it,
    /// events carry an empty key.
    #[arg(long)]
    key: Option<String>,
    /// Writer id (a number, 0x-hex, or any text, hashed). With an id, the i-th input
    /// line (or file) is event number i: rerunning the same input after a failure
    /// stores only what is missing.
    #[arg(long)]
    writer_id: Option<String>,
    /// Write this file as one event, byte for byte (any size up to 1 GiB), instead of
    /// reading lines from standard input. Repeat for more files, one event each, in
    /// order.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// SCOPE/STREAM, or a stream set: SCOPE/NAMES where NAMES are stream names and
    /// patterns, comma-separated (`factory-3/sensors-*` reads every gateway's
    /// `sensors-…` stream, taking in new ones as they appear).
    stream: String,
    /// Where to start: head, tail, or a position: a stream cut (NUMBER.EPOCH:OFFSET,...)
    /// for one stream, STREAM=CUT;STREAM=CUT for a set (streams it leaves out start at
    /// their head). With --group, only used when the group is created.
    #[arg(long, default_value = "head")]
    from: String,
    /// Read as a member of this reader group (created if missing), sharing the
    /// stream with the group's other readers and resuming where it stopped.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    max: Option<u64>,
    /// Stop at this position: `tail` (the stream's end when the read starts: everything
    /// up to now, then exit), or a stream cut as for --from. Events after it are not
    /// printed. Not with --group (the group would lose the events read past it).
    #[arg(long)]
    to: Option<String>,
    /// Stop after this many seconds without an event (or a part of one: a large event
    /// still arriving keeps the read going). Default: tail until Ctrl-C.
    #[arg(long)]
    timeout: Option<f64>,
    /// One JSON object per event: stream, key, segment, offset, payload (or, with --out,
    /// path and bytes). A sensor reading (CBOR, `tributary::reading`) is shown
    /// decoded as `reading`, other binary payloads as `payload_hex`. Without --json,
    /// readings print as one line each: `sensor name=value unit ...`. A gap record
    /// (data an edge gave up before the cloud had it) prints as an object with `gap`
    /// (its range, bytes, events if known, reason) with --json, on stderr without.
    #[arg(long)]
    json: bool,
    /// Write each event's payload, byte for byte, to its own file in this directory
    /// (created if missing), named SEGMENT-OFFSET.event (e.g. 0.0-1234.event; for a
    /// stream set, STREAM-SEGMENT-OFFSET.event), and print the paths, one per line.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// A writer id from text: a decimal or 0x-hex number, else a stable hash of the text.
fn writer_id(s: &str) -> u128 {
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(v) = u128::from_str_radix(hex, 16) {
            return v;
        }
    }
    if let Ok(v) = s.parse::<u128>() {
        return v;
    }
    // FNV-1a, 128 bits: stable across runs and builds.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

pub async fn write(c: &Client, args: WriteArgs) -> Result<()> {
    let (scope, stream) = scoped(&args.stream)?;
    let config = WriterConfig {
        writer_id: args.writer_id.as_deref().map(writer_id),
        ..WriterConfig::default()
    };
    let mut w = EventWriter::new(c, scope, stream, config).await?;
    let key = args.key.unwrap_or_default();
    if !args.files.is_empty() {
        return write_files(w, key.as_bytes(), &args.files, args.writer_id.as_deref()).await;
    }
    // Lines are bytes: text in any encoding, or none (a line ends at \n or \r\n).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    let mut n: u64 = 0;
    while let Some(mut line) = lines
        .next_segment()
        .await
        .with_context(|| format!("reading line {} of standard input", n + 1))?
    {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        w.write(key.as_bytes(), &line)
            .await
            .with_context(|| format!("line {}", n + 1))?;
        n += 1;
    }
    let stats = w.close().await?;
    eprintln!(
        "{n} events: {} stored, {} already stored before",
        stats.acknowledged, stats.already_stored
    );
    if let Some(id) = &args.writer_id {
        all_stored_before(id, stats.acknowledged, stats.already_stored)?;
    }
    Ok(())
}

/// A run with a writer id that stored nothing: the same input again (harmless), or new
/// input under a used id (dropped). Either way the user must know.
fn all_stored_before(id: &str, stored: u64, before: u64) -> Result<()> {
    if stored == 0 && before > 0 {
        bail!(
            "every event was already stored by writer id {id:?}, so none of this run was \
             stored. A writer id numbers its events (line or file i is event i), so a rerun \
             of the same input stores nothing twice; new input needs a new --writer-id"
        );
    }
    Ok(())
}

/// How long `write --file` keeps sending a file again after the connection failed
/// during its upload (the data of an upload that failed is not stored).
const FILE_RETRY_FOR: Duration = Duration::from_secs(60);

/// Writes each file as one event (streamed: a file is never held in memory whole). A
/// file whose upload the connection or a server restart interrupted is read and sent
/// again.
async fn write_files(
    mut w: EventWriter,
    key: &[u8],
    files: &[PathBuf],
    w_id: Option<&str>,
) -> Result<()> {
    for path in files {
        let started = Instant::now();
        let (number, len) = loop {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let len = file
                .metadata()
                .await
                .with_context(|| format!("reading the size of {}", path.display()))?
                .len();
            match w.write_large(key, len, file).await {
                Ok(number) => break (number, len),
                Err(e) if e.is_transient() && started.elapsed() < FILE_RETRY_FOR => {
                    eprintln!("{}: {e}; sending it again", path.display());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
            }
        };
        eprintln!("{}: {len} bytes, event {number}", path.display());
    }
    let stats = w.close().await?;
    eprintln!(
        "{} events: {} stored, {} already stored before",
        files.len(),
        stats.acknowledged,
        stats.already_stored
    );
    match w_id {
        Some(id) => all_stored_before(id, stats.acknowledged, stats.already_stored),
        None => Ok(()),
    }
}

/// Whether `streams` names more than one stream (a list or a pattern).
fn is_set(streams: &str) -> bool {
    streams.contains([',', '*'])
}

/// Segment bytes a cut is checked against at most: from the segment's start to the
/// cut's offset (a cut further in is taken as given).
const CUT_CHECK_BYTES: u64 = 64 << 20;

/// Refuses a position of `cut` that is not where an event starts, naming the event
/// boundaries around it. Checked by reading the segment from its start up to the
/// position (up to [`CUT_CHECK_BYTES`]); a reader started off a boundary would read
/// garbage lengths.
async fn check_cut(c: &Client, scope: &str, cut: &GroupCut) -> Result<()> {
    for (stream, positions) in &cut.streams {
        for (seg, offset) in &positions.positions {
            let name = tributary::stream::segment_name(scope, stream, *seg);
            let info = c.segment_info(&name).await?;
            let (start, offset) = (info.start, *offset);
            if offset <= start || offset >= info.length || offset - start > CUT_CHECK_BYTES {
                continue;
            }
            let mut buf = Vec::new();
            let mut at = start;
            while at < offset {
                let want = (offset - at).clamp(1 << 16, 4 << 20) as u32;
                let (b, _) = c
                    .read(&name, at + buf.len() as u64, want, Duration::ZERO)
                    .await?;
                if b.is_empty() {
                    break;
                }
                buf.extend_from_slice(&b);
                // Step over whole events in what was read.
                while let Some(len) = tributary::event::framed_len_at(&buf) {
                    if (buf.len() as u64) < len || at + len > offset {
                        break;
                    }
                    at += len;
                    buf.drain(..len as usize);
                }
                let next = tributary::event::framed_len_at(&buf).map(|len| at + len);
                if let Some(next) = next.filter(|n| at < offset && *n > offset) {
                    bail!(
                        "offset {offset} of segment {}.{} of {stream} is not where an event \
                         starts (events start at {at} and {next}): a stream cut must be at \
                         event boundaries",
                        seg.number,
                        seg.epoch
                    );
                }
            }
        }
    }
    Ok(())
}

fn start_from(s: &str, streams: &str) -> Result<StartFrom> {
    Ok(match s {
        "head" => StartFrom::Head,
        "tail" => StartFrom::Tail,
        cut => StartFrom::Cut(group_cut(cut, streams, "--from")?),
    })
}

/// A position given as a stream cut, or STREAM=CUT;... for a stream set.
fn group_cut(cut: &str, streams: &str, flag: &str) -> Result<GroupCut> {
    if cut.contains('=') {
        Ok(cut.parse::<GroupCut>()?)
    } else if !is_set(streams) {
        Ok(GroupCut {
            streams: [(streams.to_string(), cut.parse::<StreamCut>()?)].into(),
        })
    } else {
        bail!("{flag} of a stream set names each stream: STREAM=CUT;STREAM=CUT")
    }
}

/// Where `--to` stops a read: per stream and segment, the offset events must start
/// below; segments of a stream numbered above its cut's came after it.
struct Until {
    ends: BTreeMap<(String, SegmentId), u64>,
    last_number: BTreeMap<String, u32>,
}

impl Until {
    /// The end `to` (per stream), for a read starting at `start`.
    fn new(to: GroupCut, start: &GroupCut) -> Until {
        let mut ends = BTreeMap::new();
        let mut last_number = BTreeMap::new();
        for (stream, cut) in to.streams {
            let from = start.streams.get(&stream);
            for (seg, end) in cut.positions {
                let number = last_number.entry(stream.clone()).or_insert(seg.number);
                *number = (*number).max(seg.number);
                // Nothing to read in it: done from the start.
                if from
                    .and_then(|f| f.positions.get(&seg))
                    .copied()
                    .unwrap_or(0)
                    < end
                {
                    ends.insert((stream.clone(), seg), end);
                }
            }
        }
        Until { ends, last_number }
    }

    /// Whether `e` (taking `len` bytes) comes before the end; notes the segments done.
    fn before(&mut self, e: &ReadEvent, len: u64) -> bool {
        let Some(last) = self.last_number.get(&*e.stream) else {
            return false;
        };
        if e.segment.number > *last {
            return false;
        }
        let key = (e.stream.to_string(), e.segment);
        match self.ends.get(&key) {
            Some(end) if e.offset >= *end => {
                self.ends.remove(&key);
                false
            }
            Some(end) => {
                if e.offset + len >= *end {
                    self.ends.remove(&key);
                }
                true
            }
            // A segment the cut sealed: read before the end.
            None => true,
        }
    }

    fn done(&self) -> bool {
        self.ends.is_empty()
    }
}

pub async fn read(c: &Client, args: ReadArgs) -> Result<()> {
    let (scope, stream) = scoped(&args.stream)?;
    let from = start_from(&args.from, stream)?;
    let idle = match args.timeout {
        Some(t) => {
            Some(Duration::try_from_secs_f64(t).map_err(|_| anyhow!("--timeout must be >= 0"))?)
        }
        None => None,
    };
    // Without --group, a private group that is deleted at the end.
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let (group, temporary) = match &args.group {
        Some(g) => (g.clone(), false),
        None => (format!("trib-read-{pid}-{nanos:x}"), true),
    };
    if let StartFrom::Cut(cut) = &from {
        check_cut(c, scope, cut).await?;
    }
    if args.to.is_some() && args.group.is_some() {
        bail!("--to reads privately: not with --group (the group would lose what is read past the end)");
    }
    c.create_reader_group(scope, &group, stream, from).await?;
    let until = match &args.to {
        None => Ok(None),
        Some(to) => {
            async {
                let start = c.group_position(scope, &group, None).await?;
                let end = match to.as_str() {
                    "tail" => {
                        let mut end = GroupCut::default();
                        for s in start.streams.keys() {
                            end.streams
                                .insert(s.clone(), c.stream_tail(scope, s).await?);
                        }
                        end
                    }
                    cut => group_cut(cut, stream, "--to")?,
                };
                Ok(Some(Until::new(end, &start)))
            }
            .await
        }
    };
    let r = match until {
        Ok(until) => {
            read_events(
                c,
                scope,
                &group,
                &format!("trib-{pid}-{nanos:x}"),
                &args,
                idle,
                until,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if temporary {
        c.delete_reader_group(scope, &group).await?;
    }
    r
}

async fn read_events(
    c: &Client,
    scope: &str,
    group: &str,
    reader: &str,
    args: &ReadArgs,
    idle: Option<Duration>,
    mut until: Option<Until>,
) -> Result<()> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut r = EventReader::join(c, scope, group, reader, ReaderConfig::default()).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count: u64 = 0;
    let mut last = Instant::now();
    let mut bytes_read = r.bytes_read();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result: Result<()> = loop {
        if args.max.is_some_and(|m| count >= m) || until.as_ref().is_some_and(Until::done) {
            break Ok(());
        }
        let wait = match idle {
            Some(i) => match i.checked_sub(last.elapsed()) {
                Some(w) => w.min(Duration::from_millis(500)),
                None => break Ok(()),
            },
            None => Duration::from_millis(500),
        };
        let e = tokio::select! {
            e = r.next(wait) => e,
            _ = &mut ctrl_c => break Ok(()),
        };
        let e = match e {
            Ok(Some(e)) => e,
            Ok(None) => {
                // A large event still arriving is not idleness.
                if r.bytes_read() != bytes_read {
                    bytes_read = r.bytes_read();
                    last = Instant::now();
                }
                match out.flush() {
                    // A closed pipe (`| head`) ends the read quietly.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                    r => r?,
                }
                continue;
            }
            Err(e) => break Err(e.into()),
        };
        last = Instant::now();
        if let Some(u) = &mut until {
            if !u.before(&e, e.size) {
                continue;
            }
        }
        if let Some(gap) = &e.gap {
            // Not an event: JSON output says it in line, other output on stderr.
            let written = if args.json {
                let obj = serde_json::json!({
                    "stream": &*e.stream,
                    "segment": format!("{}.{}", e.segment.number, e.segment.epoch),
                    "offset": e.offset,
                    "gap": {
                        "source_segment": &gap.segment,
                        "from": gap.from,
                        "to": gap.to,
                        "bytes": gap.bytes(),
                        "events": gap.events,
                        "reason": &gap.reason,
                        "dropped_ms": gap.dropped_ms,
                        "noticed_ms": gap.noticed_ms,
                    },
                });
                writeln!(out, "{obj}")
            } else {
                let events = gap
                    .events
                    .map_or(String::new(), |n| format!(" ({n} events)"));
                eprintln!(
                    "trib: a gap in {scope}/{} (segment {}.{} at {}): the edge gave up {} bytes{events} \
                     before the cloud had them: {}",
                    e.stream,
                    e.segment.number,
                    e.segment.epoch,
                    e.offset,
                    gap.bytes(),
                    gap.reason
                );
                Ok(())
            };
            match written {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                r => r?,
            }
            continue;
        }
        count += 1;
        let written = if let Some(dir) = &args.out {
            let path = save(dir, &e, is_set(scoped(&args.stream)?.1))?;
            if args.json {
                let obj = serde_json::json!({
                    "stream": &*e.stream,
                    "key": String::from_utf8_lossy(&e.key),
                    "segment": format!("{}.{}", e.segment.number, e.segment.epoch),
                    "offset": e.offset,
                    "path": path.to_string_lossy(),
                    "bytes": e.payload.len(),
                });
                writeln!(out, "{obj}")
            } else {
                writeln!(out, "{}", path.display())
            }
        } else if args.json {
            let mut obj = serde_json::json!({
                "stream": &*e.stream,
                "key": String::from_utf8_lossy(&e.key),
                "segment": format!("{}.{}", e.segment.number, e.segment.epoch),
                "offset": e.offset,
            });
            match std::str::from_utf8(&e.payload) {
                Ok(p) => obj["payload"] = p.into(),
                Err(_) => match Reading::from_cbor(&e.payload) {
                    Ok(r) => obj["reading"] = r.to_json(),
                    Err(_) => obj["payload_hex"] = hex(&e.payload).into(),
                },
            }
            writeln!(out, "{obj}")
        } else {
            // Only a payload that is not text may be a CBOR reading.
            let reading = std::str::from_utf8(&e.payload)
                .is_err()
                .then(|| Reading::from_cbor(&e.payload).ok())
                .flatten();
            match reading {
                Some(r) => writeln!(out, "{}", r.to_text()),
                None => out
                    .write_all(&e.payload)
                    .and_then(|()| out.write_all(b"\n")),
            }
        };
        if let Err(e) = written {
            // A closed pipe (`| head`) ends the read quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break Ok(());
            }
            break Err(e.into());
        }
    };
    let _ = out.flush();
    drop(out);
    r.leave().await?;
    result?;
    if args.max.is_some_and(|m| count < m) && idle.is_some() {
        bail!("only {count} events before the timeout");
    }
    Ok(())
}

/// Writes an event's payload to `DIR/SEGMENT-OFFSET.event` (`STREAM-SEGMENT-OFFSET` when
/// reading a stream set; through a temporary name, so a file by that name is always
/// whole); returns the path.
fn save(dir: &Path, e: &ReadEvent, with_stream: bool) -> Result<PathBuf> {
    let mut name = format!(
        "{}.{}-{}.event",
        e.segment.number, e.segment.epoch, e.offset
    );
    if with_stream {
        name = format!("{}-{name}", e.stream);
    }
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, &e.payload)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
