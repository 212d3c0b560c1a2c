//! Flashed bundles and the pointer that picks the one to boot.
//!
//! Flashed bundles live in `bundles/<n>` on the [`Flash`]; the small file
//! `active` names the one to boot and the one before it (for rollback).
//! Replacing that file (write a new one, sync it, rename it over the old
//! one, sync the folder) is the one step that switches bundles, so a power
//! cut at any moment of a flash boots either the old bundle or the new one.
//! (Two renames of folders, as the simulator once did, left a moment with
//! no bundle folder at all, which booted the factory bundle.)

use crate::bundle::{self, Bundle, BundleError};
use crate::flash::Flash;
use std::io;

const ACTIVE: &str = "active";
const ACTIVE_TMP: &str = "active.tmp";
const BUNDLES: &str = "bundles";

/// The files of a bundle, in the order they are written.
pub const FILES: [&str; 3] = [bundle::BACKBONE, bundle::MANIFEST, bundle::STATS];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("flash: {0}")]
    Io(#[from] io::Error),
    #[error("flashed bundle {n}: {source}")]
    Bundle { n: u64, source: BundleError },
    #[error("the new bundle does not load: {0}")]
    Rejected(String),
}

/// The pointer file's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pointer {
    pub current: Option<u64>,
    pub previous: Option<u64>,
}

impl Pointer {
    fn parse(text: &str) -> Pointer {
        let mut p = Pointer::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("current", v)) => p.current = v.parse().ok(),
                Some(("previous", v)) => p.previous = v.parse().ok(),
                _ => {}
            }
        }
        p
    }

    fn text(&self) -> String {
        let mut text = String::new();
        for (key, v) in [("current", self.current), ("previous", self.previous)] {
            if let Some(v) = v {
                text += &format!("{key}={v}\n");
            }
        }
        text
    }
}

fn dir(n: u64) -> String {
    format!("{BUNDLES}/{n}")
}

/// The bundles flashed to a [`Flash`].
#[derive(Debug)]
pub struct BundleStore<F: Flash> {
    flash: F,
}

impl<F: Flash> BundleStore<F> {
    pub fn new(flash: F) -> Self {
        BundleStore { flash }
    }

    pub fn flash(&self) -> &F {
        &self.flash
    }

    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The pointer, or none flashed when it is missing or unreadable (it is
    /// only ever replaced whole, so it cannot be torn; a damaged one boots
    /// the factory bundle rather than a guess).
    pub fn pointer(&self) -> Pointer {
        let bytes = self.flash.read(ACTIVE).unwrap_or_default();
        Pointer::parse(&String::from_utf8_lossy(&bytes))
    }

    fn set_pointer(&mut self, p: Pointer) -> io::Result<()> {
        self.flash.write(ACTIVE_TMP, p.text().as_bytes())?;
        self.flash.sync(ACTIVE_TMP)?;
        self.flash.rename(ACTIVE_TMP, ACTIVE)?;
        self.flash.sync_dir("")
    }

    /// Flashed bundle `n`, read whole and checked (manifest, backbone hash).
    pub fn read(&self, n: u64) -> Result<Bundle, StoreError> {
        let d = dir(n);
        let file = |name: &str| self.flash.read(&format!("{d}/{name}"));
        let stats_path = format!("{d}/{}", bundle::STATS);
        let stats = if self.flash.exists(&stats_path) { Some(self.flash.read(&stats_path)?) } else { None };
        Bundle::from_parts(&d, &file(bundle::MANIFEST)?, file(bundle::BACKBONE)?, stats)
            .map_err(|source| StoreError::Bundle { n, source })
    }

    /// The bundle to boot: the flashed one, else the one before it, with
    /// why each that was passed over was. `None` boots the factory bundle.
    /// `load` is the device's own check (the backbone really loads).
    pub fn boot<T>(&mut self, mut load: impl FnMut(Bundle) -> Result<T, String>) -> (Option<(u64, T)>, Vec<String>) {
        let p = self.pointer();
        self.sweep(p);
        let mut passed = Vec::new();
        for n in [p.current, p.previous].into_iter().flatten() {
            match self.read(n).map_err(|e| e.to_string()).and_then(&mut load) {
                Ok(t) => return (Some((n, t)), passed),
                Err(e) => passed.push(format!("flashed bundle {n} does not load ({e})")),
            }
        }
        (None, passed)
    }

    /// Writes a bundle beside the booted one, has the device check it
    /// (`load`), then points at it. Returns the bundle's number and what
    /// `load` made of it.
    pub fn write<T>(
        &mut self,
        files: [&[u8]; 3],
        load: impl FnOnce(Bundle) -> Result<T, String>,
    ) -> Result<(u64, T), StoreError> {
        let was = self.pointer();
        let n = was.current.max(was.previous).map_or(1, |n| n + 1);
        let d = dir(n);
        // A flash cut short may have left this number half written.
        self.flash.remove_dir_all(&d)?;
        self.flash.create_dir_all(&d)?;
        for (name, bytes) in FILES.iter().zip(files) {
            let path = format!("{d}/{name}");
            self.flash.write(&path, bytes)?;
            self.flash.sync(&path)?;
        }
        self.flash.sync_dir(&d)?;
        self.flash.sync_dir(BUNDLES)?;
        self.flash.sync_dir("")?;
        // Check the new bundle loads before it replaces anything.
        let t = load(self.read(n)?).map_err(StoreError::Rejected)?;
        let now = Pointer { current: Some(n), previous: was.current };
        self.set_pointer(now)?;
        self.sweep(now);
        Ok((n, t))
    }

    /// Points back at the bundle before the current one (`None`: the
    /// factory bundle) and forgets the current one.
    pub fn rollback(&mut self) -> Result<Option<u64>, StoreError> {
        let was = self.pointer();
        let now = Pointer { current: was.previous, previous: None };
        self.set_pointer(now)?;
        self.sweep(now);
        Ok(now.current)
    }

    /// Removes flashed bundles the pointer no longer names (a flash cut
    /// short leaves one behind). Best effort: what it cannot remove now it
    /// removes at the next boot.
    fn sweep(&mut self, p: Pointer) {
        let mut removed = false;
        for name in self.flash.list(BUNDLES) {
            let n = name.parse::<u64>().ok();
            if n.is_none() || (n != p.current && n != p.previous) {
                removed |= self.flash.remove_dir_all(&format!("{BUNDLES}/{name}")).is_ok();
            }
        }
        if removed {
            let _ = self.flash.sync_dir(BUNDLES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{HeadDefaults, Manifest, MANIFEST_FORMAT};
    use crate::flash::{MemFlash, PowerCut};
    use gaussedge_shared::stats::Preprocess;
    use gaussedge_shared::{Estimator, Transform};

    /// A bundle's three files; `seed` makes each bundle's bytes its own.
    fn files(seed: u8) -> [Vec<u8>; 3] {
        let onnx: Vec<u8> = (0..300u32).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed)).collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            dataset: format!("set-{seed}"),
            labels: vec!["a".into(), "b".into()],
            base_classes: vec![0, 1],
            preprocess: Preprocess { width: 8, height: 8, channels: 1, mean: [0.5; 3], std: [0.25; 3] },
            feature_dim: 16,
            layers: bundle::default_layers(),
            backbone_sha256: hex::encode(bundle::sha256(&onnx)),
            head: HeadDefaults {
                weighting: Estimator::Pooled.weighting(),
                settings: Estimator::Pooled.settings(),
                transform: Transform::IDENTITY,
            },
            calibration: None,
            extra: serde_json::Value::Null,
        };
        let stats = vec![seed; 200];
        [onnx, serde_json::to_vec(&manifest).unwrap(), stats]
    }

    /// Which bundle boots, named by its seed (0: the factory bundle).
    fn booted(flash: MemFlash) -> (u8, BundleStore<MemFlash>) {
        let mut store = BundleStore::new(flash);
        let (got, passed) = store.boot(Ok);
        assert!(passed.is_empty(), "a flashed bundle the pointer names did not load: {passed:?}");
        let seed = match got {
            None => 0,
            Some((_, b)) => {
                let seed = b.stats.as_ref().expect("stats")[0];
                let want = files(seed);
                assert_eq!(b.onnx, want[0], "bundle {seed}: backbone is neither old nor new");
                assert_eq!(serde_json::to_vec(&b.manifest).unwrap(), want[1]);
                assert_eq!(b.stats.unwrap(), want[2]);
                seed
            }
        };
        (seed, store)
    }

    fn flash_seed(store: &mut BundleStore<MemFlash>, seed: u8) -> Result<u64, StoreError> {
        let f = files(seed);
        store.write([&f[0], &f[1], &f[2]], Ok).map(|(n, _)| n)
    }

    #[test]
    fn a_power_cut_at_every_operation_of_a_flash_or_rollback_boots_the_old_bundle_or_the_new_one() {
        // Histories to cut into: first flash over the factory bundle, a
        // second flash over a flashed one, a third (which sweeps the first),
        // and rollbacks.
        type Step = fn(&mut BundleStore<MemFlash>) -> Result<(), StoreError>;
        let steps: Vec<(&str, Step, Vec<Step>)> = vec![
            ("first flash", |s| flash_seed(s, 1).map(drop), vec![]),
            ("second flash", |s| flash_seed(s, 2).map(drop), vec![|s| flash_seed(s, 1).map(drop)]),
            (
                "third flash",
                |s| flash_seed(s, 3).map(drop),
                vec![|s| flash_seed(s, 1).map(drop), |s| flash_seed(s, 2).map(drop)],
            ),
            (
                "rollback to a flashed bundle",
                |s| s.rollback().map(drop),
                vec![|s| flash_seed(s, 1).map(drop), |s| flash_seed(s, 2).map(drop)],
            ),
            ("rollback to the factory bundle", |s| s.rollback().map(drop), vec![|s| flash_seed(s, 1).map(drop)]),
        ];
        let mut cut_points = 0;
        for (name, step, history) in steps {
            let mut before = BundleStore::new(MemFlash::new());
            for h in &history {
                h(&mut before).unwrap();
            }
            // Start from what a clean reboot finds, so that the cut counts
            // only this step's operations.
            let (old, _) = booted(before.flash().reboot());
            let start = before.flash().reboot();
            let mut whole = BundleStore::new(start.clone());
            step(&mut whole).unwrap();
            let ops = whole.flash().ops();
            let (new, _) = booted(whole.flash().reboot());
            assert_ne!(old, new, "{name}: the step changed nothing");
            for at_op in 0..ops {
                for torn_at in [0, 1, 7, 150, usize::MAX] {
                    for keep_unsynced in [false, true] {
                        let mut store = BundleStore::new(start.clone());
                        store.flash.cut_power(PowerCut { at_op, torn_at, keep_unsynced });
                        // A cut in the closing sweep (best effort) lets
                        // the step report success; the power is gone either way.
                        let _ = step(&mut store);
                        assert!(store.flash().power_lost(), "{name}: cut {at_op} did not happen");
                        let (got, mut after) = booted(store.flash().reboot());
                        assert!(
                            got == old || got == new,
                            "{name}: cut at op {at_op} (torn at {torn_at}, unsynced kept: {keep_unsynced}) \
                             booted bundle {got}, neither {old} nor {new}"
                        );
                        // What the cut left behind never blocks the next
                        // flash, and is swept.
                        flash_seed(&mut after, 9).unwrap();
                        let (again, after) = booted(after.flash().reboot());
                        assert_eq!(again, 9);
                        let kept = after.flash().list(BUNDLES);
                        assert!(kept.len() <= 2, "{name}: {kept:?} left after a sweep");
                        cut_points += 1;
                    }
                }
            }
        }
        eprintln!("bundle flash power cuts tried: {cut_points}");
        assert!(cut_points > 200, "{cut_points}");
    }

    #[test]
    fn a_bundle_that_does_not_load_is_never_pointed_at() {
        let mut store = BundleStore::new(MemFlash::new());
        flash_seed(&mut store, 1).unwrap();
        let f = files(2);
        let err = store.write([&f[0], &f[1], &f[2]], |_| Err::<(), _>("backbone gives 12 features".into()));
        assert!(err.unwrap_err().to_string().contains("12 features"));
        assert_eq!(booted(store.flash().reboot()).0, 1);
        // A backbone that does not match its manifest is refused by the read.
        let mut bad = files(3);
        bad[0][0] ^= 1;
        let err = store.write([&bad[0], &bad[1], &bad[2]], Ok).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
        assert_eq!(booted(store.flash().reboot()).0, 1);
    }

    #[test]
    fn a_damaged_current_bundle_boots_the_one_before_it() {
        let mut store = BundleStore::new(MemFlash::new());
        flash_seed(&mut store, 1).unwrap();
        let n = flash_seed(&mut store, 2).unwrap();
        let path = format!("{}/{}", dir(n), bundle::BACKBONE);
        store.flash.write(&path, b"bit rot").unwrap();
        let (got, passed) = store.boot(|b| Ok(b.stats.unwrap()[0]));
        assert_eq!(got.map(|(_, s)| s), Some(1));
        assert!(passed[0].contains("SHA-256"), "{passed:?}");
    }
}
