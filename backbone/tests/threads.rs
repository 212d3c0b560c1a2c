//! `--threads N` splits the project's kernels over N cores; a split must
//! not change a feature by one bit, or a head fitted on one device would
//! score another's frames differently. On aarch64 the kernels replace
//! tract's only in a backbone loaded for more than one thread
//! (`kernels::serve`), so these tests load for several.

use gaussedge_backbone::kernels::{self, Isa};
use gaussedge_backbone::{Backbone, Rewrites};
use gaussedge_bundle::Bundle;
use std::path::PathBuf;

fn b0() -> Bundle {
    Bundle::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cifar10-b0-base5")).unwrap()
}

fn load(bundle: &Bundle, batch: usize, rewrites: Rewrites) -> Backbone {
    let p = bundle.manifest.preprocess;
    Backbone::load_with(
        &bundle.onnx,
        batch,
        p.channels.into(),
        p.height.into(),
        p.width.into(),
        &bundle.manifest.layers,
        rewrites,
    )
    .unwrap()
}

fn frame(backbone: &Backbone) -> Vec<f32> {
    (0..backbone.batch() * backbone.input_len()).map(|i| ((i as f32) * 0.37).sin()).collect()
}

#[test]
fn the_committed_b0_gives_the_same_bits_on_one_two_and_three_threads() {
    let bundle = b0();
    for batch in [1, 2] {
        let backbone = Backbone::with_threads(3, || load(&bundle, batch, Rewrites::Project));
        let x = frame(&backbone);
        let one = backbone.features(&x).unwrap();
        assert!(one.iter().any(|v| *v != 0.0));
        for threads in [2, 3] {
            let many = Backbone::with_threads(threads, || backbone.features(&x).unwrap());
            let differ = one.iter().zip(&many).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "batch {batch}, {threads} threads: {differ} of {} features differ", one.len());
        }
    }
}

/// Where the project's kernels serve a split load (every x86-64 with AVX2,
/// and aarch64), each block's features are tract's own within 1e-5 of that
/// block's largest value: the same arithmetic, summed in another order.
#[test]
fn a_backbone_loaded_for_threads_gives_tracts_features() {
    let serves = Backbone::with_threads(2, kernels::serve);
    assert_eq!(serves, cfg!(target_arch = "aarch64") || Isa::detected() > Isa::Portable);
    assert_eq!(kernels::serve(), !cfg!(target_arch = "aarch64") && Isa::detected() > Isa::Portable);
    eprintln!("kernels a two-thread load picks here: {}", Backbone::with_threads(2, kernels::set_name));
    let bundle = b0();
    let split = Backbone::with_threads(2, || load(&bundle, 2, Rewrites::Project));
    let plain = load(&bundle, 2, Rewrites::Plain);
    let x = frame(&split);
    let (ours, theirs) = (Backbone::with_threads(2, || split.features(&x).unwrap()), plain.features(&x).unwrap());
    assert_eq!(ours.len(), theirs.len());
    let mut at = 0;
    for _image in 0..2 {
        for (layer, &d) in split.layer_dims().iter().enumerate() {
            let (a, b) = (&ours[at..at + d], &theirs[at..at + d]);
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = a.iter().zip(b).map(|(p, q)| (p - q).abs() / scale).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "layer {layer}: relative difference {worst}");
            at += d;
        }
    }
}

/// A device with `--threads 2` writes its compiled graph from a split load
/// and boots from it to the same bits; the bytes name the kernel set, so
/// where a one-thread load would pick other kernels (aarch64) they are
/// refused there, and that boot loads the ONNX instead.
#[test]
fn a_split_load_boots_from_its_compiled_graph_to_the_same_bits() {
    use gaussedge_backbone::{BackboneError, CompiledError};
    let b = b0();
    let (shape, layers, source) = ([1, 3, 64, 64], &b.manifest.layers, gaussedge_bundle::sha256(&b.onnx));
    let (from_onnx, compiled) =
        Backbone::with_threads(2, || Backbone::load_and_compile(&b.onnx, shape, layers, source)).unwrap();
    let compiled = compiled.expect("b0's split graph compiles");
    let from_bytes = Backbone::with_threads(2, || Backbone::load_compiled(&compiled, shape, layers, source)).unwrap();
    let x = frame(&from_onnx);
    let (a, c) = Backbone::with_threads(2, || (from_onnx.features(&x).unwrap(), from_bytes.features(&x).unwrap()));
    assert!(a.iter().any(|v| *v != 0.0));
    let differ = a.iter().zip(&c).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} features differ", a.len());
    let one_thread = Backbone::load_compiled(&compiled, shape, layers, source);
    if Backbone::with_threads(2, kernels::set_name) == kernels::set_name() {
        assert!(one_thread.is_ok());
    } else {
        assert!(
            matches!(one_thread, Err(BackboneError::Compiled(CompiledError::Build { .. }))),
            "a one-thread boot took a split load's bytes"
        );
    }
}
