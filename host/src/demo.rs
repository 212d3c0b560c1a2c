//! The end-to-end demo: a device simulator on a pseudo-terminal learns new
//! classes from its own camera, and the host evaluates it after each.
//!
//! Evaluation after each class reads the device's statistics over the link
//! and scores the test set's features with them (the features are computed
//! once with the same ONNX the device runs, and cached: the backbone does
//! not change between stages). The final stage is also classified frame by
//! frame *on the device*, and the demo checks that both agree.

use crate::client::Client;
use crate::eval::{self, Labels, Novelty, Setup, Stage};
use crate::fit;
use anyhow::{bail, ensure, Context, Result};
use gaussedge_data::DatasetKind;
use gaussedge_shared::head::{GaussianHead, OwnedStorage};
use gaussedge_shared::stats::{self, StatsMeta};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A simulator process serving a pseudo-terminal; killed on drop.
pub struct Simulator {
    pub child: Child,
    pub path: String,
    pub state: PathBuf,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `gaussedge-device` binary next to the running one.
pub fn device_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no folder")?;
    for candidate in [dir.join("gaussedge-device"), dir.join("../gaussedge-device")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("gaussedge-device not found next to {}; build it with cargo build -p gaussedge-device", exe.display())
}

impl Simulator {
    /// Starts `gaussedge-device --pty` and waits until it serves.
    pub fn start(binary: &Path, bundle: &Path, state: &Path, extra: &[String]) -> Result<Self> {
        std::fs::create_dir_all(state)?;
        let ready = state.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(state.join("device.log"))?;
        let child = Command::new(binary)
            .arg("--bundle")
            .arg(bundle)
            .arg("--state")
            .arg(state)
            .arg("--pty")
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut sim = Simulator { child, path: String::new(), state: state.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(p) = std::fs::read_to_string(&ready) {
                if !p.is_empty() {
                    sim.path = p;
                    return Ok(sim);
                }
            }
            if let Some(status) = sim.child.try_wait()? {
                let log = std::fs::read_to_string(state.join("device.log")).unwrap_or_default();
                bail!("the simulator exited ({status}) before serving:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("the simulator did not start within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Loads statistics bytes into a head big enough for `capacity` classes.
/// A head from statistics pulled off the device, and the device's
/// "unknown" threshold, which travels with them.
fn head_from(bytes: &[u8], capacity: usize) -> Result<(GaussianHead<OwnedStorage>, f64)> {
    let (head, header) = GaussianHead::from_stats(bytes, capacity, &stats::Expect::default())?;
    Ok((head, header.novelty_threshold))
}

/// How new classes reach the device.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The device's own (simulated) camera.
    Camera,
    /// Training images sent from the host as raw frames.
    Frames,
}

/// The protocol through a device, the new classes' training images sent as
/// frames. Returns the stages and the base head's novelty figures.
pub fn through_device(client: &mut Client, setup: &Setup, protocol: &eval::Protocol) -> Result<(Vec<Stage>, Novelty)> {
    run_device(client, setup, protocol, Source::Frames, false).map(|r| (r.stages, r.novelty))
}

pub struct DeviceRun {
    pub stages: Vec<Stage>,
    pub novelty: Novelty,
    /// Final stage, classified frame by frame on the device.
    pub device_accuracy: Option<f64>,
    /// Fraction of test frames where the device and the host agree.
    pub agreement: Option<f64>,
}

/// The learner on a device: the base head pushed as statistics, each class
/// learned from frames (or the device's camera) and committed there, and
/// every stage scored with the statistics pulled back, so what is measured
/// is what the device holds.
pub struct OnDevice<'c> {
    client: &'c mut Client,
    source: Source,
    shots: Option<usize>,
    capacity: usize,
    pulled: Option<(GaussianHead<OwnedStorage>, f64)>,
}

impl eval::Learner for OnDevice<'_> {
    fn start(&mut self, setup: &Setup, base: GaussianHead<OwnedStorage>, threshold: f64) -> Result<()> {
        let meta = StatsMeta {
            backbone_sha256: setup.extractor.sha256,
            preprocess: setup.extractor.pre,
            novelty_threshold: threshold,
            ..Default::default()
        };
        let bytes = stats::to_vec(&base, &meta).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.client.push_stats(&bytes).context("pushing the base statistics")?;
        let (pulled, device_threshold) = head_from(&self.client.pull_stats()?, self.capacity)?;
        ensure!(
            device_threshold.total_cmp(&threshold).is_eq(),
            "the device took threshold {device_threshold} from statistics that bring {threshold}"
        );
        self.pulled = Some((pulled, threshold));
        Ok(())
    }

    fn learn(&mut self, setup: &Setup, class: u16, chosen: &[usize]) -> Result<usize> {
        self.client.begin_class(setup.labels.label(class), false)?;
        let staged = match self.source {
            Source::Camera => {
                let shots = self.shots.context("camera capture needs a sample count")?;
                self.client.capture(u32::try_from(shots)?, Some(class))?
            }
            Source::Frames => {
                let bar = fit::bar(true, chosen.len() as u64, &format!("sending class {class}"));
                let mut n = 0;
                for &j in chosen {
                    let s = &setup.train.samples[j];
                    n = self.client.learn(s.format, &s.pixels)?;
                    bar.inc(1);
                }
                bar.finish_and_clear();
                n
            }
        };
        self.client.commit()?;
        self.pulled = Some(head_from(&self.client.pull_stats()?, self.capacity)?);
        Ok(staged as usize)
    }

    fn head(&mut self) -> Result<(&mut GaussianHead<OwnedStorage>, f64)> {
        let (head, threshold) = self.pulled.as_mut().context("the device learner was not started")?;
        Ok((head, *threshold))
    }
}

/// The protocol on a device ([`OnDevice`]), then a check that the host's
/// features of the test set, on which every stage was scored, are the
/// device's.
pub fn run_device(
    client: &mut Client,
    setup: &Setup,
    protocol: &eval::Protocol,
    source: Source,
    predict_on_device: bool,
) -> Result<DeviceRun> {
    let capacity = protocol.base.len() + protocol.add.len();
    let mut learner = OnDevice { client, source, shots: protocol.shots, capacity, pulled: None };
    let (stages, novelty) = eval::run(setup, &mut learner, protocol, &mut |stage, i, taken| {
        if let (Some(c), Some(n)) = (stage.added, taken) {
            eprintln!("learned class {c} ({}) on the device from {n} samples", setup.labels.0[c as usize]);
        }
        print_stage(stage, &setup.labels, i);
    })?;
    let OnDevice { client, pulled, .. } = learner;
    let (mut pulled, threshold) = pulled.context("the device learner was not started")?;
    // Every stage above was scored on the host's features of the test set:
    // check that they are the device's. The whole set when asked for (the
    // demo), else a spread sample of it (`eval --via`).
    let n = setup.test.len();
    let step = if predict_on_device { 1 } else { (n / AGREEMENT_SAMPLE).max(1) };
    let frames: Vec<usize> = (0..n).step_by(step).collect();
    let bar = fit::bar(true, frames.len() as u64, "device predictions");
    let d = setup.extractor.dim();
    let (mut right, mut same) = (0usize, 0usize);
    for &k in &frames {
        let s = &setup.test.samples[k];
        let p = client.predict(s.format, &s.pixels)?;
        let class = setup.labels.class_of(p.label.as_str());
        right += usize::from(class == Some(s.label));
        // The same class, and the same "unknown" answer at the threshold.
        let local = pulled.predict(&setup.test_features[k * d..(k + 1) * d], None)?;
        let local_novel = local.novelty > threshold;
        same += usize::from(pulled.slots()[local.class].label == p.label && local_novel == p.novel);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let agreement = same as f64 / frames.len().max(1) as f64;
    check_agreement(agreement, frames.len())?;
    let (device_accuracy, agreement) =
        if predict_on_device { (Some(right as f64 / n as f64), Some(agreement)) } else { (None, None) };
    Ok(DeviceRun { stages, novelty, device_accuracy, agreement })
}

/// Test frames the device classifies to check the host's features when the
/// whole set is not asked for.
const AGREEMENT_SAMPLE: usize = 200;
/// Below this share of agreeing answers the host's and the device's features
/// differ by more than rounding (near-ties may flip a few frames).
const MIN_AGREEMENT: f64 = 0.99;

/// Fails when device and host disagree beyond rounding: the host's scores
/// would describe some other model or data than the device's.
fn check_agreement(agreement: f64, frames: usize) -> Result<()> {
    if agreement < MIN_AGREEMENT {
        bail!(
            "the device and the host agree on only {:.2}% of {frames} test frames (at least {:.0}% expected): \
             the host's features are not the device's. Is the device running another bundle, or was the \
             feature cache ($GAUSSEDGE_CACHE/features) written for other data?",
            agreement * 100.0,
            MIN_AGREEMENT * 100.0
        );
    }
    Ok(())
}

fn print_stage(s: &Stage, labels: &Labels, i: usize) {
    let added = s.added.map(|c| format!("+{c} {}", labels.0[c as usize])).unwrap_or_else(|| "base".into());
    let new = s.new_accuracy.map(|a| format!(", new classes {a:.4}")).unwrap_or_default();
    eprintln!(
        "stage {i} ({added}): {} classes, accuracy {:.4} (old classes {:.4}{new})",
        s.classes_known, s.accuracy, s.old_accuracy
    );
}

/// `gaussedge demo`.
pub fn run(kind: DatasetKind, dir: &Path, bundle: Option<PathBuf>, shots: u32, json: &Path, plot: &Path) -> Result<()> {
    let started = Instant::now();
    let bundle = bundle.unwrap_or_else(|| PathBuf::from(format!("models/{}-b0-base5", kind.name())));
    if !bundle.join("manifest.json").exists() {
        bail!(
            "no base bundle at {}: train one with `gaussedge train --dataset {} --classes 0-4 --out {}`",
            bundle.display(),
            kind.name(),
            bundle.display()
        );
    }
    let setup = Setup::load(&bundle, None, false, kind, dir, true)?;
    let base: Vec<u16> = setup.bundle.manifest.base_classes.clone();
    let add: Vec<u16> = (0..setup.labels.0.len() as u16).filter(|c| !base.contains(c)).collect();
    let head = setup.bundle.manifest.head;
    let state = std::env::temp_dir().join(format!("gaussedge-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let camera = format!("{}:{}", kind.name(), dir.display());
    let sim = Simulator::start(
        &device_binary()?,
        &bundle,
        &state,
        &["--camera".into(), camera, "--capacity".into(), "16".into(), "--max-frame".into(), "64x64".into()],
    )?;
    eprintln!("device simulator serving {} (state in {})", sim.path, state.display());
    let mut client = Client::open(&sim.path, 921_600)?;
    client.timeout = Duration::from_secs(30);
    let info = client.hello()?;
    eprintln!(
        "device: firmware {}, feature dim {}, capacity {}, backbone {}",
        info.firmware,
        info.dim,
        info.capacity,
        hex::encode(info.backbone_sha256)
    );
    let protocol =
        eval::Protocol { head: &head, base: &base, add: &add, shots: Some(shots as usize), seed: 0, progress: true };
    let run = run_device(&mut client, &setup, &protocol, Source::Camera, true)?;
    let elapsed = started.elapsed().as_secs_f64();
    println!("\n{}", eval::render_table(&run.stages, &setup.labels));
    let last = run.stages.last().context("no stage")?;
    println!("final confusion matrix (rows: true class, columns: predicted):\n{}", last.confusion.render());
    if let (Some(acc), Some(agree)) = (run.device_accuracy, run.agreement) {
        println!(
            "final test set classified on the device: accuracy {acc:.4}, agreement with the host {:.2}%",
            agree * 100.0
        );
    }
    println!(
        "novelty of classes {:?} before they were learned: AUROC {:.4}, TNR at 95% TPR {:.4}",
        add, run.novelty.auroc, run.novelty.tnr_at_95_tpr
    );
    println!("link: {} requests, {} retries; demo took {elapsed:.0} s", client.stats.requests, client.stats.retries);
    let report = serde_json::json!({
        "dataset": kind.name(),
        "bundle": bundle,
        "base": base,
        "add": add,
        "shots": shots,
        "head": head,
        "stages": run.stages,
        "final_accuracy": last.accuracy,
        "device_final_accuracy": run.device_accuracy,
        "device_host_agreement": run.agreement,
        "novelty": run.novelty,
        "seconds": elapsed,
    });
    for p in [json, plot] {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    crate::util::write_atomic(json, &serde_json::to_vec_pretty(&report)?)?;
    eval::plot(plot, &format!("{}: classes learned on the device", kind.name()), &eval::curves(&run.stages))?;
    println!("wrote {} and {}", json.display(), plot.display());
    drop(sim);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// `gaussedge demo --fleet`: three simulated devices on pseudo-terminals,
/// each with its agent, a merger and Mosquitto on a loopback port. The
/// devices learn classes 5-9 from their cameras, one class on two of them;
/// after each commit the demo measures how long until the class answers on
/// the other two devices, and at the end checks every device holds the same
/// head and scores it on the test set.
pub fn run_fleet(kind: DatasetKind, dir: &Path, bundle: Option<PathBuf>, shots: u32, json: &Path) -> Result<()> {
    use crate::fleet::{Agent, Broker};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let started = Instant::now();
    let bundle = bundle.unwrap_or_else(|| PathBuf::from(format!("models/{}-b0-base5", kind.name())));
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("demo --fleet needs an MQTT broker: apt-get install mosquitto (scripts/setup.sh does)")?;
    let setup = Setup::load(&bundle, None, false, kind, dir, true)?;
    let base: Vec<u16> = setup.bundle.manifest.base_classes.clone();
    let root = std::env::temp_dir().join(format!("gaussedge-fleet-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;

    // The broker, on a free loopback port, persisting nothing.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = root.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))?;
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _broker =
        Killed(Command::new(&mosquitto).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let broker = Broker { host: "127.0.0.1".into(), port };
    eprintln!("mosquitto on 127.0.0.1:{port}");

    let base_stats = std::fs::read(bundle.join("head.stats"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let merger = {
        let (broker, base_stats, stop) = (broker.clone(), base_stats.clone(), stop.clone());
        std::thread::spawn(move || crate::fleet::run_merger(&broker, "demo", &base_stats, &stop))
    };

    let camera = format!("{}:{}", kind.name(), dir.display());
    let extra = ["--camera".into(), camera, "--capacity".into(), "16".into(), "--max-frame".into(), "64x64".into()];
    let mut sims = vec![];
    let mut clients = vec![];
    let mut agents = vec![];
    let mut links = vec![];
    for i in 0..3 {
        let sim = Simulator::start(&device_binary()?, &bundle, &root.join(format!("dev{i}")), &extra)?;
        let mut c = Client::open(&sim.path, 921_600)?;
        c.timeout = Duration::from_secs(30);
        let agent = Agent::new(&mut c, "demo", &format!("d{i}"), &base_stats, &root.join(format!("agent{i}")))?;
        links.push(agent.link(&broker));
        eprintln!("device d{i} serving {}", sim.path);
        sims.push(sim);
        clients.push(c);
        agents.push(agent);
    }
    let mut bytes_published = vec![];
    let mut bytes_pushed = vec![];
    let mut step_all =
        |agents: &mut Vec<Agent>, clients: &mut Vec<Client>, links: &mut Vec<crate::fleet::AgentLink>| -> Result<()> {
            for i in 0..3 {
                for line in agents[i].step(&mut clients[i], &mut links[i])? {
                    if let Some(n) =
                        line.split('(').nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<usize>().ok())
                    {
                        if line.starts_with("published") {
                            bytes_published.push(n);
                        } else {
                            bytes_pushed.push(n);
                        }
                    }
                    eprintln!("  agent d{i}: {line}");
                }
            }
            Ok(())
        };
    // Let the agents connect and take the base head.
    for _ in 0..10 {
        step_all(&mut agents, &mut clients, &mut links)?;
    }

    // Who learns what: Sandal on two devices (one class, the pooled summary).
    let plan: [(usize, u16); 6] = [(0, 5), (1, 6), (1, 5), (2, 7), (2, 8), (0, 9)];
    let probes: Vec<usize> = (0..setup.labels.0.len() as u16)
        .map(|c| setup.test.samples.iter().position(|s| s.label == c).unwrap_or(0))
        .collect();
    let mut rows = vec![];
    for &(i, c) in &plan {
        let name = setup.labels.label(c);
        let extend = clients[i].classes()?.iter().any(|e| e.label.as_str() == name.as_str());
        clients[i].begin_class(name.clone(), extend)?;
        clients[i].capture(shots, Some(c))?;
        clients[i].commit()?;
        let t0 = Instant::now();
        eprintln!("d{i} learned {} from {shots} camera frames", name);
        // Until the other two devices know the class.
        let probe = &setup.test.samples[probes[c as usize]];
        let mut answered = [false; 3];
        answered[i] = true;
        while !answered.iter().all(|&a| a) {
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("class {name} did not reach every device within 120 s");
            }
            step_all(&mut agents, &mut clients, &mut links)?;
            let pending: Vec<usize> = (0..3).filter(|&j| !answered[j]).collect();
            for j in pending {
                // Known there: the device ranks the class (a test image of
                // it may still be answered with a neighbour, as anywhere).
                if clients[j].classes()?.iter().any(|e| e.label.as_str() == name.as_str()) {
                    let p = clients[j].predict(probe.format, &probe.pixels)?;
                    eprintln!("  d{j} knows {name}; a test image of it answered {}", p.label);
                    answered[j] = true;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("  {name} known on every device {secs:.2} s after the commit on d{i}");
        rows.push(serde_json::json!({"class": c, "label": name.as_str(), "device": format!("d{i}"), "seconds": secs}));
    }
    // Settle: every device holds the same statistics.
    let settle = Instant::now();
    let same = loop {
        step_all(&mut agents, &mut clients, &mut links)?;
        let pulled: Vec<Vec<u8>> = clients.iter_mut().map(|c| c.pull_stats()).collect::<Result<_, _>>()?;
        if pulled.iter().all(|p| *p == pulled[0]) {
            break pulled[0].clone();
        }
        if settle.elapsed() > Duration::from_secs(60) {
            bail!("the devices' heads did not converge within 60 s");
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = merger.join();
    let (mut head, threshold) = head_from(&same, 16)?;
    let add: Vec<u16> = (0..setup.labels.0.len() as u16).filter(|c| !base.contains(c)).collect();
    let stage = eval::evaluate(&mut head, &setup.test_features, &setup.truth(), &setup.labels, &base, &add, threshold)?;

    println!("\n| class | taught on | seconds from the commit until every device knows it |\n| --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} ({}) | {} | {:.2} |",
            r["class"],
            r["label"].as_str().unwrap_or(""),
            r["device"].as_str().unwrap_or(""),
            r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    let mean = |v: &[usize]| if v.is_empty() { 0 } else { v.iter().sum::<usize>() / v.len() };
    println!(
        "\nall three devices hold the same head: {} classes, test accuracy {:.4}, open-set accuracy {}",
        head.class_count(),
        stage.accuracy,
        stage.open_set.as_ref().map_or("-".into(), |o| format!("{:.4}", o.accuracy))
    );
    println!(
        "bytes per update: a device's contribution {} (mean of {}), a fleet head pushed to a device {} (mean of {}); demo took {:.0} s",
        mean(&bytes_published),
        bytes_published.len(),
        mean(&bytes_pushed),
        bytes_pushed.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(parent) = json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        json,
        serde_json::to_vec_pretty(&serde_json::json!({
            "bundle": bundle,
            "shots": shots,
            "classes": rows,
            "final_accuracy": stage.accuracy,
            "final_open_set": stage.open_set,
            "contribution_bytes": bytes_published,
            "head_bytes": bytes_pushed,
        }))?,
    )?;
    eprintln!("wrote {}", json.display());
    drop(sims);
    Ok(())
}
