//! The statistics file: everything a head needs to come back after a
//! reboot, a transfer or a merge.
//!
//! Layout (all integers little-endian; items after the prefix are postcard):
//!
//! | part | encoding |
//! | --- | --- |
//! | magic `GEHS` | 4 bytes |
//! | format version | u16, 2 bytes |
//! | total file length | u64, 8 bytes |
//! | [`StatsHeader`] | postcard |
//! | per class: label, count, spread | postcard ([`ClassRecord`]) |
//! | per class: mean | postcard sequence of `D` f64 |
//! | centre (only with the `center_l2` transform) | postcard sequence of `D` f64 |
//! | pooled accumulator, packed lower triangle | postcard sequence of `D(D+1)/2` f64, or f32 (see [`Precision`]) |
//! | CRC-32 (ISO-HDLC) of everything before it | u32, 4 bytes |
//!
//! A postcard `f64` sequence is a varint length and 8 little-endian bytes per
//! value, so the arrays are read and written here directly, without a heap
//! and with exact errors, while staying plain postcard. The length in the
//! prefix turns any truncation into [`StatsError::Truncated`] before the CRC
//! is even looked at; the CRC catches every single-bit flip and every burst
//! up to 32 bits. Loading parses the whole file once to validate it and only
//! then touches the head (see [`load`]), so a bad file never leaves a broken
//! head behind.

use crate::config::{HeadSettings, NoveltyScore, Prior, Regularizer, Transform, Weighting};
pub use crate::frame::Preprocess;
use crate::head::{GaussianHead, HeadError, Label, Storage, MAX_COUNT};
use crate::linalg::tri_len;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GEHS";
/// Version 2 added [`StatsHeader::scatter_precision`]; version 3 added
/// [`ClassRecord::spread`] and [`HeadSettings::debias`]; version 4 added
/// [`StatsHeader::novelty_threshold`]; version 5 added
/// [`HeadSettings::novelty`].
pub const VERSION: u16 = 5;
/// The oldest version this build still reads (a device's slots written by
/// the previous firmware must survive an update; they read as uncalibrated).
pub const MIN_VERSION: u16 = 3;
const PREFIX: usize = 4 + 2 + 8;
/// Slice-by-16 tables (16 KiB of read-only data): statistics files are
/// megabytes, and the byte-wise table would make the CRC the slowest part of
/// saving and loading.
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// How the pooled accumulator is stored. The head always accumulates in
/// f64; `F32` halves the file (the accumulator is `D(D+1)/2` values, 13 MB
/// at D = 1808 in f64) for bundles and link transfers, at a relative
/// rounding of 6e-8 per entry. That rounding can outweigh a very small
/// ridge (a shrinkage of 1e-6 failed to factor on one backbone; 1e-5 is
/// the bundles' default), and such a file is refused with a typed error.
/// Device persistence keeps `F64`, so a restart reproduces every score
/// exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Precision {
    /// Eight bytes a value: bit-exact.
    #[default]
    F64,
    /// Four bytes a value: widened to f64 on load.
    F32,
}

impl Precision {
    /// Bytes a stored value takes.
    pub const fn bytes(self) -> usize {
        match self {
            Precision::F64 => 8,
            Precision::F32 => 4,
        }
    }
}

/// The postcard header after the fixed prefix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsHeader {
    /// Feature dimension.
    pub dim: u32,
    /// Capacity of the head that wrote the file (informational: a head with
    /// more room can load it).
    pub capacity: u32,
    /// Class records that follow.
    pub classes: u32,
    /// How class scatters pool.
    pub weighting: Weighting,
    /// The run-time settings the head had.
    pub settings: HeadSettings,
    /// The transform the statistics live in (its centre is in the file).
    pub transform: Transform,
    /// Normaliser `z` of the pooled accumulator.
    pub scatter_norm: f64,
    /// SHA-256 of the backbone ONNX these features come from.
    pub backbone_sha256: [u8; 32],
    /// The backbone's input preprocessing.
    pub preprocess: Preprocess,
    /// Storage of the pooled accumulator.
    pub scatter_precision: Precision,
    /// Novelty score above which a prediction is answered "unknown",
    /// calibrated on held-out samples of the base classes when the
    /// statistics were fitted (infinite: never). It travels with the
    /// statistics, so a pushed or flashed head brings its own.
    pub novelty_threshold: f64,
}

/// The head settings of version 3 and 4 files, which scored novelty by
/// distance alone.
#[derive(Deserialize)]
struct SettingsV4 {
    regularizer: Regularizer,
    prior: Prior,
    debias: bool,
}

impl From<SettingsV4> for HeadSettings {
    fn from(s: SettingsV4) -> Self {
        HeadSettings { regularizer: s.regularizer, prior: s.prior, debias: s.debias, novelty: NoveltyScore::Distance }
    }
}

/// The header of version 3 files, which had no threshold.
#[derive(Deserialize)]
struct HeaderV3 {
    dim: u32,
    capacity: u32,
    classes: u32,
    weighting: Weighting,
    settings: SettingsV4,
    transform: Transform,
    scatter_norm: f64,
    backbone_sha256: [u8; 32],
    preprocess: Preprocess,
    scatter_precision: Precision,
}

impl From<HeaderV3> for StatsHeader {
    fn from(h: HeaderV3) -> Self {
        HeaderV4 {
            dim: h.dim,
            capacity: h.capacity,
            classes: h.classes,
            weighting: h.weighting,
            settings: h.settings,
            transform: h.transform,
            scatter_norm: h.scatter_norm,
            backbone_sha256: h.backbone_sha256,
            preprocess: h.preprocess,
            scatter_precision: h.scatter_precision,
            novelty_threshold: f64::INFINITY,
        }
        .into()
    }
}

/// The header of version 4 files, whose settings had no novelty score.
#[derive(Deserialize)]
struct HeaderV4 {
    dim: u32,
    capacity: u32,
    classes: u32,
    weighting: Weighting,
    settings: SettingsV4,
    transform: Transform,
    scatter_norm: f64,
    backbone_sha256: [u8; 32],
    preprocess: Preprocess,
    scatter_precision: Precision,
    novelty_threshold: f64,
}

impl From<HeaderV4> for StatsHeader {
    fn from(h: HeaderV4) -> Self {
        StatsHeader {
            dim: h.dim,
            capacity: h.capacity,
            classes: h.classes,
            weighting: h.weighting,
            settings: h.settings.into(),
            transform: h.transform,
            scatter_norm: h.scatter_norm,
            backbone_sha256: h.backbone_sha256,
            preprocess: h.preprocess,
            scatter_precision: h.scatter_precision,
            novelty_threshold: h.novelty_threshold,
        }
    }
}

/// Label, sample count and whitened spread of one class; its mean follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRecord {
    /// The class's label.
    pub label: Label,
    /// Samples it was learned from.
    pub count: u64,
    /// [`GaussianHead::spread`]: finite and non-negative.
    pub spread: f64,
}

/// What a file records besides the head: the backbone the statistics belong
/// to, how the accumulator is stored, and the "unknown" threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsMeta {
    /// SHA-256 of the backbone the features come from.
    pub backbone_sha256: [u8; 32],
    /// Its input preprocessing.
    pub preprocess: Preprocess,
    /// How the pooled accumulator is stored.
    pub precision: Precision,
    /// See [`StatsHeader::novelty_threshold`].
    pub novelty_threshold: f64,
}

impl Default for StatsMeta {
    fn default() -> Self {
        StatsMeta {
            backbone_sha256: [0; 32],
            preprocess: Preprocess::default(),
            precision: Precision::F64,
            novelty_threshold: f64::INFINITY,
        }
    }
}

/// Whether `t` can be a novelty threshold: not negative and not NaN
/// (infinite means "never unknown").
pub fn valid_threshold(t: f64) -> bool {
    t >= 0.0
}

/// What the loader insists on; `None` accepts anything.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Expect {
    /// The backbone the statistics must belong to.
    pub backbone_sha256: Option<[u8; 32]>,
}

/// A SHA-256 (or any byte string) shown as hex, without allocating: error
/// messages of a `no_std` build without an allocator use it (the `hex`
/// crate encodes into a `String` or a caller's buffer, neither of which a
/// `Display` of a 32-byte digest needs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a statistics file was refused. Loading never panics and never leaves
/// a half-written head.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages print
pub enum StatsError {
    /// Fewer bytes than the header or the length field needs.
    #[error("statistics file truncated: {found} bytes, expected {expected}")]
    Truncated { expected: u64, found: u64 },
    /// More or fewer bytes than the length field says.
    #[error("statistics file has {found} bytes, its header says {expected}")]
    LengthMismatch { expected: u64, found: u64 },
    /// Not a statistics file at all.
    #[error("not a gaussedge statistics file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A version this build does not read.
    #[error(
        "statistics format version {found} is not supported (this build reads versions {MIN_VERSION} to {supported})"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    /// A flipped bit anywhere.
    #[error("statistics file is corrupt: CRC-32 {computed:08x}, stored {stored:08x}")]
    Crc { stored: u32, computed: u32 },
    /// Intact bytes that do not describe a head (out-of-range values).
    #[error("statistics file is malformed: {0}")]
    Malformed(&'static str),
    /// Statistics of another feature dimension than the head's.
    #[error("statistics are for feature dimension {file}, the head has {head}")]
    DimMismatch { file: u32, head: u32 },
    /// Statistics of another backbone than the expected one.
    #[error("statistics belong to backbone {}, not the loaded backbone {}", Hex(file), Hex(expected))]
    BackboneMismatch { file: [u8; 32], expected: [u8; 32] },
    /// More classes than the head has room for.
    #[error("statistics hold {classes} classes, the head has room for {capacity}")]
    TooManyClasses { classes: u32, capacity: u32 },
    /// The head refused them (for example they do not factor).
    #[error("statistics cannot be installed: {0}")]
    Head(#[from] HeadError),
}

/// Writing failed: the sink's own error, or a head that is mid-learning.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The sink failed.
    #[error("writing statistics: {0}")]
    Sink(E),
    /// A class is being learned.
    #[error("a class is being learned; commit or abort it before saving")]
    Busy,
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn seq_len(n: usize) -> u64 {
    seq_len_as(n, Precision::F64)
}

fn seq_len_as(n: usize, p: Precision) -> u64 {
    (varint_len(n as u64) + p.bytes() * n) as u64
}

/// The header a head would be saved with.
pub fn header_of<S: Storage>(head: &GaussianHead<S>, meta: &StatsMeta) -> StatsHeader {
    StatsHeader {
        dim: head.dim() as u32,
        capacity: head.capacity() as u32,
        classes: head.class_count() as u32,
        weighting: head.weighting(),
        settings: head.settings(),
        transform: head.transform(),
        scatter_norm: head.scatter_norm(),
        backbone_sha256: meta.backbone_sha256,
        preprocess: meta.preprocess,
        scatter_precision: meta.precision,
        novelty_threshold: meta.novelty_threshold,
    }
}

fn postcard_len<T: Serialize>(v: &T) -> u64 {
    postcard::experimental::serialized_size(v).map(|n| n as u64).unwrap_or(0)
}

/// The record a head's class `slot` is saved with.
fn record_of<S: Storage>(head: &GaussianHead<S>, slot: usize) -> ClassRecord {
    let entry = &head.slots()[slot];
    ClassRecord { label: entry.label.clone(), count: entry.count, spread: head.spread(slot) }
}

/// Exact size in bytes of the file [`write()`] produces.
pub fn encoded_len<S: Storage>(head: &GaussianHead<S>, meta: &StatsMeta) -> u64 {
    let header = header_of(head, meta);
    let d = head.dim();
    let mut n = PREFIX as u64 + postcard_len(&header);
    for (slot, _) in head.classes() {
        n += postcard_len(&record_of(head, slot)) + seq_len(d);
    }
    if header.transform.center_l2 {
        n += seq_len(d);
    }
    n + seq_len_as(tri_len(d), header.scatter_precision) + 4
}

/// Streams the head's committed statistics to `sink` in pieces of at most a
/// few hundred bytes. Needs no allocation. Returns the bytes written.
pub fn write<S: Storage, E>(
    head: &GaussianHead<S>,
    meta: &StatsMeta,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, WriteError<E>> {
    if head.learning().is_some() {
        return Err(WriteError::Busy);
    }
    let mut w = Writer { digest: CRC.digest(), sink: &mut sink, written: 0 };
    let header = header_of(head, meta);
    let total = encoded_len(head, meta);
    w.put(&MAGIC)?;
    w.put(&VERSION.to_le_bytes())?;
    w.put(&total.to_le_bytes())?;
    w.item(&header)?;
    for (slot, _) in head.classes() {
        w.item(&record_of(head, slot))?;
        w.f64s(head.mean(slot))?;
    }
    if header.transform.center_l2 {
        w.f64s(head.center())?;
    }
    w.floats(head.pooled(), header.scatter_precision)?;
    let crc = w.digest.finalize();
    (w.sink)(&crc.to_le_bytes()).map_err(WriteError::Sink)?;
    debug_assert_eq!(w.written + 4, total);
    Ok(w.written + 4)
}

struct Writer<'a, F> {
    digest: crc::Digest<'static, u32, crc::Table<16>>,
    sink: &'a mut F,
    written: u64,
}

impl<F, E> Writer<'_, F>
where
    F: FnMut(&[u8]) -> Result<(), E>,
{
    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError<E>> {
        self.digest.update(bytes);
        self.written += bytes.len() as u64;
        (self.sink)(bytes).map_err(WriteError::Sink)
    }

    fn item<T: Serialize>(&mut self, v: &T) -> Result<(), WriteError<E>> {
        // Header and class records are far below 256 bytes (a label is at
        // most 32).
        let mut buf = [0u8; 256];
        let used = postcard::to_slice(v, &mut buf).map(|s| s.len()).unwrap_or(0);
        self.put(&buf[..used])
    }

    fn f64s(&mut self, values: &[f64]) -> Result<(), WriteError<E>> {
        self.floats(values, Precision::F64)
    }

    fn floats(&mut self, values: &[f64], precision: Precision) -> Result<(), WriteError<E>> {
        let mut buf = [0u8; 512];
        let n = postcard::to_slice(&(values.len() as u64), &mut buf).map(|s| s.len()).unwrap_or(0);
        self.put(&buf[..n])?;
        let width = precision.bytes();
        for chunk in values.chunks(64) {
            for (dst, v) in buf.chunks_exact_mut(width).zip(chunk) {
                match precision {
                    Precision::F64 => dst.copy_from_slice(&v.to_le_bytes()),
                    Precision::F32 => dst.copy_from_slice(&(*v as f32).to_le_bytes()),
                }
            }
            self.put(&buf[..chunk.len() * width])?;
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl GaussianHead<crate::head::OwnedStorage> {
    /// A head holding the statistics in `bytes`, with room for at least
    /// `capacity` classes (more if the file has more). This is how a host
    /// opens any statistics file: the header's claims are checked against
    /// the file before the head is allocated, so a hostile file costs an
    /// error, not gigabytes.
    ///
    /// ```
    /// use gaussedge_shared::stats::{self, Expect, StatsMeta};
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
    /// head.begin(label("cat").unwrap())?;
    /// for x in [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]] {
    ///     head.learn(&x)?;
    /// }
    /// head.commit()?;
    /// let bytes = stats::to_vec(&head, &StatsMeta::default()).unwrap();
    ///
    /// let (copy, header) = GaussianHead::from_stats(&bytes, 8, &Expect::default())?;
    /// assert_eq!((copy.capacity(), header.classes), (8, 1));
    /// assert_eq!(copy.mean(0), head.mean(0));
    /// // A cut file is refused with the reason, before anything is allocated.
    /// assert!(matches!(
    ///     GaussianHead::from_stats(&bytes[..40], 8, &Expect::default()),
    ///     Err(stats::StatsError::Truncated { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_stats(bytes: &[u8], capacity: usize, expect: &Expect) -> Result<(Self, StatsHeader), StatsError> {
        let header = read_header(bytes)?;
        let mut head = GaussianHead::with_capacity(crate::head::HeadConfig {
            dim: header.dim as usize,
            capacity: capacity.max(header.classes as usize).max(1),
            weighting: header.weighting,
            settings: header.settings,
            transform: header.transform,
        })?;
        load(&mut head, bytes, expect)?;
        Ok((head, header))
    }
}

/// Writes the statistics into a new `Vec`.
#[cfg(feature = "alloc")]
pub fn to_vec<S: Storage>(
    head: &GaussianHead<S>,
    meta: &StatsMeta,
) -> Result<alloc::vec::Vec<u8>, WriteError<core::convert::Infallible>> {
    let mut out = alloc::vec::Vec::with_capacity(encoded_len(head, meta) as usize);
    write(head, meta, |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(out)
}

/// A statistics file from its parts, for tools that compute statistics
/// outside a head (merging files from several devices). `header.classes`
/// is taken from `classes`; `load` validates the result like any file.
#[cfg(feature = "alloc")]
pub fn encode_parts(
    header: &StatsHeader,
    classes: &[(ClassRecord, &[f64])],
    center: Option<&[f64]>,
    pooled: &[f64],
) -> alloc::vec::Vec<u8> {
    let mut header = *header;
    header.classes = classes.len() as u32;
    let d = header.dim as usize;
    // In u128: a header that lies about `dim` must not overflow here.
    let seq = |n: u128, width: usize| varint_len(n as u64) as u128 + width as u128 * n;
    let dd = d as u128;
    let mut total =
        (PREFIX + 4) as u128 + postcard_len(&header) as u128 + seq(dd * (dd + 1) / 2, header.scatter_precision.bytes());
    for (record, _) in classes {
        total += postcard_len(record) as u128 + seq(dd, 8);
    }
    if header.transform.center_l2 {
        total += seq(dd, 8);
    }
    let total = u64::try_from(total).unwrap_or(u64::MAX);
    // Reserve what the parts will take, not what the header says: a header
    // that disagrees with its parts gives a file `load` refuses, never an
    // allocation of the size it claims.
    let parts = classes.iter().map(|(_, m)| 64 + 9 * m.len()).sum::<usize>()
        + center.map_or(0, |c| 9 * c.len())
        + 9 * pooled.len()
        + 512;
    let mut out = alloc::vec::Vec::with_capacity(parts.min(total as usize));
    let mut sink = |b: &[u8]| {
        out.extend_from_slice(b);
        Ok::<(), core::convert::Infallible>(())
    };
    let mut w = Writer { digest: CRC.digest(), sink: &mut sink, written: 0 };
    let _ = (|| -> Result<(), WriteError<core::convert::Infallible>> {
        w.put(&MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&total.to_le_bytes())?;
        w.item(&header)?;
        for (record, mean) in classes {
            w.item(record)?;
            w.f64s(mean)?;
        }
        if header.transform.center_l2 {
            w.f64s(center.unwrap_or(&[]))?;
        }
        w.floats(pooled, header.scatter_precision)?;
        let crc = w.digest.finalize();
        (w.sink)(&crc.to_le_bytes()).map_err(WriteError::Sink)
    })();
    out
}

/// Checks prefix, length and CRC, then parses the header. Cheap: use it to
/// inspect a file or to vet a transfer before touching anything.
pub fn read_header(bytes: &[u8]) -> Result<StatsHeader, StatsError> {
    let found = bytes.len() as u64;
    if bytes.len() < PREFIX + 4 {
        return Err(StatsError::Truncated { expected: (PREFIX + 4) as u64, found });
    }
    let magic: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(StatsError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(StatsError::UnsupportedVersion { found: version, supported: VERSION });
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&bytes[6..14]);
    let expected = u64::from_le_bytes(total);
    if found < expected {
        return Err(StatsError::Truncated { expected, found });
    }
    if found > expected {
        return Err(StatsError::LengthMismatch { expected, found });
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = CRC.checksum(body);
    if stored != computed {
        return Err(StatsError::Crc { stored, computed });
    }
    let (header, _) = parse_header(body)?;
    check_header(&header, found)?;
    Ok(header)
}

/// The header of a body whose prefix was checked, in either version, and
/// the bytes after it.
fn parse_header(body: &[u8]) -> Result<(StatsHeader, &[u8]), StatsError> {
    let version = u16::from_le_bytes([body[4], body[5]]);
    let bad = |_| StatsError::Malformed("header");
    if version == 3 {
        let (h, rest) = postcard::take_from_bytes::<HeaderV3>(&body[PREFIX..]).map_err(bad)?;
        Ok((h.into(), rest))
    } else if version == 4 {
        let (h, rest) = postcard::take_from_bytes::<HeaderV4>(&body[PREFIX..]).map_err(bad)?;
        Ok((h.into(), rest))
    } else {
        postcard::take_from_bytes::<StatsHeader>(&body[PREFIX..]).map_err(bad)
    }
}

/// What a header claims, held against the bytes that are there and against
/// sane ranges, before anyone allocates from it: a 143-byte file that claims
/// a large `dim` must not make its reader allocate gigabytes for a head.
fn check_header(h: &StatsHeader, found: u64) -> Result<(), StatsError> {
    if h.dim == 0 {
        return Err(StatsError::Malformed("feature dimension 0"));
    }
    let d = u128::from(h.dim);
    // Smallest possible encoding of every item the header announces: a class
    // record is at least a 1-byte label with its length, a 1-byte count and
    // an 8-byte spread; a sequence at least one length byte and its values.
    let seq = |n: u128, width: u128| 1 + n * width;
    let mut need = PREFIX as u128
        + 4
        + u128::from(h.classes) * (11 + seq(d, 8))
        + seq(d * (d + 1) / 2, h.scatter_precision.bytes() as u128);
    if h.transform.center_l2 {
        need += seq(d, 8);
    }
    if need > u128::from(found) {
        return Err(StatsError::Malformed("header claims more data than the file holds"));
    }
    h.settings.check().map_err(StatsError::Malformed)?;
    h.transform.check().map_err(StatsError::Malformed)?;
    h.preprocess.check().map_err(StatsError::Malformed)?;
    if !(h.scatter_norm.is_finite() && (0.0..=MAX_COUNT as f64).contains(&h.scatter_norm)) {
        return Err(StatsError::Malformed("scatter normaliser"));
    }
    if !valid_threshold(h.novelty_threshold) {
        return Err(StatsError::Malformed("novelty threshold is negative or NaN"));
    }
    Ok(())
}

/// A forward-only reader over the validated body.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn item<T: Deserialize<'a>>(&mut self, what: &'static str) -> Result<T, StatsError> {
        let (v, rest) = postcard::take_from_bytes::<T>(self.rest).map_err(|_| StatsError::Malformed(what))?;
        self.rest = rest;
        Ok(v)
    }

    /// Reads a sequence of exactly `n` finite f64 values, into `out` if given.
    fn f64s(&mut self, n: usize, out: Option<&mut [f64]>, what: &'static str) -> Result<(), StatsError> {
        self.floats(n, out, Precision::F64, what)
    }

    /// Reads `n` finite values stored as `precision`, widened to f64.
    fn floats(
        &mut self,
        n: usize,
        out: Option<&mut [f64]>,
        precision: Precision,
        what: &'static str,
    ) -> Result<(), StatsError> {
        let len: u64 = self.item(what)?;
        if len != n as u64 {
            return Err(StatsError::Malformed(what));
        }
        let width = precision.bytes();
        let bytes = n.checked_mul(width).filter(|&b| b <= self.rest.len()).ok_or(StatsError::Malformed(what))?;
        let (data, rest) = self.rest.split_at(bytes);
        let mut out = out;
        for (i, chunk) in data.chunks_exact(width).enumerate() {
            let v = match precision {
                Precision::F64 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    f64::from_le_bytes(b)
                }
                Precision::F32 => f64::from(f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])),
            };
            if !v.is_finite() {
                return Err(StatsError::Malformed(what));
            }
            if let Some(o) = out.as_deref_mut() {
                o[i] = v;
            }
        }
        self.rest = rest;
        Ok(())
    }

    /// Skips a sequence of `n` f64 already validated.
    fn skip_f64s(&mut self, n: usize) -> Result<(), StatsError> {
        let _: u64 = self.item("class mean")?;
        let rest = self.rest.get(n * 8..).ok_or(StatsError::Malformed("class mean"))?;
        self.rest = rest;
        Ok(())
    }
}

/// A cursor at the first item after the header.
fn after_header(body: &[u8]) -> Result<Cursor<'_>, StatsError> {
    let (_, rest) = parse_header(body)?;
    Ok(Cursor { rest })
}

/// Validates `bytes` completely, then replaces the head's statistics with
/// them, atomically: on any error the head is unchanged. The head's dimension
/// must match and its capacity must hold the file's classes; weighting,
/// settings and transform come from the file.
pub fn load<S: Storage>(head: &mut GaussianHead<S>, bytes: &[u8], expect: &Expect) -> Result<StatsHeader, StatsError> {
    let header = read_header(bytes)?;
    if header.dim as usize != head.dim() {
        return Err(StatsError::DimMismatch { file: header.dim, head: head.dim() as u32 });
    }
    if let Some(expected) = expect.backbone_sha256 {
        if expected != header.backbone_sha256 {
            return Err(StatsError::BackboneMismatch { file: header.backbone_sha256, expected });
        }
    }
    if header.classes as usize > head.capacity() {
        return Err(StatsError::TooManyClasses { classes: header.classes, capacity: head.capacity() as u32 });
    }
    let d = head.dim();
    let n = header.classes as usize;
    let body = &bytes[..bytes.len() - 4];

    // Pass 1: validate everything without writing anything.
    let mut c = after_header(body)?;
    let classes = c.rest;
    let (mut total, mut class_norms) = (0u64, 0.0);
    for i in 0..n {
        let rec: ClassRecord = c.item("class record")?;
        if rec.label.is_empty() || rec.count == 0 || !rec.spread.is_finite() || rec.spread < 0.0 {
            return Err(StatsError::Malformed("class record"));
        }
        // Counts within bounds, so no later sum of them can wrap.
        total = total.saturating_add(rec.count);
        if total > MAX_COUNT {
            return Err(StatsError::Malformed("class sample counts exceed 2^48"));
        }
        class_norms += header.weighting.norm(rec.count);
        c.f64s(d, None, "class mean")?;
        // Duplicate labels would make two classes indistinguishable.
        let mut prev = Cursor { rest: classes };
        for _ in 0..i {
            let other: ClassRecord = prev.item("class record")?;
            if other.label == rec.label {
                return Err(StatsError::Malformed("duplicate class label"));
            }
            prev.skip_f64s(d)?;
        }
    }
    // The normaliser sums every committed class's share (forgotten classes
    // keep theirs), so it is at least what the classes present add up to.
    if class_norms > header.scatter_norm * (1.0 + 1e-12) + 1e-9 {
        return Err(StatsError::Malformed("class sample counts disagree with the scatter normaliser"));
    }
    let mut center = Cursor { rest: c.rest };
    if header.transform.center_l2 {
        c.f64s(d, None, "centre")?;
    }
    let mut pooled = Cursor { rest: c.rest };
    c.floats(tri_len(d), None, header.scatter_precision, "pooled scatter")?;
    if !c.rest.is_empty() {
        return Err(StatsError::Malformed("trailing bytes"));
    }

    // Pass 2: the same items, now written into the head. Parsing cannot fail
    // any more; the factorisation can, and the head handles it atomically.
    let mut records = Cursor { rest: classes };
    let mut left = n;
    head.install(
        header.weighting,
        header.settings,
        header.transform,
        header.scatter_norm,
        |buf| {
            let _ = pooled.floats(tri_len(d), Some(buf), header.scatter_precision, "pooled scatter");
        },
        |buf| {
            if header.transform.center_l2 {
                let _ = center.f64s(d, Some(buf), "centre");
            } else {
                buf.iter_mut().for_each(|v| *v = 0.0);
            }
        },
        |mean| {
            if left == 0 {
                return None;
            }
            left -= 1;
            let rec: ClassRecord = records.item("class record").ok()?;
            records.f64s(d, Some(mean), "class mean").ok()?;
            Some((rec.label, rec.count, rec.spread))
        },
    )?;
    Ok(header)
}
