//! Sensor drivers and serial protocol decoders that turn devices into readings.
//!
//! - [`framing`]: push-based decoders that cut a byte stream from a serial line into
//!   frames — newline-delimited text ([`framing::Lines`]) and COBS-framed binary
//!   records with a CRC-32 ([`framing::Cobs`]).
//! - [`sensors`]: I2C and GPIO drivers on embedded-hal 1.0 (SHT3x, ADS1115, pulse
//!   counting).
//! - [`serial`]: Modbus RTU (master) and NMEA 0183 codecs.
//!
//! Readings become events in the `tributary` crate's CBOR encoding
//! (`tributary::reading`).
//!
//! The crate is `no_std`. The default `alloc` feature adds the constructors that
//! allocate their own buffers and [`framing::cobs::encode`]; without it, decoders run
//! on a buffer the caller lends them (a `[u8; N]`, a `&mut [u8]`).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod framing;
pub mod sensors;
pub mod serial;
