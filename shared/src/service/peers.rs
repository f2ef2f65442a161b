//! Who is connected, and what they may do: each connection's client certificate (its
//! identity and serial number), the node's grants and its revocation list. Both can be
//! replaced while the server runs ([`super::SegmentServer::reload`]): requests are
//! checked against the grants in force when they arrive, and a connection whose
//! certificate becomes revoked is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::access::Access;
use crate::tls::{serial_hex, Revoked};

/// QUIC application error code of a connection closed because its certificate was
/// revoked.
pub const REVOKED: u32 = 2;

/// What the server enforces: grants and revoked certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Who may do what.
    pub access: Access,
    /// Certificates refused whatever the grants say.
    pub revoked: Revoked,
}

/// A client's certificate, as far as the server cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Its common name: the identity grants name ("" if it has none).
    pub identity: Arc<str>,
    /// Its serial number, hex ([`serial_hex`]).
    pub serial: String,
}

impl PeerCert {
    /// The certificate `conn`'s client presented.
    pub fn of(conn: &quinn::Connection) -> PeerCert {
        let certs = conn.peer_identity().and_then(|c| {
            c.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let parsed = certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok());
        match parsed {
            Some((_, cert)) => PeerCert {
                identity: cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .unwrap_or_default()
                    .into(),
                serial: serial_hex(cert.raw_serial()),
            },
            None => PeerCert {
                identity: "".into(),
                serial: String::new(),
            },
        }
    }
}

/// The policy in force and the live connections.
#[derive(Debug, Default)]
pub struct Peers {
    policy: RwLock<Policy>,
    live: Mutex<HashMap<u64, (quinn::Connection, PeerCert)>>,
    next: AtomicU64,
}

impl Peers {
    /// Enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        Peers {
            policy: RwLock::new(policy),
            ..Peers::default()
        }
    }

    /// Checks `req` of `identity` against the grants in force.
    pub fn check(&self, identity: &str, req: &crate::wire::Request) -> Result<(), String> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .access
            .check(identity, req)
    }

    /// Whether grants are enforced (see [`Access::is_restricted`]).
    pub fn restricted(&self) -> bool {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .access
            .is_restricted()
    }

    /// Why `peer` may not connect, if it may not.
    pub fn refusal(&self, peer: &PeerCert) -> Option<String> {
        let p = self.policy.read().unwrap_or_else(|e| e.into_inner());
        p.revoked.contains(&peer.serial).then(|| {
            format!(
                "the certificate of {:?} (serial {}) is revoked",
                peer.identity, peer.serial
            )
        })
    }

    /// Registers a live connection; the returned guard unregisters it.
    pub fn enter(self: &Arc<Self>, conn: quinn::Connection, peer: PeerCert) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live_map().insert(id, (conn, peer));
        Registered {
            peers: self.clone(),
            id,
        }
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (quinn::Connection, PeerCert)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `policy` in force and closes the live connections whose certificate it
    /// revokes; returns how many it closed.
    pub fn replace(&self, policy: Policy) -> usize {
        let revoked = policy.revoked.clone();
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        let mut closed = 0;
        for (conn, peer) in self.live_map().values() {
            if revoked.contains(&peer.serial) {
                tracing::warn!(identity = %peer.identity, serial = %peer.serial, "closing the connection of a revoked certificate");
                conn.close(REVOKED.into(), b"certificate revoked");
                closed += 1;
            }
        }
        closed
    }
}

/// A live connection's registration, removed when dropped.
#[derive(Debug)]
pub struct Registered {
    peers: Arc<Peers>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.peers.live_map().remove(&self.id);
    }
}
