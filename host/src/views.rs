//! Test-time views: a backbone's ONNX graph rewritten so that each frame's
//! features are the mean of the frame's and its mirror image's.
//!
//! Why in the graph and not in the code that runs it: the rewritten file is
//! an ordinary ONNX model with one input and the same feature outputs, so
//! every consumer (the device's tract plan, the host's feature extraction,
//! onnxruntime in the latency bench) runs the averaged features without
//! knowing, and the bundle's backbone SHA-256, which every statistics file
//! is bound to, tells averaged features from plain ones: a head fitted on
//! one is refused on the other. Both views go through the network as one
//! batch of two: on b0 at 64x64 that measured 2.1x a single frame's time
//! (README, device latency), so a batch saves next to nothing here.
//!
//! On CIFAR-10 (issue 13's protocol) the average lifted the final 10-class
//! accuracy from 0.7576 to 0.7835 and the novelty AUROC from 0.693 to
//! 0.705 (`bench/accuracy.md`, "Test-time flip averaging").

use crate::onnx::{attr_int, attr_ints, value_info};
use prost::Message;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

/// Which views of a frame its features average (`--tta`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The frame alone.
    #[default]
    None,
    /// The frame and its mirror image, averaged.
    Flip,
}

impl Tta {
    /// The views a bundle's graph averages, as its manifest records them
    /// (`extra.tta`, written by `train` and `bundle`); a manifest from
    /// before the option records none, and its graph runs the frame alone.
    pub fn of(m: &gaussedge_bundle::Manifest) -> Tta {
        Tta::deserialize(&m.extra["tta"]).unwrap_or_default()
    }
}

/// `onnx` with `layers` averaged over the views `tta` asks for (the same
/// bytes for [`Tta::None`]); each layer's size is read by loading the
/// graph with tract at the bundle's input size.
pub fn with_views(
    onnx: Vec<u8>,
    layers: &[String],
    pre: &gaussedge_shared::stats::Preprocess,
    tta: Tta,
) -> anyhow::Result<Vec<u8>> {
    if tta == Tta::None {
        return Ok(onnx);
    }
    let (c, h, w) = (pre.channels as usize, pre.height as usize, pre.width as usize);
    let backbone = gaussedge_backbone::Backbone::load(&onnx, 1, c, h, w, layers)?;
    let outputs: Vec<(String, usize)> = layers.iter().cloned().zip(backbone.layer_dims().iter().copied()).collect();
    Ok(flip_average(&onnx, &outputs, w)?)
}

#[derive(Debug, thiserror::Error)]
pub enum ViewsError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("the graph has {0} inputs; test-time views need exactly one image input")]
    Inputs(usize),
    #[error("the graph has no output `{0}`")]
    NoOutput(String),
    #[error("the graph's input is {declared} wide, the bundle's frames {asked}")]
    Width { declared: usize, asked: usize },
    #[error("the graph already averages test-time views (it has `{0}`)")]
    AlreadyWrapped(String),
}

/// Suffix of every name this rewrite adds, so a second wrap is caught.
const TAG: &str = "__flip";

/// Rewrites `onnx` (input `[N, C, H, W]`, `width` = W) so that each output
/// in `outputs` (name and its flattened size per image) is the mean of the
/// original output on the frame and on the frame mirrored left to right.
/// The other outputs and every node only they need are dropped; each
/// averaged output is `[N, D]`.
pub fn flip_average(onnx: &[u8], outputs: &[(String, usize)], width: usize) -> Result<Vec<u8>, ViewsError> {
    let mut model = pb::ModelProto::decode(onnx).map_err(|e| ViewsError::NotOnnx(e.to_string()))?;
    let graph = model.graph.as_mut().ok_or_else(|| ViewsError::NotOnnx("no graph".into()))?;
    if let Some(n) = graph.node.iter().flat_map(|n| &n.output).find(|o| o.contains(TAG)) {
        return Err(ViewsError::AlreadyWrapped(n.clone()));
    }
    let initialised: HashSet<&String> = graph.initializer.iter().map(|t| &t.name).collect();
    let inputs: Vec<pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !initialised.contains(&i.name)).cloned().collect();
    let [input] = inputs.as_slice() else { return Err(ViewsError::Inputs(inputs.len())) };
    let dims = shape_of(input);
    if let Some(Some(declared)) = dims.get(3) {
        if *declared != width {
            return Err(ViewsError::Width { declared: *declared, asked: width });
        }
    }
    let batch = dims.first().cloned().flatten();
    for (name, _) in outputs {
        if !graph.output.iter().any(|o| &o.name == name) {
            return Err(ViewsError::NoOutput(name.clone()));
        }
    }

    // Inside, the network sees both views as one batch: every use of the
    // input reads the views, every use of a feature output the views' one.
    let views = format!("{}{TAG}_views", input.name);
    let mut renamed: HashMap<String, String> = HashMap::new();
    renamed.insert(input.name.clone(), views.clone());
    for (name, _) in outputs {
        renamed.insert(name.clone(), format!("{name}{TAG}_both"));
    }
    for node in &mut graph.node {
        for v in node.input.iter_mut().chain(node.output.iter_mut()) {
            if let Some(r) = renamed.get(v.as_str()) {
                *v = r.clone();
            }
        }
    }

    let opset =
        model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(13, |o| o.version);
    let graph = model.graph.as_mut().expect("checked above");
    let mirror_index = format!("{}{TAG}_index", input.name);
    graph.initializer.push(int64_tensor(&mirror_index, &(0..width as i64).rev().collect::<Vec<_>>()));
    let mirrored = format!("{}{TAG}_mirrored", input.name);
    let mut head = vec![
        node("Gather", &[&input.name, &mirror_index], &mirrored, vec![attr_int("axis", 3)]),
        node("Concat", &[&input.name, &mirrored], &views, vec![attr_int("axis", 0)]),
    ];
    head.append(&mut graph.node);
    graph.node = head;

    let mut kept = vec![];
    for (name, dim) in outputs {
        let both = &renamed[name];
        let shape = format!("{name}{TAG}_shape");
        let pairs = format!("{name}{TAG}_pairs");
        graph.initializer.push(int64_tensor(&shape, &[2, -1, *dim as i64]));
        graph.node.push(node("Reshape", &[both, &shape], &pairs, vec![]));
        // ReduceMean's axes became an input in opset 18.
        if opset >= 18 {
            let axes = format!("{name}{TAG}_axes");
            graph.initializer.push(int64_tensor(&axes, &[0]));
            graph.node.push(node("ReduceMean", &[&pairs, &axes], name, vec![attr_int("keepdims", 0)]));
        } else {
            graph.node.push(node(
                "ReduceMean",
                &[&pairs],
                name,
                vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
            ));
        }
        kept.push(value_info(name, &[batch, Some(*dim)]));
    }
    graph.output = kept;
    prune(graph);
    Ok(model.encode_to_vec())
}

/// Drops the nodes no output needs, then the initialisers and value infos
/// no remaining node reads (the classifier, once `logits` is gone).
fn prune(graph: &mut pb::GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.iter();
    graph.node.retain(|_| *k.next().unwrap_or(&false));
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
    graph.input.retain(|i| needed.contains(&i.name));
}

/// Declared dims of a value, `None` where symbolic or absent.
fn shape_of(v: &pb::ValueInfoProto) -> Vec<Option<usize>> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value;
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(x)) if x > 0 => Some(x as usize),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        // Not the output's name: the node that made a feature output keeps
        // its own name, and tract refuses two nodes of one name.
        name: if output.contains(TAG) { output.into() } else { format!("{output}{TAG}_mean") },
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Arch, ArchConfig};
    use crate::onnx::{export, ExportOptions, Weights};
    use crate::rng::Rng;
    use gaussedge_backbone::Backbone;

    const SIZE: usize = 16;

    /// The tiny network with random weights (batch norms near identity),
    /// exported with its logits and every block's pooled output.
    fn tiny_onnx() -> (Vec<u8>, Vec<String>) {
        let arch = Arch::new(ArchConfig::tiny(3));
        let mut rng = Rng::new(5);
        let mut w = Weights::default();
        for (name, shape) in arch.tensors() {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    let u = rng.normal() as f32;
                    if name.ends_with("running_var") {
                        1.0 + 0.1 * u.abs()
                    } else if name.contains(".1.weight") && shape.len() == 1 {
                        1.0 + 0.1 * u
                    } else {
                        0.3 * u
                    }
                })
                .collect();
            w.insert(&name, shape, data);
        }
        let blocks: Vec<usize> = (0..arch.blocks.len()).collect();
        let opts = ExportOptions { height: SIZE, width: SIZE, logits: true, block_features: blocks };
        let onnx = export(&arch, &w, &opts).unwrap();
        let mut layers = crate::fit::block_layers(arch.blocks.len());
        layers.push(gaussedge_bundle::DEFAULT_LAYER.to_string());
        (onnx, layers)
    }

    fn mirror(x: &[f32]) -> Vec<f32> {
        x.chunks_exact(SIZE).flat_map(|row| row.iter().rev().copied()).collect()
    }

    fn pre() -> gaussedge_shared::stats::Preprocess {
        let (w, h) = (SIZE as u16, SIZE as u16);
        gaussedge_shared::stats::Preprocess { width: w, height: h, channels: 3, mean: [0.5; 3], std: [0.25; 3] }
    }

    /// The same graph declared at another default-domain opset.
    fn at_opset(onnx: &[u8], version: i64) -> Vec<u8> {
        let mut m = pb::ModelProto::decode(onnx).unwrap();
        m.opset_import.iter_mut().filter(|o| o.domain.is_empty()).for_each(|o| o.version = version);
        m.encode_to_vec()
    }

    #[test]
    fn the_wrapped_graph_gives_the_mean_of_a_frame_and_its_mirror() {
        let (onnx, layers) = tiny_onnx();
        mean_of_views(&onnx, &layers);
    }

    /// Opset 18 moved ReduceMean's axes from an attribute to an input: a
    /// graph exported at 18 or later gets the input form.
    #[test]
    fn the_wrapped_graph_averages_at_opset_18_too() {
        let (onnx, layers) = tiny_onnx();
        let onnx = at_opset(&onnx, 18);
        let dims = vec![(layers[0].clone(), 8)];
        let wrapped = pb::ModelProto::decode(&flip_average(&onnx, &dims, SIZE).unwrap()[..]).unwrap();
        let mean = wrapped.graph.unwrap().node.into_iter().find(|n| n.op_type == "ReduceMean").unwrap();
        assert_eq!((mean.input.len(), mean.attribute.iter().any(|a| a.name == "axes")), (2, false));
        mean_of_views(&onnx, &layers);
    }

    fn mean_of_views(onnx: &[u8], layers: &[String]) {
        let onnx = onnx.to_vec();
        let wrapped = with_views(onnx.clone(), layers, &pre(), Tta::Flip).unwrap();
        assert_eq!(with_views(onnx.clone(), layers, &pre(), Tta::None).unwrap(), onnx, "no views, same bytes");

        let plain = Backbone::load(&onnx, 2, 3, SIZE, SIZE, layers).unwrap();
        let averaged = Backbone::load(&wrapped, 1, 3, SIZE, SIZE, layers).unwrap();
        assert_eq!(plain.layer_dims(), averaged.layer_dims());
        let d = plain.dim();
        let mut rng = Rng::new(9);
        for _ in 0..3 {
            let x: Vec<f32> = (0..3 * SIZE * SIZE).map(|_| rng.normal() as f32).collect();
            let both: Vec<f32> = x.iter().copied().chain(mirror(&x)).collect();
            let f = plain.features(&both).unwrap();
            let want: Vec<f32> = (0..d).map(|i| 0.5 * (f[i] + f[d + i])).collect();
            let got = averaged.features(&x).unwrap();
            let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(scale > 1e-3, "activations died out");
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5 * scale, "max error {err} at scale {scale}");
            // The average cannot tell a frame from its mirror image.
            let flipped = averaged.features(&mirror(&x)).unwrap();
            let err = got.iter().zip(&flipped).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5 * scale, "mirror moved the features by {err}");
        }
        // Batches average per image.
        let batched = Backbone::load(&wrapped, 3, 3, SIZE, SIZE, layers).unwrap();
        let xs: Vec<f32> = (0..3 * 3 * SIZE * SIZE).map(|_| rng.normal() as f32).collect();
        let all = batched.features(&xs).unwrap();
        let per = 3 * SIZE * SIZE;
        for i in 0..3 {
            let one = averaged.features(&xs[i * per..(i + 1) * per]).unwrap();
            let err = one.iter().zip(&all[i * d..(i + 1) * d]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5, "image {i} of a batch: {err}");
        }
    }

    #[test]
    fn the_wrapped_graph_keeps_only_the_averaged_outputs_and_refuses_what_it_cannot_wrap() {
        let (onnx, layers) = tiny_onnx();
        let wrapped = with_views(onnx.clone(), &layers, &pre(), Tta::Flip).unwrap();
        let names = crate::fit::onnx_outputs(&wrapped).unwrap();
        assert_eq!(names, layers, "the logits left; every feature output stayed, in order");
        assert!(wrapped.len() < onnx.len(), "the classifier's weights left with its output");

        let dims = vec![(layers[0].clone(), 8)];
        assert!(matches!(flip_average(&wrapped, &dims, SIZE), Err(ViewsError::AlreadyWrapped(_))));
        assert!(matches!(flip_average(&onnx, &dims, SIZE + 1), Err(ViewsError::Width { declared: 16, asked: 17 })));
        let missing = vec![("nope".to_string(), 8)];
        assert!(matches!(flip_average(&onnx, &missing, SIZE), Err(ViewsError::NoOutput(n)) if n == "nope"));
        assert!(matches!(flip_average(b"not onnx", &dims, SIZE), Err(ViewsError::NotOnnx(_))));
    }
}
