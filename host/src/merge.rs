//! Exact merging of statistics learned on different devices.
//!
//! Devices that started from the same base statistics and learned different
//! classes merge with the base counted once:
//! `A = sum_f A_f - (F - 1) A_base`, `z = sum_f z_f - (F - 1) z_base`.
//! A class learned on several devices is combined with Chan's formula for
//! several summaries: its mean is the count-weighted mean, and the pooled
//! scatter gains `sum_i n_i (m_i - m)(m_i - m)^T` (count weighting only).

use anyhow::{bail, ensure, Result};
use gaussedge_shared::head::{GaussianHead, OwnedStorage};
use gaussedge_shared::linalg::syr;
use gaussedge_shared::stats::{self, ClassRecord, StatsHeader};
use gaussedge_shared::Weighting;
use std::collections::BTreeMap;

struct Parsed {
    header: StatsHeader,
    head: GaussianHead<OwnedStorage>,
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let (head, header) = GaussianHead::from_stats(bytes, 1, &stats::Expect::default())?;
    Ok(Parsed { header, head })
}

/// Merges statistics files; `base` is the file they all started from.
pub fn merge(files: &[Vec<u8>], base: Option<&[u8]>) -> Result<GaussianHead<OwnedStorage>> {
    let parsed: Vec<Parsed> = files.iter().map(|b| parse(b)).collect::<Result<_>>()?;
    let base = base.map(parse).transpose()?;
    let first = &parsed[0].header;
    let d = first.dim as usize;
    for p in parsed.iter().chain(base.iter()) {
        ensure!(p.header.dim == first.dim, "feature dimensions differ ({} vs {})", p.header.dim, first.dim);
        ensure!(p.header.backbone_sha256 == first.backbone_sha256, "statistics belong to different backbones");
        ensure!(
            p.header.weighting == first.weighting && p.header.transform == first.transform,
            "statistics use different weightings or transforms"
        );
    }
    if first.transform.center_l2 {
        let c = parsed[0].head.center();
        ensure!(parsed.iter().all(|p| p.head.center() == c), "files use different centres");
    }

    let base_classes: BTreeMap<String, Part> = base
        .as_ref()
        .map(|b| {
            b.head
                .classes()
                .map(|(s, c)| (c.label.to_string(), (c.count, b.head.spread(s), b.head.mean(s).to_vec())))
                .collect()
        })
        .unwrap_or_default();
    let extra = parsed.len() as f64 - 1.0;
    let mut pooled = vec![0f64; parsed[0].head.pooled().len()];
    let mut norm = 0f64;
    for p in &parsed {
        pooled.iter_mut().zip(p.head.pooled()).for_each(|(a, b)| *a += b);
        norm += p.head.scatter_norm();
    }
    if let Some(b) = &base {
        pooled.iter_mut().zip(b.head.pooled()).for_each(|(a, v)| *a -= extra * v);
        norm -= extra * b.head.scatter_norm();
    }

    // Summaries per label, skipping unchanged copies of base classes.
    let mut classes: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    for p in &parsed {
        for (slot, c) in p.head.classes() {
            let label = c.label.to_string();
            let mean = p.head.mean(slot).to_vec();
            if let Some(b) = base_classes.get(&label) {
                if b.0 == c.count && b.2 == mean {
                    if !order.contains(&label) {
                        order.push(label.clone());
                        classes.insert(label, vec![b.clone()]);
                    }
                    continue;
                }
                bail!("class {label:?} differs from the base statistics; merging it exactly needs its own scatter");
            }
            if !order.contains(&label) {
                order.push(label.clone());
            }
            classes.entry(label).or_default().push((c.count, p.head.spread(slot), mean));
        }
    }
    let mut merged: Vec<(ClassRecord, Vec<f64>)> = vec![];
    let mut delta = vec![0f64; d];
    for label in &order {
        let parts = &classes[label];
        let n: u64 = parts.iter().map(|(c, _, _)| c).sum();
        let mut mean = vec![0f64; d];
        for (c, _, m) in parts {
            mean.iter_mut().zip(m).for_each(|(a, v)| *a += *c as f64 / n as f64 * v);
        }
        if parts.len() > 1 {
            ensure!(
                first.weighting == Weighting::Count,
                "class {label:?} was learned on several devices; that merge needs count weighting"
            );
            for (c, _, m) in parts {
                delta.iter_mut().zip(m.iter().zip(&mean)).for_each(|(dl, (a, b))| *dl = a - b);
                syr(&mut pooled, *c as f64, &delta);
            }
            // Each part brought n_i - 1 to the normaliser; the whole class
            // brings n - 1.
            norm += (parts.len() - 1) as f64;
        }
        let l = gaussedge_shared::label(label).ok_or_else(|| anyhow::anyhow!("bad label {label:?}"))?;
        // The spreads add; the parts' offsets from the merged mean are
        // added in the merged metric once the head is built, below.
        let spread = parts.iter().map(|(_, s, _)| s).sum();
        merged.push((ClassRecord { label: l, count: n, spread }, mean));
    }
    let header = StatsHeader {
        classes: merged.len() as u32,
        capacity: merged.len().max(1) as u32,
        scatter_norm: norm,
        // A merge is exact; it keeps full precision whatever its inputs had.
        scatter_precision: stats::Precision::F64,
        ..*first
    };
    let refs: Vec<(ClassRecord, &[f64])> = merged.iter().map(|(r, m)| (r.clone(), m.as_slice())).collect();
    let center = first.transform.center_l2.then(|| parsed[0].head.center().to_vec());
    let bytes = stats::encode_parts(&header, &refs, center.as_deref(), &pooled);
    let (mut head, _) = GaussianHead::from_stats(&bytes, merged.len(), &stats::Expect::default())?;
    for (slot, (record, mean)) in merged.iter().enumerate() {
        let parts = &classes[record.label.as_str()];
        if parts.len() > 1 {
            let mut spread = record.spread;
            for (c, _, m) in parts {
                delta.iter_mut().zip(m.iter().zip(mean)).for_each(|(dl, (a, b))| *dl = a - b);
                spread += *c as f64 * head.mahalanobis_sq(&mut delta)?;
            }
            head.set_spread(slot, spread)?;
        }
    }
    Ok(head)
}

/// Count, whitened spread and mean of one class in one file.
type Part = (u64, f64, Vec<f64>);
