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

pub fn status(snap: &Snapshot) -> Result<Status> {
    let mut head_classes = vec![];
    if let Some(h) = &snap.head {
        let head = open_stats(&h.stats)?;
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
                parent: m.parent.map(hex::encode),
                classes,
                error,
            }
        })
        .collect();
    Ok(Status {
        head_generation: snap.head.as_ref().map(|h| h.generation),
        head_sha256: snap.head.as_ref().map(|h| hex::encode(h.sha256)),
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

/// What an agent keeps in its state folder between runs, so a restarted
/// agent neither loses nor repeats what its device contributed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct AgentState {
    /// Generation of the agent's latest published message.
    published: u64,
    /// The device's persistence generation last read.
    seen: Option<u64>,
    /// Newest fleet forget applied to the device.
    forgets_applied: u64,
}

/// The agent beside one device: publishes the device's contribution after
/// each commit or forget on it, applies fleet forgets, and pushes the fleet
/// head to the device once the head includes everything the device itself
/// contributed (so a push never takes a class away from it). State lives in
/// `state` (`agent.json`, `parent.stats`: the head the device last started
/// from, `carried.bin`: the contribution that head included, `last.msg`).
pub struct Agent {
    id: String,
    topics: Topics,
    dir: std::path::PathBuf,
    base: gaussedge_fleet::Summary,
    ctx: gaussedge_fleet::Context,
    state: AgentState,
    parent: Option<Vec<u8>>,
    carried: gaussedge_fleet::Summary,
}

impl Agent {
    pub fn new(
        device: &mut crate::client::Client,
        fleet: &str,
        id: &str,
        base_stats: &[u8],
        dir: &std::path::Path,
    ) -> Result<Agent> {
        let topics = topics(fleet)?;
        topics.device(id).with_context(|| format!("device id {id:?} cannot be an MQTT topic level"))?;
        let ledger = Ledger::new(base_stats)?;
        let info = device.hello()?;
        if info.backbone_sha256 != ledger.context().backbone_sha256 || info.dim != ledger.context().dim {
            bail!("the device runs another backbone or feature size than the fleet's base");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let state = match std::fs::read(dir.join("agent.json")) {
            Ok(b) => serde_json::from_slice(&b).context("agent.json")?,
            Err(_) => AgentState::default(),
        };
        let parent = std::fs::read(dir.join("parent.stats")).ok();
        let carried = match std::fs::read(dir.join("carried.bin")) {
            Ok(b) => gaussedge_fleet::Summary::from_bytes(&b)?.1,
            Err(_) => gaussedge_fleet::Summary::empty(ledger.context().dim as usize),
        };
        Ok(Agent {
            id: id.to_string(),
            topics,
            dir: dir.to_path_buf(),
            base: ledger.base().clone(),
            ctx: *ledger.context(),
            state,
            parent,
            carried,
        })
    }

    fn save(&self) -> Result<()> {
        crate::util::write_atomic(&self.dir.join("carried.bin"), &self.carried.to_bytes(&self.ctx))?;
        if let Some(p) = &self.parent {
            crate::util::write_atomic(&self.dir.join("parent.stats"), p)?;
        }
        crate::util::write_atomic(&self.dir.join("agent.json"), &serde_json::to_vec(&self.state)?)
    }

    fn parent_summary(&self) -> Result<gaussedge_fleet::Summary> {
        Ok(match &self.parent {
            Some(p) => gaussedge_fleet::Summary::of_head(&open_stats(p)?),
            None => self.base.clone(),
        })
    }

    /// Everything the device learned beyond the base: what its last fleet
    /// head included, plus what it learned since that head.
    fn contribution(&self, device_stats: &[u8]) -> Result<gaussedge_fleet::Summary> {
        let now = gaussedge_fleet::Summary::of_head(&open_stats(device_stats)?);
        let mut c = self.carried.clone();
        c.add(&now.since(&self.parent_summary()?)?)?;
        Ok(c)
    }

    /// Reads the device; publishes a new contribution if it changed.
    /// `Some(message)` to publish.
    fn poll_device(&mut self, device: &mut crate::client::Client) -> Result<Option<Vec<u8>>> {
        let info = device.hello()?;
        if info.learning.is_some() || self.state.seen == Some(info.generation) {
            return Ok(None);
        }
        let stats = match device.pull_stats() {
            Ok(s) => s,
            // Nothing saved yet: the device runs its bundle's base head.
            Err(crate::client::ClientError::Device { code: gaussedge_shared::wire::ErrorCode::NotFound, .. })
                if self.parent.is_none() =>
            {
                self.state.seen = Some(info.generation);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let summary = self.contribution(&stats)?;
        self.state.published += 1;
        self.state.seen = Some(info.generation);
        let msg = message::encode(&DeviceMessage {
            device: self.id.clone(),
            generation: self.state.published,
            forgets_applied: self.state.forgets_applied,
            parent: self.parent.as_ref().map(|p| sha256(p)),
            summary: summary.to_bytes(&self.ctx),
        });
        crate::util::write_atomic(&self.dir.join("last.msg"), &msg)?;
        self.save()?;
        Ok(Some(msg))
    }

    /// Applies fleet forgets newer than the device's.
    fn apply_forgets(&mut self, device: &mut crate::client::Client, f: &Forgets) -> Result<()> {
        let mut list = f.forgets.clone();
        list.sort();
        let applied = self.state.forgets_applied;
        for (id, label) in list.into_iter().filter(|(id, _)| *id > applied) {
            if let Some(l) = gaussedge_shared::label(&label) {
                match device.forget(l) {
                    Ok(()) => {}
                    Err(crate::client::ClientError::Device {
                        code: gaussedge_shared::wire::ErrorCode::UnknownClass,
                        ..
                    }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.carried.forget(&label);
            self.state.forgets_applied = id;
            // The device's generation moved: the next poll republishes.
            self.save()?;
        }
        Ok(())
    }

    /// Pushes `head` to the device if it is new to it and includes all the
    /// device contributed, and nothing happened on the device since.
    fn take_head(&mut self, device: &mut crate::client::Client, head: &HeadMessage) -> Result<bool> {
        if self.parent.as_ref().is_some_and(|p| sha256(p) == head.sha256) || sha256(&head.stats) != head.sha256 {
            return Ok(false);
        }
        let mine = head.included.iter().find(|(d, _)| *d == self.id).map_or(0, |(_, g)| *g);
        if mine < self.state.published || head.forgets < self.state.forgets_applied {
            return Ok(false);
        }
        let info = device.hello()?;
        if info.learning.is_some() || self.state.seen.is_some_and(|g| g != info.generation) {
            return Ok(false); // the device learned meanwhile: publish that first
        }
        let ours =
            match std::fs::read(self.dir.join("last.msg")).ok().and_then(|b| message::decode::<DeviceMessage>(&b)) {
                Some(m) => gaussedge_fleet::Summary::from_bytes(&m.summary)?.1,
                None => gaussedge_fleet::Summary::empty(self.ctx.dim as usize),
            };
        open_stats(&head.stats)?;
        device.push_stats(&head.stats)?;
        self.parent = Some(head.stats.clone());
        self.carried = ours;
        self.state.seen = Some(device.hello()?.generation);
        self.save()?;
        Ok(true)
    }

    /// This agent's broker connection.
    pub fn link(&self, broker: &Broker) -> AgentLink {
        let (client, conn) = connect(broker, &format!("gaussedge-agent-{}", self.id));
        AgentLink {
            client,
            conn,
            head: None,
            forgets: None,
            connected: false,
            last_poll: Instant::now() - Duration::from_secs(1),
            topic: self.topics.device(&self.id).expect("checked in new"),
        }
    }

    /// One turn: takes what the broker sent (up to 100 ms), and at most
    /// every 250 ms applies forgets, publishes what the device learned, and
    /// pushes it a new fleet head. Returns what happened, for a log.
    pub fn step(&mut self, device: &mut crate::client::Client, link: &mut AgentLink) -> Result<Vec<String>> {
        let mut log = vec![];
        match link.conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                link.connected = true;
                link.client.subscribe(self.topics.head(), QoS::AtLeastOnce)?;
                link.client.subscribe(self.topics.forgets(), QoS::AtLeastOnce)?;
                // The broker may have lost it: publish the latest again.
                if let Ok(msg) = std::fs::read(self.dir.join("last.msg")) {
                    link.client.publish(link.topic.clone(), QoS::AtLeastOnce, true, msg)?;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.topic == self.topics.head() {
                    link.head = message::decode(&p.payload);
                } else if p.topic == self.topics.forgets() {
                    link.forgets = message::decode(&p.payload);
                }
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => {
                if link.connected {
                    log.push(format!("broker connection lost ({e}); reconnecting"));
                }
                link.connected = false;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(rumqttc::RecvTimeoutError::Disconnected) => bail!("agent: client closed"),
        }
        if !link.connected || link.last_poll.elapsed() < Duration::from_millis(250) {
            return Ok(log);
        }
        link.last_poll = Instant::now();
        if let Some(f) = link.forgets.take() {
            self.apply_forgets(device, &f)?;
        }
        if let Some(msg) = self.poll_device(device)? {
            log.push(format!("published generation {} ({} bytes)", self.state.published, msg.len()));
            link.client.publish(link.topic.clone(), QoS::AtLeastOnce, true, msg)?;
        }
        if let Some(h) = link.head.clone() {
            if self.take_head(device, &h)? {
                log.push(format!("device took fleet head generation {} ({} bytes)", h.generation, h.stats.len()));
            }
        }
        Ok(log)
    }

    /// Runs until `stop`, reconnecting to the broker as needed.
    pub fn run(&mut self, device: &mut crate::client::Client, broker: &Broker, stop: &AtomicBool) -> Result<()> {
        let mut link = self.link(broker);
        while !stop.load(Ordering::Relaxed) {
            for line in self.step(device, &mut link)? {
                eprintln!("agent {}: {line}", self.id);
            }
        }
        let _ = link.client.disconnect();
        Ok(())
    }
}

/// An agent's broker connection and what it last heard.
pub struct AgentLink {
    client: Client,
    conn: Connection,
    head: Option<HeadMessage>,
    forgets: Option<Forgets>,
    connected: bool,
    last_poll: Instant,
    topic: String,
}

fn open_stats(bytes: &[u8]) -> Result<gaussedge_shared::head::GaussianHead<gaussedge_shared::head::OwnedStorage>> {
    let classes = gaussedge_shared::stats::read_header(bytes)?.classes as usize;
    Ok(gaussedge_shared::head::GaussianHead::from_stats(bytes, classes.max(1), &Default::default())?.0)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}
