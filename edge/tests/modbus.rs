//! The Modbus RTU master against a simulated slave on a real pseudo-terminal pair
//! (`socat`): register reads, an exception reply, a slave that does not answer, a
//! corrupted CRC, and the line working again after each.

mod common;

use std::time::Duration;

use common::PtyPair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;
use tributary_adapters::serial::modbus::{crc16, Function, ModbusError};
use tributary_edge::modbus::{ModbusLine, PollError};

const SLAVE: u8 = 7;
const TIMEOUT: Duration = Duration::from_millis(300);

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend_from_slice(&crc16(body).to_le_bytes());
    f
}

/// Slave 7: register `r` holds `r` (input registers: `r + 1000`). Start address 100
/// answers exception 2, 200 never answers, 300 answers with a broken CRC. Other
/// slaves are silent, as on a real bus.
async fn simulated_slave(path: std::path::PathBuf) {
    let path = path.to_str().expect("utf-8 path").to_string();
    let mut port = tokio_serial::new(path, 9600)
        .open_native_async()
        .expect("open the slave's end");
    let mut req = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let Ok(n) = port.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        req.extend_from_slice(&buf[..n]);
        while req.len() >= 8 {
            let r: Vec<u8> = req.drain(..8).collect();
            assert_eq!(crc16(&r[..6]).to_le_bytes(), [r[6], r[7]], "request CRC");
            let (slave, function) = (r[0], r[1]);
            let start = u16::from_be_bytes([r[2], r[3]]);
            let count = u16::from_be_bytes([r[4], r[5]]);
            if slave != SLAVE || start == 200 {
                continue;
            }
            let reply = if start == 100 {
                frame(&[slave, function | 0x80, 2])
            } else {
                let base = if function == 4 { 1000 } else { 0 };
                let mut body = vec![slave, function, (count * 2) as u8];
                for i in 0..count {
                    body.extend_from_slice(&(base + start + i).to_be_bytes());
                }
                let mut f = frame(&body);
                if start == 300 {
                    let last = f.len() - 1;
                    f[last] ^= 0x55;
                }
                f
            };
            port.write_all(&reply).await.expect("reply");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_registers_and_survives_exceptions_timeouts_and_bad_crcs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pty = PtyPair::start(dir.path());
    let slave = tokio::spawn(simulated_slave(pty.sensor.clone()));
    let mut line = ModbusLine::open(pty.device.to_str().expect("utf-8"), 9600).expect("open");

    let regs = line
        .read(SLAVE, Function::ReadHolding, 0, 4, TIMEOUT)
        .await
        .expect("holding registers");
    assert_eq!(regs, [0, 1, 2, 3]);
    let regs = line
        .read(SLAVE, Function::ReadInput, 10, 2, TIMEOUT)
        .await
        .expect("input registers");
    assert_eq!(regs, [1010, 1011]);

    let e = line
        .read(SLAVE, Function::ReadHolding, 100, 1, TIMEOUT)
        .await
        .expect_err("exception");
    assert!(
        matches!(e, PollError::Protocol(ModbusError::Exception(2))),
        "{e}"
    );
    assert!(e.to_string().contains("illegal data address"), "{e}");

    let e = line
        .read(SLAVE, Function::ReadHolding, 200, 1, TIMEOUT)
        .await
        .expect_err("no answer");
    assert!(matches!(e, PollError::Timeout(_)), "{e}");
    let e = line
        .read(9, Function::ReadHolding, 0, 1, TIMEOUT)
        .await
        .expect_err("no such slave");
    assert!(matches!(e, PollError::Timeout(_)), "{e}");

    let e = line
        .read(SLAVE, Function::ReadHolding, 300, 3, TIMEOUT)
        .await
        .expect_err("bad crc");
    assert!(
        matches!(e, PollError::Protocol(ModbusError::Crc { .. })),
        "{e}"
    );

    // After each failure the line is back to normal.
    let regs = line
        .read(SLAVE, Function::ReadHolding, 40, 125, TIMEOUT)
        .await
        .expect("a full read after the failures");
    assert_eq!(regs, (40..165).collect::<Vec<u16>>());
    slave.abort();
}
