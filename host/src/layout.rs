//! How the trainer lays out its 4-D tensors (convolution kernels, image
//! batches) in memory.
//!
//! libtorch's CPU convolutions (oneDNN) compute channel-last natively: given
//! NCHW memory they reorder activations and kernels on the way in and out
//! of every convolution, forward and backward. A network whose kernels and
//! inputs are laid out channel-last keeps that layout through the whole
//! graph (the batch norms, SiLUs and pools follow their input's layout), so
//! the reorders go. PyTorch's `model.to(memory_format=torch.channels_last)`
//! does this; tch 0.24 has no memory-format API, so the same strides are made
//! here with a permute to NHWC, a copy, and a permute back: the tensor keeps
//! its NCHW shape and indexing, and its memory is NHWC. Values are the same;
//! sums inside the convolutions run in another order, so a run is not
//! bit-identical to a contiguous one (each epoch's record in the run's
//! state names the layout it ran in).

use anyhow::{Context, Result};
use std::path::Path;
use tch::{nn, Tensor};

/// The trainer's memory layout for 4-D tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// NHWC memory under NCHW shapes (`torch.channels_last`).
    ChannelsLast,
    /// Plain row-major NCHW.
    Contiguous,
}

impl MemoryFormat {
    /// What `train` uses when not told: channels-last on the CPU, where it
    /// was measured faster for b0 (`bench/train-throughput.sh`); contiguous
    /// on CUDA, where it has not been measured.
    pub fn default_for(device: tch::Device) -> Self {
        if device.is_cuda() {
            MemoryFormat::Contiguous
        } else {
            MemoryFormat::ChannelsLast
        }
    }

    /// `x` in this layout (a tensor that is not 4-D is returned as is).
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            MemoryFormat::ChannelsLast if x.dim() == 4 => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
            _ => x.shallow_clone(),
        }
    }

    /// Re-lays out every 4-D variable of `vs` (the convolution kernels) in
    /// place. Run it before the optimiser is built; the variables stay the
    /// same leaves, so the network and the optimiser see the new memory.
    pub fn apply_to(self, vs: &nn::VarStore) {
        if self == MemoryFormat::Contiguous {
            return;
        }
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                if v.dim() == 4 {
                    let laid = self.apply(&v);
                    v.set_data(&laid);
                }
            }
        });
    }
}

/// Whether `x` is laid out channel-last (the strides `apply` gives).
pub fn is_channels_last(x: &Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    x.dim() == 4 && stride[1] == 1 && stride[3] == size[1] && stride[2] == size[1] * size[3]
}

/// `vs.save` for any layout: safetensors stores row-major tensors only
/// (tch refuses to write others), so each variable is written from a
/// contiguous copy. Loading copies into the variables whatever their layout.
pub fn save(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(name, t)| (name, t.contiguous())).collect();
    Tensor::write_safetensors(&named, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn channels_last_keeps_shape_and_values_and_changes_only_the_strides() {
        let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let cl = MemoryFormat::ChannelsLast.apply(&x);
        assert_eq!(cl.size(), x.size());
        assert_eq!(cl.stride(), [60, 1, 15, 3]);
        assert!(is_channels_last(&cl) && !is_channels_last(&x));
        assert!(cl.equal(&x));
        assert!(MemoryFormat::Contiguous.apply(&x).is_contiguous());
        let v = Tensor::ones([3], (Kind::Float, Device::Cpu));
        assert_eq!(MemoryFormat::ChannelsLast.apply(&v).stride(), [1]);
    }

    /// The kernels change layout in place, gradients flow through the
    /// same leaves, and a save of channel-last variables loads back equal.
    #[test]
    fn a_var_store_goes_channels_last_trains_and_round_trips() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root() / "c", 3, 4, 3, Default::default());
        let before: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        MemoryFormat::ChannelsLast.apply_to(&vs);
        for (name, t) in vs.variables() {
            let old = &before.iter().find(|(n, _)| *n == name).unwrap().1;
            assert!(t.equal(old), "{name}");
            assert_eq!(is_channels_last(&t), t.dim() == 4, "{name}");
            assert!(t.requires_grad());
        }
        let x = MemoryFormat::ChannelsLast.apply(&Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu)));
        let y = x.apply(&conv);
        assert!(is_channels_last(&y), "a channel-last convolution gives a channel-last map");
        y.sum(Kind::Float).backward();
        assert!(conv.ws.grad().defined());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save(&vs, &path).unwrap();
        let other = nn::VarStore::new(Device::Cpu);
        let _ = nn::conv2d(other.root() / "c", 3, 4, 3, Default::default());
        let mut other = other;
        other.load(&path).unwrap();
        for (name, t) in vs.variables() {
            assert!(other.variables()[&name].equal(&t), "{name}");
        }
    }
}
