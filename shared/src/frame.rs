//! Frames: their format, the preprocessing a backbone expects, and raw
//! camera frames to backbone input, the one implementation the device (at
//! inference) and the host (for training data, statistics fitting and
//! evaluation) both run, so they see identical pixels.
//!
//! It sits beneath the statistics file (which records the [`Preprocess`]
//! its backbone needs) and the protocol (which carries [`FrameFormat`]s),
//! and depends on neither.
//!
//! Frames are `u8`, row-major, channels interleaved (HWC), grey or RGB, any
//! size. The output is `f32`, planar (CHW), resized with bilinear
//! interpolation on pixel centres (PyTorch's `align_corners=False`, no
//! antialiasing) and normalised with the bundle's channel mean and std.

use serde::{Deserialize, Serialize};

/// Pixel layout of a raw frame: `u8`, row-major, channels interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameFormat {
    /// Pixels per row.
    pub width: u16,
    /// Rows.
    pub height: u16,
    /// 1 (grey) or 3 (RGB).
    pub channels: u8,
}

impl FrameFormat {
    /// Bytes of a frame of this format.
    pub fn len(&self) -> usize {
        self.width as usize * self.height as usize * self.channels as usize
    }
    /// Whether a frame of this format holds no pixels (never valid).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Image preprocessing the backbone expects, recorded with its statistics
/// so a device can refuse a mismatched pair and prepare frames itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Preprocess {
    /// Input width in pixels (0: unknown, for heads without a backbone).
    pub width: u16,
    /// Input height in pixels.
    pub height: u16,
    /// Channels the backbone takes (3); grey frames are replicated.
    pub channels: u8,
    /// Per-channel mean subtracted from pixels scaled to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation they are divided by.
    pub std: [f32; 3],
}

impl Preprocess {
    /// `Err(what)` if a normalisation constant is not finite or a set
    /// standard deviation is not positive (a zero `Preprocess`, written by
    /// heads that do not know their backbone, is accepted).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite()) {
            return Err("preprocessing mean or std is not finite");
        }
        if self.width != 0 && self.std.iter().take(usize::from(self.channels.clamp(1, 3))).any(|&s| s <= 0.0) {
            return Err("preprocessing std is not positive");
        }
        Ok(())
    }
}

/// Why a frame could not become backbone input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages print
pub enum PreprocessError {
    /// A format with a zero side or a channel count other than 1 or 3.
    #[error("frame is {width}x{height}x{channels}; widths, heights and 1 or 3 channels are required")]
    BadFormat { width: u16, height: u16, channels: u8 },
    /// The frame's bytes do not match its format.
    #[error("frame holds {got} bytes, its format says {expected}")]
    FrameLength { expected: usize, got: usize },
    /// The output buffer is not the backbone input's size.
    #[error("output holds {got} values, the backbone input needs {expected}")]
    OutputLength { expected: usize, got: usize },
}

/// Number of `f32` values of the backbone input.
pub fn input_len(p: &Preprocess) -> usize {
    p.channels as usize * p.height as usize * p.width as usize
}

/// The frame that needs no resizing: the backbone's input size and
/// channels (what the host shrinks larger photos to).
pub fn input_format(p: &Preprocess) -> FrameFormat {
    FrameFormat { width: p.width, height: p.height, channels: p.channels }
}

/// Source coordinate and weight of output pixel `o` for a resize from `src`
/// to `dst` samples (half-pixel centres, clamped at the borders).
#[inline]
fn taps(o: usize, src: usize, dst: usize) -> (usize, usize, f32) {
    let scale = src as f32 / dst as f32;
    let x = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
    let x0 = (x as usize).min(src - 1);
    let x1 = (x0 + 1).min(src - 1);
    (x0, x1, x - x0 as f32)
}

/// A validated frame: `w * h * C` bytes.
struct Frame<'a> {
    data: &'a [u8],
    w: usize,
    h: usize,
}

impl Frame<'_> {
    /// Source channel `ch` at (x, y), mapped to the output's `OC` channels:
    /// grey is replicated to RGB, RGB becomes luma for grey models.
    #[inline(always)]
    fn pixel<const C: usize, const OC: usize>(&self, x: usize, y: usize, ch: usize) -> f32 {
        let px = &self.data[(y * self.w + x) * C..][..C];
        if C == 1 {
            f32::from(px[0])
        } else if OC == 1 {
            0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2])
        } else {
            f32::from(px[ch])
        }
    }
}

/// Bilinear resize and normalisation of a `C`-channel frame into `OC`
/// planes. Every output value is the same expression of the same taps as
/// in a plain per-pixel loop (a test holds it to one, bit for bit).
fn convert<const C: usize, const OC: usize>(frame: &Frame, p: &Preprocess, out: &mut [f32]) {
    let (ow, oh) = (p.width as usize, p.height as usize);
    for ch in 0..OC {
        let mean = p.mean[ch.min(2)];
        let inv_std = 1.0 / p.std[ch.min(2)];
        let plane = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for (oy, row) in plane.chunks_exact_mut(ow).enumerate() {
            let (y0, y1, fy) = taps(oy, frame.h, oh);
            for (ox, o) in row.iter_mut().enumerate() {
                let (x0, x1, fx) = taps(ox, frame.w, ow);
                let top = frame.pixel::<C, OC>(x0, y0, ch) * (1.0 - fx) + frame.pixel::<C, OC>(x1, y0, ch) * fx;
                let bottom = frame.pixel::<C, OC>(x0, y1, ch) * (1.0 - fx) + frame.pixel::<C, OC>(x1, y1, ch) * fx;
                let v = (top * (1.0 - fy) + bottom * fy) / 255.0;
                *o = (v - mean) * inv_std;
            }
        }
    }
}

/// Converts one frame. Allocation-free; `out` must hold [`input_len`] values.
pub fn frame_to_input(
    frame: &[u8],
    format: FrameFormat,
    p: &Preprocess,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let (w, h, c) = (format.width as usize, format.height as usize, format.channels as usize);
    if w == 0 || h == 0 || !(c == 1 || c == 3) || !(p.channels == 1 || p.channels == 3) || p.width == 0 || p.height == 0
    {
        return Err(PreprocessError::BadFormat {
            width: format.width,
            height: format.height,
            channels: format.channels,
        });
    }
    if frame.len() != format.len() {
        return Err(PreprocessError::FrameLength { expected: format.len(), got: frame.len() });
    }
    let expected = input_len(p);
    if out.len() != expected {
        return Err(PreprocessError::OutputLength { expected, got: out.len() });
    }
    let frame = Frame { data: frame, w, h };
    // One loop per channel combination, so the choice between replicate,
    // luma and copy is made once per frame, not once per tap.
    match (c, p.channels) {
        (1, 1) => convert::<1, 1>(&frame, p, out),
        (1, _) => convert::<1, 3>(&frame, p, out),
        (_, 1) => convert::<3, 1>(&frame, p, out),
        _ => convert::<3, 3>(&frame, p, out),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::{vec, vec::Vec};

    fn pre(w: u16, h: u16) -> Preprocess {
        Preprocess { width: w, height: h, channels: 3, mean: [0.0; 3], std: [1.0; 3] }
    }

    #[test]
    fn identity_size_copies_and_normalises() {
        let frame = [0u8, 51, 102, 153, 204, 255];
        let mut out = [0.0f32; 6];
        let p = Preprocess { width: 2, height: 1, channels: 3, mean: [0.5; 3], std: [0.5; 3] };
        frame_to_input(&frame, FrameFormat { width: 2, height: 1, channels: 3 }, &p, &mut out).unwrap();
        // Planar: R of both pixels, then G, then B.
        let want = [0.0, 0.6, 0.2, 0.8, 0.4, 1.0].map(|v: f32| (v - 0.5) / 0.5);
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn upscaling_matches_pytorch_bilinear() {
        // torch.nn.functional.interpolate([[0, 255]], size=4, mode="bilinear",
        // align_corners=False) gives [0, 63.75, 191.25, 255].
        let frame = [0u8, 255];
        let mut out = [0.0f32; 4];
        let p = Preprocess { width: 4, height: 1, channels: 1, mean: [0.0; 3], std: [1.0; 3] };
        frame_to_input(&frame, FrameFormat { width: 2, height: 1, channels: 1 }, &p, &mut out).unwrap();
        let want = [0.0, 63.75, 191.25, 255.0].map(|v| v / 255.0);
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    /// The per-pixel loop the conversion started as.
    fn reference(frame: &[u8], format: FrameFormat, p: &Preprocess, out: &mut [f32]) {
        let (w, h, c) = (format.width as usize, format.height as usize, format.channels as usize);
        let (ow, oh, oc) = (p.width as usize, p.height as usize, p.channels as usize);
        let pixel = |x: usize, y: usize, ch: usize| -> f32 {
            let base = (y * w + x) * c;
            match (c, oc) {
                (1, _) => f32::from(frame[base]),
                (3, 1) => {
                    0.299 * f32::from(frame[base])
                        + 0.587 * f32::from(frame[base + 1])
                        + 0.114 * f32::from(frame[base + 2])
                }
                _ => f32::from(frame[base + ch]),
            }
        };
        for ch in 0..oc {
            let mean = p.mean[ch.min(2)];
            let inv_std = 1.0 / p.std[ch.min(2)];
            for oy in 0..oh {
                let (y0, y1, fy) = taps(oy, h, oh);
                for ox in 0..ow {
                    let (x0, x1, fx) = taps(ox, w, ow);
                    let top = pixel(x0, y0, ch) * (1.0 - fx) + pixel(x1, y0, ch) * fx;
                    let bottom = pixel(x0, y1, ch) * (1.0 - fx) + pixel(x1, y1, ch) * fx;
                    let v = (top * (1.0 - fy) + bottom * fy) / 255.0;
                    out[ch * oh * ow + oy * ow + ox] = (v - mean) * inv_std;
                }
            }
        }
    }

    #[test]
    fn conversion_is_the_per_pixel_loop_bit_for_bit() {
        let sizes = [(28u16, 28u16), (32, 32), (64, 64), (17, 5), (1, 1), (100, 37)];
        for (fw, fh) in sizes {
            for fc in [1u8, 3] {
                for (pw, ph, pc) in [(64u16, 64u16, 3u8), (28, 28, 1), (9, 13, 3)] {
                    let format = FrameFormat { width: fw, height: fh, channels: fc };
                    let frame: Vec<u8> = (0..format.len()).map(|i| (i * 131 % 256) as u8).collect();
                    let p = Preprocess {
                        width: pw,
                        height: ph,
                        channels: pc,
                        mean: [0.4, 0.5, 0.6],
                        std: [0.2, 0.25, 0.3],
                    };
                    let (mut got, mut want) = (vec![0f32; input_len(&p)], vec![1f32; input_len(&p)]);
                    frame_to_input(&frame, format, &p, &mut got).unwrap();
                    reference(&frame, format, &p, &mut want);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{format:?} -> {pw}x{ph}x{pc}");
                }
            }
        }
    }

    #[test]
    fn grey_is_replicated_and_bad_input_refused() {
        let frame = [10u8; 4];
        let mut out = [0.0f32; 12];
        frame_to_input(&frame, FrameFormat { width: 2, height: 2, channels: 1 }, &pre(2, 2), &mut out).unwrap();
        assert!(out.iter().all(|&v| (v - 10.0 / 255.0).abs() < 1e-6));
        let bad = FrameFormat { width: 2, height: 2, channels: 2 };
        assert!(matches!(frame_to_input(&frame, bad, &pre(2, 2), &mut out), Err(PreprocessError::BadFormat { .. })));
        let fmt = FrameFormat { width: 2, height: 2, channels: 3 };
        assert_eq!(
            frame_to_input(&frame, fmt, &pre(2, 2), &mut out),
            Err(PreprocessError::FrameLength { expected: 12, got: 4 })
        );
        assert_eq!(
            frame_to_input(&frame, FrameFormat { width: 2, height: 2, channels: 1 }, &pre(2, 2), &mut out[..5]),
            Err(PreprocessError::OutputLength { expected: 12, got: 5 })
        );
    }
}
