//! The simulator on a real pseudo-terminal, driven by the host's client
//! over `serialport`: learning, prediction, persistence, bad input, power
//! cuts, and a damaged link.

use gaussedge_data::Split;
use gaussedge_host::client::{Client, ClientError, Faults, FaultyLink};
use gaussedge_host::fit::Extractor;
use gaussedge_shared::stats::{self, Expect};
use gaussedge_shared::wire::{ErrorCode, FrameFormat, FrameUse, Request, Response, UploadTarget};
use gaussedge_tests::*;
use std::io::Write;
use std::time::Duration;

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Device { code, .. } => code,
        other => panic!("expected a device error, got {other}"),
    }
}

fn class_labels(c: &mut Client) -> Vec<String> {
    c.classes().unwrap().into_iter().map(|e| e.label.to_string()).collect()
}

#[test]
fn learn_predict_forget_and_find_it_all_after_a_restart() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let train = dataset(Split::Train);
    let test = dataset(Split::Test);
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    let info = c.hello().unwrap();
    assert_eq!(info.classes, 3, "base statistics loaded at first boot");
    assert_eq!(info.slot, None);

    // Push the base statistics explicitly (they become the saved state).
    let base_stats = std::fs::read(f.bundle.join("head.stats")).unwrap();
    c.push_stats(&base_stats).unwrap();
    assert_eq!(c.hello().unwrap().slot, Some(0));

    // Class 3 from frames the host sends.
    c.begin_class(label("cat"), false).unwrap();
    let mut staged = 0;
    for i in train.indices_of(3) {
        let s = &train.samples[i];
        staged = c.learn(s.format, &s.pixels).unwrap();
    }
    assert_eq!(staged, TRAIN_PER_CLASS as u64);
    let (_, count) = c.commit().unwrap();
    assert_eq!(count, TRAIN_PER_CLASS as u64);

    // Class 4 from the device's own camera.
    c.begin_class(label("deer"), false).unwrap();
    assert_eq!(c.capture(25, Some(4)).unwrap(), 25);
    c.commit().unwrap();
    assert_eq!(class_labels(&mut c), vec!["airplane", "automobile", "bird", "cat", "deer"]);
    let stored = c.classes().unwrap();
    assert_eq!(stored[4].stored, 25, "captured samples are kept for retraining");
    let (format, pixels) = c.pull_capture(label("deer"), 0).unwrap();
    assert_eq!(format, FrameFormat { width: 32, height: 32, channels: 3 });
    assert_eq!(pixels.len(), 3072);

    // Predictions on the device equal the host's on the same statistics and
    // the same ONNX (features through tract with the same preprocessing).
    let pulled = c.pull_stats().unwrap();
    let bundle = gaussedge_bundle::Bundle::read(&f.bundle).unwrap();
    let extractor = Extractor::new(&bundle.onnx, bundle.manifest.preprocess, &bundle.manifest.layers, 1).unwrap();
    let (mut local, _) = gaussedge_shared::GaussianHead::from_stats(&pulled, 8, &Expect::default()).unwrap();
    let idx: Vec<usize> = (0..test.len()).collect();
    let features = extractor.extract(&test, &idx, &gaussedge_host::fit::bar(false, 0, "")).unwrap();
    let d = extractor.dim();
    let mut right = 0;
    for (k, s) in test.samples.iter().enumerate() {
        let p = c.predict(s.format, &s.pixels).unwrap();
        let want = local.predict(&features[k * d..(k + 1) * d], None).unwrap();
        assert_eq!(p.label, local.slots()[want.class].label, "sample {k}");
        assert!((p.score - want.score).abs() <= 1e-6 * (1.0 + want.score.abs()));
        right += usize::from(
            ["airplane", "automobile", "bird", "cat", "deer"].get(s.label as usize) == Some(&p.label.as_str()),
        );
    }
    assert!(right > 0);

    c.forget(label("cat")).unwrap();
    assert_eq!(class_labels(&mut c), vec!["airplane", "automobile", "bird", "deer"]);
    let before = c.pull_stats().unwrap();
    let generation = c.hello().unwrap().generation;
    drop(c);
    drop(sim);

    // Restart: the newest slot comes back, bit for bit.
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    let info = c.hello().unwrap();
    assert_eq!(info.generation, generation);
    assert_eq!(class_labels(&mut c), vec!["airplane", "automobile", "bird", "deer"]);
    assert!(c.pull_stats().unwrap() == before, "the restarted device has the same statistics");
    // Reset goes back to the bundle's base classes.
    c.reset().unwrap();
    assert_eq!(class_labels(&mut c), vec!["airplane", "automobile", "bird"]);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let sim = start(state.path(), &["--capacity", "4"]);
    let mut c = connect(&sim);
    let before = c.pull_stats().map_err(code).unwrap_err();
    assert_eq!(before, ErrorCode::NotFound, "nothing saved before the first change");
    let base_stats = std::fs::read(f.bundle.join("head.stats")).unwrap();
    c.push_stats(&base_stats).unwrap();
    let saved = c.pull_stats().unwrap();

    // Garbage on the line: the device drops it and keeps serving.
    drop(c);
    {
        let mut raw = gaussedge_host::client::open_port(&sim.path, 921_600).unwrap();
        raw.write_all(&[0x55; 9000]).unwrap();
        raw.write_all(&[0, 1, 2, 3, 0, 0xff, 0xfe, 0]).unwrap();
    }
    let mut c = connect(&sim);
    assert_eq!(c.hello().unwrap().classes, 3);

    // Statistics that are truncated, of another backbone, or of another
    // feature size.
    assert_eq!(code(c.push_stats(&base_stats[..base_stats.len() - 9]).unwrap_err()), ErrorCode::BadStats);
    let other = std::fs::read(f.bundle_b.join("head.stats")).unwrap();
    assert_eq!(code(c.push_stats(&other).unwrap_err()), ErrorCode::BackboneMismatch);
    let wide = std::fs::read(f.bundle_wide.join("head.stats")).unwrap();
    assert_eq!(code(c.push_stats(&wide).unwrap_err()), ErrorCode::DimMismatch);

    // Uploads out of order, with a wrong hash, or without a beginning.
    let chunk =
        |offset| Request::UploadChunk { offset, data: gaussedge_shared::wire::Chunk::from_slice(&[1, 2, 3]).unwrap() };
    assert_eq!(code(c.call(&chunk(0)).unwrap_err()), ErrorCode::NoUpload);
    c.call(&Request::BeginUpload { target: UploadTarget::Stats, len: 6, sha256: [0; 32] }).unwrap();
    assert_eq!(code(c.call(&chunk(3)).unwrap_err()), ErrorCode::UploadOrder);
    c.call(&chunk(0)).unwrap();
    c.call(&chunk(3)).unwrap();
    assert_eq!(code(c.call(&Request::FinishUpload).unwrap_err()), ErrorCode::UploadHash);

    // Frames that do not fit or lie about their size.
    let big = FrameFormat { width: 65, height: 64, channels: 3 };
    assert_eq!(code(c.frame(big, FrameUse::Predict, &vec![0; big.len()]).unwrap_err()), ErrorCode::BadFrame);
    let small = FrameFormat { width: 8, height: 8, channels: 3 };
    assert_eq!(code(c.frame(small, FrameUse::Predict, &[0; 10]).unwrap_err()), ErrorCode::BadFrame);
    assert_eq!(code(c.frame(small, FrameUse::Learn, &[0; 192]).unwrap_err()), ErrorCode::NotLearning);

    // Class-level mistakes.
    assert!(c.pull_stats().unwrap() == saved, "every refusal so far left the saved statistics as they were");
    assert_eq!(code(c.begin_class(label("bird"), false).unwrap_err()), ErrorCode::DuplicateLabel);
    assert_eq!(code(c.forget(label("nope")).unwrap_err()), ErrorCode::UnknownClass);
    assert_eq!(code(c.commit().unwrap_err()), ErrorCode::NotLearning);
    c.begin_class(label("new"), false).unwrap();
    assert_eq!(code(c.commit().unwrap_err()), ErrorCode::EmptyClass);
    assert_eq!(code(c.begin_class(label("other"), false).unwrap_err()), ErrorCode::Busy);
    c.capture(3, Some(5)).unwrap();
    c.commit().unwrap();
    // Capacity 4: the head is full now.
    assert_eq!(code(c.begin_class(label("fifth"), false).unwrap_err()), ErrorCode::Full);
    c.forget(label("new")).unwrap();
    assert_eq!(class_labels(&mut c), vec!["airplane", "automobile", "bird"]);
}

#[test]
fn power_cuts_during_commits_leave_the_old_or_the_new_state() {
    let state = tempfile::tempdir().unwrap();
    let train = dataset(Split::Train);
    let frames: Vec<_> = train.indices_of(6).into_iter().take(4).map(|i| train.samples[i].clone()).collect();
    let base_stats = std::fs::read(fixture().bundle.join("head.stats")).unwrap();
    {
        let sim = start(state.path(), &[]);
        let mut c = connect(&sim);
        c.push_stats(&base_stats).unwrap();
    }
    let mut rng = gaussedge_host::rng::Rng::new(42);
    let (mut old_seen, mut new_seen) = (0, 0);
    let mut classes = 3u16;
    for round in 0..110 {
        let sim = start(state.path(), &[]);
        let mut c = connect(&sim);
        let info = c.hello().unwrap();
        // What survived the last cut: the state before that commit or after.
        assert!(
            info.classes == classes || info.classes == classes + 1,
            "round {round}: {} classes, expected {classes} or {}",
            info.classes,
            classes + 1
        );
        if info.classes == classes + 1 {
            new_seen += 1;
        } else {
            old_seen += 1;
        }
        classes = info.classes;
        let pulled = c.pull_stats().unwrap();
        stats::read_header(&pulled).expect("the loaded state is a valid statistics file");
        if classes >= 14 {
            // Keep the head from filling up: forget the learned classes.
            c.reset().unwrap();
            classes = 3;
            continue;
        }
        c.begin_class(label(&format!("c{round}")), false).unwrap();
        for s in &frames {
            c.learn(s.format, &s.pixels).unwrap();
        }
        // Send the commit and cut the power somewhere inside it.
        let frame = gaussedge_shared::wire::encode_vec(0x7777_0000 + round, &Request::CommitClass).unwrap();
        drop(c);
        let mut raw = gaussedge_host::client::open_port(&sim.path, 921_600).unwrap();
        raw.write_all(&frame).unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(6000)));
        let mut sim = sim;
        // SIGKILL: no handler runs, nothing is flushed.
        sim.child.kill().unwrap();
        sim.child.wait().unwrap();
    }
    assert!(old_seen > 0 && new_seen > 0, "cuts landed both before and after commits ({old_seen} old, {new_seen} new)");
}

#[test]
fn a_damaged_link_ends_bit_identical_to_a_clean_one() {
    let train = dataset(Split::Train);
    let base_stats = std::fs::read(fixture().bundle.join("head.stats")).unwrap();
    let session = |c: &mut Client| -> Vec<u8> {
        c.push_stats(&base_stats).unwrap();
        for class in [5u16, 7] {
            c.begin_class(label(&format!("class{class}")), false).unwrap();
            for i in train.indices_of(class).into_iter().take(20) {
                let s = &train.samples[i];
                c.learn(s.format, &s.pixels).unwrap();
            }
            c.commit().unwrap();
        }
        c.pull_stats().unwrap()
    };
    let clean = {
        let state = tempfile::tempdir().unwrap();
        let sim = start(state.path(), &[]);
        session(&mut connect(&sim))
    };
    let state = tempfile::tempdir().unwrap();
    let sim = start(state.path(), &[]);
    let port = gaussedge_host::client::open_port(&sim.path, 921_600).unwrap();
    let faults = Faults {
        corrupt: 0.01,
        drop: 0.01,
        duplicate: 0.01,
        delay: 0.02,
        max_delay: Duration::from_millis(5),
        seed: 7,
    };
    let link = FaultyLink::new(port, faults);
    let counts = link.counts.clone();
    let mut c = Client::new(Box::new(link));
    c.timeout = Duration::from_millis(300);
    c.attempts = 30;
    let damaged = session(&mut c);
    assert!(damaged == clean, "statistics are bit-identical despite the faults");
    let info = c.hello().unwrap();
    let counts = *counts.lock().unwrap();
    assert!(counts.corrupted + counts.dropped + counts.duplicated > 0, "{counts:?}");
    assert!(c.stats.retries > 0);
    assert_eq!(info.applied, c.stats.requests, "each request applied exactly once ({:?}, {counts:?})", c.stats);
}

#[test]
fn a_new_bundle_is_flashed_atomically() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    let old = c.hello().unwrap().backbone_sha256;
    let read = |b: &std::path::Path, n: &str| std::fs::read(b.join(n)).unwrap();
    let (onnx, manifest, stats_b) =
        (read(&f.bundle_b, "backbone.onnx"), read(&f.bundle_b, "manifest.json"), read(&f.bundle_b, "head.stats"));

    // A backbone whose statistics do not belong to it is refused before
    // anything changes.
    let stats_a = read(&f.bundle, "head.stats");
    assert_eq!(code(c.flash(&onnx, &manifest, &stats_a).unwrap_err()), ErrorCode::BackboneMismatch);
    assert_eq!(c.hello().unwrap().backbone_sha256, old);
    // A backbone of another feature size cannot replace this head's.
    let wide = (
        read(&f.bundle_wide, "backbone.onnx"),
        read(&f.bundle_wide, "manifest.json"),
        read(&f.bundle_wide, "head.stats"),
    );
    assert_eq!(code(c.flash(&wide.0, &wide.1, &wide.2).unwrap_err()), ErrorCode::DimMismatch);

    c.flash(&onnx, &manifest, &stats_b).unwrap();
    let info = c.hello().unwrap();
    assert_ne!(info.backbone_sha256, old);
    assert_eq!(info.classes, 3);
    drop(c);
    drop(sim);
    // The flashed bundle survives a restart.
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    assert_eq!(c.hello().unwrap().backbone_sha256, gaussedge_bundle::sha256(&onnx));
    let test = dataset(Split::Test);
    let s = &test.samples[0];
    assert!(matches!(c.frame(s.format, FrameUse::Predict, &s.pixels).unwrap(), Response::Prediction(_)));
}

/// Predictions of the first `n` test images, scores to the bit.
fn predictions(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    let test = dataset(Split::Test);
    test.samples[..n]
        .iter()
        .map(|s| {
            let p = c.predict(s.format, &s.pixels).unwrap();
            (p.label.to_string(), p.score.to_bits())
        })
        .collect()
}

fn device_log(state: &std::path::Path) -> String {
    std::fs::read_to_string(state.join("device.log")).unwrap()
}

#[test]
fn boots_read_the_compiled_backbone_and_pass_over_a_damaged_one() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let compiled = state.path().join("backbone.compiled");
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    let first = predictions(&mut c, 12);
    drop(c);
    drop(sim);
    assert!(device_log(state.path()).contains("backbone from its ONNX"), "{}", device_log(state.path()));
    // Written on every CPU (on aarch64 it holds tract's own ops).
    let bytes = std::fs::read(&compiled).unwrap();

    // The second boot reads it, and the device answers to the bit as before.
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    assert_eq!(predictions(&mut c, 12), first);
    drop(c);
    drop(sim);
    assert!(device_log(state.path()).contains("backbone from its compiled graph"), "{}", device_log(state.path()));
    assert!(std::fs::read(&compiled).unwrap() == bytes, "a good compiled graph is not rewritten");

    // Damaged (a flipped bit), cut short (a power cut while it was written
    // by hand), or a stray temporary file: the boot warns, loads the ONNX,
    // answers the same, and writes the file again.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 4;
    for damaged in [flipped, bytes[..bytes.len() / 3].to_vec(), vec![]] {
        std::fs::write(&compiled, &damaged).unwrap();
        std::fs::write(state.path().join("backbone.compiled.tmp"), &bytes[..100]).unwrap();
        let sim = start(state.path(), &[]);
        let mut c = connect(&sim);
        assert_eq!(predictions(&mut c, 12), first);
        drop(c);
        drop(sim);
        let log = device_log(state.path());
        assert!(log.contains("warning:") && log.contains("backbone from its ONNX"), "{log}");
        assert!(std::fs::read(&compiled).unwrap() == bytes, "rewritten after damage");
    }

    // A flash compiles the new bundle: the file is then its, and its first
    // boot reads it.
    let read = |b: &std::path::Path, n: &str| std::fs::read(b.join(n)).unwrap();
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    c.flash(&read(&f.bundle_b, "backbone.onnx"), &read(&f.bundle_b, "manifest.json"), &read(&f.bundle_b, "head.stats"))
        .unwrap();
    drop(c);
    drop(sim);
    let flashed = std::fs::read(&compiled).unwrap();
    assert!(flashed != bytes, "the flashed bundle's graph replaced the factory one's");
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    assert_eq!(predictions(&mut c, 1).len(), 1);
    drop(c);
    drop(sim);
    assert!(device_log(state.path()).contains("flashed bundle: backbone from its compiled graph"));
}

/// Bytes the process has read through read(2) and friends, from
/// `/proc/PID/io` (`rchar`).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).expect("rchar")
}

#[test]
fn a_pull_reads_the_slot_once_not_once_per_chunk() {
    let state = tempfile::tempdir().unwrap();
    let sim = start(state.path(), &[]);
    let mut c = connect(&sim);
    c.begin_class(label("pulled"), false).unwrap();
    c.capture(8, Some(7)).unwrap();
    c.commit().unwrap();
    let slot = std::fs::metadata(state.path().join("slot-a.bin")).unwrap().len();
    let before = bytes_read(sim.child.id());
    let pulled = c.pull_stats().unwrap();
    let read = bytes_read(sim.child.id()) - before;
    let chunks = pulled.len() as u64 / 4096;
    // Served from one read of the slot; re-reading it per chunk would be
    // `chunks` times the slot (quadratic).
    assert!(chunks > 4, "{chunks} chunks");
    assert!(
        read < 2 * slot + (1 << 20),
        "a pull of {} bytes in {chunks} chunks read {read} bytes of a {slot}-byte slot",
        pulled.len()
    );
}

#[test]
fn a_flash_cut_before_its_pointer_is_replaced_boots_the_old_bundle() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let read = |b: &std::path::Path, n: &str| std::fs::read(b.join(n)).unwrap();
    let (onnx, manifest, stats_b) =
        (read(&f.bundle_b, "backbone.onnx"), read(&f.bundle_b, "manifest.json"), read(&f.bundle_b, "head.stats"));
    let factory = read(&f.bundle, "backbone.onnx");
    let sha = gaussedge_bundle::sha256;
    let boots = |state: &std::path::Path| {
        let sim = start(state, &[]);
        connect(&sim).hello().unwrap().backbone_sha256
    };
    {
        let sim = start(state.path(), &[]);
        connect(&sim).flash(&onnx, &manifest, &stats_b).unwrap();
    }
    let active = std::fs::read_to_string(state.path().join("active")).unwrap();
    // The states a cut leaves on the way, rebuilt from the finished flash:
    // the new bundle written but the pointer not yet replaced (no pointer,
    // or the new pointer only in its temporary file), then a damaged
    // temporary file; each boots the factory bundle, and the pointer in
    // place boots the new one.
    let pointer = state.path().join("active");
    let tmp = state.path().join("active.tmp");
    let flash = || {
        let sim = start(state.path(), &[]);
        connect(&sim).flash(&onnx, &manifest, &stats_b).unwrap();
    };
    std::fs::remove_file(&pointer).unwrap();
    assert_eq!(boots(state.path()), sha(&factory), "new bundle written, pointer not replaced");
    flash();
    std::fs::rename(&pointer, &tmp).unwrap();
    assert_eq!(boots(state.path()), sha(&factory), "pointer written to its temporary file only");
    flash();
    assert_eq!(std::fs::read_to_string(&pointer).unwrap(), active);
    assert_eq!(boots(state.path()), sha(&onnx), "pointer replaced");
    // A pointer to a bundle that is not there (storage lost it) boots the
    // factory bundle rather than nothing.
    std::fs::write(&pointer, "current=42\n").unwrap();
    assert_eq!(boots(state.path()), sha(&factory), "pointer to a missing bundle");
    flash();
    // A second flash keeps the first as the one to roll back to, and a
    // half-written third (its folder there, the pointer not moved) boots
    // the second and is swept.
    {
        let sim = start(state.path(), &[]);
        let mut c = connect(&sim);
        c.flash(&onnx, &manifest, &stats_b).unwrap();
    }
    let pointer_now = std::fs::read_to_string(&pointer).unwrap();
    assert!(pointer_now.contains("previous="), "{pointer_now}");
    let leftover = state.path().join("bundles").join("99");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("backbone.onnx"), &onnx[..1000]).unwrap();
    assert_eq!(boots(state.path()), sha(&onnx));
    assert!(!leftover.exists(), "a half-written bundle is swept at boot");
}
