//! CIFAR-10 binary batches: each record is a label byte and 3072 pixel
//! bytes (1024 red, 1024 green, 1024 blue, row-major 32x32). Any number of
//! records per file: the official batches hold 10,000, the development split
//! 8,000.

use super::{DataError, Dataset, Sample, Split};
use gaussedge_shared::wire::FrameFormat;
use std::path::Path;

pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const RECORD: usize = 1 + 3072;

/// Reads one batch file.
pub fn read_batch(path: &Path, out: &mut Vec<Sample>) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(DataError::format(
            path,
            format!("{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records", bytes.len()),
        ));
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = rec[0];
        if label >= 10 {
            return Err(DataError::format(path, format!("record {i} has label {label}, CIFAR-10 labels are 0-9")));
        }
        let planes = &rec[1..];
        let mut pixels = vec![0u8; 3072];
        for p in 0..1024 {
            for c in 0..3 {
                pixels[p * 3 + c] = planes[c * 1024 + p];
            }
        }
        out.push(Sample { label: label.into(), format: FrameFormat { width: 32, height: 32, channels: 3 }, pixels });
    }
    Ok(())
}

/// Loads the training batches (`data_batch_*.bin`) or `test_batch.bin`.
/// Class names come from `batches.meta.txt` when it is there.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    // The official archive unpacks into cifar-10-batches-bin/.
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if nested.is_dir() { nested.as_path() } else { dir };
    let files: Vec<_> = match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).filter(|p| p.exists()).collect(),
        Split::Test => vec![dir.join("test_batch.bin")].into_iter().filter(|p| p.exists()).collect(),
    };
    if files.is_empty() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: match split {
                Split::Train => "data_batch_1.bin .. data_batch_5.bin".into(),
                Split::Test => "test_batch.bin".into(),
            },
        });
    }
    let mut samples = vec![];
    for f in &files {
        read_batch(f, &mut samples)?;
    }
    let meta = dir.join("batches.meta.txt");
    let class_names = match std::fs::read_to_string(&meta) {
        Ok(text) => {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() != 10 {
                return Err(DataError::format(&meta, format!("{} class names, CIFAR-10 has 10", names.len())));
            }
            names
        }
        Err(_) => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Ok(Dataset { name: "cifar10".into(), class_names, samples })
}
