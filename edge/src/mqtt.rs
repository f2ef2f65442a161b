//! The MQTT source: subscribes to a broker (MQTT 3.1.1 or 5, rumqttc) with a persistent
//! session and stores each message in the stream its topic filter maps to.
//!
//! **Acknowledged only when durable.** Acks are manual: a message's PUBACK (QoS 1) or
//! PUBREC (QoS 2) goes to the broker only after the event is fsync'ed in the local
//! stream, in the order the messages arrived (as MQTT requires). A crash before the ack
//! leaves the message with the broker, which redelivers it on reconnect.
//!
//! **Stored once.** A redelivery must not be stored twice. Brokers redeliver an
//! unacknowledged message with the same packet id and the DUP flag set, and do not
//! reuse a packet id until its ack has arrived. So each QoS 1/2 message is stored with
//! an attribute, atomically with its event: id = this client's packet id, value = a
//! fingerprint (64-bit hash) of topic and payload. A message with DUP set is stored
//! only if its segment's attribute for that packet id does not already hold its
//! fingerprint (a conditional append, checked by the segment log at submit time, so it
//! also sees appends not yet durable). What this cannot tell apart: a message identical
//! in topic and payload to the one stored under the same packet id before it, lost in
//! the instant between the broker receiving the earlier ack and the edge storing it.
//! Brokers hand out packet ids in sequence (mosquitto does), so the two are 65,535
//! messages apart; see ARCHITECTURE.md.
//!
//! **Session.** `clean_session = false` (v5: clean start off, session expiry 7 days),
//! so the broker queues messages while the edge is away. Subscriptions are made only
//! when the broker has no session for us: re-subscribing would resend retained
//! messages as new ones. Connection failures are retried forever with capped
//! exponential backoff and jitter; what was stored stays stored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tributary::log::{AttributeCondition, AttributeId, AttributeUpdate, Ticket};

use crate::config::{MqttRoute, MqttSpec, MqttVersion};
use crate::local::{fingerprint, source_attribute, LocalStream, SinkError, Submitted};

/// Largest MQTT packet taken; larger ones make rumqttc drop the connection.
const MAX_PACKET: usize = tributary::service::MAX_EVENT_BYTES - 1024;
/// Capacity of rumqttc's request channel, through which acks reach its event loop.
/// The event loop is polled only by the task that takes messages, and hands out
/// messages it has read before it sends queued acks, so that task must never wait for
/// the acker (it would stop both): acks queue without bound, and what bounds them is
/// the broker's in-flight window (MQTT 5: our receive maximum; 3.1.1: the broker's
/// setting, mosquitto's `max_inflight_messages`, 20 by default). A queued ack holds no
/// payload.
const REQUESTS: usize = 1 << 16;
/// MQTT 5 session expiry: how long the broker keeps our session while we are away.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// MQTT 5 receive maximum: QoS 1/2 messages the broker may have in flight to us.
const RECEIVE_MAXIMUM: u16 = 1024;
/// MQTT 5: our own messages in flight to the broker. The edge publishes nothing, and
/// rumqttc's v5 client sizes its outgoing state by this limit (at its default of
/// 65,535 that state alone is 12 MiB of a gateway's memory).
const OUTGOING_INFLIGHT: u16 = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Crash tests set this (milliseconds) to hold each ack back after the message
/// arrived, widening the window in which a SIGKILL leaves stored messages
/// unacknowledged, so that redeliveries are sure to be exercised.
const ACK_DELAY_ENV: &str = "TRIBUTARY_EDGE_TEST_ACK_DELAY_MS";
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Counters of one MQTT source.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages received (including redeliveries).
    pub received: AtomicU64,
    /// Messages stored.
    pub stored: AtomicU64,
    /// Redeliveries recognised as already stored (acknowledged, not stored again).
    pub duplicates: AtomicU64,
    /// Messages whose topic matched no route (acknowledged, not stored).
    pub unrouted: AtomicU64,
    /// Connection attempts that failed or connections that broke.
    pub connection_errors: AtomicU64,
    /// Connected to the broker now.
    pub connected: AtomicBool,
}

/// A received message, whichever protocol version brought it.
struct Message {
    topic: String,
    payload: Bytes,
    qos: u8,
    pkid: u16,
    dup: bool,
    ack: Ack,
}

/// What acknowledges a message to the broker.
enum Ack {
    V4(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

enum Incoming {
    Publish(Box<Message>),
    /// Connected; the broker has (`true`) or had not kept our session.
    Connected(bool),
    Other,
}

impl Events {
    async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            Events::V4(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(mut p))) => {
                    // The ack needs only QoS and packet id: it keeps no payload alive.
                    Ok(Incoming::Publish(Box::new(Message {
                        topic: std::mem::take(&mut p.topic),
                        payload: std::mem::take(&mut p.payload),
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        dup: p.dup,
                        ack: Ack::V4(p),
                    })))
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    if c.code == rumqttc::ConnectReturnCode::Success {
                        Ok(Incoming::Connected(c.session_present))
                    } else {
                        Err(format!("connection refused: {:?}", c.code))
                    }
                }
                Ok(_) => Ok(Incoming::Other),
                Err(e) => Err(e.to_string()),
            },
            Events::V5(e) => {
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
                match e.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(mut p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        p.topic = Bytes::new();
                        p.properties = None;
                        Ok(Incoming::Publish(Box::new(Message {
                            topic,
                            payload: std::mem::take(&mut p.payload),
                            qos: p.qos as u8,
                            pkid: p.pkid,
                            dup: p.dup,
                            ack: Ack::V5(p),
                        })))
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(c))) => {
                        if c.code == ConnectReturnCode::Success {
                            Ok(Incoming::Connected(c.session_present))
                        } else {
                            Err(format!("connection refused: {:?}", c.code))
                        }
                    }
                    Ok(_) => Ok(Incoming::Other),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

impl Client {
    async fn ack(&self, ack: &Ack) -> Result<(), String> {
        match (self, ack) {
            (Client::V4(c), Ack::V4(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V5(c), Ack::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("ack of another protocol version".into()),
        }
    }

    fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, qos_v4(qos))
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, qos_v5(qos))
                .map_err(|e| e.to_string()),
        }
    }
}

fn qos_v4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos_v5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn connect(spec: &MqttSpec) -> (Client, Events) {
    match spec.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
            o.set_clean_session(false)
                .set_manual_acks(true)
                .set_keep_alive(spec.keep_alive)
                .set_max_packet_size(MAX_PACKET, MAX_PACKET);
            if let Some((u, p)) = &spec.credentials {
                o.set_credentials(u, p);
            }
            let (c, e) = rumqttc::AsyncClient::new(o, REQUESTS);
            (Client::V4(c), Events::V4(Box::new(e)))
        }
        MqttVersion::V5 => {
            use rumqttc::v5::mqttbytes::v5::ConnectProperties;
            let mut o = rumqttc::v5::MqttOptions::new(&spec.client_id, &spec.host, spec.port);
            let mut props = ConnectProperties::new();
            props.session_expiry_interval = Some(SESSION_EXPIRY_SECS);
            props.receive_maximum = Some(RECEIVE_MAXIMUM);
            props.max_packet_size = Some(MAX_PACKET as u32);
            o.set_clean_start(false)
                .set_manual_acks(true)
                .set_keep_alive(spec.keep_alive)
                .set_max_packet_size(Some(MAX_PACKET as u32))
                .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
                .set_connect_properties(props);
            if let Some((u, p)) = &spec.credentials {
                o.set_credentials(u, p);
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, REQUESTS);
            (Client::V5(c), Events::V5(Box::new(e)))
        }
    }
}

/// The attribute holding the fingerprint of the last message stored under `pkid` by
/// the client `client_id`. The packet id's bits are reversed: brokers hand out packet
/// ids in ascending order, and ascending inserts leave the log's attribute B-tree
/// nodes half full; spread out, its 65,535 attributes per segment take about 1 MiB
/// less of a gateway's memory.
fn packet_attribute(client_id: &str, pkid: u16) -> AttributeId {
    source_attribute("mqtt client", client_id.as_bytes(), pkid.reverse_bits())
}

/// Runs the source until `shutdown` turns true. `streams[i]` is configured stream `i`.
pub async fn run(
    spec: MqttSpec,
    streams: Vec<Arc<LocalStream>>,
    stats: Arc<MqttStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            r = session(&spec, &streams, &stats) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        stats.connected.store(false, Ordering::Relaxed);
        match outcome {
            Session::Connected(why) => {
                tracing::warn!(broker = %spec.host, port = spec.port, %why, "MQTT connection lost; reconnecting");
                backoff = BACKOFF_MIN;
            }
            Session::NeverConnected(why) => {
                tracing::warn!(broker = %spec.host, port = spec.port, %why, retry_in = ?backoff, "MQTT broker unreachable");
            }
        }
        stats.connection_errors.fetch_add(1, Ordering::Relaxed);
        let jitter = rand::thread_rng().gen_range(0.5..1.0);
        tokio::select! {
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Session {
    Connected(String),
    NeverConnected(String),
}

/// One connection, from connect until it breaks. Stored but unacknowledged messages
/// are dropped with it: the broker redelivers them, and they are recognised.
async fn session(spec: &MqttSpec, streams: &[Arc<LocalStream>], stats: &MqttStats) -> Session {
    let (client, mut events) = connect(spec);
    let client = Arc::new(client);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Pending>();
    let ack_delay = std::env::var(ACK_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut acker = tokio::spawn(ack_in_order(client.clone(), ack_rx, ack_delay));
    let mut connected = false;
    let why = loop {
        let incoming = tokio::select! {
            i = events.poll() => i,
            r = &mut acker => break match r {
                Ok(e) => e,
                Err(e) => format!("the acknowledging task failed: {e}"),
            },
        };
        let msg = match incoming {
            Ok(Incoming::Publish(m)) => m,
            Ok(Incoming::Connected(session_present)) => {
                connected = true;
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(broker = %spec.host, port = spec.port, session_present, "MQTT connected");
                if !session_present {
                    if let Err(e) = subscribe(&client, &spec.routes) {
                        break e;
                    }
                }
                continue;
            }
            Ok(Incoming::Other) => continue,
            Err(e) => break e,
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let received = std::time::Instant::now();
        let Some(route) = spec
            .routes
            .iter()
            .find(|r| rumqttc::matches(&msg.topic, &r.filter))
        else {
            stats.unrouted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %msg.topic, "no route for a message; acknowledged, not stored");
            let pending = Pending {
                wait: Wait::Nothing,
                ack: msg.ack,
                received,
            };
            if ack_tx.send(pending).is_err() {
                break "the acknowledging task ended".into();
            }
            continue;
        };
        let stream = &streams[route.stream];
        match store(spec, route, stream, &msg).await {
            Ok(ticket) => {
                match ticket {
                    Some(_) => stats.stored.fetch_add(1, Ordering::Relaxed),
                    None => stats.duplicates.fetch_add(1, Ordering::Relaxed),
                };
                if msg.qos == 0 {
                    continue;
                }
                let wait = match ticket {
                    Some(t) => Wait::Durable(stream.clone(), t),
                    // The first copy may be an append of the broken connection, not
                    // yet durable: the ack waits for everything submitted.
                    None => Wait::Settled(stream.clone()),
                };
                let pending = Pending {
                    wait,
                    ack: msg.ack,
                    received,
                };
                if ack_tx.send(pending).is_err() {
                    break "the acknowledging task ended".into();
                }
            }
            Err(e) => {
                // Not acknowledged: the broker redelivers after the reconnect.
                tracing::error!(topic = %msg.topic, stream = %stream.spec().name(), error = %e, "storing an MQTT message failed");
                break format!("storing a message failed: {e}");
            }
        }
    };
    acker.abort();
    if connected {
        Session::Connected(why)
    } else {
        Session::NeverConnected(why)
    }
}

fn subscribe(client: &Client, routes: &[MqttRoute]) -> Result<(), String> {
    for r in routes {
        client.subscribe(&r.filter, r.qos)?;
    }
    Ok(())
}

/// Submits a message's event; `None`: a redelivery already stored.
async fn store(
    spec: &MqttSpec,
    route: &MqttRoute,
    stream: &LocalStream,
    msg: &Message,
) -> Result<Option<Ticket>, SinkError> {
    let key = route.key.key(&msg.topic, &msg.payload);
    let condition = (msg.qos > 0).then(|| {
        let fp = fingerprint(&[msg.topic.as_bytes(), &msg.payload]);
        AttributeUpdate {
            id: packet_attribute(&spec.client_id, msg.pkid),
            value: fp,
            condition: if msg.dup {
                AttributeCondition::NotEquals(fp)
            } else {
                AttributeCondition::Always
            },
        }
    });
    match stream.submit(&key, &msg.payload, condition).await? {
        Submitted::Stored(t) => Ok(Some(t)),
        Submitted::Duplicate => Ok(None),
    }
}

/// A message waiting for its ack.
struct Pending {
    wait: Wait,
    ack: Ack,
    received: std::time::Instant,
}

/// What must be durable before a message is acknowledged.
enum Wait {
    /// Nothing (a message not stored).
    Nothing,
    /// Its event.
    Durable(Arc<LocalStream>, Ticket),
    /// Everything submitted so far (a redelivery recognised as already stored).
    Settled(Arc<LocalStream>),
}

/// Acknowledges messages in arrival order, each once its event is durable. Returns why
/// it stopped.
async fn ack_in_order(
    client: Arc<Client>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    delay: Option<Duration>,
) -> String {
    while let Some(p) = rx.recv().await {
        let durable = match p.wait {
            Wait::Nothing => Ok(()),
            Wait::Durable(stream, ticket) => stream.durable(ticket).await,
            Wait::Settled(stream) => stream.log().settle().await,
        };
        if let Err(e) = durable {
            return format!("the segment log failed: {e}");
        }
        if let Some(d) = delay {
            tokio::time::sleep_until((p.received + d).into()).await;
        }
        if let Err(e) = client.ack(&p.ack).await {
            return format!("acknowledging: {e}");
        }
    }
    "the connection ended".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_attributes_are_per_client_and_packet_id() {
        let a = packet_attribute("gw-1", 7);
        assert_ne!(a, packet_attribute("gw-1", 8));
        assert_ne!(a, packet_attribute("gw-2", 7));
        assert!(a >= crate::local::SOURCE_ATTRIBUTES);
        assert!(fingerprint(&[b"t", b"x"]) >= 0);
        assert_ne!(fingerprint(&[b"t", b"x"]), fingerprint(&[b"t", b"y"]));
        assert_ne!(fingerprint(&[b"t", b"x"]), fingerprint(&[b"u", b"x"]));
        assert_ne!(fingerprint(&[b"tx", b""]), fingerprint(&[b"t", b"x"]));
    }
}
