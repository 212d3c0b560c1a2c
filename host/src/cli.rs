//! `gaussedge`: the host CLI.

use crate::build;
use crate::data::{self, parse_classes, DatasetKind, Split};
use crate::fit;
use crate::util::write_atomic;
use crate::views::Tta;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gaussedge_bundle::{self as bundle, HeadDefaults, Manifest};
use gaussedge_shared::config::Estimator;
use gaussedge_shared::stats::{self, StatsMeta};
use gaussedge_shared::Transform;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "gaussedge", version, about = "Train, export and fit gaussedge model bundles; talk to devices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train EfficientNet-b0 on the base classes and write a model bundle
    /// (backbone.onnx, head.stats, manifest.json, metrics.json, MODEL_CARD.md).
    #[cfg(feature = "train")]
    Train(TrainArgs),
    /// Export a training checkpoint as ONNX.
    Export(ExportArgs),
    /// (Re)fit a bundle's base-class statistics with its backbone (tract).
    Fit(FitArgs),
    /// Make a bundle from any ONNX feature extractor (trained elsewhere).
    Bundle(BundleArgs),
    /// Compare tch and tract features for a bundle's checkpoint.
    #[cfg(feature = "train")]
    Parity(ParityArgs),
    /// Show a statistics file's header and classes.
    Stats { file: PathBuf },
    /// Draw the accuracy curves of several `eval --json` reports in one plot.
    Plot {
        /// Curves as NAME=REPORT.json, in legend order.
        #[arg(required = true)]
        curves: Vec<String>,
        #[arg(long, default_value = "classes added one at a time")]
        title: String,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Training and forward throughput of EfficientNet-b0 with tch (used by
    /// bench/train-throughput.sh beside PyTorch eager). Prints JSON.
    #[cfg(feature = "train")]
    #[command(hide = true)]
    BenchTrain {
        #[arg(long, default_value_t = 64)]
        size: i64,
        #[arg(long, default_value_t = 64)]
        batch: i64,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Run on CUDA when present.
        #[arg(long)]
        cuda: bool,
        /// The layout (default: as `train` picks for the device).
        #[arg(long, value_enum)]
        memory_format: Option<crate::layout::MemoryFormat>,
    },
    /// Exact merge of statistics learned on different devices.
    Merge(MergeArgs),
    /// Fleets over an MQTT broker: the merger, the fleet's state, forgets.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The seed's protocol: base head, then classes added one at a time.
    Eval(EvalArgs),
    /// The end-to-end demo: simulator on a PTY, classes learned on the device.
    Demo(DemoArgs),
    /// Describe a device.
    Info {
        #[command(flatten)]
        port: PortArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send statistics to a device.
    Push {
        #[command(flatten)]
        port: PortArgs,
        file: PathBuf,
    },
    /// Fetch a device's statistics.
    Pull {
        #[command(flatten)]
        port: PortArgs,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Teach a device a class from an image folder or its own camera.
    Learn(LearnArgs),
    /// Classify images on a device.
    Predict {
        #[command(flatten)]
        port: PortArgs,
        images: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show or set the novelty score above which a device answers "unknown".
    Threshold(ThresholdArgs),
    /// Remove a class from a device.
    Forget {
        #[command(flatten)]
        port: PortArgs,
        #[arg(long)]
        label: String,
    },
    /// Samples a device stored while learning.
    Captures {
        #[command(subcommand)]
        command: CapturesCommand,
    },
    /// Send a new bundle (backbone and statistics) to a device, verified and
    /// swapped in atomically.
    Flash {
        #[command(flatten)]
        port: PortArgs,
        #[arg(long)]
        bundle: PathBuf,
    },
}

#[derive(Subcommand)]
enum CapturesCommand {
    /// Write the stored samples as an image folder (one sub-folder per class)
    /// that `gaussedge train --dataset folder` reads.
    Pull {
        #[command(flatten)]
        port: PortArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct PortArgs {
    /// Serial port or simulator pseudo-terminal.
    #[arg(long)]
    port: String,
    #[arg(long, default_value_t = 921_600)]
    baud: u32,
    /// Seconds to wait for each answer before retrying.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

impl PortArgs {
    fn connect(&self) -> Result<crate::client::Client> {
        let mut c =
            crate::client::Client::open(&self.port, self.baud).with_context(|| format!("opening {}", self.port))?;
        c.timeout = std::time::Duration::from_secs_f64(self.timeout);
        Ok(c)
    }
}

#[derive(Args)]
struct LearnArgs {
    #[command(flatten)]
    port: PortArgs,
    #[arg(long)]
    label: String,
    /// Image folder (PNG/JPEG files) to learn from.
    #[arg(long, conflicts_with = "capture")]
    from: Option<PathBuf>,
    /// Capture N frames with the device's camera.
    #[arg(long)]
    capture: Option<u32>,
    /// Dataset class the simulated camera shows.
    #[arg(long)]
    source_class: Option<u16>,
    /// Add samples to an existing class.
    #[arg(long)]
    extend: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// Statistics files to merge.
    files: Vec<PathBuf>,
    /// The statistics every file started from (counted once).
    #[arg(long)]
    base: Option<PathBuf>,
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value = "0-4")]
    base: String,
    #[arg(long, default_value = "5,6,7,8,9")]
    add: String,
    /// Samples per new class (default: all its training images).
    #[arg(long)]
    shots: Option<usize>,
    /// Random draws of the shots to average over.
    #[arg(long, default_value_t = 1)]
    draws: usize,
    #[command(flatten)]
    head: HeadArgs,
    /// Evaluate through a device instead of in process.
    #[arg(long)]
    via: Option<String>,
    /// Test-time views, measured without rebuilding the bundle: `flip`
    /// averages every image's features (training and test) with its mirror
    /// image's. Not through a device: a device runs what the bundle's graph
    /// says (`train`/`bundle --tta flip` put the average into the graph).
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the accuracy plot (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Base bundle (default: models/<dataset>-b0-base5).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Frames the device captures per new class.
    #[arg(long, default_value_t = 500)]
    shots: u32,
    #[arg(long, default_value = "out/demo.json")]
    json: PathBuf,
    #[arg(long, default_value = "out/demo.png")]
    plot: PathBuf,
    /// Three devices sharing what they learn through an MQTT broker
    /// (Mosquitto on a loopback port) instead of one; writes out/fleet.json.
    #[arg(long)]
    fleet: bool,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Dataset kind.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Dataset folder (default for fashion-mnist: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data: Option<PathBuf>,
}

impl DataArgs {
    fn dir(&self) -> Result<PathBuf> {
        self.data
            .clone()
            .or_else(|| self.dataset.default_dir())
            .with_context(|| format!("--data DIR is required for {}", self.dataset.name()))
    }
}

#[cfg(feature = "train")]
#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Base classes, e.g. 0-4.
    #[arg(long, default_value = "0-4")]
    classes: String,
    /// Input side length.
    #[arg(long, default_value_t = 64)]
    size: u16,
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Disable random crop and flip.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: crate::train::OptimizerKind,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: crate::train::Schedule,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Self-supervised rotation labels: 4 trains on `class x quarter turn`
    /// (one random turn per image), 1 is plain class labels.
    #[arg(long, default_value_t = 1)]
    rotations: u8,
    /// Cutout: blank a square of this side (pixels) in every training
    /// image, at a random centre; 0 is off. DeVries & Taylor used half the
    /// image side.
    #[arg(long, default_value_t = 0)]
    cutout: u16,
    /// LogitNorm: train on logits scaled to unit norm over this
    /// temperature (Wei et al. 2022 used 0.04 on CIFAR-10); 0 is off.
    #[arg(long, default_value_t = 0.0)]
    logit_norm: f64,
    /// Cosine classifier: logits are this scale times the cosine between
    /// features and each class's weights (16 is typical); 0 is the plain
    /// linear classifier.
    #[arg(long, default_value_t = 0.0)]
    cosine_scale: f64,
    /// RandAugment: N operations per training image at magnitude M of 30,
    /// as N,M (the paper's CIFAR setting is 2,9); off when absent.
    #[arg(long, value_name = "N,M")]
    randaugment: Option<crate::randaugment::RandAugment>,
    /// Start from this finished checkpoint's weights instead of a random
    /// network (a warm restart: the schedule runs again from --lr). Its
    /// dataset, classes and network must match this run's (the input
    /// size may differ); the manifest records its weights' SHA-256.
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// Use the tiny test variant of the network.
    #[arg(long)]
    tiny: bool,
    /// Keep at most N training images per class.
    #[arg(long)]
    limit_per_class: Option<usize>,
    /// Threads for tch (1 is the most stable on a shared machine).
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Where checkpoints go (default: $GAUSSEDGE_CACHE/runs/<bundle name>).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Continue the run in the checkpoint folder.
    #[arg(long)]
    resume: bool,
    /// Force the CPU even when CUDA is present.
    #[arg(long)]
    cpu: bool,
    /// How convolution kernels and image batches lie in memory (default:
    /// channels-last on the CPU, measured faster there; contiguous on CUDA).
    #[cfg(feature = "train")]
    #[arg(long, value_enum)]
    memory_format: Option<crate::layout::MemoryFormat>,
    /// Test-time views the bundle's graph averages: `flip` runs each frame
    /// with its mirror image as a batch of two and averages the features
    /// (more accurate, about twice the backbone's time per frame). Only the
    /// bundle changes, not training: a finished run re-exports with
    /// `--resume`.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ExportArgs {
    /// Training checkpoint folder (model.safetensors + state.json).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Include the base-class FC head as a second output, `logits`.
    #[arg(long)]
    logits: bool,
    /// Also output the pooled outputs of these MBConv blocks (0-15) as
    /// `features_<i>`, for a feature ensemble; e.g. `--blocks 14,15`.
    #[arg(long, value_delimiter = ',')]
    blocks: Vec<usize>,
}

#[derive(Args)]
struct FitArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Dataset folder (default: the manifest's dataset default).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Classes to fit (default: the manifest's base classes).
    #[arg(long)]
    classes: Option<String>,
    /// Head design to record in the manifest (default: keep the manifest's).
    #[command(flatten)]
    head: HeadArgs,
    /// Head capacity to record.
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// Share of held-out base-class images the "unknown" threshold keeps.
    #[arg(long, default_value_t = crate::calibrate::DEFAULT_TPR)]
    tpr: f64,
    /// Hold out this share of the base classes' training images (seed 0)
    /// instead of the backbone's own validation split.
    #[arg(long)]
    held_out: Option<f64>,
}

#[derive(Args)]
struct BundleArgs {
    /// The feature extractor: an ONNX graph taking one NCHW float image.
    #[arg(long)]
    onnx: PathBuf,
    /// Graph outputs whose concatenation is the feature vector, each
    /// [batch, D] or pooled [batch, C, 1, 1].
    #[arg(long, value_delimiter = ',', required = true)]
    outputs: Vec<String>,
    /// Input size, WIDTHxHEIGHT.
    #[arg(long)]
    size: String,
    /// Input channels (1: grey, 3: RGB).
    #[arg(long, default_value_t = 3)]
    channels: u8,
    /// Channel means on the 0..1 scale, one or three values (default:
    /// measured on the base classes' training images). Give the network's
    /// own, e.g. ImageNet's 0.485,0.456,0.406.
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Channel standard deviations, as --mean (e.g. 0.229,0.224,0.225).
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    #[command(flatten)]
    data: DataArgs,
    /// Base classes: the ones the statistics start with.
    #[arg(long)]
    base: String,
    #[arg(long)]
    out: PathBuf,
    /// Where the network came from, for the model card.
    #[arg(long)]
    source: Option<String>,
    /// Share of held-out base-class images the "unknown" threshold keeps.
    #[arg(long, default_value_t = crate::calibrate::DEFAULT_TPR)]
    tpr: f64,
    /// Share of the base classes' training images held out to calibrate it.
    #[arg(long, default_value_t = DEFAULT_HELD_OUT)]
    held_out: f64,
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// Test-time views the bundle's graph averages (see `train --tta`).
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["tpr", "value", "show", "never"])))]
struct ThresholdArgs {
    #[command(flatten)]
    port: PortArgs,
    /// The threshold that keeps this share of held-out base-class images,
    /// from the bundle's calibration (needs --bundle).
    #[arg(long)]
    tpr: Option<f64>,
    /// This novelty score.
    #[arg(long, allow_negative_numbers = true)]
    value: Option<f64>,
    /// Never answer "unknown".
    #[arg(long)]
    never: bool,
    /// Print the device's threshold (and, with --bundle, the rate it keeps).
    #[arg(long)]
    show: bool,
    /// The bundle the device runs: its calibration maps rates to thresholds.
    #[arg(long)]
    bundle: Option<PathBuf>,
}

#[cfg(feature = "train")]
#[derive(Args)]
struct ParityArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Checkpoint folder (default: the one recorded in the manifest).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images per batch compared.
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EstimatorArg {
    Seed,
    Pooled,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PriorArg {
    Uniform,
    LogCount,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TransformArg {
    None,
    /// Subtract the base classes' mean, scale to unit L2 norm.
    Cl2n,
    /// Tukey's power 0.5 after a shift of 0.3 (SiLU outputs reach -0.28).
    Tukey,
    /// Tukey, then cl2n.
    TukeyCl2n,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NoveltyArg {
    Distance,
    OwnSpread,
}

/// The head's design, each part overriding the bundle's manifest (or the
/// preset named by `--estimator`): the levers measured in bench/accuracy.md.
#[derive(Args, Clone, Default)]
pub struct HeadArgs {
    /// Estimator preset to start from (default: the bundle's head settings).
    #[arg(long, value_enum)]
    estimator: Option<EstimatorArg>,
    /// Shrink the covariance toward its mean variance by this fraction.
    #[arg(long, conflicts_with_all = ["ridge", "oas"])]
    shrinkage: Option<f64>,
    /// Add this to the covariance's diagonal instead.
    #[arg(long, conflicts_with = "oas")]
    ridge: Option<f64>,
    /// Oracle Approximating Shrinkage (the fraction from the data).
    #[arg(long)]
    oas: bool,
    #[arg(long, value_enum)]
    prior: Option<PriorArg>,
    /// Subtract each class mean's estimated noise from its distances
    /// (`on`), or score with the raw means (`off`, the seed's way).
    #[arg(long, value_enum)]
    debias: Option<Switch>,
    /// What the "unknown" answer's novelty score measures: the distance to
    /// the nearest class (`distance`), or that distance less the class's
    /// spread beyond the pooled one (`own-spread`, so classes learned from a
    /// few hundred frames keep the calibrated share of their images).
    #[arg(long, value_enum)]
    novelty: Option<NoveltyArg>,
    #[arg(long, value_enum)]
    transform: Option<TransformArg>,
    /// Backbone outputs whose concatenation is the feature vector, e.g.
    /// `features` (the last layer) or `blocks` (every block's pooled output).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
}

impl HeadArgs {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: HeadDefaults) -> HeadDefaults {
        use gaussedge_shared::{Power, Prior, Regularizer};
        let mut h = self.estimator.map(|e| defaults_for(e.into())).unwrap_or(base);
        if let Some(a) = self.shrinkage {
            h.settings.regularizer = Regularizer::Shrinkage(a);
        }
        if let Some(l) = self.ridge {
            h.settings.regularizer = Regularizer::Ridge(l);
        }
        if self.oas {
            h.settings.regularizer = Regularizer::Oas;
        }
        if let Some(p) = self.prior {
            h.settings.prior = match p {
                PriorArg::Uniform => Prior::Uniform,
                PriorArg::LogCount => Prior::LogCount,
            };
        }
        if let Some(d) = self.debias {
            h.settings.debias = d == Switch::On;
        }
        if let Some(n) = self.novelty {
            h.settings.novelty = match n {
                NoveltyArg::Distance => gaussedge_shared::NoveltyScore::Distance,
                NoveltyArg::OwnSpread => gaussedge_shared::NoveltyScore::OwnSpread,
            };
        }
        if let Some(t) = self.transform {
            let tukey = Some(Power { shift: 0.3, exponent: 0.5 });
            h.transform = match t {
                TransformArg::None => Transform::IDENTITY,
                TransformArg::Cl2n => Transform { power: None, center_l2: true },
                TransformArg::Tukey => Transform { power: tukey, center_l2: false },
                TransformArg::TukeyCl2n => Transform { power: tukey, center_l2: true },
            };
        }
        h
    }

    pub fn layers(&self) -> Option<&[String]> {
        self.layers.as_deref()
    }
}

impl From<EstimatorArg> for Estimator {
    fn from(e: EstimatorArg) -> Self {
        match e {
            EstimatorArg::Seed => Estimator::Seed,
            EstimatorArg::Pooled => Estimator::Pooled,
        }
    }
}

pub fn defaults_for(e: Estimator) -> HeadDefaults {
    HeadDefaults { weighting: e.weighting(), settings: e.settings(), transform: Transform::IDENTITY }
}

/// The command-line entry point.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "train")]
        Command::Train(a) => train(a),
        Command::Export(a) => export(a),
        Command::Fit(a) => fit_cmd(a),
        Command::Bundle(a) => bundle_cmd(a),
        #[cfg(feature = "train")]
        Command::Parity(a) => parity(a),
        Command::Stats { file } => stats_info(&file),
        Command::Plot { curves, title, out } => plot_reports(&curves, &title, &out),
        #[cfg(feature = "train")]
        Command::BenchTrain { size, batch, steps, threads, cuda, memory_format } => {
            bench_train(size, batch, steps, threads, cuda, memory_format)
        }
        Command::Merge(a) => merge(a),
        Command::Fleet(c) => fleet_cmd(c),
        Command::Eval(a) => eval_cmd(a),
        Command::Demo(a) if a.fleet => {
            let json = if a.json == Path::new("out/demo.json") { PathBuf::from("out/fleet.json") } else { a.json };
            crate::demo::run_fleet(a.data.dataset, &a.data.dir()?, a.bundle, a.shots, &json)
        }
        Command::Demo(a) => crate::demo::run(a.data.dataset, &a.data.dir()?, a.bundle, a.shots, &a.json, &a.plot),
        Command::Info { port, json } => {
            let mut c = port.connect()?;
            let info = c.hello()?;
            let classes = c.classes()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"device": info, "classes": classes}))?);
                return Ok(());
            }
            let learning =
                info.learning.as_ref().map(|(l, n)| format!("{l} ({n} samples staged)")).unwrap_or_else(|| "-".into());
            let slot = info
                .slot
                .map(|s| format!("{} (generation {})", ["A", "B"][s as usize & 1], info.generation))
                .unwrap_or_else(|| "none yet".into());
            let p = info.preprocess;
            for (k, v) in [
                ("firmware", format!("{} (protocol {})", info.firmware, info.protocol)),
                ("backbone", hex::encode(info.backbone_sha256)),
                ("input", format!("{}x{}x{}", p.width, p.height, p.channels)),
                ("feature dim", info.dim.to_string()),
                ("classes", format!("{} of capacity {}", info.classes, info.capacity)),
                ("learning", learning),
                ("head settings", format!("{:?}", info.settings)),
                ("novelty threshold", info.novelty_threshold.to_string()),
                ("saved in slot", slot),
                ("requests", format!("{} applied, {} answered from cache", info.applied, info.replayed)),
            ] {
                println!("{k:>18}: {v}");
            }
            for c in classes {
                println!(
                    "{:>18}  {:>3} {:<32} {:>7} samples, {} stored",
                    "",
                    c.slot,
                    c.label.as_str(),
                    c.count,
                    c.stored
                );
            }
            Ok(())
        }
        Command::Push { port, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            stats::read_header(&bytes).with_context(|| format!("{} is not a valid statistics file", file.display()))?;
            port.connect()?.push_stats(&bytes)?;
            println!("pushed {} ({} bytes)", file.display(), bytes.len());
            Ok(())
        }
        Command::Pull { port, out } => {
            let bytes = port.connect()?.pull_stats()?;
            stats::read_header(&bytes)?;
            write_atomic(&out, &bytes)?;
            println!("pulled {} bytes into {}", bytes.len(), out.display());
            Ok(())
        }
        Command::Learn(a) => learn(a),
        Command::Threshold(a) => threshold(a),
        Command::Predict { port, images, json } => predict(&port, &images, json),
        Command::Forget { port, label } => {
            port.connect()?.forget(gaussedge_shared::label(&label).context("label must be 1 to 32 bytes")?)?;
            println!("forgot {label}");
            Ok(())
        }
        Command::Captures { command: CapturesCommand::Pull { port, out } } => captures_pull(&port, &out),
        Command::Flash { port, bundle } => {
            let b = bundle::Bundle::read(&bundle)?;
            let stats_bytes = b.stats.clone().context("the bundle has no head.stats")?;
            let manifest = std::fs::read(bundle.join(bundle::MANIFEST))?;
            port.connect()?.flash(&b.onnx, &manifest, &stats_bytes)?;
            println!("flashed {} (backbone {})", bundle.display(), b.manifest.backbone_sha256);
            Ok(())
        }
    }
}

/// The held-out images a bundle's threshold is calibrated on: those its
/// calibration names, else the validation split of the recipe that trained
/// its backbone, else `fraction` of the base classes with seed 0.
fn held_out_of(m: &Manifest, fraction: Option<f64>) -> bundle::HeldOut {
    if let Some(f) = fraction {
        return bundle::HeldOut { seed: 0, fraction: f, limit_per_class: None };
    }
    if let Some(c) = &m.calibration {
        return c.held_out;
    }
    let recipe = &m.extra["recipe"];
    match (recipe["seed"].as_u64(), recipe["val_fraction"].as_f64()) {
        (Some(seed), Some(fraction)) => {
            bundle::HeldOut { seed, fraction, limit_per_class: m.extra["limit_per_class"].as_u64().map(|l| l as usize) }
        }
        _ => bundle::HeldOut { seed: 0, fraction: DEFAULT_HELD_OUT, limit_per_class: None },
    }
}

/// Share of the base classes' training images held out for calibration
/// when a backbone's own validation split is not known.
const DEFAULT_HELD_OUT: f64 = 0.1;

/// A training option whose 0 turns a lever off and whose other values must
/// be positive and finite.
#[cfg(feature = "train")]
fn off_or_positive(flag: &str, what: &str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("{flag} takes {what} > 0 (or 0 for off), not {value}");
    }
    Ok(value)
}

#[cfg(feature = "train")]
fn train(a: TrainArgs) -> Result<()> {
    use crate::arch::ArchConfig;
    use crate::train::{self as tr, Recipe, TrainJob};

    tch::set_num_threads(a.threads);
    let classes = parse_classes(&a.classes).map_err(anyhow::Error::msg)?;
    let dir = a.data.dir()?;
    let mut recipe = Recipe::default_for(classes.len(), a.size);
    recipe.epochs = a.epochs;
    recipe.batch = a.batch;
    recipe.lr = a.lr;
    recipe.weight_decay = a.weight_decay;
    recipe.label_smoothing = a.label_smoothing;
    recipe.seed = a.seed;
    recipe.optimizer = a.optimizer;
    recipe.schedule = a.schedule;
    if ![1, 4].contains(&a.rotations) {
        bail!("--rotations takes 1 (off) or 4 (quarter turns), not {}", a.rotations);
    }
    recipe.rotations = a.rotations;
    if a.cutout >= recipe.size {
        bail!("--cutout {} must be smaller than the image side {}", a.cutout, recipe.size);
    }
    recipe.cutout = a.cutout;
    recipe.logit_norm = off_or_positive("--logit-norm", "a temperature", a.logit_norm)?;
    recipe.arch = ArchConfig::b0(recipe.outputs(classes.len()));
    if a.no_augment {
        recipe.crop_pad = 0;
        recipe.flip = false;
    }
    if a.tiny {
        recipe.arch = ArchConfig::tiny(recipe.outputs(classes.len()));
    }
    recipe.arch.cosine_scale = off_or_positive("--cosine-scale", "a scale", a.cosine_scale)?;
    recipe.randaugment = a.randaugment;
    if let Some(dir) = &a.init_from {
        recipe.warm_start = Some(tr::warm_start_of(dir, a.data.dataset, &classes, &recipe)?);
    }
    let name = a.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into());
    let checkpoint_dir = a.checkpoint_dir.clone().unwrap_or_else(|| fit::cache_dir().join("runs").join(&name));
    let (device, why) = tr::pick_device(a.cpu);
    eprintln!("{why}; checkpoints in {}", checkpoint_dir.display());
    let job = TrainJob {
        dataset: a.data.dataset,
        data: dir.clone(),
        classes: classes.clone(),
        recipe,
        checkpoint_dir: checkpoint_dir.clone(),
        resume: a.resume,
        device,
        limit_per_class: a.limit_per_class,
        progress: true,
        init_from: a.init_from.clone(),
        memory_format: a.memory_format.unwrap_or(crate::layout::MemoryFormat::default_for(device)),
    };
    let trained = tr::train(&job)?;
    let export = build::Export { checkpoint: &checkpoint_dir, limit_per_class: a.limit_per_class, tta: a.tta };
    let report = build::from_trained(&a.out, &trained, a.data.dataset, &dir, &classes, &export)?;
    let fc = &report.fc;
    println!(
        "FC head, {}-class test accuracy {:.4} (base classes {:.4})",
        fc.classes,
        fc.accuracy(),
        fc.accuracy_of(&classes)
    );
    println!("{}", fc.render());
    let g = &report.gaussian;
    println!("Gaussian head (base classes only), {}-class test accuracy {:.4}", g.classes, g.accuracy());
    println!("bundle written to {}", a.out.display());
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    use crate::arch::Arch;
    use crate::onnx::{self, ExportOptions, Weights};
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.checkpoint.join("state.json"))
            .with_context(|| format!("reading {}/state.json", a.checkpoint.display()))?,
    )?;
    let arch = Arch::new(serde_json::from_value(state["recipe"]["arch"].clone()).context("state.json recipe.arch")?);
    let size = state["recipe"]["size"].as_u64().context("state.json recipe.size")? as usize;
    let weights = Weights::from_safetensors(&std::fs::read(a.checkpoint.join("model.safetensors"))?)?;
    let bytes = onnx::export(
        &arch,
        &weights,
        &ExportOptions { height: size, width: size, logits: a.logits, block_features: a.blocks.clone() },
    )?;
    write_atomic(&a.out, &bytes)?;
    println!("{} ({} bytes, SHA-256 {})", a.out.display(), bytes.len(), hex::encode(bundle::sha256(&bytes)));
    Ok(())
}

/// `WIDTHxHEIGHT`.
fn parse_size(s: &str) -> Result<(u16, u16)> {
    let (w, h) = s.split_once('x').with_context(|| format!("--size {s:?}: expected WIDTHxHEIGHT"))?;
    let side = |v: &str| v.trim().parse::<u16>().ok().filter(|&v| (1..=bundle::MAX_SIDE).contains(&v));
    match (side(w), side(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => bail!("--size {s:?}: sides of 1 to {} pixels", bundle::MAX_SIDE),
    }
}

/// One value for every channel, or one per channel.
fn per_channel(v: &[f32], what: &str) -> Result<[f32; 3]> {
    match v {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => bail!("--{what} takes one or three values, not {}", v.len()),
    }
}

fn bundle_cmd(a: BundleArgs) -> Result<()> {
    let onnx = std::fs::read(&a.onnx).with_context(|| format!("reading {}", a.onnx.display()))?;
    let (width, height) = parse_size(&a.size)?;
    anyhow::ensure!(a.channels == 1 || a.channels == 3, "--channels 1 (grey) or 3 (RGB), not {}", a.channels);
    let kind = a.data.dataset;
    let dir = a.data.dir()?;
    let classes = parse_classes(&a.base).map_err(anyhow::Error::msg)?;
    let train = data::load(kind, &dir, Split::Train)?;
    let (mean, std) = match (&a.mean, &a.std) {
        (Some(m), Some(s)) => (per_channel(m, "mean")?, per_channel(s, "std")?),
        (None, None) => {
            let base = train.filter(&classes);
            let n = crate::prep::Normalization::of(&base, &(0..base.len()).collect::<Vec<_>>());
            (n.mean, n.std)
        }
        _ => bail!("give both --mean and --std, or neither (then both are measured on the base classes)"),
    };
    let pre = gaussedge_shared::stats::Preprocess { width, height, channels: a.channels, mean, std };
    pre.check().map_err(anyhow::Error::msg)?;
    let source = a.source.clone().unwrap_or_else(|| format!("an ONNX file, {}", a.onnx.display()));
    let onnx = crate::views::with_views(onnx, &a.outputs, &pre, a.tta)
        .with_context(|| format!("averaging test-time views in {}", a.onnx.display()))?;
    let built = build::build(build::Spec {
        onnx: &onnx,
        preprocess: pre,
        layers: a.outputs.clone(),
        kind,
        train: &train,
        base: &classes,
        head: fit::recommended_head(),
        capacity: a.capacity,
        held_out: bundle::HeldOut { seed: 0, fraction: a.held_out, limit_per_class: None },
        tpr: a.tpr,
        batch: 32,
        extra: serde_json::json!({
            "source": source,
            "onnx": crate::util::portable_path(&a.onnx),
            "tta": a.tta,
            "command": crate::util::portable_command(),
        }),
        progress: true,
    })
    .with_context(|| format!("{} cannot serve as a gaussedge backbone", a.onnx.display()))?;
    let manifest = &built.manifest;
    build::write(&a.out, &onnx, &built.head, manifest)?;
    build::write_foreign_card(&a.out, manifest, &source)?;
    let c = manifest.calibration.as_ref().context("calibration")?;
    println!(
        "bundle written to {}: {} features from {}, {} base classes; \"unknown\" above novelty {:.3} (keeps {:.1}% of {} held-out images)",
        a.out.display(),
        manifest.feature_dim,
        a.outputs.join(" + "),
        classes.len(),
        c.threshold,
        100.0 * c.target_tpr,
        c.samples
    );
    Ok(())
}

fn fit_cmd(a: FitArgs) -> Result<()> {
    let (b, extractor) = fit::extractor_with(&a.bundle, a.head.layers(), 32)?;
    let mut manifest = b.manifest.clone();
    manifest.layers = extractor.layers.clone();
    manifest.feature_dim = extractor.dim();
    let kind: DatasetKind = serde_json::from_value(serde_json::Value::String(manifest.dataset.clone()))
        .with_context(|| format!("unknown dataset {:?} in the manifest", manifest.dataset))?;
    let dir = a.data.clone().or_else(|| kind.default_dir()).context("--data DIR is required")?;
    let classes = match &a.classes {
        Some(c) => parse_classes(c).map_err(anyhow::Error::msg)?,
        None => manifest.base_classes.clone(),
    };
    manifest.head = a.head.apply(manifest.head);
    let held = held_out_of(&manifest, a.held_out);
    let train = data::load(kind, &dir, Split::Train)?;
    let fitted = fit::fit_base(&extractor, kind, &train, &classes, &manifest.head, a.capacity, held, a.tpr, true)?;
    manifest.base_classes = classes;
    let c = &fitted.calibration;
    println!(
        "fitted {} classes into {}; \"unknown\" above novelty {:.2} (keeps {:.1}% of {} held-out images)",
        fitted.head.class_count(),
        a.bundle.join(bundle::STATS).display(),
        c.threshold,
        100.0 * c.target_tpr,
        c.samples
    );
    build::update_card_calibration(&a.bundle, &fitted.calibration)?;
    manifest.calibration = Some(fitted.calibration);
    build::write(&a.bundle, &b.onnx, &fitted.head, &manifest)?;
    Ok(())
}

#[cfg(feature = "train")]
fn parity(a: ParityArgs) -> Result<()> {
    use crate::net::EfficientNet;
    use crate::parity;
    use tch::{nn, Device, Kind, Tensor};
    let (b, _) = fit::extractor_for(&a.bundle, 1)?;
    let checkpoint = match a.checkpoint {
        Some(c) => c,
        None => crate::util::resolve_portable(
            b.manifest.extra["checkpoint"].as_str().context("no checkpoint recorded; pass --checkpoint")?,
        ),
    };
    let (_state, arch, weights) = crate::train::load_checkpoint(&checkpoint)?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = EfficientNet::new(&vs.root(), &arch);
    let tmp = std::env::temp_dir().join(format!("gaussedge-parity-{}.safetensors", std::process::id()));
    std::fs::write(&tmp, weights.to_safetensors()?)?;
    let loaded = vs.load(&tmp);
    let _ = std::fs::remove_file(&tmp);
    loaded?;
    let p = b.manifest.preprocess;
    let inputs = Tensor::randn([a.batch as i64, 3, p.height as i64, p.width as i64], (Kind::Float, Device::Cpu));
    let report = parity::check(&arch, &net, &vs, &inputs)?;
    println!(
        "parity on {} random inputs at {}x{}, last layer and every block's pooled output: \
         max |tch - tract| = {:.3e}, smallest layer scale {:.3}, worst relative {:.3e}",
        a.batch, p.width, p.height, report.max_abs_diff, report.feature_scale, report.relative
    );
    if report.relative > 1e-4 {
        bail!("parity above 1e-4 of the feature scale");
    }
    Ok(())
}

fn stats_info(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (head, header) = gaussedge_shared::GaussianHead::from_stats(&bytes, 1, &stats::Expect::default())?;
    println!("{}: {} bytes", file.display(), bytes.len());
    println!("{header:#?}");
    for (slot, c) in head.classes() {
        println!(
            "class {slot}: {:?} ({} samples, spread {:.4e}, mean noise {:.4e})",
            c.label.as_str(),
            c.count,
            head.spread(slot),
            head.noise(slot)
        );
    }
    Ok(())
}

fn label_arg(s: &str) -> Result<gaussedge_shared::Label> {
    gaussedge_shared::label(s).context("label must be 1 to 32 bytes")
}

/// The frame a device whose backbone takes `info`'s input should get for
/// each photo: decoded, turned upright, and fitted by
/// [`data::photo::fit_frame`]. Every file is read before anything is sent,
/// and every one that cannot be is named, so a bad file fails the command
/// with the device untouched rather than after half a folder.
fn photos_for(info: &gaussedge_shared::wire::DeviceInfo, files: &[PathBuf]) -> Result<Vec<data::Sample>> {
    let input = gaussedge_shared::frame::input_format(&info.preprocess);
    anyhow::ensure!(
        input.width <= info.max_frame.width && input.height <= info.max_frame.height,
        "the device's input {}x{} is larger than its largest frame {}x{}",
        input.width,
        input.height,
        info.max_frame.width,
        info.max_frame.height
    );
    let bar = fit::bar(files.len() > 20, files.len() as u64, "reading images");
    let (mut ok, mut bad) = (vec![], vec![]);
    for f in files {
        match data::photo::read_photo(f, 0, input) {
            Ok(s) => ok.push(s),
            Err(e) => bad.push(e.to_string()),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !bad.is_empty() {
        bail!("{} of {} images cannot be read; nothing was sent:\n  {}", bad.len(), files.len(), bad.join("\n  "));
    }
    Ok(ok)
}

/// The files of `dir` to learn from: every regular file not hidden, sorted.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "{} holds no images", dir.display());
    Ok(files)
}

fn learn(a: LearnArgs) -> Result<()> {
    let mut c = a.port.connect()?;
    let label = label_arg(&a.label)?;
    let photos = match (&a.from, a.capture) {
        (Some(dir), None) => {
            let info = c.hello()?;
            photos_for(&info, &image_files(dir)?)?
        }
        (None, Some(_)) => vec![],
        _ => bail!("--from DIR or --capture N"),
    };
    c.begin_class(label, a.extend)?;
    let result = (|| -> Result<u64> {
        if let Some(n) = a.capture {
            return Ok(c.capture(n, a.source_class)?);
        }
        let bar = fit::bar(true, photos.len() as u64, "learning");
        let mut staged = 0;
        for s in &photos {
            staged = c.learn(s.format, &s.pixels)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(staged)
    })();
    match result {
        Ok(staged) => {
            let (slot, count) = c.commit()?;
            println!("learned {} from {staged} samples (slot {slot}, {count} in total)", a.label);
            Ok(())
        }
        Err(e) => {
            let _ = c.abort();
            Err(e)
        }
    }
}

fn predict(port: &PortArgs, images: &[PathBuf], json: bool) -> Result<()> {
    let mut c = port.connect()?;
    let info = c.hello()?;
    let photos = photos_for(&info, images)?;
    let mut out = vec![];
    for (f, s) in images.iter().zip(&photos) {
        let p = c.predict(s.format, &s.pixels)?;
        if json {
            out.push(serde_json::json!({
                "image": f,
                "answer": if p.novel { "unknown" } else { p.label.as_str() },
                "label": p.label.as_str(),
                "score": p.score,
                "novelty": p.novelty,
                "novel": p.novel,
            }));
        } else if p.novel {
            println!("{}: unknown (nearest: {}, novelty {:.1})", f.display(), p.label, p.novelty);
        } else {
            println!("{}: {} (score {:.3}, novelty {:.1})", f.display(), p.label, p.score, p.novelty);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn threshold(a: ThresholdArgs) -> Result<()> {
    let mut c = a.port.connect()?;
    let info = c.hello()?;
    let calibration = match &a.bundle {
        Some(dir) => {
            let m = Manifest::read(dir)?;
            anyhow::ensure!(
                m.sha256_bytes() == Some(info.backbone_sha256),
                "{} is not the bundle this device runs (backbone {} here, {} on the device)",
                dir.display(),
                m.backbone_sha256,
                hex::encode(info.backbone_sha256)
            );
            Some(m.calibration.with_context(|| format!("{} has no calibration; run `gaussedge fit`", dir.display()))?)
        }
        None => None,
    };
    let rate_of = |t: f64| {
        calibration.as_ref().and_then(|c| {
            c.quantiles
                .iter()
                .rev()
                .find(|q| q[1] <= t)
                .map(|q| format!(" (keeps at least {:.1}% of held-out base-class images)", 100.0 * q[0]))
        })
    };
    let t = if a.show {
        let t = info.novelty_threshold;
        println!("\"unknown\" above novelty {t}{}", rate_of(t).unwrap_or_default());
        return Ok(());
    } else if a.never {
        f64::INFINITY
    } else if let Some(v) = a.value {
        anyhow::ensure!(stats::valid_threshold(v), "a threshold is a novelty score: >= 0, not {v}");
        v
    } else {
        let tpr = a.tpr.context("--tpr, --value, --never or --show")?;
        let c = calibration.as_ref().context("--tpr needs --bundle DIR (the calibration it reads rates from)")?;
        c.threshold_for(tpr).with_context(|| {
            format!(
                "rate {tpr} is outside the calibrated range {}..{}",
                c.quantiles.first().map_or(0.0, |q| q[0]),
                c.quantiles.last().map_or(0.0, |q| q[0])
            )
        })?
    };
    c.set_novelty_threshold(t)?;
    let now = c.hello()?.novelty_threshold;
    println!("\"unknown\" above novelty {now}{}", rate_of(now).unwrap_or_default());
    Ok(())
}

fn captures_pull(port: &PortArgs, out: &Path) -> Result<()> {
    let mut c = port.connect()?;
    let mut total = 0;
    for class in c.classes()? {
        let dir = out.join(class.label.as_str().replace(['/', '\\'], "_"));
        std::fs::create_dir_all(&dir)?;
        for i in 0..class.stored {
            let (format, pixels) = c.pull_capture(class.label.clone(), i)?;
            let s = data::Sample { label: 0, format, pixels };
            data::write_png(&s, &dir.join(format!("{i:05}.png")))?;
            total += 1;
        }
    }
    println!("wrote {total} samples under {}", out.display());
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    anyhow::ensure!(!a.files.is_empty(), "name at least one statistics file");
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let first = read(&a.files[0])?;
    let header = stats::read_header(&first)?;
    let files: Vec<Vec<u8>> = a.files.iter().map(|p| read(p)).collect::<Result<_>>()?;
    let base = a.base.as_deref().map(read).transpose()?;
    let merged = crate::merge::merge(&files, base.as_deref())?;
    let meta =
        StatsMeta { backbone_sha256: header.backbone_sha256, preprocess: header.preprocess, ..Default::default() };
    let bytes = stats::to_vec(&merged, &meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(&a.out, &bytes)?;
    for (_, c) in merged.classes() {
        println!("{:>32}: {} samples", c.label.as_str(), c.count);
    }
    println!("merged {} files into {}", a.files.len(), a.out.display());
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    use crate::eval::{self, Setup};
    let dir = a.data.dir()?;
    let base = parse_classes(&a.base).map_err(anyhow::Error::msg)?;
    let add = parse_classes(&a.add).map_err(anyhow::Error::msg)?;
    // Checked before the features are extracted: averaging the views of a
    // graph that already averages them only doubles the work.
    anyhow::ensure!(
        a.tta == Tta::None || Tta::of(&Manifest::read(&a.bundle)?) == Tta::None,
        "{}'s graph already averages each frame with its mirror image: --tta flip would change nothing",
        a.bundle.display()
    );
    let setup = Setup::load(&a.bundle, a.head.layers(), a.tta == Tta::Flip, a.data.dataset, &dir, true)?;
    let head = a.head.apply(setup.bundle.manifest.head);
    anyhow::ensure!(
        a.via.is_none() || setup.extractor.layers == setup.bundle.manifest.layers,
        "--layers cannot change through a device: it runs the bundle's own layers"
    );
    anyhow::ensure!(
        a.via.is_none() || a.tta == Tta::None,
        "--tta cannot run through a device: it runs one view per frame"
    );
    let protocol = |seed| eval::Protocol { head: &head, base: &base, add: &add, shots: a.shots, seed, progress: true };
    let (stages, novelty, device) = match &a.via {
        Some(port) => {
            let mut c = PortArgs { port: port.clone(), baud: 921_600, timeout: 10.0 }.connect()?;
            let (stages, novelty) = crate::demo::through_device(&mut c, &setup, &protocol(a.seed))?;
            (vec![stages], novelty, true)
        }
        None => {
            let mut all = vec![];
            let mut nov = None;
            for draw in 0..a.draws.max(1) {
                let (s, n) = eval::run_in_process(&setup, &protocol(a.seed + draw as u64))?;
                all.push(s);
                nov = Some(n);
            }
            (all, nov.context("no draw")?, false)
        }
    };
    let finals: Vec<f64> = stages.iter().map(|s| s.last().map_or(0.0, |x| x.accuracy)).collect();
    let final_accuracy = finals.iter().sum::<f64>() / finals.len() as f64;
    let last = &stages[0];
    println!("{}", eval::render_table(last, &setup.labels));
    if let Some(f) = last.last() {
        println!("final confusion matrix (rows: true class, columns: predicted):\n{}", f.confusion.render());
    }
    if finals.len() > 1 {
        println!(
            "final accuracy over {} draws: {:.4} (min {:.4}, max {:.4})",
            finals.len(),
            final_accuracy,
            finals.iter().cloned().fold(f64::INFINITY, f64::min),
            finals.iter().cloned().fold(0.0, f64::max)
        );
    }
    println!(
        "final 10-class accuracy {final_accuracy:.4}; novelty AUROC {:.4}, TNR at 95% TPR {:.4}",
        novelty.auroc, novelty.tnr_at_95_tpr
    );
    if let Some(o) = last.last().and_then(|s| s.open_set.as_ref()) {
        // Over every draw, as the closed-set figure above; per class, the first.
        let opens: Vec<&eval::OpenSet> = stages.iter().filter_map(|s| s.last()?.open_set.as_ref()).collect();
        let mean = |f: &dyn Fn(&eval::OpenSet) -> Option<f64>| {
            let v: Vec<f64> = opens.iter().filter_map(|o| f(o)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let accuracy = mean(&|o| Some(o.accuracy)).unwrap_or(o.accuracy);
        let range = if opens.len() > 1 {
            let acc = opens.iter().map(|o| o.accuracy);
            format!(
                " over {} draws (min {:.4}, max {:.4})",
                opens.len(),
                acc.clone().fold(f64::INFINITY, f64::min),
                acc.fold(0.0, f64::max)
            )
        } else {
            String::new()
        };
        println!(
            "final open-set accuracy {accuracy:.4}{range} at threshold {:.3}: base-class images kept {:.4}, learned-class images kept {}",
            o.threshold,
            mean(&|o| Some(o.old_kept)).unwrap_or(o.old_kept),
            mean(&|o| o.new_kept).map_or("-".into(), |k| format!("{k:.4}"))
        );
        let per: Vec<String> =
            o.kept_by_class.iter().map(|(c, k)| format!("{c} {}: {k:.4}", setup.labels.0[*c as usize])).collect();
        if !per.is_empty() {
            let draw = if opens.len() > 1 { " (first draw)" } else { "" };
            println!("learned classes' test images kept{draw}: {}", per.join(", "));
        }
    }
    let report = serde_json::json!({
        "bundle": a.bundle,
        "dataset": a.data.dataset.name(),
        "base": base,
        "add": add,
        "shots": a.shots,
        "draws": finals.len(),
        "head": head,
        "layers": setup.extractor.layers,
        "tta": a.tta,
        "via_device": device,
        "stages": last,
        "final_accuracy": final_accuracy,
        "final_accuracies": finals,
        // Means over the draws (`stages` holds the first draw).
        "final_old_accuracy": stages.iter().map(|s| s.last().map_or(0.0, |x| x.old_accuracy)).sum::<f64>()
            / stages.len() as f64,
        "final_new_accuracy": stages.iter().map(|s| s.last().and_then(|x| x.new_accuracy).unwrap_or(0.0)).sum::<f64>()
            / stages.len() as f64,
        "mean_stage_accuracy": (0..last.len())
            .map(|i| stages.iter().map(|s| s[i].accuracy).sum::<f64>() / stages.len() as f64)
            .collect::<Vec<_>>(),
        "novelty": novelty,
        "final_open_set": last.last().and_then(|s| s.open_set.as_ref()),
        "final_open_set_accuracies": stages.iter().filter_map(|s| s.last().and_then(|x| x.open_set.as_ref()).map(|o| o.accuracy)).collect::<Vec<_>>(),
        "final_new_kept": stages.iter().filter_map(|s| s.last().and_then(|x| x.open_set.as_ref()).and_then(|o| o.new_kept)).collect::<Vec<_>>(),
    });
    if let Some(p) = &a.json {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(p, &serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = &a.plot {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        eval::plot(p, &format!("{}: classes added one at a time", a.data.dataset.name()), &eval::curves(last))?;
    }
    Ok(())
}

fn plot_reports(curves: &[String], title: &str, out: &Path) -> Result<()> {
    let mut series = vec![];
    for c in curves {
        let (name, file) = c.split_once('=').with_context(|| format!("{c:?}: expected NAME=REPORT.json"))?;
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).with_context(|| format!("reading {file}"))?)
                .with_context(|| format!("{file}: not JSON"))?;
        let stages = report["stages"].as_array().with_context(|| format!("{file}: no stages (not an eval report)"))?;
        // The mean over draws where there were several.
        let acc: Option<Vec<f64>> = match report["mean_stage_accuracy"].as_array() {
            Some(mean) => mean.iter().map(|v| v.as_f64()).collect(),
            None => stages.iter().map(|s| s["accuracy"].as_f64()).collect(),
        };
        series.push((name.to_string(), acc.with_context(|| format!("{file}: a stage without accuracy"))?));
    }
    crate::eval::plot(out, title, &series)?;
    println!("{}", out.display());
    Ok(())
}

#[cfg(feature = "train")]
fn bench_train(
    size: i64,
    batch: i64,
    steps: usize,
    threads: i32,
    cuda: bool,
    memory_format: Option<crate::layout::MemoryFormat>,
) -> Result<()> {
    use crate::arch::{Arch, ArchConfig};
    use crate::net::EfficientNet;
    use std::time::Instant;
    use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let arch = Arch::new(ArchConfig::b0(5));
    let (device, why) = if cuda {
        crate::train::pick_device(false)
    } else {
        (Device::Cpu, "on the CPU (--cuda for a GPU)".to_string())
    };
    eprintln!("bench-train {why}");
    let layout = memory_format.unwrap_or(crate::layout::MemoryFormat::default_for(device));
    let vs = nn::VarStore::new(device);
    let net = EfficientNet::new(&vs.root(), &arch);
    layout.apply_to(&vs);
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    let xs = layout.apply(&Tensor::randn([batch, 3, size, size], (Kind::Float, device)));
    let ys = Tensor::randint(5, [batch], (Kind::Int64, device));
    let step = |opt: &mut nn::Optimizer| {
        let loss = net.logits_t(&xs, true).cross_entropy_for_logits(&ys);
        opt.backward_step(&loss);
    };
    // CUDA runs asynchronously: a clock read before the queue drains
    // measures how fast work is queued, not done.
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    step(&mut opt);
    sync();
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut opt);
    }
    sync();
    let train = (steps as i64 * batch) as f64 / t.elapsed().as_secs_f64();
    let fwd = || tch::no_grad(|| net.logits_t(&xs, false));
    let _ = fwd();
    sync();
    let t = Instant::now();
    for _ in 0..steps {
        let _ = fwd();
    }
    sync();
    let forward = (steps as i64 * batch) as f64 / t.elapsed().as_secs_f64();
    // Where a step's time goes besides the network: the optimiser's update
    // (what a fused step could shorten) and the trainer's augmentation of
    // a batch on the CPU (what a loader thread could take off the step).
    let (mut pass, mut update) = (0.0, 0.0);
    for _ in 0..steps {
        let t = Instant::now();
        let loss = net.logits_t(&xs, true).cross_entropy_for_logits(&ys);
        opt.zero_grad();
        loss.backward();
        sync();
        pass += t.elapsed().as_secs_f64();
        let t = Instant::now();
        opt.step();
        sync();
        update += t.elapsed().as_secs_f64();
    }
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let norm = crate::prep::Normalization { mean: [0.5; 3], std: [0.25; 3] };
    let mut rng = crate::rng::Rng::new(0);
    let mut augment_ms = |policy: Option<crate::randaugment::RandAugment>| {
        let recipe = crate::train::Recipe { randaugment: policy, ..crate::train::Recipe::default_for(5, size as u16) };
        let t = Instant::now();
        for _ in 0..steps {
            let _ = crate::train::augment(&images, &recipe, &norm, &mut rng);
        }
        t.elapsed().as_secs_f64() * 1e3 / steps as f64
    };
    let augment = augment_ms(None);
    let augment_ra = augment_ms(Some(crate::randaugment::RandAugment { ops: 2, magnitude: 9 }));
    let per_step = |s: f64| s * 1e3 / steps as f64;
    println!(
        "{}",
        serde_json::json!({"impl": "tch", "memory_format": layout, "device": format!("{device:?}"), "train_img_s": train, "forward_img_s": forward, "size": size, "batch": batch, "threads": threads,
            "step_parts_ms": {"forward_backward": per_step(pass), "optimizer": per_step(update), "augment": augment, "augment_randaugment_2_9": augment_ra}})
    );
    Ok(())
}

/// Where a fleet member finds its broker and fleet.
#[derive(Args, Clone)]
struct FleetArgs {
    /// The MQTT broker: mqtt://HOST:PORT (any MQTT 3.1.1 broker).
    #[arg(long)]
    broker: crate::fleet::Broker,
    /// The fleet's name: its topics live under gaussedge/NAME/.
    #[arg(long)]
    fleet: String,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Keep the fleet head: the exact merge of every device's statistics
    /// over the shared base, published retained; runs until interrupted.
    Merge {
        #[command(flatten)]
        at: FleetArgs,
        /// The base bundle every device started from (its head.stats).
        #[arg(long, conflicts_with = "base")]
        bundle: Option<PathBuf>,
        /// Or the base statistics file itself.
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Run beside a device: publish what it learns, push it the fleet head;
    /// runs until interrupted.
    Agent {
        #[command(flatten)]
        at: FleetArgs,
        #[command(flatten)]
        port: PortArgs,
        /// This device's id in the fleet (one topic level).
        #[arg(long)]
        device: String,
        /// The fleet's base bundle (what the device was flashed with).
        #[arg(long)]
        bundle: PathBuf,
        /// Where the agent keeps its state (default: $GAUSSEDGE_CACHE/fleet/FLEET/DEVICE).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Devices seen, their classes and generations, the fleet head.
    Status {
        #[command(flatten)]
        at: FleetArgs,
        #[arg(long)]
        json: bool,
    },
    /// Forget a class fleet-wide.
    Forget {
        label: String,
        #[command(flatten)]
        at: FleetArgs,
    },
}

fn fleet_cmd(c: FleetCommand) -> Result<()> {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    match c {
        FleetCommand::Merge { at, bundle, base } => {
            let path = match (bundle, base) {
                (Some(b), None) => b.join("head.stats"),
                (None, Some(p)) => p,
                _ => anyhow::bail!("give the base as --bundle DIR or --base FILE"),
            };
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            eprintln!(
                "merger for fleet {:?} on {}:{}, base {}",
                at.fleet,
                at.broker.host,
                at.broker.port,
                path.display()
            );
            crate::fleet::run_merger(&at.broker, &at.fleet, &bytes, &stop)
        }
        FleetCommand::Agent { at, port, device, bundle, state } => {
            let base =
                std::fs::read(bundle.join("head.stats")).with_context(|| format!("reading {}", bundle.display()))?;
            let dir = state.unwrap_or_else(|| crate::fit::cache_dir().join("fleet").join(&at.fleet).join(&device));
            let mut client = port.connect()?;
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let mut agent = crate::fleet::Agent::new(&mut client, &at.fleet, &device, &base, &dir)?;
            eprintln!("agent for device {device:?} of fleet {:?} on {}:{}", at.fleet, at.broker.host, at.broker.port);
            agent.run(&mut client, &at.broker, &stop)
        }
        FleetCommand::Status { at, json } => {
            let snap =
                crate::fleet::snapshot(&at.broker, &at.fleet, Duration::from_millis(500), Duration::from_secs(15))?;
            let status = crate::fleet::status(&snap)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::fleet::render_status(&status));
            }
            Ok(())
        }
        FleetCommand::Forget { label, at } => {
            let id = crate::fleet::forget(&at.broker, &at.fleet, &label)?;
            println!("fleet {:?}: forget {id} of {label:?} published", at.fleet);
            Ok(())
        }
    }
}
