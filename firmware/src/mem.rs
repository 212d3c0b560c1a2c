//! A platform in memory: the protocol server's bench for unit tests, fuzzing
//! and power-loss testing, with no backbone file, disk or camera.
//!
//! * The backbone is a fixed random projection of the preprocessed input,
//!   seeded by the bundle's "backbone" bytes: deterministic, cheap, and
//!   different for different bytes, so a flashed backbone really changes the
//!   features and its SHA-256.
//! * The camera draws frames whose pixels depend on the class asked for, so
//!   captured classes are separable.
//! * The two slots keep what was last synced apart from what was written
//!   since. A [`PowerCut`] ends the power at a chosen slot write: that write
//!   lands only in part (torn at a chosen byte) and nothing after it
//!   happens. [`MemPlatform::reboot`] then keeps what storage would: only
//!   the synced image (the torn write on top of it), or, for storage that
//!   writes through, every unsynced write too. A save that syncs in the
//!   wrong order, or not at all, boots a third state under one of the two;
//!   a killed process, which keeps the kernel's page cache, cannot show it.
//!   This is littlefs's power-loss testing, brought to the A/B slots.

use crate::platform::{BackboneInfo, Fault, Platform, Slot};
use crate::samples::SampleStore;
use alloc::vec;
use alloc::vec::Vec;
use gaussedge_shared::frame::{input_format, input_len};
use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::wire::{BundleFile, ErrorCode, FrameFormat, UploadTarget};
use sha2::{Digest, Sha256};

/// Captured samples kept per class.
const STORE_PER_CLASS: usize = 8;

/// Largest upload staged (a real device's staging area is bounded too).
pub const MAX_UPLOAD: u32 = 1 << 20;

/// Where and how the power fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut {
    /// Index of the slot write (counted from the platform's creation or
    /// last reboot) during which the power fails.
    pub at_write: u64,
    /// How many bytes of that write reach storage.
    pub torn_at: usize,
    /// Whether writes not yet synced survive (write-through storage) or are
    /// lost (a write-back cache).
    pub keep_unsynced: bool,
}

#[derive(Debug, Clone, Default)]
struct MemSlot {
    /// What a reboot finds without write-through: the image at the last sync.
    synced: Vec<u8>,
    /// What reads see now: every write so far.
    live: Vec<u8>,
}

fn write_at(buf: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if buf.len() < offset + bytes.len() {
        buf.resize(offset + bytes.len(), 0);
    }
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A stateless hash of a counter, for weights and pixels: SplitMix64's
/// first output from state `z`.
fn mix(z: u64) -> u64 {
    use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
    rand_xoshiro::SplitMix64::seed_from_u64(z).next_u64()
}

/// A backbone: its bytes, their SHA-256, and the projection they seed.
#[derive(Debug, Clone)]
struct Net {
    info: BackboneInfo,
    weights: Vec<f32>,
}

impl Net {
    fn new(bytes: &[u8], preprocess: Preprocess, dim: usize) -> Net {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let seed = u64::from_le_bytes([
            sha256[0], sha256[1], sha256[2], sha256[3], sha256[4], sha256[5], sha256[6], sha256[7],
        ]);
        let n = input_len(&preprocess);
        let scale = 1.0 / (n as f32).sqrt();
        let weights = (0..dim * n)
            .map(|i| ((mix(seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect();
        Net { info: BackboneInfo { preprocess, dim, sha256 }, weights }
    }
}

/// The in-memory platform. See the module docs.
#[derive(Debug, Clone)]
pub struct MemPlatform {
    net: Net,
    base_stats: Vec<u8>,
    previous: Option<(Net, Vec<u8>)>,
    slots: [MemSlot; 2],
    writes: u64,
    cut: Option<PowerCut>,
    dead: bool,
    upload: Option<Vec<u8>>,
    staged: [Option<Vec<u8>>; 3],
    captures: u64,
    store: SampleStore,
    camera_broken: bool,
}

fn lost() -> Fault {
    Fault::new(ErrorCode::Storage, "power lost")
}

impl MemPlatform {
    /// A device whose factory bundle is `backbone` (any bytes: they seed the
    /// features) with base statistics `base_stats` (may be empty).
    pub fn new(backbone: &[u8], preprocess: Preprocess, dim: usize, base_stats: Vec<u8>) -> Self {
        MemPlatform {
            net: Net::new(backbone, preprocess, dim),
            base_stats,
            previous: None,
            slots: Default::default(),
            writes: 0,
            cut: None,
            dead: false,
            upload: None,
            staged: [None, None, None],
            captures: 0,
            store: SampleStore::new(STORE_PER_CLASS),
            camera_broken: false,
        }
    }

    /// The active backbone.
    pub fn backbone(&self) -> BackboneInfo {
        self.net.info
    }

    /// The SHA-256 a backbone of these bytes has here.
    pub fn sha256_of(backbone: &[u8]) -> [u8; 32] {
        Sha256::digest(backbone).into()
    }

    /// Makes every later capture fail, as a camera that stopped answering
    /// does (fault injection for the server's error paths).
    pub fn break_camera(&mut self) {
        self.camera_broken = true;
    }

    /// Arms a power cut. Writes are counted from now.
    pub fn cut_power(&mut self, cut: PowerCut) {
        self.writes = 0;
        self.cut = Some(cut);
    }

    /// Slot writes since creation, the last reboot or the last
    /// [`cut_power`](Self::cut_power): how many cut points an operation has.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether the armed cut has happened.
    pub fn power_lost(&self) -> bool {
        self.dead
    }

    /// Power comes back: the slots hold what storage kept, RAM (uploads,
    /// staged files, the sample store) is gone, the bundle is the one
    /// activated last.
    pub fn reboot(&self) -> MemPlatform {
        let keep = self.cut.is_some_and(|c| c.keep_unsynced);
        let slots = self.slots.clone().map(|s| {
            let image = if keep || !self.dead { s.live } else { s.synced };
            MemSlot { synced: image.clone(), live: image }
        });
        MemPlatform {
            slots,
            writes: 0,
            cut: None,
            dead: false,
            upload: None,
            staged: [None, None, None],
            store: SampleStore::new(STORE_PER_CLASS),
            ..self.clone()
        }
    }

    /// The two slot images a reboot would find now.
    pub fn slot_images(&self) -> [&[u8]; 2] {
        [&self.slots[0].live, &self.slots[1].live]
    }

    fn staged_net(&self) -> Result<Net, Fault> {
        let missing = |what| Fault::new(ErrorCode::NoUpload, what);
        let backbone = self.staged[0].as_ref().ok_or_else(|| missing("no backbone staged"))?;
        let manifest = self.staged[1].as_ref().ok_or_else(|| missing("no manifest staged"))?;
        // The manifest here is `dim=N`; anything else keeps the dimension.
        let dim = core::str::from_utf8(manifest)
            .ok()
            .and_then(|m| m.trim().strip_prefix("dim="))
            .map(|d| d.parse().map_err(|_| Fault::new(ErrorCode::BadStats, "manifest: bad dim")))
            .transpose()?
            .unwrap_or(self.net.info.dim);
        Ok(Net::new(backbone, self.net.info.preprocess, dim))
    }
}

impl Platform for MemPlatform {
    fn extract(&mut self, input: &[f32], features: &mut [f32]) -> Result<(), Fault> {
        let n = input.len();
        if self.net.weights.len() != features.len() * n {
            return Err(Fault::new(ErrorCode::DimMismatch, "backbone output size"));
        }
        for (f, row) in features.iter_mut().zip(self.net.weights.chunks_exact(n)) {
            *f = row.iter().zip(input).map(|(w, x)| w * x).sum();
        }
        Ok(())
    }

    fn slot_read(&mut self, slot: Slot) -> Result<&[u8], Fault> {
        Ok(&self.slots[slot as usize & 1].live)
    }

    fn slot_write(&mut self, slot: Slot, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        if self.dead {
            return Err(lost());
        }
        let index = self.writes;
        self.writes += 1;
        let s = &mut self.slots[slot as usize & 1];
        let offset = usize::try_from(offset).map_err(|_| Fault::new(ErrorCode::Storage, "offset"))?;
        match self.cut {
            Some(cut) if cut.at_write == index => {
                let landed = &bytes[..cut.torn_at.min(bytes.len())];
                write_at(&mut s.live, offset, landed);
                write_at(&mut s.synced, offset, landed);
                self.dead = true;
                Err(lost())
            }
            _ => {
                write_at(&mut s.live, offset, bytes);
                Ok(())
            }
        }
    }

    fn slot_sync(&mut self, slot: Slot, len: u64) -> Result<(), Fault> {
        if self.dead {
            return Err(lost());
        }
        let s = &mut self.slots[slot as usize & 1];
        s.live.resize(len as usize, 0);
        s.synced = s.live.clone();
        Ok(())
    }

    fn upload_begin(&mut self, _target: UploadTarget, len: u32) -> Result<(), Fault> {
        if len > MAX_UPLOAD {
            return Err(Fault::new(ErrorCode::Storage, "upload larger than the device stages"));
        }
        self.upload = Some(Vec::with_capacity(len as usize));
        Ok(())
    }

    fn upload_write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Fault> {
        let buf = self.upload.as_mut().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))?;
        if offset as usize != buf.len() {
            return Err(Fault::new(ErrorCode::UploadOrder, "chunk out of order"));
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }

    fn upload_bytes(&mut self) -> Result<&[u8], Fault> {
        self.upload.as_deref().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))
    }

    fn upload_discard(&mut self) {
        self.upload = None;
    }

    fn bundle_stage(&mut self, file: BundleFile) -> Result<(), Fault> {
        let bytes = self.upload.take().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))?;
        let i = match file {
            BundleFile::Backbone => 0,
            BundleFile::Manifest => 1,
            BundleFile::Stats => 2,
        };
        self.staged[i] = Some(bytes);
        Ok(())
    }

    fn bundle_staged(&mut self) -> Result<(BackboneInfo, &[u8]), Fault> {
        let info = self.staged_net()?.info;
        let stats = self.staged[2].as_deref().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no statistics staged"))?;
        Ok((info, stats))
    }

    fn bundle_activate(&mut self) -> Result<BackboneInfo, Fault> {
        let net = self.staged_net()?;
        let stats = self.staged[2].take().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no statistics staged"))?;
        let old = core::mem::replace(&mut self.net, net);
        let old_stats = core::mem::replace(&mut self.base_stats, stats);
        self.previous = Some((old, old_stats));
        self.staged = [None, None, None];
        Ok(self.net.info)
    }

    fn bundle_rollback(&mut self) -> Result<BackboneInfo, Fault> {
        let (net, stats) = self.previous.take().ok_or_else(|| Fault::new(ErrorCode::NotFound, "no previous bundle"))?;
        self.net = net;
        self.base_stats = stats;
        Ok(self.net.info)
    }

    fn base_stats(&mut self) -> Result<&[u8], Fault> {
        Ok(&self.base_stats)
    }

    fn capture(&mut self, class_hint: Option<u16>, frame: &mut [u8]) -> Result<FrameFormat, Fault> {
        if self.camera_broken {
            return Err(Fault::new(ErrorCode::Capture, "the camera does not answer"));
        }
        let format = input_format(&self.net.info.preprocess);
        if format.len() > frame.len() {
            return Err(Fault::new(ErrorCode::Capture, "camera image larger than the frame buffer"));
        }
        let class = u64::from(class_hint.unwrap_or(0));
        self.captures += 1;
        for (i, px) in frame[..format.len()].iter_mut().enumerate() {
            // A class's pattern, plus noise that differs per capture.
            let pattern = mix(class.wrapping_mul(0x1000) ^ i as u64) % 160;
            let noise = mix(self.captures << 32 ^ i as u64) % 64;
            *px = (pattern + noise) as u8;
        }
        Ok(format)
    }

    fn store_sample(&mut self, label: &str, format: FrameFormat, pixels: &[u8]) {
        self.store.push(label, format, pixels);
    }

    fn stored_count(&self, label: &str) -> u32 {
        self.store.count(label)
    }

    fn stored_sample(&mut self, label: &str, index: u32) -> Option<(FrameFormat, &[u8])> {
        self.store.get(label, index)
    }

    fn drop_samples(&mut self, label: &str) {
        self.store.drop_label(label);
    }
}

/// Buffers and a head for a server on a [`MemPlatform`], owned: what a
/// test or fuzz target boots with.
pub struct Bench {
    /// The raw frame buffer (the largest frame accepted).
    pub frame: Vec<u8>,
    /// One preprocessed input.
    pub input: Vec<f32>,
    /// One feature vector.
    pub features: Vec<f32>,
}

impl Bench {
    /// Buffers for `info`'s backbone and frames up to `max_frame`.
    pub fn new(info: &BackboneInfo, max_frame: FrameFormat) -> Self {
        Bench {
            frame: vec![0; max_frame.len()],
            input: vec![0.0; input_len(&info.preprocess)],
            features: vec![0.0; info.dim],
        }
    }
}
