//! Sensor drivers and serial protocol decoders that turn devices into readings.
//!
//! - [`framing`]: push-based decoders that cut a byte stream from a serial line into
//!   frames — newline-delimited text ([`framing::Lines`]) and COBS-framed binary
//!   records with a CRC-32 ([`framing::Cobs`]).
//!
//! The crate is `no_std`. The default `alloc` feature adds the constructors that
//! allocate their own buffers and [`framing::cobs::encode`]; without it, decoders run
//! on a buffer the caller lends them (a `[u8; N]`, a `&mut [u8]`).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod framing;
