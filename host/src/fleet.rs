//! The fleet over MQTT: the merger's loop, reading the fleet's retained
//! state, and fleet-wide forgets. The merge itself is
//! [`gaussedge_fleet::Ledger`]'s; this module only moves its messages.
//!
//! Nothing here is specific to one broker: MQTT 3.1.1, QoS 1, retained
//! messages and one `+` wildcard. Statistics are megabytes (6.6 MB at
//! D = 1808 in f32, 13 MB as the merger's f64 head), so the broker must
//! accept messages that large: Mosquitto does by default
//! (`message_size_limit` 0, up to MQTT's 256 MB), some hosted brokers cap
//! them lower and must be configured.

use anyhow::{bail, Context as _, Result};
use gaussedge_fleet::message::{self, DeviceMessage, Forgets, HeadMessage, Topics};
use gaussedge_fleet::Ledger;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest message this client sends or takes: above the largest head
/// (D = 2048 in f64 is 17 MB), below MQTT's 256 MB.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A broker address: `mqtt://HOST:PORT`, `tcp://HOST:PORT` or `HOST:PORT`
/// (port 1883 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Broker {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Broker> {
        let rest = s.strip_prefix("mqtt://").or_else(|| s.strip_prefix("tcp://")).unwrap_or(s);
        if rest.contains("://") {
            bail!("broker {s:?}: only mqtt:// (plain TCP) is supported");
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().with_context(|| format!("broker {s:?}: bad port {p:?}"))?),
            None => (rest, 1883),
        };
        if host.is_empty() {
            bail!("broker {s:?}: no host");
        }
        Ok(Broker { host: host.to_string(), port })
    }
}

/// A client with the fleet's limits. `clean` sessions: what a member needs
/// after a reconnect it reads again from the retained messages.
pub fn connect(broker: &Broker, client_id: &str) -> (Client, Connection) {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(MAX_MESSAGE, MAX_MESSAGE);
    o.set_clean_session(true);
    Client::new(o, 64)
}

fn topics(fleet: &str) -> Result<Topics> {
    Topics::new(fleet).with_context(|| format!("fleet name {fleet:?} cannot be an MQTT topic level"))
}

/// Runs the merger until `stop`: rebuilds the ledger from the retained
/// device messages, publishes the fleet head (retained) whenever the merge
/// changes, and reports refused contributions on the error topic.
/// Reconnects on its own when the broker goes away.
pub fn run_merger(broker: &Broker, fleet: &str, base_stats: &[u8], stop: &AtomicBool) -> Result<()> {
    let t = topics(fleet)?;
    let mut ledger = Ledger::new(base_stats)?;
    let (client, mut conn) = connect(broker, &format!("gaussedge-merger-{fleet}"));
    // Publish once the retained messages have come in: quiet for this long.
    let settle = Duration::from_millis(300);
    let mut dirty = true;
    let mut connected = false;
    let mut last_input = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                connected = true;
                client.subscribe(t.devices(), QoS::AtLeastOnce)?;
                client.subscribe(t.forgets(), QoS::AtLeastOnce)?;
                // The broker may have lost the retained head (restarted
                // without persistence): publish it again once settled.
                dirty = true;
                last_input = Instant::now();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                last_input = Instant::now();
                if p.topic == t.forgets() {
                    let Some(f) = message::decode::<Forgets>(&p.payload) else {
                        report(&client, &t, "forgets: not a forget list");
                        continue;
                    };
                    for (id, label) in f.forgets {
                        dirty |= ledger.forget(id, &label);
                    }
                } else if let Some(device) = t.device_of(&p.topic) {
                    if p.payload.is_empty() {
                        continue; // a cleared retained message
                    }
                    let Some(m) = message::decode::<DeviceMessage>(&p.payload) else {
                        report(&client, &t, &format!("device {device:?}: not a device message"));
                        continue;
                    };
                    if m.device != device {
                        report(&client, &t, &format!("device {device:?}: message names device {:?}", m.device));
                        continue;
                    }
                    match ledger.contribute_after(device, m.generation, m.forgets_applied, &m.summary) {
                        Ok(changed) => dirty |= changed,
                        Err(e) => report(&client, &t, &e.to_string()),
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if connected {
                    eprintln!("merger: broker connection lost ({e}); reconnecting");
                }
                connected = false;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => bail!("merger: client closed"),
        }
        if dirty && connected && last_input.elapsed() >= settle {
            match ledger.head_message() {
                Ok(head) => {
                    let classes = gaussedge_shared::stats::read_header(&head.stats).map(|h| h.classes).unwrap_or(0);
                    client.publish(t.head(), QoS::AtLeastOnce, true, message::encode(&head))?;
                    eprintln!(
                        "merger: fleet head generation {}: {classes} classes from {} devices ({} bytes)",
                        head.generation,
                        head.included.len(),
                        head.stats.len()
                    );
                }
                Err(e) => report(&client, &t, &format!("the merge failed: {e}")),
            }
            dirty = false;
        }
    }
    let _ = client.disconnect();
    Ok(())
}

fn report(client: &Client, t: &Topics, text: &str) {
    eprintln!("merger: refused: {text}");
    let _ = client.publish(t.errors(), QoS::AtLeastOnce, false, text.as_bytes().to_vec());
}

/// The fleet's retained state, as a late member sees it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub head: Option<HeadMessage>,
    pub devices: BTreeMap<String, DeviceMessage>,
    pub forgets: Forgets,
}

/// Reads the retained messages of `fleet`: until `quiet` passes without
/// one, or `timeout`.
pub fn snapshot(broker: &Broker, fleet: &str, quiet: Duration, timeout: Duration) -> Result<Snapshot> {
    let t = topics(fleet)?;
    let (client, mut conn) = connect(broker, &format!("gaussedge-status-{}", std::process::id()));
    let start = Instant::now();
    let mut snap = Snapshot::default();
    let mut subscribed: Option<Instant> = None;
    let mut last = Instant::now();
    while start.elapsed() < timeout {
        match conn.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.subscribe(t.head(), QoS::AtLeastOnce)?;
                client.subscribe(t.devices(), QoS::AtLeastOnce)?;
                client.subscribe(t.forgets(), QoS::AtLeastOnce)?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subscribed.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                last = Instant::now();
                if p.topic == t.head() {
                    snap.head = message::decode(&p.payload);
                } else if p.topic == t.forgets() {
                    snap.forgets = message::decode(&p.payload).unwrap_or_default();
                } else if let Some(d) = t.device_of(&p.topic) {
                    if let Some(m) = message::decode::<DeviceMessage>(&p.payload) {
                        snap.devices.insert(d.to_string(), m);
                    }
                }
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => bail!("broker {}:{}: {e}", broker.host, broker.port),
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
        if subscribed.is_some() && last.elapsed() >= quiet {
            let _ = client.disconnect();
            return Ok(snap);
        }
    }
    bail!("broker {}:{}: no answer within {:?}", broker.host, broker.port, timeout)
}

/// Publishes one message and waits for the broker's acknowledgement.
pub fn publish(broker: &Broker, topic: &str, retain: bool, payload: Vec<u8>, timeout: Duration) -> Result<()> {
    let (client, mut conn) = connect(broker, &format!("gaussedge-pub-{}-{}", std::process::id(), rand_id()));
    let start = Instant::now();
    while start.elapsed() < timeout {
        match conn.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.publish(topic, QoS::AtLeastOnce, retain, payload.clone())?;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                let _ = client.disconnect();
                return Ok(());
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => bail!("broker {}:{}: {e}", broker.host, broker.port),
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
    }
    bail!("broker {}:{}: publish to {topic} not acknowledged within {:?}", broker.host, broker.port, timeout)
}

/// A fleet-wide forget of `label`: appended to the retained forget list
/// (two forgets issued at the same instant from two places may lose one;
/// the list is re-read first).
pub fn forget(broker: &Broker, fleet: &str, label: &str) -> Result<u64> {
    let t = topics(fleet)?;
    gaussedge_shared::label(label).with_context(|| format!("label {label:?} is not a valid class label"))?;
    let mut snap = snapshot(broker, fleet, Duration::from_millis(300), Duration::from_secs(10))?;
    let id = snap.forgets.forgets.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
    snap.forgets.forgets.push((id, label.to_string()));
    publish(broker, &t.forgets(), true, message::encode(&snap.forgets), Duration::from_secs(10))?;
    Ok(id)
}

fn rand_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0)
}

/// One device as `fleet status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct DeviceStatus {
    pub device: String,
    pub generation: u64,
    pub forgets_applied: u64,
    /// Hex SHA-256 of the fleet head it last started from (none: the base).
    pub parent: Option<String>,
    /// What it contributes: classes and sample counts.
    pub classes: Vec<(String, u64)>,
    /// Set when its message cannot be read.
    pub error: Option<String>,
}

/// `fleet status`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub head_generation: Option<u64>,
    pub head_sha256: Option<String>,
    pub head_bytes: Option<usize>,
    /// The fleet head's classes and sample counts.
    pub head_classes: Vec<(String, u64)>,
    /// Devices in the head, by generation.
    pub included: Vec<(String, u64)>,
    pub devices: Vec<DeviceStatus>,
    pub forgets: Vec<(u64, String)>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn status(snap: &Snapshot) -> Result<Status> {
    let mut head_classes = vec![];
    if let Some(h) = &snap.head {
        let (head, _) = gaussedge_shared::head::GaussianHead::from_stats(
            &h.stats,
            (gaussedge_shared::stats::read_header(&h.stats)?.classes as usize).max(1),
            &Default::default(),
        )?;
        head_classes = head.classes().map(|(_, c)| (c.label.to_string(), c.count)).collect();
    }
    let devices = snap
        .devices
        .values()
        .map(|m| {
            let (classes, error) = match gaussedge_fleet::Summary::from_bytes(&m.summary) {
                Ok((_, s)) => (s.pieces.iter().map(|p| (p.label.clone(), p.count)).collect(), None),
                Err(e) => (vec![], Some(e.to_string())),
            };
            DeviceStatus {
                device: m.device.clone(),
                generation: m.generation,
                forgets_applied: m.forgets_applied,
                parent: m.parent.map(|p| hex(&p)),
                classes,
                error,
            }
        })
        .collect();
    Ok(Status {
        head_generation: snap.head.as_ref().map(|h| h.generation),
        head_sha256: snap.head.as_ref().map(|h| hex(&h.sha256)),
        head_bytes: snap.head.as_ref().map(|h| h.stats.len()),
        head_classes,
        included: snap.head.as_ref().map(|h| h.included.clone()).unwrap_or_default(),
        devices,
        forgets: snap.forgets.forgets.clone(),
    })
}

pub fn render_status(s: &Status) -> String {
    let list = |v: &[(String, u64)]| v.iter().map(|(l, n)| format!("{l} ({n})")).collect::<Vec<_>>().join(", ");
    let mut out = match (s.head_generation, &s.head_sha256) {
        (Some(g), Some(sha)) => format!(
            "fleet head: generation {g}, {} classes, {} bytes, sha256 {}\n  classes: {}\n",
            s.head_classes.len(),
            s.head_bytes.unwrap_or(0),
            &sha[..16],
            list(&s.head_classes)
        ),
        _ => "fleet head: none published yet (is the merger running?)\n".to_string(),
    };
    out += "\n| device | generation | in the head | forgets applied | starts from | contributes |\n| --- | --- | --- | --- | --- | --- |\n";
    for d in &s.devices {
        let included = s.included.iter().find(|(id, _)| *id == d.device).map_or("-".into(), |(_, g)| g.to_string());
        let what = d.error.clone().unwrap_or_else(|| list(&d.classes));
        out += &format!(
            "| {} | {} | {included} | {} | {} | {what} |\n",
            d.device,
            d.generation,
            d.forgets_applied,
            d.parent.as_deref().map_or("base".to_string(), |p| p[..16].to_string())
        );
    }
    if !s.forgets.is_empty() {
        out += &format!(
            "\nfleet forgets: {}\n",
            s.forgets.iter().map(|(i, l)| format!("{i}: {l}")).collect::<Vec<_>>().join(", ")
        );
    }
    out
}
