//! EfficientNet's 1x1 convolutions, with their bias and their SiLU or
//! residual add, as one pass over the output.
//!
//! tract declutters a 1x1 convolution into an einsum over pixels and
//! lowers it to its matrix product, which puts the larger of the pixel
//! count and the output channels on the kernel's rows. On the early,
//! wide-plane blocks that is the pixels, and the channel-last output then
//! has non-unit row stride: tract's x86-64 kernels write such a tile one
//! scalar at a time (`vextractps`, 96 stores per 16x6 tile against 192
//! FMAs for a 16-channel input). Its input is packed first, and the SiLU
//! after each expansion runs as a pass of its own. On a 2-core AMD EPYC
//! (AVX2) those expansions ran at 11 GMAC/s where onnxruntime ran 23.
//!
//! [`Pointwise`] keeps a tile of pixels x output channels in registers
//! over the whole input depth, reading the input where it lies (any
//! strides: channel-first or channel-last, no packing) and each weight
//! once per tile, then adds the bias, applies tract's own SiLU routine to
//! the finished rows while they are in L1, adds the residual, and writes
//! the output in its layout.
//!
//! The arithmetic is tract's in tract's order (a fused multiply-add per
//! input channel from zero, then the bias, then SiLU, then the residual),
//! so results match tract's to the last bits or nearly.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

use crate::ops::matvec::{weighted_einsum, WeightedEinsum};

/// Where a value of a `[batch, pixel, channel]` view lies in a flat tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Strides {
    pub batch: usize,
    pub pixel: usize,
    pub channel: usize,
}

/// Where the op reads input value `(b, p, i)`: at `b * batch + pixels[p] +
/// channels[i]` in the flat input. Offset tables rather than strides, so
/// that a convolution's windows read as rows (`channels` the taps'
/// offsets from the window's corner, `pixels` the corners).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Input {
    pub batch: usize,
    pub pixels: Vec<usize>,
    pub channels: Vec<usize>,
}

impl Input {
    /// The offsets of a strided `[batch, pixel, channel]` view.
    pub fn strided(s: Strides, pixels: usize, channels: usize) -> Input {
        Input {
            batch: s.batch,
            pixels: (0..pixels).map(|p| p * s.pixel).collect(),
            channels: (0..channels).map(|i| i * s.channel).collect(),
        }
    }
}

/// A 1x1 convolution `y[b, p, :] = act(W x[b, p, :] + bias) (+ r[b, p, :])`
/// over `batch` images of `pixels` pixels each, the weights held by the op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointwise {
    pub cin: usize,
    pub cout: usize,
    pub batch: usize,
    pub pixels: usize,
    /// Pixels per register tile.
    pub tile: usize,
    /// Output channels per register tile (a multiple of the vector width).
    pub width: usize,
    /// `[ceil(cout / width), cin, width]`: per block of output channels,
    /// one row of weights per input channel, zero past `cout`.
    pub weights: Arc<Tensor>,
    /// `[ceil(cout / width) * width]`, zero past `cout` and where the
    /// graph had no bias.
    pub bias: Arc<Tensor>,
    pub silu: bool,
    /// Whether a second input, shaped and laid out as the output, is added
    /// last.
    pub residual: bool,
    pub x: Input,
    pub y: Strides,
    pub input_shape: TVec<usize>,
    pub output_shape: TVec<usize>,
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "Pointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} over {}x{} pixels, tile {}x{}{}{}",
            self.cin,
            self.cout,
            self.batch,
            self.pixels,
            self.tile,
            self.width,
            if self.silu { ", silu" } else { "" },
            if self.residual { ", residual" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1 + usize::from(self.residual),
            "Pointwise takes {} inputs",
            1 + usize::from(self.residual)
        );
        ensure!(
            inputs[0].shape() == &*self.input_shape,
            "Pointwise input {:?}, expected {:?}",
            inputs[0].shape(),
            self.input_shape
        );
        // SAFETY: `run_into` writes every output value (each pixel's band,
        // every channel) before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut ram = out.try_as_plain_ram_mut()?;
        let y = ram.as_slice_mut::<f32>()?;
        crate::ops::flat::with_values(&inputs[0], |x| {
            if self.residual {
                ensure!(inputs[1].shape() == &*self.output_shape, "Pointwise residual {:?}", inputs[1].shape());
                crate::ops::flat::with_values(&inputs[1], |r| self.run_into(x, Some(r), y))
            } else {
                self.run_into(x, None, y)
            }
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(f32::datum_type()), (self.batch * self.pixels * self.cin * self.cout).to_dim())))
    }

    as_op!();
}

impl Pointwise {
    /// The op for `[cin, cout]` channels over `[batch, pixels]` pixels,
    /// weight `(o, i)` from `weight`, the input read through `x`'s offsets
    /// and the output written with `y`'s strides, the two shaped as the
    /// last argument says; picks the register tile for this CPU and packs
    /// the weights for it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        [cin, cout]: [usize; 2],
        [batch, pixels]: [usize; 2],
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        silu: bool,
        residual: bool,
        (x, y): (Input, Strides),
        [input_shape, output_shape]: [TVec<usize>; 2],
    ) -> TractResult<Pointwise> {
        Self::tiled(
            tile_for(pixels),
            [cin, cout],
            [batch, pixels],
            weight,
            bias,
            silu,
            residual,
            (x, y),
            [input_shape, output_shape],
        )
    }

    /// [`Pointwise::new`] with a chosen `(pixels, channels)` register tile,
    /// one of those `band` dispatches.
    #[allow(clippy::too_many_arguments)]
    fn tiled(
        (tile, width): (usize, usize),
        [cin, cout]: [usize; 2],
        [batch, pixels]: [usize; 2],
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        silu: bool,
        residual: bool,
        (x, y): (Input, Strides),
        [input_shape, output_shape]: [TVec<usize>; 2],
    ) -> TractResult<Pointwise> {
        ensure!(cin > 0 && cout > 0 && batch > 0 && pixels > 0 && bias.len() == cout);
        ensure!(matches!((tile, width), (6, 16) | (4, 24) | (6, 32) | (4, 48)), "no {tile}x{width} tile");
        let blocks = cout.div_ceil(width);
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(blocks * width, 0.0);
        let mut packed = vec![0f32; blocks * cin * width];
        for o in 0..cout {
            for i in 0..cin {
                packed[((o / width) * cin + i) * width + o % width] = weight(o, i);
            }
        }
        Ok(Pointwise {
            cin,
            cout,
            batch,
            pixels,
            tile,
            width,
            weights: Arc::new(Tensor::from_shape(&[blocks, cin, width], &packed)?),
            bias: Arc::new(Tensor::from_shape(&[blocks * width], &padded_bias)?),
            silu,
            residual,
            x,
            y,
            input_shape,
            output_shape,
        })
    }

    /// The whole convolution of `x` (and residual `r`) into `y`, each a
    /// flat tensor in the layout the op's offsets and strides describe.
    pub(crate) fn run_into(&self, x: &[f32], r: Option<&[f32]>, y: &mut [f32]) -> TractResult<()> {
        let weights = self.weights.try_as_plain_ram()?;
        let bias = self.bias.try_as_plain_ram()?;
        let (weights, bias) = (weights.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        // Every input offset the kernel forms must lie in `x`: it reads
        // without bounds checks.
        let far = |o: &[usize]| o.iter().copied().max().unwrap_or(0);
        ensure!(self.x.pixels.len() == self.pixels && self.x.channels.len() == self.cin, "Pointwise offset tables");
        let last = (self.batch - 1) * self.x.batch + far(&self.x.pixels) + far(&self.x.channels);
        ensure!(last < x.len(), "Pointwise input too short");
        let blocks = self.cout.div_ceil(self.width);
        ensure!(weights.len() == blocks * self.cin * self.width && bias.len() == blocks * self.width);
        let threads = crate::kernels::parts::threads_for(self.batch * self.pixels * self.cin * self.cout);
        let extents = [self.batch, self.pixels, self.cout];
        let strides = [self.y.batch, self.y.pixel, self.y.channel];
        // Parts write concurrently only where no two output values share
        // an index; one part runs its units in order, which any strides
        // allow.
        let threads = if crate::kernels::parts::injective(extents, strides) { threads } else { 1 };
        self.run_parts(threads, x, r, y, weights, bias)
    }

    /// [`run_into`](Self::run_into) over `threads` parts (one: inline, in
    /// order). The units are the register tiles, and where a layer has too
    /// few of them to go round (the late blocks' 2x2 and 4x4 planes, one
    /// or a few tiles of many output channels) each tile's output channels too,
    /// in groups of whole blocks. Each unit computes its band in place
    /// where the band is one run of the output, else into scratch, and
    /// writes each value once; a value's arithmetic is the same at every
    /// thread count.
    fn run_parts(
        &self,
        threads: usize,
        x: &[f32],
        r: Option<&[f32]>,
        y: &mut [f32],
        weights: &[f32],
        bias: &[f32],
    ) -> TractResult<()> {
        let per_image = self.pixels.div_ceil(self.tile);
        let tiles = self.batch * per_image;
        let blocks = self.cout.div_ceil(self.width);
        // Two units a thread at least, so that an uneven part (a short
        // last tile, a busy core) costs less.
        let groups = if threads < 2 || tiles >= 2 * threads { 1 } else { (2 * threads).div_ceil(tiles).min(blocks) };
        let per_group = blocks.div_ceil(groups);
        let groups = blocks.div_ceil(per_group);
        let out = crate::kernels::parts::Disjoint::new(y);
        let (cin, width) = (self.cin, self.width);
        crate::kernels::parts::for_each_part(tiles * groups, threads, |range| {
            let silu = if self.silu { Some(tract_linalg::routines::Func::Silu.ew_f32()?) } else { None };
            // Only the layouts that are not written in place need it.
            let mut scratch = Vec::new();
            for unit in range {
                let (t, g) = (unit / groups, unit % groups);
                let (b, p0) = (t / per_image, (t % per_image) * self.tile);
                let rows = self.tile.min(self.pixels - p0);
                let offsets = self.tile_offsets(b, p0);
                let (b0, b1) = (g * per_group, ((g + 1) * per_group).min(blocks));
                let (o0, o1) = (b0 * width, (b1 * width).min(self.cout));
                let cols = o1 - o0;
                let k = Kernel { cin, cout: cols, channels: &self.x.channels };
                let (weights, bias) = (&weights[b0 * cin * width..b1 * cin * width], &bias[o0..]);
                let start = b * self.y.batch + p0 * self.y.pixel + o0 * self.y.channel;
                // SAFETY (every `out` access below): unit (t, g) is
                // the only one that holds pixels p0.. of image b and
                // channels o0..o1; with more than one part `injective`
                // checked that no other value shares their indices, and a
                // single part's slices each end before the next is made.
                if self.y.channel == 1 && self.y.pixel == cols {
                    // The tile's values are one run of the output, as on
                    // the serial path: the kernel writes them in place.
                    let band = unsafe { out.rows(start..start + rows * cols) };
                    self.band(&k, x, &offsets, weights, bias, band);
                    if let Some(silu) = &silu {
                        silu.run(band)?;
                    }
                    if let Some(r) = r {
                        crate::kernels::simd::sum_rows(band, &r[start..][..rows * cols]);
                    }
                    continue;
                }
                scratch.resize(self.tile * per_group * width, 0f32);
                let band = &mut scratch[..rows * cols];
                self.band(&k, x, &offsets, weights, bias, band);
                if let Some(silu) = &silu {
                    silu.run(band)?;
                }
                if self.y.channel == 1 {
                    // A run of `cols` values a pixel.
                    for (p, values) in band.chunks_exact(cols).enumerate() {
                        let at = start + p * self.y.pixel;
                        let run = unsafe { out.rows(at..at + cols) };
                        run.copy_from_slice(values);
                        if let Some(r) = r {
                            crate::kernels::simd::sum_rows(run, &r[at..][..cols]);
                        }
                    }
                    continue;
                }
                if self.y.pixel == 1 {
                    // Channel-first: a run of `rows` values a channel.
                    for o in 0..cols {
                        let at = start + o * self.y.channel;
                        let run = unsafe { out.rows(at..at + rows) };
                        gather_column(run, band, cols, o);
                        if let Some(r) = r {
                            crate::kernels::simd::sum_rows(run, &r[at..][..rows]);
                        }
                    }
                    continue;
                }
                for p in 0..rows {
                    for o in 0..cols {
                        let i = start + p * self.y.pixel + o * self.y.channel;
                        let mut v = band[p * cols + o];
                        if let Some(r) = r {
                            v += r[i];
                        }
                        unsafe { out.write(i, v) };
                    }
                }
            }
            Ok(())
        })
    }

    /// Input offsets of the tile of image `b`'s pixels from `p0`; a short
    /// last tile repeats its last pixel (the kernel computes those rows
    /// and the callers drop them).
    fn tile_offsets(&self, b: usize, p0: usize) -> [usize; MAX_TILE] {
        let mut offsets = [0usize; MAX_TILE];
        for (p, o) in offsets[..self.tile].iter_mut().enumerate() {
            *o = b * self.x.batch + self.x.pixels[(p0 + p).min(self.pixels - 1)];
        }
        offsets
    }

    /// One band of the tile's pixels and `k.cout` output channels into
    /// `band` (`[rows, k.cout]`), with the widest vector unit this CPU
    /// has: `weights` and `bias` start at the band's first block.
    fn band(
        &self,
        k: &Kernel,
        x: &[f32],
        offsets: &[usize; MAX_TILE],
        weights: &[f32],
        bias: &[f32],
        band: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: each arm runs a function built for features this CPU
            // has (checked here, not only when the op was built).
            let isa = crate::kernels::Isa::best();
            let (avx512, avx2) = (isa >= crate::kernels::Isa::Avx512, isa >= crate::kernels::Isa::Avx2);
            match (self.tile, self.width) {
                (6, 32) if avx512 => return unsafe { band_avx512::<6, 32>(k, x, offsets, weights, bias, band) },
                (4, 48) if avx512 => return unsafe { band_avx512::<4, 48>(k, x, offsets, weights, bias, band) },
                (6, 16) if avx2 => return unsafe { band_avx2::<6, 16>(k, x, offsets, weights, bias, band) },
                (4, 24) if avx2 => return unsafe { band_avx2::<4, 24>(k, x, offsets, weights, bias, band) },
                _ => {}
            }
        }
        match (self.tile, self.width) {
            (6, 32) => band_body::<6, 32>(k, x, offsets, weights, bias, band),
            (4, 48) => band_body::<4, 48>(k, x, offsets, weights, bias, band),
            (6, 16) => band_body::<6, 16>(k, x, offsets, weights, bias, band),
            _ => band_body::<4, 24>(k, x, offsets, weights, bias, band),
        }
    }
}

/// How many input channels ahead the kernel asks for its weights (4 to 6
/// KB): the late blocks' weights stream from L3 or memory, once a frame.
/// 16 ahead left the 1x1 convolutions 5-8% slower on the 2-core EPYC; 32
/// to 256 measured alike.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 64;

/// The largest pixel tile.
const MAX_TILE: usize = 6;

/// What the register kernel needs of the op.
struct Kernel<'a> {
    cin: usize,
    cout: usize,
    /// Input offset of each channel from a pixel's.
    channels: &'a [usize],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn band_avx512<const P: usize, const W: usize>(
    k: &Kernel,
    x: &[f32],
    offsets: &[usize; MAX_TILE],
    weights: &[f32],
    bias: &[f32],
    band: &mut [f32],
) {
    band_body::<P, W>(k, x, offsets, weights, bias, band)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn band_avx2<const P: usize, const W: usize>(
    k: &Kernel,
    x: &[f32],
    offsets: &[usize; MAX_TILE],
    weights: &[f32],
    bias: &[f32],
    band: &mut [f32],
) {
    band_body::<P, W>(k, x, offsets, weights, bias, band)
}

/// Every block of `W` output channels for the tile's `P` pixels; inlined
/// into each target-feature wrapper so that LLVM keeps the `P x W` sums in
/// that wrapper's vector registers.
#[inline(always)]
fn band_body<const P: usize, const W: usize>(
    k: &Kernel,
    x: &[f32],
    offsets: &[usize; MAX_TILE],
    weights: &[f32],
    bias: &[f32],
    band: &mut [f32],
) {
    let rows = band.len() / k.cout;
    for (block, w) in weights.chunks_exact(k.cin * W).enumerate() {
        let mut acc = [[0f32; W]; P];
        for (w, &ko) in w.chunks_exact(W).zip(k.channels) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; it never faults, whatever the
            // address.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(PREFETCH * W) as *const i8);
            }
            let w: &[f32; W] = w.try_into().unwrap();
            for p in 0..P {
                // SAFETY: `Pointwise::run_into` checked that the farthest offset
                // (last image, pixel and channel) is inside `x`.
                let v = unsafe { *x.get_unchecked(offsets[p] + ko) };
                for j in 0..W {
                    acc[p][j] = v.mul_add(w[j], acc[p][j]);
                }
            }
        }
        let o0 = block * W;
        // The bias after the sums, as tract adds it. (Index loops over
        // copies: iterating `&mut acc` here made LLVM keep the sums in
        // memory through the whole loop above, three times slower.)
        let b: &[f32; W] = bias[o0..o0 + W].try_into().unwrap();
        let n = W.min(k.cout - o0);
        for p in 0..P {
            if p >= rows {
                break;
            }
            let mut sums = acc[p];
            for j in 0..W {
                sums[j] += b[j];
            }
            let row = &mut band[p * k.cout + o0..];
            if n == W {
                // A fixed-size copy: vector stores, not a `memcpy` call.
                let row: &mut [f32; W] = (&mut row[..W]).try_into().unwrap();
                *row = sums;
            } else {
                row[..n].copy_from_slice(&sums[..n]);
            }
        }
    }
}

/// Column `o` of a band of `cols`-value rows, into `run` (one value a row).
#[inline]
fn gather_column(run: &mut [f32], band: &[f32], cols: usize, o: usize) {
    for (v, row) in run.iter_mut().zip(band.chunks_exact(cols)) {
        *v = row[o];
    }
}

/// The node's op if it is a Silu, or an Add of a constant shaped `bias`
/// (unit axes but `o`), or an Add of another wire.
enum Follower {
    Bias(Vec<f32>),
    Silu,
    Residual(OutletId),
}

fn follower(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    o_pos: usize,
    cout: usize,
) -> TractResult<Option<Follower>> {
    if node.op_is::<ElementWiseOp>() {
        return Ok(is_silu(node).then_some(Follower::Silu));
    }
    let Some(op) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    if op.0.name() != "Add" || op.1.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = if node.inputs[0] == from { node.inputs[1] } else { node.inputs[0] };
    if other == from {
        return Ok(None);
    }
    let fact = model.outlet_fact(other)?;
    let out = &node.outputs[0].fact;
    if fact.datum_type != f32::datum_type() || out.shape != model.outlet_fact(from)?.shape {
        return Ok(None);
    }
    if let Some(k) = &fact.konst {
        let shape = k.shape();
        let bias_like = shape.len() == out.rank()
            && shape.iter().enumerate().all(|(a, &d)| if a == o_pos { d == cout } else { d == 1 });
        if !bias_like {
            return Ok(None);
        }
        return Ok(Some(Follower::Bias(k.to_plain_array_view::<f32>()?.iter().copied().collect())));
    }
    Ok((fact.shape == out.shape).then_some(Follower::Residual(other)))
}

/// Whether the node is tract's f32 SiLU.
pub(crate) fn is_silu(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>().is_some_and(|op| op.0.name() == "Silu" && op.1.is_none())
}

/// The only consumer of `outlet`, if it has exactly one and is not a model
/// output.
pub(crate) fn sole_successor(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    let succ = &model.node(outlet.node).outputs[outlet.slot].successors;
    (succ.len() == 1 && !model.output_outlets().ok()?.contains(&outlet)).then(|| succ[0].node)
}

/// Pixel axes (at least one) grouped as `[batch, pixel]` (sizes and
/// strides in `x` and `y`), or `None` where one stride per group cannot
/// walk them.
fn group_pixels(sizes: &[usize], xs: &[usize], ys: &[usize]) -> Option<(usize, usize, [usize; 2], [usize; 2])> {
    let merges = |s: &[usize], a: usize, b: usize| (a..b - 1).all(|i| s[i] == s[i + 1] * sizes[i + 1]);
    let n = sizes.len();
    // The longest suffix both layouts walk with one stride is the pixel
    // group; the rest must be one batch group.
    let split = (0..n).find(|&s| merges(xs, s, n) && merges(ys, s, n))?;
    if split > 0 && !(merges(xs, 0, split) && merges(ys, 0, split)) {
        return None;
    }
    let pixels = sizes[split..].iter().product();
    let batch = sizes[..split].iter().product();
    let (xb, yb) = if split > 0 { (xs[split - 1], ys[split - 1]) } else { (0, 0) };
    Some((batch, pixels, [xb, xs[n - 1]], [yb, ys[n - 1]]))
}

/// The op for a 1x1-convolution einsum of a decluttered graph (`x · W`,
/// `W` a constant `[O, I]`, every other axis a pixel axis present in both
/// `x` and the output, or a unit axis), with the bias add, SiLU or
/// residual add that follow it; and the outlet it replaces. `None` where
/// the node is not one.
fn pointwise_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(Pointwise, TVec<OutletId>, OutletId)>> {
    let Some(WeightedEinsum { x_shape, y_shape, w, xa, ya, o_axis, i_axis }) = weighted_einsum(model, node)? else {
        return Ok(None);
    };
    let (x_shape, y_shape) = (&x_shape[..], &y_shape[..]);
    let (cout, cin) = (w.shape()[0], w.shape()[1]);
    if cin == 0 || cout == 0 {
        return Ok(None);
    }
    let (Some(xi), Some(yo)) = (xa.iter().position(|&a| a == i_axis), ya.iter().position(|&a| a == o_axis)) else {
        return Ok(None);
    };
    if x_shape[xi] != cin || y_shape[yo] != cout || xa.contains(&o_axis) || ya.contains(&i_axis) {
        return Ok(None);
    }
    // Non-unit pixel axes: in both, same size, same order.
    let big = |axes: &[char], shape: &[usize], skip: char| -> Vec<(char, usize)> {
        axes.iter().zip(shape).filter(|&(&a, &d)| a != skip && d != 1).map(|(&a, &d)| (a, d)).collect()
    };
    let (xp, yp) = (big(&xa, x_shape, i_axis), big(&ya, y_shape, o_axis));
    if xp != yp || xp.is_empty() {
        return Ok(None);
    }
    let (x_strides, y_strides) = (Tensor::natural_strides(x_shape), Tensor::natural_strides(y_shape));
    let stride =
        |axes: &[char], strides: &[isize], a: char| strides[axes.iter().position(|&b| b == a).unwrap()] as usize;
    let sizes: Vec<usize> = xp.iter().map(|&(_, d)| d).collect();
    let xs: Vec<usize> = xp.iter().map(|&(a, _)| stride(&xa, &x_strides, a)).collect();
    let ys: Vec<usize> = xp.iter().map(|&(a, _)| stride(&ya, &y_strides, a)).collect();
    let Some((batch, pixels, [xb, xpix], [yb, ypix])) = group_pixels(&sizes, &xs, &ys) else { return Ok(None) };

    // What follows: a bias add, then a SiLU or a residual add.
    let mut last = OutletId::new(node.id, 0);
    let (mut bias, mut silu, mut residual) = (None, false, None);
    while let Some(next) = sole_successor(model, last) {
        let next = model.node(next);
        match follower(model, next, last, yo, cout)? {
            Some(Follower::Bias(b)) if bias.is_none() && !silu && residual.is_none() => bias = Some(b),
            Some(Follower::Silu) if !silu && residual.is_none() => silu = true,
            Some(Follower::Residual(r)) if !silu && residual.is_none() => residual = Some(r),
            _ => break,
        }
        last = OutletId::new(next.id, 0);
    }

    let view = w.to_plain_array_view::<f32>()?;
    let op = Pointwise::new(
        [cin, cout],
        [batch, pixels],
        |o, i| view[[o, i]],
        &bias.unwrap_or_else(|| vec![0.0; cout]),
        silu,
        residual.is_some(),
        (
            Input::strided(Strides { batch: xb, pixel: xpix, channel: x_strides[xi] as usize }, pixels, cin),
            Strides { batch: yb, pixel: ypix, channel: y_strides[yo] as usize },
        ),
        [x_shape.into(), y_shape.into()],
    )?;
    let mut wires = tvec![node.inputs[0]];
    wires.extend(residual);
    Ok(Some((op, wires, last)))
}

/// Pixels x output channels per register tile for `pixels` pixels an
/// image: four pixels where planes are 2x2 or 4x4 (EfficientNet's late
/// blocks, whose weights dominate) and where there are at most four (the
/// squeeze-excitation's products, a pixel a view: a six-pixel tile
/// computed three times the rows it kept; four took 0.64-0.99 of its
/// time in five profiled rounds, median 0.80), six elsewhere; as many
/// channels as fill twelve vector registers. (Tried in session 24: a
/// tile of eight pixels spanning a two-view frame's 2x2 planes, so that
/// their weights stream once a frame rather than once a view. Written as
/// `band_body` is, eight rows of sums stay in memory, 15-28 times slower;
/// kept as two arrays of four rows they stay in registers, and the 8x32
/// tile then ran the 2x2 expansions at 1.14-1.24 times the time of two
/// 4x48 tiles in three profiled rounds. Those layers are not bound by
/// streaming their weights.)
fn tile_for(pixels: usize) -> (usize, usize) {
    let lanes = if crate::kernels::Isa::detected() == crate::kernels::Isa::Avx512 { 16 } else { 8 };
    if pixels <= 4 || pixels <= 16 && pixels.is_multiple_of(4) {
        (4, 3 * lanes)
    } else {
        (6, 2 * lanes)
    }
}

/// Replaces every 1x1-convolution einsum of a decluttered graph, and the
/// bias, SiLU or residual add after it, with [`Pointwise`]. Run it after
/// the layout has settled (`conv_nhwc`, then a declutter): the op takes
/// its input and output in the layouts tract chose. Returns how many
/// einsums it replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, inputs, last)) = pointwise_of(model, node)? else { continue };
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let wires = inputs.iter().map(|&i| patch.tap_model(model, i)).collect::<TractResult<TVec<_>>>()?;
        let y = patch.wire_node(name, op, &wires)?;
        patch.shunt_outside(model, last, y[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math::add;
    use tract_onnx::tract_core::ops::nn::Silu;

    /// What follows the einsum in a test graph.
    #[derive(Clone, Copy, Debug)]
    enum Then {
        Nothing,
        Bias,
        BiasSilu,
        BiasResidual,
    }

    /// `x · W` as `expr` (the second input `[O, I]`), then `then`.
    fn model(expr: &str, x: &[usize], o: usize, then: Then) -> TypedModel {
        let mut m = TypedModel::default();
        let a = m.add_source("x", f32::fact(x)).unwrap();
        let op = EinSum { axes: expr.parse().unwrap(), operating_dt: f32::datum_type(), q_params: None };
        let (inputs, outputs) = op.axes.to_strs();
        let i_axis = inputs[1].chars().nth(1).unwrap();
        let i = x[inputs[0].chars().position(|c| c == i_axis).unwrap()];
        let values: Vec<f32> = (0..o * i).map(|k| (k as f32 * 0.731).sin() * 0.3).collect();
        let w = m.add_const("w", Tensor::from_shape(&[o, i], &values).unwrap()).unwrap();
        let mut y = m.wire_node("conv", op, &[a, w]).unwrap()[0];
        if !matches!(then, Then::Nothing) {
            let out = m.outlet_fact(y).unwrap().shape.as_concrete().unwrap().to_vec();
            let o_pos = outputs[0].chars().position(|c| c == inputs[1].chars().next().unwrap()).unwrap();
            let mut shape = vec![1; out.len()];
            shape[o_pos] = o;
            let bias: Vec<f32> = (0..o).map(|k| (k as f32 * 0.29).cos()).collect();
            let b = m.add_const("b", Tensor::from_shape(&shape, &bias).unwrap()).unwrap();
            y = m.wire_node("bias", add(), &[y, b]).unwrap()[0];
            if matches!(then, Then::BiasSilu) {
                y = m.wire_node("silu", ElementWiseOp(Box::new(Silu {}), None), &[y]).unwrap()[0];
            }
            if matches!(then, Then::BiasResidual) {
                let r = m.add_source("r", f32::fact(&out)).unwrap();
                y = m.wire_node("residual", add(), &[y, r]).unwrap()[0];
            }
        }
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    fn values(shape: &[usize], phase: f32) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_shape(shape, &(0..n).map(|i| (i as f32 * 0.37 + phase).cos()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn matches_tract_einsum_and_followers() {
        let cases: [(&str, &[usize], usize, Then); 7] = [
            // EfficientNet's expansion: channel-first in, channel-last out.
            ("NIHW,OI->HWO", &[1, 16, 8, 8], 40, Then::BiasSilu),
            // Its projection with the residual: channel-last in, channel-first out.
            ("HWI,OI->NOHW", &[6, 6, 24], 20, Then::BiasResidual),
            // 25 pixels: a short last tile.
            ("NHWI,OI->NOHW", &[1, 5, 5, 32], 16, Then::Bias),
            // A batch, 16 pixels an image, 30 channels: a partial block.
            ("NIHW,OI->NHWO", &[3, 8, 4, 4], 30, Then::BiasSilu),
            // 2x2 planes, 100 channels.
            ("NIHW,OI->HWO", &[1, 48, 2, 2], 100, Then::Bias),
            ("NIHW,OI->HWO", &[1, 7, 3, 3], 9, Then::Nothing),
            // Both channel-last.
            ("NHWI,OI->NHWO", &[2, 3, 5, 12], 33, Then::BiasResidual),
        ];
        for (expr, x, o, then) in cases {
            let generic = model(expr, x, o, then);
            let mut ours = generic.clone();
            assert_eq!(rewrite(&mut ours).unwrap(), 1, "{expr}");
            let ours = ours.into_optimized().unwrap();
            assert!(ours.nodes.iter().any(|n| n.op_is::<Pointwise>()), "{expr}");
            let mut input = tvec![values(x, 0.0).into_tvalue()];
            if matches!(then, Then::BiasResidual) {
                let out = generic.output_fact(0).unwrap().shape.as_concrete().unwrap().to_vec();
                input.push(values(&out, 0.5).into_tvalue());
            }
            let want = generic.into_optimized().unwrap().into_runnable().unwrap().run(input.clone()).unwrap().remove(0);
            let got = ours.into_runnable().unwrap().run(input).unwrap().remove(0);
            crate::ops::flat::assert_tensors_close(&want, &got, 1e-5, &format!("{expr} {then:?}"));
        }
    }

    /// Every register tile against an f64 reference, whatever this CPU
    /// picks, so that a machine with AVX-512 also checks the AVX2 tiles and
    /// the reverse (tiles the CPU cannot run take the portable loop).
    #[test]
    fn every_tile_agrees_with_f64() {
        let (cin, cout, pixels) = (37, 53, 23);
        let w = |o: usize, i: usize| ((o * cin + i) as f32 * 0.731).sin();
        let bias: Vec<f32> = (0..cout).map(|o| (o as f32 * 0.29).cos()).collect();
        let x: Vec<f32> = (0..pixels * cin).map(|k| (k as f32 * 0.37).cos()).collect();
        // Channel-first in (pixel stride 1), channel-last out.
        let input = Input::strided(Strides { batch: 0, pixel: 1, channel: pixels }, pixels, cin);
        let output = Strides { batch: 0, pixel: cout, channel: 1 };
        let mut want = vec![0f32; pixels * cout];
        for p in 0..pixels {
            for o in 0..cout {
                let s: f64 = (0..cin).map(|i| f64::from(w(o, i)) * f64::from(x[i * pixels + p])).sum();
                want[p * cout + o] = (s + f64::from(bias[o])) as f32;
            }
        }
        let widths: Vec<_> = crate::kernels::Isa::available().map(crate::kernels::Isa::name).collect();
        eprintln!("pointwise tiles checked under: {}", widths.join(", "));
        for (isa, tile) in
            crate::kernels::Isa::available().flat_map(|i| [(6, 16), (4, 24), (6, 32), (4, 48)].map(|t| (i, t)))
        {
            let op = Pointwise::tiled(
                tile,
                [cin, cout],
                [1, pixels],
                w,
                &bias,
                false,
                false,
                (input.clone(), output),
                [tvec![cin, pixels], tvec![pixels, cout]],
            )
            .unwrap();
            let mut got = vec![f32::NAN; pixels * cout];
            crate::kernels::Isa::capped(isa, || op.run_into(&x, None, &mut got)).unwrap();
            crate::ops::flat::assert_close(&want, &got, 1e-5, &format!("tile {tile:?} under {}", isa.name()));
        }
    }

    /// Split over threads, by tiles (wide planes) or by tiles and channel
    /// groups (a 2x2 plane has one tile), every layout gives the serial
    /// path's bits, under every vector width.
    #[test]
    fn parts_give_the_serial_bits_at_every_thread_count() {
        // (tile, cin, cout, batch, pixels, silu, residual, channel-first out)
        let cases = [
            ((6, 16), 37, 53, 1, 64, true, true, false),
            ((4, 24), 48, 100, 1, 4, true, false, false),
            ((6, 32), 19, 70, 3, 16, false, true, true),
            ((4, 48), 23, 200, 2, 9, true, true, false),
        ];
        for (tile, cin, cout, batch, pixels, silu, residual, channel_first) in cases {
            let w = |o: usize, i: usize| ((o * cin + i) as f32 * 0.731).sin();
            let bias: Vec<f32> = (0..cout).map(|o| (o as f32 * 0.29).cos()).collect();
            let n = batch * pixels;
            let x: Vec<f32> = (0..n * cin).map(|k| (k as f32 * 0.37).cos()).collect();
            let r: Vec<f32> = (0..n * cout).map(|k| (k as f32 * 0.11).sin()).collect();
            let input = Input::strided(Strides { batch: pixels * cin, pixel: cin, channel: 1 }, pixels, cin);
            let output = if channel_first {
                Strides { batch: cout * pixels, pixel: 1, channel: pixels }
            } else {
                Strides { batch: pixels * cout, pixel: cout, channel: 1 }
            };
            let op = Pointwise::tiled(
                tile,
                [cin, cout],
                [batch, pixels],
                w,
                &bias,
                silu,
                residual,
                (input, output),
                [tvec![batch, pixels, cin], tvec![batch, pixels, cout]],
            )
            .unwrap();
            let r = residual.then_some(&r[..]);
            let weights = op.weights.try_as_plain_ram().unwrap();
            let packed = op.bias.try_as_plain_ram().unwrap();
            let (weights, packed) = (weights.as_slice::<f32>().unwrap(), packed.as_slice::<f32>().unwrap());
            for isa in crate::kernels::Isa::available() {
                let mut serial = vec![f32::NAN; n * cout];
                crate::kernels::Isa::capped(isa, || op.run_into(&x, r, &mut serial)).unwrap();
                assert!(serial.iter().all(|v| v.is_finite()));
                for threads in [1, 2, 3] {
                    let mut split = vec![f32::NAN; n * cout];
                    crate::kernels::parts::with_threads(threads, || {
                        crate::kernels::Isa::capped(isa, || op.run_parts(threads, &x, r, &mut split, weights, packed))
                    })
                    .unwrap();
                    let same = serial.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "tile {tile:?}, {threads} threads, {}: not the serial bits", isa.name());
                }
            }
        }
    }

    #[test]
    fn leaves_other_einsums_to_tract() {
        // The pixels are summed away: not a convolution.
        let mut m = model("NIHW,OI->NO", &[1, 8, 3, 3], 4, Then::Nothing);
        assert_eq!(rewrite(&mut m).unwrap(), 0);
        // One pixel: MatVec's.
        let mut m = model("NHWI,OI->NHWO", &[1, 1, 1, 8], 4, Then::Nothing);
        assert_eq!(rewrite(&mut m).unwrap(), 0);
    }
}
