//! Modbus RTU master over a serial line: one read request, its response, within a
//! timeout. The bytes are built and checked by [`tributary_adapters::serial::modbus`];
//! this module does the I/O (tokio-serial, opened as [`crate::serial::open_port`]).
//!
//! Before each request it discards whatever is waiting on the line (a late answer to an
//! earlier request that timed out), so a response is never matched to the wrong
//! request. After a timeout or a bad frame it waits for the line to stay silent for
//! 3.5 character times plus a margin, as the spec asks between frames.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;
use tributary_adapters::serial::modbus::{
    parse_read_response, read_request, response_len, Function, ModbusError,
};

/// Why a poll gave no registers.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No complete answer in time (the slave is off, or the address is wrong).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was wrong, or an exception.
    #[error("{0}")]
    Protocol(ModbusError),
    /// The serial device failed.
    #[error("serial I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A serial line with slaves on it.
#[derive(Debug)]
pub struct ModbusLine {
    port: SerialStream,
    /// 3.5 character times (11 bits each) plus a margin.
    silence: Duration,
}

impl ModbusLine {
    /// Opens `device` at `baud`, 8N1.
    pub fn open(device: &str, baud: u32) -> std::io::Result<ModbusLine> {
        let port = crate::serial::open_port(device, baud).map_err(std::io::Error::other)?;
        let char_us = 11_000_000 / u64::from(baud.max(1));
        Ok(ModbusLine {
            port,
            silence: Duration::from_micros(char_us * 4 + 2_000),
        })
    }

    /// Reads `count` registers from `start` of `slave`.
    pub async fn read(
        &mut self,
        slave: u8,
        function: Function,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, PollError> {
        let request = read_request(slave, function, start, count).map_err(PollError::Protocol)?;
        self.drain().await?;
        self.port.write_all(&request).await?;
        self.port.flush().await?;
        let mut frame = Vec::with_capacity(5 + 2 * usize::from(count));
        let complete = tokio::time::timeout(timeout, async {
            let mut buf = [0u8; 256];
            loop {
                if response_len(&frame).is_some_and(|n| frame.len() >= n) {
                    return Ok::<(), std::io::Error>(());
                }
                let n = self.port.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                frame.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        match complete {
            Err(_) => {
                self.drain().await?;
                return Err(PollError::Timeout(timeout));
            }
            Ok(Err(e)) => return Err(PollError::Io(e)),
            Ok(Ok(())) => {}
        }
        let mut registers = vec![0u16; usize::from(count)];
        match parse_read_response(slave, function, &frame, &mut registers) {
            Ok(()) => Ok(registers),
            Err(e) => {
                if !matches!(e, ModbusError::Exception(_)) {
                    self.drain().await?;
                }
                Err(PollError::Protocol(e))
            }
        }
    }

    /// Discards input until the line has been silent for the inter-frame gap.
    async fn drain(&mut self) -> std::io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(self.silence, self.port.read(&mut buf)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}
