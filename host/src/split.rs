//! Which training images fit the statistics and which are held out.
//!
//! `gaussedge train` holds out a seeded, stratified fraction of each base
//! class for validation; the same split, re-derived here from the recipe's
//! seed and fraction, gives the images the "unknown" threshold is
//! calibrated on: for a backbone gaussedge trained they are images it never
//! trained on, and they are left out of the statistics fit too, so their
//! novelty scores are what a new photo of a known class would get.

use crate::data::Dataset;
use crate::rng::Rng;
use gaussedge_bundle::HeldOut;

/// Stratified split of the positions of `labels` whose label is in
/// `classes` into (kept, held out): per class, in `classes` order, shuffled
/// with `rng`, the first `round(n * fraction)` held out.
pub fn stratified(labels: &[u16], classes: &[u16], fraction: f64, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let (mut kept, mut held) = (vec![], vec![]);
    for &c in classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        rng.shuffle(&mut idx);
        let n_held = ((idx.len() as f64) * fraction).round() as usize;
        held.extend_from_slice(&idx[..n_held]);
        kept.extend_from_slice(&idx[n_held..]);
    }
    (kept, held)
}

/// Indices into `full` (a whole training split) of the images of `classes`
/// that fit the statistics and of those held out, as `gaussedge train`
/// splits them: classes filtered, the first `limit_per_class` of each kept,
/// then [`stratified`] with a generator seeded by `h.seed`.
pub fn held_out(full: &Dataset, classes: &[u16], h: &HeldOut) -> (Vec<usize>, Vec<usize>) {
    let mut seen = vec![0usize; 1 + full.samples.iter().map(|s| usize::from(s.label)).max().unwrap_or(0)];
    let positions: Vec<usize> = (0..full.len())
        .filter(|&i| {
            let l = full.samples[i].label;
            if !classes.contains(&l) {
                return false;
            }
            let n = &mut seen[usize::from(l)];
            *n += 1;
            h.limit_per_class.is_none_or(|limit| *n <= limit)
        })
        .collect();
    let labels: Vec<u16> = positions.iter().map(|&i| full.samples[i].label).collect();
    let (kept, held) = stratified(&labels, classes, h.fraction, &mut Rng::new(h.seed));
    (kept.iter().map(|&k| positions[k]).collect(), held.iter().map(|&k| positions[k]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sample;
    use gaussedge_shared::wire::FrameFormat;

    fn dataset(per_class: usize) -> Dataset {
        let samples = (0..per_class * 3)
            .map(|i| Sample {
                label: (i % 3) as u16,
                format: FrameFormat { width: 1, height: 1, channels: 1 },
                pixels: vec![i as u8],
            })
            .collect();
        Dataset { name: "t".into(), class_names: vec!["a".into(), "b".into(), "c".into()], samples }
    }

    #[test]
    fn the_held_out_images_are_a_seeded_stratified_share_disjoint_from_the_fit() {
        let ds = dataset(40);
        let h = HeldOut { seed: 3, fraction: 0.1, limit_per_class: None };
        let (fit, held) = held_out(&ds, &[0, 2], &h);
        assert_eq!((fit.len(), held.len()), (72, 8));
        assert!(held.iter().all(|i| !fit.contains(i)));
        for c in [0u16, 2] {
            assert_eq!(held.iter().filter(|&&i| ds.samples[i].label == c).count(), 4);
        }
        assert!(fit.iter().chain(&held).all(|&i| ds.samples[i].label != 1));
        assert_eq!(held_out(&ds, &[0, 2], &h), (fit.clone(), held.clone()));
        let (_, other) = held_out(&ds, &[0, 2], &HeldOut { seed: 4, ..h });
        assert_ne!(other, held);
        // A per-class limit keeps the first images of each class, as training does.
        let (fit, held) = held_out(&ds, &[1], &HeldOut { limit_per_class: Some(10), ..h });
        assert_eq!(fit.len() + held.len(), 10);
        assert!(fit.iter().chain(&held).all(|&i| i < 30));
    }
}
