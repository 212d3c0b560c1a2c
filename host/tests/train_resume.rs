//! `train` checkpoints every epoch and `--resume` continues the run; a
//! checkpoint from another recipe is refused rather than silently reused.

#![cfg(feature = "train")]

use gaussedge_host::arch::ArchConfig;
use gaussedge_host::data::DatasetKind;
use gaussedge_host::train::{load_checkpoint, train, Recipe, TrainJob};

fn cifar_like(dir: &std::path::Path) {
    let mut bytes = vec![];
    for i in 0..60u32 {
        let label = (i % 3) as u8;
        bytes.push(label);
        bytes.extend(
            (0..3072u32).map(|p| ((p / 1024) as u8 * 80).wrapping_add(label * 60).wrapping_add((i * p % 17) as u8)),
        );
    }
    std::fs::write(dir.join("data_batch_1.bin"), &bytes).unwrap();
}

fn job(data: &std::path::Path, ckpt: &std::path::Path, epochs: usize, resume: bool) -> TrainJob {
    let mut recipe = Recipe::default_for(3, 16);
    recipe.epochs = epochs;
    recipe.batch = 8;
    recipe.arch = ArchConfig::tiny(3);
    TrainJob {
        dataset: DatasetKind::Cifar10,
        data: data.to_path_buf(),
        classes: vec![0, 1, 2],
        recipe,
        checkpoint_dir: ckpt.to_path_buf(),
        resume,
        device: tch::Device::Cpu,
        limit_per_class: None,
        progress: false,
    }
}

#[test]
fn resume_continues_and_refuses_another_recipe() {
    tch::set_num_threads(1);
    let data = tempfile::tempdir().unwrap();
    cifar_like(data.path());
    let ckpt = tempfile::tempdir().unwrap();
    let first = train(&job(data.path(), ckpt.path(), 2, false)).unwrap();
    assert_eq!(first.state.epochs_done, 2);
    // Same recipe with more epochs counts as another recipe: the epoch
    // budget shapes the learning-rate schedule.
    let err = train(&job(data.path(), ckpt.path(), 3, true)).err().expect("refused");
    assert!(err.to_string().contains("another recipe"), "{err}");
    // Resuming a finished run trains nothing more.
    let again = train(&job(data.path(), ckpt.path(), 2, true)).unwrap();
    assert_eq!(again.state.history, first.state.history);
    // A run cut after its first epoch continues with the second.
    let state_path = ckpt.path().join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["epochs_done"] = 1.into();
    state["history"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let resumed = train(&job(data.path(), ckpt.path(), 2, true)).unwrap();
    assert_eq!(resumed.state.epochs_done, 2);
    assert_eq!(resumed.state.history.len(), 2);
    assert_eq!(resumed.state.history[0], first.state.history[0]);
    let (state, arch, weights) = load_checkpoint(ckpt.path()).unwrap();
    assert_eq!(state.epochs_done, 2);
    weights.check(&arch).unwrap();
}
