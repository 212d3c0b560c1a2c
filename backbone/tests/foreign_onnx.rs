//! Backbones gaussedge's own writer did not make (`tests/fixtures/onnx/`,
//! built with the `onnx` package's helper API by `make.py`): they load, the
//! project's rewrites step aside where their patterns do not match, and
//! graphs that cannot give features are refused with the output named.

use gaussedge_backbone::{declared_batch, Backbone, BackboneError, Rewrites};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx").join(format!("{name}.onnx"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn input(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

#[test]
fn foreign_backbones_give_tracts_own_features() {
    for (name, channels, layers, dim) in [
        ("pooled4d", 3, vec!["pooled"], 12),
        ("flat2d", 3, vec!["embedding"], 6),
        ("two_outputs", 3, vec!["early", "late"], 20),
        ("two_outputs", 3, vec!["late"], 12),
        ("grey", 1, vec!["features"], 12),
    ] {
        let onnx = fixture(name);
        assert_eq!(declared_batch(&onnx), Some(1), "{name}");
        let ours = Backbone::load_with(&onnx, 1, channels, 32, 24, &layers, Rewrites::Project).unwrap();
        let plain = Backbone::load_with(&onnx, 1, channels, 32, 24, &layers, Rewrites::Plain).unwrap();
        assert_eq!(ours.dim(), dim, "{name} {layers:?}");
        for seed in 0..3 {
            let x = input(ours.input_len(), seed);
            let (a, b) = (ours.features(&x).unwrap(), plain.features(&x).unwrap());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / scale).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{name}: relative difference {worst}");
            assert!(b.iter().any(|v| *v != 0.0), "{name}: all-zero features");
        }
    }
}

/// The loader's reordered declutter (folding before `ChangeAxes`, for boot
/// time) must leave the graph computing what tract's own pipeline does.
#[test]
fn the_reordered_declutter_computes_what_tracts_own_pipeline_does() {
    use tract_onnx::prelude::*;
    for (name, channels, layer) in [("pooled4d", 3, "pooled"), ("two_outputs", 3, "late"), ("grey", 1, "features")] {
        let onnx = fixture(name);
        let ours = Backbone::load_with(&onnx, 1, channels, 32, 24, &[layer], Rewrites::Plain).unwrap();
        let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).unwrap();
        model = model.with_input_fact(0, f32::fact([1, channels, 32, 24]).into()).unwrap();
        let outlet = model.outlet_labels.iter().find(|(_, l)| l.as_str() == layer).map(|(o, _)| *o).unwrap();
        model.select_output_outlets(&[outlet]).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        for seed in 0..2 {
            let x = input(ours.input_len(), seed);
            let t = Tensor::from_shape(&[1, channels, 32, 24], &x).unwrap();
            let theirs = plan.run(tvec!(t.into())).unwrap();
            let theirs = theirs[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>();
            assert_eq!(ours.features(&x).unwrap(), theirs, "{name}");
        }
    }
}

#[test]
fn graphs_that_cannot_give_features_are_refused_with_the_reason() {
    let err = |name: &str, layers: &[&str], size: usize| match Backbone::load(&fixture(name), 1, 3, size, size, layers)
    {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e,
    };
    let e = err("unpooled", &["map"], 32);
    assert!(matches!(e, BackboneError::OutputShape { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("`map`")
            && text.contains("[\"1\", \"12\", \"16\", \"16\"]")
            && text.contains("GlobalAveragePool"),
        "{text}"
    );
    let e = err("int_output", &["codes"], 32).to_string();
    assert!(e.contains("`codes`") && e.contains("32-bit floats"), "{e}");
    let e = err("flat2d", &["logits"], 32).to_string();
    assert!(e.contains("no output `logits`"), "{e}");
    let e = err("fixed16", &["features"], 32).to_string();
    assert!(e.contains("declared [\"1\", \"3\", \"16\", \"16\"]") && e.contains("[1, 3, 32, 32]"), "{e}");
    assert!(Backbone::load(&fixture("fixed16"), 1, 3, 16, 16, &["features"]).is_ok());
    let e = err("garbage", &["features"], 32).to_string();
    assert!(e.contains("cannot load the backbone ONNX"), "{e}");
    // A graph whose batch is fixed at 1 cannot run batches of 8.
    let e = Backbone::load(&fixture("flat2d"), 8, 3, 32, 32, &["embedding"]).err().expect("refused").to_string();
    assert!(e.contains("declared"), "{e}");
}
