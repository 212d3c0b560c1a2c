//! What the protocol server needs from the hardware, behind one trait: the
//! feature extractor, persistent slots, upload staging, the camera, and the
//! store of captured samples. The simulator implements it with tract, files
//! and a dataset; a microcontroller would with its NPU, flash and sensor.

use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::wire::{self, BundleFile, Detail, ErrorCode, FrameFormat, UploadTarget};

/// Longest detail of a [`Fault`], in bytes: platform messages are short, and
/// a fault travels by value through every platform call's `Result`.
pub const MAX_FAULT_DETAIL: usize = 96;

/// A failure of the platform, reported to the host as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// What the host is told went wrong.
    pub code: ErrorCode,
    /// In words, for a person.
    pub detail: heapless::String<MAX_FAULT_DETAIL>,
}

impl Fault {
    /// A fault with a detail message, cut at a word if it does not fit.
    pub fn new(code: ErrorCode, detail: &str) -> Self {
        Fault { code, detail: wire::cut_text(&detail) }
    }

    /// The detail as an error response carries it.
    pub fn wire_detail(&self) -> Detail {
        wire::detail(&self.detail.as_str())
    }
}

/// The backbone currently loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackboneInfo {
    /// How frames become its input.
    pub preprocess: Preprocess,
    /// Length of its feature vector.
    pub dim: usize,
    /// SHA-256 of its file: statistics name the backbone they belong to.
    pub sha256: [u8; 32],
}

/// One of the two persistent slots.
pub type Slot = u8;

/// The hardware behind the protocol server: backbone, slots, uploads,
/// bundles, camera and the store of captured samples.
pub trait Platform {
    /// Runs the backbone on one preprocessed input.
    fn extract(&mut self, input: &[f32], features: &mut [f32]) -> Result<(), Fault>;

    /// The whole content of a slot (empty if it was never written).
    fn slot_read(&mut self, slot: Slot) -> Result<&[u8], Fault>;
    /// Writes `bytes` at `offset` of a slot.
    fn slot_write(&mut self, slot: Slot, offset: u64, bytes: &[u8]) -> Result<(), Fault>;
    /// Cuts a slot to `len` bytes and makes everything written durable.
    fn slot_sync(&mut self, slot: Slot, len: u64) -> Result<(), Fault>;

    /// Starts staging an upload of `len` bytes (not frames: those go into
    /// the server's frame buffer). Refuses sizes it cannot hold.
    fn upload_begin(&mut self, target: UploadTarget, len: u32) -> Result<(), Fault>;
    /// Appends `bytes`, which must start at `offset`, the bytes received so far.
    fn upload_write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Fault>;
    /// The staged upload, complete.
    fn upload_bytes(&mut self) -> Result<&[u8], Fault>;
    /// Drops the staged upload.
    fn upload_discard(&mut self);

    /// Keeps the verified upload as one file of the next bundle.
    fn bundle_stage(&mut self, file: BundleFile) -> Result<(), Fault>;
    /// The staged statistics of the next bundle, and the backbone they
    /// would run with, without activating anything.
    fn bundle_staged(&mut self) -> Result<(BackboneInfo, &[u8]), Fault>;
    /// Swaps in the staged bundle (all of it or nothing).
    fn bundle_activate(&mut self) -> Result<BackboneInfo, Fault>;
    /// Goes back to the bundle that was active before the last activation.
    fn bundle_rollback(&mut self) -> Result<BackboneInfo, Fault>;
    /// The active bundle's base statistics (for reset).
    fn base_stats(&mut self) -> Result<&[u8], Fault>;

    /// Captures a frame from the device's camera into `frame`.
    fn capture(&mut self, class_hint: Option<u16>, frame: &mut [u8]) -> Result<FrameFormat, Fault>;

    /// Keeps a learned sample for later retraining (bounded per class).
    fn store_sample(&mut self, label: &str, format: FrameFormat, pixels: &[u8]);
    /// Samples stored for `label`.
    fn stored_count(&self, label: &str) -> u32;
    /// Stored sample `index` of `label`, oldest first.
    fn stored_sample(&mut self, label: &str, index: u32) -> Option<(FrameFormat, &[u8])>;
    /// Forgets the samples stored for `label`.
    fn drop_samples(&mut self, label: &str);
}
