//! Polled devices: each `[[sensor]]` is read on a schedule and each good read becomes
//! one event, a [`Reading`] in CBOR (see [`tributary::reading`]), keyed by the sensor's
//! id. The drivers are those of [`tributary_adapters`]; here they bind to Linux buses
//! (linux-embedded-hal: `/dev/i2c-N`, GPIO character devices) and to serial lines
//! (Modbus RTU over tokio-serial).
//!
//! ```toml
//! [[sensor]]
//! id = "boiler-room"            # the reading's sensor id and the event's routing key
//! driver = "sht3x"              # sht3x, ads1115, pulse or modbus
//! stream = "plant/sensors"
//! every_ms = 10000              # poll interval
//! bus = "/dev/i2c-1"            # sht3x and ads1115
//! address = 0x44
//!
//! [[sensor]]
//! id = "tank-level"
//! driver = "ads1115"
//! stream = "plant/sensors"
//! bus = "/dev/i2c-1"
//! address = 0x48
//! inputs = ["a0", "diff23"]     # a0..a3, diff01, diff03, diff13, diff23
//! range_v = 4.096               # 6.144, 4.096, 2.048, 1.024, 0.512 or 0.256
//!
//! [[sensor]]
//! id = "water-meter"
//! driver = "pulse"
//! stream = "plant/sensors"
//! chip = "/dev/gpiochip0"
//! line = 17
//! per_pulse = 0.5               # litres per pulse
//! unit = "L"                    # values: "pulses" (total) and "rate" (L/s)
//! debounce_ms = 5
//!
//! [[sensor]]
//! id = "flow-meter-1"
//! driver = "modbus"
//! stream = "plant/sensors"
//! port = "/dev/ttyUSB0"         # slaves on one port share it (same baud)
//! baud = 9600
//! slave = 1
//! timeout_ms = 500
//! [[sensor.register]]
//! name = "flow"
//! table = "holding"             # or "input"
//! address = 0                   # 0-based register address
//! type = "u16"                  # u16, i16, u32, i32, f32 (32-bit: high word first)
//! scale = 0.1
//! unit = "L/s"
//! ```
//!
//! A device that fails (absent, not answering, a bad CRC) stores nothing for that poll:
//! the failure is counted and shown in `status` and `/metrics`, and the device is
//! tried again at its next poll; the other sources go on. A Modbus read that times out
//! or arrives corrupted is repeated once at once; a reading that needed it carries the
//! [`Quality::RETRIED`] flag, one with an exception reply is not stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use toml::Spanned;
use tributary::node::config::Validator;
use tributary::reading::{from_f32, scaled, Quality, Reading, Value};
use tributary_adapters::sensors::ads1115::{Input, Range};
use tributary_adapters::serial::modbus::{Function, ModbusError};

use crate::config::{stream_ref, StreamSpec};
use crate::local::LocalStream;
use crate::modbus::{ModbusLine, PollError};

/// One polled device.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    /// Sensor id: in each reading, and the routing key of its events.
    pub id: String,
    /// Index into the configured streams.
    pub stream: usize,
    /// Poll interval.
    pub every: Duration,
    /// The driver and where the device is.
    pub device: Device,
}

/// A driver and its device.
#[derive(Debug, Clone, PartialEq)]
pub enum Device {
    /// A sensor on an I2C bus.
    I2c(I2cSensor),
    /// Pulses on a GPIO line.
    Pulse(PulseLine),
    /// A Modbus RTU slave.
    Modbus(ModbusSlave),
}

/// A sensor on an I2C bus.
#[derive(Debug, Clone, PartialEq)]
pub struct I2cSensor {
    /// `/dev/i2c-N`.
    pub bus: PathBuf,
    /// 7-bit address.
    pub address: u8,
    /// Which sensor.
    pub chip: I2cChip,
}

/// The I2C sensors there are drivers for.
#[derive(Debug, Clone, PartialEq)]
pub enum I2cChip {
    /// Sensirion SHT3x temperature and humidity (0x44 or 0x45).
    Sht3x,
    /// TI ADS1115 ADC (0x48 to 0x4B).
    Ads1115 {
        /// The inputs measured, with their value names.
        inputs: Vec<(String, Input)>,
        /// Full-scale range.
        range: Range,
    },
}

/// Pulses on a GPIO line.
#[derive(Debug, Clone, PartialEq)]
pub struct PulseLine {
    /// `/dev/gpiochipN`.
    pub chip: PathBuf,
    /// Line offset on the chip.
    pub line: u32,
    /// Quantity per pulse.
    pub per_pulse: f64,
    /// Its unit.
    pub unit: String,
    /// Edges closer than this to the last counted one are bounce.
    pub debounce_ms: u64,
}

/// A Modbus RTU slave.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusSlave {
    /// The serial port.
    pub port: PathBuf,
    /// Its speed.
    pub baud: u32,
    /// Slave address (1 to 247).
    pub slave: u8,
    /// How long to wait for an answer.
    pub timeout: Duration,
    /// What to read.
    pub registers: Vec<Register>,
}

impl Device {
    /// The driver's name, as configured.
    pub fn driver(&self) -> &'static str {
        match self {
            Device::I2c(I2cSensor {
                chip: I2cChip::Sht3x,
                ..
            }) => "sht3x",
            Device::I2c(_) => "ads1115",
            Device::Pulse(_) => "pulse",
            Device::Modbus(_) => "modbus",
        }
    }

    /// Where the device is, for status and logs.
    pub fn location(&self) -> String {
        match self {
            Device::I2c(i) => format!("{}@{:#04x}", i.bus.display(), i.address),
            Device::Pulse(p) => format!("{}:{}", p.chip.display(), p.line),
            Device::Modbus(m) => format!("{}#{}", m.port.display(), m.slave),
        }
    }
}

/// One value read from Modbus registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// The value's name.
    pub name: String,
    /// Holding or input registers.
    pub function: Function,
    /// 0-based address of the (first) register.
    pub address: u16,
    /// How the register(s) encode the value.
    pub kind: RegisterKind,
    /// Multiplier applied to the raw value.
    pub scale: f64,
    /// Unit of the scaled value.
    pub unit: String,
}

/// How registers encode a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterKind {
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, high word first, unsigned.
    U32,
    /// Two registers, high word first, two's complement.
    I32,
    /// Two registers, high word first, IEEE 754 single.
    F32,
}

impl RegisterKind {
    /// Registers taken.
    pub fn count(self) -> u16 {
        match self {
            RegisterKind::U16 | RegisterKind::I16 => 1,
            _ => 2,
        }
    }

    /// The raw value of `regs` (as many as [`count`](Self::count)).
    pub fn decode(self, regs: &[u16]) -> f64 {
        let wide = || (u32::from(regs[0]) << 16) | u32::from(regs[1]);
        match self {
            RegisterKind::U16 => f64::from(regs[0]),
            RegisterKind::I16 => f64::from(regs[0] as i16),
            RegisterKind::U32 => f64::from(wide()),
            RegisterKind::I32 => f64::from(wide() as i32),
            RegisterKind::F32 => f64::from(f32::from_bits(wide())),
        }
    }
}

/// `[[sensor]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSensor {
    id: Spanned<String>,
    driver: Spanned<String>,
    stream: Spanned<String>,
    every_ms: Option<Spanned<u64>>,
    bus: Option<Spanned<PathBuf>>,
    address: Option<Spanned<u8>>,
    inputs: Option<Spanned<Vec<String>>>,
    range_v: Option<Spanned<f64>>,
    chip: Option<Spanned<PathBuf>>,
    line: Option<Spanned<u32>>,
    per_pulse: Option<Spanned<f64>>,
    unit: Option<Spanned<String>>,
    debounce_ms: Option<Spanned<u64>>,
    port: Option<Spanned<PathBuf>>,
    baud: Option<Spanned<u32>>,
    slave: Option<Spanned<u8>>,
    timeout_ms: Option<Spanned<u64>>,
    register: Option<Spanned<Vec<Spanned<RawRegister>>>>,
}

/// `[[sensor.register]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegister {
    name: Spanned<String>,
    table: Option<Spanned<String>>,
    address: Spanned<u16>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    scale: Option<f64>,
    unit: Option<String>,
}

/// The keys each driver takes besides `id`, `driver`, `stream` and `every_ms`.
const DRIVER_KEYS: [(&str, &[&str]); 4] = [
    ("sht3x", &["bus", "address"]),
    ("ads1115", &["bus", "address", "inputs", "range_v"]),
    (
        "pulse",
        &["chip", "line", "per_pulse", "unit", "debounce_ms"],
    ),
    (
        "modbus",
        &["port", "baud", "slave", "timeout_ms", "register"],
    ),
];

/// Validates the `[[sensor]]` sections.
pub fn parse(
    v: &mut Validator<'_>,
    raw: Vec<Spanned<RawSensor>>,
    streams: &[StreamSpec],
) -> Vec<SensorSpec> {
    let mut out: Vec<SensorSpec> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let at = s.span().start;
        let s = s.into_inner();
        if let Some(spec) = sensor(v, i, at, s, streams) {
            if out.iter().any(|o| o.id == spec.id) {
                v.error::<()>(
                    &format!("sensor[{i}].id"),
                    at,
                    format!("{:?} is the id of another sensor", spec.id),
                );
                continue;
            }
            out.push(spec);
        }
    }
    // Slaves on one port share the line, so its speed.
    let mut bauds: BTreeMap<&PathBuf, u32> = BTreeMap::new();
    for s in &out {
        if let Device::Modbus(ModbusSlave { port, baud, .. }) = &s.device {
            if *bauds.entry(port).or_insert(*baud) != *baud {
                v.error::<()>(
                    "sensor.baud",
                    0,
                    format!(
                        "the Modbus sensors on {} ask for different baud rates",
                        port.display()
                    ),
                );
            }
        }
    }
    out
}

fn sensor(
    v: &mut Validator<'_>,
    i: usize,
    at: usize,
    s: RawSensor,
    streams: &[StreamSpec],
) -> Option<SensorSpec> {
    let key = |k: &str| format!("sensor[{i}].{k}");
    let stream = stream_ref(v, &key("stream"), &s.stream, streams);
    let id = s.id.get_ref().clone();
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        v.error::<()>(
            &key("id"),
            s.id.span().start,
            "must be 1 to 128 printable characters".into(),
        );
    }
    let driver = s.driver.get_ref().as_str();
    let Some((_, allowed)) = DRIVER_KEYS.iter().find(|(d, _)| *d == driver) else {
        return v.error(
            &key("driver"),
            s.driver.span().start,
            format!("{driver:?}: expected \"sht3x\", \"ads1115\", \"pulse\" or \"modbus\""),
        );
    };
    let given = [
        ("bus", s.bus.as_ref().map(|x| x.span().start)),
        ("address", s.address.as_ref().map(|x| x.span().start)),
        ("inputs", s.inputs.as_ref().map(|x| x.span().start)),
        ("range_v", s.range_v.as_ref().map(|x| x.span().start)),
        ("chip", s.chip.as_ref().map(|x| x.span().start)),
        ("line", s.line.as_ref().map(|x| x.span().start)),
        ("per_pulse", s.per_pulse.as_ref().map(|x| x.span().start)),
        ("unit", s.unit.as_ref().map(|x| x.span().start)),
        (
            "debounce_ms",
            s.debounce_ms.as_ref().map(|x| x.span().start),
        ),
        ("port", s.port.as_ref().map(|x| x.span().start)),
        ("baud", s.baud.as_ref().map(|x| x.span().start)),
        ("slave", s.slave.as_ref().map(|x| x.span().start)),
        ("timeout_ms", s.timeout_ms.as_ref().map(|x| x.span().start)),
        ("register", s.register.as_ref().map(|x| x.span().start)),
    ];
    let mut ok = true;
    for (k, pos) in given {
        if let Some(pos) = pos.filter(|_| !allowed.contains(&k)) {
            v.error::<()>(&key(k), pos, format!("not a key of the {driver} driver"));
            ok = false;
        }
    }
    let every = Duration::from_millis(v.within(
        &key("every_ms"),
        s.every_ms.as_ref(),
        100..=86_400_000,
        10_000,
    ));
    let mut required = |v: &mut Validator<'_>, k: &str, present: bool| {
        if !present {
            v.error::<()>(
                &key(k),
                at,
                format!("missing: the {driver} driver needs it"),
            );
            ok = false;
        }
    };
    let device = match driver {
        "sht3x" | "ads1115" => {
            required(v, "bus", s.bus.is_some());
            let bus = s.bus.as_ref().and_then(|b| v.path(&key("bus"), b));
            let (default, addresses) = if driver == "sht3x" {
                (0x44, 0x44..=0x45)
            } else {
                (0x48, 0x48..=0x4B)
            };
            let address = match &s.address {
                None => default,
                Some(a) if addresses.contains(a.get_ref()) => *a.get_ref(),
                Some(a) => {
                    v.error::<()>(
                        &key("address"),
                        a.span().start,
                        format!(
                            "{:#04x}: the {driver} answers at {:#04x} to {:#04x}",
                            a.get_ref(),
                            addresses.start(),
                            addresses.end()
                        ),
                    );
                    default
                }
            };
            let chip = if driver == "sht3x" {
                I2cChip::Sht3x
            } else {
                I2cChip::Ads1115 {
                    inputs: ads_inputs(v, &key("inputs"), s.inputs.as_ref()),
                    range: ads_range(v, &key("range_v"), s.range_v.as_ref()),
                }
            };
            Device::I2c(I2cSensor {
                bus: bus.unwrap_or_default(),
                address,
                chip,
            })
        }
        "pulse" => {
            required(v, "chip", s.chip.is_some());
            required(v, "line", s.line.is_some());
            let per_pulse = match &s.per_pulse {
                Some(p) if !(p.get_ref().is_finite() && *p.get_ref() > 0.0) => {
                    v.error::<()>(
                        &key("per_pulse"),
                        p.span().start,
                        "must be a number above 0".into(),
                    );
                    1.0
                }
                Some(p) => *p.get_ref(),
                None => 1.0,
            };
            Device::Pulse(PulseLine {
                chip: s
                    .chip
                    .as_ref()
                    .and_then(|c| v.path(&key("chip"), c))
                    .unwrap_or_default(),
                line: s.line.as_ref().map_or(0, |l| *l.get_ref()),
                per_pulse,
                unit: s
                    .unit
                    .as_ref()
                    .map_or_else(|| "1".into(), |u| u.get_ref().clone()),
                debounce_ms: v.within(&key("debounce_ms"), s.debounce_ms.as_ref(), 0..=10_000, 5),
            })
        }
        _ => {
            required(v, "port", s.port.is_some());
            required(v, "slave", s.slave.is_some());
            let registers = modbus_registers(v, i, at, s.register);
            Device::Modbus(ModbusSlave {
                port: s
                    .port
                    .as_ref()
                    .and_then(|p| v.path(&key("port"), p))
                    .unwrap_or_default(),
                baud: v.within(&key("baud"), s.baud.as_ref(), 300..=4_000_000, 9600),
                slave: v.within(&key("slave"), s.slave.as_ref(), 1..=247, 1),
                timeout: Duration::from_millis(v.within(
                    &key("timeout_ms"),
                    s.timeout_ms.as_ref(),
                    10..=60_000,
                    500,
                )),
                registers,
            })
        }
    };
    ok.then_some(SensorSpec {
        id,
        stream: stream?,
        every,
        device,
    })
}

fn ads_inputs(
    v: &mut Validator<'_>,
    key: &str,
    raw: Option<&Spanned<Vec<String>>>,
) -> Vec<(String, Input)> {
    let Some(raw) = raw else {
        return vec![("a0".into(), Input::A0)];
    };
    let mut out = Vec::new();
    for name in raw.get_ref() {
        let input = match name.as_str() {
            "a0" => Input::A0,
            "a1" => Input::A1,
            "a2" => Input::A2,
            "a3" => Input::A3,
            "diff01" => Input::Diff01,
            "diff03" => Input::Diff03,
            "diff13" => Input::Diff13,
            "diff23" => Input::Diff23,
            other => {
                v.error::<()>(
                    key,
                    raw.span().start,
                    format!("{other:?}: expected a0..a3, diff01, diff03, diff13 or diff23"),
                );
                continue;
            }
        };
        out.push((name.clone(), input));
    }
    if raw.get_ref().is_empty() {
        v.error::<()>(key, raw.span().start, "name at least one input".into());
    }
    out
}

fn ads_range(v: &mut Validator<'_>, key: &str, raw: Option<&Spanned<f64>>) -> Range {
    let Some(raw) = raw else {
        return Range::V2_048;
    };
    let ranges = [
        Range::V6_144,
        Range::V4_096,
        Range::V2_048,
        Range::V1_024,
        Range::V0_512,
        Range::V0_256,
    ];
    match ranges
        .into_iter()
        .find(|r| (f64::from(r.volts()) - raw.get_ref()).abs() < 1e-6)
    {
        Some(r) => r,
        None => {
            v.error::<()>(
                key,
                raw.span().start,
                "must be 6.144, 4.096, 2.048, 1.024, 0.512 or 0.256".into(),
            );
            Range::V2_048
        }
    }
}

fn modbus_registers(
    v: &mut Validator<'_>,
    i: usize,
    at: usize,
    raw: Option<Spanned<Vec<Spanned<RawRegister>>>>,
) -> Vec<Register> {
    let raw = raw.map(Spanned::into_inner).unwrap_or_default();
    if raw.is_empty() {
        v.error::<()>(
            &format!("sensor[{i}].register"),
            at,
            "at least one [[sensor.register]] is needed".into(),
        );
    }
    let mut out = Vec::new();
    for (j, r) in raw.into_iter().enumerate() {
        let r = r.into_inner();
        let key = |k: &str| format!("sensor[{i}].register[{j}].{k}");
        let function = match r.table.as_ref().map(|t| (t.get_ref().as_str(), t)) {
            None | Some(("holding", _)) => Function::ReadHolding,
            Some(("input", _)) => Function::ReadInput,
            Some((other, t)) => {
                v.error::<()>(
                    &key("table"),
                    t.span().start,
                    format!("{other:?}: expected \"holding\" or \"input\""),
                );
                continue;
            }
        };
        let kind = match r.kind.as_ref().map(|t| (t.get_ref().as_str(), t)) {
            None | Some(("u16", _)) => RegisterKind::U16,
            Some(("i16", _)) => RegisterKind::I16,
            Some(("u32", _)) => RegisterKind::U32,
            Some(("i32", _)) => RegisterKind::I32,
            Some(("f32", _)) => RegisterKind::F32,
            Some((other, t)) => {
                v.error::<()>(
                    &key("type"),
                    t.span().start,
                    format!("{other:?}: expected u16, i16, u32, i32 or f32"),
                );
                continue;
            }
        };
        if u32::from(*r.address.get_ref()) + u32::from(kind.count()) > 0x1_0000 {
            v.error::<()>(
                &key("address"),
                r.address.span().start,
                "the value runs past register 65535".into(),
            );
            continue;
        }
        let scale = r.scale.unwrap_or(1.0);
        if !scale.is_finite() {
            v.error::<()>(&key("scale"), at, "must be a finite number".into());
            continue;
        }
        out.push(Register {
            name: r.name.into_inner(),
            function,
            address: *r.address.get_ref(),
            kind,
            scale,
            unit: r.unit.unwrap_or_default(),
        });
    }
    out
}

/// A sensor's counters, shared with `status` and `/metrics`.
#[derive(Debug)]
pub struct SensorStats {
    id: String,
    driver: &'static str,
    location: String,
    readings: AtomicU64,
    failures: AtomicU64,
    /// Failures since the last good reading.
    failing: AtomicU64,
    last_reading_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `status` shows of a sensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorStatus {
    /// Sensor id.
    pub id: String,
    /// Driver.
    pub driver: String,
    /// Bus and address, chip and line, or port and slave.
    pub device: String,
    /// Whether the last poll gave a reading (false before the first).
    pub up: bool,
    /// Readings stored.
    pub readings: u64,
    /// Polls that gave no reading.
    pub failures: u64,
    /// Unix milliseconds of the last reading stored, 0 if none yet.
    pub last_reading_ms: u64,
    /// The last failure, while the device is failing.
    pub last_error: Option<String>,
}

impl SensorStats {
    /// Zeroed counters for `spec`.
    pub fn new(spec: &SensorSpec) -> SensorStats {
        SensorStats {
            id: spec.id.clone(),
            driver: spec.device.driver(),
            location: spec.device.location(),
            readings: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            last_reading_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The counters now.
    pub fn status(&self) -> SensorStatus {
        SensorStatus {
            id: self.id.clone(),
            driver: self.driver.into(),
            device: self.location.clone(),
            up: self.failing.load(Ordering::Relaxed) == 0 && self.readings() > 0,
            readings: self.readings.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_reading_ms: self.last_reading_ms.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn stored(&self, r: &Reading) {
        self.readings.fetch_add(1, Ordering::Relaxed);
        self.last_reading_ms.store(r.time_ms, Ordering::Relaxed);
        if self.failing.swap(0, Ordering::Relaxed) > 0 {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // The first failure in a row is logged; the next ones only counted.
        if self.failing.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(sensor = %self.id, device = %self.location, %error, "sensor poll failed; retrying at its next poll");
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn readings(&self) -> u64 {
        self.readings.load(Ordering::Relaxed)
    }
}

/// Starts the pollers of `sensors` on `tasks`; each stops when `stopped` turns true.
/// Returns their counters, in the order of `sensors`.
pub fn spawn(
    sensors: &[SensorSpec],
    streams: &[Arc<LocalStream>],
    stopped: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Vec<Arc<SensorStats>> {
    let stats: Vec<Arc<SensorStats>> = sensors
        .iter()
        .map(|s| Arc::new(SensorStats::new(s)))
        .collect();
    let mut lines: BTreeMap<PathBuf, Vec<(Polled, ModbusSlave)>> = BTreeMap::new();
    for (spec, stats) in sensors.iter().zip(&stats) {
        let polled = Polled {
            id: spec.id.clone(),
            every: spec.every,
            stream: streams[spec.stream].clone(),
            stats: stats.clone(),
        };
        match &spec.device {
            Device::Modbus(m) => lines
                .entry(m.port.clone())
                .or_default()
                .push((polled, m.clone())),
            Device::Pulse(line) => {
                tasks.spawn(linux::pulse(polled, line.clone(), stopped.clone()));
            }
            Device::I2c(sensor) => {
                tasks.spawn(linux::i2c(polled, sensor.clone(), stopped.clone()));
            }
        }
    }
    for (port, slaves) in lines {
        tasks.spawn(modbus_line(port, slaves, stopped.clone()));
    }
    stats
}

/// A sensor's schedule and where its readings go.
struct Polled {
    id: String,
    every: Duration,
    stream: Arc<LocalStream>,
    stats: Arc<SensorStats>,
}

impl Polled {
    /// Stores a reading, or counts the failure.
    async fn record(&self, r: Result<(Vec<Value>, Quality), String>) {
        let (values, quality) = match r {
            Ok(r) => r,
            Err(e) => return self.stats.failed(e),
        };
        let reading = Reading::now(&self.id, values, quality);
        match self
            .stream
            .submit(self.id.as_bytes(), &reading.to_cbor(), None)
            .await
        {
            Ok(_) => self.stats.stored(&reading),
            Err(e) => self.stats.failed(format!("storing the reading: {e}")),
        }
    }
}

/// Polls the Modbus slaves on one port, each on its schedule, one request at a time.
/// The port is opened again after it fails.
/// (The slaves on one port have one baud rate: [`parse`] checks it.)
async fn modbus_line(
    port: PathBuf,
    slaves: Vec<(Polled, ModbusSlave)>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(baud) = slaves.first().map(|(_, m)| m.baud) else {
        return;
    };
    let mut line: Option<ModbusLine> = None;
    let start = tokio::time::Instant::now();
    let mut due: Vec<tokio::time::Instant> = vec![start; slaves.len()];
    loop {
        let Some((next, at)) = due.iter().copied().enumerate().min_by_key(|(_, t)| *t) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (d, slave) = &slaves[next];
        due[next] = at + d.every;
        if due[next] < tokio::time::Instant::now() {
            // Polls that fell behind are skipped, not bunched.
            due[next] = tokio::time::Instant::now() + d.every;
        }
        if line.is_none() {
            match port.to_str().map(|p| ModbusLine::open(p, baud)) {
                Some(Ok(l)) => line = Some(l),
                Some(Err(e)) => {
                    d.record(Err(format!("opening {}: {e}", port.display())))
                        .await;
                    continue;
                }
                None => {
                    d.record(Err("the port's path is not UTF-8".into())).await;
                    continue;
                }
            }
        }
        let Some(l) = line.as_mut() else { continue };
        let r = poll_modbus(l, slave).await;
        if let Err(PollError::Io(_)) = &r {
            line = None;
        }
        d.record(r.map_err(|e| e.to_string())).await;
    }
}

/// Reads every register of one slave; a timeout or a corrupted answer is asked again
/// once.
async fn poll_modbus(
    line: &mut ModbusLine,
    m: &ModbusSlave,
) -> Result<(Vec<Value>, Quality), PollError> {
    let mut values = Vec::with_capacity(m.registers.len());
    let mut quality = Quality::GOOD;
    for r in &m.registers {
        let count = r.kind.count();
        let regs = match line
            .read(m.slave, r.function, r.address, count, m.timeout)
            .await
        {
            Err(e) if retryable(&e) => {
                quality = quality | Quality::RETRIED;
                line.read(m.slave, r.function, r.address, count, m.timeout)
                    .await?
            }
            other => other?,
        };
        let v = scaled(r.kind.decode(&regs), r.scale);
        values.push(Value::new(&r.name, v, &r.unit));
    }
    Ok((values, quality))
}

/// Whether asking again may help: no answer, or a garbled one (not an exception,
/// which the slave would repeat).
fn retryable(e: &PollError) -> bool {
    match e {
        PollError::Timeout(_) => true,
        PollError::Protocol(p) => !matches!(p, ModbusError::Exception(_)),
        PollError::Io(_) => false,
    }
}

/// The Linux bindings: I2C through `/dev/i2c-N`, GPIO through the character device.
/// The drivers block (an I2C transfer, a conversion delay), so they run on tokio's
/// blocking threads.
mod linux {
    use super::*;
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    use linux_embedded_hal::{CdevPin, Delay, I2cdev};
    use tributary_adapters::sensors::ads1115::Ads1115;
    use tributary_adapters::sensors::pulse::{rate, PulseCounter};
    use tributary_adapters::sensors::sht3x::Sht3x;

    /// Polls an I2C sensor; the bus is opened again after any failure.
    pub(super) async fn i2c(p: Polled, sensor: I2cSensor, mut stopped: watch::Receiver<bool>) {
        let mut bus: Option<I2cdev> = None;
        let mut tick = tokio::time::interval(p.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let sensor = sensor.clone();
            let taken = bus.take();
            let r = tokio::task::spawn_blocking(move || {
                let mut i2c = match taken {
                    Some(b) => b,
                    None => I2cdev::new(&sensor.bus)
                        .map_err(|e| format!("opening {}: {e}", sensor.bus.display()))?,
                };
                let r = measure(&mut i2c, &sensor);
                Ok((i2c, r))
            })
            .await;
            let r = match r {
                Ok(Ok((i2c, Ok(values)))) => {
                    bus = Some(i2c);
                    Ok((values, Quality::GOOD))
                }
                Ok(Ok((_, Err(e)))) | Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("the poll failed: {e}")),
            };
            p.record(r).await;
        }
    }

    fn measure(i2c: &mut I2cdev, sensor: &I2cSensor) -> Result<Vec<Value>, String> {
        match &sensor.chip {
            I2cChip::Sht3x => {
                let m = Sht3x::new(&mut *i2c, sensor.address)
                    .measure(&mut Delay)
                    .map_err(|e| e.to_string())?;
                Ok(vec![
                    Value::new("temperature", from_f32(m.temperature_c), "Cel"),
                    Value::new("humidity", from_f32(m.humidity_pct), "%RH"),
                ])
            }
            I2cChip::Ads1115 { inputs, range } => {
                let mut adc = Ads1115::new(&mut *i2c, sensor.address);
                inputs
                    .iter()
                    .map(|(name, input)| {
                        adc.measure(*input, *range, &mut Delay)
                            .map(|volts| Value::new(name, from_f32(volts), "V"))
                            .map_err(|e| format!("{name}: {e}"))
                    })
                    .collect()
            }
        }
    }

    /// Counts pulses on a thread sampling the line every millisecond; every poll
    /// interval stores the total and the rate over the interval.
    pub(super) async fn pulse(p: Polled, pulses: PulseLine, mut stopped: watch::Receiver<bool>) {
        let PulseLine {
            chip,
            line,
            per_pulse,
            unit,
            debounce_ms,
        } = pulses;
        let count = Arc::new(AtomicU64::new(0));
        let error: Arc<Mutex<Option<String>>> =
            Arc::new(Mutex::new(Some("the GPIO line is not open yet".into())));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (count, error, stop) = (count.clone(), error.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("pulse-{}", p.id))
                .spawn(move || sample(&chip, line, debounce_ms, &count, &error, &stop))
        };
        if let Err(e) = &sampler {
            p.record(Err(format!("starting the sampling thread: {e}")))
                .await;
            return;
        }
        let mut tick = tokio::time::interval(p.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        let (mut last_count, mut last_at) = (0u64, Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            // Set while the line is not open (cleared when it opens).
            let failure = error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(e) = failure {
                p.record(Err(e)).await;
                continue;
            }
            let total = count.load(Ordering::Relaxed);
            let ms = last_at.elapsed().as_millis() as u64;
            let values = vec![
                Value::new("pulses", total as f64, "1"),
                Value::new("total", total as f64 * per_pulse, &unit),
                Value::new(
                    "rate",
                    rate(total - last_count, per_pulse, ms),
                    &format!("{unit}/s"),
                ),
            ];
            (last_count, last_at) = (total, Instant::now());
            p.record(Ok((values, Quality::GOOD))).await;
        }
        stop.store(true, Ordering::Relaxed);
    }

    fn sample(
        chip: &std::path::Path,
        line: u32,
        debounce_ms: u64,
        count: &AtomicU64,
        error: &Mutex<Option<String>>,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        let started = Instant::now();
        let mut counter: Option<(PulseCounter<CdevPin>, u64)> = None;
        while !stop.load(Ordering::Relaxed) {
            if counter.is_none() {
                let opened = Chip::new(chip)
                    .and_then(|mut c| c.get_line(line))
                    .and_then(|l| l.request(LineRequestFlags::INPUT, 0, "tributary-edge"))
                    .and_then(CdevPin::new);
                match opened {
                    Ok(pin) => {
                        *error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        counter = Some((
                            PulseCounter::new(pin, debounce_ms),
                            count.load(Ordering::Relaxed),
                        ))
                    }
                    Err(e) => {
                        *error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("opening {} line {line}: {e}", chip.display()));
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            if let Some((c, base)) = counter.as_mut() {
                match c.poll(started.elapsed().as_millis() as u64) {
                    Ok(_) => count.store(*base + c.count(), Ordering::Relaxed),
                    Err(e) => {
                        *error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("reading {} line {line}: {e}", chip.display()));
                        counter = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
