//! Real training steps with tch lower the loss of a tiny network.

#![cfg(feature = "train")]

use gaussedge_host::arch::{Arch, ArchConfig};
use gaussedge_host::net::EfficientNet;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

#[test]
fn a_few_adam_steps_lower_the_loss() {
    tch::manual_seed(3);
    tch::set_num_threads(1);
    let arch = Arch::new(ArchConfig::tiny(3));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = EfficientNet::new(&vs.root(), &arch);
    let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
    // Three classes that differ in their mean colour.
    let ys = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    let base = Tensor::randn([12, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.5;
    let shift = ys.to_kind(Kind::Float).view([12, 1, 1, 1]) - 1.0;
    let xs = base + shift;
    let loss_at = |train: bool| net.logits_t(&xs, train).cross_entropy_for_logits(&ys);
    let before = tch::no_grad(|| loss_at(true)).double_value(&[]);
    for _ in 0..40 {
        let loss = loss_at(true);
        opt.backward_step(&loss);
    }
    let after = tch::no_grad(|| loss_at(true)).double_value(&[]);
    assert!(after < 0.5 * before, "loss {before} -> {after}");
}
