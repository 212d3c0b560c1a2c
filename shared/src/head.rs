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

use crate::config::{regularize, HeadSettings, NoveltyScore, Transform, Weighting};
use crate::linalg::{self, dot, row_start, tri_len, NotPositiveDefinite};
use crate::moments::{chan_delta, welford_mean};
use core::ops::Range;

/// Longest class label, in bytes.
pub const MAX_LABEL: usize = 32;
/// Most samples a class (and the whole head) may count: 2^48, far beyond
/// any device's captures, and small enough that every count is exact in
/// f64 and no sum of counts can overflow. A statistics file or a commit
/// past it is refused.
pub const MAX_COUNT: u64 = 1 << 48;
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
    /// The class's label (unique among active slots).
    pub label: Label,
    /// Samples it was learned from.
    pub count: u64,
    /// Whether the slot holds a class (forgotten slots are reused).
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

    /// The float arena.
    fn floats(&self) -> &[f64] {
        self.parts().0
    }
    /// The float arena, mutably.
    fn floats_mut(&mut self) -> &mut [f64] {
        self.parts_mut().0
    }
    /// The class table.
    fn slots(&self) -> &[ClassSlot] {
        self.parts().1
    }
    /// The class table, mutably.
    fn slots_mut(&mut self) -> &mut [ClassSlot] {
        self.parts_mut().1
    }
}

/// Storage in buffers the caller owns (for example `static mut` arrays).
pub struct BorrowedStorage<'a> {
    /// [`Layout::floats`] values.
    pub floats: &'a mut [f64],
    /// [`Layout::capacity`] slots.
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
        /// Zeroed storage for `layout`.
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
            if layout.checked_bytes().is_none() {
                return Err(HeadError::TooLarge { dim: config.dim, capacity: config.capacity });
            }
            config.check()?;
            GaussianHead::new(OwnedStorage::new(layout), config)
        }
    }
}

/// Offsets of the head's regions in its float arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Feature dimension.
    pub dim: usize,
    /// Class slots.
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
    /// Per class, the whitened scatter trace (see [`GaussianHead::spread`]).
    fn spread(&self) -> Range<usize> {
        let s = 2 * self.kd() + 2 * self.capacity;
        s..s + self.capacity
    }
    /// Per class, the noise energy of its mean subtracted from distances
    /// (zero unless [`HeadSettings::debias`]).
    fn noise(&self) -> Range<usize> {
        let s = 2 * self.kd() + 3 * self.capacity;
        s..s + self.capacity
    }
    /// The centre (`CENTER`) and the stage mean (`STAGE_MEAN`).
    fn vector(&self, i: usize) -> Range<usize> {
        let s = 2 * self.kd() + PER_CLASS * self.capacity + i * self.dim;
        s..s + self.dim
    }
    fn tri(&self, i: usize) -> Range<usize> {
        let s = 2 * self.kd() + PER_CLASS * self.capacity + 2 * self.dim + i * tri_len(self.dim);
        s..s + tri_len(self.dim)
    }
    /// The factor rounded to f32, two values to an f64 of the arena (see
    /// [`GaussianHead::predict`]).
    fn score(&self) -> Range<usize> {
        let s = self.tri(2).end;
        s..s + tri_len(self.dim).div_ceil(2)
    }
    /// The samples learned but not yet added to the staged scatter:
    /// [`PENDING`] deltas of `D` values, then their coefficients.
    fn pending(&self) -> Range<usize> {
        let s = self.score().end;
        s..s + PENDING * (self.dim + 1)
    }
    /// Two scratch vectors, last, so that everything before them can be
    /// shared while they are written.
    fn scratch(&self) -> Range<usize> {
        let s = self.pending().end;
        s..s + 2 * self.dim
    }
    /// [`bytes`](Self::bytes), or `None` where it overflows `usize` (a
    /// dimension or capacity no storage could hold): check it before
    /// allocating from sizes that came from outside.
    pub fn checked_bytes(&self) -> Option<usize> {
        let (d, k) = (self.dim, self.capacity);
        let tri = d.checked_add(1)?.checked_mul(d)? / 2;
        let floats = d
            .checked_mul(k)?
            .checked_mul(2)?
            .checked_add(PER_CLASS.checked_mul(k)?)?
            .checked_add(d.checked_mul(4)?)?
            .checked_add(tri.checked_mul(3)?)?
            .checked_add(tri.div_ceil(2))?
            .checked_add(d.checked_add(1)?.checked_mul(PENDING)?)?;
        floats.checked_mul(core::mem::size_of::<f64>())?.checked_add(k.checked_mul(core::mem::size_of::<ClassSlot>())?)
    }
    /// Length of the float arena.
    pub const fn floats(&self) -> usize {
        2 * self.dim * self.capacity
            + PER_CLASS * self.capacity
            + 4 * self.dim
            + 3 * tri_len(self.dim)
            + tri_len(self.dim).div_ceil(2)
            + PENDING * (self.dim + 1)
    }
    /// Bytes of the fixed footprint: the float arena plus the class table.
    pub const fn bytes(&self) -> usize {
        self.floats() * core::mem::size_of::<f64>() + self.capacity * core::mem::size_of::<ClassSlot>()
    }
}

/// Scalars per class: `quad`, `bias`, `spread`, `noise`.
const PER_CLASS: usize = 4;
/// Samples [`GaussianHead::learn`] holds before it adds them to the staged
/// scatter in one pass. Each sample's update touches all `D (D + 1) / 2`
/// values of the scatter and of the factor (13 MiB each in f64 at D = 1808),
/// so one at a time a learn streams 26 MiB from memory; eight at a time the
/// matrices are read once per eight samples, and the arithmetic, not
/// memory, sets the pace. It costs `8 (D + 1)` values of the arena (113 KiB
/// at D = 1808) and changes no result: the batched updates add the same
/// terms in the same order.
pub const PENDING: usize = 8;
const CENTER: usize = 0;
const STAGE_MEAN: usize = 1;

/// Construction parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadConfig {
    /// Feature dimension.
    pub dim: usize,
    /// Class slots, fixed for the head's life.
    pub capacity: usize,
    /// How class scatters pool (fixed: it is part of the statistics).
    pub weighting: Weighting,
    /// Run-time settings ([`GaussianHead::set_settings`] changes them).
    pub settings: HeadSettings,
    /// Feature transform (fixed: statistics live in transformed space).
    pub transform: Transform,
}

impl HeadConfig {
    /// Refuses parameters no head can work with: a zero dimension or
    /// capacity, a regulariser or transform parameter out of range.
    pub fn check(&self) -> Result<(), HeadError> {
        if self.dim == 0 || self.capacity == 0 {
            return Err(HeadError::TooLarge { dim: self.dim, capacity: self.capacity });
        }
        self.settings.check().map_err(HeadError::InvalidSetting)?;
        self.transform.check().map_err(HeadError::InvalidSetting)
    }
}

/// What went wrong. Every error leaves the head as it was (a failed commit
/// also drops the staged samples, see [`GaussianHead::commit`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages print
pub enum HeadError {
    /// Borrowed storage of the wrong size for the layout.
    #[error("storage holds {got} floats and {got_slots} class slots, the layout needs {need} and {need_slots}")]
    StorageSize { need: usize, got: usize, need_slots: usize, got_slots: usize },
    /// A feature vector of another length than the head's.
    #[error("feature has {got} values, the head expects {expected}")]
    DimMismatch { expected: usize, got: usize },
    /// A NaN or infinity in a feature: refused before it reaches the sums.
    #[error("feature contains a NaN or infinite value")]
    NonFinite,
    /// No free class slot.
    #[error("the head is full ({capacity} classes)")]
    Full { capacity: usize },
    /// A new class under an existing label.
    #[error("a class labelled {0:?} already exists")]
    DuplicateLabel(Label),
    /// No class has that label.
    #[error("no class labelled {0:?}")]
    UnknownClass(Label),
    /// A class is being learned; the request needs none to be.
    #[error("class {0:?} is being learned: commit or abort it first")]
    Busy(Label),
    /// Learn, commit or abort with no class begun.
    #[error("no class is being learned")]
    NotLearning,
    /// Commit of a class with no samples.
    #[error("the class being learned has no samples")]
    EmptyClass,
    /// Extending a class under class-mean weighting.
    #[error("extending an existing class needs count weighting; the seed estimator keeps no per-class scatter")]
    ExtendUnsupported,
    /// Predict or save with no class.
    #[error("the head has no classes")]
    NoClasses,
    /// The regularised covariance did not factor; the head is unchanged.
    #[error("covariance is not positive definite (pivot {pivot:e} at row {row}); use more shrinkage")]
    NotPositiveDefinite { row: usize, pivot: f64 },
    /// Setting the centre after classes were learned in its space.
    #[error("the centre vector must be set before any class is learned")]
    NotEmpty,
    /// Zero, or too large to address, dimension or capacity.
    #[error("no head can be made with feature dimension {dim} and capacity {capacity}")]
    TooLarge { dim: usize, capacity: usize },
    /// A setting out of its range.
    #[error("invalid head setting: {0}")]
    InvalidSetting(&'static str),
    /// A count past the exact range of the sums.
    #[error("a class would count more than {} samples", MAX_COUNT)]
    CountOverflow,
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
    /// Slot of the class.
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
    /// Trace of the staged scatter in the committed metric,
    /// `tr(Sigma^-1 S_new)`, grown by Welford's deltas (see [`GaussianHead::spread`]).
    spread: f64,
    /// Samples counted into the mean whose scatter update waits in the
    /// pending buffer (fewer than [`PENDING`]).
    pending: usize,
}

/// The tied-covariance Gaussian head. See the module docs.
///
/// A class is learned from its samples alone (no old data, no gradient
/// step), and a sample far from every class scores a high novelty:
///
/// ```
/// use gaussedge_shared::{label, Estimator, GaussianHead, HeadConfig, Transform};
///
/// let config = HeadConfig {
///     dim: 2,
///     capacity: 4,
///     weighting: Estimator::Pooled.weighting(),
///     settings: Estimator::Pooled.settings(),
///     transform: Transform::IDENTITY,
/// };
/// let mut head = GaussianHead::with_capacity(config)?;
/// for (name, centre) in [("cat", [0.0f32, 0.0]), ("dog", [10.0, 0.0])] {
///     head.begin(label(name).unwrap())?;
///     for (dx, dy) in [(0.5, 0.0), (-0.5, 0.3), (0.0, -0.4), (0.2, 0.6), (-0.3, -0.2)] {
///         head.learn(&[centre[0] + dx, centre[1] + dy])?;
///     }
///     head.commit()?;
/// }
/// let near_dog = head.predict(&[9.6, 0.1], None)?;
/// assert_eq!(head.slots()[near_dog.class].label.as_str(), "dog");
/// // Far from both: the device would answer "unknown" above its threshold.
/// let elsewhere = head.predict(&[5.0, 40.0], None)?;
/// assert!(elsewhere.novelty > 100.0 * near_dog.novelty);
/// # Ok::<(), gaussedge_shared::HeadError>(())
/// ```
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
        config.check()?;
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

    /// Where the head's regions lie in its arena.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.layout.dim
    }
    /// Class slots.
    pub fn capacity(&self) -> usize {
        self.layout.capacity
    }
    /// How class scatters pool.
    pub fn weighting(&self) -> Weighting {
        self.weighting
    }
    /// The run-time settings in force.
    pub fn settings(&self) -> HeadSettings {
        self.settings
    }
    /// The feature transform.
    pub fn transform(&self) -> Transform {
        self.transform
    }
    /// What a head like this one is made from.
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
    /// Every slot, active or not, by slot number.
    pub fn slots(&self) -> &[ClassSlot] {
        self.storage.slots()
    }
    /// Active classes, with their slots.
    pub fn classes(&self) -> impl Iterator<Item = (usize, &ClassSlot)> {
        self.slots().iter().enumerate().filter(|(_, s)| s.active)
    }
    /// Active classes.
    pub fn class_count(&self) -> usize {
        self.classes().count()
    }
    /// The slot of the active class labelled `label`.
    pub fn find(&self, label: &str) -> Option<usize> {
        self.classes().find(|(_, s)| s.label.as_str() == label).map(|(i, _)| i)
    }
    /// Mean of class `slot` in transformed feature space.
    pub fn mean(&self, slot: usize) -> &[f64] {
        let r = self.layout.means();
        &self.storage.floats()[r][slot * self.dim()..(slot + 1) * self.dim()]
    }
    /// Whitened scatter trace of class `slot`, `tr(Sigma^-1 S_c)`, where
    /// `S_c` is the class's own scatter and `Sigma` the shared covariance
    /// its commit produced: measured per sample against the covariance
    /// committed while it was learned, then carried across its commit (see
    /// `rescale_spread`). A class's first sample adds nothing; a class
    /// learned into an empty head, with no metric to measure in, takes the
    /// rule's no-metric limit.
    ///
    /// Why: a mean from `n` samples is off by noise of covariance
    /// `C_c / n`, which adds `tr(Sigma^-1 C_c) / n` to every expected
    /// squared distance to it. For a class the base covariance does not
    /// describe (a new class that varies where the base classes do not),
    /// that term dwarfs the margins between classes and the class is almost
    /// never predicted after a few-shot learn. `spread / (n (n - 1))`
    /// estimates it without bias, from the class's own samples; with
    /// [`HeadSettings::debias`] it is subtracted from the class's distances.
    pub fn spread(&self, slot: usize) -> f64 {
        self.storage.floats()[self.layout.spread()][slot]
    }
    /// The noise energy subtracted from class `slot`'s squared distances
    /// (0 unless [`HeadSettings::debias`]).
    pub fn noise(&self, slot: usize) -> f64 {
        self.storage.floats()[self.layout.noise()][slot]
    }

    /// What [`NoveltyScore::OwnSpread`] subtracts from class `slot`'s
    /// squared distances in the novelty score: the excess of its spread per
    /// sample, `spread / (n - 1)`, over the pooled spread per sample of all
    /// classes (0 for a class no wider than the pool, or under
    /// [`NoveltyScore::Distance`]).
    pub fn novelty_offset(&self, slot: usize) -> f64 {
        let (f, slots) = self.storage.parts();
        match (self.settings.novelty, slots.get(slot)) {
            (NoveltyScore::OwnSpread, Some(s)) if s.active => {
                let spread = &f[self.layout.spread()];
                excess_spread(spread[slot], s.count, pooled_spread(slots, spread))
            }
            _ => 0.0,
        }
    }

    /// `|L^-1 (t(x) - m_slot)|^2` under the committed covariance: one
    /// sample's share of a class's [`spread`](Self::spread). With
    /// [`set_spread`](Self::set_spread) a host that still has a class's
    /// samples re-measures its spread in the final metric; `scratch` holds
    /// `2 D` values so several threads can share the head.
    pub fn whitened_sq(&self, slot: usize, x: &[f32], scratch: &mut [f64]) -> Result<f64, HeadError> {
        let l = self.layout;
        self.check_dim(x.len())?;
        if scratch.len() < 2 * l.dim {
            return Err(HeadError::DimMismatch { expected: 2 * l.dim, got: scratch.len() });
        }
        if !self.slots().get(slot).is_some_and(|s| s.active) || !self.factored {
            return Err(HeadError::NoClasses);
        }
        let (xt, _) = scratch.split_at_mut(l.dim);
        self.transform.apply(x, self.center(), xt);
        xt.iter_mut().zip(self.mean(slot)).for_each(|(v, m)| *v -= m);
        self.mahalanobis_sq(xt)
    }

    /// `v' Sigma^-1 v` under the committed covariance, for a difference `v`
    /// of points in transformed space; `v` is overwritten.
    pub fn mahalanobis_sq(&self, v: &mut [f64]) -> Result<f64, HeadError> {
        self.check_dim(v.len())?;
        if !self.factored {
            return Err(HeadError::NoClasses);
        }
        Ok(linalg::whitened_norm_sq(&self.storage.floats()[self.layout.tri(self.factor)], v))
    }

    /// Replaces class `slot`'s spread (for example by the sum of
    /// [`whitened_sq`](Self::whitened_sq) over its samples) and rescores it.
    pub fn set_spread(&mut self, slot: usize, spread: f64) -> Result<(), HeadError> {
        if !spread.is_finite() || spread < 0.0 {
            return Err(HeadError::NonFinite);
        }
        if !self.slots().get(slot).is_some_and(|s| s.active) {
            return Err(HeadError::NoClasses);
        }
        let r = self.layout.spread();
        self.storage.floats_mut()[r][slot] = spread;
        self.update_bias(slot);
        Ok(())
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
        self.staging = Some(Staging { label, extend, count: 0, spread: 0.0, pending: 0 });
    }

    /// Adds one sample to the class being learned. Returns the number of
    /// samples staged. Never allocates. The sample moves the staged mean at
    /// once; its scatter update waits until [`PENDING`] samples are in (or
    /// the commit), which then pays for them all in one pass.
    pub fn learn(&mut self, x: &[f32]) -> Result<u64, HeadError> {
        self.check_dim(x.len())?;
        if self.staging.is_none() {
            return Err(HeadError::NotLearning);
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(HeadError::NonFinite);
        }
        if self.staging.as_ref().is_some_and(|s| s.count >= MAX_COUNT) {
            return Err(HeadError::CountOverflow);
        }
        let (l, transform) = (self.layout, self.transform);
        let Some(staging) = self.staging.as_mut() else {
            return Err(HeadError::NotLearning);
        };
        let parts = split(self.storage.floats_mut(), &l);
        transform.apply(x, parts.center, parts.scratch_a);
        let j = staging.pending;
        let delta = &mut parts.pending[j * l.dim..(j + 1) * l.dim];
        parts.pending_coeff[j] = welford_mean(&mut staging.count, parts.stage_mean, parts.scratch_a, delta);
        staging.pending += 1;
        let count = staging.count;
        if staging.pending == PENDING {
            self.flush_pending();
        }
        Ok(count)
    }

    /// Adds the pending samples' updates to the staged scatter and their
    /// terms to the staged spread, in one pass over each matrix.
    fn flush_pending(&mut self) {
        let (l, stage, factored) = (self.layout, self.stage, self.factored);
        let Some(staging) = self.staging.as_mut() else {
            return;
        };
        let k = staging.pending;
        if k == 0 {
            return;
        }
        let parts = split(self.storage.floats_mut(), &l);
        let tri = parts.tri;
        let (coeffs, deltas) = (&parts.pending_coeff[..k], &mut parts.pending[..k * l.dim]);
        linalg::syr_batch(tri[stage], coeffs, deltas);
        if factored {
            // Welford adds `(n - 1) / n * d d^T` to the scatter, so its
            // whitened trace grows by `(n - 1) / n * |L^-1 d|^2`: exact,
            // and free of the cancellation a sum of `|L^-1 x|^2` would have.
            // The solve reads the f32 copy of the factor, as the novelty
            // score does: half the bytes of the f64 one, for a figure that
            // only ever enters a score divided by `n (n - 1)`.
            linalg::forward_solve_batch_f32(&parts.score[..tri_len(l.dim)], deltas, l.dim);
            let first = staging.count - k as u64;
            for (j, y) in deltas.chunks_exact(l.dim).enumerate() {
                let n = (first + j as u64 + 1) as f64;
                staging.spread += (n - 1.0) / n * dot(y, y);
            }
        }
        staging.pending = 0;
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
        self.flush_pending();
        let staging = self.staging.as_ref().ok_or(HeadError::NotLearning)?;
        if staging.count == 0 {
            return Err(HeadError::EmptyClass);
        }
        // Counts are bounded when they come in (files, learn), so the sum
        // cannot overflow; past the bound the commit is refused and the
        // staged samples stay for an abort.
        let before: u64 = self.classes().map(|(_, c)| c.count).sum();
        if before + staging.count > MAX_COUNT {
            return Err(HeadError::CountOverflow);
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
        let factored = self.factored;
        let new_norm;
        // The staged scatter's whitened trace in the committed metric, with
        // the weight and rank it enters the accumulator with.
        let mut spread = staging.spread;
        let (mut weight, mut rank) = (weighting.weight(nb), nb.saturating_sub(1));
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
                    // The whitened trace merges like the scatter.
                    (weight, rank) = (1.0, nb);
                    if factored {
                        parts.scratch_a.copy_from_slice(parts.scratch_b);
                        spread += coeff * linalg::whitened_norm_sq(tri[self.factor], parts.scratch_a);
                    }
                    new_norm = self.norm + (weighting.norm(old_count + nb) - weighting.norm(old_count));
                }
            }
        }
        // Factor the candidate; on failure rebuild the committed factor.
        let keep = match self.factor_from(self.stage, new_norm, self.settings) {
            Ok(keep) => keep,
            Err(e) => {
                self.refactor_committed();
                return Err(e.into());
            }
        };
        let added = rescale_spread(spread, rank.min(l.dim as u64), self.norm, new_norm, keep * weight);
        // Nothing below can fail: install the class.
        {
            let parts = split(self.storage.floats_mut(), &l);
            parts.spread[slot] = added + if staging.extend.is_some() { parts.spread[slot] } else { 0.0 };
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
        let (spread, noise) = (self.layout.spread(), self.layout.noise());
        let d = self.dim();
        let f = self.storage.floats_mut();
        f[m][slot * d..(slot + 1) * d].iter_mut().for_each(|v| *v = 0.0);
        f[w][slot * d..(slot + 1) * d].iter_mut().for_each(|v| *v = 0.0);
        f[spread][slot] = 0.0;
        f[noise][slot] = 0.0;
        Ok(())
    }

    /// Changes the regulariser, prior and debiasing; atomic like a commit.
    /// Refused while a class is being learned: its whitened spread is being
    /// measured in the current metric.
    pub fn set_settings(&mut self, settings: HeadSettings) -> Result<(), HeadError> {
        self.ensure_idle()?;
        settings.check().map_err(HeadError::InvalidSetting)?;
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
    /// head degrades to nearest class mean. Returns the fraction of the
    /// scatter the regulariser keeps (`1 - a` for shrinkage, 1 for a ridge).
    fn factor_from(&mut self, src: usize, norm: f64, settings: HeadSettings) -> Result<f64, NotPositiveDefinite> {
        let l = self.layout;
        let parts = split(self.storage.floats_mut(), &l);
        let mut tri = parts.tri;
        let (src_buf, dst) = pick2(&mut tri, src, self.factor);
        let mut keep = 1.0;
        if norm > 0.0 {
            let inv = 1.0 / norm;
            dst.iter_mut().zip(src_buf.iter()).for_each(|(d, s)| *d = *s * inv);
            let applied = regularize(dst, l.dim, settings.regularizer, norm);
            if !matches!(settings.regularizer, crate::config::Regularizer::Ridge(_)) {
                keep = 1.0 - applied;
            }
        } else {
            dst.iter_mut().for_each(|v| *v = 0.0);
            for i in 0..l.dim {
                dst[row_start(i) + i] = 1.0;
            }
        }
        linalg::cholesky_in_place(dst, l.dim)?;
        Ok(keep)
    }

    /// Recomputes `w_c = Sigma^-1 m_c`, `q_c = m_c . w_c` and the biases for
    /// every active class from the current factor, and the factor's f32
    /// copy that [`predict`](Self::predict) scores novelty with.
    fn update_weights(&mut self) {
        let (l, factor) = (self.layout, self.factor);
        {
            let parts = split(self.storage.floats_mut(), &l);
            linalg::round_to_f32(parts.tri[factor], parts.score);
        }
        for slot in 0..l.capacity {
            let active = self.storage.slots()[slot].active;
            let parts = split(self.storage.floats_mut(), &l);
            let range = slot * l.dim..(slot + 1) * l.dim;
            let w = &mut parts.weights[range.clone()];
            if !active {
                w.iter_mut().for_each(|v| *v = 0.0);
                parts.quad[slot] = 0.0;
                parts.bias[slot] = f64::NEG_INFINITY;
                parts.noise[slot] = 0.0;
                continue;
            }
            let m = &parts.means[range];
            w.copy_from_slice(m);
            linalg::cholesky_solve(parts.tri[factor], w);
            parts.quad[slot] = dot(m, w);
            self.update_bias(slot);
        }
    }

    /// `b_c = -q_c / 2 + log prior_c + noise_c / 2`: the last term undoes,
    /// in expectation, the noise a mean estimated from `n_c` samples adds to
    /// every squared distance to it (see [`spread`](Self::spread)).
    fn update_bias(&mut self, slot: usize) {
        let (l, HeadSettings { prior, debias, .. }) = (self.layout, self.settings);
        let count = self.storage.slots()[slot].count;
        let parts = split(self.storage.floats_mut(), &l);
        let noise = if debias && count >= 2 { parts.spread[slot] / (count as f64 * (count - 1) as f64) } else { 0.0 };
        parts.noise[slot] = noise;
        parts.bias[slot] = -0.5 * parts.quad[slot] + prior.log_prior(count) + 0.5 * noise;
    }

    /// Scores every class and finds the arg-max and the novelty, using the
    /// head's own scratch. Never allocates. `scores`, if given, receives one
    /// score per slot (`-inf` for empty slots).
    ///
    /// The class scores are f64 throughout. The novelty's triangular solve
    /// reads an f32 copy of the Cholesky factor (sums in f64): on a device
    /// the backbone evicts the factor from the caches between frames, so
    /// the solve streams it from memory, and half the bytes is about half
    /// the time. The score moves by a relative `1e-6` or so, far inside
    /// what the threshold can tell (bench/accuracy.md holds the figures).
    pub fn predict(&mut self, x: &[f32], scores: Option<&mut [f64]>) -> Result<Prediction, HeadError> {
        let l = self.layout;
        let ctx = Ctx { transform: self.transform, factored: self.factored, novelty: Some(self.settings.novelty) };
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
        let ctx = Ctx { transform: self.transform, factored: self.factored, novelty: None };
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
        let ctx = Ctx { transform: self.transform, factored: self.factored, novelty: Some(self.settings.novelty) };
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
        mut next_class: impl FnMut(&mut [f64]) -> Option<(Label, u64, f64)>,
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
        floats[l.spread()].iter_mut().for_each(|v| *v = 0.0);
        slots.iter_mut().for_each(|s| *s = ClassSlot::default());
        for (slot, entry) in slots.iter_mut().enumerate() {
            let mean = &mut floats[l.means()][slot * l.dim..(slot + 1) * l.dim];
            match next_class(mean) {
                Some((label, count, spread)) => {
                    *entry = ClassSlot { label, count, active: true };
                    floats[l.spread()][slot] = spread;
                }
                None => break,
            }
        }
        self.update_weights();
        Ok(())
    }
}

/// Carries a scatter's whitened trace `t`, measured in the committed metric
/// `B` (normaliser `z`), into the metric the commit produces,
/// `Sigma' ~ (z B + k S) / z'` where `k` is the scatter's weight times the
/// fraction the regulariser keeps. In the eigenbasis of the whitened
/// scatter (eigenvalues `l_i`) that trace is `sum z' l_i / (z + k l_i)`;
/// only `t = sum l_i` is known, so the `rank` eigenvalues are taken equal.
/// Why bother: a class that varies where the committed classes do not has
/// huge `l_i`, and its own scatter caps them in the metric it is scored in;
/// measured against the old metric alone, a 5-shot class's noise is
/// overestimated by about 10%, enough to tip the old classes' accuracy from
/// 0.63 to 0.34 on CIFAR-10. The rule is within 2% of the exact trace at 5
/// to 100 shots there, and overestimates a 4,000-sample class's (whose
/// noise, about 0.4, is negligible beside distances in the thousands) by
/// about 25%. With no metric yet (`z = 0`), all of the scatter is new and
/// the limit `z' rank / k` applies.
fn rescale_spread(t: f64, rank: u64, z: f64, z_new: f64, k: f64) -> f64 {
    if rank == 0 || k <= 0.0 {
        return 0.0;
    }
    let r = rank as f64;
    if z <= 0.0 {
        return z_new * r / k;
    }
    z_new * t / (z + k * t / r)
}

/// The head's spread per sample over every class with at least two samples:
/// `sum spread_c / sum (n_c - 1)`, what a class the pooled covariance
/// describes averages (about `D` for count weighting without regulariser).
fn pooled_spread(slots: &[ClassSlot], spread: &[f64]) -> f64 {
    let (mut total, mut dof) = (0.0, 0.0);
    for (s, &v) in slots.iter().zip(spread) {
        if s.active && s.count >= 2 {
            total += v;
            dof += (s.count - 1) as f64;
        }
    }
    if dof > 0.0 {
        total / dof
    } else {
        0.0
    }
}

/// How far a class's own spread per sample exceeds `reference` (never
/// negative: a class narrower than the pool keeps its distances).
fn excess_spread(spread: f64, count: u64, reference: f64) -> f64 {
    if count >= 2 {
        (spread / (count - 1) as f64 - reference).max(0.0)
    } else {
        0.0
    }
}

/// What prediction needs of the head besides its arena.
struct Ctx {
    transform: Transform,
    factored: bool,
    /// The novelty score to compute, if any.
    novelty: Option<NoveltyScore>,
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
    // ||L^-1 x||^2 for the novelty score, against the f32 copy of L.
    let xx = if ctx.novelty.is_some() {
        y.copy_from_slice(xt);
        let score = &linalg::as_f32(&f[l.score()])[..tri_len(l.dim)];
        linalg::whitened_norm_sq_f32(score, y)
    } else {
        f64::NAN
    };
    let (weights, quad, bias, noise) = (&f[l.weights()], &f[l.quad()], &f[l.bias()], &f[l.noise()]);
    // Under `OwnSpread`, each class's distance is shifted by its excess
    // spread over the pooled one (see `NoveltyScore::OwnSpread`).
    let spread = &f[l.spread()];
    let reference = match ctx.novelty {
        Some(NoveltyScore::OwnSpread) => Some(pooled_spread(slots, spread)),
        _ => None,
    };
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
        let mut maha = (xx - 2.0 * wx + quad[slot] - noise[slot]).max(0.0);
        if let Some(r) = reference {
            maha = (maha - excess_spread(spread[slot], s.count, r)).max(0.0);
        }
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
    if ctx.novelty.is_none() {
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
    spread: &'a mut [f64],
    noise: &'a mut [f64],
    center: &'a mut [f64],
    stage_mean: &'a mut [f64],
    pending: &'a mut [f64],
    pending_coeff: &'a mut [f64],
    scratch_a: &'a mut [f64],
    scratch_b: &'a mut [f64],
    tri: [&'a mut [f64]; 3],
    /// The factor rounded to f32, for scoring.
    score: &'a mut [f32],
}

fn split<'a>(f: &'a mut [f64], l: &Layout) -> Parts<'a> {
    let (means, f) = f.split_at_mut(l.kd());
    let (weights, f) = f.split_at_mut(l.kd());
    let (quad, f) = f.split_at_mut(l.capacity);
    let (bias, f) = f.split_at_mut(l.capacity);
    let (spread, f) = f.split_at_mut(l.capacity);
    let (noise, f) = f.split_at_mut(l.capacity);
    let (center, f) = f.split_at_mut(l.dim);
    let (stage_mean, f) = f.split_at_mut(l.dim);
    let t = tri_len(l.dim);
    let (t0, f) = f.split_at_mut(t);
    let (t1, f) = f.split_at_mut(t);
    let (t2, f) = f.split_at_mut(t);
    let (score, f) = f.split_at_mut(t.div_ceil(2));
    let (pending, f) = f.split_at_mut(PENDING * l.dim);
    let (pending_coeff, f) = f.split_at_mut(PENDING);
    let (scratch_a, f) = f.split_at_mut(l.dim);
    let (scratch_b, _) = f.split_at_mut(l.dim);
    Parts {
        means,
        weights,
        quad,
        bias,
        spread,
        noise,
        center,
        stage_mean,
        pending,
        pending_coeff,
        scratch_a,
        scratch_b,
        tri: [t0, t1, t2],
        score: &mut linalg::as_f32_mut(score)[..t],
    }
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
