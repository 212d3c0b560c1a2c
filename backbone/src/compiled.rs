//! A loaded backbone's rewritten graph as bytes, so that a device boots
//! without redoing the work of its first load.
//!
//! Three quarters of a load is turning the ONNX into the graph the kernels
//! run: the protobuf parse, tract's type analysis and declutter, the layout
//! pass and the project's rewrites. Their result depends only on the ONNX,
//! the input shape, the layers, this build's code and the CPU's kernel set,
//! so a device writes it to flash after the first load of a bundle
//! ([`Backbone::load_and_compile`]) and reads it back on every later boot
//! ([`Backbone::load_compiled`]): the wiring of a few hundred nodes and
//! tract's own optimiser, which is cheap on an already decluttered graph.
//!
//! The bytes are a cache, never the source of truth. They name the ONNX
//! they came from (its SHA-256), the input shape, the layers and the build
//! and CPU that wrote them ([`fingerprint`]), and end in a CRC-32 over all
//! of it; anything that does not match is a typed [`CompiledError`], and
//! the caller loads the ONNX again (and may write fresh bytes). The op
//! set is the one a rewritten EfficientNet holds, the project's ops and
//! the handful of tract's around them, and tract's `Conv` for foreign
//! backbones the rewrites leave alone. A graph with any other op is not
//! written, and loads from its ONNX every time.
//!
//! Where the project's kernels do not serve (aarch64 at one thread,
//! [`crate::kernels::serve`]), tract's layout
//! pass lowers each depthwise convolution to its own `DepthWise` op, a
//! type private to tract. The bytes then hold the channel-last `Conv` it
//! was lowered from ([`lowered_depthwise`] records them before the pass),
//! and reading asks tract to lower it again (`Conv::wire_as_depth_wise`,
//! public); the writer checks that this gives the very op the graph holds
//! before it stores anything.
//!
//! Layout, all integers little-endian: the magic `GEBBCMP1`, the
//! fingerprint, the source SHA-256, the input shape (4 x u64), the layers,
//! the nodes in evaluation order (name, op tag, inputs as (node, slot),
//! the op's fields), the outputs as (node, slot), then the CRC-32
//! (ISO-HDLC) of everything before it.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::array::{Gather, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_hir::internal::{bail, ensure, format_err, DimLike};

use crate::ops::depthwise::DepthwiseNhwc;
use crate::ops::im2col::Im2colConv;
use crate::ops::matvec::MatVec;
use crate::ops::pointwise::{Input, Pointwise, Strides};

const MAGIC: &[u8; 8] = b"GEBBCMP1";
// Slice-by-16: the bytes are the whole network (15 MB for b0), and the
// one-table CRC took 30 ms of a 43 ms boot.
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// Why compiled bytes were not used. Every case means "load the ONNX":
/// the bytes are a cache.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompiledError {
    #[error("not a compiled backbone (bad magic)")]
    Magic,
    #[error("compiled backbone is truncated or corrupt (CRC-32 mismatch)")]
    Corrupt,
    #[error("compiled backbone ends early: {0}")]
    Truncated(&'static str),
    #[error("compiled backbone was written by another build or CPU ({found}; this is {expected})")]
    Build { expected: String, found: String },
    #[error("compiled backbone is of another ONNX (SHA-256 {found}, the bundle's is {expected})")]
    Source { expected: String, found: String },
    #[error("compiled backbone is for input {found:?} and layers {found_layers:?}, not {expected:?} and {expected_layers:?}")]
    Shape { expected: [usize; 4], found: [usize; 4], expected_layers: Vec<String>, found_layers: Vec<String> },
    #[error("compiled backbone holds an unknown {0}")]
    Unknown(String),
    #[error("compiled backbone does not wire: {0}")]
    Wire(String),
}

/// The build and CPU the compiled bytes belong to: this crate's sources
/// and pinned tract (hashed by the build script, so any change to an op's
/// fields or loops makes old bytes stale), the kernel set the load picks
/// ([`crate::kernels::set_name`]: tract's own, or the widest vector width
/// the CPU has, for which the rewrites pick register tiles and pack
/// weights), and which rewrites the environment switched off.
pub fn fingerprint() -> String {
    let switches: Vec<&str> = crate::SWITCHES.into_iter().filter(|s| crate::switched_off(s)).collect();
    format!(
        "gaussedge-backbone {} source {} {} {}{}",
        env!("CARGO_PKG_VERSION"),
        env!("GAUSSEDGE_BACKBONE_SOURCE"),
        std::env::consts::ARCH,
        crate::kernels::set_name(),
        if switches.is_empty() { String::new() } else { format!(" off {}", switches.join(",")) }
    )
}

/// What compiled bytes are checked against before anything is built.
pub(crate) struct Key<'a, S> {
    pub source: [u8; 32],
    pub input_shape: [usize; 4],
    pub layers: &'a [S],
}

/// The rewritten graph as bytes, or `None` when it holds an op the format
/// does not know (the name of the first such op, for the caller's log).
///
/// `lowered` names the convolutions tract's layout pass lowered to its
/// private `DepthWise` op ([`lowered_depthwise`]); empty where the
/// project's depthwise op replaced them.
pub(crate) fn write<S: AsRef<str>>(
    model: &TypedModel,
    key: &Key<S>,
    lowered: &[(String, Conv)],
) -> Result<Vec<u8>, String> {
    let mut w = Writer(Vec::with_capacity(16 << 20));
    w.0.extend_from_slice(MAGIC);
    w.str(&fingerprint());
    w.0.extend_from_slice(&key.source);
    for d in key.input_shape {
        w.u64(d as u64);
    }
    w.u32(key.layers.len() as u32);
    for l in key.layers {
        w.str(l.as_ref());
    }
    let order = model.eval_order().map_err(|e| format!("{e:#}"))?;
    let mut index = vec![u32::MAX; model.nodes.len()];
    w.u32(order.len() as u32);
    for (i, &id) in order.iter().enumerate() {
        index[id] = i as u32;
        let node = model.node(id);
        w.str(&node.name);
        w.u32(node.inputs.len() as u32);
        for input in &node.inputs {
            w.u32(index[input.node]);
            w.u32(input.slot as u32);
        }
        if is_tracts_depthwise(node.op.as_ref()) {
            let conv = lowered
                .iter()
                .find(|(name, _)| *name == node.name)
                .map(|(_, conv)| conv)
                .ok_or_else(|| format!("tract's DepthWiseConv {} of no recorded convolution", node.name))?;
            let x = model.outlet_fact(node.inputs[0]).map_err(|e| format!("{e:#}"))?;
            let again = tracts_depthwise(conv, x).map_err(|e| format!("{e:#}"))?;
            if format!("{again:?}") != format!("{:?}", node.op) {
                return Err(format!(
                    "tract's DepthWiseConv {}, which its convolution does not lower to again",
                    node.name
                ));
            }
            w.u8(TRACT_DEPTHWISE);
            w.conv(conv)?;
        } else {
            w.op(node.op.as_ref())?;
        }
    }
    w.u32(model.outputs.len() as u32);
    for o in &model.outputs {
        w.u32(index[o.node]);
        w.u32(o.slot as u32);
    }
    let crc = CRC.checksum(&w.0);
    w.u32(crc);
    Ok(w.0)
}

/// The graph `bytes` hold, wired again, after checking them against `key`.
pub(crate) fn read<S: AsRef<str>>(bytes: &[u8], key: &Key<S>) -> Result<TypedModel, CompiledError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(CompiledError::Magic);
    }
    let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4).max(MAGIC.len()));
    if crc.len() != 4 || CRC.checksum(body) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
        return Err(CompiledError::Corrupt);
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let found = r.str("fingerprint")?;
    let expected = fingerprint();
    if found != expected {
        return Err(CompiledError::Build { expected, found });
    }
    let source: [u8; 32] = r.take(32, "source")?.try_into().map_err(|_| CompiledError::Truncated("source"))?;
    if source != key.source {
        return Err(CompiledError::Source { expected: hex(&key.source), found: hex(&source) });
    }
    let mut input_shape = [0usize; 4];
    for d in &mut input_shape {
        *d = r.usize("input shape")?;
    }
    let n = r.count("layers")?;
    let layers = (0..n).map(|_| r.str("layer")).collect::<Result<Vec<_>, _>>()?;
    let expected_layers: Vec<String> = key.layers.iter().map(|l| l.as_ref().to_string()).collect();
    if input_shape != key.input_shape || layers != expected_layers {
        return Err(CompiledError::Shape {
            expected: key.input_shape,
            found: input_shape,
            expected_layers,
            found_layers: layers,
        });
    }
    let wire = |e: TractError| CompiledError::Wire(format!("{e:#}"));
    let mut model = TypedModel::default();
    let mut outlets: Vec<TVec<OutletId>> = vec![];
    let n = r.count("nodes")?;
    for _ in 0..n {
        let name = r.str("node name")?;
        let k = r.count("inputs")?;
        let mut inputs = tvec![];
        for _ in 0..k {
            let (node, slot) = (r.u32("input")? as usize, r.u32("input")? as usize);
            let outlet = outlets.get(node).and_then(|o| o.get(slot)).ok_or_else(|| {
                CompiledError::Wire(format!("node {name} reads ({node}, {slot}), which is not written before it"))
            })?;
            inputs.push(*outlet);
        }
        let op = match r.op()? {
            Decoded::Op(op) => op,
            Decoded::TractsDepthwise(conv) => {
                let x = inputs.first().map(|i| model.outlet_fact(*i)).transpose().map_err(wire)?;
                let x = x.ok_or_else(|| CompiledError::Wire(format!("depthwise {name} has no input")))?;
                tracts_depthwise(&conv, x).map_err(wire)?
            }
        };
        let wired = if let Some(source) = op.downcast_ref::<TypedSource>() {
            // The key's shape was checked above; a source of another shape
            // would size every buffer from the file instead.
            if source.fact.shape.as_concrete() != Some(&key.input_shape[..]) {
                return Err(CompiledError::Wire(format!("source {name} is not shaped {:?}", key.input_shape)));
            }
            tvec![model.add_source(&name, source.fact.clone()).map_err(wire)?]
        } else {
            if let Some(d) = op.downcast_ref::<DepthwiseNhwc>() {
                let input = inputs.first().map(|i| model.outlet_fact(*i)).transpose().map_err(wire)?;
                let plane = input.and_then(|f| f.shape.as_concrete()).map(|s| [s[s.len() - 3], s[s.len() - 2]]);
                depthwise_fits(d, plane).map_err(CompiledError::Wire)?;
            }
            model.wire_node(&name, op, &inputs).map_err(wire)?
        };
        outlets.push(wired);
    }
    let n = r.count("outputs")?;
    let mut outputs = vec![];
    for _ in 0..n {
        let (node, slot) = (r.u32("output")? as usize, r.u32("output")? as usize);
        let outlet = outlets
            .get(node)
            .and_then(|o| o.get(slot))
            .ok_or_else(|| CompiledError::Wire(format!("output ({node}, {slot}) is not a wired outlet")))?;
        outputs.push(*outlet);
    }
    if !r.0.is_empty() {
        return Err(CompiledError::Wire(format!("{} bytes after the outputs", r.0.len())));
    }
    model.select_output_outlets(&outputs).map_err(wire)?;
    Ok(model)
}

/// Whether a depthwise op's geometry is one the rewrite could have made for
/// an input plane of `plane` (height, width): its kernel loop keeps the
/// taps in a fixed array, and its output size sets what a frame allocates.
fn depthwise_fits(d: &DepthwiseNhwc, plane: Option<[usize; 2]>) -> Result<(), String> {
    let Some(plane) = plane else { return Err("DepthwiseNhwc on an input of unknown shape".into()) };
    let taps = d.kernel[0] * d.kernel[1];
    let fits = (1..=crate::ops::depthwise::MAX_TAPS).contains(&taps)
        && (0..2).all(|a| {
            d.stride[a] > 0
                && d.pad_before[a] < d.kernel[a]
                && d.output[a] > 0
                && (d.output[a] - 1) * d.stride[a] < plane[a] + 2 * d.pad_before[a]
        });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "DepthwiseNhwc kernel {:?} stride {:?} pad {:?} output {:?} on a {plane:?} plane",
            d.kernel, d.stride, d.pad_before, d.output
        ))
    }
}

/// The depthwise convolutions tract's `conv_nhwc` pass is about to lower to
/// its own `DepthWise` op, as the channel-last `Conv` each becomes, by
/// node name (the lowered op keeps it): the same test the pass makes.
pub(crate) fn lowered_depthwise(model: &TypedModel) -> Vec<(String, Conv)> {
    let mut lowered = vec![];
    for node in &model.nodes {
        let Some(conv) = node.op.downcast_ref::<Conv>() else { continue };
        let format = match conv.pool_spec.data_format {
            DataFormat::NCHW => DataFormat::NHWC,
            DataFormat::CHW => DataFormat::HWC,
            _ => continue,
        };
        let concrete = model.outlet_fact(node.inputs[0]).is_ok_and(|f| f.shape.as_concrete().is_some());
        let depthwise = conv.q_params.is_none()
            && node.inputs.len() == 3
            && conv.group != 1
            && conv.group == conv.input_channels()
            && conv.group == conv.output_channels()
            && concrete;
        if depthwise {
            let pool_spec = PoolSpec { data_format: format, ..conv.pool_spec.clone() };
            lowered.push((node.name.clone(), Conv { pool_spec, ..conv.clone() }));
        }
    }
    lowered
}

/// Whether `op` is tract's `DepthWise`, which is not a public type: by the
/// name it reports, and the `Debug` of its struct.
fn is_tracts_depthwise(op: &dyn TypedOp) -> bool {
    op.name() == "DepthWiseConv" && format!("{op:?}").starts_with("DepthWise {")
}

/// tract's `DepthWise` op for the channel-last depthwise `conv` on input
/// `x`, made as tract's layout pass makes it, in a scratch graph whose
/// kernel and bias are zeros: the op holds only the geometry.
///
/// What it accepts is what the layout pass lowers, on geometry a frame can
/// hold: bytes that ask for more are refused here rather than by a panic
/// inside tract.
fn tracts_depthwise(conv: &Conv, x: &TypedFact) -> TractResult<Box<dyn TypedOp>> {
    let p = &conv.pool_spec;
    let shape = x.shape.as_concrete().ok_or_else(|| format_err!("depthwise input of unknown shape"))?;
    let spatial = p.kernel_shape.len();
    let plane = match p.data_format {
        DataFormat::NHWC if shape.len() == spatial + 2 => &shape[1..=spatial],
        DataFormat::HWC if shape.len() == spatial + 1 => &shape[..spatial],
        _ => bail!("depthwise {:?} on an input shaped {shape:?}", p.data_format),
    };
    let channels = shape[shape.len() - 1];
    ensure!(
        conv.q_params.is_none()
            && [conv.group, p.input_channels, p.output_channels].iter().all(|c| *c == channels && *c > 0),
        "depthwise of {} groups, {} -> {} channels on {channels}",
        conv.group,
        p.input_channels,
        p.output_channels
    );
    let (before, after) = match &p.padding {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => (b.to_vec(), a.to_vec()),
        PaddingSpec::Valid => (vec![0; spatial], vec![0; spatial]),
        // Padded to keep ceil(input / stride) outputs, whatever the kernel.
        PaddingSpec::SameUpper | PaddingSpec::SameLower => (vec![usize::MAX / 4; spatial], vec![0; spatial]),
    };
    let stride = |v: &Option<TVec<usize>>, a: usize| v.as_ref().map_or(Some(1), |v| v.get(a).copied());
    let fits = before.len() == spatial
        && after.len() == spatial
        && p.kernel_shape.iter().product::<usize>() <= crate::ops::depthwise::MAX_TAPS
        && (0..spatial).all(|a| {
            let (k, d, s) = (p.kernel_shape[a], stride(&p.dilations, a), stride(&p.strides, a));
            let (Some(d), Some(s)) = (d, s) else { return false };
            let extent = (k.max(1) - 1) * d + 1;
            // Explicit padding past the kernel would only pad zeros out.
            let padded = matches!(p.padding, PaddingSpec::SameUpper | PaddingSpec::SameLower)
                || (before[a] < extent && after[a] < extent);
            (1..=8).contains(&d)
                && (1..=8).contains(&s)
                && k > 0
                && padded
                && extent <= plane[a].saturating_add(before[a]).saturating_add(after[a])
        });
    ensure!(fits, "depthwise kernel {:?} ({:?}) on a {plane:?} plane", p.kernel_shape, p.padding);
    let (o, i) = (p.output_channels, p.input_channels / conv.group.max(1));
    let kernel_shape: Vec<usize> = match conv.kernel_fmt {
        KernelFormat::OIHW => [o, i].into_iter().chain(p.kernel_shape.iter().copied()).collect(),
        KernelFormat::HWIO => p.kernel_shape.iter().copied().chain([i, o]).collect(),
        KernelFormat::OHWI => std::iter::once(o).chain(p.kernel_shape.iter().copied()).chain([i]).collect(),
    };
    let mut scratch = TypedModel::default();
    let input = scratch.add_source("x", x.clone())?;
    let kernel = scratch.add_const("kernel", Tensor::zero::<f32>(&kernel_shape)?)?;
    let bias = scratch.add_const("bias", Tensor::zero::<f32>(&[o])?)?;
    let y = conv.wire_as_depth_wise(&mut scratch, "dw", &[input, kernel, bias])?;
    let op = scratch.node(y.node).op.clone();
    ensure!(is_tracts_depthwise(op.as_ref()), "tract lowered a depthwise Conv to {}", op.name());
    Ok(op)
}

/// An einsum's axes from their text (`"abc,cd->abd"`), refusing what
/// tract's parser would panic on or could not mean: only axis letters,
/// commas and one arrow.
fn axes_mapping(text: &str) -> Result<AxesMapping, CompiledError> {
    let (inputs, outputs) = text.split_once("->").unwrap_or((text, ""));
    let letters = |s: &str| s.chars().all(|c| c.is_ascii_alphabetic() || c == ',');
    if text.len() > 256 || !letters(inputs) || !letters(outputs) {
        return Err(CompiledError::Unknown(format!("einsum axes {text:?}")));
    }
    text.parse().map_err(|e: TractError| CompiledError::Wire(format!("einsum axes {text:?}: {e:#}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// Op tags. Appending is fine (old bytes stay readable by a newer build only
// through the fingerprint, which changes with any source change anyway).
const SOURCE: u8 = 1;
const CONST: u8 = 2;
const POINTWISE: u8 = 3;
const DEPTHWISE: u8 = 4;
const IM2COL: u8 = 5;
const MATVEC: u8 = 6;
const ELEMENT_WISE: u8 = 7;
const BINARY: u8 = 8;
const REDUCE: u8 = 9;
const AXIS: u8 = 10;
const CONCAT: u8 = 11;
const GATHER: u8 = 12;
const CONV: u8 = 13;
/// tract's `DepthWise`, stored as the channel-last `Conv` it lowers.
const TRACT_DEPTHWISE: u8 = 14;
const EINSUM: u8 = 15;

/// The element-wise and binary ops the format knows, by tract's name.
const ELEMENT_WISE_OPS: [&str; 2] = ["Sigmoid", "Silu"];
const BINARY_OPS: [&str; 6] = ["Add", "Sub", "Mul", "Div", "Max", "Min"];
const REDUCERS: [Reducer; 5] = [Reducer::Sum, Reducer::Max, Reducer::Min, Reducer::Prod, Reducer::MeanOfSquares];
const DATA_FORMATS: [DataFormat; 4] = [DataFormat::NCHW, DataFormat::NHWC, DataFormat::CHW, DataFormat::HWC];
const KERNEL_FORMATS: [KernelFormat; 3] = [KernelFormat::OIHW, KernelFormat::HWIO, KernelFormat::OHWI];
const DATUMS: [DatumType; 5] = [DatumType::F32, DatumType::I64, DatumType::I32, DatumType::U8, DatumType::Bool];

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn usize(&mut self, v: usize) {
        self.u64(v as u64);
    }
    fn usizes(&mut self, v: &[usize]) {
        self.u32(v.len() as u32);
        for &x in v {
            self.usize(x);
        }
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn tensor(&mut self, t: &Tensor) -> Result<(), String> {
        let dt =
            DATUMS.iter().position(|d| *d == t.datum_type()).ok_or_else(|| format!("{:?} tensor", t.datum_type()))?;
        if !t.is_plain_ram() {
            return Err("tensor not in plain memory".into());
        }
        self.u8(dt as u8);
        self.usizes(t.shape());
        let bytes = t.as_bytes();
        self.u64(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn pointwise(&mut self, p: &Pointwise) -> Result<(), String> {
        for v in [p.cin, p.cout, p.batch, p.pixels, p.tile, p.width] {
            self.usize(v);
        }
        self.tensor(&p.weights)?;
        self.tensor(&p.bias)?;
        self.u8(p.silu as u8);
        self.u8(p.residual as u8);
        self.usize(p.x.batch);
        self.usizes(&p.x.pixels);
        self.usizes(&p.x.channels);
        for v in [p.y.batch, p.y.pixel, p.y.channel] {
            self.usize(v);
        }
        self.usizes(&p.input_shape);
        self.usizes(&p.output_shape);
        Ok(())
    }

    /// A float `Conv`'s fields (its weights and bias are its inputs).
    fn conv(&mut self, c: &Conv) -> Result<(), String> {
        if c.q_params.is_some() {
            return Err("a quantised Conv".into());
        }
        let p = &c.pool_spec;
        let format = DATA_FORMATS.iter().position(|f| *f == p.data_format).ok_or("a Conv's data format")?;
        let kernel = KERNEL_FORMATS.iter().position(|f| *f == c.kernel_fmt).ok_or("a Conv's kernel format")?;
        self.u8(format as u8);
        self.u8(kernel as u8);
        self.usize(c.group);
        self.usizes(&p.kernel_shape);
        match &p.padding {
            PaddingSpec::Explicit(before, after) => {
                self.u8(0);
                self.usizes(before);
                self.usizes(after);
            }
            PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
                self.u8(1);
                self.usizes(before);
                self.usizes(after);
                self.u8(*ceil as u8);
            }
            PaddingSpec::Valid => self.u8(2),
            PaddingSpec::SameUpper => self.u8(3),
            PaddingSpec::SameLower => self.u8(4),
        }
        for v in [&p.dilations, &p.strides] {
            self.u8(v.is_some() as u8);
            self.usizes(v.as_deref().unwrap_or_default());
        }
        self.usize(p.input_channels);
        self.usize(p.output_channels);
        Ok(())
    }

    fn op(&mut self, op: &dyn TypedOp) -> Result<(), String> {
        if let Some(s) = op.downcast_ref::<TypedSource>() {
            let shape = s.fact.shape.as_concrete().ok_or("a source of symbolic shape")?;
            if s.fact.datum_type != f32::datum_type() {
                return Err(format!("a {:?} source", s.fact.datum_type));
            }
            self.u8(SOURCE);
            self.usizes(shape);
        } else if let Some(c) = op.downcast_ref::<Const>() {
            if c.exotic_fact().is_some() {
                return Err("a constant with an exotic fact".into());
            }
            self.u8(CONST);
            self.tensor(c.val())?;
        } else if let Some(p) = op.downcast_ref::<Pointwise>() {
            self.u8(POINTWISE);
            self.pointwise(p)?;
        } else if let Some(d) = op.downcast_ref::<DepthwiseNhwc>() {
            self.u8(DEPTHWISE);
            for v in [d.kernel, d.stride, d.pad_before, d.output].into_iter().flatten() {
                self.usize(v);
            }
            self.tensor(&d.weights)?;
            self.tensor(&d.bias)?;
            self.u8(d.silu as u8);
        } else if let Some(c) = op.downcast_ref::<Im2colConv>() {
            self.u8(IM2COL);
            for v in c.input.into_iter().chain(c.pad) {
                self.usize(v);
            }
            self.pointwise(&c.rows)?;
        } else if let Some(m) = op.downcast_ref::<MatVec>() {
            self.u8(MATVEC);
            self.tensor(&m.weights)?;
            self.u8(m.by_output as u8);
            self.usizes(&m.output);
        } else if let Some(e) = op.downcast_ref::<ElementWiseOp>() {
            let name = e.0.name();
            let i = ELEMENT_WISE_OPS.iter().position(|n| *n == name).filter(|_| e.1.is_none());
            self.u8(ELEMENT_WISE);
            self.u8(i.ok_or_else(|| format!("element-wise {name}"))? as u8);
        } else if let Some(b) = op.downcast_ref::<TypedBinOp>() {
            let name = b.0.name();
            let i = BINARY_OPS.iter().position(|n| *n == name).filter(|_| b.1.is_none());
            self.u8(BINARY);
            self.u8(i.ok_or_else(|| format!("binary {name}"))? as u8);
        } else if let Some(red) = op.downcast_ref::<Reduce>() {
            let i = REDUCERS.iter().position(|r| *r == red.reducer).ok_or_else(|| format!("{:?}", red.reducer))?;
            self.u8(REDUCE);
            self.u8(i as u8);
            self.usizes(&red.axes);
        } else if let Some(a) = op.downcast_ref::<AxisOp>() {
            self.u8(AXIS);
            match a {
                AxisOp::Add(x) => {
                    self.u8(0);
                    self.usize(*x);
                }
                AxisOp::Rm(x) => {
                    self.u8(1);
                    self.usize(*x);
                }
                AxisOp::Move(x, y) => {
                    self.u8(2);
                    self.usize(*x);
                    self.usize(*y);
                }
                AxisOp::Reshape(at, from, to) => {
                    let concrete = |dims: &TVec<TDim>| -> Result<Vec<usize>, String> {
                        dims.iter().map(|d| d.to_usize().map_err(|_| format!("reshape over {d}"))).collect()
                    };
                    self.u8(3);
                    self.usize(*at);
                    self.usizes(&concrete(from)?);
                    self.usizes(&concrete(to)?);
                }
            }
        } else if let Some(c) = op.downcast_ref::<TypedConcat>() {
            self.u8(CONCAT);
            self.usize(c.axis);
        } else if let Some(c) = op.downcast_ref::<Conv>() {
            // tract's own convolution: what runs where the project's
            // kernels do not serve (aarch64 at one thread), its weights
            // and bias constant inputs.
            self.u8(CONV);
            self.conv(c)?;
        } else if let Some(e) = op.downcast_ref::<EinSum>() {
            // What tract's declutter makes of the 1x1 convolutions the
            // project's kernels do not take (aarch64 at one thread).
            if e.q_params.is_some() {
                return Err("a quantised EinSum".into());
            }
            let dt = DATUMS.iter().position(|d| *d == e.operating_dt).ok_or("an EinSum's datum type")?;
            let axes = e.axes.to_string();
            if axes_mapping(&axes).ok().as_ref() != Some(&e.axes) {
                return Err(format!("an EinSum whose axes ({axes}) do not read back"));
            }
            self.u8(EINSUM);
            self.u8(dt as u8);
            self.str(&axes);
        } else if let Some(g) = op.downcast_ref::<Gather>() {
            if g.output_type.is_some() {
                return Err("a Gather with an output type".into());
            }
            self.u8(GATHER);
            self.usize(g.axis);
        } else {
            return Err(op.name().to_string());
        }
        Ok(())
    }
}

/// A node's op as read: ready, or tract's depthwise op to make again from
/// its convolution once the node's input is wired.
enum Decoded {
    Op(Box<dyn TypedOp>),
    TractsDepthwise(Box<Conv>),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CompiledError> {
        if self.0.len() < n {
            return Err(CompiledError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CompiledError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CompiledError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().map_err(|_| CompiledError::Truncated(what))?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CompiledError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().map_err(|_| CompiledError::Truncated(what))?))
    }
    fn usize(&mut self, what: &'static str) -> Result<usize, CompiledError> {
        usize::try_from(self.u64(what)?).map_err(|_| CompiledError::Truncated(what))
    }
    /// A count of things that follow, each at least one byte: larger than
    /// what is left means corrupt, before anything is allocated for it.
    fn count(&mut self, what: &'static str) -> Result<usize, CompiledError> {
        let n = self.u32(what)? as usize;
        if n > self.0.len() {
            return Err(CompiledError::Truncated(what));
        }
        Ok(n)
    }
    fn usizes(&mut self, what: &'static str) -> Result<Vec<usize>, CompiledError> {
        let n = self.count(what)?;
        (0..n).map(|_| self.usize(what)).collect()
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, CompiledError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(CompiledError::Unknown(format!("flag {b} for {what}"))),
        }
    }
    fn str(&mut self, what: &'static str) -> Result<String, CompiledError> {
        let n = self.count(what)?;
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| CompiledError::Unknown(format!("{what} text")))
    }
    fn pair(&mut self, what: &'static str) -> Result<[usize; 2], CompiledError> {
        Ok([self.usize(what)?, self.usize(what)?])
    }

    fn tensor(&mut self, what: &'static str) -> Result<Arc<Tensor>, CompiledError> {
        let dt = self.u8(what)? as usize;
        let dt = *DATUMS.get(dt).ok_or_else(|| CompiledError::Unknown(format!("datum type {dt}")))?;
        let shape = self.usizes(what)?;
        let len = self.usize(what)?;
        let bytes = self.take(len, what)?;
        // Safety: `from_raw_dt` checks the length against the shape before
        // it copies, and every bit pattern is a valid value of these types
        // but `Bool`, which it reads as bytes and tract only compares.
        let t = unsafe { Tensor::from_raw_dt(dt, &shape, bytes) }.map_err(|e| CompiledError::Wire(format!("{e:#}")))?;
        Ok(Arc::new(t))
    }

    fn pointwise(&mut self) -> Result<Pointwise, CompiledError> {
        let w = "Pointwise";
        let [cin, cout] = self.pair(w)?;
        let [batch, pixels] = self.pair(w)?;
        let [tile, width] = self.pair(w)?;
        let (weights, bias) = (self.tensor(w)?, self.tensor(w)?);
        let (silu, residual) = (self.bool(w)?, self.bool(w)?);
        let x = Input { batch: self.usize(w)?, pixels: self.usizes(w)?, channels: self.usizes(w)? };
        let y = Strides { batch: self.usize(w)?, pixel: self.usize(w)?, channel: self.usize(w)? };
        let (input_shape, output_shape) = (self.usizes(w)?.into(), self.usizes(w)?.into());
        let blocks = cout.div_ceil(width.max(1));
        // The kernels index the packed weights by these: a pointwise op
        // whose tensors do not have the sizes its fields say is refused.
        let fits = matches!((tile, width), (6, 16) | (4, 24) | (6, 32) | (4, 48))
            && weights.datum_type() == DatumType::F32
            && bias.datum_type() == DatumType::F32
            && weights.shape() == [blocks, cin, width]
            && bias.shape() == [blocks * width];
        if !fits {
            return Err(CompiledError::Wire(format!(
                "Pointwise {cin} -> {cout} with {tile}x{width} tiles and weights {:?}",
                weights.shape()
            )));
        }
        Ok(Pointwise {
            cin,
            cout,
            batch,
            pixels,
            tile,
            width,
            weights,
            bias,
            silu,
            residual,
            x,
            y,
            input_shape,
            output_shape,
        })
    }

    /// What [`Writer::conv`] wrote.
    fn conv(&mut self) -> Result<Conv, CompiledError> {
        let unknown = |what: &str, i: u8| CompiledError::Unknown(format!("{what} {i}"));
        let w = "Conv";
        let f = self.u8(w)?;
        let data_format = *DATA_FORMATS.get(f as usize).ok_or_else(|| unknown("data format", f))?;
        let k = self.u8(w)?;
        let kernel_fmt = *KERNEL_FORMATS.get(k as usize).ok_or_else(|| unknown("kernel format", k))?;
        let group = self.usize(w)?;
        let kernel_shape = self.usizes(w)?.into();
        let padding = match self.u8(w)? {
            0 => PaddingSpec::Explicit(self.usizes(w)?.into(), self.usizes(w)?.into()),
            1 => PaddingSpec::ExplicitOnnxPool(self.usizes(w)?.into(), self.usizes(w)?.into(), self.bool(w)?),
            2 => PaddingSpec::Valid,
            3 => PaddingSpec::SameUpper,
            4 => PaddingSpec::SameLower,
            i => return Err(unknown("padding", i)),
        };
        let mut optional = || -> Result<Option<TVec<usize>>, CompiledError> {
            let some = self.bool(w)?;
            let v = self.usizes(w)?;
            Ok(some.then(|| v.into()))
        };
        let (dilations, strides) = (optional()?, optional()?);
        let (input_channels, output_channels) = (self.usize(w)?, self.usize(w)?);
        let pool_spec =
            PoolSpec { data_format, kernel_shape, padding, dilations, strides, input_channels, output_channels };
        Ok(Conv { pool_spec, kernel_fmt, group, q_params: None })
    }

    fn op(&mut self) -> Result<Decoded, CompiledError> {
        let unknown = |what: &str, i: u8| CompiledError::Unknown(format!("{what} {i}"));
        let tag = self.u8("op")?;
        Ok(Decoded::Op(match tag {
            SOURCE => Box::new(TypedSource::new(f32::fact(self.usizes("source")?))),
            CONST => Box::new(Const::new(self.tensor("Const")?).map_err(|e| CompiledError::Wire(format!("{e:#}")))?),
            POINTWISE => Box::new(self.pointwise()?),
            DEPTHWISE => {
                let w = "DepthwiseNhwc";
                let (kernel, stride, pad_before, output) = (self.pair(w)?, self.pair(w)?, self.pair(w)?, self.pair(w)?);
                let (weights, bias) = (self.tensor(w)?, self.tensor(w)?);
                let c = bias.len();
                let fits = weights.datum_type() == DatumType::F32
                    && bias.datum_type() == DatumType::F32
                    && bias.rank() == 1
                    && weights.shape() == [kernel[0] * kernel[1], c];
                if !fits {
                    return Err(CompiledError::Wire(format!(
                        "{w} kernel {kernel:?} with weights {:?}",
                        weights.shape()
                    )));
                }
                let silu = match self.u8(w)? {
                    0 => false,
                    1 => true,
                    f => return Err(CompiledError::Wire(format!("{w} SiLU flag {f}"))),
                };
                Box::new(DepthwiseNhwc { kernel, stride, pad_before, output, weights, bias, silu })
            }
            IM2COL => {
                let w = "Im2colConv";
                let input = [self.usize(w)?, self.usize(w)?, self.usize(w)?, self.usize(w)?];
                let pad = [self.usize(w)?, self.usize(w)?, self.usize(w)?, self.usize(w)?];
                Box::new(Im2colConv { input, pad, rows: Arc::new(self.pointwise()?) })
            }
            MATVEC => {
                let weights = self.tensor("MatVec")?;
                let by_output = self.bool("MatVec")?;
                let output = self.usizes("MatVec")?.into();
                if weights.datum_type() != DatumType::F32 || weights.rank() != 2 {
                    return Err(CompiledError::Wire(format!("MatVec weights {:?}", weights.shape())));
                }
                Box::new(MatVec { weights, by_output, output })
            }
            ELEMENT_WISE => match self.u8("element-wise")? {
                0 => Box::new(tract_onnx::tract_core::ops::nn::sigmoid()),
                1 => Box::new(tract_onnx::tract_core::ops::nn::silu::silu()),
                i => return Err(unknown("element-wise op", i)),
            },
            BINARY => {
                use tract_onnx::tract_core::ops::math;
                match self.u8("binary")? {
                    0 => Box::new(math::add()),
                    1 => Box::new(math::sub()),
                    2 => Box::new(math::mul()),
                    3 => Box::new(math::div()),
                    4 => Box::new(math::max()),
                    5 => Box::new(math::min()),
                    i => return Err(unknown("binary op", i)),
                }
            }
            REDUCE => {
                let i = self.u8("Reduce")?;
                let reducer = REDUCERS.get(i as usize).cloned().ok_or_else(|| unknown("reducer", i))?;
                Box::new(Reduce { axes: self.usizes("Reduce")?.into(), reducer })
            }
            AXIS => Box::new(match self.u8("axis op")? {
                0 => AxisOp::Add(self.usize("axis op")?),
                1 => AxisOp::Rm(self.usize("axis op")?),
                2 => AxisOp::Move(self.usize("axis op")?, self.usize("axis op")?),
                3 => {
                    let at = self.usize("reshape")?;
                    let dims = |v: Vec<usize>| v.into_iter().map(|d| d.to_dim()).collect();
                    AxisOp::Reshape(at, dims(self.usizes("reshape")?), dims(self.usizes("reshape")?))
                }
                i => return Err(unknown("axis op", i)),
            }),
            CONCAT => Box::new(TypedConcat { axis: self.usize("Concat")? }),
            GATHER => Box::new(Gather::new(self.usize("Gather")?)),
            CONV => Box::new(self.conv()?),
            EINSUM => {
                let dt = self.u8("EinSum")?;
                let dt = *DATUMS.get(dt as usize).ok_or_else(|| unknown("datum type", dt))?;
                let axes = axes_mapping(&self.str("EinSum")?)?;
                Box::new(EinSum::new(axes, dt))
            }
            TRACT_DEPTHWISE => return Ok(Decoded::TractsDepthwise(Box::new(self.conv()?))),
            _ => return Err(unknown("op tag", tag)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    fn key() -> Key<'static, &'static str> {
        Key { source: [7; 32], input_shape: [1, 2, 3, 4], layers: &["out"] }
    }

    /// Every tract op the format stores, on a small graph: read back, it
    /// computes what it did.
    #[test]
    fn tracts_ops_round_trip() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 3, 4])).unwrap();
        let c = m.add_const("c", Tensor::from_shape(&[1, 2, 1, 1], &[0.5f32, -2.0]).unwrap()).unwrap();
        let mut w = m.wire_node("mul", math::mul(), &[x, c]).unwrap();
        w = m.wire_node("sig", tract_onnx::tract_core::ops::nn::sigmoid(), &w).unwrap();
        w = m.wire_node("silu", tract_onnx::tract_core::ops::nn::silu::silu(), &w).unwrap();
        w = m.wire_node("move", AxisOp::Move(1, 3), &w).unwrap();
        let max = m.wire_node("max", Reduce::new(tvec![1], Reducer::Max), &w).unwrap();
        let sum = m.wire_node("sum", Reduce::new(tvec![1], Reducer::Sum), &w).unwrap();
        let both = m.wire_node("cat", TypedConcat { axis: 1 }, &[max[0], sum[0]]).unwrap();
        let flat = m
            .wire_node("reshape", AxisOp::Reshape(1, tvec![2.to_dim(), 4.to_dim()], tvec![8.to_dim()]), &both)
            .unwrap();
        let prod = m.wire_node("prod", Reduce::new(tvec![2], Reducer::Prod), &flat).unwrap();
        let rm = m.wire_node("rm", AxisOp::Rm(2), &prod).unwrap();
        let idx = m.add_const("idx", tensor1(&[3i64, 0, 1])).unwrap();
        let out = m.wire_node("gather", Gather::new(1), &[rm[0], idx]).unwrap();
        m.select_output_outlets(&out).unwrap();
        let bytes = write(&m, &key(), &[]).unwrap();
        let back = read(&bytes, &key()).unwrap();
        assert_eq!(back.nodes.len(), m.nodes.len());
        let input: Vec<f32> = (0..24).map(|i| i as f32 * 0.3 - 3.0).collect();
        let run = |m: TypedModel| {
            let plan = m.into_runnable().unwrap();
            let out = plan.run(tvec![Tensor::from_shape(&[1, 2, 3, 4], &input).unwrap().into()]).unwrap();
            out[0].clone().into_tensor()
        };
        let (a, b) = (run(m), run(back));
        assert_eq!(a.shape(), [1, 3]);
        assert_eq!(a, b);
    }

    fn depthwise(kernel: usize, output: usize) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 3, 4])).unwrap();
        let taps = kernel * kernel;
        let op = DepthwiseNhwc {
            kernel: [kernel; 2],
            stride: [1; 2],
            pad_before: [kernel / 2; 2],
            output: [output, 3],
            weights: Arc::new(Tensor::from_shape(&[taps, 4], &vec![0.5f32; taps * 4]).unwrap()),
            bias: Arc::new(tensor1(&[0f32; 4])),
            silu: false,
        };
        let y = m.wire_node("dw", op, &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// A channel-first depthwise convolution (3x3, stride 2, bias) on a
    /// 5x6 plane of 4 channels, lowered by tract's layout pass.
    fn lowered(padding: PaddingSpec) -> (TypedModel, Vec<(String, Conv)>) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 5, 6])).unwrap();
        let k: Vec<f32> = (0..36).map(|i| (i as f32 * 0.7).sin()).collect();
        let k = m.add_const("k", Tensor::from_shape(&[4, 1, 3, 3], &k).unwrap()).unwrap();
        let b = m.add_const("b", tensor1(&[0.5f32, -1.0, 0.25, 2.0])).unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding,
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: 4,
            output_channels: 4,
        };
        let conv = Conv { pool_spec, kernel_fmt: KernelFormat::OIHW, group: 4, q_params: None };
        let y = m.wire_node("dw", conv, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let lowered = lowered_depthwise(&m);
        assert_eq!(lowered.len(), 1);
        let t = tract_onnx::tract_core::transform::get_transform("conv_nhwc").unwrap().unwrap();
        t.transform(&mut m).unwrap();
        m.declutter().unwrap();
        assert!(m.nodes.iter().any(|n| is_tracts_depthwise(n.op.as_ref())));
        (m, lowered)
    }

    /// tract's private depthwise op goes in as its convolution and comes
    /// back as the same op, computing the same bits.
    #[test]
    fn tracts_depthwise_round_trips_through_its_convolution() {
        for padding in [PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]), PaddingSpec::Valid, PaddingSpec::SameUpper] {
            let (m, lowered) = lowered(padding.clone());
            let key = Key { source: [7; 32], input_shape: [1, 4, 5, 6], layers: &["out"] };
            let bytes = write(&m, &key, &lowered).unwrap();
            let back = read(&bytes, &key).unwrap();
            let ops = |m: &TypedModel| m.nodes.iter().map(|n| format!("{:?}", n.op)).collect::<Vec<_>>();
            assert_eq!(ops(&back), ops(&m), "{padding:?}");
            let input: Vec<f32> = (0..120).map(|i| (i as f32 * 0.3).cos()).collect();
            let run = |m: TypedModel| {
                let plan = m.into_optimized().unwrap().into_runnable().unwrap();
                plan.run(tvec![Tensor::from_shape(&[1, 4, 5, 6], &input).unwrap().into()]).unwrap()[0]
                    .clone()
                    .into_tensor()
            };
            assert_eq!(run(m), run(back), "{padding:?}");
        }
    }

    /// Without its convolution, or with one that lowers to another op, the
    /// graph is not written: the device loads the ONNX.
    #[test]
    fn tracts_depthwise_of_no_or_another_convolution_is_not_written() {
        let (m, mut lowered) = lowered(PaddingSpec::Valid);
        let e = write(&m, &key(), &[]).unwrap_err();
        assert!(e.contains("DepthWiseConv dw of no recorded convolution"), "{e}");
        lowered[0].1.pool_spec.strides = Some(tvec![1, 1]);
        let e = write(&m, &key(), &lowered).unwrap_err();
        assert!(e.contains("does not lower to again"), "{e}");
    }

    /// The einsums tract's declutter makes of 1x1 convolutions round-trip
    /// through their axes' text; text tract's parser would panic on is
    /// refused.
    #[test]
    fn einsums_round_trip_and_crafted_axes_are_refused() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 3, 4])).unwrap();
        let w = m
            .add_const("w", Tensor::from_shape(&[4, 5], &(0..20).map(|i| i as f32 * 0.1).collect::<Vec<_>>()).unwrap())
            .unwrap();
        let axes: AxesMapping = "nhwc,cd->nhwd".parse().unwrap();
        let y = m.wire_node("e", EinSum::new(axes, f32::datum_type()), &[x, w]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let bytes = write(&m, &key(), &[]).unwrap();
        let back = read(&bytes, &key()).unwrap();
        let input: Vec<f32> = (0..24).map(|i| i as f32 * 0.3 - 3.0).collect();
        let run = |m: TypedModel| {
            let plan = m.into_runnable().unwrap();
            plan.run(tvec![Tensor::from_shape(&[1, 2, 3, 4], &input).unwrap().into()]).unwrap()[0].clone().into_tensor()
        };
        assert_eq!(run(m), run(back));
        for text in ["a...b->ab", "ab->ab->a", "ab->a b", "ab;->a"] {
            assert!(matches!(axes_mapping(text), Err(CompiledError::Unknown(_))), "{text}");
        }
    }

    /// Convolutions no layout pass would have lowered, or geometry past
    /// what a frame holds, are refused before tract sees them.
    #[test]
    fn crafted_depthwise_convolutions_are_refused() {
        let (_, lowered) = lowered(PaddingSpec::Valid);
        let good = lowered[0].1.clone();
        let x = f32::fact([1, 5, 6, 4]);
        assert!(tracts_depthwise(&good, &x).is_ok());
        let mut bad = vec![];
        let mut c = good.clone();
        c.pool_spec.kernel_shape = tvec![9, 9];
        bad.push(c);
        let mut c = good.clone();
        c.pool_spec.kernel_shape = tvec![7, 7];
        bad.push(c);
        let mut c = good.clone();
        c.pool_spec.padding = PaddingSpec::Explicit(tvec![1 << 40, 0], tvec![0, 0]);
        bad.push(c);
        let mut c = good.clone();
        c.pool_spec.strides = Some(tvec![0, 1]);
        bad.push(c);
        let mut c = good.clone();
        c.pool_spec.dilations = Some(tvec![1]);
        bad.push(c);
        let mut c = good.clone();
        c.group = 2;
        bad.push(c);
        let mut c = good.clone();
        c.pool_spec.data_format = DataFormat::NCHW;
        bad.push(c);
        for c in bad {
            assert!(tracts_depthwise(&c, &x).is_err(), "{c:?}");
        }
        assert!(tracts_depthwise(&good, &f32::fact([1, 5, 6, 3])).is_err());
        assert!(tracts_depthwise(&good, &f32::fact([5, 6, 4])).is_err());
    }

    /// Bytes with a valid CRC are still held to what the rewrites could
    /// have made: the source has the key's shape, and a depthwise op fits
    /// its kernel loop and its input plane.
    #[test]
    fn crafted_geometry_is_refused() {
        assert!(read(&write(&depthwise(3, 2), &key(), &[]).unwrap(), &key()).is_ok());
        for (kernel, output) in [(8, 2), (3, 1000)] {
            let e = read(&write(&depthwise(kernel, output), &key(), &[]).unwrap(), &key()).unwrap_err();
            assert!(matches!(&e, CompiledError::Wire(w) if w.contains("DepthwiseNhwc kernel")), "{e:?}");
        }
        let other = Key { source: [7; 32], input_shape: [1, 2, 3, 5], layers: &["out"] };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 3, 4])).unwrap();
        m.select_output_outlets(&[x]).unwrap();
        let e = read(&write(&m, &other, &[]).unwrap(), &other).unwrap_err();
        assert!(matches!(&e, CompiledError::Wire(w) if w.contains("is not shaped")), "{e:?}");
    }

    /// An op the format does not know is named, and nothing is written.
    #[test]
    fn an_op_it_does_not_store_is_named() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 3, 4])).unwrap();
        let y = m.wire_node("exp", math::exp(), &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        assert_eq!(write(&m, &key(), &[]).unwrap_err(), "element-wise Exp");
    }
}
