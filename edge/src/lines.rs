//! Text lines from a serial device turned into readings (`format` of a `[[serial]]`
//! section with `framing = "lines"`): each good line becomes one [`Reading`] event in
//! CBOR instead of the raw line. A line that is not in the format is rejected and
//! counted like a bad frame, and nothing is stored for it.
//!
//! - `nmea`: NMEA 0183 from a GPS receiver, checksum checked. GGA sentences give
//!   `latitude`, `longitude` (degrees), `altitude` (m), `satellites` and `hdop`; RMC
//!   sentences `latitude`, `longitude`, `speed` (m/s) and `course` (degrees). Without a
//!   fix the reading carries [`Quality::NO_FIX`]. Other sentences are skipped.
//! - `json`: one object per line; each number (and boolean, as 0 or 1) at the top
//!   level is a value, with its unit from `units = { temperature = "Cel" }`.
//! - `csv`: comma-separated numbers, named by `columns = ["temperature:Cel",
//!   "humidity:%RH", ""]` (`name:unit`; an empty name skips the column). A line with
//!   another number of fields, or a field that is not a number, is rejected.

use std::collections::BTreeMap;

use tributary::reading::{Quality, Reading, Value};
use tributary_adapters::framing::FrameError;
use tributary_adapters::serial::nmea::{self, NmeaError, Sentence};

/// Metres per second in a knot.
const KNOT: f64 = 1852.0 / 3600.0;

/// How lines become readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    /// NMEA 0183.
    Nmea,
    /// A JSON object per line; units by value name.
    Json {
        /// Unit of each named value (others have none).
        units: BTreeMap<String, String>,
    },
    /// Comma-separated numbers.
    Csv {
        /// Per column: its value's name and unit, or `None` to skip it.
        columns: Vec<Option<(String, String)>>,
    },
}

impl LineFormat {
    /// The format's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            LineFormat::Nmea => "nmea",
            LineFormat::Json { .. } => "json",
            LineFormat::Csv { .. } => "csv",
        }
    }

    /// The reading of `sensor` in `line`; `None` for a line to skip (an NMEA
    /// sentence without a position).
    pub fn reading(&self, sensor: &str, line: &[u8]) -> Result<Option<Reading>, FrameError> {
        let text = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
        let (values, quality) = match self {
            LineFormat::Nmea => match nmea_values(text)? {
                Some(v) => v,
                None => return Ok(None),
            },
            LineFormat::Json { units } => (json_values(text, units)?, Quality::GOOD),
            LineFormat::Csv { columns } => (csv_values(text, columns)?, Quality::GOOD),
        };
        Ok(Some(Reading::now(sensor, values, quality)))
    }
}

fn nmea_values(text: &str) -> Result<Option<(Vec<Value>, Quality)>, FrameError> {
    let sentence = nmea::parse(text).map_err(|e| match e {
        NmeaError::BadChecksum { .. } => FrameError::BadChecksum,
        _ => FrameError::Malformed,
    })?;
    let mut values = Vec::new();
    let mut push = |name: &str, v: Option<f64>, unit: &str| {
        if let Some(v) = v {
            values.push(Value::new(name, v, unit));
        }
    };
    let fix = match sentence {
        Sentence::Gga(g) => {
            push("latitude", g.latitude, "deg");
            push("longitude", g.longitude, "deg");
            push("altitude", g.altitude_m, "m");
            push("satellites", g.satellites.map(f64::from), "1");
            push("hdop", g.hdop, "1");
            g.quality != 0
        }
        Sentence::Rmc(r) => {
            push("latitude", r.latitude, "deg");
            push("longitude", r.longitude, "deg");
            push("speed", r.speed_knots.map(|k| k * KNOT), "m/s");
            push("course", r.course_deg, "deg");
            r.valid
        }
        Sentence::Other(_) => return Ok(None),
    };
    let quality = if fix { Quality::GOOD } else { Quality::NO_FIX };
    Ok(Some((values, quality)))
}

fn json_values(text: &str, units: &BTreeMap<String, String>) -> Result<Vec<Value>, FrameError> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(text) else {
        return Err(FrameError::Malformed);
    };
    let values: Vec<Value> = fields
        .iter()
        .filter_map(|(name, v)| {
            let n = match v {
                serde_json::Value::Number(n) => n.as_f64()?,
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                _ => return None,
            };
            let unit = units.get(name).map_or("", String::as_str);
            Some(Value::new(name, n, unit))
        })
        .collect();
    if values.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(values)
}

fn csv_values(text: &str, columns: &[Option<(String, String)>]) -> Result<Vec<Value>, FrameError> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if fields.len() != columns.len() {
        return Err(FrameError::Malformed);
    }
    let mut values = Vec::new();
    for (field, column) in fields.iter().zip(columns) {
        let Some((name, unit)) = column else { continue };
        let v: f64 = field.parse().map_err(|_| FrameError::Malformed)?;
        if !v.is_finite() {
            return Err(FrameError::Malformed);
        }
        values.push(Value::new(name, v, unit));
    }
    Ok(values)
}

/// Parses a `columns` entry: `name:unit`, `name`, or empty (skip the column).
pub fn column(spec: &str) -> Option<(String, String)> {
    let (name, unit) = spec.split_once(':').unwrap_or((spec, ""));
    let name = name.trim();
    (!name.is_empty()).then(|| (name.to_string(), unit.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmea_fixes_become_readings_and_bad_sentences_do_not() {
        let gga = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let r = LineFormat::Nmea
            .reading("gps", gga)
            .expect("good")
            .expect("a fix");
        assert!((r.value("latitude").expect("lat") - 48.1173).abs() < 1e-4);
        assert!((r.value("longitude").expect("lon") - 11.516_667).abs() < 1e-4);
        assert_eq!(r.value("altitude"), Some(545.4));
        assert_eq!(r.value("satellites"), Some(8.0));
        assert_eq!(r.quality, Quality::GOOD);
        let rmc = b"$GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*7D";
        let r = LineFormat::Nmea.reading("gps", rmc).expect("good");
        let r = r.expect("a reading");
        assert_eq!(r.quality, Quality::NO_FIX);
        assert!((r.value("speed").expect("speed") - 22.4 * KNOT).abs() < 1e-9);
        let mut bad = gga.to_vec();
        bad[10] = b'9';
        assert_eq!(
            LineFormat::Nmea.reading("gps", &bad),
            Err(FrameError::BadChecksum)
        );
        assert_eq!(
            LineFormat::Nmea.reading("gps", b"hello"),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn json_and_csv_lines() {
        let units = BTreeMap::from([("t".to_string(), "Cel".to_string())]);
        let f = LineFormat::Json { units };
        let r = f
            .reading(
                "probe",
                br#"{"t": 21.5, "ok": true, "id": "x", "n": {"a": 1}}"#,
            )
            .expect("good")
            .expect("reading");
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[1], Value::new("t", 21.5, "Cel"));
        assert_eq!(r.value("ok"), Some(1.0));
        for bad in [&b"[1,2]"[..], b"{\"id\": \"x\"}", b"{not json"] {
            assert_eq!(f.reading("p", bad), Err(FrameError::Malformed));
        }
        let f = LineFormat::Csv {
            columns: ["t:Cel", "", "rh:%RH"].iter().map(|c| column(c)).collect(),
        };
        let r = f.reading("p", b"21.5, 7 ,40").expect("good").expect("r");
        assert_eq!(
            r.values,
            [Value::new("t", 21.5, "Cel"), Value::new("rh", 40.0, "%RH")]
        );
        for bad in [&b"1,2"[..], b"1,2,3,4", b"a,b,c", b"1,2,NaN"] {
            assert_eq!(f.reading("p", bad), Err(FrameError::Malformed), "{bad:?}");
        }
    }
}
