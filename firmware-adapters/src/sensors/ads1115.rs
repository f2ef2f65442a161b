//! Texas Instruments ADS1115 16-bit ADC over I2C, single-shot conversions.
//!
//! Datasheet (SBAS444): the config register (pointer `0x01`) starts a conversion with
//! OS = 1 and selects the input (MUX, bits 14:12), the full-scale range (PGA, bits
//! 11:9), single-shot mode (bit 8), the data rate (bits 7:5; 128 SPS = `100`, one
//! conversion in about 7.8 ms) and disables the comparator (bits 1:0 = `11`). Reading
//! the config register back shows OS = 1 once the conversion is done; the result is the
//! conversion register (pointer `0x00`), a two's-complement 16-bit value where
//! `32767` is +FSR: `volts = raw * FSR / 32768` (section 9.3.3).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Address with ADDR tied to GND (VDD: `0x49`, SDA: `0x4A`, SCL: `0x4B`).
pub const DEFAULT_ADDRESS: u8 = 0x48;
const REG_CONVERSION: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
const OS: u16 = 1 << 15;
const SINGLE_SHOT: u16 = 1 << 8;
const RATE_128SPS: u16 = 0b100 << 5;
const COMPARATOR_OFF: u16 = 0b11;
/// Polls of the OS bit (1 ms apart) after the nominal conversion time.
const MAX_POLLS: u32 = 10;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The conversion did not finish in time (the chip is not an ADS1115, or hangs).
    NotReady,
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "I2C error: {e:?}"),
            Error::NotReady => f.write_str("the conversion did not complete"),
        }
    }
}

/// The input measured (MUX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// AIN0 − AIN1.
    Diff01 = 0b000,
    /// AIN0 − AIN3.
    Diff03 = 0b001,
    /// AIN1 − AIN3.
    Diff13 = 0b010,
    /// AIN2 − AIN3.
    Diff23 = 0b011,
    /// AIN0 − GND.
    A0 = 0b100,
    /// AIN1 − GND.
    A1 = 0b101,
    /// AIN2 − GND.
    A2 = 0b110,
    /// AIN3 − GND.
    A3 = 0b111,
}

/// Full-scale range (PGA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±6.144 V.
    V6_144 = 0b000,
    /// ±4.096 V.
    V4_096 = 0b001,
    /// ±2.048 V (the chip's default).
    V2_048 = 0b010,
    /// ±1.024 V.
    V1_024 = 0b011,
    /// ±0.512 V.
    V0_512 = 0b100,
    /// ±0.256 V.
    V0_256 = 0b101,
}

impl Range {
    /// Full scale in volts.
    pub fn volts(self) -> f32 {
        match self {
            Range::V6_144 => 6.144,
            Range::V4_096 => 4.096,
            Range::V2_048 => 2.048,
            Range::V1_024 => 1.024,
            Range::V0_512 => 0.512,
            Range::V0_256 => 0.256,
        }
    }
}

/// The config word that starts one conversion of `input` at `range`.
pub fn config_word(input: Input, range: Range) -> u16 {
    OS | (input as u16) << 12 | (range as u16) << 9 | SINGLE_SHOT | RATE_128SPS | COMPARATOR_OFF
}

/// Volts of a raw conversion result at `range`.
pub fn to_volts(raw: i16, range: Range) -> f32 {
    f32::from(raw) * range.volts() / 32768.0
}

/// An ADS1115 on a bus.
#[derive(Debug)]
pub struct Ads1115<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Ads1115<I> {
    /// The ADC at `address` on `i2c`.
    pub fn new(i2c: I, address: u8) -> Self {
        Ads1115 { i2c, address }
    }

    /// Converts `input` once at `range` (about 8 ms); returns volts.
    pub fn measure(
        &mut self,
        input: Input,
        range: Range,
        delay: &mut impl DelayNs,
    ) -> Result<f32, Error<I::Error>> {
        let [hi, lo] = config_word(input, range).to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(Error::I2c)?;
        delay.delay_ms(8);
        let mut polls = 0;
        loop {
            let mut b = [0u8; 2];
            self.i2c
                .write_read(self.address, &[REG_CONFIG], &mut b)
                .map_err(Error::I2c)?;
            if u16::from_be_bytes(b) & OS != 0 {
                break;
            }
            polls += 1;
            if polls >= MAX_POLLS {
                return Err(Error::NotReady);
            }
            delay.delay_ms(1);
        }
        let mut b = [0u8; 2];
        self.i2c
            .write_read(self.address, &[REG_CONVERSION], &mut b)
            .map_err(Error::I2c)?;
        Ok(to_volts(i16::from_be_bytes(b), range))
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

    const A: u8 = DEFAULT_ADDRESS;

    #[test]
    fn config_word_matches_the_datasheet_layout() {
        // OS=1, MUX=100 (AIN0), PGA=010 (2.048 V), MODE=1, DR=100, COMP_QUE=11.
        assert_eq!(config_word(Input::A0, Range::V2_048), 0b1100_0101_1000_0011);
        assert_eq!(config_word(Input::Diff01, Range::V6_144), 0x8183);
    }

    #[test]
    fn converts_after_the_conversion_is_ready() {
        let [hi, lo] = config_word(Input::A1, Range::V4_096).to_be_bytes();
        let expect = [
            Transaction::write(A, vec![REG_CONFIG, hi, lo]),
            // Still converting (OS = 0), then done.
            Transaction::write_read(A, vec![REG_CONFIG], vec![0x55, 0x83]),
            Transaction::write_read(A, vec![REG_CONFIG], vec![0xD5, 0x83]),
            // 0x4000 = 16384: half of +FSR.
            Transaction::write_read(A, vec![REG_CONVERSION], vec![0x40, 0x00]),
        ];
        let mut adc = Ads1115::new(Mock::new(&expect), A);
        let v = adc
            .measure(Input::A1, Range::V4_096, &mut NoopDelay)
            .expect("volts");
        assert!((v - 2.048).abs() < 1e-6, "{v}");
        adc.release().done();
    }

    #[test]
    fn negative_values_and_full_scale() {
        assert!((to_volts(-32768, Range::V2_048) + 2.048).abs() < 1e-6);
        assert!((to_volts(32767, Range::V0_256) - 0.256 * 32767.0 / 32768.0).abs() < 1e-6);
    }

    #[test]
    fn a_conversion_that_never_completes_is_an_error() {
        let [hi, lo] = config_word(Input::A0, Range::V2_048).to_be_bytes();
        let mut expect = vec![Transaction::write(A, vec![REG_CONFIG, hi, lo])];
        for _ in 0..MAX_POLLS {
            expect.push(Transaction::write_read(
                A,
                vec![REG_CONFIG],
                vec![0x45, 0x83],
            ));
        }
        let mut adc = Ads1115::new(Mock::new(&expect), A);
        assert_eq!(
            adc.measure(Input::A0, Range::V2_048, &mut NoopDelay),
            Err(Error::NotReady)
        );
        adc.release().done();
    }

    #[test]
    fn a_bus_error_is_passed_on() {
        let [hi, lo] = config_word(Input::A0, Range::V2_048).to_be_bytes();
        let expect = [Transaction::write(A, vec![REG_CONFIG, hi, lo]).with_error(ErrorKind::Bus)];
        let mut adc = Ads1115::new(Mock::new(&expect), A);
        assert_eq!(
            adc.measure(Input::A0, Range::V2_048, &mut NoopDelay),
            Err(Error::I2c(ErrorKind::Bus))
        );
        adc.release().done();
    }
}
