//! Sensor drivers and serial protocol decoders that turn devices into readings.
//!
//! Nothing lives here yet: the drivers arrive with the "firmware-adapters" issue.
#![no_std]
