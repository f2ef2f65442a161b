//! NMEA 0183 sentences from GPS receivers: `$TTSSS,field,...*HH`, where `HH` is the XOR
//! of every byte between `$` and `*` in hex. Position fixes come from GGA (time,
//! position, fix quality, satellites, HDOP, altitude) and RMC (time, status, position,
//! speed, course, date). Other sentence types are recognised as valid and skipped.
//!
//! Latitude `ddmm.mmmm,N|S` and longitude `dddmm.mmmm,E|W` become signed decimal
//! degrees. An empty field (no fix yet) is `None`.

/// Why a line is not a usable sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmeaError {
    /// No `$` (or `!`) at the start.
    NoStart,
    /// No `*HH` checksum.
    NoChecksum,
    /// The checksum does not match (a corrupted line).
    BadChecksum {
        /// XOR of the sentence.
        computed: u8,
        /// What the line says.
        received: u8,
    },
    /// A field could not be read.
    BadField(&'static str),
}

impl core::fmt::Display for NmeaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NmeaError::NoStart => f.write_str("not an NMEA sentence (no '$')"),
            NmeaError::NoChecksum => f.write_str("no '*HH' checksum"),
            NmeaError::BadChecksum { computed, received } => write!(
                f,
                "checksum mismatch: computed {computed:02X}, line says {received:02X}"
            ),
            NmeaError::BadField(name) => write!(f, "unreadable field: {name}"),
        }
    }
}

/// A GGA sentence: a fix with altitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gga {
    /// UTC seconds since midnight.
    pub time_s: Option<f64>,
    /// Decimal degrees, north positive.
    pub latitude: Option<f64>,
    /// Decimal degrees, east positive.
    pub longitude: Option<f64>,
    /// 0 no fix, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, ...
    pub quality: u8,
    /// Satellites used.
    pub satellites: Option<u8>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Altitude above mean sea level, metres.
    pub altitude_m: Option<f64>,
}

/// An RMC sentence: the recommended minimum (position, speed, course, date).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rmc {
    /// UTC seconds since midnight.
    pub time_s: Option<f64>,
    /// `A` valid, `V` warning.
    pub valid: bool,
    /// Decimal degrees, north positive.
    pub latitude: Option<f64>,
    /// Decimal degrees, east positive.
    pub longitude: Option<f64>,
    /// Speed over ground, knots.
    pub speed_knots: Option<f64>,
    /// Course over ground, degrees true.
    pub course_deg: Option<f64>,
    /// (day, month, two-digit year).
    pub date: Option<(u8, u8, u8)>,
}

/// A checked sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sentence<'a> {
    /// GGA (any talker: GP, GN, GL, ...).
    Gga(Gga),
    /// RMC.
    Rmc(Rmc),
    /// Valid, of another type (the type, e.g. `GSV`).
    Other(&'a str),
}

/// XOR of the bytes.
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |a, b| a ^ b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Checks and parses one line (trailing `\r\n` allowed).
pub fn parse(line: &str) -> Result<Sentence<'_>, NmeaError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let body = line
        .strip_prefix('$')
        .or_else(|| line.strip_prefix('!'))
        .ok_or(NmeaError::NoStart)?;
    let (body, sum) = body.rsplit_once('*').ok_or(NmeaError::NoChecksum)?;
    let sb = sum.as_bytes();
    let received = match (
        sb.len(),
        sb.first().and_then(|b| hex(*b)),
        sb.get(1).and_then(|b| hex(*b)),
    ) {
        (2, Some(h), Some(l)) => h << 4 | l,
        _ => return Err(NmeaError::NoChecksum),
    };
    let computed = checksum(body.as_bytes());
    if computed != received {
        return Err(NmeaError::BadChecksum { computed, received });
    }
    let mut fields = body.split(',');
    let address = fields.next().unwrap_or_default();
    let kind = address.get(2..).unwrap_or(address);
    let mut f = Fields(fields);
    match kind {
        "GGA" => {
            let time_s = f.time()?;
            let latitude = f.coord("latitude", 2, 'N', 'S')?;
            let longitude = f.coord("longitude", 3, 'E', 'W')?;
            let quality = f.number::<u8>("quality")?.unwrap_or(0);
            let satellites = f.number("satellites")?;
            let hdop = f.number("hdop")?;
            let altitude_m = f.number("altitude")?;
            Ok(Sentence::Gga(Gga {
                time_s,
                latitude,
                longitude,
                quality,
                satellites,
                hdop,
                altitude_m,
            }))
        }
        "RMC" => {
            let time_s = f.time()?;
            let valid = f.next() == "A";
            let latitude = f.coord("latitude", 2, 'N', 'S')?;
            let longitude = f.coord("longitude", 3, 'E', 'W')?;
            let speed_knots = f.number("speed")?;
            let course_deg = f.number("course")?;
            let date = match f.next() {
                "" => None,
                d if d.len() == 6 && d.bytes().all(|b| b.is_ascii_digit()) => {
                    let n = |i: usize| d[i..i + 2].parse::<u8>().unwrap_or(0);
                    Some((n(0), n(2), n(4)))
                }
                _ => return Err(NmeaError::BadField("date")),
            };
            Ok(Sentence::Rmc(Rmc {
                time_s,
                valid,
                latitude,
                longitude,
                speed_knots,
                course_deg,
                date,
            }))
        }
        other => Ok(Sentence::Other(other)),
    }
}

struct Fields<'a>(core::str::Split<'a, char>);

impl<'a> Fields<'a> {
    fn next(&mut self) -> &'a str {
        self.0.next().unwrap_or_default()
    }

    fn number<T: core::str::FromStr>(
        &mut self,
        name: &'static str,
    ) -> Result<Option<T>, NmeaError> {
        match self.next() {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|_| NmeaError::BadField(name)),
        }
    }

    /// `hhmmss.ss` as seconds since midnight.
    fn time(&mut self) -> Result<Option<f64>, NmeaError> {
        let t = self.next();
        if t.is_empty() {
            return Ok(None);
        }
        let bad = NmeaError::BadField("time");
        if t.len() < 6 || !t.is_char_boundary(6) {
            return Err(bad);
        }
        let h: u32 = t[0..2].parse().map_err(|_| bad)?;
        let m: u32 = t[2..4].parse().map_err(|_| bad)?;
        let s: f64 = t[4..].parse().map_err(|_| bad)?;
        if h > 23 || m > 59 || !(0.0..61.0).contains(&s) {
            return Err(bad);
        }
        Ok(Some(f64::from(h * 3600 + m * 60) + s))
    }

    /// `(d)ddmm.mmmm` and a hemisphere as signed decimal degrees.
    fn coord(
        &mut self,
        name: &'static str,
        degree_digits: usize,
        positive: char,
        negative: char,
    ) -> Result<Option<f64>, NmeaError> {
        let v = self.next();
        let h = self.next();
        if v.is_empty() && h.is_empty() {
            return Ok(None);
        }
        let bad = NmeaError::BadField(name);
        if v.len() <= degree_digits || !v.is_char_boundary(degree_digits) {
            return Err(bad);
        }
        let deg: f64 = v[..degree_digits].parse().map_err(|_| bad)?;
        let min: f64 = v[degree_digits..].parse().map_err(|_| bad)?;
        if !(0.0..60.0).contains(&min) {
            return Err(bad);
        }
        let value = deg + min / 60.0;
        let limit = if degree_digits == 2 { 90.0 } else { 180.0 };
        if value > limit {
            return Err(bad);
        }
        match h.chars().next() {
            Some(c) if c == positive => Ok(Some(value)),
            Some(c) if c == negative => Ok(Some(-value)),
            _ => Err(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a u-blox NEO-6M log and the classic examples of the NMEA reference.
    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
    const RMC: &str = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
    const GNGGA: &str =
        "$GNGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*45\r\n";
    const NO_FIX: &str = "$GPGGA,,,,,,0,00,99.99,,,,,,*48";

    #[test]
    fn parses_gga() {
        let Ok(Sentence::Gga(g)) = parse(GGA) else {
            panic!("{:?}", parse(GGA))
        };
        assert_eq!(g.time_s, Some(12.0 * 3600.0 + 35.0 * 60.0 + 19.0));
        assert!((g.latitude.expect("lat") - (48.0 + 7.038 / 60.0)).abs() < 1e-9);
        assert!((g.longitude.expect("lon") - (11.0 + 31.0 / 60.0)).abs() < 1e-9);
        assert_eq!((g.quality, g.satellites), (1, Some(8)));
        assert_eq!((g.hdop, g.altitude_m), (Some(0.9), Some(545.4)));
        let Ok(Sentence::Gga(g)) = parse(GNGGA) else {
            panic!("{:?}", parse(GNGGA))
        };
        assert!((g.latitude.expect("lat") - 47.285233).abs() < 1e-6);
    }

    #[test]
    fn parses_rmc_and_no_fix() {
        let Ok(Sentence::Rmc(r)) = parse(RMC) else {
            panic!("{:?}", parse(RMC))
        };
        assert!(r.valid);
        assert_eq!(r.speed_knots, Some(22.4));
        assert_eq!(r.date, Some((23, 3, 94)));
        let Ok(Sentence::Gga(g)) = parse(NO_FIX) else {
            panic!("{:?}", parse(NO_FIX))
        };
        assert_eq!((g.latitude, g.quality, g.time_s), (None, 0, None));
        assert_eq!(parse("$GPGSV,1,1,00*79"), Ok(Sentence::Other("GSV")));
    }

    #[test]
    fn corrupted_lines_are_refused() {
        // One changed digit: the checksum no longer matches.
        let bad = GGA.replace("4807.038", "4807.039");
        assert!(matches!(parse(&bad), Err(NmeaError::BadChecksum { .. })));
        assert_eq!(parse("GPGGA,1*00"), Err(NmeaError::NoStart));
        assert_eq!(parse("$GPGGA,1"), Err(NmeaError::NoChecksum));
        assert_eq!(parse("$GPGGA,1*4"), Err(NmeaError::NoChecksum));
        // Valid checksum over nonsense fields.
        let body = "GPGGA,99x519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,";
        let line = format!("${body}*{:02X}", checksum(body.as_bytes()));
        assert_eq!(parse(&line), Err(NmeaError::BadField("time")));
        let body = "GPGGA,123519,9907.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,";
        let line = format!("${body}*{:02X}", checksum(body.as_bytes()));
        assert_eq!(parse(&line), Err(NmeaError::BadField("latitude")));
    }
}
