//! Modbus RTU, master side: requests to read holding registers (function 3) and input
//! registers (function 4), and their responses, over a serial line.
//!
//! A frame is `slave, function, data..., CRC16` with the CRC (polynomial 0xA001
//! reflected, init 0xFFFF) sent low byte first (Modbus over serial line V1.02, 6.2.2).
//! A read request is `slave, fn, start hi, start lo, count hi, count lo`; the response
//! `slave, fn, byte count, registers (big-endian)...`, or an exception
//! `slave, fn | 0x80, code`. This module only builds and checks bytes; the edge's
//! poller does the I/O with its timeouts and inter-frame gaps.

/// Largest register count one read may ask for (the spec's 125).
pub const MAX_REGISTERS: u16 = 125;

/// Which registers to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Function 3.
    ReadHolding = 3,
    /// Function 4.
    ReadInput = 4,
}

/// Why a response is not the answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModbusError {
    /// The CRC does not match (noise, a collision).
    Crc {
        /// CRC over the frame.
        computed: u16,
        /// CRC the frame carries.
        received: u16,
    },
    /// The slave answered with an exception code.
    Exception(u8),
    /// From another slave than asked.
    WrongSlave(u8),
    /// For another function than asked.
    WrongFunction(u8),
    /// Not as long as the request implies.
    WrongLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        received: usize,
    },
    /// The request itself is invalid (0 or more than 125 registers, slave 0).
    BadRequest,
}

/// The name of an exception code (Modbus application protocol V1.1b3, section 7).
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "slave device failure",
        5 => "acknowledge",
        6 => "slave device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

impl core::fmt::Display for ModbusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ModbusError::Crc { computed, received } => write!(
                f,
                "CRC mismatch: computed {computed:#06x}, frame carries {received:#06x}"
            ),
            ModbusError::Exception(c) => write!(f, "exception {c} ({})", exception_name(*c)),
            ModbusError::WrongSlave(s) => write!(f, "answer from slave {s}, not the one asked"),
            ModbusError::WrongFunction(fc) => write!(f, "answer for function {fc}"),
            ModbusError::WrongLength { expected, received } => {
                write!(f, "{received} bytes, expected {expected}")
            }
            ModbusError::BadRequest => f.write_str("slave 1-247 and 1-125 registers"),
        }
    }
}

/// CRC-16/MODBUS.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The request frame reading `count` registers from `start`.
pub fn read_request(
    slave: u8,
    function: Function,
    start: u16,
    count: u16,
) -> Result<[u8; 8], ModbusError> {
    if slave == 0 || slave > 247 || count == 0 || count > MAX_REGISTERS {
        return Err(ModbusError::BadRequest);
    }
    let mut f = [0u8; 8];
    f[0] = slave;
    f[1] = function as u8;
    f[2..4].copy_from_slice(&start.to_be_bytes());
    f[4..6].copy_from_slice(&count.to_be_bytes());
    let crc = crc16(&f[..6]);
    f[6..8].copy_from_slice(&crc.to_le_bytes());
    Ok(f)
}

/// How long the response frame is, once its first three bytes are in (`None` before):
/// a poller reads this many bytes, or until its timeout.
pub fn response_len(head: &[u8]) -> Option<usize> {
    match head {
        [_, function, n, ..] if function & 0x80 == 0 => Some(3 + usize::from(*n) + 2),
        [_, _, _, ..] => Some(5),
        _ => None,
    }
}

/// Checks `frame` as the answer to a read of `registers.len()` registers from `slave`
/// with `function`, and fills `registers`.
pub fn parse_read_response(
    slave: u8,
    function: Function,
    frame: &[u8],
    registers: &mut [u16],
) -> Result<(), ModbusError> {
    if frame.len() < 5 {
        return Err(ModbusError::WrongLength {
            expected: 5,
            received: frame.len(),
        });
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    let received = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = crc16(body);
    if computed != received {
        return Err(ModbusError::Crc { computed, received });
    }
    if body[0] != slave {
        return Err(ModbusError::WrongSlave(body[0]));
    }
    if body[1] == function as u8 | 0x80 {
        return Err(ModbusError::Exception(body[2]));
    }
    if body[1] != function as u8 {
        return Err(ModbusError::WrongFunction(body[1]));
    }
    let expected = 3 + registers.len() * 2 + 2;
    if frame.len() != expected || usize::from(body[2]) != registers.len() * 2 {
        return Err(ModbusError::WrongLength {
            expected,
            received: frame.len(),
        });
    }
    for (r, b) in registers.iter_mut().zip(body[3..].chunks_exact(2)) {
        *r = u16::from_be_bytes([b[0], b[1]]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over serial line, appendix B: 02 07 -> CRC 0x1241 (sent 41 12).
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // The spec's example: read 3 holding registers from 0x006B of slave 0x11.
        let f = read_request(0x11, Function::ReadHolding, 0x006B, 3).expect("request");
        assert_eq!(f, [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]);
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = body.to_vec();
        f.extend_from_slice(&crc16(body).to_le_bytes());
        f
    }

    #[test]
    fn reads_registers() {
        let f = frame(&[0x11, 0x03, 0x06, 0xAE, 0x41, 0x56, 0x52, 0x43, 0x40]);
        assert_eq!(response_len(&f[..3]), Some(f.len()));
        let mut r = [0u16; 3];
        parse_read_response(0x11, Function::ReadHolding, &f, &mut r).expect("response");
        assert_eq!(r, [0xAE41, 0x5652, 0x4340]);
    }

    #[test]
    fn exceptions_and_bad_frames() {
        let mut r = [0u16; 2];
        let ex = frame(&[0x0A, 0x84, 0x02]);
        assert_eq!(response_len(&ex[..3]), Some(5));
        assert_eq!(
            parse_read_response(0x0A, Function::ReadInput, &ex, &mut r),
            Err(ModbusError::Exception(2))
        );
        assert_eq!(exception_name(2), "illegal data address");
        let mut bad = frame(&[0x0A, 0x04, 0x04, 0, 1, 0, 2]);
        bad[4] ^= 0xFF;
        assert!(matches!(
            parse_read_response(0x0A, Function::ReadInput, &bad, &mut r),
            Err(ModbusError::Crc { .. })
        ));
        let other = frame(&[0x0B, 0x04, 0x04, 0, 1, 0, 2]);
        assert_eq!(
            parse_read_response(0x0A, Function::ReadInput, &other, &mut r),
            Err(ModbusError::WrongSlave(0x0B))
        );
        let short = frame(&[0x0A, 0x04, 0x02, 0, 1]);
        assert!(matches!(
            parse_read_response(0x0A, Function::ReadInput, &short, &mut r),
            Err(ModbusError::WrongLength { .. })
        ));
        assert_eq!(
            read_request(1, Function::ReadInput, 0, 126),
            Err(ModbusError::BadRequest)
        );
    }
}
