//! The feature extractor: a bundle's ONNX graph, optimised by tract for a
//! fixed input shape, turning preprocessed images into feature vectors.
//!
//! The feature vector is the concatenation of named graph outputs (the
//! manifest's `layers`): the pooled last layer alone, or several blocks'
//! pooled outputs for Lee et al.'s feature ensemble. Outputs the manifest
//! does not name are dropped before optimisation, so tract prunes whatever
//! only they needed (the FC head, a last convolution nobody reads).
//!
//! The crate is layered as tract is: this file loads a graph and runs the
//! rewrite pipeline; [`ops`] holds the ops the pipeline puts in, one file
//! per op family, each with its pattern and its rewrite; [`kernels`] holds
//! their vector loops and the one place the CPU is asked which loops run.
//! It knows nothing of heads, bundles or devices: the device and the host
//! both extract features through it, so they agree to the bit.

pub mod compiled;
pub mod kernels;
pub mod ops;

pub use compiled::CompiledError;

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("cannot load the backbone ONNX: {0}")]
    Load(String),
    #[error(
        "backbone output `{name}` has shape {shape:?} for input {input:?}; the head needs [batch, D] or a pooled \
         [batch, C, 1, 1] (pool and flatten it in the graph, e.g. GlobalAveragePool then Flatten)"
    )]
    OutputShape { name: String, shape: Vec<String>, input: [usize; 4] },
    #[error("backbone output `{name}` holds {datum} values; features must be 32-bit floats")]
    OutputType { name: String, datum: String },
    #[error("the backbone's input is declared {declared:?}; it cannot run on {asked:?}")]
    InputShape { declared: Vec<String>, asked: [usize; 4] },
    #[error("the backbone has no output `{0}` (the manifest's layers name outputs of backbone.onnx)")]
    MissingOutput(String),
    #[error("no feature layers named")]
    NoLayers,
    #[error("input holds {got} values, a batch of {batch} needs {expected}")]
    InputLength { batch: usize, expected: usize, got: usize },
    #[error("running the backbone: {0}")]
    Run(String),
    #[error(transparent)]
    Compiled(#[from] CompiledError),
}

/// Whether the project's graph rewrites run when a backbone loads. They
/// rewrite the patterns they know (EfficientNet's convolutions, its
/// squeeze-excitation) and leave any other graph as tract made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrites {
    Project,
    Plain,
}

/// What [`Backbone::rewritten`] made of an ONNX.
struct Rewritten {
    model: TypedModel,
    /// Whether it runs channel-last (the rewrites ran), which the
    /// optimiser's last step needs to know.
    channel_last: bool,
    /// The depthwise convolutions tract's layout pass lowered to its own
    /// op, for [`compiled::write`].
    lowered: Vec<(String, tract_onnx::tract_core::ops::cnn::Conv)>,
}

/// The environment switches that each keep tract's own choice where a
/// rewrite would go (the latency bench's side-by-side rows): the layout
/// (and every rewrite after it), the depthwise op, the squeeze-excitation's
/// matrix-vector products, the stem and the 1x1 convolutions. They change
/// the rewritten graph, so compiled graphs name the ones set
/// ([`compiled::fingerprint`]).
pub(crate) const SWITCHES: [&str; 4] = [TRACT_NCHW, TRACT_DEPTHWISE, TRACT_MATVEC, TRACT_DENSE];
const TRACT_NCHW: &str = "GAUSSEDGE_TRACT_NCHW";
const TRACT_DEPTHWISE: &str = "GAUSSEDGE_TRACT_DEPTHWISE";
const TRACT_MATVEC: &str = "GAUSSEDGE_TRACT_MATVEC";
const TRACT_DENSE: &str = "GAUSSEDGE_TRACT_DENSE";

/// Whether the environment sets one of the [`SWITCHES`].
pub(crate) fn switched_off(switch: &str) -> bool {
    std::env::var_os(switch).is_some()
}

/// The batch a graph's input declares, when it fixes one (an export for
/// one image at a time); `None` when the batch is free or unknown.
pub fn declared_batch(onnx: &[u8]) -> Option<usize> {
    let model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).ok()?;
    let fact = model.input_fact(0).ok()?;
    let batch = fact.shape.dims().next()?.concretize()?.to_usize().ok();
    batch
}

/// tract's declutter, reordered for load time. Its last pass, `ChangeAxes`,
/// tries to move every unit axis (at batch 1, every tensor's first) through
/// the whole graph, once per node: quadratic in the graph's size. Run right
/// after the ONNX import, it meets the 944 nodes the ops' own declutter
/// expands b0 into before constant propagation folds them back to 521, and
/// took 65% of the load (250 of 390 ms). Folding first (constant
/// propagation and the ops' declutter, to their fixed point) hands it the
/// small graph: the same decluttered model, in half the time.
pub(crate) fn declutter(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::optim::Optimizer;
    let first: Vec<_> = Optimizer::declutter().passes.into_iter().filter(|p| folds_first(&format!("{p:?}"))).collect();
    if first.len() == 2 {
        Optimizer { passes: first, steps: None }.optimize(model)?;
    }
    model.declutter()
}

/// Whether a declutter pass (by tract's name for it) is one of the two that
/// shrink the graph: constant propagation and the ops' own declutter.
fn folds_first(pass: &str) -> bool {
    pass.starts_with("PropConst") || pass == "declutter"
}

/// How long each stage of a load took, in order: `parse` (the ONNX
/// protobuf), `analyse` (shape and type inference), `declutter`, `layout`,
/// `rewrite` (the project's ops), `optimise` (tract's kernel selection),
/// `channel-last` and `plan`. Stages that did not run are absent.
#[derive(Debug, Clone)]
pub struct LoadProfile {
    last: Instant,
    /// Each stage's name and duration.
    pub stages: Vec<(&'static str, Duration)>,
}

impl LoadProfile {
    fn start() -> Self {
        LoadProfile { last: Instant::now(), stages: vec![] }
    }

    fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.stages.push((stage, now - self.last));
        self.last = now;
    }

    /// The whole load.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

/// A loaded, optimised backbone for batches of exactly `batch` images.
pub struct Backbone {
    /// The plan's run state, kept between images so its buffers are reused
    /// rather than allocated per run.
    state: Mutex<TypedSimpleState>,
    batch: usize,
    input_shape: [usize; 4],
    /// Width of each named output; the feature vector is their concatenation.
    dims: Vec<usize>,
}

impl Backbone {
    /// Loads `onnx` for input `[batch, channels, height, width]`; the
    /// features are the outputs named in `layers`, in that order, each
    /// `[batch, D_i]`.
    pub fn load<S: AsRef<str>>(
        onnx: &[u8],
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        layers: &[S],
    ) -> Result<Self, BackboneError> {
        Self::load_with(onnx, batch, channels, height, width, layers, Rewrites::Project)
    }

    /// [`load`](Self::load), choosing whether the project's graph rewrites
    /// run ([`Rewrites::Plain`] is tract's own optimisation, the reference
    /// the rewrites are held to).
    pub fn load_with<S: AsRef<str>>(
        onnx: &[u8],
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        layers: &[S],
        rewrites: Rewrites,
    ) -> Result<Self, BackboneError> {
        Self::load_profiled(onnx, [batch, channels, height, width], layers, rewrites).map(|(backbone, _)| backbone)
    }

    /// [`load_with`](Self::load_with), also returning how long each stage
    /// of loading took: boot time is a figure users feel, and this is how
    /// the latency bench finds where it goes.
    pub fn load_profiled<S: AsRef<str>>(
        onnx: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
        rewrites: Rewrites,
    ) -> Result<(Self, LoadProfile), BackboneError> {
        let mut clock = LoadProfile::start();
        let rewritten = Self::rewritten(onnx, input_shape, layers, rewrites, &mut clock)?;
        let model = Self::optimise(rewritten.model, rewritten.channel_last, &mut clock)?;
        let backbone = Self::planned(model, input_shape, layers, &mut clock)?;
        Ok((backbone, clock))
    }

    /// [`load`](Self::load), also returning the rewritten graph as bytes
    /// that [`load_compiled`](Self::load_compiled) reads back in a fraction
    /// of the time: what a device keeps in flash beside the bundle it
    /// booted. `source` is the ONNX's SHA-256, which the bytes are bound
    /// to. The bytes are `Err` (with the reason, for a log) where the graph
    /// holds an op the format does not store: such a backbone loads from
    /// its ONNX every time.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cifar10-b0-base5");
    /// # let b = gaussedge_bundle::Bundle::read(std::path::Path::new(dir))?;
    /// # let source = gaussedge_bundle::sha256(&b.onnx);
    /// # let (onnx, layers) = (&b.onnx, &b.manifest.layers);
    /// use gaussedge_backbone::Backbone;
    /// // First boot of a bundle: from its ONNX, keeping the compiled graph.
    /// let (first, compiled) = Backbone::load_and_compile(onnx, [1, 3, 64, 64], layers, source)?;
    /// // Every later boot: from the compiled graph, where there is one (a
    /// // CPU the project's kernels do not serve runs tract's own ops, which
    /// // are not stored); the same features to the bit.
    /// if let Ok(compiled) = compiled {
    ///     let later = Backbone::load_compiled(&compiled, [1, 3, 64, 64], layers, source)?;
    ///     let frame = vec![0.5f32; first.input_len()];
    ///     assert_eq!(first.features(&frame)?, later.features(&frame)?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn load_and_compile<S: AsRef<str>>(
        onnx: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
        source: [u8; 32],
    ) -> Result<(Self, Result<Vec<u8>, String>), BackboneError> {
        let mut clock = LoadProfile::start();
        let Rewritten { model: typed, channel_last, lowered } =
            Self::rewritten(onnx, input_shape, layers, Rewrites::Project, &mut clock)?;
        let compiled = if channel_last {
            compiled::write(&typed, &compiled::Key { source, input_shape, layers }, &lowered)
                .map_err(|op| format!("the rewritten graph holds {op}, which compiled backbones do not store"))
        } else {
            Err("the project's rewrites are switched off".to_string())
        };
        let model = Self::optimise(typed, channel_last, &mut clock)?;
        Ok((Self::planned(model, input_shape, layers, &mut clock)?, compiled))
    }

    /// Loads what [`load_and_compile`](Self::load_and_compile) wrote, after
    /// checking that it was written by this build on this CPU, for the ONNX
    /// whose SHA-256 is `source`, this input shape and these layers. Any
    /// mismatch or damage is [`BackboneError::Compiled`]: load the ONNX.
    pub fn load_compiled<S: AsRef<str>>(
        bytes: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
        source: [u8; 32],
    ) -> Result<Self, BackboneError> {
        Self::load_compiled_profiled(bytes, input_shape, layers, source).map(|(backbone, _)| backbone)
    }

    /// [`load_compiled`](Self::load_compiled) with its stages' times
    /// (`read`, then as [`load_profiled`](Self::load_profiled) from
    /// `optimise` on).
    pub fn load_compiled_profiled<S: AsRef<str>>(
        bytes: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
        source: [u8; 32],
    ) -> Result<(Self, LoadProfile), BackboneError> {
        if layers.is_empty() {
            return Err(BackboneError::NoLayers);
        }
        let mut clock = LoadProfile::start();
        let typed = compiled::read(bytes, &compiled::Key { source, input_shape, layers })?;
        clock.lap("read");
        let model = Self::optimise(typed, true, &mut clock)?;
        let backbone = Self::planned(model, input_shape, layers, &mut clock)?;
        Ok((backbone, clock))
    }

    /// Checks an optimised graph's outputs against the head's needs and
    /// makes it runnable.
    fn planned<S: AsRef<str>>(
        model: TypedModel,
        input_shape: [usize; 4],
        layers: &[S],
        clock: &mut LoadProfile,
    ) -> Result<Self, BackboneError> {
        let load = |e: TractError| BackboneError::Load(format!("{e:#}"));
        let batch = input_shape[0];
        let mut dims = vec![];
        for (i, name) in layers.iter().enumerate() {
            let fact = model.output_fact(i).map_err(load)?;
            let name = name.as_ref().to_string();
            if fact.datum_type != f32::datum_type() {
                return Err(BackboneError::OutputType { name, datum: format!("{:?}", fact.datum_type) });
            }
            let concrete: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
            // [batch, D], or [batch, C, 1, 1] (the same bytes: a pooled map
            // before its flatten, as torchvision's avgpool leaves it).
            let d = match concrete.as_deref() {
                Some([b, d]) if *b == batch && *d > 0 => Some(*d),
                Some([b, c, 1, 1]) if *b == batch && *c > 0 => Some(*c),
                _ => None,
            };
            let Some(d) = d else {
                let shape = fact.shape.iter().map(|d| d.to_string()).collect();
                return Err(BackboneError::OutputShape { name, shape, input: input_shape });
            };
            dims.push(d);
        }
        let plan = model.into_runnable().map_err(load)?;
        let state = Mutex::new(plan.spawn().map_err(load)?);
        clock.lap("plan");
        Ok(Backbone { state, batch, input_shape, dims })
    }

    /// The optimised graph `load` runs, for tools that drive tract
    /// themselves (the latency bench's per-operator profile).
    pub fn optimized<S: AsRef<str>>(
        onnx: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
    ) -> Result<TypedModel, BackboneError> {
        let clock = &mut LoadProfile::start();
        let rewritten = Self::rewritten(onnx, input_shape, layers, Rewrites::Project, clock)?;
        Self::optimise(rewritten.model, rewritten.channel_last, clock)
    }

    /// The graph after the project's rewrites, before tract's optimiser:
    /// what [`compiled`] stores.
    fn rewritten<S: AsRef<str>>(
        onnx: &[u8],
        input_shape: [usize; 4],
        layers: &[S],
        rewrites: Rewrites,
        clock: &mut LoadProfile,
    ) -> Result<Rewritten, BackboneError> {
        let load = |e: TractError| BackboneError::Load(format!("{e:#}"));
        if layers.is_empty() {
            return Err(BackboneError::NoLayers);
        }
        let model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(load)?;
        clock.lap("parse");
        let declared = model.input_fact(0).map_err(load)?.shape.clone();
        let fixed: Vec<Option<usize>> =
            declared.dims().map(|d| d.concretize().and_then(|d| d.to_usize().ok())).collect();
        let fits = !declared.is_open()
            && fixed.len() == 4
            && fixed.iter().zip(input_shape).all(|(d, a)| d.is_none_or(|d| d == a));
        if !(fits || declared.is_open() && fixed.is_empty()) {
            let declared = declared.dims().map(|d| d.concretize().map_or("?".to_string(), |d| d.to_string())).collect();
            return Err(BackboneError::InputShape { declared, asked: input_shape });
        }
        let mut model = model.with_input_fact(0, f32::fact(input_shape).into()).map_err(load)?;
        let mut outlets = vec![];
        for name in layers {
            let name = name.as_ref();
            let outlet = model
                .outlet_labels
                .iter()
                .find(|(_, label)| label.as_str() == name)
                .map(|(o, _)| *o)
                .ok_or_else(|| BackboneError::MissingOutput(name.to_string()))?;
            outlets.push(outlet);
        }
        model.select_output_outlets(&outlets).map_err(load)?;
        let typed = model.into_typed().map_err(load)?;
        clock.lap("analyse");
        let mut typed = typed;
        declutter(&mut typed).map_err(load)?;
        clock.lap("declutter");
        // Channel-last convolutions: depthwise kernels vectorise across
        // channels there, and EfficientNet's late blocks are 2x2 to 8x8
        // planes of hundreds of channels (per-plane walks cost 62% of a
        // frame channel-first). Each graph rewrite has a switch that keeps
        // tract's own choice ([`SWITCHES`]).
        let channel_last = rewrites == Rewrites::Project && !switched_off(TRACT_NCHW);
        let mut lowered = vec![];
        if channel_last {
            let kernels = crate::kernels::serve();
            let dense = kernels && !switched_off(TRACT_DENSE);
            let matvec = !switched_off(TRACT_MATVEC);
            // Before `conv_nhwc`, which would lower these convolutions to
            // tract's own ops.
            if dense {
                crate::ops::im2col::rewrite(&mut typed).map_err(load)?;
            }
            if kernels && !switched_off(TRACT_DEPTHWISE) {
                crate::ops::depthwise::rewrite(&mut typed).map_err(load)?;
            }
            lowered = compiled::lowered_depthwise(&typed);
            let t = tract_onnx::tract_core::transform::get_transform("conv_nhwc")
                .map_err(load)?
                .ok_or_else(|| BackboneError::Load("tract has no conv_nhwc transform".into()))?;
            t.transform(&mut typed).map_err(load)?;
            clock.lap("layout");
            // Once the layout has settled: the einsums are what tract's
            // layout passes move axes through, and the 1x1 convolutions
            // take their input and output in the layouts it chose.
            if matvec || dense {
                typed.declutter().map_err(load)?;
            }
            if matvec {
                crate::ops::matvec::rewrite(&mut typed).map_err(load)?;
            }
            if dense {
                crate::ops::pointwise::rewrite(&mut typed).map_err(load)?;
            }
            clock.lap("rewrite");
        }
        Ok(Rewritten { model: typed, channel_last, lowered })
    }

    /// tract's optimiser on a rewritten graph, then the channel-last ops
    /// that replace some of what it chose.
    fn optimise(typed: TypedModel, channel_last: bool, clock: &mut LoadProfile) -> Result<TypedModel, BackboneError> {
        let load = |e: TractError| BackboneError::Load(format!("{e:#}"));
        let mut optimized = typed.into_optimized().map_err(load)?;
        clock.lap("optimise");
        if channel_last {
            crate::ops::channel_last::rewrite(&mut optimized).map_err(load)?;
            crate::ops::depthwise::fuse_silu(&mut optimized).map_err(load)?;
            clock.lap("channel-last");
        }
        Ok(optimized)
    }

    /// Threads one frame's kernels may use, process-wide (1, the default,
    /// runs every kernel on the calling thread): the project's own
    /// convolutions split over them (`kernels::parts`); tract's other
    /// operators and the small channel-last ones stay on the calling
    /// thread. A device with spare cores can
    /// trade them for latency; the features are the same bits at every
    /// count, and the head does not use them. Set it before loading: on
    /// aarch64 the count at load decides whether the project's kernels
    /// replace tract's at all ([`kernels::serve`]), and their features
    /// are tract's within 1e-5, not its bits.
    pub fn set_threads(threads: usize) {
        kernels::parts::set_threads(threads);
    }

    /// Runs `f` with this thread's frames split over `threads`, whatever
    /// [`set_threads`](Self::set_threads) set: for comparing thread counts
    /// in one process.
    pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
        kernels::parts::with_threads(threads, f)
    }

    /// Feature dimension: the sum of the layers' widths.
    pub fn dim(&self) -> usize {
        self.dims.iter().sum()
    }

    /// Width of each layer, in the order they were named.
    pub fn layer_dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn input_len(&self) -> usize {
        self.input_shape[1] * self.input_shape[2] * self.input_shape[3]
    }

    /// Runs one batch; returns each named output flattened, `[batch, D_i]`.
    pub fn run_all(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, BackboneError> {
        let expected = self.batch * self.input_len();
        if input.len() != expected {
            return Err(BackboneError::InputLength { batch: self.batch, expected, got: input.len() });
        }
        let run = |e: TractError| BackboneError::Run(format!("{e:#}"));
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(run)?;
        let mut state = self.state.lock().map_err(|_| BackboneError::Run("backbone state poisoned".into()))?;
        let result = state.run(tvec!(tensor.into())).map_err(run)?;
        result
            .iter()
            .take(self.dims.len())
            .map(|t| t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec())).map_err(run))
            .collect()
    }

    /// Features of one batch, `batch * D` values: per image, the layers'
    /// outputs one after another.
    pub fn features(&self, input: &[f32]) -> Result<Vec<f32>, BackboneError> {
        let mut outputs = self.run_all(input)?;
        if outputs.len() == 1 {
            return Ok(outputs.swap_remove(0));
        }
        let mut out = Vec::with_capacity(self.batch * self.dim());
        for row in 0..self.batch {
            for (values, &d) in outputs.iter().zip(&self.dims) {
                out.extend_from_slice(&values[row * d..(row + 1) * d]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    /// The load-time reordering picks tract's passes by name; a tract that
    /// renames them would silently lose it (boot back to twice as slow).
    #[test]
    fn tract_still_has_the_two_passes_the_loader_folds_first() {
        let names: Vec<String> =
            tract_onnx::tract_core::optim::Optimizer::declutter().passes.iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(names.iter().filter(|n| super::folds_first(n)).count(), 2, "{names:?}");
    }
}
