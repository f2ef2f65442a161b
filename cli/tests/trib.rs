//! `trib` as a user runs it: the real binary against a real server (QUIC, mutual TLS)
//! found through a client profile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use tributary::controller::Controller;
use tributary::log::{LogConfig, SegmentLog};
use tributary::profile::ClientProfile;
use tributary::service::SegmentServer;
use tributary::tls::{server_config, DevPki};

struct Server {
    _dir: tempfile::TempDir,
    profile: PathBuf,
    pki: DevPki,
    server: Option<SegmentServer>,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::ensure(&dir.path().join("tls"), "trib-test").expect("pki");
        let log =
            Arc::new(SegmentLog::open(dir.path().join("log"), LogConfig::default()).expect("log"));
        let controller = Arc::new(Controller::open(log).await.expect("controller"));
        let tls = server_config(&pki.server).expect("tls");
        let server = SegmentServer::start(
            ([127, 0, 0, 1], 0).into(),
            tls,
            controller,
            tributary::service::Access::open(),
        )
        .expect("server");
        let profile = dir.path().join("client").join("profile.toml");
        ClientProfile {
            endpoint: server.local_addr().expect("addr"),
            server_name: "localhost".into(),
            ca: pki.client.ca.clone(),
            cert: pki.client.cert.clone(),
            key: pki.client.key.clone(),
        }
        .save(&profile)
        .expect("profile");
        Server {
            _dir: dir,
            profile,
            pki,
            server: Some(server),
        }
    }
}

/// Runs trib with the profile and `stdin`, off the async runtime.
async fn trib(profile: &Path, args: &[&str], stdin: &str) -> Output {
    trib_bytes(profile, args, stdin.as_bytes()).await
}

fn ok(o: &Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "trib failed: {err}");
    (out, err)
}

fn failed(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "trib should have failed");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("trib: "), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_streams_write_with_a_writer_id_and_read_back() {
    let s = Server::start().await;
    let p = &s.profile;
    ok(&trib(p, &["scope", "create", "site"], "").await);
    ok(&trib(
        p,
        &["stream", "create", "site/temps", "--segments", "2"],
        "",
    )
    .await);
    let (out, _) = ok(&trib(p, &["stream", "list", "site"], "").await);
    assert_eq!(out.trim(), "temps");

    let lines: Vec<String> = (1..=8).map(|i| format!("reading {i}")).collect();
    let first5 = lines[..5].join("\n") + "\n";
    let all8 = lines.join("\n") + "\n";
    let w = [
        "write",
        "site/temps",
        "--key",
        "sensor-1",
        "--writer-id",
        "job-1",
    ];
    let (_, err) = ok(&trib(p, &w, &first5).await);
    assert!(err.contains("5 stored, 0 already stored"), "{err}");
    // The rerun after a "failure" stores only what is missing.
    let (_, err) = ok(&trib(p, &w, &all8).await);
    assert!(err.contains("3 stored, 5 already stored"), "{err}");
    // New input under a used writer id stores nothing: said loudly, exit non-zero.
    let o = trib(p, &w, "new 1\nnew 2\n").await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("0 stored, 2 already stored") && err.contains("needs a new --writer-id"),
        "{err}"
    );

    let (out, _) = ok(&trib(p, &["read", "site/temps", "--timeout", "1", "--json"], "").await);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 8);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["payload"], format!("reading {}", i + 1));
        assert_eq!(e["key"], "sensor-1");
        assert!(e["segment"].is_string() && e["offset"].is_u64(), "{e}");
    }

    // A group resumes where it stopped.
    let g = [
        "read",
        "site/temps",
        "--group",
        "g1",
        "--max",
        "3",
        "--timeout",
        "2",
    ];
    let (out, _) = ok(&trib(p, &g, "").await);
    assert_eq!(out.lines().count(), 3);
    let g = ["read", "site/temps", "--group", "g1", "--timeout", "1"];
    let (out, _) = ok(&trib(p, &g, "").await);
    assert_eq!(out.lines().next(), Some("reading 4"));
    assert_eq!(out.lines().count(), 5);

    // From the tail: only what is written after the group starts.
    let tail = {
        let p = p.clone();
        tokio::spawn(async move {
            let args = [
                "read",
                "site/temps",
                "--group",
                "tail",
                "--from",
                "tail",
                "--timeout",
                "2",
            ];
            trib(&p, &args, "").await
        })
    };
    let c = {
        let prof = ClientProfile::load(p).expect("profile");
        let tls = tributary::tls::client_config(&prof.identity()).expect("tls");
        tributary::service::Client::connect(prof.endpoint, &prof.server_name, tls)
            .await
            .expect("connect")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.describe_reader_group("site", "tail").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no tail group");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ok(&trib(
        p,
        &["write", "site/temps", "--key", "sensor-1"],
        "later 1\nlater 2\n",
    )
    .await);
    let (out, _) = ok(&tail.await.expect("tail reader"));
    assert_eq!(out, "later 1\nlater 2\n");

    let (out, _) = ok(&trib(p, &["stream", "describe", "site/temps", "--json"], "").await);
    let d: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(d["segments"].as_array().map(Vec::len), Some(2));
    ok(&trib(p, &["stream", "scale", "site/temps", "--split", "0.0"], "").await);
    ok(&trib(p, &["stream", "seal", "site/temps"], "").await);
    ok(&trib(p, &["stream", "delete", "site/temps"], "").await);
    ok(&trib(p, &["scope", "delete", "site"], "").await);
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_set_is_read_as_one_group() {
    let s = Server::start().await;
    let p = &s.profile;
    ok(&trib(p, &["scope", "create", "f"], "").await);
    for stream in ["sensors-a", "sensors-b", "video"] {
        ok(&trib(p, &["stream", "create", &format!("f/{stream}")], "").await);
        let lines: String = (1..=3).map(|i| format!("{stream} {i}\n")).collect();
        ok(&trib(p, &["write", &format!("f/{stream}"), "--key", "k"], &lines).await);
    }
    let (out, _) = ok(&trib(p, &["read", "f/sensors-*", "--timeout", "1", "--json"], "").await);
    let mut per_stream: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in out.lines() {
        let e: serde_json::Value = serde_json::from_str(l).expect("json");
        per_stream
            .entry(e["stream"].as_str().expect("stream").to_string())
            .or_default()
            .push(e["payload"].as_str().expect("payload").to_string());
    }
    let want = |s: &str| (1..=3).map(|i| format!("{s} {i}")).collect::<Vec<_>>();
    assert_eq!(
        per_stream,
        [
            ("sensors-a", want("sensors-a")),
            ("sensors-b", want("sensors-b"))
        ]
        .map(|(s, v)| (s.to_string(), v))
        .into(),
        "every matching stream, each in order, and nothing else"
    );
    // A named set, read as a group in two goes: the second resumes.
    let g = ["read", "f/sensors-a,video", "--group", "g", "--max", "4"];
    let (out, _) = ok(&trib(p, &[&g[..], &["--timeout", "2"]].concat(), "").await);
    assert_eq!(out.lines().count(), 4);
    let (rest, _) = ok(&trib(
        p,
        &[
            "read",
            "f/sensors-a,video",
            "--group",
            "g",
            "--timeout",
            "1",
        ],
        "",
    )
    .await);
    assert_eq!(rest.lines().count(), 2, "{out}\n--\n{rest}");
    // A set's --from names its streams.
    let e = failed(
        &trib(
            p,
            &["read", "f/sensors-*", "--from", "0.0:0", "--timeout", "1"],
            "",
        )
        .await,
    );
    assert!(e.contains("STREAM=CUT"), "{e}");
    let (out, _) = ok(&trib(
        p,
        &[
            "read",
            "f/sensors-*",
            "--from",
            "sensors-a=0.0:54",
            "--timeout",
            "1",
        ],
        "",
    )
    .await);
    assert_eq!(
        out.lines().count(),
        3,
        "sensors-a from its end, sensors-b from its head: {out}"
    );
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let s = Server::start().await;
    let p = s.profile.clone();
    ok(&trib(&p, &["scope", "create", "f"], "").await);
    ok(&trib(&p, &["stream", "create", "f/t"], "").await);
    // About 9.5 KiB of JSON: the first 8 KiB reach the pipe, the rest waits for a flush.
    let lines: String = (0..100)
        .map(|i| format!("event number {i:04} of a stream\n"))
        .collect();
    ok(&trib(&p, &["write", "f/t", "--key", "k"], &lines).await);
    // `trib read ... | head -2`: the reader stops after two lines and closes the pipe.
    let status = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trib"))
            .arg("--profile")
            .arg(&p)
            .args(["read", "f/t", "--json", "--timeout", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trib");
        let out = child.stdout.take().expect("stdout");
        let head: Vec<String> = std::io::BufReader::new(out)
            .lines()
            .take(2)
            .map(|l| l.expect("line"))
            .collect();
        assert_eq!(head.len(), 2);
        let out = child.wait_with_output().expect("wait");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    })
    .await
    .expect("task");
    assert!(status.0.success(), "exit {:?}: {}", status.0, status.1);
    assert!(status.1.is_empty(), "nothing on stderr: {}", status.1);
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_record_reads_as_gap_in_json_and_on_stderr_otherwise() {
    use tributary::event::{frame_event, Gap};
    let s = Server::start().await;
    let addr = s
        .server
        .as_ref()
        .expect("server")
        .local_addr()
        .expect("addr");
    let tls = tributary::tls::client_config(&s.pki.client).expect("tls");
    let c = tributary::service::Client::connect(addr, "localhost", tls)
        .await
        .expect("connect");
    // A mirror whose edge sent two events, gave up 5,000 bytes (7 events), then one.
    let source = tributary::stream::SourceStream {
        stream: "site/s".into(),
        uid: 1,
    };
    let config = tributary::stream::StreamConfig::default();
    c.mirror_stream("m", "g", &source, config, vec![], vec![])
        .await
        .expect("mirror");
    let name = tributary::stream::segment_name(
        "m",
        "g",
        tributary::stream::SegmentId {
            number: 0,
            epoch: 0,
        },
    );
    let first = [frame_event(b"k", b"one"), frame_event(b"k", b"two")];
    let from = (first[0].len() + first[1].len()) as u64;
    let gap = Gap {
        segment: "site/s/0.#epoch.0".into(),
        from,
        to: from + 5000,
        events: Some(7),
        reason: "the disk budget was full".into(),
        dropped_ms: Some(1_700_000_000_000),
        noticed_ms: 1_700_000_001_000,
    };
    let mut m = c.mirror_session(&name).await.expect("session");
    let mut acks = m.take_acks().expect("acks");
    m.send(0, &first).await.expect("send");
    m.send_gap(&gap).await.expect("gap");
    m.send(gap.to, &[frame_event(b"k", b"three")])
        .await
        .expect("send");
    for _ in 0..3 {
        acks.next().await.expect("ack").expect("ack");
    }

    let (out, _) = ok(&trib(&s.profile, &["read", "m/g", "--json", "--timeout", "2"], "").await);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[1]["payload"], "two");
    let g = &lines[2]["gap"];
    assert_eq!(
        (g["from"].as_u64(), g["to"].as_u64(), g["bytes"].as_u64()),
        (Some(gap.from), Some(gap.to), Some(5000)),
        "{out}"
    );
    assert_eq!(g["events"], 7);
    assert_eq!(g["reason"], "the disk budget was full");
    assert!(lines[2].get("payload").is_none(), "{out}");
    assert_eq!(lines[3]["payload"], "three");

    // Without --json, stdout has the events only; stderr says what was lost.
    let (out, err) = ok(&trib(&s.profile, &["read", "m/g", "--timeout", "2"], "").await);
    assert_eq!(out, "one\ntwo\nthree\n");
    assert!(
        err.contains("a gap in m/g") && err.contains("5000 bytes (7 events)"),
        "{err}"
    );
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_to_tail_prints_everything_up_to_now_and_exits() {
    let s = Server::start().await;
    let p = &s.profile;
    ok(&trib(p, &["scope", "create", "f"], "").await);
    ok(&trib(p, &["stream", "create", "f/t", "--segments", "3"], "").await);
    // An empty stream: nothing, at once.
    let (out, _) = ok(&trib(p, &["read", "f/t", "--to", "tail"], "").await);
    assert_eq!(out, "");
    // Lines are bytes: one that is not UTF-8 is stored as it is.
    let mut input: Vec<u8> = (0..30)
        .flat_map(|i| format!("event {i}\n").into_bytes())
        .collect();
    input.extend_from_slice(b"\xff\xfe not utf-8\r\n");
    let o = trib_bytes(p, &["write", "f/t", "--key", "k"], &input).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (out, _) = ok(&trib(p, &["read", "f/t", "--to", "tail", "--json"], "").await);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 31, "{out}");
    assert_eq!(lines[30]["payload_hex"], "fffe206e6f74207574662d38");
    let e = failed(&trib(p, &["read", "f/t", "--to", "tail", "--group", "g"], "").await);
    assert!(e.contains("not with --group"), "{e}");
    // A cut off an event boundary: said so, with the segment as users name it.
    ok(&trib(p, &["stream", "create", "f/one"], "").await);
    ok(&trib(p, &["write", "f/one", "--key", "k"], "aaaaaaaa\nbbbbbbbb\n").await);
    for at in ["3", "8"] {
        let from = format!("0.0:{at}");
        let r = ["read", "f/one", "--from", &from, "--to", "tail"];
        let e = failed(&trib(p, &r, "").await);
        assert!(
            e.contains(&format!("offset {at} of segment 0.0 of one is not where an event starts (events start at 0 and 15)")),
            "{e}"
        );
    }
    let (out, _) = ok(&trib(
        p,
        &["read", "f/one", "--from", "0.0:15", "--to", "tail"],
        "",
    )
    .await);
    assert_eq!(out, "bbbbbbbb\n", "from the second event");
    drop(s.server);
}

/// Runs trib with the profile and raw bytes on stdin, off the async runtime.
async fn trib_bytes(profile: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let (profile, stdin) = (profile.to_path_buf(), stdin.to_vec());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trib"))
            .arg("--profile")
            .arg(&profile)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trib");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&stdin)
            .expect("write stdin");
        child.wait_with_output().expect("trib output")
    })
    .await
    .expect("trib task")
}

/// `len` pseudo-random bytes (xorshift).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_as_single_events_read_back_byte_identical_into_files() {
    let s = Server::start().await;
    let p = &s.profile;
    ok(&trib(p, &["scope", "create", "site"], "").await);
    ok(&trib(
        p,
        &["stream", "create", "site/videos", "--segments", "2"],
        "",
    )
    .await);
    let dir = tempfile::tempdir().expect("tempdir");
    let video = payload(50_000_000, 1);
    let clip = payload(1000, 2);
    let (video_path, clip_path) = (dir.path().join("video.mp4"), dir.path().join("clip.bin"));
    std::fs::write(&video_path, &video).expect("write video");
    std::fs::write(&clip_path, &clip).expect("write clip");
    let w = [
        "write",
        "site/videos",
        "--key",
        "cam-1",
        "--writer-id",
        "cam-1-upload",
        "--file",
        &clip_path.to_string_lossy(),
        "--file",
        &video_path.to_string_lossy(),
    ];
    let (_, err) = ok(&trib(p, &w, "").await);
    assert!(
        err.contains("2 events: 2 stored, 0 already stored"),
        "{err}"
    );
    assert!(err.contains("50000000 bytes, event 2"), "{err}");
    // A rerun with the same writer id sends nothing again (and says so, exit 1).
    let o = trib(p, &w, "").await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 stored, 2 already stored"), "{err}");

    let out_dir = dir.path().join("out");
    let out_arg = out_dir.to_string_lossy().to_string();
    let r = ["read", "site/videos", "--timeout", "1", "--out", &out_arg];
    let (out, _) = ok(&trib(p, &r, "").await);
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 2, "{out}");
    assert!(
        paths
            .iter()
            .all(|p| p.ends_with(".event") && Path::new(p).starts_with(&out_dir)),
        "{out}"
    );
    assert!(
        std::fs::read(paths[0]).expect("clip") == clip,
        "the clip is byte-identical"
    );
    assert!(
        std::fs::read(paths[1]).expect("video") == video,
        "the video is byte-identical"
    );

    let r = [
        "read",
        "site/videos",
        "--timeout",
        "1",
        "--json",
        "--out",
        &out_arg,
    ];
    let (out, _) = ok(&trib(p, &r, "").await);
    let last: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("two lines")).expect("json");
    assert_eq!(last["bytes"], 50_000_000);
    assert_eq!(last["key"], "cam-1");
    assert_eq!(last["path"], paths[1]);
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 2, "no partial files left: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_clear_line_and_a_non_zero_exit() {
    let s = Server::start().await;
    let p = &s.profile;
    let err = failed(
        &trib(
            Path::new("/nonexistent/profile.toml"),
            &["scope", "list"],
            "",
        )
        .await,
    );
    assert!(err.contains("no client profile"), "{err}");
    let err = failed(&trib(p, &["stream", "create", "no-slash"], "").await);
    assert!(err.contains("SCOPE/STREAM"), "{err}");
    let err = failed(&trib(p, &["stream", "create", "nope/t"], "").await);
    assert!(err.contains("NoSuchScope"), "{err}");
    ok(&trib(p, &["scope", "create", "s"], "").await);
    let err = failed(&trib(p, &["read", "s/missing", "--timeout", "1"], "").await);
    assert!(err.contains("NoSuchStream"), "{err}");
    let err = failed(&trib(p, &["scope", "create", "bad name!"], "").await);
    assert!(err.contains("InvalidName"), "{err}");
    let err = failed(&trib(p, &["read", "s/t", "--from", "garbage"], "").await);
    assert!(err.contains("stream cut"), "{err}");
    ok(&trib(p, &["stream", "create", "s/t"], "").await);
    let err = failed(&trib(p, &["write", "s/t", "--file", "/nonexistent/video"], "").await);
    assert!(err.contains("/nonexistent/video"), "{err}");
    // Above the 1 GiB limit (a sparse file): refused before anything is sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len((1 << 30) + 1))
        .expect("sparse file");
    let err = failed(&trib(p, &["write", "s/t", "--file", &huge.to_string_lossy()], "").await);
    assert!(err.contains("the limit is 1073741824"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_write_prints_the_same_keys_as_bench_log_and_the_ratio() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_string_lossy().to_string();
    let args = [
        "bench",
        "write",
        "--seconds",
        "0.5",
        "--json",
        "--writers",
        "2",
        "--dir",
        &dir_arg,
    ];
    let (out, _) = ok(&trib(&s.profile, &args, "").await);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for k in [
        "events_per_s",
        "mb_per_s",
        "p50_us",
        "p99_us",
        "ratio_to_log",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
    }
    assert!(v["log"]["events_per_s"].as_f64().is_some_and(|x| x > 0.0));
}
