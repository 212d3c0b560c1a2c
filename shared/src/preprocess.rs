//! Raw camera frames to backbone input, the one implementation the device
//! (at inference) and the host (for training data, statistics fitting and
//! evaluation) both run, so they see identical pixels.
//!
//! Frames are `u8`, row-major, channels interleaved (HWC), grey or RGB, any
//! size. The output is `f32`, planar (CHW), resized with bilinear
//! interpolation on pixel centres (PyTorch's `align_corners=False`, no
//! antialiasing) and normalised with the bundle's channel mean and std.

use crate::stats::Preprocess;
use crate::wire::FrameFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("frame is {width}x{height}x{channels}; widths, heights and 1 or 3 channels are required")]
    BadFormat { width: u16, height: u16, channels: u8 },
    #[error("frame holds {got} bytes, its format says {expected}")]
    FrameLength { expected: usize, got: usize },
    #[error("output holds {got} values, the backbone input needs {expected}")]
    OutputLength { expected: usize, got: usize },
}

/// Number of `f32` values of the backbone input.
pub fn input_len(p: &Preprocess) -> usize {
    p.channels as usize * p.height as usize * p.width as usize
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
    let (ow, oh, oc) = (p.width as usize, p.height as usize, p.channels as usize);
    // Value of source channel `ch` at (x, y), mapped to the output's
    // channels: grey is replicated to RGB, RGB becomes luma for grey models.
    let pixel = |x: usize, y: usize, ch: usize| -> f32 {
        let base = (y * w + x) * c;
        match (c, oc) {
            (1, _) => f32::from(frame[base]),
            (3, 1) => {
                0.299 * f32::from(frame[base]) + 0.587 * f32::from(frame[base + 1]) + 0.114 * f32::from(frame[base + 2])
            }
            _ => f32::from(frame[base + ch]),
        }
    };
    for ch in 0..oc {
        let mean = p.mean[ch.min(2)];
        let inv_std = 1.0 / p.std[ch.min(2)];
        let plane = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for oy in 0..oh {
            let (y0, y1, fy) = taps(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, fx) = taps(ox, w, ow);
                let top = pixel(x0, y0, ch) * (1.0 - fx) + pixel(x1, y0, ch) * fx;
                let bottom = pixel(x0, y1, ch) * (1.0 - fx) + pixel(x1, y1, ch) * fx;
                let v = (top * (1.0 - fy) + bottom * fy) / 255.0;
                plane[oy * ow + ox] = (v - mean) * inv_std;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
