//! A compiled backbone must boot to the same bits as its ONNX, and any
//! bytes that are not exactly what this build wrote for this ONNX, shape
//! and layers must be refused with the reason: the device then loads the
//! ONNX, so a refusal costs a boot its speed and nothing else.

use gaussedge_backbone::{Backbone, BackboneError, CompiledError};
use gaussedge_bundle::{sha256, Bundle};
use std::path::PathBuf;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn b0() -> Bundle {
    Bundle::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cifar10-b0-base5")).unwrap()
}

fn frame(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.37 + seed).sin()).collect()
}

/// `bytes` with its CRC made right again, as a writer that meant them would.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 4;
    let crc = CRC.checksum(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn refusal<S: AsRef<str>>(bytes: &[u8], shape: [usize; 4], layers: &[S], source: [u8; 32]) -> CompiledError {
    match Backbone::load_compiled(bytes, shape, layers, source) {
        Err(BackboneError::Compiled(e)) => e,
        Err(e) => panic!("refused, but not as compiled bytes: {e}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn the_committed_b0_boots_from_its_compiled_graph_to_the_same_bits() {
    let b = b0();
    let (shape, layers, source) = ([1, 3, 64, 64], &b.manifest.layers, sha256(&b.onnx));
    let (from_onnx, compiled) = Backbone::load_and_compile(&b.onnx, shape, layers, source).unwrap();
    // On every CPU: where the project's kernels step aside (aarch64), the
    // graph holds tract's own depthwise op, stored as its convolution.
    let compiled = compiled.unwrap();
    let (from_bytes, profile) = Backbone::load_compiled_profiled(&compiled, shape, layers, source).unwrap();
    assert_eq!(profile.stages.first().map(|s| s.0), Some("read"));
    assert_eq!(from_bytes.dim(), from_onnx.dim());
    for seed in [0.0, 1.5] {
        let x = frame(from_onnx.input_len(), seed);
        let (a, b) = (from_onnx.features(&x).unwrap(), from_bytes.features(&x).unwrap());
        assert!(a.iter().any(|v| *v != 0.0));
        let differ = a.iter().zip(&b).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {} features differ", a.len());
    }
    // Writing is deterministic: the same ONNX compiles to the same bytes.
    let (_, again) = Backbone::load_and_compile(&b.onnx, shape, layers, source).unwrap();
    assert!(again.unwrap() == compiled);

    // Bound to the ONNX, the shape and the layers it was written for.
    let mut other = source;
    other[0] ^= 1;
    assert!(matches!(refusal(&compiled, shape, layers, other), CompiledError::Source { .. }));
    assert!(matches!(refusal(&compiled, [2, 3, 64, 64], layers, source), CompiledError::Shape { .. }));
    assert!(matches!(refusal(&compiled, shape, &layers[..15], source), CompiledError::Shape { .. }));
    assert!(matches!(Backbone::load_compiled(&compiled, shape, &[] as &[&str], source), Err(BackboneError::NoLayers)));

    // Damage anywhere, and every cut, fails the CRC or the magic.
    for at in [8, 40, compiled.len() / 3, compiled.len() / 2, compiled.len() - 1] {
        let mut bad = compiled.clone();
        bad[at] ^= 0x10;
        assert_eq!(refusal(&bad, shape, layers, source), CompiledError::Corrupt, "byte {at}");
    }
    for len in [0, 4, 7, 8, 9, 12, compiled.len() / 2, compiled.len() - 4, compiled.len() - 1] {
        let e = refusal(&compiled[..len], shape, layers, source);
        assert!(matches!(e, CompiledError::Magic | CompiledError::Corrupt), "cut at {len}: {e:?}");
    }
    let mut magic = compiled.clone();
    magic[0] = b'X';
    assert_eq!(refusal(&resealed(magic), shape, layers, source), CompiledError::Magic);

    // Another build or CPU: its fingerprint, with a valid CRC.
    let fp = gaussedge_backbone::compiled::fingerprint();
    assert_eq!(&compiled[8..12], (fp.len() as u32).to_le_bytes());
    assert_eq!(&compiled[12..12 + fp.len()], fp.as_bytes());
    let mut foreign = compiled.clone();
    foreign[12] ^= 0x20;
    assert!(matches!(refusal(&resealed(foreign), shape, layers, source), CompiledError::Build { .. }));

    // A well-sealed body that does not parse: an unknown op tag, and the
    // first node's input count pointing past the end.
    let header = 12 + fp.len() + 32 + 4 * 8 + 4 + layers.iter().map(|l| 4 + l.len()).sum::<usize>();
    let first_node = header + 4;
    let name_len = u32::from_le_bytes(compiled[first_node..first_node + 4].try_into().unwrap()) as usize;
    let inputs_at = first_node + 4 + name_len;
    let tag_at = inputs_at + 4; // the source has no inputs
    assert_eq!(&compiled[inputs_at..tag_at], [0, 0, 0, 0]);
    let mut tag = compiled.clone();
    tag[tag_at] = 200;
    assert_eq!(refusal(&resealed(tag), shape, layers, source), CompiledError::Unknown("op tag 200".into()));
    let mut count = compiled.clone();
    count[inputs_at..tag_at].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(refusal(&resealed(count), shape, layers, source), CompiledError::Truncated(_)));
}

/// Backbones the project's writer did not make: where their rewritten
/// graphs hold only ops the format stores (tract's own convolutions
/// included), they compile and boot to the same bits.
#[test]
fn foreign_backbones_compile_to_the_same_bits() {
    let mut compiled_any = false;
    for (name, channels, layers) in [
        ("pooled4d", 3, vec!["pooled"]),
        ("flat2d", 3, vec!["embedding"]),
        ("two_outputs", 3, vec!["early", "late"]),
        ("grey", 1, vec!["features"]),
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/onnx/{name}.onnx"));
        let onnx = std::fs::read(path).unwrap();
        let shape = [1, channels, 32, 24];
        let (from_onnx, compiled) = Backbone::load_and_compile(&onnx, shape, &layers, sha256(&onnx)).unwrap();
        let compiled = match compiled {
            Ok(c) => c,
            Err(why) => {
                assert!(why.contains("which compiled backbones do not store"), "{name}: {why}");
                continue;
            }
        };
        compiled_any = true;
        let from_bytes = Backbone::load_compiled(&compiled, shape, &layers, sha256(&onnx)).unwrap();
        for seed in [0.0, 2.0] {
            let x = frame(from_onnx.input_len(), seed);
            let (a, b) = (from_onnx.features(&x).unwrap(), from_bytes.features(&x).unwrap());
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}");
        }
    }
    assert!(compiled_any, "no fixture compiled");
}
