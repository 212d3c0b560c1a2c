//! `cargo bench -p gaussedge-device --bench latency -- --bundle DIR [--runs N] [--batch B]
//! [--threads T] [--input FILE.f32] [--compiled FILE] [--profile [--nodes [--top N]]]`
//! (`-- --bundle DIR --compile FILE` writes the bundle's compiled backbone
//! to FILE and exits)
//!
//! Per-image latency of the device pipeline on a bundle, stage by stage:
//! preprocessing a raw frame, the backbone (tract, batch 1, one thread),
//! one head learn and one head predict (with novelty) at K = 64, plus the
//! process's peak RSS. Prints one JSON line; bench/device-latency.sh runs it
//! beside onnxruntime on the same ONNX and input. With `--batch B` it times
//! only the backbone on batches of B frames (per image), the case of a
//! capture learned in batches. `--profile` prints a table of time per
//! tract operator instead, `--nodes` adds the costliest nodes. With
//! `--compiled FILE` the boot is timed twice, from the compiled graph in
//! FILE first (what a device boots from once it has one), then from the
//! ONNX.

use gaussedge_backbone::Backbone;
use gaussedge_device::bundle::Bundle;
use gaussedge_shared::frame::{frame_to_input, input_len};
use gaussedge_shared::head::{GaussianHead, HeadConfig};
use gaussedge_shared::wire::FrameFormat;
use gaussedge_shared::{label, Estimator, Transform};
use std::hint::black_box;
use std::time::Instant;

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e6
}

/// A load's stages as JSON, milliseconds by stage name.
fn stages_ms(p: &gaussedge_backbone::LoadProfile) -> serde_json::Map<String, serde_json::Value> {
    p.stages.iter().map(|(name, d)| (name.to_string(), (d.as_secs_f64() * 1e3).into())).collect()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let Some(dir) = arg("--bundle") else {
        eprintln!("usage: latency --bundle DIR [--runs N] [--input FILE.f32]");
        return;
    };
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(200);
    let batch: usize = arg("--batch").and_then(|r| r.parse().ok()).unwrap_or(1);
    let threads: usize = arg("--threads").and_then(|r| r.parse().ok()).unwrap_or(1);
    Backbone::set_threads(threads);
    let bundle = Bundle::read(std::path::Path::new(&dir)).expect("bundle");
    let p = bundle.manifest.preprocess;
    let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
    let source = gaussedge_device::bundle::sha256(&bundle.onnx);
    if let Some(path) = arg("--compile") {
        let (_, compiled) =
            Backbone::load_and_compile(&bundle.onnx, shape, &bundle.manifest.layers, source).expect("backbone");
        std::fs::write(&path, compiled.expect("a compiled graph")).expect("--compile FILE");
        return;
    }
    if args.iter().any(|a| a == "--profile") {
        let nodes = args.iter().any(|a| a == "--nodes");
        let top = arg("--top").and_then(|n| n.parse().ok()).unwrap_or(30);
        profile(&bundle, runs, batch, nodes.then_some(top));
        return;
    }
    if batch > 1 {
        let (c, h, w) = (p.channels as usize, p.height as usize, p.width as usize);
        let backbone = Backbone::load(&bundle.onnx, batch, c, h, w, &bundle.manifest.layers).expect("backbone");
        let frame: Vec<f32> = match arg("--input") {
            Some(path) => std::fs::read(path)
                .expect("--input written by a batch-1 run")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            None => vec![0.5; c * h * w],
        };
        let input: Vec<f32> = (0..batch).flat_map(|_| frame.iter().copied()).collect();
        backbone.features(&input).expect("warm-up");
        let times: Vec<f64> = (0..runs.div_ceil(batch).max(5))
            .map(|_| {
                let t = Instant::now();
                black_box(backbone.features(black_box(&input)).unwrap());
                t.elapsed().as_secs_f64() / batch as f64
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"impl": "tract", "batch": batch, "threads": threads, "backbone_us": median_us(times)})
        );
        return;
    }
    // Boot from the compiled graph first, when there is one: the first load
    // in a process pays for cold code and allocations, and the ONNX's load
    // should not be the one that gets them for free.
    let compiled = arg("--compiled").map(|path| {
        let bytes = std::fs::read(path).expect("--compiled FILE (written by --compile FILE)");
        let t = Instant::now();
        let (_, stages) =
            Backbone::load_compiled_profiled(&bytes, shape, &bundle.manifest.layers, source).expect("compiled");
        (t.elapsed().as_secs_f64() * 1e3, stages_ms(&stages))
    });
    // Boot: the bundle's backbone loaded from its ONNX, stage by stage
    // (where the milliseconds go).
    let t = Instant::now();
    let (backbone, stages) =
        Backbone::load_profiled(&bundle.onnx, shape, &bundle.manifest.layers, gaussedge_backbone::Rewrites::Project)
            .expect("backbone");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let load_stages = stages_ms(&stages);
    let d = backbone.dim();
    let config = HeadConfig {
        dim: d,
        capacity: 64,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    let mut head = GaussianHead::with_capacity(config).expect("head");
    let stats = bundle.stats.as_deref().expect("bundle has head.stats");
    gaussedge_shared::stats::load(&mut head, stats, &Default::default()).expect("stats");

    // A raw frame at the model's resolution, and a fixed input shared with
    // the onnxruntime peer (written next to the bundle's name in /tmp).
    let format = FrameFormat { width: p.width, height: p.height, channels: 3 };
    let frame: Vec<u8> = (0..format.len()).map(|i| (i * 31 % 251) as u8).collect();
    let mut input = vec![0f32; input_len(&p)];
    frame_to_input(&frame, format, &p, &mut input).expect("preprocess");
    if let Some(path) = arg("--input") {
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write input");
    }

    // The backbone alone, frame after frame, as onnxruntime's peer runs it.
    backbone.features(&input).expect("warm-up");
    let warm: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(backbone.features(black_box(&input)).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    // Then the device's loop: each frame preprocessed, run, learned and
    // predicted. The head's update walks its D x D matrices (13 MiB at
    // D = 1808), which evicts the backbone's weights from the caches, so
    // the backbone is slower here than alone.
    let (mut pre, mut bb, mut learn, mut predict) = (vec![], vec![], vec![], vec![]);
    head.begin(label("bench").unwrap()).unwrap();
    for i in 0..runs {
        let t = Instant::now();
        frame_to_input(black_box(&frame), format, &p, &mut input).unwrap();
        pre.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut features = backbone.features(black_box(&input)).unwrap();
        bb.push(t.elapsed().as_secs_f64());
        // Distinct samples: the same feature twice is a zero update.
        for (j, f) in features.iter_mut().enumerate() {
            *f += ((i + j) % 13) as f32 * 0.01;
        }
        let t = Instant::now();
        black_box(head.learn(&features).unwrap());
        learn.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(head.predict(&features, None).unwrap());
        predict.push(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "tract",
            "preprocess_us": median_us(pre),
            "backbone_us": median_us(warm),
            "backbone_in_loop_us": median_us(bb),
            // The mean, not the median: one learn in `PENDING` adds the
            // group to the scatter and pays for the others.
            "head_learn_us": learn.iter().sum::<f64>() / learn.len() as f64 * 1e6,
            "head_learn_max_us": learn.iter().copied().fold(0.0, f64::max) * 1e6,
            "head_predict_us": median_us(predict),
            "load_ms": load_ms,
            "load_stages_ms": load_stages,
            "load_compiled_ms": compiled.as_ref().map(|c| c.0),
            "load_compiled_stages_ms": compiled.map(|c| c.1),
            "peak_rss_mib": peak_rss_kib() as f64 / 1024.0,
            "head_bytes": head.layout().bytes(),
            "input": [p.channels, p.height, p.width],
            "batch": 1,
            "threads": threads,
            "runs": runs,
        })
    );
}

/// Time per operator type over `runs` images (batch 1): where tract spends
/// the backbone's time. Prints a markdown table.
/// Time per operator kind; with `nodes: Some(n)`, also the n costliest
/// nodes with their input and output shapes.
fn profile(bundle: &Bundle, runs: usize, batch: usize, nodes: Option<usize>) {
    use std::collections::HashMap;
    use tract_onnx::prelude::*;
    let p = bundle.manifest.preprocess;
    let shape = [batch, p.channels as usize, p.height as usize, p.width as usize];
    let model = Backbone::optimized(&bundle.onnx, shape, &bundle.manifest.layers).expect("model");
    let plan = model.into_runnable().expect("plan");
    let mut state = plan.spawn().expect("state");
    let input = Tensor::from_shape(&shape, &vec![0.5f32; shape.iter().product()]).expect("input");
    let mut per_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut per_node: HashMap<usize, f64> = HashMap::new();
    let mut total = 0.0;
    for i in 0..runs + 5 {
        let t0 = Instant::now();
        let mut times = vec![];
        state
            .run_plan_with_eval(tvec!(input.clone().into()), |ctx, st, node, inputs| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                times.push((node.id, node.op().name().to_string(), t.elapsed().as_secs_f64()));
                r
            })
            .expect("run");
        if i >= 5 {
            total += t0.elapsed().as_secs_f64();
            for (id, name, t) in times {
                *per_node.entry(id).or_default() += t;
                let e = per_op.entry(name).or_default();
                e.0 += t;
                e.1 += 1;
            }
        }
    }
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!("| operator | nodes | µs per image | share |\n| --- | --- | --- | --- |");
    for (name, (t, n)) in rows {
        println!("| {name} | {} | {:.1} | {:.1}% |", n / runs, t / (runs * batch) as f64 * 1e6, 100.0 * t / total);
    }
    println!("| total (with dispatch) | | {:.1} | |", total / (runs * batch) as f64 * 1e6);
    if let Some(top) = nodes {
        let model = plan.model();
        let mut rows: Vec<_> = per_node.into_iter().collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("\n| node | operator | inputs | output | µs per image |\n| --- | --- | --- | --- | --- |");
        for (id, t) in rows.into_iter().take(top) {
            let node = model.node(id);
            let shapes: Vec<String> = node
                .inputs
                .iter()
                .map(|i| format!("{:?}", model.outlet_fact(*i).map(|f| f.shape.to_tvec()).unwrap_or_default()))
                .collect();
            let out = format!("{:?}", node.outputs[0].fact.shape.to_tvec());
            println!(
                "| {} | {} | {} | {out} | {:.1} |",
                node.name,
                node.op().name(),
                shapes.join(" "),
                t / (runs * batch) as f64 * 1e6
            );
        }
    }
}
