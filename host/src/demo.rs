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
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use gaussedge_data::DatasetKind;
use gaussedge_device::bundle::HeadDefaults;
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

/// The protocol through a device. Returns the stages and the base head's
/// novelty figures.
pub fn through_device(
    client: &mut Client,
    setup: &Setup,
    head: &HeadDefaults,
    base: &[u16],
    add: &[u16],
    shots: Option<u32>,
    seed: u64,
) -> Result<(Vec<Stage>, Novelty)> {
    run_device(client, setup, head, base, add, shots, seed, Source::Frames, false).map(|r| (r.stages, r.novelty))
}

pub struct DeviceRun {
    pub stages: Vec<Stage>,
    pub novelty: Novelty,
    /// Final stage, classified frame by frame on the device.
    pub device_accuracy: Option<f64>,
    /// Fraction of test frames where the device and the host agree.
    pub agreement: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
pub fn run_device(
    client: &mut Client,
    setup: &Setup,
    head: &HeadDefaults,
    base: &[u16],
    add: &[u16],
    shots: Option<u32>,
    seed: u64,
    source: Source,
    predict_on_device: bool,
) -> Result<DeviceRun> {
    let capacity = base.len() + add.len();
    let (base_head, threshold) = setup.base_head(head, base, capacity, true)?;
    let meta = StatsMeta {
        backbone_sha256: setup.extractor.sha256,
        preprocess: setup.extractor.pre,
        novelty_threshold: threshold,
        ..Default::default()
    };
    let bytes = stats::to_vec(&base_head, &meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    client.push_stats(&bytes).context("pushing the base statistics")?;
    let truth = setup.truth();
    let (mut pulled, device_threshold) = head_from(&client.pull_stats()?, capacity)?;
    ensure!(
        device_threshold.total_cmp(&threshold).is_eq(),
        "the device took threshold {device_threshold} from statistics that bring {threshold}"
    );
    let novelty = eval::novelty(&mut pulled, &setup.test_features, &truth, base, add)?;
    let mut stages =
        vec![eval::evaluate(&mut pulled, &setup.test_features, &truth, &setup.labels, base, &[], threshold)?];
    print_stage(stages.last().expect("stage"), &setup.labels, 0);
    let mut rng = Rng::new(seed);
    for (i, &c) in add.iter().enumerate() {
        let label = setup.labels.label(c);
        client.begin_class(label.clone(), false)?;
        let staged = match source {
            Source::Camera => client.capture(shots.context("camera capture needs a sample count")?, Some(c))?,
            Source::Frames => {
                let idx = setup.train.indices_of(c);
                let chosen: Vec<usize> = match shots {
                    Some(k) => rng.sample(idx.len(), k as usize).into_iter().map(|j| idx[j]).collect(),
                    None => idx,
                };
                let bar = fit::bar(true, chosen.len() as u64, &format!("sending class {c}"));
                let mut n = 0;
                for j in chosen {
                    let s = &setup.train.samples[j];
                    n = client.learn(s.format, &s.pixels)?;
                    bar.inc(1);
                }
                bar.finish_and_clear();
                n
            }
        };
        client.commit()?;
        let (mut now, t) = head_from(&client.pull_stats()?, capacity)?;
        stages.push(eval::evaluate(&mut now, &setup.test_features, &truth, &setup.labels, base, &add[..=i], t)?);
        eprintln!("learned class {c} ({}) on the device from {staged} samples", setup.labels.0[c as usize]);
        print_stage(stages.last().expect("stage"), &setup.labels, i + 1);
        pulled = now;
    }
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
    let setup = Setup::load(&bundle, None, kind, dir, true)?;
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
        gaussedge_device::bundle::hex(&info.backbone_sha256)
    );
    let run = run_device(&mut client, &setup, &head, &base, &add, Some(shots), 0, Source::Camera, true)?;
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
