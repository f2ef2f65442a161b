//! Industrial serial protocols, as pure byte-level codecs (the edge does the I/O):
//!
//! - [`modbus`]: Modbus RTU master requests and responses (CRC-16, exceptions).
//! - [`nmea`]: NMEA 0183 sentences from GPS receivers (checksum, GGA and RMC fixes).

pub mod modbus;
pub mod nmea;
