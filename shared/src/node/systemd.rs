//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: a node started by a
//! `Type=notify` unit reports `READY=1` once it serves, `STOPPING=1` when it drains,
//! and pings `WATCHDOG=1` at half the unit's `WatchdogSec=` for as long as its health
//! check passes, so systemd restarts a node that hangs or whose log failed. Outside
//! systemd (`NOTIFY_SOCKET` unset) everything here does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::node::http::HealthCheck;

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to systemd. `Ok(false)` when not
/// started by systemd.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(true)
}

/// Reports a state, logging (not failing) if systemd cannot be told.
pub fn report(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "telling systemd failed");
    }
}

/// The watchdog interval the unit asks for (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` names one).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while `health` passes; stops pinging (and
/// logs why, once) while it fails, so systemd restarts the node. Does nothing when the
/// unit has no watchdog.
pub fn spawn_watchdog(health: HealthCheck) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let interval = interval / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut failing = false;
        loop {
            tick.tick().await;
            match health() {
                Ok(_) => {
                    failing = false;
                    report("WATCHDOG=1");
                }
                Err(reason) => {
                    if !failing {
                        tracing::error!(%reason, "unhealthy: not pinging the systemd watchdog");
                    }
                    failing = true;
                }
            }
        }
    });
}

/// Tells systemd that `node` serves, with its QUIC address as the unit's status, and
/// starts the watchdog pings if the unit asks for them.
pub fn ready(node: &crate::node::Node) {
    spawn_watchdog(node.health());
    report(&format!(
        "READY=1\nSTATUS=serving QUIC on {}",
        node.quic_addr()
    ));
}

/// Tells systemd that the node drains and stops.
pub fn stopping() {
    report("STOPPING=1\nSTATUS=draining");
}
