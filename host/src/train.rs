//! Base training: EfficientNet on the base classes with tch, checkpointed
//! every epoch (safetensors plus a JSON state) so a run resumes where it
//! stopped.

use crate::arch::{Arch, ArchConfig};
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::layout::MemoryFormat;
use crate::net::EfficientNet;
use crate::onnx::Weights;
use crate::parity::weights_of;
use crate::prep::{self, Normalization};
use crate::randaugment::{Image, RandAugment};
use crate::rng::Rng;
use crate::util::write_atomic;
use anyhow::{bail, Context, Result};
use gaussedge_bundle::HeldOut;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The device a run trains on, and a sentence saying why, for the user:
/// a GPU user whose binary or driver cannot reach CUDA must learn it at
/// the start of a run, not from its speed hours later.
pub fn pick_device(cpu_only: bool) -> (Device, String) {
    if cpu_only {
        return (Device::Cpu, "training on the CPU (--cpu)".into());
    }
    if !cfg!(feature = "cuda") {
        return (
            Device::Cpu,
            "training on the CPU: this binary was built without CUDA (on an NVIDIA machine: `scripts/setup.sh \
             --cuda`, then `cargo build --release -p gaussedge-host --features cuda`)"
                .into(),
        );
    }
    let count = tch::Cuda::device_count();
    if count > 0 && tch::Cuda::is_available() {
        let cudnn = if tch::Cuda::cudnn_is_available() { "with cuDNN" } else { "without cuDNN" };
        (Device::Cuda(0), format!("training on CUDA device 0 of {count}, {cudnn}"))
    } else {
        (
            Device::Cpu,
            "no CUDA device is visible (no NVIDIA driver loaded, or CUDA_VISIBLE_DEVICES hides every GPU): falling \
             back to the CPU"
                .into(),
        )
    }
}

/// Everything that determines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Input side length (images are resized to `size x size`).
    pub size: u16,
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Linear warm-up, in epochs, before the cosine decay.
    pub warmup_epochs: f64,
    /// Random-crop padding in pixels (0: no cropping).
    pub crop_pad: usize,
    pub flip: bool,
    pub seed: u64,
    /// Fraction of the training images held out for per-epoch validation.
    pub val_fraction: f64,
    pub arch: ArchConfig,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    #[serde(default)]
    pub schedule: Schedule,
    /// Self-supervised label augmentation (Lee et al. 2020, SLA; PASS, Zhu
    /// et al. 2021): with 4, every training image is turned by a random
    /// multiple of 90 degrees and the classifier learns the joint label
    /// `class x rotation` (4K outputs). One rotation is drawn per image, so
    /// an epoch costs what it costs without. Why: a network that must tell
    /// a turned car from an upright one learns shape and orientation cues
    /// the base classes alone do not ask for, which is what new classes and
    /// novelty scores need. 1 turns it off; the class prediction reads the
    /// upright (rotation 0) logits.
    #[serde(default = "one")]
    pub rotations: u8,
    /// Cutout (DeVries & Taylor 2017): a square of this side, at a random
    /// centre (clipped at the border), set to the mean colour in every
    /// training image; 0 turns it off. Why: a network that cannot rely on
    /// one discriminative patch spreads its evidence over the whole object,
    /// which features for new classes need. The paper's 16 px on 32x32 is
    /// half the side.
    #[serde(default)]
    pub cutout: u16,
    /// LogitNorm (Wei et al. 2022): the loss sees the logits scaled to unit
    /// L2 norm and divided by this temperature; 0 turns it off. Why: cross
    /// entropy keeps rewarding larger logit norms on training images, which
    /// makes a network confident everywhere; with the norm fixed only the
    /// direction is learned, and unseen classes land further from every
    /// base class. The paper's CIFAR-10 temperature is 0.04.
    #[serde(default)]
    pub logit_norm: f64,
    /// RandAugment (see [`crate::randaugment`]): `ops` operations at one
    /// magnitude on every training image, before the crop and flip; `None`
    /// is off (and leaves the random stream as it was without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randaugment: Option<RandAugment>,
    /// The network this run starts from instead of a random one: a longer
    /// schedule in two legs (SGDR's warm restart, Loshchilov & Hutter
    /// 2017), so a run that already cost hours is extended rather than
    /// repeated. Part of the recipe: the bundle records what it grew from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<WarmStart>,
}

/// The seed of a run's random streams (batch order, crops, flips,
/// RandAugment, dropout): the recipe's, and for a warm start the recipe's
/// mixed with the starting weights' hash. Why: every leg of a warm-restart
/// chain has the same recipe and counts its epochs from one, so on the
/// recipe's seed alone each leg replayed its predecessor's batches and
/// augmentations epoch for epoch (legs 1 to 9 of the CIFAR-10 chain did).
/// The held-out split keeps the recipe's seed: it must not move between
/// legs.
pub fn stream_seed(recipe: &Recipe) -> u64 {
    let warm = recipe
        .warm_start
        .as_ref()
        .and_then(|w| w.weights_sha256.get(..16))
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    warm.map_or(recipe.seed, |w| recipe.seed ^ w)
}

/// Which checkpoint a warm-started run began from, by content: the hash
/// holds wherever the folder was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStart {
    /// SHA-256 of the starting `model.safetensors`, hex.
    pub weights_sha256: String,
    /// Epochs the starting network had trained (its own recipe's budget).
    pub after_epochs: usize,
}

fn one() -> u8 {
    1
}

/// The optimiser: the seed's plain Adam, or AdamW with decoupled decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Adam,
    #[default]
    Adamw,
}

/// Learning-rate schedule: the seed's constant rate, or warm-up then cosine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    #[default]
    Cosine,
}

impl Recipe {
    /// The default recipe for `classes` base classes at `size`.
    pub fn default_for(classes: usize, size: u16) -> Self {
        Recipe {
            size,
            epochs: 15,
            batch: 64,
            lr: 2e-3,
            weight_decay: 0.05,
            label_smoothing: 0.1,
            warmup_epochs: 1.0,
            crop_pad: (size / 8) as usize,
            flip: true,
            seed: 0,
            val_fraction: 0.05,
            arch: ArchConfig::b0(classes),
            optimizer: OptimizerKind::Adamw,
            schedule: Schedule::Cosine,
            rotations: 1,
            cutout: 0,
            logit_norm: 0.0,
            randaugment: None,
            warm_start: None,
        }
    }

    /// Outputs of the classifier for `classes` base classes.
    pub fn outputs(&self, classes: usize) -> usize {
        classes * usize::from(self.rotations.max(1))
    }

    /// Learning rate at `step` of `total` (linear warm-up, then cosine to 0).
    pub fn lr_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        if self.schedule == Schedule::Constant {
            return self.lr;
        }
        let total = (self.epochs * steps_per_epoch).max(1) as f64;
        let warm = self.warmup_epochs * steps_per_epoch as f64;
        let s = step as f64;
        if s < warm {
            self.lr * (s + 1.0) / warm
        } else {
            let t = ((s - warm) / (total - warm).max(1.0)).min(1.0);
            0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// The layout the epoch ran in (absent in runs from before the choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_format: Option<MemoryFormat>,
}

/// What is saved next to the weights after every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub dataset: DatasetKind,
    pub classes: Vec<u16>,
    pub class_names: Vec<String>,
    pub recipe: Recipe,
    pub normalization: Normalization,
    pub epochs_done: usize,
    pub history: Vec<EpochMetrics>,
}

pub struct TrainJob {
    pub dataset: DatasetKind,
    pub data: PathBuf,
    pub classes: Vec<u16>,
    pub recipe: Recipe,
    /// Where `model.safetensors` and `state.json` go.
    pub checkpoint_dir: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Keep at most this many training images per class (quick runs, tests).
    pub limit_per_class: Option<usize>,
    pub progress: bool,
    /// The checkpoint folder `recipe.warm_start` names (needed only when the
    /// run starts, not when it resumes).
    pub init_from: Option<PathBuf>,
    /// How the convolution kernels and image batches lie in memory: an
    /// execution choice like the thread count, not part of the recipe.
    pub memory_format: MemoryFormat,
}

pub struct Trained {
    pub state: TrainState,
    pub arch: Arch,
    pub weights: Weights,
}

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "state.json";

fn to_tensor(inputs: Vec<f32>, n: usize, size: usize) -> Tensor {
    Tensor::from_slice(&inputs).view([n as i64, 3, size as i64, size as i64])
}

/// RandAugment (when the recipe has it), then random crop (zero padding in
/// normalised space, i.e. the mean colour), horizontal flip and cutout, per
/// sample.
pub(crate) fn augment(xs: &Tensor, recipe: &Recipe, norm: &Normalization, rng: &mut Rng) -> Tensor {
    let randomised = recipe.randaugment.map(|policy| rand_augment(xs, policy, norm, rng));
    let xs = randomised.as_ref().unwrap_or(xs);
    let size = recipe.size as i64;
    let p = recipe.crop_pad as i64;
    let padded = if p > 0 { xs.constant_pad_nd([p, p, p, p]) } else { xs.shallow_clone() };
    let n = xs.size()[0];
    let crops: Vec<Tensor> = (0..n)
        .map(|i| {
            let (dy, dx) =
                if p > 0 { (rng.below(2 * p as u64 + 1) as i64, rng.below(2 * p as u64 + 1) as i64) } else { (0, 0) };
            let c = padded.get(i).narrow(1, dy, size).narrow(2, dx, size);
            let c = if recipe.flip && rng.below(2) == 1 { c.flip([2]) } else { c };
            cutout(c, recipe.cutout, rng)
        })
        .collect();
    Tensor::stack(&crops, 0)
}

/// `policy` on each image of `xs` (`[N, C, S, S]`, normalised): back to
/// `[0, 1]`, where its operations are defined, and normalised again.
fn rand_augment(xs: &Tensor, policy: RandAugment, norm: &Normalization, rng: &mut Rng) -> Tensor {
    let shape = xs.size();
    let (c, s) = (shape[1] as usize, shape[2] as usize);
    let mut data: Vec<f32> = Vec::try_from(&xs.flatten(0, -1).to_kind(Kind::Float)).expect("a CPU tensor");
    let fill = norm.mean;
    for img in data.chunks_exact_mut(c * s * s) {
        for (ch, plane) in img.chunks_exact_mut(s * s).enumerate() {
            plane.iter_mut().for_each(|v| *v = *v * norm.std[ch] + norm.mean[ch]);
        }
        policy.apply(&mut Image { data: img, channels: c, side: s }, &fill, rng);
        for (ch, plane) in img.chunks_exact_mut(s * s).enumerate() {
            plane.iter_mut().for_each(|v| *v = (*v - norm.mean[ch]) / norm.std[ch]);
        }
    }
    Tensor::from_slice(&data).view(shape.as_slice())
}

/// `c` (`[C, S, S]`, normalised: 0 is the mean colour) with a square of
/// side `side` around a random centre set to 0, clipped at the border.
fn cutout(c: Tensor, side: u16, rng: &mut Rng) -> Tensor {
    if side == 0 {
        return c;
    }
    let s = c.size()[1];
    let (cy, cx) = (rng.below(s as u64) as i64, rng.below(s as u64) as i64);
    let half = i64::from(side) / 2;
    let (y0, y1) = ((cy - half).max(0), (cy - half + i64::from(side)).min(s));
    let (x0, x1) = ((cx - half).max(0), (cx - half + i64::from(side)).min(s));
    let mask = Tensor::ones([1, s, s], (c.kind(), c.device()));
    let _ = mask.narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0).fill_(0.0);
    c * mask
}

/// Turns image `i` of `xs` (`[N, C, S, S]`) by `turns[i]` quarter turns and
/// gives its joint label `class * rotations + turns[i]`.
fn rotate(xs: &Tensor, ys: &Tensor, rotations: u8, rng: &mut Rng) -> (Tensor, Tensor) {
    let n = xs.size()[0];
    let r = i64::from(rotations);
    let turns: Vec<i64> = (0..n).map(|_| rng.below(r as u64) as i64).collect();
    let images: Vec<Tensor> = (0..n).map(|i| xs.get(i).rot90(turns[i as usize], [1, 2])).collect();
    (Tensor::stack(&images, 0), ys * r + Tensor::from_slice(&turns))
}

/// The logits the loss sees: as they are, or with LogitNorm's unit L2 norm
/// over `temperature` (see [`Recipe::logit_norm`]). Prediction uses the raw
/// logits either way: normalising does not change the arg-max.
pub fn training_logits(logits: &Tensor, temperature: f64) -> Tensor {
    if temperature <= 0.0 {
        return logits.shallow_clone();
    }
    crate::net::unit_rows(logits) / temperature
}

/// Class scores from the classifier's outputs: with rotation labels, the
/// upright image's logit of each class (`[N, K * R] -> [N, K]`).
pub fn class_logits(logits: &Tensor, rotations: i64) -> Tensor {
    if rotations <= 1 {
        return logits.shallow_clone();
    }
    let n = logits.size()[0];
    logits.view([n, -1, rotations]).select(2, 0)
}

/// Accuracy of `net` on preprocessed inputs, in batches, in eval mode.
pub fn accuracy(net: &EfficientNet, xs: &Tensor, ys: &Tensor, device: Device, rotations: u8) -> f64 {
    let n = xs.size()[0];
    if n == 0 {
        return 0.0;
    }
    let mut correct = 0i64;
    tch::no_grad(|| {
        for start in (0..n).step_by(256) {
            let len = (n - start).min(256);
            let x = xs.narrow(0, start, len).to_device(device);
            let y = ys.narrow(0, start, len).to_device(device);
            let pred = class_logits(&net.logits_t(&x, false), i64::from(rotations)).argmax(-1, false);
            correct += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        }
    });
    correct as f64 / n as f64
}

/// Trains (or resumes) a base network.
pub fn train(job: &TrainJob) -> Result<Trained> {
    let recipe = &job.recipe;
    std::fs::create_dir_all(&job.checkpoint_dir)
        .with_context(|| format!("creating {}", job.checkpoint_dir.display()))?;
    let state_path = job.checkpoint_dir.join(STATE_FILE);
    let weights_path = job.checkpoint_dir.join(WEIGHTS_FILE);

    // Indices into the whole split, split as `fit` re-derives it to
    // calibrate the "unknown" threshold on images the backbone never
    // trained on: the same function, so the two cannot drift apart.
    let ds = data::load(job.dataset, &job.data, Split::Train)?;
    let held = HeldOut { seed: recipe.seed, fraction: recipe.val_fraction, limit_per_class: job.limit_per_class };
    let (train_idx, val_idx) = crate::split::held_out(&ds, &job.classes, &held);
    if train_idx.is_empty() && val_idx.is_empty() {
        bail!("no training images for classes {:?}", job.classes);
    }

    let mut state = if job.resume && state_path.exists() {
        let s = read_state(&job.checkpoint_dir)?;
        // A warm-started run resumes from its own weights: naming the
        // starting checkpoint again is not needed.
        let mut wanted = recipe.clone();
        if wanted.warm_start.is_none() {
            wanted.warm_start.clone_from(&s.recipe.warm_start);
        }
        if let (Some(had), Some(now)) = (&s.recipe.warm_start, &wanted.warm_start) {
            if had != now {
                bail!(
                    "{} started from weights {}, and --init-from now names {}: drop --init-from to resume it",
                    state_path.display(),
                    had.weights_sha256,
                    now.weights_sha256
                );
            }
        }
        if s.recipe != wanted || s.classes != job.classes || s.dataset != job.dataset {
            bail!(
                "{} holds a run with another recipe, dataset or classes; use a different --checkpoint-dir or drop --resume",
                state_path.display()
            );
        }
        s
    } else {
        TrainState {
            dataset: job.dataset,
            classes: job.classes.clone(),
            class_names: job.classes.iter().map(|&c| ds.class_names[c as usize].clone()).collect(),
            recipe: recipe.clone(),
            normalization: Normalization::of(&ds, &train_idx),
            epochs_done: 0,
            history: vec![],
        }
    };

    let recipe = &state.recipe.clone();
    let size = recipe.size as usize;
    let pre = state.normalization.preprocess(recipe.size);
    let label_of = |l: u16| job.classes.iter().position(|&c| c == l).expect("filtered") as i64;
    let make = |idx: &[usize]| -> Result<(Tensor, Tensor)> {
        let inputs = prep::inputs(&ds, idx, &pre)?;
        let labels: Vec<i64> = idx.iter().map(|&i| label_of(ds.samples[i].label)).collect();
        Ok((to_tensor(inputs, idx.len(), size), Tensor::from_slice(&labels)))
    };
    let (train_x, train_y) = make(&train_idx)?;
    let (val_x, val_y) = make(&val_idx)?;

    let streams = stream_seed(recipe);
    tch::manual_seed(streams as i64);
    let arch = Arch::new(recipe.arch);
    let mut vs = nn::VarStore::new(job.device);
    let net = EfficientNet::new(&vs.root(), &arch);
    if state.epochs_done > 0 {
        vs.load(&weights_path).with_context(|| format!("loading {}", weights_path.display()))?;
        eprintln!("resuming after epoch {} from {}", state.epochs_done, weights_path.display());
    } else if let Some(warm) = &recipe.warm_start {
        let dir = job.init_from.as_deref().context("the recipe warm-starts, but no starting checkpoint was given")?;
        let from = warm_start_weights(dir, warm, &state)?;
        vs.load(&from).with_context(|| format!("loading {}", from.display()))?;
        eprintln!("starting from {} (after its epoch {})", from.display(), warm.after_epochs);
    }
    job.memory_format.apply_to(&vs);
    let mut opt = match recipe.optimizer {
        OptimizerKind::Adamw => {
            nn::AdamW { beta1: 0.9, beta2: 0.999, wd: recipe.weight_decay, eps: 1e-8, amsgrad: false }
                .build(&vs, recipe.lr)?
        }
        OptimizerKind::Adam => {
            nn::Adam { beta1: 0.9, beta2: 0.999, wd: recipe.weight_decay, eps: 1e-8, amsgrad: false }
                .build(&vs, recipe.lr)?
        }
    };

    let n = train_idx.len();
    let steps_per_epoch = n / recipe.batch.max(1);
    if steps_per_epoch == 0 {
        bail!("{n} training images is less than one batch of {}", recipe.batch);
    }
    for epoch in state.epochs_done..recipe.epochs {
        let started = Instant::now();
        let mut epoch_rng = Rng::new(streams ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9));
        let mut order: Vec<i64> = (0..n as i64).collect();
        epoch_rng.shuffle(&mut order);
        let bar = if job.progress { ProgressBar::new(steps_per_epoch as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} {msg} (eta {eta})")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, recipe.epochs));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
        let mut lr = recipe.lr;
        for step in 0..steps_per_epoch {
            let idx = Tensor::from_slice(&order[step * recipe.batch..(step + 1) * recipe.batch]);
            let xs = augment(&train_x.index_select(0, &idx), recipe, &state.normalization, &mut epoch_rng)
                .to_device(job.device);
            let ys = train_y.index_select(0, &idx);
            let (xs, ys) = if recipe.rotations > 1 {
                let (x, y) = rotate(&xs, &ys, recipe.rotations, &mut epoch_rng);
                (x, y.to_device(job.device))
            } else {
                (xs, ys.to_device(job.device))
            };
            let xs = job.memory_format.apply(&xs);
            lr = recipe.lr_at(epoch * steps_per_epoch + step, steps_per_epoch);
            opt.set_lr(lr);
            let logits = net.logits_t(&xs, true);
            let loss = training_logits(&logits, recipe.logit_norm).cross_entropy_loss::<Tensor>(
                &ys,
                None,
                tch::Reduction::Mean,
                -100,
                recipe.label_smoothing,
            );
            opt.backward_step(&loss);
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("loss became {l} at epoch {} step {step}; lower --lr", epoch + 1);
            }
            loss_sum += l * ys.size()[0] as f64;
            correct += logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64).int64_value(&[]);
            seen += ys.size()[0];
            bar.set_message(format!("loss {:.3} acc {:.3}", loss_sum / seen as f64, correct as f64 / seen as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let val_accuracy = accuracy(&net, &val_x, &val_y, job.device, recipe.rotations);
        let seconds = started.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_accuracy,
            seconds,
            images_per_second: seen as f64 / seconds,
            memory_format: Some(job.memory_format),
        };
        eprintln!(
            "epoch {}/{}: loss {:.4} train {:.4} val {:.4} ({:.0} s, {:.1} img/s)",
            m.epoch, recipe.epochs, m.loss, m.train_accuracy, m.val_accuracy, m.seconds, m.images_per_second
        );
        state.history.push(m);
        state.epochs_done = epoch + 1;
        // Weights first, then the state that points at them: a crash between
        // the two repeats at most one epoch.
        let tmp = crate::util::temp_beside(&weights_path, ".safetensors")?;
        crate::layout::save(&vs, tmp.path())?;
        crate::util::persist(tmp, &weights_path)?;
        write_atomic(&state_path, &serde_json::to_vec_pretty(&state)?)?;
    }
    vs.set_kind(Kind::Float);
    Ok(Trained { weights: weights_of(&vs), arch, state })
}

/// What `--init-from DIR` puts in a recipe: the starting weights' hash and
/// epochs, after checking that the checkpoint can seed this run (same
/// dataset, classes, input size and network).
pub fn warm_start_of(dir: &Path, dataset: DatasetKind, classes: &[u16], recipe: &Recipe) -> Result<WarmStart> {
    Ok(starting_point(dir, dataset, classes, recipe)?.0)
}

/// [`warm_start_of`], with the checkpoint's state it read.
fn starting_point(
    dir: &Path,
    dataset: DatasetKind,
    classes: &[u16],
    recipe: &Recipe,
) -> Result<(WarmStart, TrainState)> {
    let state = read_state(dir)?;
    if state.dataset != dataset || state.classes != classes {
        bail!(
            "{} was trained on {} classes {:?}; this run is {} classes {:?}",
            dir.display(),
            state.dataset.name(),
            state.classes,
            dataset.name(),
            classes
        );
    }
    // The input size may differ: the network is convolutions and a global
    // pool, so the same weights run at any size, and a leg at a larger
    // size than the first is the usual way to spend more compute on a
    // network's late blocks, whose planes a small input shrinks to 1x1.
    if state.recipe.arch != recipe.arch {
        bail!("{} holds another network ({:?}); this run builds {:?}", dir.display(), state.recipe.arch, recipe.arch);
    }
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE))
        .with_context(|| format!("reading {}", dir.join(WEIGHTS_FILE).display()))?;
    let warm =
        WarmStart { weights_sha256: hex::encode(gaussedge_bundle::sha256(&bytes)), after_epochs: state.epochs_done };
    Ok((warm, state))
}

/// A checkpoint folder's `state.json`.
fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a training state", path.display()))
}

/// The starting weights' file, once it is checked to be the one the recipe
/// names and to share this run's normalisation.
fn warm_start_weights(dir: &Path, warm: &WarmStart, run: &TrainState) -> Result<PathBuf> {
    let (again, theirs) = starting_point(dir, run.dataset, &run.classes, &run.recipe)?;
    if again.weights_sha256 != warm.weights_sha256 {
        bail!(
            "{} now holds weights {}, not the {} this run started from",
            dir.display(),
            again.weights_sha256,
            warm.weights_sha256
        );
    }
    if theirs.normalization != run.normalization {
        bail!("{} normalised its inputs differently ({:?})", dir.display(), theirs.normalization);
    }
    Ok(dir.join(WEIGHTS_FILE))
}

/// Loads a finished (or partial) checkpoint without training.
pub fn load_checkpoint(dir: &Path) -> Result<(TrainState, Arch, Weights)> {
    let state = read_state(dir)?;
    let weights = Weights::from_safetensors(&std::fs::read(dir.join(WEIGHTS_FILE))?)?;
    let arch = Arch::new(state.recipe.arch);
    weights.check(&arch)?;
    Ok((state, arch, weights))
}

/// The FC head's predictions (as dataset class numbers) on a test set, using
/// tch.
pub fn fc_predictions(arch: &Arch, weights: &Weights, classes: &[u16], inputs: &Tensor) -> Result<Vec<u16>> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = EfficientNet::new(&vs.root(), arch);
    let bytes = weights.to_safetensors()?;
    let tmp = std::env::temp_dir().join(format!("gaussedge-{}.safetensors", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    let loaded = vs.load(&tmp);
    let _ = std::fs::remove_file(&tmp);
    loaded?;
    let n = inputs.size()[0];
    let rotations = (arch.config.num_classes / classes.len().max(1)).max(1) as i64;
    let mut out = Vec::with_capacity(n as usize);
    tch::no_grad(|| {
        for start in (0..n).step_by(256) {
            let len = (n - start).min(256);
            let logits = net.logits_t(&inputs.narrow(0, start, len), false);
            let pred = class_logits(&logits, rotations).argmax(-1, false);
            let v: Vec<i64> = Vec::<i64>::try_from(&pred).unwrap_or_default();
            out.extend(v.into_iter().map(|p| classes[p as usize]));
        }
    });
    Ok(out)
}

/// Preprocessed inputs of a whole dataset as a tensor.
pub fn dataset_tensor(ds: &Dataset, pre: &gaussedge_shared::stats::Preprocess) -> Result<Tensor> {
    let idx: Vec<usize> = (0..ds.len()).collect();
    Ok(to_tensor(prep::inputs(ds, &idx, pre)?, ds.len(), pre.width as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device line names the device and, on the CPU, why: a GPU user
    /// with a CPU-only binary or no visible GPU learns it from the first line.
    #[test]
    fn the_device_line_says_where_training_runs_and_why() {
        let (device, why) = pick_device(true);
        assert_eq!(device, Device::Cpu);
        assert!(why.contains("--cpu"), "{why}");
        let (device, why) = pick_device(false);
        if cfg!(feature = "cuda") && tch::Cuda::is_available() {
            assert!(device.is_cuda() && why.starts_with("training on CUDA device 0"), "{why}");
        } else if cfg!(feature = "cuda") {
            assert!(device == Device::Cpu && why.contains("falling back to the CPU"), "{why}");
        } else {
            assert!(device == Device::Cpu && why.contains("--features cuda"), "{why}");
        }
    }

    /// A warm-started leg draws its own batches and augmentations; a run
    /// from scratch keeps the recipe's seed, as before.
    #[test]
    fn each_warm_started_leg_has_its_own_random_streams() {
        let mut recipe = Recipe { seed: 5, ..Recipe::default_for(5, 32) };
        assert_eq!(stream_seed(&recipe), 5);
        let leg = |sha: &str| WarmStart { weights_sha256: sha.to_string(), after_epochs: 10 };
        recipe.warm_start = Some(leg("fee86648dc61477391b04e320212d23144cc09dfd44ac67a02a7e848ea9663b0"));
        let a = stream_seed(&recipe);
        recipe.warm_start = Some(leg("b4d85440aaaaaaaa0000000000000000000000000000000000000000000000aa"));
        let b = stream_seed(&recipe);
        assert!(a != 5 && b != 5 && a != b);
        assert_eq!(a, 5 ^ 0xfee86648dc614773);
    }

    #[test]
    fn rotation_labels_name_the_turn_each_image_got() {
        let n = 16;
        let xs = Tensor::arange(n * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([n, 3, 4, 4]);
        let ys = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(5);
        let (turned, joint) = rotate(&xs, &ys, 4, &mut Rng::new(3));
        let joint: Vec<i64> = Vec::try_from(&joint).unwrap();
        let classes: Vec<i64> = Vec::try_from(&ys).unwrap();
        let mut seen = [false; 4];
        for i in 0..n {
            let (class, turn) = (joint[i as usize] / 4, joint[i as usize] % 4);
            assert_eq!(class, classes[i as usize]);
            seen[turn as usize] = true;
            let want = xs.get(i).rot90(turn, [1, 2]);
            assert!(turned.get(i).equal(&want), "image {i} turned {turn}");
        }
        assert_eq!(seen, [true; 4], "16 draws give every turn");
        // The class score is the upright logit of each class.
        let logits = Tensor::arange(2 * 12, (Kind::Float, Device::Cpu)).view([2, 12]);
        let upright: Vec<f32> = Vec::try_from(&class_logits(&logits, 4).flatten(0, -1)).unwrap();
        assert_eq!(upright, vec![0.0, 4.0, 8.0, 12.0, 16.0, 20.0]);
        assert!(class_logits(&logits, 1).equal(&logits));
    }

    /// The cosine classifier's logits are bounded by the scale and do not
    /// depend on the features' norm, and the rows the ONNX graph carries
    /// (see [`crate::arch::fold_cosine_rows`]) pick the same class.
    #[test]
    fn cosine_classifier_reads_only_directions_and_exports_the_same_arg_max() {
        tch::manual_seed(3);
        let f = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
        let logits = crate::net::cosine_logits(&f, &w, 16.0);
        assert!(logits.abs().max().double_value(&[]) <= 16.0 + 1e-4);
        let doubled = crate::net::cosine_logits(&(&f * 7.0), &w, 16.0);
        assert!(doubled.allclose(&logits, 1e-5, 1e-5, false), "scaling the features changes nothing");
        let mut rows: Vec<f32> = Vec::try_from(&w.flatten(0, -1)).unwrap();
        crate::arch::fold_cosine_rows(&mut rows, 4, 16.0);
        let folded = f.matmul(&Tensor::from_slice(&rows).view([4, 5]).transpose(0, 1));
        assert!(folded.argmax(-1, false).equal(&logits.argmax(-1, false)));
    }

    #[test]
    fn logit_norm_fixes_each_rows_norm_and_keeps_its_arg_max() {
        let logits = Tensor::from_slice(&[3.0f32, -1.0, 0.5, 0.1, 0.2, 9.0]).view([2, 3]);
        assert!(training_logits(&logits, 0.0).equal(&logits));
        let scaled = training_logits(&logits, 0.04);
        let norms: Vec<f32> = Vec::try_from(&scaled.norm_scalaropt_dim(2, [-1i64].as_slice(), false)).unwrap();
        assert!(norms.iter().all(|n| (n - 25.0).abs() < 1e-3), "{norms:?}");
        assert!(scaled.argmax(-1, false).equal(&logits.argmax(-1, false)));
    }

    #[test]
    fn cutout_blanks_one_square_clipped_at_the_border() {
        let mut rng = Rng::new(5);
        let c = Tensor::ones([3, 8, 8], (Kind::Float, Device::Cpu));
        assert!(cutout(c.shallow_clone(), 0, &mut rng).equal(&c));
        for _ in 0..20 {
            let out = cutout(c.shallow_clone(), 4, &mut rng);
            let zeros = i64::try_from(out.eq(0.0).sum(Kind::Int64)).unwrap();
            // Per channel: a full 4x4 square inside, fewer cells at a border.
            assert!(zeros % 3 == 0 && (3..=48).contains(&zeros), "{zeros}");
            let plane = out.get(0);
            let rows = i64::try_from(plane.eq(0.0).any_dim(1, false).sum(Kind::Int64)).unwrap();
            let cols = i64::try_from(plane.eq(0.0).any_dim(0, false).sum(Kind::Int64)).unwrap();
            assert_eq!(rows * cols * 3, zeros, "one rectangle");
            assert!(rows <= 4 && cols <= 4);
        }
        assert!(c.eq(1.0).all().int64_value(&[]) == 1, "the input is not changed");
    }
}
