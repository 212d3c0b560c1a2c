//! Sufficient statistics of what one device (or the base) learned, and their
//! exact sum and difference.

use gaussedge_shared::head::{GaussianHead, Storage};
use gaussedge_shared::linalg::{syr, tri_len};
use gaussedge_shared::stats::{self, ClassRecord, StatsHeader};
use gaussedge_shared::{Transform, Weighting};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: [u8; 4] = *b"GEFS";
const VERSION: u16 = 1;
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// What binds a summary to its fleet: statistics of another backbone,
/// feature size, weighting, transform or centre cannot be added to its
/// head, and a summary carries this so a merger can refuse it by name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub dim: u32,
    pub backbone_sha256: [u8; 32],
    pub weighting: Weighting,
    pub transform: Transform,
    /// SHA-256 of the centre's f64 bytes (zeros without a centre).
    pub center_sha256: [u8; 32],
}

impl Context {
    pub fn of_head<S: Storage>(head: &GaussianHead<S>, backbone_sha256: [u8; 32]) -> Context {
        let center_sha256 = if head.transform().center_l2 {
            let mut h = Sha256::new();
            head.center().iter().for_each(|v| h.update(v.to_le_bytes()));
            h.finalize().into()
        } else {
            [0; 32]
        };
        Context {
            dim: head.dim() as u32,
            backbone_sha256,
            weighting: head.weighting(),
            transform: head.transform(),
            center_sha256,
        }
    }

    /// `Err(what differs)` unless `other` belongs to the same fleet.
    pub fn check(&self, other: &Context) -> Result<(), SummaryError> {
        let what = if self.backbone_sha256 != other.backbone_sha256 {
            "backbone"
        } else if self.dim != other.dim {
            "feature size"
        } else if self.weighting != other.weighting {
            "weighting"
        } else if self.transform != other.transform {
            "feature transform"
        } else if self.center_sha256 != other.center_sha256 {
            "feature centre"
        } else {
            return Ok(());
        };
        Err(SummaryError::Foreign { what, expected: Box::new(*self), found: Box::new(*other) })
    }
}

/// One class's samples: how many, their mean, and their whitened spread
/// (approximate: it only scales the mean-noise debias and novelty offset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    pub label: String,
    pub count: u64,
    pub mean: Vec<f64>,
    pub spread: f64,
}

/// Per-class counts and means, and the within-class scatter of every sample
/// summarised (packed, as the head's pooled accumulator) with its
/// normaliser. Count weighting only: that is what makes the sum exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub pieces: Vec<Piece>,
    pub within: Vec<f64>,
    pub norm: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SummaryError {
    #[error("statistics of another {what}: expected {expected:?}, found {found:?}")]
    Foreign { what: &'static str, expected: Box<Context>, found: Box<Context> },
    #[error("feature dimensions differ ({0} vs {1})")]
    Dim(usize, usize),
    #[error("class {label:?} has {now} samples, fewer than the {before} of the head it started from")]
    Shrunk { label: String, before: u64, now: u64 },
    #[error("class {label:?} has the head's count but another mean: not the head it claims to start from")]
    Diverged { label: String },
    #[error("fleets need count weighting (a class taught on two devices merges exactly only then)")]
    Weighting,
    #[error("not a fleet summary: {0}")]
    Malformed(&'static str),
    #[error("summary CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
    #[error("statistics: {0}")]
    Stats(#[from] stats::StatsError),
}

impl Summary {
    /// An empty summary in `dim` dimensions.
    pub fn empty(dim: usize) -> Summary {
        Summary { pieces: vec![], within: vec![0.0; tri_len(dim)], norm: 0.0 }
    }

    pub fn dim(&self) -> usize {
        // tri_len(d) = d (d + 1) / 2
        ((((8 * self.within.len() + 1) as f64).sqrt() as usize) - 1) / 2
    }

    /// Everything a head holds: its classes and its pooled accumulator.
    pub fn of_head<S: Storage>(head: &GaussianHead<S>) -> Summary {
        let pieces = head
            .classes()
            .map(|(slot, c)| Piece {
                label: c.label.to_string(),
                count: c.count,
                mean: head.mean(slot).to_vec(),
                spread: head.spread(slot),
            })
            .collect();
        Summary { pieces, within: head.pooled().to_vec(), norm: head.scatter_norm() }
    }

    pub fn piece(&self, label: &str) -> Option<&Piece> {
        self.pieces.iter().find(|p| p.label == label)
    }

    /// Adds `other`'s samples: what one head would hold had it learned both
    /// sets. A label in both is one class, merged by Chan's formula.
    pub fn add(&mut self, other: &Summary) -> Result<(), SummaryError> {
        if other.within.len() != self.within.len() {
            return Err(SummaryError::Dim(self.dim(), other.dim()));
        }
        self.within.iter_mut().zip(&other.within).for_each(|(a, b)| *a += b);
        self.norm += other.norm;
        let mut delta = vec![0f64; self.dim()];
        for p in &other.pieces {
            match self.pieces.iter_mut().find(|q| q.label == p.label) {
                Some(q) => {
                    let (na, nb) = (q.count as f64, p.count as f64);
                    let n = na + nb;
                    delta.iter_mut().zip(p.mean.iter().zip(&q.mean)).for_each(|(d, (b, a))| *d = b - a);
                    syr(&mut self.within, na * nb / n, &delta);
                    q.mean.iter_mut().zip(&delta).for_each(|(m, d)| *m += d * nb / n);
                    q.count += p.count;
                    q.spread += p.spread;
                    // Two parts brought n_a - 1 and n_b - 1; the class brings n - 1.
                    self.norm += 1.0;
                }
                None => self.pieces.push(p.clone()),
            }
        }
        Ok(())
    }

    /// What this summary holds beyond `parent`, the head it started from
    /// (Chan's inverse): new classes whole, extended classes as the samples
    /// added since. A class of the parent missing here was forgotten on the
    /// device alone and stays in the fleet; use a fleet forget to drop it.
    pub fn since(&self, parent: &Summary) -> Result<Summary, SummaryError> {
        if parent.within.len() != self.within.len() {
            return Err(SummaryError::Dim(self.dim(), parent.dim()));
        }
        let mut out = Summary {
            pieces: vec![],
            within: self.within.iter().zip(&parent.within).map(|(a, b)| a - b).collect(),
            norm: self.norm - parent.norm,
        };
        let mut delta = vec![0f64; self.dim()];
        for p in &self.pieces {
            let Some(q) = parent.piece(&p.label) else {
                out.pieces.push(p.clone());
                continue;
            };
            if p.count < q.count {
                return Err(SummaryError::Shrunk { label: p.label.clone(), before: q.count, now: p.count });
            }
            if p.count == q.count {
                let scale = q.mean.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                if p.mean.iter().zip(&q.mean).any(|(a, b)| (a - b).abs() > 1e-9 * scale) {
                    return Err(SummaryError::Diverged { label: p.label.clone() });
                }
                continue;
            }
            let (n, np) = (p.count as f64, q.count as f64);
            let nn = n - np;
            let mean: Vec<f64> = p.mean.iter().zip(&q.mean).map(|(a, b)| (n * a - np * b) / nn).collect();
            delta.iter_mut().zip(mean.iter().zip(&q.mean)).for_each(|(d, (a, b))| *d = a - b);
            syr(&mut out.within, -np * nn / n, &delta);
            out.norm -= 1.0;
            out.pieces.push(Piece {
                label: p.label.clone(),
                count: p.count - q.count,
                mean,
                spread: (p.spread - q.spread).max(0.0),
            });
        }
        Ok(out)
    }

    /// Drops class `label`. Its scatter stays in the pooled accumulator, as
    /// a head's own forget keeps it (valid evidence about the noise).
    pub fn forget(&mut self, label: &str) {
        self.pieces.retain(|p| p.label != label);
    }

    /// A statistics file of this summary, with `template`'s settings,
    /// preprocessing and threshold, in full precision.
    pub fn to_stats(&self, template: &StatsHeader, center: Option<&[f64]>) -> Result<Vec<u8>, SummaryError> {
        let mut records = Vec::with_capacity(self.pieces.len());
        for p in &self.pieces {
            let label = gaussedge_shared::label(&p.label).ok_or(SummaryError::Malformed("label"))?;
            records.push((ClassRecord { label, count: p.count, spread: p.spread }, p.mean.as_slice()));
        }
        let header = StatsHeader {
            capacity: self.pieces.len().max(1) as u32,
            scatter_norm: self.norm,
            scatter_precision: stats::Precision::F64,
            ..*template
        };
        Ok(stats::encode_parts(&header, &records, center, &self.within))
    }

    /// `MAGIC, version, postcard(context, summary), CRC-32`: what a device
    /// publishes.
    pub fn to_bytes(&self, ctx: &Context) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&postcard::to_stdvec(&(ctx, self)).expect("a summary serialises"));
        let crc = CRC.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The inverse of [`to_bytes`](Self::to_bytes), checked: magic, version,
    /// CRC, and a shape that fits its own dimension.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Context, Summary), SummaryError> {
        if bytes.len() < 10 || bytes[..4] != MAGIC {
            return Err(SummaryError::Malformed("magic"));
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION {
            return Err(SummaryError::Malformed("version"));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = CRC.checksum(body);
        if stored != computed {
            return Err(SummaryError::Crc { stored, computed });
        }
        let (ctx, s): (Context, Summary) =
            postcard::from_bytes(&body[6..]).map_err(|_| SummaryError::Malformed("body"))?;
        let d = ctx.dim as usize;
        if s.within.len() != tri_len(d)
            || s.pieces.iter().any(|p| p.mean.len() != d || p.count == 0 || gaussedge_shared::label(&p.label).is_none())
            || !s.norm.is_finite()
            || s.within.iter().any(|v| !v.is_finite())
        {
            return Err(SummaryError::Malformed("shape"));
        }
        Ok((ctx, s))
    }
}
