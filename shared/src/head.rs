//! The fixed-capacity Gaussian head: class-conditional Gaussians with one
//! shared covariance (LDA), learned class by class without old data.
//!
//! All state lives in caller-provided storage sized once from the feature
//! dimension `D` and the class capacity `K` ([`Layout`]). Learning,
//! committing, predicting and novelty scoring never allocate. The big
//! buffers are three packed `D x D` matrices whose roles rotate:
//!
//! * `pooled`: the committed accumulator `A` (see [`Weighting`]),
//! * `factor`: the Cholesky factor of the regularised `A / z`,
//! * `stage`: the scatter of the class being learned.
//!
//! A commit writes the candidate accumulator into `stage`, factors it into
//! `factor`, and on success swaps the roles of `stage` and `pooled`. On
//! failure it refactors `factor` from the untouched `pooled`, so the head is
//! exactly as before: `factor` is derived state and can always be rebuilt.

use crate::config::{regularize, HeadSettings, Transform, Weighting};
use crate::linalg::{self, dot, row_start, tri_len, NotPositiveDefinite};
use crate::moments::{chan_delta, welford_push};
use core::ops::Range;

/// Longest class label, in bytes.
pub const MAX_LABEL: usize = 32;
/// A class label; fixed-size so class tables need no allocation.
pub type Label = heapless::String<MAX_LABEL>;

/// Makes a [`Label`], or `None` if `s` is empty or longer than [`MAX_LABEL`].
pub fn label(s: &str) -> Option<Label> {
    if s.is_empty() {
        return None;
    }
    let mut l = Label::new();
    l.push_str(s).ok()?;
    Some(l)
}

/// One class of the head.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassSlot {
    pub label: Label,
    pub count: u64,
    pub active: bool,
}

/// Where the head keeps its state. Two implementations: [`OwnedStorage`]
/// (allocated once, with `alloc`) and [`BorrowedStorage`] (static buffers on
/// a target without a heap).
pub trait Storage {
    /// The float arena and the class table.
    fn parts(&self) -> (&[f64], &[ClassSlot]);
    /// Both, mutably and at once.
    fn parts_mut(&mut self) -> (&mut [f64], &mut [ClassSlot]);

    fn floats(&self) -> &[f64] {
        self.parts().0
    }
    fn floats_mut(&mut self) -> &mut [f64] {
        self.parts_mut().0
    }
    fn slots(&self) -> &[ClassSlot] {
        self.parts().1
    }
    fn slots_mut(&mut self) -> &mut [ClassSlot] {
        self.parts_mut().1
    }
}

/// Storage in buffers the caller owns (for example `static mut` arrays).
pub struct BorrowedStorage<'a> {
    pub floats: &'a mut [f64],
    pub slots: &'a mut [ClassSlot],
}

impl Storage for BorrowedStorage<'_> {
    fn parts(&self) -> (&[f64], &[ClassSlot]) {
        (self.floats, self.slots)
    }
    fn parts_mut(&mut self) -> (&mut [f64], &mut [ClassSlot]) {
        (self.floats, self.slots)
    }
}

#[cfg(feature = "alloc")]
pub use owned::OwnedStorage;

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Storage allocated once, at construction.
    pub struct OwnedStorage {
        floats: Vec<f64>,
        slots: Vec<ClassSlot>,
    }

    impl OwnedStorage {
        pub fn new(layout: Layout) -> Self {
            OwnedStorage { floats: vec![0.0; layout.floats()], slots: vec![ClassSlot::default(); layout.capacity] }
        }
    }

    impl Storage for OwnedStorage {
        fn parts(&self) -> (&[f64], &[ClassSlot]) {
            (&self.floats, &self.slots)
        }
        fn parts_mut(&mut self) -> (&mut [f64], &mut [ClassSlot]) {
            (&mut self.floats, &mut self.slots)
        }
    }

    impl GaussianHead<OwnedStorage> {
        /// A head with freshly allocated storage: the only allocation it
        /// ever makes.
        pub fn with_capacity(config: HeadConfig) -> Result<Self, HeadError> {
            let layout = Layout { dim: config.dim, capacity: config.capacity };
            GaussianHead::new(OwnedStorage::new(layout), config)
        }
    }
}

/// Offsets of the head's regions in its float arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub dim: usize,
    pub capacity: usize,
}

impl Layout {
    fn kd(&self) -> usize {
        self.dim * self.capacity
    }
    fn means(&self) -> Range<usize> {
        0..self.kd()
    }
    fn weights(&self) -> Range<usize> {
        self.kd()..2 * self.kd()
    }
    /// `q_c = m_c . w_c`, then `b_c = -q_c / 2 + log prior_c`.
    fn quad(&self) -> Range<usize> {
        let s = 2 * self.kd();
        s..s + self.capacity
    }
    fn bias(&self) -> Range<usize> {
        let s = 2 * self.kd() + self.capacity;
        s..s + self.capacity
    }
    /// The centre (`CENTER`) and the stage mean (`STAGE_MEAN`).
    fn vector(&self, i: usize) -> Range<usize> {
        let s = 2 * self.kd() + 2 * self.capacity + i * self.dim;
        s..s + self.dim
    }
    fn tri(&self, i: usize) -> Range<usize> {
        let s = 2 * self.kd() + 2 * self.capacity + 2 * self.dim + i * tri_len(self.dim);
        s..s + tri_len(self.dim)
    }
    /// Two scratch vectors, last, so that everything before them can be
    /// shared while they are written.
    fn scratch(&self) -> Range<usize> {
        let s = 2 * self.kd() + 2 * self.capacity + 2 * self.dim + 3 * tri_len(self.dim);
        s..s + 2 * self.dim
    }
    /// Length of the float arena.
    pub const fn floats(&self) -> usize {
        2 * self.dim * self.capacity + 2 * self.capacity + 4 * self.dim + 3 * tri_len(self.dim)
    }
    /// Bytes of the fixed footprint: the float arena plus the class table.
    pub const fn bytes(&self) -> usize {
        self.floats() * core::mem::size_of::<f64>() + self.capacity * core::mem::size_of::<ClassSlot>()
    }
}

const CENTER: usize = 0;
const STAGE_MEAN: usize = 1;

/// Construction parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadConfig {
    pub dim: usize,
    pub capacity: usize,
    pub weighting: Weighting,
    pub settings: HeadSettings,
    pub transform: Transform,
}

/// What went wrong. Every error leaves the head as it was (a failed commit
/// also drops the staged samples, see [`GaussianHead::commit`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeadError {
    #[error("storage holds {got} floats and {got_slots} class slots, the layout needs {need} and {need_slots}")]
    StorageSize { need: usize, got: usize, need_slots: usize, got_slots: usize },
    #[error("feature has {got} values, the head expects {expected}")]
    DimMismatch { expected: usize, got: usize },
    #[error("feature contains a NaN or infinite value")]
    NonFinite,
    #[error("the head is full ({capacity} classes)")]
    Full { capacity: usize },
    #[error("a class labelled {0:?} already exists")]
    DuplicateLabel(Label),
    #[error("no class labelled {0:?}")]
    UnknownClass(Label),
    #[error("class {0:?} is being learned: commit or abort it first")]
    Busy(Label),
    #[error("no class is being learned")]
    NotLearning,
    #[error("the class being learned has no samples")]
    EmptyClass,
    #[error("extending an existing class needs count weighting; the seed estimator keeps no per-class scatter")]
    ExtendUnsupported,
    #[error("the head has no classes")]
    NoClasses,
    #[error("covariance is not positive definite (pivot {pivot:e} at row {row}); use more shrinkage")]
    NotPositiveDefinite { row: usize, pivot: f64 },
    #[error("the centre vector must be set before any class is learned")]
    NotEmpty,
}

impl From<NotPositiveDefinite> for HeadError {
    fn from(e: NotPositiveDefinite) -> Self {
        HeadError::NotPositiveDefinite { row: e.row, pivot: e.pivot }
    }
}

/// Result of [`GaussianHead::predict`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Slot of the arg-max class.
    pub class: usize,
    /// Its discriminant score `w_c . x + b_c`.
    pub score: f64,
    /// Squared Mahalanobis distance to the nearest class mean: large means
    /// the sample looks like no class the head knows.
    pub novelty: f64,
}

/// What a successful commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub class: usize,
    /// Samples the class now has in total.
    pub count: u64,
    /// Samples this commit added.
    pub added: u64,
}

#[derive(Debug, Clone)]
struct Staging {
    label: Label,
    /// `Some(slot)` when extending an existing class.
    extend: Option<usize>,
    count: u64,
}

/// The tied-covariance Gaussian head. See the module docs.
pub struct GaussianHead<S: Storage> {
    storage: S,
    layout: Layout,
    weighting: Weighting,
    settings: HeadSettings,
    transform: Transform,
    /// Normaliser `z` of the pooled accumulator.
    norm: f64,
    /// Roles of the three packed buffers.
    pooled: usize,
    factor: usize,
    stage: usize,
    /// Whether `factor` holds a valid factor of the committed state.
    factored: bool,
    staging: Option<Staging>,
}

impl<S: Storage> GaussianHead<S> {
    /// Builds an empty head in `storage`, which must match
    /// `Layout { dim, capacity }`.
    pub fn new(mut storage: S, config: HeadConfig) -> Result<Self, HeadError> {
        let layout = Layout { dim: config.dim, capacity: config.capacity };
        let (got, got_slots) = (storage.floats().len(), storage.slots().len());
        if got != layout.floats() || got_slots != layout.capacity {
            return Err(HeadError::StorageSize { need: layout.floats(), got, need_slots: layout.capacity, got_slots });
        }
        storage.floats_mut().iter_mut().for_each(|v| *v = 0.0);
        storage.slots_mut().iter_mut().for_each(|s| *s = ClassSlot::default());
        Ok(GaussianHead {
            storage,
            layout,
            weighting: config.weighting,
            settings: config.settings,
            transform: config.transform,
            norm: 0.0,
            pooled: 0,
            factor: 1,
            stage: 2,
            factored: false,
            staging: None,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn dim(&self) -> usize {
        self.layout.dim
    }
    pub fn capacity(&self) -> usize {
        self.layout.capacity
    }
    pub fn weighting(&self) -> Weighting {
        self.weighting
    }
    pub fn settings(&self) -> HeadSettings {
        self.settings
    }
    pub fn transform(&self) -> Transform {
        self.transform
    }
    pub fn config(&self) -> HeadConfig {
        HeadConfig {
            dim: self.layout.dim,
            capacity: self.layout.capacity,
            weighting: self.weighting,
            settings: self.settings,
            transform: self.transform,
        }
    }
    /// Normaliser `z` of the pooled accumulator (`N - C` for count weighting).
    pub fn scatter_norm(&self) -> f64 {
        self.norm
    }
    pub fn slots(&self) -> &[ClassSlot] {
        self.storage.slots()
    }
    /// Active classes, with their slots.
    pub fn classes(&self) -> impl Iterator<Item = (usize, &ClassSlot)> {
        self.slots().iter().enumerate().filter(|(_, s)| s.active)
    }
    pub fn class_count(&self) -> usize {
        self.classes().count()
    }
    pub fn find(&self, label: &str) -> Option<usize> {
        self.classes().find(|(_, s)| s.label.as_str() == label).map(|(i, _)| i)
    }
    /// Mean of class `slot` in transformed feature space.
    pub fn mean(&self, slot: usize) -> &[f64] {
        let r = self.layout.means();
        &self.storage.floats()[r][slot * self.dim()..(slot + 1) * self.dim()]
    }
    /// The committed pooled accumulator (packed).
    pub fn pooled(&self) -> &[f64] {
        &self.storage.floats()[self.layout.tri(self.pooled)]
    }
    /// The centre used by the `center_l2` transform.
    pub fn center(&self) -> &[f64] {
        &self.storage.floats()[self.layout.vector(CENTER)]
    }
    /// The label being learned and the samples staged so far.
    pub fn learning(&self) -> Option<(&str, u64)> {
        self.staging.as_ref().map(|s| (s.label.as_str(), s.count))
    }

    /// Sets the `center_l2` centre; only while the head has no classes.
    pub fn set_center(&mut self, center: &[f64]) -> Result<(), HeadError> {
        if self.class_count() > 0 || self.staging.is_some() || self.norm != 0.0 {
            return Err(HeadError::NotEmpty);
        }
        self.check_dim(center.len())?;
        let r = self.layout.vector(CENTER);
        self.storage.floats_mut()[r].copy_from_slice(center);
        Ok(())
    }

    fn check_dim(&self, got: usize) -> Result<(), HeadError> {
        if got != self.dim() {
            return Err(HeadError::DimMismatch { expected: self.dim(), got });
        }
        Ok(())
    }

    /// Starts learning a new class. Errors if the label exists, the head is
    /// full, or another class is being learned.
    pub fn begin(&mut self, label: Label) -> Result<(), HeadError> {
        self.ensure_idle()?;
        if self.find(&label).is_some() {
            return Err(HeadError::DuplicateLabel(label));
        }
        if self.free_slot().is_none() {
            return Err(HeadError::Full { capacity: self.capacity() });
        }
        self.start_staging(label, None);
        Ok(())
    }

    /// Starts adding samples to an existing class (exact Chan merge at
    /// commit). Needs count weighting.
    pub fn begin_extend(&mut self, label: Label) -> Result<(), HeadError> {
        self.ensure_idle()?;
        let slot = self.find(&label).ok_or_else(|| HeadError::UnknownClass(label.clone()))?;
        if self.weighting != Weighting::Count {
            return Err(HeadError::ExtendUnsupported);
        }
        self.start_staging(label, Some(slot));
        Ok(())
    }

    fn ensure_idle(&self) -> Result<(), HeadError> {
        match &self.staging {
            Some(s) => Err(HeadError::Busy(s.label.clone())),
            None => Ok(()),
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots().iter().position(|s| !s.active)
    }

    fn start_staging(&mut self, label: Label, extend: Option<usize>) {
        let (m, t) = (self.layout.vector(STAGE_MEAN), self.layout.tri(self.stage));
        let f = self.storage.floats_mut();
        f[m].iter_mut().for_each(|v| *v = 0.0);
        f[t].iter_mut().for_each(|v| *v = 0.0);
        self.staging = Some(Staging { label, extend, count: 0 });
    }

    /// Adds one sample to the class being learned. Returns the number of
    /// samples staged. Never allocates.
    pub fn learn(&mut self, x: &[f32]) -> Result<u64, HeadError> {
        self.check_dim(x.len())?;
        if self.staging.is_none() {
            return Err(HeadError::NotLearning);
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(HeadError::NonFinite);
        }
        let (l, transform, stage) = (self.layout, self.transform, self.stage);
        let Some(staging) = self.staging.as_mut() else {
            return Err(HeadError::NotLearning);
        };
        let parts = split(self.storage.floats_mut(), &l);
        let scatter = &mut *parts.tri[stage];
        transform.apply(x, parts.center, parts.scratch_a);
        welford_push(&mut staging.count, parts.stage_mean, scatter, parts.scratch_a, parts.scratch_b);
        Ok(staging.count)
    }

    /// Drops the class being learned. The head is unchanged.
    pub fn abort(&mut self) -> Result<(), HeadError> {
        self.staging.take().map(|_| ()).ok_or(HeadError::NotLearning)
    }

    /// Adds the staged class to the head, atomically: either the class is in
    /// and every score reflects the new covariance, or (on error) the head is
    /// exactly as before. An empty class is refused and stays staged; a
    /// covariance that cannot be factored drops the staged samples.
    pub fn commit(&mut self) -> Result<Committed, HeadError> {
        let staging = self.staging.as_ref().ok_or(HeadError::NotLearning)?;
        if staging.count == 0 {
            return Err(HeadError::EmptyClass);
        }
        let Some(staging) = self.staging.take() else {
            return Err(HeadError::NotLearning);
        };
        let slot = match staging.extend {
            Some(slot) => slot,
            None => self.free_slot().ok_or(HeadError::Full { capacity: self.capacity() })?,
        };
        let l = self.layout;
        let weighting = self.weighting;
        let nb = staging.count;
        let old_count = self.slots()[slot].count;
        let new_norm;
        {
            let parts = split(self.storage.floats_mut(), &l);
            let mut tri = parts.tri;
            let (pooled, stage) = pick2(&mut tri, self.pooled, self.stage);
            let mean_c = &mut parts.means[slot * l.dim..(slot + 1) * l.dim];
            match staging.extend {
                None => {
                    // Candidate accumulator A' = A + weight(n) S_new.
                    let w = weighting.weight(nb);
                    stage.iter_mut().zip(pooled.iter()).for_each(|(s, p)| *s = *p + w * *s);
                    new_norm = self.norm + weighting.norm(nb);
                }
                Some(_) => {
                    // Chan merge of the staged summary into the class: its
                    // scatter grows by S_new + delta delta^T na nb / n, and
                    // so does the count-weighted accumulator. `delta` stays
                    // in scratch_b until the mean is installed below.
                    let coeff = chan_delta(old_count, mean_c, nb, parts.stage_mean, parts.scratch_b);
                    stage.iter_mut().zip(pooled.iter()).for_each(|(s, p)| *s += *p);
                    linalg::syr(stage, coeff, parts.scratch_b);
                    new_norm = self.norm + (weighting.norm(old_count + nb) - weighting.norm(old_count));
                }
            }
        }
        // Factor the candidate; on failure rebuild the committed factor.
        if let Err(e) = self.factor_from(self.stage, new_norm, self.settings) {
            self.refactor_committed();
            return Err(e.into());
        }
        // Nothing below can fail: install the class.
        {
            let parts = split(self.storage.floats_mut(), &l);
            let mean_c = &mut parts.means[slot * l.dim..(slot + 1) * l.dim];
            match staging.extend {
                None => mean_c.copy_from_slice(parts.stage_mean),
                Some(_) => {
                    let frac = nb as f64 / (old_count + nb) as f64;
                    linalg::axpy(mean_c, frac, parts.scratch_b);
                }
            }
        }
        let entry = &mut self.storage.slots_mut()[slot];
        entry.label = staging.label;
        entry.count = old_count + nb;
        entry.active = true;
        core::mem::swap(&mut self.pooled, &mut self.stage);
        self.norm = new_norm;
        self.factored = true;
        self.update_weights();
        Ok(Committed { class: slot, count: old_count + nb, added: nb })
    }

    /// Removes a class from prediction. Its within-class scatter stays in the
    /// shared covariance: it is still valid evidence about the feature noise,
    /// and removing it exactly needs the class's own scatter, which the head
    /// does not keep (see [`crate::moments::chan_remove`] for summaries that
    /// do). Never refactors, so it cannot fail numerically.
    pub fn forget(&mut self, label: &str) -> Result<(), HeadError> {
        let slot =
            self.find(label).ok_or_else(|| HeadError::UnknownClass(crate::head::label(label).unwrap_or_default()))?;
        if let Some(s) = &self.staging {
            if s.extend == Some(slot) {
                return Err(HeadError::Busy(s.label.clone()));
            }
        }
        let entry = &mut self.storage.slots_mut()[slot];
        entry.active = false;
        entry.count = 0;
        entry.label.clear();
        let (m, w) = (self.layout.means(), self.layout.weights());
        let d = self.dim();
        let f = self.storage.floats_mut();
        f[m][slot * d..(slot + 1) * d].iter_mut().for_each(|v| *v = 0.0);
        f[w][slot * d..(slot + 1) * d].iter_mut().for_each(|v| *v = 0.0);
        Ok(())
    }

    /// Changes the regulariser and prior; atomic like a commit.
    pub fn set_settings(&mut self, settings: HeadSettings) -> Result<(), HeadError> {
        if self.norm == 0.0 && self.class_count() == 0 {
            self.settings = settings;
            return Ok(());
        }
        if let Err(e) = self.factor_from(self.pooled, self.norm, settings) {
            self.refactor_committed();
            return Err(e.into());
        }
        self.settings = settings;
        self.factored = true;
        self.update_weights();
        Ok(())
    }

    /// Rebuilds `factor` from the committed state; used after a failed
    /// candidate factorisation. It succeeded before with the same inputs,
    /// and the arithmetic is deterministic, so it succeeds again.
    fn refactor_committed(&mut self) {
        if self.factored {
            let ok = self.factor_from(self.pooled, self.norm, self.settings).is_ok();
            debug_assert!(ok, "committed state refactors");
            self.factored = ok;
        }
    }

    /// `factor = chol(regularize(tri[src] / norm))`. With no within-class
    /// information at all (`norm == 0`) the covariance is the identity: the
    /// head degrades to nearest class mean.
    fn factor_from(&mut self, src: usize, norm: f64, settings: HeadSettings) -> Result<(), NotPositiveDefinite> {
        let l = self.layout;
        let parts = split(self.storage.floats_mut(), &l);
        let mut tri = parts.tri;
        let (src_buf, dst) = pick2(&mut tri, src, self.factor);
        if norm > 0.0 {
            let inv = 1.0 / norm;
            dst.iter_mut().zip(src_buf.iter()).for_each(|(d, s)| *d = *s * inv);
            regularize(dst, l.dim, settings.regularizer, norm);
        } else {
            dst.iter_mut().for_each(|v| *v = 0.0);
            for i in 0..l.dim {
                dst[row_start(i) + i] = 1.0;
            }
        }
        linalg::cholesky_in_place(dst, l.dim)
    }

    /// Recomputes `w_c = Sigma^-1 m_c`, `q_c = m_c . w_c` and the biases for
    /// every active class from the current factor.
    fn update_weights(&mut self) {
        let (l, prior, factor) = (self.layout, self.settings.prior, self.factor);
        for slot in 0..l.capacity {
            let ClassSlot { active, count, .. } = self.storage.slots()[slot];
            let parts = split(self.storage.floats_mut(), &l);
            let range = slot * l.dim..(slot + 1) * l.dim;
            let w = &mut parts.weights[range.clone()];
            if !active {
                w.iter_mut().for_each(|v| *v = 0.0);
                parts.quad[slot] = 0.0;
                parts.bias[slot] = f64::NEG_INFINITY;
                continue;
            }
            let m = &parts.means[range];
            w.copy_from_slice(m);
            linalg::cholesky_solve(parts.tri[factor], w);
            let q = dot(m, w);
            parts.quad[slot] = q;
            parts.bias[slot] = -0.5 * q + prior.log_prior(count);
        }
    }

    /// Scores every class and finds the arg-max and the novelty, using the
    /// head's own scratch. Never allocates. `scores`, if given, receives one
    /// score per slot (`-inf` for empty slots).
    pub fn predict(&mut self, x: &[f32], scores: Option<&mut [f64]>) -> Result<Prediction, HeadError> {
        let l = self.layout;
        let ctx = Ctx { transform: self.transform, factor: self.factor, factored: self.factored, novelty: true };
        let (floats, slots) = self.storage.parts_mut();
        let (arena, scratch) = floats.split_at_mut(l.scratch().start);
        let (xt, y) = scratch.split_at_mut(l.dim);
        predict_impl(&ctx, l, arena, slots, x, scores, xt, y)
    }

    /// Like [`predict`](Self::predict) without the novelty score, which
    /// costs a triangular solve (`D^2 / 2` multiply-adds) on top of the `K D`
    /// of the scores. `novelty` comes back as NaN.
    pub fn classify(&mut self, x: &[f32], scores: Option<&mut [f64]>) -> Result<Prediction, HeadError> {
        let l = self.layout;
        let ctx = Ctx { transform: self.transform, factor: self.factor, factored: self.factored, novelty: false };
        let (floats, slots) = self.storage.parts_mut();
        let (arena, scratch) = floats.split_at_mut(l.scratch().start);
        let (xt, y) = scratch.split_at_mut(l.dim);
        predict_impl(&ctx, l, arena, slots, x, scores, xt, y)
    }

    /// Like [`predict`](Self::predict) with caller-owned scratch of `2 D`
    /// values, so several threads can share one head.
    pub fn predict_with(
        &self,
        x: &[f32],
        scores: Option<&mut [f64]>,
        scratch: &mut [f64],
    ) -> Result<Prediction, HeadError> {
        let l = self.layout;
        if scratch.len() < 2 * l.dim {
            return Err(HeadError::DimMismatch { expected: 2 * l.dim, got: scratch.len() });
        }
        let (xt, y) = scratch.split_at_mut(l.dim);
        let ctx = Ctx { transform: self.transform, factor: self.factor, factored: self.factored, novelty: true };
        let (floats, slots) = self.storage.parts();
        predict_impl(&ctx, l, floats, slots, x, scores, xt, &mut y[..l.dim])
    }

    /// Writes the statistics of a loaded file: called by
    /// [`crate::stats`] after the whole file was validated. Atomic like a
    /// commit: the candidate accumulator goes into the stage buffer and is
    /// factored before anything else changes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install(
        &mut self,
        weighting: Weighting,
        settings: HeadSettings,
        transform: Transform,
        norm: f64,
        fill_pooled: impl FnOnce(&mut [f64]),
        fill_center: impl FnOnce(&mut [f64]),
        mut next_class: impl FnMut(&mut [f64]) -> Option<(Label, u64)>,
    ) -> Result<(), HeadError> {
        self.ensure_idle()?;
        let l = self.layout;
        fill_pooled(&mut self.storage.floats_mut()[l.tri(self.stage)]);
        if let Err(e) = self.factor_from(self.stage, norm, settings) {
            self.refactor_committed();
            return Err(e.into());
        }
        core::mem::swap(&mut self.pooled, &mut self.stage);
        self.weighting = weighting;
        self.settings = settings;
        self.transform = transform;
        self.norm = norm;
        self.factored = true;
        let (floats, slots) = self.storage.parts_mut();
        fill_center(&mut floats[l.vector(CENTER)]);
        floats[l.means()].iter_mut().for_each(|v| *v = 0.0);
        slots.iter_mut().for_each(|s| *s = ClassSlot::default());
        for (slot, entry) in slots.iter_mut().enumerate() {
            let mean = &mut floats[l.means()][slot * l.dim..(slot + 1) * l.dim];
            match next_class(mean) {
                Some((label, count)) => *entry = ClassSlot { label, count, active: true },
                None => break,
            }
        }
        self.update_weights();
        Ok(())
    }
}

/// What prediction needs of the head besides its arena.
struct Ctx {
    transform: Transform,
    factor: usize,
    factored: bool,
    novelty: bool,
}

/// `f` is the float arena up to its scratch vectors; indices come from `l`.
#[allow(clippy::too_many_arguments)]
fn predict_impl(
    ctx: &Ctx,
    l: Layout,
    f: &[f64],
    slots: &[ClassSlot],
    x: &[f32],
    mut scores: Option<&mut [f64]>,
    xt: &mut [f64],
    y: &mut [f64],
) -> Result<Prediction, HeadError> {
    if x.len() != l.dim {
        return Err(HeadError::DimMismatch { expected: l.dim, got: x.len() });
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(HeadError::NonFinite);
    }
    if !ctx.factored || !slots.iter().any(|s| s.active) {
        return Err(HeadError::NoClasses);
    }
    ctx.transform.apply(x, &f[l.vector(CENTER)], xt);
    // ||L^-1 x||^2 for the novelty score.
    let xx = if ctx.novelty {
        y.copy_from_slice(xt);
        linalg::forward_solve(&f[l.tri(ctx.factor)], y);
        dot(y, y)
    } else {
        f64::NAN
    };
    let (weights, quad, bias) = (&f[l.weights()], &f[l.quad()], &f[l.bias()]);
    let mut best = Prediction { class: usize::MAX, score: f64::NEG_INFINITY, novelty: f64::INFINITY };
    for (slot, s) in slots.iter().enumerate() {
        if !s.active {
            if let Some(out) = scores.as_deref_mut() {
                if let Some(o) = out.get_mut(slot) {
                    *o = f64::NEG_INFINITY;
                }
            }
            continue;
        }
        let wx = dot(&weights[slot * l.dim..(slot + 1) * l.dim], xt);
        let g = wx + bias[slot];
        let maha = (xx - 2.0 * wx + quad[slot]).max(0.0);
        if let Some(out) = scores.as_deref_mut() {
            if let Some(o) = out.get_mut(slot) {
                *o = g;
            }
        }
        if g > best.score || best.class == usize::MAX {
            best.score = g;
            best.class = slot;
        }
        best.novelty = best.novelty.min(maha);
    }
    if !ctx.novelty {
        best.novelty = f64::NAN;
    }
    Ok(best)
}

/// Disjoint mutable views of the arena.
struct Parts<'a> {
    means: &'a mut [f64],
    weights: &'a mut [f64],
    quad: &'a mut [f64],
    bias: &'a mut [f64],
    center: &'a mut [f64],
    stage_mean: &'a mut [f64],
    scratch_a: &'a mut [f64],
    scratch_b: &'a mut [f64],
    tri: [&'a mut [f64]; 3],
}

fn split<'a>(f: &'a mut [f64], l: &Layout) -> Parts<'a> {
    let (means, f) = f.split_at_mut(l.kd());
    let (weights, f) = f.split_at_mut(l.kd());
    let (quad, f) = f.split_at_mut(l.capacity);
    let (bias, f) = f.split_at_mut(l.capacity);
    let (center, f) = f.split_at_mut(l.dim);
    let (stage_mean, f) = f.split_at_mut(l.dim);
    let t = tri_len(l.dim);
    let (t0, f) = f.split_at_mut(t);
    let (t1, f) = f.split_at_mut(t);
    let (t2, f) = f.split_at_mut(t);
    let (scratch_a, f) = f.split_at_mut(l.dim);
    let (scratch_b, _) = f.split_at_mut(l.dim);
    Parts { means, weights, quad, bias, center, stage_mean, scratch_a, scratch_b, tri: [t0, t1, t2] }
}

/// Two distinct buffers of the three, the first shared, the second mutable.
fn pick2<'b>(tri: &'b mut [&mut [f64]; 3], a: usize, b: usize) -> (&'b [f64], &'b mut [f64]) {
    debug_assert_ne!(a, b);
    let [t0, t1, t2] = tri;
    match (a, b) {
        (0, 1) => (t0, t1),
        (0, 2) => (t0, t2),
        (1, 0) => (t1, t0),
        (1, 2) => (t1, t2),
        (2, 0) => (t2, t0),
        _ => (t2, t1),
    }
}
