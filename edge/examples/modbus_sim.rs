//! A simulated Modbus RTU flow meter for the demo (`scripts/run`): answers as slave 1
//! on the serial device given (one end of a `socat` pty pair). Input registers 0-1:
//! flow in m³/h (f32, high word first, wandering around 12); 2-3: the total in litres
//! (u32); holding register 0: the water temperature in 0.1 °C (i16). Other requests get
//! exception 2 (illegal data address); other slaves, silence.
//!
//!     cargo run --example modbus_sim -- /path/to/pty

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;
use tributary_adapters::serial::modbus::crc16;

const SLAVE: u8 = 1;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend_from_slice(&crc16(body).to_le_bytes());
    f
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: modbus_sim SERIAL_DEVICE")?;
    let mut port = tokio_serial::new(&path, 9600).open_native_async()?;
    let started = Instant::now();
    let mut request = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = port.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        while request.len() >= 8 {
            let r: Vec<u8> = request.drain(..8).collect();
            if crc16(&r[..6]).to_le_bytes() != [r[6], r[7]] {
                request.clear();
                break;
            }
            let (slave, function) = (r[0], r[1]);
            let start = u16::from_be_bytes([r[2], r[3]]);
            let count = u16::from_be_bytes([r[4], r[5]]);
            if slave != SLAVE {
                continue;
            }
            let t = started.elapsed().as_secs_f64();
            let flow = 12.0 + 3.0 * (t / 20.0).sin() as f32;
            let total = (t * 12.0 / 3.6) as u32;
            let celsius = (150.0 + 20.0 * (t / 60.0).cos()) as i16;
            let registers: Option<Vec<u16>> = match (function, start, count) {
                (4, 0, 2) => Some(vec![(flow.to_bits() >> 16) as u16, flow.to_bits() as u16]),
                (4, 2, 2) => Some(vec![(total >> 16) as u16, total as u16]),
                (3, 0, 1) => Some(vec![celsius as u16]),
                _ => None,
            };
            let reply = match registers {
                Some(regs) => {
                    let mut body = vec![slave, function, (regs.len() * 2) as u8];
                    for r in regs {
                        body.extend_from_slice(&r.to_be_bytes());
                    }
                    frame(&body)
                }
                None => frame(&[slave, function | 0x80, 2]),
            };
            port.write_all(&reply).await?;
        }
    }
}
