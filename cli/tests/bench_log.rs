//! Runs `trib bench log` briefly and checks its JSON output.

use std::process::Command;

#[test]
fn bench_log_prints_sane_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(["bench", "log", "--dir"])
        .arg(dir.path())
        .args([
            "--seconds",
            "0.5",
            "--json",
            "--segments",
            "3",
            "--appenders",
            "2",
        ])
        .output()
        .expect("run trib");
    assert!(
        out.status.success(),
        "trib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    assert!(num("events_per_s") > 0.0, "{v}");
    assert!(num("write_amp") > 0.0, "{v}");
    assert!(num("raw_mb_per_s") > 0.0, "{v}");
    assert_eq!(num("appenders"), 2.0);
    assert_eq!(num("segments"), 3.0);
    // The bench removes its own subdirectory.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
