//! The exported ONNX, run by tract, computes what the tch network computes.

#![cfg(feature = "train")]

use gaussedge_host::arch::{Arch, ArchConfig};
use gaussedge_host::net::EfficientNet;
use gaussedge_host::parity;
use tch::{nn, Device, Kind, Tensor};

/// tch's random generator is process-wide: two tests seeding and drawing
/// at once would interleave their draws and get different networks each run
/// (once in a while one whose activations die out). One at a time.
static TCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(config: ArchConfig, size: i64, batch: i64) -> parity::ParityReport {
    let _rng = TCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(1);
    tch::set_num_threads(1);
    let arch = Arch::new(config);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = EfficientNet::new(&vs.root(), &arch);
    let calib = Tensor::randn([16, 3, size, size], (Kind::Float, Device::Cpu));
    parity::calibrate_batch_norm(&net, &calib, 30);
    let inputs = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let report = parity::check(&arch, &net, &vs, &inputs).unwrap();
    eprintln!("{config:?} at {size}x{size}: {report:?}");
    report
}

#[test]
fn tiny_variant_parity() {
    let r = run(ArchConfig::tiny(3), 32, 4);
    assert!(r.feature_scale > 0.1, "activations died out: scale {}", r.feature_scale);
    assert!(r.relative < 1e-4, "{r:?}");
}

#[test]
fn full_b0_parity_at_64() {
    let r = run(ArchConfig::b0(5), 64, 2);
    assert!(r.feature_scale > 0.1, "activations died out: scale {}", r.feature_scale);
    assert!(r.relative < 1e-4, "{r:?}");
}
