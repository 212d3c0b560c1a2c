//! The graph a CPU without the project's kernels runs (aarch64: tract's own
//! depthwise op and matrix products), compiled and booted on this one.
//! The environment switches that keep tract's choices are process-wide,
//! so this is a test binary of its own with a single test.

use gaussedge_backbone::Backbone;
use gaussedge_bundle::{sha256, Bundle};
use std::path::PathBuf;

#[test]
fn the_committed_b0_with_tracts_depthwise_and_dense_ops_boots_from_its_compiled_graph() {
    // Set before any load reads them; nothing else runs in this process.
    std::env::set_var("GAUSSEDGE_TRACT_DEPTHWISE", "1");
    std::env::set_var("GAUSSEDGE_TRACT_DENSE", "1");
    let b = Bundle::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cifar10-b0-base5")).unwrap();
    let (shape, layers, source) = ([1, 3, 64, 64], &b.manifest.layers, sha256(&b.onnx));
    let graph = Backbone::optimized(&b.onnx, shape, layers).unwrap();
    let depthwise = graph.nodes.iter().filter(|n| n.op().name() == "DepthWiseConv").count();
    assert_eq!(depthwise, 16, "b0's depthwise convolutions as tract's own op");

    let (from_onnx, compiled) = Backbone::load_and_compile(&b.onnx, shape, layers, source).unwrap();
    let compiled = compiled.unwrap();
    let from_bytes = Backbone::load_compiled(&compiled, shape, layers, source).unwrap();
    for seed in [0.0f32, 1.5] {
        let x: Vec<f32> = (0..from_onnx.input_len()).map(|i| ((i as f32) * 0.37 + seed).sin()).collect();
        let (a, b) = (from_onnx.features(&x).unwrap(), from_bytes.features(&x).unwrap());
        assert!(a.iter().any(|v| *v != 0.0));
        let differ = a.iter().zip(&b).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {} features differ", a.len());
    }
    // The fingerprint names the switches: the default graph's bytes would
    // not be taken for these, nor these for it.
    assert!(gaussedge_backbone::compiled::fingerprint().contains("off GAUSSEDGE_TRACT_DEPTHWISE,GAUSSEDGE_TRACT_DENSE"));
}
