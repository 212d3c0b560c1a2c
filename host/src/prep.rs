//! Dataset images to backbone inputs, through the same preprocessing code
//! the device runs (`gaussedge_shared::preprocess`).

use crate::data::Dataset;
use gaussedge_shared::frame::{frame_to_input, input_format, input_len};
use gaussedge_shared::stats::Preprocess;
use serde::{Deserialize, Serialize};

/// Channel mean and standard deviation of the training images (on the
/// 0..1 scale), recorded in the bundle so the device normalises the same way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Measured on `idx` of `ds`. Grey images give the same value for all
    /// three channels (they are replicated into RGB).
    pub fn of(ds: &Dataset, idx: &[usize]) -> Self {
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        let mut n = 0f64;
        for &i in idx {
            let s = &ds.samples[i];
            let c = s.format.channels as usize;
            for px in s.pixels.chunks_exact(c) {
                for ch in 0..3 {
                    let v = px[if c == 1 { 0 } else { ch }] as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
                n += 1.0;
            }
        }
        let n = n.max(1.0);
        let mean = sum.map(|s| s / n);
        let std: Vec<f64> = (0..3).map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-8).sqrt()).collect();
        Normalization { mean: mean.map(|m| m as f32), std: [std[0] as f32, std[1] as f32, std[2] as f32] }
    }

    pub fn preprocess(&self, size: u16) -> Preprocess {
        Preprocess { width: size, height: size, channels: 3, mean: self.mean, std: self.std }
    }
}

/// Preprocessed inputs of the samples `idx`, concatenated (`NCHW`): each
/// image fitted as it would be sent to a device, then converted by the
/// device's own code.
pub fn inputs(ds: &Dataset, idx: &[usize], pre: &Preprocess) -> anyhow::Result<Vec<f32>> {
    let len = input_len(pre);
    let target = input_format(pre);
    let mut out = vec![0f32; idx.len() * len];
    for (k, &i) in idx.iter().enumerate() {
        let s = crate::data::photo::fit_frame(&ds.samples[i], target);
        frame_to_input(&s.pixels, s.format, pre, &mut out[k * len..(k + 1) * len])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{self, Sample};
    use gaussedge_shared::wire::FrameFormat;

    /// One photo, two ways to a backbone input: as `learn --from` and
    /// `predict` send it to a device (read, fitted, then the device's
    /// conversion), and as `fit` and `eval` extract features from an image
    /// folder. The inputs must be the same, bit for bit.
    #[test]
    fn a_photo_reaches_the_backbone_as_the_same_input_through_a_device_or_feature_extraction() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("mug");
        std::fs::create_dir_all(&class).unwrap();
        let (w, h) = (1600u16, 1200u16);
        let pixels = (0..usize::from(w) * usize::from(h) * 3).map(|i| ((i * 37) ^ (i / 4800)) as u8).collect();
        let photo = Sample { label: 0, format: FrameFormat { width: w, height: h, channels: 3 }, pixels };
        let path = class.join("photo.png");
        data::write_png(&photo, &path).unwrap();
        for channels in [3, 1] {
            let pre = Preprocess { width: 64, height: 48, channels, mean: [0.4, 0.5, 0.6], std: [0.2, 0.25, 0.3] };
            let folder = data::load_folder(dir.path()).unwrap();
            let extracted = inputs(&folder, &[0], &pre).unwrap();
            let frame = data::photo::read_photo(&path, 0, input_format(&pre)).unwrap();
            assert_eq!(frame.format, input_format(&pre), "the link carries an input-sized frame");
            let mut device = vec![0f32; input_len(&pre)];
            frame_to_input(&frame.pixels, frame.format, &pre, &mut device).unwrap();
            assert_eq!(extracted, device, "{channels} channels");
        }
    }
}
