//! Labelled image datasets for gaussedge: CIFAR-10 binary batches, Fashion-MNIST IDX
//! files, and image folders (one sub-folder per class) for a user's own
//! captures. Every reader checks sizes and headers and reports a typed
//! error naming the file; none trusts a record count it has not verified.

mod cifar;
mod folder;
mod idx;
pub mod photo;

pub use cifar::{load_cifar10, CIFAR10_CLASSES};
pub use folder::{load_folder, read_image, write_png};
pub use idx::{load_fashion_mnist, FASHION_MNIST_CLASSES};

use gaussedge_shared::wire::FrameFormat;
use std::path::{Path, PathBuf};

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// One image, `u8` HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub label: u16,
    pub format: FrameFormat,
    pub pixels: Vec<u8>,
}

impl Sample {
    /// The image mirrored left to right: the second view of a test-time
    /// flip average (`gaussedge eval --tta flip`).
    pub fn mirrored(&self) -> Sample {
        let (w, c) = (usize::from(self.format.width), usize::from(self.format.channels));
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for row in self.pixels.chunks_exact((w * c).max(1)) {
            for px in row.chunks_exact(c.max(1)).rev() {
                pixels.extend_from_slice(px);
            }
        }
        Sample { label: self.label, format: self.format, pixels }
    }
}

/// A labelled set of images with class names indexed by label.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub class_names: Vec<String>,
    pub samples: Vec<Sample>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Every image mirrored left to right, labels and order kept.
    pub fn mirrored(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            class_names: self.class_names.clone(),
            samples: self.samples.iter().map(Sample::mirrored).collect(),
        }
    }

    /// Keeps the samples whose label is in `classes`; labels stay as they are.
    pub fn filter(&self, classes: &[u16]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            class_names: self.class_names.clone(),
            samples: self.samples.iter().filter(|s| classes.contains(&s.label)).cloned().collect(),
        }
    }

    /// Indices of the samples of one class.
    pub fn indices_of(&self, class: u16) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.samples[i].label == class).collect()
    }

    /// Samples per label.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// The dataset kinds the CLI knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Cifar10,
    FashionMnist,
    Folder,
}

impl DatasetKind {
    /// Where the data lives when the user does not say.
    pub fn default_dir(self) -> Option<PathBuf> {
        match self {
            DatasetKind::FashionMnist => Some(PathBuf::from("/usr/share/datasets/fashion-mnist")),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Folder => "folder",
        }
    }
}

/// Loads a split of a dataset. For `Folder`, `dir/train` and `dir/test` are
/// used if they exist, else `dir` itself for both.
pub fn load(kind: DatasetKind, dir: &Path, split: Split) -> Result<Dataset, DataError> {
    match kind {
        DatasetKind::Cifar10 => load_cifar10(dir, split),
        DatasetKind::FashionMnist => load_fashion_mnist(dir, split),
        DatasetKind::Folder => {
            let sub = dir.join(match split {
                Split::Train => "train",
                Split::Test => "test",
            });
            load_folder(if sub.is_dir() { &sub } else { dir })
        }
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: no data files found ({expected})")]
    Missing { path: PathBuf, expected: String },
}

impl DataError {
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Format { path: path.to_path_buf(), reason: reason.into() }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }
}

/// Parses a class list such as `0-4`, `5,6,7` or `0-2,7`.
pub fn parse_classes(s: &str) -> Result<Vec<u16>, String> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("bad class number {t:?} in {s:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("empty range {part:?}"));
                }
                out.extend(a..=b);
            }
            None => out.push(parse(part)?),
        }
    }
    if out.is_empty() {
        return Err(format!("no classes in {s:?}"));
    }
    let mut seen = out.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != out.len() {
        return Err(format!("class listed twice in {s:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists() {
        assert_eq!(parse_classes("0-4").unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(parse_classes("5,6, 9").unwrap(), vec![5, 6, 9]);
        assert_eq!(parse_classes("0-1,7").unwrap(), vec![0, 1, 7]);
        assert!(parse_classes("4-2").is_err());
        assert!(parse_classes("a").is_err());
        assert!(parse_classes("").is_err());
        assert!(parse_classes("1,1").is_err());
    }

    #[test]
    fn mirroring_reverses_each_row_keeps_each_pixel_and_undoes_itself() {
        // 3 wide, 2 high, RGB: pixel (x, y) = [10y + x, 100 + 10y + x, 200 + 10y + x].
        let pixels: Vec<u8> = (0..2u8)
            .flat_map(|y| (0..3u8).flat_map(move |x| [10 * y + x, 100 + 10 * y + x, 200 + 10 * y + x]))
            .collect();
        let s = Sample { label: 7, format: FrameFormat { width: 3, height: 2, channels: 3 }, pixels };
        let m = s.mirrored();
        assert_eq!(m.label, 7);
        assert_eq!(m.format, s.format);
        assert_eq!(&m.pixels[..3], &[2, 102, 202]);
        assert_eq!(&m.pixels[9..12], &[12, 112, 212]);
        assert_eq!(&m.pixels[15..], &[10, 110, 210]);
        assert_eq!(m.mirrored(), s);
        let gray =
            Sample { label: 0, format: FrameFormat { width: 4, height: 1, channels: 1 }, pixels: vec![1, 2, 3, 4] };
        assert_eq!(gray.mirrored().pixels, vec![4, 3, 2, 1]);
    }
}
