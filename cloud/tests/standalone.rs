//! The real `tributary-cloud standalone` binary: started on a temporary data directory,
//! reached over HTTP and over QUIC with the client profile it writes, stopped with
//! SIGTERM, restarted on the same data.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{connect, free_tcp_port, free_udp_port, http_get, metrics, runtime, Node, BIN};
use tributary::profile::ClientProfile;
use tributary::tls::Identity;

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
        s.send(1, 1, &[bytes::Bytes::from_static(b"hello")])
            .await
            .expect("send");
        let ack = s.ack().await.expect("ack");
        assert_eq!(ack.end_offset, 5);
        s.finish().expect("finish");
        c.close().await;
    });
    let m = metrics(&node);
    assert!(m.contains("\ntributary_segments 1\n"), "{m}");
    let fsyncs = m
        .lines()
        .find_map(|l| l.strip_prefix("tributary_log_fsync_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        fsyncs.is_some_and(|n| n >= 1),
        "the append was fsync'ed: {m}"
    );
    // `tributary-cloud status --json`, the way an operator asks.
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--http", &node.http.to_string()])
        .output()
        .expect("tributary-cloud status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: tributary_cloud::status::CloudStatus =
        serde_json::from_slice(&out.stdout).expect("a status document");
    assert_eq!(status.segments, 1, "{status:?}");
    assert!(
        status.fsyncs >= 1 && status.appended_events == 1,
        "{status:?}"
    );

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

/// `tributary-cloud certs --out PKI ARGS`, which must succeed.
fn certs(pki: &std::path::Path, args: &[&str]) {
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(pki)
        .args(args)
        .output()
        .expect("run certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn standalone_with_tls_from_the_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    certs(&pki, &["--server-name", "node.test", "--client", "alice"]);

    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[quic]\nlisten = \"127.0.0.1:0\"\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
         server_name = \"node.test\"\n[log]\ncache_mb = 1\n\
         [[grant]]\nidentity = \"alice\"\nadmin = true\n",
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
        // A new server certificate, for another name, and grants that let bob read:
        // SIGHUP takes both without dropping alice's connection.
        certs(&pki, &["--server-name", "node2.test", "--client", "bob"]);
        let mut bob = ClientProfile {
            server_name: "node2.test".into(),
            cert: pki.join("bob.pem"),
            key: pki.join("bob.key"),
            ..profile.clone()
        };
        std::fs::write(
            &config,
            std::fs::read_to_string(&config).expect("config")
                + "[[grant]]\nidentity = \"bob\"\nstreams = [\"s/*\"]\nallow = [\"read\"]\n",
        )
        .expect("write config");
        node.reload();
        c.segment_info(SEGMENT)
            .await
            .expect("alice's connection goes on");
        let b = connect(&bob).await;
        c.create_scope("s").await.expect("scope");
        c.create_stream("s", "t", Default::default())
            .await
            .expect("create");
        b.describe_stream("s", "t").await.expect("bob reads s/*");
        let e = b
            .create_stream("s", "u", Default::default())
            .await
            .expect_err("not granted");
        assert!(e.to_string().contains("create on stream s/u"), "{e}");
        b.close().await;
        // The old name is no longer the server's.
        bob.server_name = "node.test".into();
        let tls = tributary::tls::client_config(&bob.identity()).expect("tls");
        let r = tributary::service::Client::connect(bob.endpoint, &bob.server_name, tls).await;
        assert!(r.is_err(), "the old server certificate is still served");
        // A reload cannot drop [tls] (and with it the grants: the development default
        // would let every client of this CA do everything).
        std::fs::write(
            &config,
            "data_dir = \"data\"\n[quic]\nlisten = \"127.0.0.1:0\"\n",
        )
        .expect("write config");
        node.hup_until("cannot add or remove [tls]");
        c.segment_info(SEGMENT).await.expect("alice goes on");
        bob.server_name = "node2.test".into();
        let tls = tributary::tls::client_config(&bob.identity()).expect("tls");
        let b = tributary::service::Client::connect(bob.endpoint, &bob.server_name, tls)
            .await
            .expect("bob connects");
        let e = b
            .create_stream("s", "v", Default::default())
            .await
            .expect_err("the grants are as they were");
        assert!(e.to_string().contains("create on stream s/v"), "{e}");
        b.close().await;
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
