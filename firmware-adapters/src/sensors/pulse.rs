//! Pulse counting on a GPIO input: flow meters (a pulse per so many litres), energy
//! meters (S0 outputs: typically 1000 pulses per kWh), rain gauges.
//!
//! [`PulseCounter::poll`] samples the pin and counts rising edges (low → high). An
//! edge sooner than `debounce_ms` after the last counted one is contact bounce and not
//! counted. Sample at least twice per pulse: an S0 pulse is at least 30 ms long
//! (EN 62053-31), so 10 ms polling suffices. On Linux the edge reads a GPIO character
//! device line through the same `InputPin` trait.

use embedded_hal::digital::InputPin;

/// Counts rising edges of one input.
#[derive(Debug)]
pub struct PulseCounter<P> {
    pin: P,
    debounce_ms: u64,
    level: Option<bool>,
    last_edge_ms: Option<u64>,
    count: u64,
}

impl<P: InputPin> PulseCounter<P> {
    /// A counter on `pin`, ignoring edges closer than `debounce_ms` to the last one.
    pub fn new(pin: P, debounce_ms: u64) -> Self {
        PulseCounter {
            pin,
            debounce_ms,
            level: None,
            last_edge_ms: None,
            count: 0,
        }
    }

    /// Samples the pin at `now_ms` (a monotonic clock); returns whether a pulse was
    /// counted. The first sample only sets the level: a pin found high is not a pulse.
    pub fn poll(&mut self, now_ms: u64) -> Result<bool, P::Error> {
        let high = self.pin.is_high()?;
        let rising = self.level == Some(false) && high;
        self.level = Some(high);
        if !rising {
            return Ok(false);
        }
        if self
            .last_edge_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.debounce_ms)
        {
            return Ok(false);
        }
        self.last_edge_ms = Some(now_ms);
        self.count += 1;
        Ok(true)
    }

    /// Pulses counted since the counter was made.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }
}

/// Pulses over an interval as a rate: `pulses * per_pulse / seconds` (litres per
/// second, with `per_pulse` in litres).
pub fn rate(pulses: u64, per_pulse: f64, interval_ms: u64) -> f64 {
    if interval_ms == 0 {
        return 0.0;
    }
    pulses as f64 * per_pulse * 1000.0 / interval_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use embedded_hal_mock::eh1::MockError;

    fn samples(levels: &[u8]) -> Vec<Transaction> {
        levels
            .iter()
            .map(|l| Transaction::get(if *l == 1 { State::High } else { State::Low }))
            .collect()
    }

    #[test]
    fn counts_rising_edges_only() {
        let levels = [1, 1, 0, 1, 1, 0, 0, 1, 0, 1];
        let mut c = PulseCounter::new(Mock::new(&samples(&levels)), 0);
        for t in 0..levels.len() as u64 {
            c.poll(t * 10).expect("sample");
        }
        // Starting high is not a pulse; then three low → high edges.
        assert_eq!(c.count(), 3);
        c.release().done();
    }

    #[test]
    fn bounces_are_not_counted() {
        // A contact bounce: 0 1 0 1 within 20 ms, then a real pulse 100 ms later.
        let levels = [0, 1, 0, 1, 0, 0, 1];
        let times = [0, 10, 15, 20, 50, 100, 130];
        let mut c = PulseCounter::new(Mock::new(&samples(&levels)), 30);
        for t in times {
            c.poll(t).expect("sample");
        }
        assert_eq!(c.count(), 2);
        c.release().done();
    }

    #[test]
    fn a_pin_error_is_passed_on() {
        let mut c = PulseCounter::new(
            Mock::new(&[Transaction::get(State::Low)
                .with_error(MockError::Io(std::io::ErrorKind::BrokenPipe))]),
            0,
        );
        assert!(c.poll(0).is_err());
        c.release().done();
    }

    #[test]
    fn rates() {
        // 1000 pulses/kWh meter: 50 pulses in 60 s = 0.05 kWh per minute = 3 kW.
        let kw = rate(50, 0.001, 60_000) * 3600.0;
        assert!((kw - 3.0).abs() < 1e-9);
        assert_eq!(rate(5, 1.0, 0), 0.0);
    }
}
