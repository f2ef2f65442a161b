//! Sensor drivers on embedded-hal 1.0 traits: the same driver runs on a Raspberry Pi
//! (linux-embedded-hal: `/dev/i2c-N`, GPIO character devices) and against mocks in
//! tests. Each has an `Error<E>` generic over the bus error and the datasheet's
//! conversion and checks.
//!
//! - [`sht3x`]: Sensirion SHT3x temperature and humidity (I2C, CRC-8 per word).
//! - [`ads1115`]: TI ADS1115 16-bit ADC (I2C, single-shot, ready polling).
//! - [`pulse`]: pulse counting on a GPIO input (flow and energy meters), debounced.

pub mod ads1115;
pub mod pulse;
pub mod sht3x;
