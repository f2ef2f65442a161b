//! Polled devices through the whole edge, read back with `trib read --json`: a
//! simulated Modbus slave on a pty, a GPS sending NMEA on another pty, and devices
//! that are not there (a silent slave on the same line, an I2C bus and a GPIO chip
//! that do not exist), which are retried and reported without stopping the others.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::cloud::sibling_bin;
use common::{modbus_frame, modbus_slave, wait_status, Edge, PtyPair};
use tributary_adapters::serial::nmea::checksum;

/// A sentence with its checksum.
fn nmea(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_and_gps_readings_reach_trib_and_absent_devices_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bus_dir, gps_dir) = (dir.path().join("bus"), dir.path().join("gps"));
    std::fs::create_dir_all(&bus_dir).expect("mkdir");
    std::fs::create_dir_all(&gps_dir).expect("mkdir");
    let bus = PtyPair::start(&bus_dir);
    let gps = PtyPair::start(&gps_dir);

    // Slave 3: holding register 0 counts the reads of it (the third answer has a
    // broken CRC), holding 10-11 hold 21.5 as f32, input register 5 holds -400.
    let mut reads = 0u16;
    let slave = tokio::spawn(modbus_slave(
        bus.sensor.clone(),
        move |slave, function, start, count| {
            if slave != 3 {
                return None;
            }
            let regs: Vec<u16> = match (function, start, count) {
                (3, 0, 1) => {
                    reads += 1;
                    vec![reads]
                }
                (3, 10, 2) => {
                    let b = 21.5f32.to_bits();
                    vec![(b >> 16) as u16, b as u16]
                }
                (4, 5, 1) => vec![(-400i16) as u16],
                _ => return Some(modbus_frame(&[slave, function | 0x80, 2])),
            };
            let mut body = vec![slave, function, (regs.len() * 2) as u8];
            for r in regs {
                body.extend_from_slice(&r.to_be_bytes());
            }
            let mut f = modbus_frame(&body);
            if (function, start) == (3, 0) && reads == 3 {
                f[3] ^= 0x10;
            }
            Some(f)
        },
    ));

    let mut edge = Edge::new(
        dir.path(),
        &format!(
            "[[stream]]\nname = \"plant/sensors\"\nsegments = 2\n\
             [[sensor]]\nid = \"flow-meter\"\ndriver = \"modbus\"\nstream = \"plant/sensors\"\n\
             port = \"{bus}\"\nslave = 3\nevery_ms = 200\ntimeout_ms = 300\n\
             [[sensor.register]]\nname = \"flow\"\naddress = 0\nscale = 0.5\nunit = \"L/s\"\n\
             [[sensor.register]]\nname = \"temperature\"\naddress = 10\ntype = \"f32\"\nunit = \"Cel\"\n\
             [[sensor.register]]\nname = \"pressure\"\ntable = \"input\"\naddress = 5\ntype = \"i16\"\n\
             scale = 0.1\nunit = \"kPa\"\n\
             [[sensor]]\nid = \"absent-slave\"\ndriver = \"modbus\"\nstream = \"plant/sensors\"\n\
             port = \"{bus}\"\nslave = 9\nevery_ms = 500\ntimeout_ms = 100\n\
             [[sensor.register]]\nname = \"x\"\naddress = 0\n\
             [[sensor]]\nid = \"boiler\"\ndriver = \"sht3x\"\nstream = \"plant/sensors\"\n\
             bus = \"/dev/i2c-77\"\nevery_ms = 200\n\
             [[sensor]]\nid = \"water\"\ndriver = \"pulse\"\nstream = \"plant/sensors\"\n\
             chip = \"/dev/gpiochip77\"\nline = 3\nevery_ms = 200\n\
             [[serial]]\ndevice = \"{gps}\"\nformat = \"nmea\"\nstream = \"plant/sensors\"\nkey = \"gps\"\n",
            bus = bus.device.display(),
            gps = gps.device.display(),
        ),
    );
    edge.start();
    edge.ready().await;

    wait_status(&edge, 10, "the GPS open", |s| s.serial[0].connected).await;
    let mut receiver = gps.sensor();
    let gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
    let mut corrupted = gga.clone().into_bytes();
    corrupted[20] = b'9';
    receiver.write_all(gga.as_bytes()).expect("write");
    receiver.write_all(&corrupted).expect("write");
    receiver
        .write_all(nmea("GPGSV,1,1,01,07,79,048,42").as_bytes())
        .expect("write");
    receiver
        .write_all(nmea("GPRMC,123520,A,4807.040,N,01131.000,E,000.0,,230394,,").as_bytes())
        .expect("write");

    let status = wait_status(&edge, 20, "readings and failures", |s| {
        let by = |id: &str| s.sensors.iter().find(|x| x.id == id).cloned();
        let (Some(flow), Some(absent), Some(boiler), Some(water)) = (
            by("flow-meter"),
            by("absent-slave"),
            by("boiler"),
            by("water"),
        ) else {
            return false;
        };
        flow.up
            && flow.readings >= 8
            && absent.failures >= 2
            && boiler.failures >= 2
            && water.failures >= 1
            && s.serial[0].frames >= 2
            && s.serial[0].bad_frames >= 1
    })
    .await;
    let by = |id: &str| {
        status
            .sensors
            .iter()
            .find(|x| x.id == id)
            .expect("sensor in status")
    };
    let absent = by("absent-slave");
    assert!(!absent.up, "{absent:?}");
    assert!(
        absent
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no answer")),
        "{absent:?}"
    );
    let boiler = by("boiler");
    assert_eq!((boiler.up, boiler.readings), (false, 0), "{boiler:?}");
    assert!(
        boiler
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("/dev/i2c-77")),
        "{boiler:?}"
    );
    let water = by("water");
    assert!(
        water
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("/dev/gpiochip77")),
        "{water:?}"
    );
    assert_eq!(status.serial[0].bad_frames, 1, "{:?}", status.serial[0]);

    // Everything stored so far, through the command line.
    let n = status.streams[0].events;
    let profile = dir.path().join("data/client/profile.toml");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(sibling_bin("trib", "tributary-cli"))
            .arg("--profile")
            .arg(&profile)
            .args(["read", "plant/sensors", "--json", "--timeout", "5"])
            .args(["--max", &n.to_string()])
            .output()
            .expect("run trib")
    })
    .await
    .expect("trib task");
    assert!(
        out.status.success(),
        "trib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len() as u64, n);
    let mut flows = Vec::new();
    let mut retried = 0;
    let mut fixes = Vec::new();
    for e in &events {
        let r = &e["reading"];
        assert_eq!(e["key"], r["sensor"], "{e}");
        let value = |name: &str| {
            r["values"]
                .as_array()
                .expect("values")
                .iter()
                .find(|v| v["name"] == name)
                .and_then(|v| v["value"].as_f64())
        };
        match r["sensor"].as_str() {
            Some("flow-meter") => {
                flows.push(value("flow").expect("flow"));
                assert_eq!(value("temperature"), Some(21.5), "{e}");
                assert!((value("pressure").expect("pressure") + 40.0).abs() < 1e-9);
                if r["quality"] == serde_json::json!(["retried"]) {
                    retried += 1;
                }
            }
            Some("gps") => fixes.push((value("latitude").expect("lat"), r["quality"].clone())),
            other => panic!("a reading of {other:?}: {e}"),
        }
    }
    assert!(
        flows.windows(2).all(|w| w[0] < w[1]),
        "the flow counter in order: {flows:?}"
    );
    assert_eq!(retried, 1, "the corrupted answer was asked again once");
    assert_eq!(
        fixes.len(),
        2,
        "GGA and RMC, not GSV nor the corrupted line"
    );
    assert!((fixes[0].0 - 48.1173).abs() < 1e-4, "{fixes:?}");
    assert_eq!(fixes[0].1, serde_json::json!([]));

    assert!(edge.terminate().success(), "{}", edge.tail());
    slave.abort();
}
