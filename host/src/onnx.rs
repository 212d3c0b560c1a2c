//! The ONNX writer: walks the [`Arch`] description with a checkpoint's
//! weights and emits an ONNX graph with the protobuf types `tract_onnx::pb`
//! exposes. Batch norm is folded into the convolutions; SiLU is written as
//! `x * Sigmoid(x)` (opset 13 has no SiLU), which tract fuses back.
//!
//! No tch here: weights come from a safetensors checkpoint, so a host built
//! without the `train` feature still exports.

use crate::arch::{Arch, BN_EPS};
use prost::Message;
use std::collections::HashMap;
use tract_onnx::pb;

/// Named f32 tensors of a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("checkpoint lacks tensor {0}")]
    Missing(String),
    #[error("tensor {name} has shape {found:?}, the architecture needs {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

impl Weights {
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.to_string(), (shape, data));
    }

    /// Reads a safetensors file of f32 tensors.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ExportError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ExportError::Checkpoint(e.to_string()))?;
        let mut w = Weights::default();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(ExportError::Checkpoint(format!("{name} is {:?}, expected F32", view.dtype())));
            }
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            w.insert(&name, view.shape().to_vec(), data);
        }
        Ok(w)
    }

    /// Serialises to safetensors.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ExportError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, d))| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, d)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ExportError::Checkpoint(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize(views, None).map_err(|e| ExportError::Checkpoint(e.to_string()))
    }

    /// A tensor, checked against the shape the architecture expects.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<&[f32], ExportError> {
        let (shape, data) = self.tensors.get(name).ok_or_else(|| ExportError::Missing(name.to_string()))?;
        if shape != expected {
            return Err(ExportError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape.clone(),
            });
        }
        Ok(data)
    }

    /// Checks every tensor of `arch` is present with the right shape.
    pub fn check(&self, arch: &Arch) -> Result<(), ExportError> {
        for (name, shape) in arch.tensors() {
            self.get(&name, &shape)?;
        }
        Ok(())
    }
}

pub use gaussedge_bundle::{block_index, block_output};

/// What the exported graph computes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    pub height: usize,
    pub width: usize,
    /// Also output `logits` (the base-class FC head).
    pub logits: bool,
    /// Extra outputs `features_<i>`: globally pooled outputs of block `i`,
    /// for Lee et al.'s feature ensemble.
    pub block_features: Vec<usize>,
}

struct Builder<'w> {
    weights: &'w Weights,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    next: usize,
}

pub(crate) fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam("N".into()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

impl Builder<'_> {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    fn init(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.inits.push(pb::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            name: name.into(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>, hint: &str) -> String {
        let out = self.fresh(hint);
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn silu(&mut self, x: &str) -> String {
        let s = self.node("Sigmoid", &[x], vec![], "sigmoid");
        self.node("Mul", &[x, &s], vec![], "silu")
    }

    fn conv(&mut self, x: &str, w: String, b: String, k: usize, stride: usize, groups: usize) -> String {
        let p = ((k - 1) / 2) as i64;
        let attrs = vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[stride as i64, stride as i64]),
            attr_ints("pads", &[p, p, p, p]),
            attr_int("group", groups as i64),
        ];
        self.node("Conv", &[x, &w, &b], attrs, "conv")
    }

    /// Conv (no bias) + batch norm, folded: `w' = w g / sqrt(v + eps)`,
    /// `b' = beta - m g / sqrt(v + eps)`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        x: &str,
        prefix: &str,
        (i, o, k): (usize, usize, usize),
        stride: usize,
        groups: usize,
        act: bool,
    ) -> Result<String, ExportError> {
        let w = self.weights.get(&format!("{prefix}.0.weight"), &[o, i / groups, k, k])?;
        let g = self.weights.get(&format!("{prefix}.1.weight"), &[o])?;
        let beta = self.weights.get(&format!("{prefix}.1.bias"), &[o])?;
        let mean = self.weights.get(&format!("{prefix}.1.running_mean"), &[o])?;
        let var = self.weights.get(&format!("{prefix}.1.running_var"), &[o])?;
        let per = w.len() / o;
        let mut wf = w.to_vec();
        let mut bf = vec![0.0f32; o];
        for c in 0..o {
            let scale = g[c] / (var[c] + BN_EPS as f32).sqrt();
            wf[c * per..(c + 1) * per].iter_mut().for_each(|v| *v *= scale);
            bf[c] = beta[c] - mean[c] * scale;
        }
        let wn = self.init(&format!("{prefix}.weight"), &[o, i / groups, k, k], wf);
        let bn = self.init(&format!("{prefix}.bias"), &[o], bf);
        let y = self.conv(x, wn, bn, k, stride, groups);
        Ok(if act { self.silu(&y) } else { y })
    }

    fn plain_conv(&mut self, x: &str, prefix: &str, i: usize, o: usize) -> Result<String, ExportError> {
        let w = self.weights.get(&format!("{prefix}.weight"), &[o, i, 1, 1])?.to_vec();
        let b = self.weights.get(&format!("{prefix}.bias"), &[o])?.to_vec();
        let wn = self.init(&format!("{prefix}.weight"), &[o, i, 1, 1], w);
        let bn = self.init(&format!("{prefix}.bias"), &[o], b);
        Ok(self.conv(x, wn, bn, 1, 1, 1))
    }

    fn pool_flatten(&mut self, x: &str, name: &str) -> String {
        let p = self.node("GlobalAveragePool", &[x], vec![], "pool");
        let out = name.to_string();
        self.nodes.push(pb::NodeProto {
            input: vec![p],
            output: vec![out.clone()],
            name: out.clone(),
            op_type: "Flatten".into(),
            attribute: vec![attr_int("axis", 1)],
            ..Default::default()
        });
        out
    }
}

/// Writes the network as ONNX. Input `input` is `[N, C, H, W]` (N free);
/// output `features` is `[N, D]`, plus `logits` and `features_<i>` as asked.
pub fn export(arch: &Arch, weights: &Weights, opts: &ExportOptions) -> Result<Vec<u8>, ExportError> {
    weights.check(arch)?;
    let mut g = Builder { weights, nodes: vec![], inits: vec![], next: 0 };
    let c = arch.config.in_channels;
    let mut h = g.conv_bn("input", "features.0", (c, arch.stem, 3), 2, 1, true)?;
    let mut extra_outputs = vec![];
    for (index, b) in arch.blocks.iter().enumerate() {
        let (expand, dw, se, project) = b.layer_names();
        let x = h.clone();
        let mut y = match expand {
            Some(e) => g.conv_bn(&x, &e, (b.input, b.expanded, 1), 1, 1, true)?,
            None => x.clone(),
        };
        y = g.conv_bn(&y, &dw, (b.expanded, b.expanded, b.kernel), b.stride, b.expanded, true)?;
        let s = g.node("GlobalAveragePool", &[&y], vec![], "se_pool");
        let s = g.plain_conv(&s, &format!("{se}.fc1"), b.expanded, b.squeeze)?;
        let s = g.silu(&s);
        let s = g.plain_conv(&s, &format!("{se}.fc2"), b.squeeze, b.expanded)?;
        let s = g.node("Sigmoid", &[&s], vec![], "se_gate");
        y = g.node("Mul", &[&y, &s], vec![], "se_scale");
        y = g.conv_bn(&y, &project, (b.expanded, b.output, 1), 1, 1, false)?;
        if b.residual() {
            y = g.node("Add", &[&y, &x], vec![], "residual");
        }
        if opts.block_features.contains(&index) {
            let name = block_output(index);
            g.pool_flatten(&y, &name);
            extra_outputs.push((name, b.output));
        }
        h = y;
    }
    let last = arch.blocks.last().map(|b| b.output).unwrap_or(arch.stem);
    h = g.conv_bn(&h, &format!("features.{}", arch.head_index), (last, arch.head, 1), 1, 1, true)?;
    let features = g.pool_flatten(&h, gaussedge_bundle::DEFAULT_LAYER);
    let mut outputs = vec![value_info(&features, &[None, Some(arch.head)])];
    for (name, dim) in &extra_outputs {
        outputs.push(value_info(name, &[None, Some(*dim)]));
    }
    if opts.logits {
        let k = arch.config.num_classes;
        let mut w = weights.get("classifier.1.weight", &[k, arch.head])?.to_vec();
        let mut b = weights.get("classifier.1.bias", &[k])?.to_vec();
        if arch.config.cosine_scale > 0.0 {
            crate::arch::fold_cosine_rows(&mut w, k, arch.config.cosine_scale);
            b.iter_mut().for_each(|x| *x = 0.0);
        }
        let wn = g.init("classifier.weight", &[k, arch.head], w);
        let bn = g.init("classifier.bias", &[k], b);
        g.nodes.push(pb::NodeProto {
            input: vec![features.clone(), wn, bn],
            output: vec!["logits".into()],
            name: "logits".into(),
            op_type: "Gemm".into(),
            attribute: vec![attr_int("transB", 1)],
            ..Default::default()
        });
        outputs.push(value_info("logits", &[None, Some(k)]));
    }
    let graph = pb::GraphProto {
        node: g.nodes,
        name: "gaussedge-efficientnet".into(),
        initializer: g.inits,
        input: vec![value_info("input", &[None, Some(c), Some(opts.height), Some(opts.width)])],
        output: outputs,
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "gaussedge".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
