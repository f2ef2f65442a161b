//! CRC-32 as in IEEE 802.3, zlib and PNG (the "CRC-32/ISO-HDLC" of the CRC catalogue):
//! polynomial `0x04C11DB7` reflected (`0xEDB88320`), initial value `0xFFFFFFFF`,
//! input and output reflected, final XOR `0xFFFFFFFF`. The check value, the CRC of
//! the ASCII bytes `123456789`, is `0xCBF43926`.
//!
//! Table-driven (1 KiB table built at compile time), so it costs a few cycles a byte
//! on a small microcontroller too.

/// The lookup table: the CRC of each byte value on its own.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A CRC-32 computed incrementally: [`update`](Crc32::update) with each piece of data,
/// then [`finish`](Crc32::finish).
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Crc32 {
    /// A CRC over no data yet.
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    /// Adds `data` to the CRC.
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The CRC of all data added so far.
    pub const fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

/// The CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // zlib.crc32(b"hi")
        assert_eq!(crc32(b"hi"), 0xD893_2AAC);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut c = Crc32::default();
        for piece in data.chunks(7) {
            c.update(piece);
        }
        assert_eq!(c.finish(), crc32(&data));
    }
}
