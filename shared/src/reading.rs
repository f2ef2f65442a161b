//! Sensor readings as events: what the edge stores for each poll of a device, and what
//! cloud consumers decode.
//!
//! Encoding: one CBOR map (RFC 8949) per event, with short keys:
//!
//! ```text
//! { "s": sensor id (text),
//!   "t": Unix time in milliseconds (unsigned),
//!   "v": [ { "n": name (text), "v": value (float), "u": unit (text, UCUM-ish: "Cel",
//!            "%RH", "V", "L/s", "kW.h") }, ... ],
//!   "q": quality flags (unsigned; 0 = good; see [`Quality`]) }
//! ```
//!
//! Unknown keys are ignored when decoding, so producers may add fields.

use serde::{Deserialize, Serialize};

/// Quality flags of a reading (bits; 0 = good).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quality(pub u32);

impl Quality {
    /// Good.
    pub const GOOD: Quality = Quality(0);
    /// A value is outside the sensor's rated range.
    pub const OUT_OF_RANGE: Quality = Quality(1);
    /// The device answered after retries (the value is good, the link is not).
    pub const RETRIED: Quality = Quality(1 << 1);
    /// The value is stale: the device did not answer, this is the last known value.
    pub const STALE: Quality = Quality(1 << 2);
    /// The device reports a fault (e.g. an exception from a Modbus slave).
    pub const DEVICE_FAULT: Quality = Quality(1 << 3);
    /// No position fix (GPS).
    pub const NO_FIX: Quality = Quality(1 << 4);

    /// The names of the flags set (`out-of-range`, `retried`, `stale`,
    /// `device-fault`, `no-fix`, or `bit-N` for a flag unknown here).
    pub fn names(self) -> Vec<String> {
        const NAMES: [&str; 5] = ["out-of-range", "retried", "stale", "device-fault", "no-fix"];
        (0..32)
            .filter(|bit| self.0 & (1 << bit) != 0)
            .map(|bit| {
                NAMES
                    .get(bit)
                    .map_or_else(|| format!("bit-{bit}"), |n| n.to_string())
            })
            .collect()
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Quality) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Quality {
    type Output = Quality;
    fn bitor(self, rhs: Quality) -> Quality {
        Quality(self.0 | rhs.0)
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// What it is (`temperature`, `humidity`, `ain0`, `register_40001`).
    #[serde(rename = "n")]
    pub name: String,
    /// The value.
    #[serde(rename = "v")]
    pub value: f64,
    /// Its unit.
    #[serde(rename = "u")]
    pub unit: String,
}

/// One reading of one sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The sensor (as configured on the edge).
    #[serde(rename = "s")]
    pub sensor: String,
    /// When, in Unix milliseconds.
    #[serde(rename = "t")]
    pub time_ms: u64,
    /// The values.
    #[serde(rename = "v")]
    pub values: Vec<Value>,
    /// Quality flags.
    #[serde(rename = "q", default)]
    pub quality: Quality,
}

/// Why bytes are not a reading.
#[derive(Debug, thiserror::Error)]
#[error("not a CBOR reading: {0}")]
pub struct ReadingError(String);

impl Reading {
    /// A reading of `sensor` now.
    pub fn now(sensor: &str, values: Vec<Value>, quality: Quality) -> Reading {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Reading {
            sensor: sensor.to_string(),
            time_ms,
            values,
            quality,
        }
    }

    /// The event payload.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        // Writing into a Vec cannot fail, and every field serializes.
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("a reading always encodes: {e}");
        }
        out
    }

    /// Decodes an event payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Reading, ReadingError> {
        ciborium::from_reader(bytes).map_err(|e| ReadingError(e.to_string()))
    }

    /// The reading as JSON for people and scripts, with long names: `sensor`,
    /// `time_ms`, `values` (`name`, `value`, `unit`), `quality` (flag names).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sensor": self.sensor,
            "time_ms": self.time_ms,
            "values": self.values.iter().map(|v| serde_json::json!({
                "name": v.name, "value": v.value, "unit": v.unit,
            })).collect::<Vec<_>>(),
            "quality": self.quality.names(),
        })
    }

    /// One line for people: `sensor name=value unit ... [flags]`.
    pub fn to_text(&self) -> String {
        let mut s = self.sensor.clone();
        for v in &self.values {
            s.push_str(&format!(" {}={}", v.name, v.value));
            if !v.unit.is_empty() && v.unit != "1" {
                s.push_str(&format!(" {}", v.unit));
            }
        }
        let flags = self.quality.names();
        if !flags.is_empty() {
            s.push_str(&format!(" [{}]", flags.join(",")));
        }
        s
    }

    /// The value named `name`.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|v| v.name == name).map(|v| v.value)
    }
}

/// A value a device gave as an `f32`, as the `f64` nearest its shortest decimal form:
/// 21.7 stays 21.7 (not 21.700000762939453).
pub fn from_f32(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(f64::from(v))
}

/// `raw * scale`, with the decimals of `scale` (a register of 169 scaled by 0.1 is
/// 16.9, not 16.900000000000002). A raw value with decimals of its own (an `f32`
/// register) keeps its precision: the product as its shortest `f32` form.
pub fn scaled(raw: f64, scale: f64) -> f64 {
    if raw.fract() != 0.0 {
        return from_f32((raw * scale) as f32);
    }
    let decimals = format!("{scale}")
        .split_once('.')
        .map_or(0, |(_, d)| d.len().min(15)) as i32;
    let p = 10f64.powi(decimals);
    (raw * scale * p).round() / p
}

impl Value {
    /// A value.
    pub fn new(name: &str, value: f64, unit: &str) -> Value {
        Value {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_the_precision_of_their_source() {
        assert_eq!(format!("{}", scaled(169.0, 0.1)), "16.9");
        assert_eq!(format!("{}", scaled(-5.0, 0.01)), "-0.05");
        assert_eq!(format!("{}", scaled(7.0, 2.5)), "17.5");
        assert_eq!(format!("{}", scaled(1234.0, 1.0)), "1234");
        assert_eq!(format!("{}", scaled(f64::from(12.3456f32), 1.0)), "12.3456");
        assert_eq!(format!("{}", from_f32(21.7)), "21.7");
    }

    #[test]
    fn round_trips_and_ignores_unknown_keys() {
        let r = Reading {
            sensor: "greenhouse-1".into(),
            time_ms: 1_790_000_000_000,
            values: vec![
                Value::new("temperature", 21.5, "Cel"),
                Value::new("humidity", 40.25, "%RH"),
            ],
            quality: Quality::RETRIED,
        };
        let b = r.to_cbor();
        assert_eq!(Reading::from_cbor(&b).expect("decode"), r);
        assert_eq!(r.value("humidity"), Some(40.25));
        // A producer that adds a key: still a reading.
        #[derive(Serialize)]
        struct Extended<'a> {
            s: &'a str,
            t: u64,
            v: Vec<Value>,
            fw: &'a str,
        }
        let mut b = Vec::new();
        ciborium::into_writer(
            &Extended {
                s: "x",
                t: 1,
                v: vec![],
                fw: "1.2",
            },
            &mut b,
        )
        .expect("encode");
        let r = Reading::from_cbor(&b).expect("decode");
        assert_eq!((r.sensor.as_str(), r.quality), ("x", Quality::GOOD));
        assert!(Reading::from_cbor(b"\xff\x00").is_err());
        let r = Reading {
            sensor: "m".into(),
            time_ms: 5,
            values: vec![Value::new("flow", 2.5, "L/s"), Value::new("n", 3.0, "1")],
            quality: Quality::RETRIED | Quality(1 << 9),
        };
        assert_eq!(r.to_text(), "m flow=2.5 L/s n=3 [retried,bit-9]");
        assert_eq!(
            r.to_json().to_string(),
            r#"{"quality":["retried","bit-9"],"sensor":"m","time_ms":5,"values":[{"name":"flow","unit":"L/s","value":2.5},{"name":"n","unit":"1","value":3.0}]}"#
        );
    }
}
