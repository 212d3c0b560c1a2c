//! The seed's protocol: a head fitted on the base classes, new classes
//! added one at a time from their training images (no gradient step, no
//! base data), the whole test set evaluated after each.

use crate::data::{self, Dataset, DatasetKind, Split};
use crate::fit::{self, class_label, Extractor};
use crate::rng::Rng;
use crate::util::Confusion;
use anyhow::{Context, Result};
use gaussedge_bundle::{Bundle, HeadDefaults};
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
    /// The figures with the "unknown" answer, at the head's threshold
    /// (absent when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_set: Option<OpenSet>,
}

/// How the "unknown" answer does at one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSet {
    pub threshold: f64,
    /// Accuracy over the whole test set when a test image of a class not
    /// learned yet counts as correct if answered "unknown", and an image of
    /// a known class answered "unknown" counts as wrong.
    pub accuracy: f64,
    /// Share of test images of the base classes answered with a class (the
    /// true-positive rate the threshold was calibrated for).
    pub old_kept: f64,
    /// The same for the classes learned so far.
    pub new_kept: Option<f64>,
    /// Share of test images of classes not learned yet answered "unknown".
    pub unknown_flagged: Option<f64>,
    /// Per learned class (in the order added): the share of its test images
    /// answered with a class.
    #[serde(default)]
    pub kept_by_class: Vec<(u16, f64)>,
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

/// Scores the test features with `head`; with a finite `threshold`, the
/// open-set figures too (a score above it answers "unknown", as on the
/// device).
pub fn evaluate(
    head: &mut GaussianHead<OwnedStorage>,
    features: &[f32],
    truth: &[u16],
    labels: &Labels,
    base: &[u16],
    added: &[u16],
    threshold: f64,
) -> Result<Stage> {
    let d = head.dim();
    let open = threshold.is_finite();
    let mut conf = Confusion::new(labels.0.len());
    // Per group (base, added, not learned yet): images, kept, open-set right.
    let mut tally = [[0usize; 3]; 3];
    // Per added class: images, kept.
    let mut per_class = vec![[0usize; 2]; added.len()];
    for (x, &t) in features.chunks_exact(d).zip(truth) {
        let p = if open { head.predict(x, None)? } else { head.classify(x, None)? };
        let class = labels.class_of(head.slots()[p.class].label.as_str()).unwrap_or(u16::MAX);
        conf.add(t, class);
        if open {
            let unknown = p.novelty > threshold;
            let group = if base.contains(&t) {
                0
            } else if added.contains(&t) {
                1
            } else {
                2
            };
            let right = if group == 2 { unknown } else { !unknown && class == t };
            let g = &mut tally[group];
            g[0] += 1;
            g[1] += usize::from(!unknown);
            g[2] += usize::from(right);
            if let Some(k) = added.iter().position(|&a| a == t) {
                per_class[k][0] += 1;
                per_class[k][1] += usize::from(!unknown);
            }
        }
    }
    let share = |a: usize, n: usize| (n > 0).then(|| a as f64 / n as f64);
    let open_set = open.then(|| OpenSet {
        threshold,
        accuracy: tally.iter().map(|g| g[2]).sum::<usize>() as f64 / truth.len().max(1) as f64,
        old_kept: share(tally[0][1], tally[0][0]).unwrap_or(0.0),
        new_kept: share(tally[1][1], tally[1][0]),
        unknown_flagged: share(tally[2][0] - tally[2][1], tally[2][0]),
        kept_by_class: added.iter().zip(&per_class).filter_map(|(&c, p)| share(p[1], p[0]).map(|k| (c, k))).collect(),
    });
    Ok(Stage {
        added: added.last().copied(),
        classes_known: head.class_count(),
        accuracy: conf.accuracy(),
        old_accuracy: conf.accuracy_of(base),
        new_accuracy: (!added.is_empty()).then(|| conf.accuracy_of(added)),
        confusion: conf,
        open_set,
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
    /// `layers` overrides the manifest's feature layers; `flip_average`
    /// scores every image by the mean of its and its mirror's features.
    pub fn load(
        bundle: &Path,
        layers: Option<&[String]>,
        flip_average: bool,
        kind: DatasetKind,
        dir: &Path,
        progress: bool,
    ) -> Result<Self> {
        let (bundle, mut extractor) = fit::extractor_with(bundle, layers, 32)?;
        extractor.flip_average = flip_average;
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

    /// The threshold of the bundle's calibration measured again on `head`
    /// (another head design changes the scores); none without a calibration.
    fn recalibrate(&self, head: &mut GaussianHead<OwnedStorage>, base: &[u16], progress: bool) -> Result<f64> {
        let Some(c) = &self.bundle.manifest.calibration else { return Ok(f64::INFINITY) };
        let (_, held) = crate::split::held_out(&self.train, base, &c.held_out);
        let features = self.train_features(progress)?;
        let rows = fit::rows_at(&features, self.extractor.dim(), &held);
        Ok(crate::calibrate::calibrate(head, &rows, c.target_tpr, c.held_out)?.threshold)
    }

    /// The head to start from and its "unknown" threshold: the bundle's
    /// statistics if they match the settings asked for, else refitted from
    /// the base training features (without the images the bundle's
    /// calibration held out, on which the threshold is then measured again).
    pub fn base_head(
        &self,
        head: &HeadDefaults,
        base: &[u16],
        capacity: usize,
        progress: bool,
    ) -> Result<(GaussianHead<OwnedStorage>, f64)> {
        let d = self.extractor.dim();
        let same_features = self.extractor.layers == self.bundle.manifest.layers && !self.extractor.flip_average;
        if let (Some(bytes), true) = (&self.bundle.stats, same_features) {
            let expect = stats::Expect { backbone_sha256: Some(self.extractor.sha256) };
            let (mut h, header) = GaussianHead::from_stats(bytes, capacity, &expect)?;
            if header.weighting == head.weighting && header.transform == head.transform {
                let same_settings = h.settings() == head.settings;
                h.set_settings(head.settings)?;
                let classes: Vec<u16> =
                    h.classes().filter_map(|(_, c)| self.labels.class_of(c.label.as_str())).collect();
                if classes == base {
                    let threshold = if same_settings {
                        header.novelty_threshold
                    } else {
                        self.recalibrate(&mut h, base, progress)?
                    };
                    return Ok((h, threshold));
                }
            }
        }
        match &self.bundle.manifest.calibration {
            Some(c) => {
                let f = fit::fit_base(
                    &self.extractor,
                    self.kind,
                    &self.train,
                    base,
                    head,
                    capacity,
                    c.held_out,
                    c.target_tpr,
                    progress,
                )?;
                Ok((f.head, f.calibration.threshold))
            }
            None => {
                let features = self.train_features(progress)?;
                let labels: Vec<u16> = self.train.samples.iter().map(|s| s.label).collect();
                let h = fit::fit_head(d, capacity, head, &features, &labels, base, |c| self.labels.label(c))?;
                Ok((h, f64::INFINITY))
            }
        }
    }
}

/// What learns the new classes in the protocol: the head in this process
/// ([`InProcess`]), or a device over its link (`demo::OnDevice`). The
/// protocol draws the samples and scores every stage on the host's features
/// of the test set, so both learners run the same protocol on the same
/// samples for the same seed, and their figures compare.
pub trait Learner {
    /// Installs the base head and its "unknown" threshold.
    fn start(&mut self, setup: &Setup, base: GaussianHead<OwnedStorage>, threshold: f64) -> Result<()>;
    /// Learns `class` from the training samples at `chosen` (indices into
    /// `setup.train`); returns how many samples it took.
    fn learn(&mut self, setup: &Setup, class: u16, chosen: &[usize]) -> Result<usize>;
    /// The head as the learner holds it now, and its threshold.
    fn head(&mut self) -> Result<(&mut GaussianHead<OwnedStorage>, f64)>;
}

/// The learner in this process: the host's head, learning from the
/// training set's cached features.
#[derive(Default)]
pub struct InProcess {
    head: Option<(GaussianHead<OwnedStorage>, f64)>,
    train: Option<Vec<f32>>,
    progress: bool,
}

impl InProcess {
    pub fn new(progress: bool) -> Self {
        InProcess { progress, ..Default::default() }
    }
}

impl Learner for InProcess {
    fn start(&mut self, _: &Setup, base: GaussianHead<OwnedStorage>, threshold: f64) -> Result<()> {
        self.head = Some((base, threshold));
        Ok(())
    }

    fn learn(&mut self, setup: &Setup, class: u16, chosen: &[usize]) -> Result<usize> {
        let train = match &mut self.train {
            Some(t) => t,
            t => t.insert(setup.train_features(self.progress).context("training features")?),
        };
        let (head, _) = self.head.as_mut().context("the learner was not started")?;
        let rows = fit::rows_at(train, setup.extractor.dim(), chosen);
        fit::learn_class(head, setup.labels.label(class), &rows)?;
        Ok(chosen.len())
    }

    fn head(&mut self) -> Result<(&mut GaussianHead<OwnedStorage>, f64)> {
        let (head, threshold) = self.head.as_mut().context("the learner was not started")?;
        Ok((head, *threshold))
    }
}

/// The training samples of `class` the protocol gives the learner: `shots`
/// of them drawn at random, or all.
pub fn draw(train: &Dataset, class: u16, shots: Option<usize>, rng: &mut Rng) -> Vec<usize> {
    let idx = train.indices_of(class);
    match shots {
        Some(k) => rng.sample(idx.len(), k).into_iter().map(|j| idx[j]).collect(),
        None => idx,
    }
}

/// The protocol's settings: the head design, which classes are the base and
/// in which order the rest are added, how many samples each new class gets,
/// and the seed they are drawn with.
pub struct Protocol<'a> {
    pub head: &'a HeadDefaults,
    pub base: &'a [u16],
    pub add: &'a [u16],
    pub shots: Option<usize>,
    pub seed: u64,
    pub progress: bool,
}

/// The seed's protocol with any learner: the base head, then each new class
/// learned and the whole test set scored after it. `on_stage` sees each
/// stage as it is scored, with the number of samples the class was learned
/// from. Returns the stages and the base head's novelty figures.
pub fn run(
    setup: &Setup,
    learner: &mut dyn Learner,
    p: &Protocol,
    on_stage: &mut dyn FnMut(&Stage, usize, Option<usize>),
) -> Result<(Vec<Stage>, Novelty)> {
    let capacity = (p.base.len() + p.add.len()).max(1);
    let (base_head, threshold) = setup.base_head(p.head, p.base, capacity, p.progress)?;
    learner.start(setup, base_head, threshold)?;
    let truth = setup.truth();
    let (head, threshold) = learner.head()?;
    let novelty = novelty(head, &setup.test_features, &truth, p.base, p.add)?;
    let mut stages = vec![evaluate(head, &setup.test_features, &truth, &setup.labels, p.base, &[], threshold)?];
    on_stage(&stages[0], 0, None);
    let mut rng = Rng::new(p.seed);
    for (i, &c) in p.add.iter().enumerate() {
        let chosen = draw(&setup.train, c, p.shots, &mut rng);
        let taken = learner.learn(setup, c, &chosen)?;
        let (head, threshold) = learner.head()?;
        stages.push(evaluate(head, &setup.test_features, &truth, &setup.labels, p.base, &p.add[..=i], threshold)?);
        on_stage(stages.last().expect("stage"), i + 1, Some(taken));
    }
    Ok((stages, novelty))
}

/// The whole protocol in process.
pub fn run_in_process(setup: &Setup, p: &Protocol) -> Result<(Vec<Stage>, Novelty)> {
    run(setup, &mut InProcess::new(p.progress), p, &mut |_, _, _| {})
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

/// The table printed per stage; with an "unknown" threshold, its columns:
/// open-set accuracy, the share of base-class and learned-class images
/// answered with a class, and of not-yet-learned images answered "unknown".
pub fn render_table(stages: &[Stage], names: &Labels) -> String {
    let open = stages.iter().any(|s| s.open_set.is_some());
    let mut s = String::from("| stage | added | classes | accuracy | old classes | new classes |");
    let mut rule = String::from("| --- | --- | --- | --- | --- | --- |");
    if open {
        s += " open-set accuracy | old kept | new kept | unknown flagged |";
        rule += " --- | --- | --- | --- |";
    }
    s += "\n";
    s += &rule;
    s += "\n";
    let opt = |v: Option<f64>| v.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into());
    for (i, st) in stages.iter().enumerate() {
        let added = st.added.map(|c| format!("{c} ({})", names.0[c as usize])).unwrap_or_else(|| "base".into());
        s += &format!(
            "| {i} | {added} | {} | {:.4} | {:.4} | {} |",
            st.classes_known,
            st.accuracy,
            st.old_accuracy,
            opt(st.new_accuracy)
        );
        if open {
            match &st.open_set {
                Some(o) => {
                    s += &format!(
                        " {:.4} | {:.4} | {} | {} |",
                        o.accuracy,
                        o.old_kept,
                        opt(o.new_kept),
                        opt(o.unknown_flagged)
                    )
                }
                None => s += " - | - | - | - |",
            }
        }
        s += "\n";
    }
    if let Some(o) = stages.iter().find_map(|s| s.open_set.as_ref()) {
        s += &format!("\n\"unknown\" above novelty {:.3} (the head's calibrated threshold)\n", o.threshold);
    }
    s
}

/// The curves of a run for [`plot`]: closed-set accuracy, and open-set
/// accuracy when the head has a threshold.
pub fn curves(stages: &[Stage]) -> Vec<(String, Vec<f64>)> {
    let mut series = vec![("closed-set accuracy".to_string(), stages.iter().map(|s| s.accuracy).collect())];
    if stages.iter().all(|s| s.open_set.is_some()) {
        series.push((
            "open-set accuracy (\"unknown\" counts for classes not learned yet)".to_string(),
            stages.iter().filter_map(|s| s.open_set.as_ref().map(|o| o.accuracy)).collect(),
        ));
    }
    series
}
