//! The store of captured samples a device keeps per class (so a host can
//! pull them back for retraining): a bounded ring per label, the oldest
//! dropped first. In RAM, so needs an allocator; a device without one
//! implements the [`crate::platform::Platform`] sample methods over its own
//! buffers.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use gaussedge_shared::wire::FrameFormat;

/// Captured frames by label, at most `per_class` each.
#[derive(Debug, Clone, Default)]
pub struct SampleStore {
    rings: BTreeMap<String, VecDeque<(FrameFormat, Vec<u8>)>>,
    per_class: usize,
}

impl SampleStore {
    /// A store keeping the last `per_class` frames of each label (0 keeps none).
    pub fn new(per_class: usize) -> Self {
        SampleStore { rings: BTreeMap::new(), per_class }
    }

    /// Keeps a frame, dropping the label's oldest when its ring is full.
    pub fn push(&mut self, label: &str, format: FrameFormat, pixels: &[u8]) {
        if self.per_class == 0 {
            return;
        }
        let ring = self.rings.entry(label.to_string()).or_default();
        if ring.len() == self.per_class {
            ring.pop_front();
        }
        ring.push_back((format, pixels.to_vec()));
    }

    /// Frames kept for `label`.
    pub fn count(&self, label: &str) -> u32 {
        self.rings.get(label).map_or(0, |r| r.len() as u32)
    }

    /// Frame `index` of `label`, oldest first.
    pub fn get(&self, label: &str, index: u32) -> Option<(FrameFormat, &[u8])> {
        self.rings.get(label)?.get(index as usize).map(|(f, p)| (*f, p.as_slice()))
    }

    /// Forgets every frame of `label`.
    pub fn drop_label(&mut self, label: &str) {
        self.rings.remove(label);
    }
}
