//! The seed's protocol: a head fitted on the base classes, new classes
//! added one at a time from their training images (no gradient step, no
//! base data), the whole test set evaluated after each.

use crate::data::{self, Dataset, DatasetKind, Split};
use crate::fit::{self, class_label, Extractor};
use crate::rng::Rng;
use crate::util::Confusion;
use anyhow::{Context, Result};
use gaussedge_device::bundle::{Bundle, HeadDefaults};
use gaussedge_shared::head::{GaussianHead, OwnedStorage};
use gaussedge_shared::stats;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One row of the table: the state after `added` was learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Class added at this stage (`None` for the base head).
    pub added: Option<u16>,
    pub classes_known: usize,
    /// Accuracy over the whole test set (all classes).
    pub accuracy: f64,
    /// Accuracy on test images of the base classes.
    pub old_accuracy: f64,
    /// Accuracy on test images of the classes added so far.
    pub new_accuracy: Option<f64>,
    pub confusion: Confusion,
}

/// Novelty of not-yet-learned classes against the base classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Novelty {
    pub auroc: f64,
    /// True-negative rate (novel samples flagged) at the threshold that keeps
    /// 95% of base-class samples.
    pub tnr_at_95_tpr: f64,
    pub threshold_95: f64,
}

/// Labels of the dataset classes as the head stores them.
pub struct Labels(pub Vec<String>);

impl Labels {
    pub fn class_of(&self, label: &str) -> Option<u16> {
        self.0.iter().enumerate().find(|(c, n)| class_label(n, *c as u16).as_str() == label).map(|(c, _)| c as u16)
    }
    pub fn label(&self, class: u16) -> gaussedge_shared::Label {
        class_label(&self.0[class as usize], class)
    }
}

/// Scores the test features with `head`.
pub fn evaluate(
    head: &mut GaussianHead<OwnedStorage>,
    features: &[f32],
    truth: &[u16],
    labels: &Labels,
    base: &[u16],
    added: &[u16],
) -> Result<Stage> {
    let d = head.dim();
    let mut conf = Confusion::new(labels.0.len());
    for (x, &t) in features.chunks_exact(d).zip(truth) {
        let p = head.classify(x, None)?;
        let class = labels.class_of(head.slots()[p.class].label.as_str()).unwrap_or(u16::MAX);
        conf.add(t, class);
    }
    Ok(Stage {
        added: added.last().copied(),
        classes_known: head.class_count(),
        accuracy: conf.accuracy(),
        old_accuracy: conf.accuracy_of(base),
        new_accuracy: (!added.is_empty()).then(|| conf.accuracy_of(added)),
        confusion: conf,
    })
}

/// AUROC of the novelty score, base-class test samples (negatives) against
/// samples of `novel` classes (positives).
pub fn novelty(
    head: &mut GaussianHead<OwnedStorage>,
    features: &[f32],
    truth: &[u16],
    base: &[u16],
    novel: &[u16],
) -> Result<Novelty> {
    let d = head.dim();
    let (mut known, mut unseen) = (vec![], vec![]);
    for (x, t) in features.chunks_exact(d).zip(truth) {
        if base.contains(t) {
            known.push(head.predict(x, None)?.novelty);
        } else if novel.contains(t) {
            unseen.push(head.predict(x, None)?.novelty);
        }
    }
    known.sort_by(f64::total_cmp);
    unseen.sort_by(f64::total_cmp);
    // AUROC by ranks (Mann-Whitney U), ties counted half.
    let (mut wins, mut j, mut k) = (0f64, 0usize, 0usize);
    for &u in &unseen {
        while j < known.len() && known[j] < u {
            j += 1;
        }
        k = k.max(j);
        while k < known.len() && known[k] <= u {
            k += 1;
        }
        wins += j as f64 + 0.5 * (k - j) as f64;
    }
    let auroc = wins / (known.len().max(1) * unseen.len().max(1)) as f64;
    let threshold = known.get(((known.len() as f64) * 0.95) as usize).or(known.last()).copied().unwrap_or(0.0);
    let tnr = unseen.iter().filter(|&&u| u > threshold).count() as f64 / unseen.len().max(1) as f64;
    Ok(Novelty { auroc, tnr_at_95_tpr: tnr, threshold_95: threshold })
}

/// Everything `gaussedge eval` needs, loaded once.
pub struct Setup {
    pub bundle: Bundle,
    pub extractor: Extractor,
    pub kind: DatasetKind,
    pub train: Dataset,
    pub test: Dataset,
    pub test_features: Vec<f32>,
    pub labels: Labels,
}

impl Setup {
    /// `layers` overrides the manifest's feature layers.
    pub fn load(
        bundle: &Path,
        layers: Option<&[String]>,
        kind: DatasetKind,
        dir: &Path,
        progress: bool,
    ) -> Result<Self> {
        let (bundle, extractor) = fit::extractor_with(bundle, layers, 32)?;
        let train = data::load(kind, dir, Split::Train)?;
        let test = data::load(kind, dir, Split::Test)?;
        let test_features = extractor.extract_cached(&test, kind, Split::Test, progress)?;
        let labels = Labels(test.class_names.clone());
        Ok(Setup { bundle, extractor, kind, train, test, test_features, labels })
    }

    pub fn truth(&self) -> Vec<u16> {
        self.test.samples.iter().map(|s| s.label).collect()
    }

    /// Training features of the whole split (cached), for fitting and adding.
    pub fn train_features(&self, progress: bool) -> Result<Vec<f32>> {
        self.extractor.extract_cached(&self.train, self.kind, Split::Train, progress)
    }

    /// The head to start from: the bundle's statistics if they match the
    /// settings asked for, else refitted from the base training features.
    pub fn base_head(
        &self,
        head: &HeadDefaults,
        base: &[u16],
        capacity: usize,
        progress: bool,
    ) -> Result<GaussianHead<OwnedStorage>> {
        let d = self.extractor.dim();
        let same_features = self.extractor.layers == self.bundle.manifest.layers;
        if let (Some(bytes), true) = (&self.bundle.stats, same_features) {
            let header = stats::read_header(bytes)?;
            if header.weighting == head.weighting && header.transform == head.transform {
                // Loading sets the transform and its centre from the file.
                let mut h = fit::head_for_stats(d, capacity)?;
                stats::load(&mut h, bytes, &stats::Expect { backbone_sha256: Some(self.extractor.sha256) })?;
                h.set_settings(head.settings)?;
                let classes: Vec<u16> =
                    h.classes().filter_map(|(_, c)| self.labels.class_of(c.label.as_str())).collect();
                if classes == base {
                    return Ok(h);
                }
            }
        }
        let features = self.train_features(progress)?;
        let labels: Vec<u16> = self.train.samples.iter().map(|s| s.label).collect();
        fit::fit_head(d, capacity, head, &features, &labels, base, |c| self.labels.label(c))
    }
}

/// Picks `shots` random training rows of `class` (all when `None`).
pub fn pick_rows(
    features: &[f32],
    labels: &[u16],
    d: usize,
    class: u16,
    shots: Option<usize>,
    rng: &mut Rng,
) -> Vec<f32> {
    let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
    let chosen: Vec<usize> = match shots {
        Some(k) => rng.sample(idx.len(), k).into_iter().map(|j| idx[j]).collect(),
        None => idx,
    };
    chosen.iter().flat_map(|&i| features[i * d..(i + 1) * d].iter().copied()).collect()
}

/// The whole protocol in process.
pub fn run_in_process(
    setup: &Setup,
    head_settings: &HeadDefaults,
    base: &[u16],
    add: &[u16],
    shots: Option<usize>,
    seed: u64,
    progress: bool,
) -> Result<(Vec<Stage>, Novelty)> {
    let capacity = base.len() + add.len();
    let mut head = setup.base_head(head_settings, base, capacity.max(1), progress)?;
    let truth = setup.truth();
    let novelty = novelty(&mut head, &setup.test_features, &truth, base, add)?;
    let mut stages = vec![evaluate(&mut head, &setup.test_features, &truth, &setup.labels, base, &[])?];
    let train = setup.train_features(progress).context("training features")?;
    let labels: Vec<u16> = setup.train.samples.iter().map(|s| s.label).collect();
    let d = setup.extractor.dim();
    let mut rng = Rng::new(seed);
    for (i, &c) in add.iter().enumerate() {
        let rows = pick_rows(&train, &labels, d, c, shots, &mut rng);
        fit::learn_class(&mut head, setup.labels.label(c), &rows)?;
        stages.push(evaluate(&mut head, &setup.test_features, &truth, &setup.labels, base, &add[..=i])?);
    }
    Ok((stages, novelty))
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws an accuracy-against-classes-added plot, like the seed's figure.
pub fn plot(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<()> {
    use plotters::prelude::*;
    // Text needs a font; Debian's fonts-dejavu-core has one (setup.sh
    // installs it). Without it the plot is drawn without labels.
    let text = std::fs::read(FONT)
        .ok()
        .map(|b| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(b.into_boxed_slice())).is_ok()
        })
        .unwrap_or(false);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0f64..(n - 1) as f64, 0f64..1f64)?;
    if text {
        // One tick per stage: "classes added" is a count.
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("classes added")
            .y_desc("10-class test accuracy")
            .draw()?;
    } else {
        chart.configure_mesh().disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0).draw()?;
    }
    for (i, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = values.iter().enumerate().map(|(x, &y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if text {
        // Accuracies start near 0.4 or above: the lower right stays clear.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The table printed per stage.
pub fn render_table(stages: &[Stage], names: &Labels) -> String {
    let mut s = String::from(
        "| stage | added | classes | accuracy | old classes | new classes |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, st) in stages.iter().enumerate() {
        let added = st.added.map(|c| format!("{c} ({})", names.0[c as usize])).unwrap_or_else(|| "base".into());
        let new = st.new_accuracy.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into());
        s += &format!(
            "| {i} | {added} | {} | {:.4} | {:.4} | {new} |\n",
            st.classes_known, st.accuracy, st.old_accuracy
        );
    }
    s
}
