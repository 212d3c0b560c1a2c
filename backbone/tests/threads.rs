//! `--threads N` splits the project's kernels over tract's pool; a split
//! must not change a feature by one bit, or a head fitted on one device
//! would score another's frames differently.

use gaussedge_backbone::Backbone;
use gaussedge_bundle::Bundle;
use std::path::PathBuf;

#[test]
fn the_committed_b0_gives_the_same_bits_on_one_two_and_three_threads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cifar10-b0-base5");
    let bundle = Bundle::read(&dir).unwrap();
    let p = bundle.manifest.preprocess;
    for batch in [1, 2] {
        let backbone = Backbone::load(
            &bundle.onnx,
            batch,
            p.channels.into(),
            p.height.into(),
            p.width.into(),
            &bundle.manifest.layers,
        )
        .unwrap();
        let x: Vec<f32> = (0..batch * backbone.input_len()).map(|i| ((i as f32) * 0.37).sin()).collect();
        let one = backbone.features(&x).unwrap();
        assert!(one.iter().any(|v| *v != 0.0));
        for threads in [2, 3] {
            let many = Backbone::with_threads(threads, || backbone.features(&x).unwrap());
            let differ = one.iter().zip(&many).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "batch {batch}, {threads} threads: {differ} of {} features differ", one.len());
        }
    }
}
