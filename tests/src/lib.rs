//! Fixtures for the end-to-end tests: a synthetic dataset in the CIFAR-10
//! binary layout, and small real model bundles (a tiny EfficientNet, random
//! init with calibrated batch norm, exported to ONNX by the host's writer
//! and fitted with tract) built once per test binary.

use anyhow::Result;
use gaussedge_bundle::HeldOut;
use gaussedge_data::{Dataset, DatasetKind, Split};
use gaussedge_host::arch::{Arch, ArchConfig};
use gaussedge_host::build;
use gaussedge_host::client::Client;
use gaussedge_host::demo::Simulator;
use gaussedge_host::fit;
use gaussedge_host::net::EfficientNet;
use gaussedge_host::onnx::{self, ExportOptions};
use gaussedge_host::parity;
use gaussedge_host::prep::{self, Normalization};
use gaussedge_host::rng::Rng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub const SIZE: u16 = 32;
pub const BASE: [u16; 3] = [0, 1, 2];
pub const TRAIN_PER_CLASS: usize = 40;
pub const TEST_PER_CLASS: usize = 10;

pub struct Fixture {
    _root: tempfile::TempDir,
    /// CIFAR-layout data folder (data_batch_1.bin, test_batch.bin).
    pub data: PathBuf,
    /// A bundle on base classes 0-2.
    pub bundle: PathBuf,
    /// Another bundle with the same feature size (a different network).
    pub bundle_b: PathBuf,
    /// A bundle whose feature size differs.
    pub bundle_wide: PathBuf,
}

/// Class `c`'s image: its own colour and stripe period, plus noise.
fn image(c: u16, rng: &mut Rng) -> Vec<u8> {
    let palette = [
        (230, 40, 40),
        (40, 200, 60),
        (50, 60, 220),
        (220, 220, 40),
        (200, 60, 200),
        (40, 210, 210),
        (250, 140, 20),
        (120, 120, 120),
        (20, 20, 20),
        (250, 250, 250),
    ];
    let (r, g, b) = palette[c as usize % 10];
    let period = 2 + c as usize;
    let mut planes = vec![0u8; 3072];
    for y in 0..32 {
        for x in 0..32 {
            let stripe = if (y / period).is_multiple_of(2) { 1.0 } else { 0.55 };
            for (ch, base) in [r, g, b].into_iter().enumerate() {
                let noise = rng.below(41) as f64 - 20.0;
                planes[ch * 1024 + y * 32 + x] = (base as f64 * stripe + noise).clamp(0.0, 255.0) as u8;
            }
        }
    }
    planes
}

fn write_batch(path: &Path, per_class: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut bytes = vec![];
    for i in 0..per_class {
        for c in 0..10u16 {
            let _ = i;
            bytes.push(c as u8);
            bytes.extend(image(c, &mut rng));
        }
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Builds a bundle: tiny network (width scaled by `width`), batch norm
/// calibrated on the training images, exported, fitted on the base classes.
pub fn build_bundle(dir: &Path, data: &Path, width: f64, seed: i64) -> Result<()> {
    tch::manual_seed(seed);
    let train = gaussedge_data::load(DatasetKind::Cifar10, data, Split::Train)?;
    let base = train.filter(&BASE);
    let idx: Vec<usize> = (0..base.len()).collect();
    let norm = Normalization::of(&base, &idx);
    let pre = norm.preprocess(SIZE);
    let mut config = ArchConfig::tiny(BASE.len());
    config.width_mult = width;
    let arch = Arch::new(config);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = EfficientNet::new(&vs.root(), &arch);
    let all: Vec<usize> = (0..train.len()).collect();
    let inputs = prep::inputs(&train, &all, &pre)?;
    let t = tch::Tensor::from_slice(&inputs).view([train.len() as i64, 3, SIZE as i64, SIZE as i64]);
    parity::calibrate_batch_norm(&net, &t, 20);
    let weights = parity::weights_of(&vs);
    let onnx = onnx::export(
        &arch,
        &weights,
        &ExportOptions {
            height: SIZE as usize,
            width: SIZE as usize,
            logits: true,
            block_features: (0..arch.blocks.len()).collect(),
        },
    )?;
    // The product's head design: every block's pooled output, centred and
    // L2-normalised, so the tests exercise the multi-output path end to end.
    let built = build::build(build::Spec {
        onnx: &onnx,
        preprocess: pre,
        layers: fit::block_layers(arch.blocks.len()),
        kind: DatasetKind::Cifar10,
        train: &train,
        base: &BASE,
        head: fit::recommended_head(),
        capacity: 16,
        held_out: HeldOut { seed: 0, fraction: 0.2, limit_per_class: None },
        tpr: 0.95,
        batch: 16,
        extra: serde_json::json!({"fixture": true}),
        progress: false,
    })?;
    build::write(dir, &onnx, &built.head, &built.manifest)
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        tch::set_num_threads(1);
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        write_batch(&data.join("data_batch_1.bin"), TRAIN_PER_CLASS, 1).expect("train batch");
        write_batch(&data.join("test_batch.bin"), TEST_PER_CLASS, 2).expect("test batch");
        let bundle = root.path().join("bundle");
        build_bundle(&bundle, &data, 0.25, 1).expect("bundle");
        let bundle_b = root.path().join("bundle-b");
        build_bundle(&bundle_b, &data, 0.25, 2).expect("bundle b");
        let bundle_wide = root.path().join("bundle-wide");
        build_bundle(&bundle_wide, &data, 0.5, 3).expect("bundle wide");
        Fixture { _root: root, data, bundle, bundle_b, bundle_wide }
    })
}

/// A program this package builds: `gaussedge-device` or `gaussedge` under
/// its test name, one folder above the test executables.
fn program(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps folder");
    let path = deps.parent().expect("target folder").join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

pub fn device_binary() -> PathBuf {
    program("e2e-device")
}

pub fn host_binary() -> PathBuf {
    program("e2e-gaussedge")
}

/// Starts the simulator on the fixture bundle with its camera on the
/// fixture data.
pub fn start(state: &Path, extra: &[&str]) -> Simulator {
    let f = fixture();
    let mut args: Vec<String> =
        vec!["--camera".into(), format!("cifar10:{}", f.data.display()), "--max-frame".into(), "64x64".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Simulator::start(&device_binary(), &f.bundle, state, &args).expect("simulator starts")
}

pub fn connect(sim: &Simulator) -> Client {
    let mut c = Client::open(&sim.path, 921_600).expect("open pty");
    c.timeout = Duration::from_millis(1500);
    c
}

pub fn dataset(split: Split) -> Dataset {
    gaussedge_data::load(DatasetKind::Cifar10, &fixture().data, split).expect("fixture data")
}

pub fn label(s: &str) -> gaussedge_shared::Label {
    gaussedge_shared::label(s).expect("label")
}
