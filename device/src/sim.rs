//! The simulator's platform: tract for the backbone, two files for the A/B
//! slots, a folder for the active bundle, a dataset for the camera, and a
//! bounded in-memory store of captured samples.

use crate::bundle::{self, Manifest};
use crate::bundles::BundleStore;
use crate::flash::DiskFlash;
use crate::platform::{BackboneInfo, Fault, Platform, Slot};
use gaussedge_backbone::{Backbone, BackboneError, CompiledError};
use gaussedge_data::{Dataset, DatasetKind, Split};
use gaussedge_firmware::samples::SampleStore;
use gaussedge_shared::wire::{BundleFile, ErrorCode, FrameFormat, UploadTarget};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest upload the simulator stages (a bundle's backbone is ~16 MB).
pub const MAX_UPLOAD: u32 = 64 << 20;

fn storage(e: impl std::fmt::Display) -> Fault {
    Fault::new(ErrorCode::Storage, &e.to_string())
}

/// A simulated camera: images of a dataset split, class by class.
pub struct Camera {
    dataset: Dataset,
    by_class: HashMap<u16, Vec<usize>>,
    cursor: HashMap<u16, usize>,
    next: usize,
}

impl Camera {
    /// `spec` is `cifar10:DIR`, `fashion-mnist:DIR` or `folder:DIR`; it
    /// captures from the training split (what a device would see in the
    /// field, disjoint from the test split used to evaluate it).
    pub fn open(spec: &str) -> anyhow::Result<Self> {
        let (kind, dir) = spec.split_once(':').ok_or_else(|| anyhow::anyhow!("camera {spec:?}: expected KIND:DIR"))?;
        let kind = match kind {
            "cifar10" => DatasetKind::Cifar10,
            "fashion-mnist" => DatasetKind::FashionMnist,
            "folder" => DatasetKind::Folder,
            other => anyhow::bail!("camera kind {other:?}: expected cifar10, fashion-mnist or folder"),
        };
        Ok(Camera::new(gaussedge_data::load(kind, Path::new(dir), Split::Train)?))
    }

    pub fn new(dataset: Dataset) -> Self {
        let mut by_class: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, s) in dataset.samples.iter().enumerate() {
            by_class.entry(s.label).or_default().push(i);
        }
        Camera { dataset, by_class, cursor: HashMap::new(), next: 0 }
    }

    /// The next image of `class` (or of any class), cycling.
    pub fn capture(&mut self, class: Option<u16>, frame: &mut [u8]) -> Result<FrameFormat, Fault> {
        let index = match class {
            Some(c) => {
                let list = self
                    .by_class
                    .get(&c)
                    .ok_or_else(|| Fault::new(ErrorCode::Capture, &format!("the camera sees no class {c}")))?;
                let cur = self.cursor.entry(c).or_insert(0);
                let i = list[*cur % list.len()];
                *cur += 1;
                i
            }
            None => {
                let i = self.next % self.dataset.len().max(1);
                self.next += 1;
                i
            }
        };
        let s =
            self.dataset.samples.get(index).ok_or_else(|| Fault::new(ErrorCode::Capture, "camera has no images"))?;
        if s.pixels.len() > frame.len() {
            return Err(Fault::new(ErrorCode::Capture, "camera image larger than the frame buffer"));
        }
        frame[..s.pixels.len()].copy_from_slice(&s.pixels);
        Ok(s.format)
    }
}

/// Options of the simulated device.
pub struct SimOptions {
    /// The factory bundle (used until a new one is flashed).
    pub bundle: PathBuf,
    /// Where slots and flashed bundles live.
    pub state: PathBuf,
    pub camera: Option<Camera>,
    /// Captured samples kept per class (ring buffer).
    pub store_per_class: usize,
}

struct Active {
    backbone: Backbone,
    info: BackboneInfo,
    base_stats: Vec<u8>,
    /// The backbone's compiled graph, when this load made one: written to
    /// [`COMPILED`] once the bundle is the one running.
    compiled: Option<Vec<u8>>,
}

/// The booted bundle's backbone as a compiled graph
/// ([`Backbone::load_compiled`]): boots read it instead of the ONNX's
/// parse, analysis and rewrites (a tenth of the load's time for b0). One
/// file, bound to the ONNX's SHA-256 and replaced whenever another bundle
/// runs; a flash compiles the new bundle while it checks that it loads, so
/// even its first boot is fast. It is only a cache: damaged, stale or from
/// another build, it is passed over with a warning and written again.
const COMPILED: &str = "backbone.compiled";

pub struct SimPlatform {
    active: Active,
    factory: PathBuf,
    /// Where slots, flashed bundles and the compiled backbone live.
    state: PathBuf,
    bundles: BundleStore<DiskFlash>,
    slot_files: [File; 2],
    /// What each slot file holds, read once and kept until the slot is
    /// written: a download reads the slot once per chunk, and re-reading a
    /// 13 MB file for every 4 KB chunk made `pull` quadratic (42 GB read
    /// for one pull).
    slot_cache: [Option<Vec<u8>>; 2],
    upload: Option<(UploadTarget, Vec<u8>)>,
    staged: HashMap<BundleFileKey, Vec<u8>>,
    camera: Option<Camera>,
    store: SampleStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BundleFileKey {
    Backbone,
    Manifest,
    Stats,
}

impl From<BundleFile> for BundleFileKey {
    fn from(f: BundleFile) -> Self {
        match f {
            BundleFile::Backbone => BundleFileKey::Backbone,
            BundleFile::Manifest => BundleFileKey::Manifest,
            BundleFile::Stats => BundleFileKey::Stats,
        }
    }
}

fn load_active(dir: &Path, state: &Path) -> anyhow::Result<Active> {
    active_from(&dir.display().to_string(), bundle::Bundle::read(dir)?, state)
}

/// Loads a bundle's backbone and checks it against its manifest: what the
/// device does with a bundle before it boots it or points at it. The
/// compiled graph in `state` is used when it is this backbone's.
fn active_from(origin: &str, b: bundle::Bundle, state: &Path) -> anyhow::Result<Active> {
    let p = b.manifest.preprocess;
    // A `Bundle` is checked against its manifest's hash when it is read:
    // hashing its 16 MB again cost every boot.
    let sha256 = b.manifest.sha256_bytes().unwrap_or_else(|| bundle::sha256(&b.onnx));
    let shape = [1, p.channels as usize, p.height as usize, p.width as usize];
    let layers = &b.manifest.layers;
    let start = std::time::Instant::now();
    let cached = from_compiled(state, shape, layers, sha256);
    let (backbone, compiled) = match cached {
        Some(backbone) => {
            eprintln!("{origin}: backbone from its compiled graph in {:.0?}", start.elapsed());
            (backbone, None)
        }
        None => {
            let (backbone, compiled) = Backbone::load_and_compile(&b.onnx, shape, layers, sha256)?;
            match &compiled {
                Ok(_) => {
                    eprintln!("{origin}: backbone from its ONNX in {:.0?}, compiled for later boots", start.elapsed())
                }
                Err(why) => eprintln!(
                    "{origin}: backbone from its ONNX in {:.0?}; it does so at every boot: {why}",
                    start.elapsed()
                ),
            }
            (backbone, compiled.ok())
        }
    };
    if backbone.dim() != b.manifest.feature_dim {
        anyhow::bail!(
            "{origin}: backbone gives {} features, the manifest says {}",
            backbone.dim(),
            b.manifest.feature_dim
        );
    }
    let info = BackboneInfo { preprocess: p, dim: backbone.dim(), sha256 };
    if b.stats.is_none() {
        eprintln!(
            "warning: {origin} has no {}: the device boots with no base classes until statistics are pushed",
            bundle::STATS
        );
    }
    Ok(Active { backbone, info, base_stats: b.stats.unwrap_or_default(), compiled })
}

/// The backbone from the compiled graph in `state`, when it is this ONNX's.
/// Another bundle's file (the usual case after a flash or a rollback) is
/// passed over silently; an unreadable, damaged or stale one with a warning.
fn from_compiled(state: &Path, shape: [usize; 4], layers: &[String], sha256: [u8; 32]) -> Option<Backbone> {
    let path = state.join(COMPILED);
    let why = match std::fs::read(&path) {
        Ok(bytes) => match Backbone::load_compiled(&bytes, shape, layers, sha256) {
            Ok(backbone) => return Some(backbone),
            Err(BackboneError::Compiled(CompiledError::Source { .. })) => return None,
            Err(e) => e.to_string(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => e.to_string(),
    };
    eprintln!("warning: {}: {why}; loading the backbone from its ONNX", path.display());
    None
}

/// Replaces [`COMPILED`] with `bytes` so that a cut at any moment leaves
/// the old file or the new one, never a mix (and a mix would fail its
/// CRC anyway). A failure only costs the next boot its speed.
fn save_compiled(state: &Path, bytes: &[u8]) {
    let tmp = state.join(format!("{COMPILED}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, state.join(COMPILED))?;
        File::open(state)?.sync_all()
    };
    if let Err(e) = write() {
        eprintln!(
            "warning: could not write {}: {e}; the next boot loads the ONNX again",
            state.join(COMPILED).display()
        );
    }
}

impl SimPlatform {
    /// The bundle flashed last (named by `state/active`), or the factory one.
    pub fn open(opts: SimOptions) -> anyhow::Result<Self> {
        let mut bundles = BundleStore::new(DiskFlash::new(&opts.state)?);
        // The flashed bundle, else the one before it, else the factory one:
        // a device that cannot read its flashed bundle still boots.
        let state = opts.state.clone();
        let (flashed, passed) =
            bundles.boot(|b| active_from("flashed bundle", b, &state).map_err(|e| format!("{e:#}")));
        for why in passed {
            eprintln!("warning: {why}; trying the one before it");
        }
        let mut active = match flashed {
            Some((_, a)) => a,
            None => load_active(&opts.bundle, &state)?,
        };
        if let Some(bytes) = active.compiled.take() {
            save_compiled(&state, &bytes);
        }
        let open = |name: &str| {
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(opts.state.join(name))
        };
        Ok(SimPlatform {
            active,
            factory: opts.bundle,
            state,
            slot_files: [open("slot-a.bin")?, open("slot-b.bin")?],
            slot_cache: [None, None],
            bundles,
            upload: None,
            staged: HashMap::new(),
            camera: opts.camera,
            store: SampleStore::new(opts.store_per_class),
        })
    }

    pub fn backbone(&self) -> BackboneInfo {
        self.active.info
    }

    fn staged_info(&self) -> Result<(Manifest, BackboneInfo), Fault> {
        let onnx = self
            .staged
            .get(&BundleFileKey::Backbone)
            .ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no backbone staged"))?;
        let manifest_bytes = self
            .staged
            .get(&BundleFileKey::Manifest)
            .ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no manifest staged"))?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| Fault::new(ErrorCode::BadStats, &format!("manifest: {e}")))?;
        manifest.check().map_err(|e| Fault::new(ErrorCode::BadStats, &e.to_string()))?;
        let sha = bundle::sha256(onnx);
        if hex::encode(sha) != manifest.backbone_sha256 {
            return Err(Fault::new(ErrorCode::UploadHash, "staged backbone does not match the staged manifest"));
        }
        let info = BackboneInfo { preprocess: manifest.preprocess, dim: manifest.feature_dim, sha256: sha };
        Ok((manifest, info))
    }

    /// Makes `active` the running bundle.
    fn install(&mut self, mut active: Active) -> BackboneInfo {
        if let Some(bytes) = active.compiled.take() {
            save_compiled(&self.state, &bytes);
        }
        let info = active.info;
        self.active = active;
        info
    }
}

impl Platform for SimPlatform {
    fn extract(&mut self, input: &[f32], features: &mut [f32]) -> Result<(), Fault> {
        let f = self.active.backbone.features(input).map_err(|e| Fault::new(ErrorCode::Storage, &e.to_string()))?;
        if f.len() != features.len() {
            return Err(Fault::new(ErrorCode::DimMismatch, "backbone output size"));
        }
        features.copy_from_slice(&f);
        Ok(())
    }

    fn slot_read(&mut self, slot: Slot) -> Result<&[u8], Fault> {
        let i = slot as usize & 1;
        if self.slot_cache[i].is_none() {
            let f = &mut self.slot_files[i];
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(0)).map_err(storage)?;
            f.read_to_end(&mut buf).map_err(storage)?;
            self.slot_cache[i] = Some(buf);
        }
        Ok(self.slot_cache[i].as_deref().unwrap_or_default())
    }

    fn slot_write(&mut self, slot: Slot, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        self.slot_cache[slot as usize & 1] = None;
        let f = &mut self.slot_files[slot as usize & 1];
        f.seek(SeekFrom::Start(offset)).map_err(storage)?;
        f.write_all(bytes).map_err(storage)
    }

    fn slot_sync(&mut self, slot: Slot, len: u64) -> Result<(), Fault> {
        self.slot_cache[slot as usize & 1] = None;
        let f = &mut self.slot_files[slot as usize & 1];
        f.set_len(len).map_err(storage)?;
        f.sync_all().map_err(storage)
    }

    fn upload_begin(&mut self, target: UploadTarget, len: u32) -> Result<(), Fault> {
        if len > MAX_UPLOAD {
            return Err(Fault::new(ErrorCode::Storage, "upload larger than the device stages"));
        }
        self.upload = Some((target, Vec::with_capacity(len as usize)));
        Ok(())
    }

    fn upload_write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Fault> {
        let (_, buf) = self.upload.as_mut().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))?;
        if offset as usize != buf.len() {
            return Err(Fault::new(ErrorCode::UploadOrder, "chunk out of order"));
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }

    fn upload_bytes(&mut self) -> Result<&[u8], Fault> {
        self.upload.as_ref().map(|(_, b)| b.as_slice()).ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))
    }

    fn upload_discard(&mut self) {
        self.upload = None;
    }

    fn bundle_stage(&mut self, file: BundleFile) -> Result<(), Fault> {
        let (_, bytes) = self.upload.take().ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no upload"))?;
        self.staged.insert(file.into(), bytes);
        Ok(())
    }

    fn bundle_staged(&mut self) -> Result<(BackboneInfo, &[u8]), Fault> {
        let (_, info) = self.staged_info()?;
        let stats = self
            .staged
            .get(&BundleFileKey::Stats)
            .ok_or_else(|| Fault::new(ErrorCode::NoUpload, "no statistics staged"))?;
        Ok((info, stats))
    }

    fn bundle_activate(&mut self) -> Result<BackboneInfo, Fault> {
        self.staged_info()?;
        let file = |key| self.staged[&key].as_slice();
        let files = [file(BundleFileKey::Backbone), file(BundleFileKey::Manifest), file(BundleFileKey::Stats)];
        let (_, active) = self
            .bundles
            .write(files, |b| active_from("the new bundle", b, &self.state).map_err(|e| format!("{e:#}")))
            .map_err(storage)?;
        let info = self.install(active);
        self.staged.clear();
        Ok(info)
    }

    fn bundle_rollback(&mut self) -> Result<BackboneInfo, Fault> {
        let active = match self.bundles.rollback().map_err(storage)? {
            Some(n) => active_from("flashed bundle", self.bundles.read(n).map_err(storage)?, &self.state),
            None => load_active(&self.factory, &self.state),
        };
        Ok(self.install(active.map_err(storage)?))
    }

    fn base_stats(&mut self) -> Result<&[u8], Fault> {
        Ok(&self.active.base_stats)
    }

    fn capture(&mut self, class_hint: Option<u16>, frame: &mut [u8]) -> Result<FrameFormat, Fault> {
        match self.camera.as_mut() {
            Some(c) => c.capture(class_hint, frame),
            None => Err(Fault::new(ErrorCode::Capture, "this device has no camera (start it with --camera)")),
        }
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
