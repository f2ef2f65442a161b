//! Sensirion SHT3x (SHT30/31/35) temperature and humidity over I2C.
//!
//! Single-shot measurement, high repeatability, no clock stretching (datasheet
//! table 9: command `0x2400`), at most 15.5 ms (table 4), then six bytes: temperature
//! MSB, LSB, CRC, humidity MSB, LSB, CRC. CRC-8, polynomial 0x31, init 0xFF
//! (section 4.12; `crc8(&[0xBE, 0xEF]) == 0x92`). Conversion (section 4.13):
//! `T = -45 + 175 * S_T / 65535` °C, `RH = 100 * S_RH / 65535` %.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Address with the ADDR pin low (high: `0x45`).
pub const DEFAULT_ADDRESS: u8 = 0x44;
const MEASURE_HIGH_REPEATABILITY: [u8; 2] = [0x24, 0x00];
const MEASURE_MS: u32 = 16;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// A word's CRC did not match (noise on the bus, a loose wire).
    Crc {
        /// CRC computed over the word.
        computed: u8,
        /// CRC the sensor sent.
        received: u8,
    },
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "I2C error: {e:?}"),
            Error::Crc { computed, received } => write!(
                f,
                "CRC mismatch: computed {computed:#04x}, sensor sent {received:#04x}"
            ),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Degrees Celsius.
    pub temperature_c: f32,
    /// Relative humidity, percent.
    pub humidity_pct: f32,
}

/// An SHT3x on a bus.
#[derive(Debug)]
pub struct Sht3x<I> {
    i2c: I,
    address: u8,
}

/// CRC-8 of the SHT3x (polynomial 0x31, init 0xFF, no reflection, no final XOR).
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn word<E>(b: &[u8]) -> Result<u16, Error<E>> {
    let computed = crc8(&b[..2]);
    if computed != b[2] {
        return Err(Error::Crc {
            computed,
            received: b[2],
        });
    }
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

impl<I: I2c> Sht3x<I> {
    /// The sensor at `address` on `i2c`.
    pub fn new(i2c: I, address: u8) -> Self {
        Sht3x { i2c, address }
    }

    /// Measures once (about 16 ms).
    pub fn measure(&mut self, delay: &mut impl DelayNs) -> Result<Measurement, Error<I::Error>> {
        self.i2c
            .write(self.address, &MEASURE_HIGH_REPEATABILITY)
            .map_err(Error::I2c)?;
        delay.delay_ms(MEASURE_MS);
        let mut b = [0u8; 6];
        self.i2c.read(self.address, &mut b).map_err(Error::I2c)?;
        let t = word(&b[0..3])?;
        let rh = word(&b[3..6])?;
        Ok(Measurement {
            temperature_c: -45.0 + 175.0 * f32::from(t) / 65535.0,
            humidity_pct: 100.0 * f32::from(rh) / 65535.0,
        })
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    #[test]
    fn crc_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn converts_a_measurement() {
        // S_T = 0x6666 (26214): -45 + 175 * 0.4 = 25.0 °C; S_RH = 0x8000: 50.0 %.
        let t = [0x66, 0x66];
        let rh = [0x80, 0x00];
        let reply = vec![t[0], t[1], crc8(&t), rh[0], rh[1], crc8(&rh)];
        let expect = [
            Transaction::write(DEFAULT_ADDRESS, vec![0x24, 0x00]),
            Transaction::read(DEFAULT_ADDRESS, reply),
        ];
        let mut s = Sht3x::new(Mock::new(&expect), DEFAULT_ADDRESS);
        let m = s.measure(&mut NoopDelay).expect("measurement");
        assert!((m.temperature_c - 25.0).abs() < 0.01, "{m:?}");
        assert!((m.humidity_pct - 50.0).abs() < 0.01, "{m:?}");
        s.release().done();
    }

    #[test]
    fn a_bad_crc_is_refused() {
        let expect = [
            Transaction::write(DEFAULT_ADDRESS, vec![0x24, 0x00]),
            Transaction::read(DEFAULT_ADDRESS, vec![0x66, 0x66, 0x00, 0x80, 0x00, 0xA2]),
        ];
        let mut s = Sht3x::new(Mock::new(&expect), DEFAULT_ADDRESS);
        let e = s.measure(&mut NoopDelay).expect_err("bad crc");
        assert_eq!(
            e,
            Error::Crc {
                computed: crc8(&[0x66, 0x66]),
                received: 0
            }
        );
        s.release().done();
    }

    #[test]
    fn a_bus_error_is_passed_on() {
        let expect = [
            Transaction::write(DEFAULT_ADDRESS, vec![0x24, 0x00]).with_error(
                ErrorKind::NoAcknowledge(embedded_hal::i2c::NoAcknowledgeSource::Address),
            ),
        ];
        let mut s = Sht3x::new(Mock::new(&expect), DEFAULT_ADDRESS);
        assert!(matches!(
            s.measure(&mut NoopDelay),
            Err(Error::I2c(ErrorKind::NoAcknowledge(_)))
        ));
        s.release().done();
    }
}
