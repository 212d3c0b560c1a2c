//! The fleet's state: the base, each device's latest contribution, forgets.

use crate::summary::{Context, Summary, SummaryError};
use gaussedge_shared::head::GaussianHead;
use gaussedge_shared::stats::{self, StatsHeader};
use gaussedge_shared::Weighting;
use std::collections::BTreeMap;

/// A device's contribution: everything it learned beyond the heads it
/// started from, summed over its life, so its latest one alone says what
/// it brings (a broker keeps only the latest retained message per topic).
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Grows with every commit or forget on the device; the ledger keeps
    /// the highest it has seen.
    pub generation: u64,
    /// The newest fleet forget the device had applied when it published:
    /// its classes named by later forgets still count.
    pub forgets_applied: u64,
    pub summary: Summary,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("device {device:?}: {source}")]
    Refused { device: String, source: SummaryError },
    #[error("base statistics: {0}")]
    Base(String),
    #[error("the fleet head does not factor: {0}")]
    Head(String),
}

/// The merger's state, rebuilt from what devices published.
#[derive(Debug, Clone)]
pub struct Ledger {
    header: StatsHeader,
    center: Option<Vec<f64>>,
    context: Context,
    base: Summary,
    devices: BTreeMap<String, Contribution>,
    /// Fleet-wide forgets by id, in order.
    forgets: BTreeMap<u64, String>,
}

impl Ledger {
    /// A ledger over the fleet's base statistics (every device's start).
    pub fn new(base_stats: &[u8]) -> Result<Ledger, FleetError> {
        let header = stats::read_header(base_stats).map_err(|e| FleetError::Base(e.to_string()))?;
        let capacity = (header.classes as usize).max(1);
        let (head, header) = GaussianHead::from_stats(base_stats, capacity, &stats::Expect::default())
            .map_err(|e| FleetError::Base(e.to_string()))?;
        if header.weighting != Weighting::Count {
            return Err(FleetError::Base(SummaryError::Weighting.to_string()));
        }
        Ok(Ledger {
            context: Context::of_head(&head, header.backbone_sha256),
            center: header.transform.center_l2.then(|| head.center().to_vec()),
            base: Summary::of_head(&head),
            header,
            devices: BTreeMap::new(),
            forgets: BTreeMap::new(),
        })
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn base(&self) -> &Summary {
        &self.base
    }

    pub fn devices(&self) -> &BTreeMap<String, Contribution> {
        &self.devices
    }

    pub fn forgets(&self) -> &BTreeMap<u64, String> {
        &self.forgets
    }

    /// Takes a device's published contribution (see [`Summary::to_bytes`]).
    /// `Ok(true)` when it changed the fleet; `Ok(false)` for a duplicate or
    /// an older generation than the one kept; an error, and no change, for
    /// a malformed one or one of another backbone, feature size or design.
    pub fn contribute(&mut self, device: &str, generation: u64, bytes: &[u8]) -> Result<bool, FleetError> {
        self.contribute_after(device, generation, self.forgets.keys().last().copied().unwrap_or(0), bytes)
    }

    /// [`contribute`](Self::contribute) from a device that had applied the
    /// fleet forgets up to `forgets_applied`.
    pub fn contribute_after(
        &mut self,
        device: &str,
        generation: u64,
        forgets_applied: u64,
        bytes: &[u8],
    ) -> Result<bool, FleetError> {
        let refused = |source| FleetError::Refused { device: device.to_string(), source };
        if self.devices.get(device).is_some_and(|c| c.generation >= generation) {
            return Ok(false);
        }
        let (ctx, summary) = Summary::from_bytes(bytes).map_err(refused)?;
        self.context.check(&ctx).map_err(refused)?;
        self.devices.insert(device.to_string(), Contribution { generation, forgets_applied, summary });
        Ok(true)
    }

    /// A fleet-wide forget of `label` (`id`s grow; a repeated id is a no-op).
    pub fn forget(&mut self, id: u64, label: &str) -> bool {
        if self.forgets.contains_key(&id) {
            return false;
        }
        self.forgets.insert(id, label.to_string());
        true
    }

    /// The fleet head's summary: the base, plus every device's
    /// contribution, less what fleet forgets removed.
    pub fn head(&self) -> Result<Summary, FleetError> {
        let mut head = self.base.clone();
        for label in self.forgets.values() {
            head.forget(label);
        }
        for (device, c) in &self.devices {
            let mut s = c.summary.clone();
            for (_, label) in self.forgets.range(c.forgets_applied + 1..) {
                s.forget(label);
            }
            head.add(&s).map_err(|source| FleetError::Refused { device: device.clone(), source })?;
        }
        Ok(head)
    }

    /// The fleet head as the merger publishes it.
    pub fn head_message(&self) -> Result<crate::message::HeadMessage, FleetError> {
        use sha2::{Digest, Sha256};
        let stats = self.head_stats()?;
        let included: Vec<(String, u64)> = self.devices.iter().map(|(d, c)| (d.clone(), c.generation)).collect();
        let forgets = self.forgets.keys().last().copied().unwrap_or(0);
        Ok(crate::message::HeadMessage {
            generation: included.iter().map(|(_, g)| g).sum::<u64>() + self.forgets.len() as u64,
            included,
            forgets,
            sha256: Sha256::digest(&stats).into(),
            stats,
        })
    }

    /// The fleet head as a statistics file a device loads (checked: it
    /// factors), with the base's settings, preprocessing and threshold.
    pub fn head_stats(&self) -> Result<Vec<u8>, FleetError> {
        let head = self.head()?;
        let bytes = head.to_stats(&self.header, self.center.as_deref()).map_err(|e| FleetError::Head(e.to_string()))?;
        GaussianHead::from_stats(&bytes, head.pieces.len().max(1), &stats::Expect::default())
            .map_err(|e| FleetError::Head(e.to_string()))?;
        Ok(bytes)
    }
}
