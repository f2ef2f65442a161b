//! The Modbus RTU master against a simulated slave on a real pseudo-terminal pair
//! (`socat`): register reads, an exception reply, a slave that does not answer, a
//! corrupted CRC, and the line working again after each.

mod common;

use std::time::Duration;

use common::{modbus_frame, modbus_slave, PtyPair};
use tributary_adapters::serial::modbus::{Function, ModbusError};
use tributary_edge::modbus::{ModbusLine, PollError};

const SLAVE: u8 = 7;
const TIMEOUT: Duration = Duration::from_millis(300);

/// Slave 7: register `r` holds `r` (input registers: `r + 1000`). Start address 100
/// answers exception 2, 200 never answers, 300 answers with a broken CRC. Other
/// slaves are silent, as on a real bus.
fn slave_7(slave: u8, function: u8, start: u16, count: u16) -> Option<Vec<u8>> {
    if slave != SLAVE || start == 200 {
        return None;
    }
    if start == 100 {
        return Some(modbus_frame(&[slave, function | 0x80, 2]));
    }
    let base = if function == 4 { 1000 } else { 0 };
    let mut body = vec![slave, function, (count * 2) as u8];
    for i in 0..count {
        body.extend_from_slice(&(base + start + i).to_be_bytes());
    }
    let mut f = modbus_frame(&body);
    if start == 300 {
        let last = f.len() - 1;
        f[last] ^= 0x55;
    }
    Some(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_registers_and_survives_exceptions_timeouts_and_bad_crcs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pty = PtyPair::start(dir.path());
    let slave = tokio::spawn(modbus_slave(pty.sensor.clone(), slave_7));
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
