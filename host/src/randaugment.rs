//! RandAugment (Cubuk et al. 2020): every training image gets `ops`
//! operations drawn uniformly from a fixed list of 14, each at one shared
//! magnitude. Why this policy: a network trained on half of CIFAR-10 learns
//! what tells those five classes apart and little else; distortions of
//! colour, contrast and geometry that keep the label force it to describe
//! the object more fully, which is what features for unseen classes and
//! novelty scores need (Vaze et al. 2022 list it among the levers that lift
//! open-set figures through closed-set accuracy). Two numbers, no learned
//! policy, nothing tuned on unseen classes.
//!
//! The operations and magnitudes follow torchvision's `RandAugment` (31
//! magnitude bins, a random sign for the signed operations, nearest-pixel
//! sampling for the geometric ones), on planar RGB images with values in
//! `[0, 1]`. Two departures, both for this trainer's inputs: geometric
//! operations turn about the image centre (torchvision shears about the
//! corner), and pixels they uncover take the training set's mean colour,
//! as the crop's padding and cutout do, instead of black.
//!
//! Plain Rust on `f32` slices, no tensors: each operation is a few lines a
//! test can check by hand, and the loop can move off the training thread.

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Magnitude bins, as torchvision's `num_magnitude_bins`: magnitude `m`
/// reads as `m / 30` of each operation's range.
pub const BINS: u8 = 31;

/// The policy's two numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandAugment {
    /// Operations applied to each image, one after the other (the paper's N).
    pub ops: u8,
    /// Shared magnitude, `0..BINS` (the paper's M; 9 is its CIFAR setting).
    pub magnitude: u8,
}

impl std::str::FromStr for RandAugment {
    type Err = String;

    /// `N,M`, e.g. `2,9`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, m) = s.split_once(',').ok_or_else(|| format!("expected N,M (e.g. 2,9), not {s:?}"))?;
        let ops: u8 = n.trim().parse().map_err(|_| format!("N must be a small whole number, not {n:?}"))?;
        let magnitude: u8 = m.trim().parse().map_err(|_| format!("M must be a whole number, not {m:?}"))?;
        if !(1..=4).contains(&ops) {
            return Err(format!("N (operations per image) must be 1 to 4, not {ops}"));
        }
        if magnitude >= BINS {
            return Err(format!("M (magnitude) must be below {BINS}, not {magnitude}"));
        }
        Ok(RandAugment { ops, magnitude })
    }
}

/// One operation of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

/// torchvision's list, in its order.
pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// A planar image (`[channel][row][column]`), values in `[0, 1]`.
pub struct Image<'a> {
    pub data: &'a mut [f32],
    pub channels: usize,
    pub side: usize,
}

impl Image<'_> {
    fn plane(&self) -> usize {
        self.side * self.side
    }

    /// ITU-R 601 luma per pixel (PIL's and torchvision's grey); a grey
    /// image is its own luma.
    fn luma(&self) -> Vec<f32> {
        let p = self.plane();
        if self.channels < 3 {
            return self.data[..p].to_vec();
        }
        (0..p).map(|i| 0.299 * self.data[i] + 0.587 * self.data[p + i] + 0.114 * self.data[2 * p + i]).collect()
    }
}

impl RandAugment {
    /// Applies `ops` random operations to `img`; `fill` is the colour of
    /// uncovered pixels (one value per channel, in `[0, 1]`).
    pub fn apply(&self, img: &mut Image, fill: &[f32], rng: &mut Rng) {
        for _ in 0..self.ops {
            let op = OPS[rng.below(OPS.len() as u64) as usize];
            let negate = rng.below(2) == 1;
            op.apply(img, self.magnitude, negate, fill);
        }
    }
}

impl Op {
    /// Whether the magnitude's sign is drawn (the rest have no direction).
    pub fn signed(self) -> bool {
        matches!(
            self,
            Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Rotate
                | Op::Brightness
                | Op::Color
                | Op::Contrast
                | Op::Sharpness
        )
    }

    /// The operation at magnitude bin `m` (negated if `negate` and the
    /// operation is signed).
    pub fn apply(self, img: &mut Image, m: u8, negate: bool, fill: &[f32]) {
        let t = f32::from(m.min(BINS - 1)) / f32::from(BINS - 1);
        let sign = if negate && self.signed() { -1.0 } else { 1.0 };
        let side = img.side as f32;
        match self {
            Op::Identity => {}
            Op::ShearX => warp(img, fill, |x, y| (x + sign * 0.3 * t * y, y)),
            Op::ShearY => warp(img, fill, |x, y| (x, y + sign * 0.3 * t * x)),
            // torchvision: up to 150/331 of the side (the paper's 150 px on 331).
            Op::TranslateX => {
                let d = sign * t * 150.0 / 331.0 * side;
                warp(img, fill, |x, y| (x - d, y))
            }
            Op::TranslateY => {
                let d = sign * t * 150.0 / 331.0 * side;
                warp(img, fill, |x, y| (x, y - d))
            }
            Op::Rotate => {
                let (s, c) = (sign * 30.0 * t).to_radians().sin_cos();
                // Output pixel `p` shows source `R(-angle) p`.
                warp(img, fill, |x, y| (c * x + s * y, -s * x + c * y))
            }
            Op::Brightness => blend_with(img, 1.0 + sign * 0.9 * t, |_, _| 0.0),
            Op::Color => {
                let grey = img.luma();
                blend_with(img, 1.0 + sign * 0.9 * t, |_, i| grey[i])
            }
            Op::Contrast => {
                let grey = img.luma();
                let mean = grey.iter().sum::<f32>() / grey.len().max(1) as f32;
                blend_with(img, 1.0 + sign * 0.9 * t, |_, _| mean)
            }
            Op::Sharpness => {
                let (smooth, p) = (smoothed(img), img.plane());
                blend_with(img, 1.0 + sign * 0.9 * t, |ch, i| smooth[ch * p + i])
            }
            Op::Posterize => {
                // torchvision: 8 - round(m / 7.5) bits, 4 at the top bin.
                let bits = 8 - (f32::from(m.min(BINS - 1)) / 7.5).round() as u32;
                let mask = 0xFFu32 << (8 - bits) & 0xFF;
                for v in img.data.iter_mut() {
                    *v = (to_u8(*v) & mask) as f32 / 255.0;
                }
            }
            Op::Solarize => {
                let threshold = 1.0 - t;
                for v in img.data.iter_mut() {
                    if *v >= threshold {
                        *v = 1.0 - *v;
                    }
                }
            }
            Op::AutoContrast => {
                let p = img.plane();
                for plane in img.data.chunks_exact_mut(p) {
                    let lo = plane.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = plane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if hi > lo {
                        plane.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
                    }
                }
            }
            Op::Equalize => {
                let p = img.plane();
                for plane in img.data.chunks_exact_mut(p) {
                    equalize(plane);
                }
            }
        }
    }
}

/// `v` in `[0, 1]` as the byte PIL would hold.
fn to_u8(v: f32) -> u32 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u32
}

/// `degenerate + factor (img - degenerate)`, clamped to `[0, 1]` (PIL's
/// `ImageEnhance`): `degenerate(channel, pixel)`.
fn blend_with(img: &mut Image, factor: f32, degenerate: impl Fn(usize, usize) -> f32) {
    let p = img.plane();
    for (ch, plane) in img.data.chunks_exact_mut(p).enumerate() {
        for (i, v) in plane.iter_mut().enumerate() {
            let d = degenerate(ch, i);
            *v = (d + factor * (*v - d)).clamp(0.0, 1.0);
        }
    }
}

/// PIL's SMOOTH filter (`[[1,1,1],[1,5,1],[1,1,1]] / 13`) inside the
/// image, the original on its one-pixel border, as `ImageEnhance.Sharpness`
/// blends against.
fn smoothed(img: &Image) -> Vec<f32> {
    let (s, p) = (img.side, img.plane());
    let mut out = img.data.to_vec();
    for ch in 0..img.channels {
        let src = &img.data[ch * p..(ch + 1) * p];
        for y in 1..s.saturating_sub(1) {
            for x in 1..s - 1 {
                let mut sum = 4.0 * src[y * s + x];
                for dy in 0..3 {
                    for dx in 0..3 {
                        sum += src[(y + dy - 1) * s + x + dx - 1];
                    }
                }
                out[ch * p + y * s + x] = sum / 13.0;
            }
        }
    }
    out
}

/// Resamples every channel: output pixel `(x, y)`, taken relative to the
/// image centre, shows the source pixel `source(x, y)` (also relative to
/// the centre), nearest neighbour; sources outside the image take `fill`.
fn warp(img: &mut Image, fill: &[f32], source: impl Fn(f32, f32) -> (f32, f32)) {
    let (s, p) = (img.side, img.plane());
    let c = (s as f32 - 1.0) / 2.0;
    let from: Vec<Option<usize>> = (0..p)
        .map(|i| {
            let (sx, sy) = source((i % s) as f32 - c, (i / s) as f32 - c);
            let (sx, sy) = ((sx + c).round(), (sy + c).round());
            (sx >= 0.0 && sy >= 0.0 && sx < s as f32 && sy < s as f32).then(|| sy as usize * s + sx as usize)
        })
        .collect();
    let src = img.data.to_vec();
    for (ch, plane) in img.data.chunks_exact_mut(p).enumerate() {
        let f = fill.get(ch).copied().unwrap_or(0.0);
        for (v, from) in plane.iter_mut().zip(&from) {
            *v = from.map_or(f, |j| src[ch * p + j]);
        }
    }
}

/// Histogram equalisation of one channel on its byte values, as PIL's
/// `ImageOps.equalize` (and torchvision's tensor version) computes it.
fn equalize(plane: &mut [f32]) {
    let mut hist = [0usize; 256];
    for v in plane.iter() {
        hist[to_u8(*v) as usize] += 1;
    }
    let last = hist.iter().rposition(|&h| h > 0).map_or(0, |i| hist[i]);
    let step = (plane.len() - last) / 255;
    if step == 0 {
        return;
    }
    let mut lut = [0u32; 256];
    let mut n = step / 2;
    for (b, h) in hist.iter().enumerate() {
        lut[b] = (n / step).min(255) as u32;
        n += h;
    }
    for v in plane.iter_mut() {
        *v = lut[to_u8(*v) as usize] as f32 / 255.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(side: usize, channels: usize) -> Vec<f32> {
        (0..channels * side * side).map(|i| ((i * 37) % 251) as f32 / 255.0).collect()
    }

    fn run(op: Op, data: &[f32], side: usize, m: u8, negate: bool) -> Vec<f32> {
        let mut out = data.to_vec();
        op.apply(&mut Image { data: &mut out, channels: data.len() / (side * side), side }, m, negate, &[0.5; 3]);
        out
    }

    #[test]
    fn parses_n_comma_m_and_refuses_what_torchvision_would_not_take() {
        assert_eq!("2,9".parse::<RandAugment>(), Ok(RandAugment { ops: 2, magnitude: 9 }));
        assert_eq!(" 1 , 30 ".parse::<RandAugment>(), Ok(RandAugment { ops: 1, magnitude: 30 }));
        for bad in ["2", "0,9", "5,9", "2,31", "a,9", "2,-1", ""] {
            assert!(bad.parse::<RandAugment>().is_err(), "{bad:?} must be refused");
        }
    }

    /// Magnitude 0 is the identity for every operation whose effect grows
    /// from nothing; the ones without a magnitude (and posterize's 8 bits of
    /// byte values) change only what is not already a byte.
    #[test]
    fn magnitude_zero_leaves_the_magnitude_operations_alone() {
        let img = ramp(8, 3);
        for op in OPS {
            if matches!(op, Op::AutoContrast | Op::Equalize | Op::Solarize) {
                continue;
            }
            let out = run(op, &img, 8, 0, false);
            for (a, b) in out.iter().zip(&img) {
                assert!((a - b).abs() <= 0.5 / 255.0, "{op:?} at magnitude 0 moved {b} to {a}");
            }
        }
        // Solarize at 0 inverts only pixels at 1.0 (torchvision: threshold 255).
        let white = vec![1.0f32; 3 * 4 * 4];
        assert!(run(Op::Solarize, &white, 4, 0, false).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn translation_moves_pixels_and_fills_what_it_uncovers() {
        let side = 33; // 150/331 * 33 * 10/30 = 4.98 -> 5 pixels at m = 10
        let img = ramp(side, 3);
        let out = run(Op::TranslateX, &img, side, 10, false);
        for ch in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let got = out[ch * side * side + y * side + x];
                    let want = if x >= 5 { img[ch * side * side + y * side + x - 5] } else { 0.5 };
                    assert_eq!(got, want, "channel {ch} ({x}, {y})");
                }
            }
        }
        let back = run(Op::TranslateX, &img, side, 10, true);
        assert_eq!(back[side - 6], img[side - 1], "negated: moved left");
        assert_eq!(back[side - 1], 0.5);
    }

    #[test]
    fn rotation_by_the_full_thirty_degrees_keeps_the_centre_and_turns_a_corner_out() {
        let side = 9;
        let img = ramp(side, 1);
        let out = run(Op::Rotate, &img, side, 30, false);
        let centre = 4 * side + 4;
        assert_eq!(out[centre], img[centre]);
        assert_eq!(out[0], 0.5, "a corner's source leaves the image at 30 degrees");
        // A quarter turn's worth of checks: a point on the right edge's
        // middle row comes from a point rotated back by 30 degrees.
        let (s, c) = 30f32.to_radians().sin_cos();
        let (sx, sy) = (c * 4.0 + s * 0.0, -s * 4.0 + c * 0.0);
        let j = (sy + 4.0).round() as usize * side + (sx + 4.0).round() as usize;
        assert_eq!(out[4 * side + 8], img[j]);
    }

    #[test]
    fn shear_keeps_the_middle_row_or_column() {
        let side = 9;
        let img = ramp(side, 1);
        let sx = run(Op::ShearX, &img, side, 30, false);
        assert_eq!(&sx[4 * side..5 * side], &img[4 * side..5 * side], "x-shear keeps the centre row");
        assert_ne!(sx, img);
        let sy = run(Op::ShearY, &img, side, 30, true);
        for y in 0..side {
            assert_eq!(sy[y * side + 4], img[y * side + 4], "y-shear keeps the centre column");
        }
    }

    #[test]
    fn colour_operations_blend_toward_their_degenerate_image() {
        let img = ramp(6, 3);
        // Brightness at +0.9: 1.9 x, clamped.
        let b = run(Op::Brightness, &img, 6, 30, false);
        for (o, i) in b.iter().zip(&img) {
            assert!((o - (1.9 * i).min(1.0)).abs() < 1e-6);
        }
        // Colour at -0.9: 0.1 of the way from grey; a grey image is unchanged.
        let grey: Vec<f32> = (0..3 * 36).map(|i| ((i % 36) * 7) as f32 / 255.0).collect();
        let g = run(Op::Color, &grey, 6, 30, true);
        for (o, i) in g.iter().zip(&grey) {
            assert!((o - i).abs() < 1e-5, "grey stays grey");
        }
        // Contrast at -0.9 pulls every value 90% of the way to the mean grey.
        let c = run(Op::Contrast, &img, 6, 30, true);
        let luma = Image { data: &mut img.clone(), channels: 3, side: 6 }.luma();
        let mean = luma.iter().sum::<f32>() / 36.0;
        for (o, i) in c.iter().zip(&img) {
            assert!((o - (mean + 0.1 * (i - mean))).abs() < 1e-5);
        }
        // Sharpness leaves the border and a flat image alone.
        let flat = vec![0.3f32; 3 * 36];
        for v in run(Op::Sharpness, &flat, 6, 30, false) {
            assert!((v - 0.3).abs() < 1e-6, "{v}");
        }
        let s = run(Op::Sharpness, &img, 6, 30, false);
        assert_eq!(&s[..6], &img[..6], "border row kept");
    }

    #[test]
    fn byte_operations_match_pil() {
        let bytes: Vec<f32> = (0..16).map(|i| (i * 16) as f32 / 255.0).collect();
        // Posterize at m = 30: 4 bits, the low nibble cleared.
        let p = run(Op::Posterize, &bytes, 4, 30, false);
        for (o, i) in p.iter().zip(&bytes) {
            assert_eq!(to_u8(*o), to_u8(*i) & 0xF0);
        }
        // Solarize at m = 15: values at or above 0.5 are inverted.
        let s = run(Op::Solarize, &bytes, 4, 15, false);
        for (o, i) in s.iter().zip(&bytes) {
            assert_eq!(*o, if *i >= 0.5 { 1.0 - i } else { *i });
        }
        // Autocontrast stretches each channel to [0, 1].
        let narrow: Vec<f32> = (0..16).map(|i| 0.4 + 0.01 * i as f32).collect();
        let a = run(Op::AutoContrast, &narrow, 4, 0, false);
        assert!((a[0] - 0.0).abs() < 1e-6 && (a[15] - 1.0).abs() < 1e-6);
        // Equalize spreads 16 equally common values over the byte range, as
        // PIL does: lut[b] = (cumulative count before b + step / 2) / step.
        let e = run(Op::Equalize, &narrow, 4, 0, false);
        let got: Vec<u32> = e.iter().map(|v| to_u8(*v)).collect();
        // Too few pixels for a step ((16 - 1) / 255 = 0): PIL leaves it as it is.
        assert_eq!(got, narrow.iter().map(|v| to_u8(*v)).collect::<Vec<_>>());
        let big: Vec<f32> = (0..4 * 1024).map(|i| (i % 4) as f32 / 255.0).collect();
        let e = run(Op::Equalize, &big, 64, 0, false);
        let step = (4096 - 1024) / 255;
        let want = |b: usize| ((b * 1024 + step / 2) / step).min(255) as u32;
        let got: Vec<u32> = e[..4].iter().map(|v| to_u8(*v)).collect();
        assert_eq!(got, (0..4).map(want).collect::<Vec<_>>());
    }

    #[test]
    fn the_policy_is_reproducible_by_seed_and_stays_in_range() {
        let policy = RandAugment { ops: 2, magnitude: 9 };
        let img = ramp(16, 3);
        let draw = |seed| {
            let mut out = img.clone();
            policy.apply(&mut Image { data: &mut out, channels: 3, side: 16 }, &[0.5; 3], &mut Rng::new(seed));
            out
        };
        assert_eq!(draw(7), draw(7));
        let outs: Vec<Vec<f32>> = (0..32).map(draw).collect();
        assert!(outs.iter().any(|o| *o != img), "32 draws change something");
        assert!(outs.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    }
}
