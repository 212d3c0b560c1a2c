//! The `gaussedge` CLI against the simulator over a pseudo-terminal, as a
//! user would run it.

use gaussedge_data::Split;
use gaussedge_shared::stats;
use gaussedge_tests::*;
use std::path::Path;
use std::process::Command;

fn gaussedge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(host_binary()).args(args).output().expect("run gaussedge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = gaussedge(args);
    assert!(success, "gaussedge {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn write_images(dir: &Path, class: u16, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let train = dataset(Split::Train);
    for (k, i) in train.indices_of(class).into_iter().take(n).enumerate() {
        gaussedge_data::write_png(&train.samples[i], &dir.join(format!("{k}.png"))).unwrap();
    }
}

#[test]
fn device_commands_end_to_end() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let sim = start(&state, &[]);
    let port = sim.path.as_str();

    let info = ok(&["info", "--port", port]);
    assert!(info.contains("3 of capacity 64"), "{info}");
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--port", port, "--json"])).unwrap();
    assert_eq!(info["device"]["capacity"], 64);
    assert_eq!(info["classes"].as_array().unwrap().len(), 3);

    let frogs = work.path().join("frogs");
    write_images(&frogs, 6, 12);
    let out = ok(&["learn", "--port", port, "--label", "frog", "--from", frogs.to_str().unwrap()]);
    assert!(out.contains("learned frog from 12 samples"), "{out}");
    let out = ok(&["learn", "--port", port, "--label", "horse", "--capture", "9", "--source-class", "7"]);
    assert!(out.contains("from 9 samples"), "{out}");
    let (success, _, err) = gaussedge(&["learn", "--port", port, "--label", "frog", "--capture", "2"]);
    assert!(!success && err.contains("DuplicateLabel"), "{err}");

    let out = ok(&["predict", "--port", port, "--json", frogs.join("0.png").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["label"].is_string() && v[0]["novelty"].is_number(), "{out}");

    let pulled = work.path().join("device.stats");
    ok(&["pull", "--port", port, "-o", pulled.to_str().unwrap()]);
    let header = stats::read_header(&std::fs::read(&pulled).unwrap()).unwrap();
    assert_eq!(header.classes, 5);
    let shown = ok(&["stats", pulled.to_str().unwrap()]);
    assert!(shown.contains("\"frog\" (12 samples, spread "), "{shown}");

    let captures = work.path().join("captures");
    ok(&["captures", "pull", "--port", port, "--out", captures.to_str().unwrap()]);
    let horses = std::fs::read_dir(captures.join("horse")).unwrap().count();
    assert_eq!(horses, 9, "the device's stored samples come back as an image folder");
    let back = gaussedge_data::load_folder(&captures).unwrap();
    assert!(back.class_names.contains(&"frog".to_string()));

    ok(&["forget", "--port", port, "--label", "frog"]);
    ok(&["push", "--port", port, f.bundle.join("head.stats").to_str().unwrap()]);
    let (success, _, err) = gaussedge(&["push", "--port", port, f.bundle_wide.join("head.stats").to_str().unwrap()]);
    assert!(!success && err.contains("DimMismatch"), "{err}");
    drop(sim);
}

#[test]
fn merge_of_two_devices_equals_one_device_learning_both() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let base = f.bundle.join("head.stats");
    let learn = |name: &str, classes: &[(u16, &str)]| {
        let state = work.path().join(name);
        let sim = start(&state, &[]);
        ok(&["push", "--port", &sim.path, base.to_str().unwrap()]);
        for (class, label) in classes {
            ok(&[
                "learn",
                "--port",
                &sim.path,
                "--label",
                label,
                "--capture",
                "10",
                "--source-class",
                &class.to_string(),
            ]);
        }
        let out = work.path().join(format!("{name}.stats"));
        ok(&["pull", "--port", &sim.path, "-o", out.to_str().unwrap()]);
        out
    };
    let a = learn("a", &[(5, "dog")]);
    let b = learn("b", &[(8, "ship")]);
    let both = learn("both", &[(5, "dog"), (8, "ship")]);
    let merged = work.path().join("merged.stats");
    ok(&[
        "merge",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    let load = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        gaussedge_shared::GaussianHead::from_stats(&bytes, 8, &stats::Expect::default()).unwrap().0
    };
    let (m, w) = (load(&merged), load(&both));
    let labels = |h: &gaussedge_shared::GaussianHead<_>| {
        h.classes().map(|(_, c)| (c.label.to_string(), c.count)).collect::<Vec<_>>()
    };
    assert_eq!(labels(&m), labels(&w));
    let diff = m.pooled().iter().zip(w.pooled()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = w.pooled().iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(diff <= 1e-9 * scale, "pooled scatter differs by {diff:e} (scale {scale:e})");
    assert_eq!(m.scatter_norm(), w.scatter_norm());
    // Spreads travel with their classes: the base classes' unchanged, and
    // dog's (learned right after the base on both devices, so in the same
    // metric) equal; ship's was measured after dog on one device only.
    let spread = |h: &gaussedge_shared::GaussianHead<_>, label: &str| h.spread(h.find(label).unwrap());
    for (_, c) in w.classes() {
        let (a, b) = (spread(&m, &c.label), spread(&w, &c.label));
        assert!(a > 0.0 && b > 0.0, "{}: {a} {b}", c.label);
        if c.label.as_str() != "ship" {
            assert!((a - b).abs() <= 1e-9 * b, "{}: merged spread {a}, one device {b}", c.label);
        }
    }
}

/// `gaussedge eval` on the fixture bundle: base 0-2, then 3, 4, 5 added.
fn eval_on_fixture() -> [&'static str; 11] {
    let f = fixture();
    let (bundle, data) = (f.bundle.to_str().unwrap(), f.data.to_str().unwrap());
    ["eval", "--bundle", bundle, "--dataset", "cifar10", "--data", data, "--base", "0-2", "--add", "3,4,5"]
}

#[test]
fn eval_in_process_and_through_a_device_agree() {
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("eval.json");
    let plot = work.path().join("eval.png");
    let eval = eval_on_fixture();
    let out = ok(&[&eval[..], &["--json", json.to_str().unwrap(), "--plot", plot.to_str().unwrap()]].concat());
    assert!(out.contains("final 10-class accuracy"), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["stages"].as_array().unwrap().len(), 4);
    let in_process = report["final_accuracy"].as_f64().unwrap();
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);

    let state = work.path().join("state");
    let sim = start(&state, &[]);
    let json2 = work.path().join("eval-device.json");
    ok(&[&eval[..], &["--via", &sim.path, "--json", json2.to_str().unwrap()]].concat());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json2).unwrap()).unwrap();
    assert_eq!(report["via_device"], true);
    let via = report["final_accuracy"].as_f64().unwrap();
    assert!((via - in_process).abs() < 0.05, "in process {in_process}, through the device {via}");
    // The open-set figures at the bundle's threshold, every stage, both ways.
    let stages = report["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["open_set"]["accuracy"].is_number()), "{stages:?}");
    assert!(stages[0]["open_set"]["unknown_flagged"].is_number() && stages[3]["open_set"]["new_kept"].is_number());
    assert!(out.contains("open-set accuracy"), "{out}");
}

#[test]
fn eval_levers_and_layers_change_the_head_and_bad_layers_are_named() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let eval = eval_on_fixture();
    let report = |extra: &[&str]| -> serde_json::Value {
        let json = work.path().join("lever.json");
        ok(&[&eval[..], extra, &["--json", json.to_str().unwrap()]].concat());
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
    };
    // The fixture's manifest names every block; `features` alone is the
    // last layer, a different and narrower feature vector.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.bundle.join("manifest.json")).unwrap()).unwrap();
    let blocks = report(&[]);
    assert_eq!(blocks["layers"], manifest["layers"]);
    assert!(manifest["layers"].as_array().unwrap().len() > 1);
    let last = report(&["--layers", "features", "--transform", "none", "--shrinkage", "0.01", "--prior", "log-count"]);
    assert_eq!(last["layers"], serde_json::json!(["features"]));
    assert_eq!(last["head"]["settings"]["regularizer"]["Shrinkage"], 0.01);
    assert_eq!(last["head"]["settings"]["prior"], "LogCount");
    assert_eq!(last["head"]["transform"]["center_l2"], false);
    assert_ne!(last["stages"], blocks["stages"]);
    let png = work.path().join("curves.png");
    let lever = work.path().join("lever.json");
    ok(&["plot", &format!("last layer={}", lever.display()), "--out", png.to_str().unwrap()]);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    let (success, _, stderr) = gaussedge(&["plot", "x=/no/such.json", "--out", png.to_str().unwrap()]);
    assert!(!success && stderr.contains("/no/such.json"), "{stderr}");
    // `blocks` is the manifest's list spelt short.
    assert_eq!(report(&["--layers", "blocks"])["stages"], blocks["stages"]);

    let (success, _, stderr) = gaussedge(&[&eval[..], &["--layers", "features,no_such_layer"]].concat());
    assert!(!success);
    assert!(stderr.contains("no output \"no_such_layer\""), "{stderr}");

    // A manifest naming an output the backbone lacks is refused on load by
    // the device too, by name.
    let broken = work.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for file in ["backbone.onnx", "head.stats"] {
        std::fs::copy(f.bundle.join(file), broken.join(file)).unwrap();
    }
    let mut m = manifest.clone();
    m["layers"] = serde_json::json!(["features", "features_99"]);
    std::fs::write(broken.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = Command::new(device_binary())
        .args(["--bundle", broken.to_str().unwrap(), "--state", work.path().join("s").to_str().unwrap(), "--pty"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no output `features_99`"), "{stderr}");
}

#[test]
fn features_of_other_data_are_never_served_from_the_cache() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Folder B: the fixture's layout and record counts, its test records
    // moved one place (each position now holds another class's image).
    let b = work.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    for entry in std::fs::read_dir(&f.data).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, b.join(path.file_name().unwrap())).unwrap();
    }
    let mut test = std::fs::read(b.join("test_batch.bin")).unwrap();
    test.rotate_left(3073);
    std::fs::write(b.join("test_batch.bin"), test).unwrap();
    let bundle = f.bundle.to_str().unwrap();
    let eval = |data: &Path, via: &str| {
        let mut args = vec!["eval", "--bundle", bundle, "--dataset", "cifar10", "--data", data.to_str().unwrap()];
        args.extend(["--base", "0-2", "--add", "3,4,5", "--via", via]);
        let out = Command::new(host_binary()).env("GAUSSEDGE_CACHE", &cache).args(&args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let sim = start(&work.path().join("state"), &[]);
    let features = cache.join("features");
    let (ok_a, err) = eval(&f.data, &sim.path);
    assert!(ok_a, "{err}");
    let entries = || std::fs::read_dir(&features).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let a_files = entries();
    // B has as many test records as A: it used to get A's features here.
    let (ok_b, err) = eval(&b, &sim.path);
    assert!(ok_b, "{err}");
    let b_test: Vec<_> =
        entries().into_iter().filter(|p| !a_files.contains(p) && p.to_str().unwrap().contains("Test")).collect();
    assert_eq!(b_test.len(), 1, "B's test features get their own entry: {:?}", entries());
    // Had they not, the device would say so: with A's features under B's
    // key, eval through the device refuses to report.
    let a_test = a_files.iter().find(|p| p.to_str().unwrap().contains("Test")).unwrap();
    std::fs::copy(a_test, &b_test[0]).unwrap();
    let (ok_poisoned, err) = eval(&b, &sim.path);
    assert!(!ok_poisoned, "a host scoring other features must fail");
    assert!(err.contains("the host's features are not the device's"), "{err}");
}

/// Training images of `class` blown up to phone-photo sizes, JPEG and PNG.
fn write_photos(dir: &Path, class: u16, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let train = dataset(Split::Train);
    for (k, i) in train.indices_of(class).into_iter().take(n).enumerate() {
        let s = &train.samples[i];
        let small = image::RgbImage::from_raw(s.format.width.into(), s.format.height.into(), s.pixels.clone()).unwrap();
        let (w, h) = if k % 3 == 0 { (1200, 1600) } else { (1600, 1200) };
        let big = image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle);
        let ext = if k % 2 == 0 { "jpg" } else { "png" };
        big.save(dir.join(format!("photo-{k:02}.{ext}"))).unwrap();
    }
}

#[test]
fn phone_photos_teach_a_class_and_the_device_answers_unknown_at_its_calibrated_threshold() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let sim = start(&work.path().join("state"), &[]);
    let port = sim.path.as_str();
    let manifest = gaussedge_bundle::Manifest::read(&f.bundle).unwrap();
    let calibration = manifest.calibration.clone().expect("the fixture bundle is calibrated");

    // The bundle's threshold is the device's from boot.
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--port", port, "--json"])).unwrap();
    assert_eq!(info["device"]["novelty_threshold"].as_f64(), Some(calibration.threshold));

    // Photos of 1600x1200 go through a device whose largest frame is 64x64:
    // the host fits each to the backbone's input first.
    let photos = work.path().join("mugs");
    write_photos(&photos, 6, 12);
    let out = ok(&["learn", "--port", port, "--label", "mug", "--from", photos.to_str().unwrap()]);
    assert!(out.contains("learned mug from 12 samples"), "{out}");
    let photo = photos.join("photo-01.png");
    let out = ok(&["predict", "--port", port, "--json", photo.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["label"].is_string(), "{out}");

    // A folder with one unreadable file fails before anything is sent,
    // names the file, and leaves the device as it was.
    let bad = work.path().join("bad");
    write_photos(&bad, 7, 3);
    std::fs::write(bad.join("notes.jpg"), "this is text").unwrap();
    let classes = |port: &str| {
        let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--port", port, "--json"])).unwrap();
        info["classes"].as_array().unwrap().len()
    };
    let before = classes(port);
    let (success, _, err) = gaussedge(&["learn", "--port", port, "--label", "horse", "--from", bad.to_str().unwrap()]);
    assert!(!success && err.contains("notes.jpg") && err.contains("nothing was sent"), "{err}");
    assert_eq!(classes(port), before);
    let (success, out, err) =
        gaussedge(&["predict", "--port", port, photo.to_str().unwrap(), bad.join("notes.jpg").to_str().unwrap()]);
    assert!(!success && out.is_empty() && err.contains("notes.jpg"), "{out}\n{err}");

    // `threshold`: a value, a rate from the bundle's calibration, never.
    ok(&["threshold", "--port", port, "--value", "0"]);
    let out = ok(&["predict", "--port", port, photo.to_str().unwrap()]);
    assert!(out.contains("unknown (nearest: "), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["predict", "--port", port, "--json", photo.to_str().unwrap()])).unwrap();
    assert_eq!((v[0]["answer"].as_str(), v[0]["novel"].as_bool()), (Some("unknown"), Some(true)));
    let bundle = f.bundle.to_str().unwrap();
    let out = ok(&["threshold", "--port", port, "--tpr", "0.8", "--bundle", bundle]);
    let want = calibration.threshold_for(0.8).unwrap();
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--port", port, "--json"])).unwrap();
    assert_eq!(info["device"]["novelty_threshold"].as_f64(), Some(want), "{out}");
    assert!(ok(&["threshold", "--port", port, "--show", "--bundle", bundle]).contains("keeps at least"));
    ok(&["threshold", "--port", port, "--never"]);
    let out = ok(&["predict", "--port", port, photo.to_str().unwrap()]);
    assert!(!out.contains("unknown"), "{out}");
    for (args, why) in [
        (vec!["--tpr", "0.9"], "needs --bundle"),
        (vec!["--tpr", "0.1", "--bundle", bundle], "outside the calibrated range"),
        (vec!["--value", "-3"], ">= 0"),
        (vec!["--tpr", "0.9", "--bundle", f.bundle_b.to_str().unwrap()], "not the bundle this device runs"),
    ] {
        let mut a = vec!["threshold", "--port", port];
        a.extend(args);
        let (success, _, err) = gaussedge(&a);
        assert!(!success && err.contains(why), "{a:?}: {err}");
    }
    drop(sim);
}

fn onnx_fixture(name: &str) -> String {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx").join(format!("{name}.onnx"));
    p.to_str().unwrap().to_string()
}

#[test]
fn any_onnx_feature_extractor_becomes_a_bundle_a_device_runs() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let data = f.data.to_str().unwrap();
    let bundle_args = |name: &str, outputs: &str, channels: &str, out: &Path| -> Vec<String> {
        [
            "bundle",
            "--onnx",
            &onnx_fixture(name),
            "--outputs",
            outputs,
            "--size",
            "32x32",
            "--channels",
            channels,
            "--dataset",
            "cifar10",
            "--data",
            data,
            "--base",
            "0-2",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (name, outputs, channels, dim) in [
        ("pooled4d", "pooled", "3", 12),
        ("flat2d", "embedding", "3", 6),
        ("two_outputs", "early,late", "3", 20),
        ("grey", "features", "1", 12),
    ] {
        let out = work.path().join(name);
        let args = bundle_args(name, outputs, channels, &out);
        let printed = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(printed.contains(&format!("{dim} features")), "{printed}");
        let m = gaussedge_bundle::Manifest::read(&out).unwrap();
        assert_eq!((m.feature_dim, m.preprocess.channels.to_string().as_str()), (dim, channels));
        assert!(m.calibration.is_some_and(|c| c.threshold.is_finite()));
        let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
        assert!(card.contains("gaussedge did not train") && card.contains("Unknown"), "{card}");
    }

    // With test-time views the graph averages each frame with its mirror
    // image: another backbone (the statistics bind to it), the same size.
    let flip = work.path().join("two_outputs_flip");
    let mut args = bundle_args("two_outputs", "early,late", "3", &flip);
    args.extend(["--tta".to_string(), "flip".to_string()]);
    let printed = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(printed.contains("20 features"), "{printed}");
    let (plain, flipped) = (
        gaussedge_bundle::Manifest::read(&work.path().join("two_outputs")).unwrap(),
        gaussedge_bundle::Manifest::read(&flip).unwrap(),
    );
    assert_ne!(plain.backbone_sha256, flipped.backbone_sha256);
    assert_eq!(flipped.extra["tta"].as_str(), Some("flip"));
    let card = std::fs::read_to_string(flip.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("its mirror image"), "{card}");
    let (success, _, err) = gaussedge(&[
        "eval",
        "--bundle",
        flip.to_str().unwrap(),
        "--dataset",
        "cifar10",
        "--data",
        data,
        "--tta",
        "flip",
    ]);
    assert!(!success && err.contains("already averages"), "{err}");

    // The device boots such a bundle (the one that averages two views),
    // learns on it and answers.
    let bundle = flip;
    let state = work.path().join("state");
    let camera = format!("cifar10:{data}");
    let sim = gaussedge_host::demo::Simulator::start(
        &device_binary(),
        &bundle,
        &state,
        &["--camera".into(), camera, "--max-frame".into(), "64x64".into()],
    )
    .unwrap();
    let port = sim.path.as_str();
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--port", port, "--json"])).unwrap();
    assert_eq!((info["device"]["dim"].as_u64(), info["classes"].as_array().unwrap().len()), (Some(20), 3));
    let out = ok(&["learn", "--port", port, "--label", "dog", "--capture", "8", "--source-class", "5"]);
    assert!(out.contains("from 8 samples"), "{out}");
    let photos = work.path().join("photos");
    write_photos(&photos, 5, 2);
    let out = ok(&["predict", "--port", port, photos.join("photo-00.jpg").to_str().unwrap()]);
    assert!(out.contains("photo-00.jpg: "), "{out}");
    drop(sim);

    // Graphs that cannot serve, and bad options, are refused with the reason.
    for (name, outputs, why) in [
        ("unpooled", "map", "GlobalAveragePool"),
        ("int_output", "codes", "32-bit floats"),
        ("flat2d", "logits", "no output `logits`"),
        ("fixed16", "features", "declared"),
        ("garbage", "features", "cannot load the backbone ONNX"),
    ] {
        let args = bundle_args(name, outputs, "3", &work.path().join("refused"));
        let (success, _, err) = gaussedge(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!success && err.contains("cannot serve as a gaussedge backbone") && err.contains(why), "{name}: {err}");
        assert!(!work.path().join("refused").exists(), "{name}: a refused graph wrote a bundle");
    }
    let mut args = bundle_args("flat2d", "embedding", "2", &work.path().join("x"));
    let (success, _, err) = gaussedge(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!success && err.contains("--channels 1 (grey) or 3"), "{err}");
    args[6] = "32by32".into();
    args[8] = "3".into();
    let (success, _, err) = gaussedge(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!success && err.contains("WIDTHxHEIGHT"), "{err}");
}
