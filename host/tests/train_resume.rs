//! `train` checkpoints every epoch and `--resume` continues the run; a
//! checkpoint from another recipe is refused rather than silently reused.

#![cfg(feature = "train")]

use gaussedge_host::arch::ArchConfig;
use gaussedge_host::data::DatasetKind;
use gaussedge_host::layout::MemoryFormat;
use gaussedge_host::randaugment::RandAugment;
use gaussedge_host::train::{load_checkpoint, train, warm_start_of, Recipe, TrainJob, WarmStart};

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
        init_from: None,
        memory_format: MemoryFormat::ChannelsLast,
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

/// A warm-started run begins from the named checkpoint's weights (its first
/// epoch starts where that network was, not at chance), records them by
/// hash, resumes without naming them again, and refuses a checkpoint of
/// another network or one whose weights changed since. RandAugment trains
/// alongside and is part of the recipe.
#[test]
fn warm_start_extends_a_finished_run_and_checks_what_it_starts_from() {
    tch::set_num_threads(1);
    let data = tempfile::tempdir().unwrap();
    cifar_like(data.path());
    let base = tempfile::tempdir().unwrap();
    let first = train(&job(data.path(), base.path(), 3, false)).unwrap();

    let leg = tempfile::tempdir().unwrap();
    let mut second = job(data.path(), leg.path(), 1, false);
    second.recipe.randaugment = Some(RandAugment { ops: 2, magnitude: 9 });
    // At learning rate 0 the leg changes no parameter (only batch norm's
    // running statistics move): whatever it ends with, it started from.
    second.recipe.lr = 0.0;
    let warm = warm_start_of(base.path(), DatasetKind::Cifar10, &[0, 1, 2], &second.recipe).unwrap();
    assert_eq!(warm.after_epochs, 3);
    second.recipe.warm_start = Some(warm.clone());
    let err = train(&second).err().expect("no folder given");
    assert!(err.to_string().contains("no starting checkpoint"), "{err}");
    second.init_from = Some(base.path().to_path_buf());
    let extended = train(&second).unwrap();
    assert_eq!(extended.state.recipe.warm_start, Some(warm));
    assert_eq!(extended.state.recipe.randaugment, Some(RandAugment { ops: 2, magnitude: 9 }));
    let mut compared = 0;
    for (name, shape) in first.arch.tensors() {
        if name.contains("running") || name.contains("num_batches") {
            continue;
        }
        let (a, b) = (first.weights.get(&name, &shape).unwrap(), extended.weights.get(&name, &shape).unwrap());
        assert_eq!(a, b, "{name} is the starting network's");
        compared += 1;
    }
    assert!(compared > 10);

    // Resuming needs no --init-from: the run's own checkpoint is there.
    let mut resume = job(data.path(), leg.path(), 1, true);
    resume.recipe.randaugment = Some(RandAugment { ops: 2, magnitude: 9 });
    resume.recipe.lr = 0.0;
    assert_eq!(train(&resume).unwrap().state.history, extended.state.history);

    // Naming a starting checkpoint that changed since says which to drop.
    let mut renamed = job(data.path(), leg.path(), 1, true);
    renamed.recipe = resume.recipe.clone();
    renamed.recipe.warm_start = Some(WarmStart { weights_sha256: "00".repeat(32), after_epochs: 3 });
    let err = train(&renamed).err().expect("another start refused");
    assert!(err.to_string().contains("drop --init-from"), "{err}");

    // Another network (other classes, or another architecture) cannot
    // seed this one; the same network at another input size can.
    let err = warm_start_of(base.path(), DatasetKind::Cifar10, &[0, 1], &second.recipe).err().unwrap();
    assert!(err.to_string().contains("was trained on"), "{err}");
    let mut other = second.recipe.clone();
    other.arch = ArchConfig::b0(3);
    let err = warm_start_of(base.path(), DatasetKind::Cifar10, &[0, 1, 2], &other).err().unwrap();
    assert!(err.to_string().contains("holds another network"), "{err}");
    let mut larger = second.recipe.clone();
    larger.size *= 2;
    assert_eq!(warm_start_of(base.path(), DatasetKind::Cifar10, &[0, 1, 2], &larger).unwrap().after_epochs, 3);
    // Weights that changed since the recipe named them are refused.
    let weights = base.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    second.checkpoint_dir = fresh.path().to_path_buf();
    let err = train(&second).err().expect("changed weights refused");
    assert!(err.to_string().contains("now holds weights"), "{err}");
}
