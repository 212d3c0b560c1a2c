//! IDX files (MNIST, Fashion-MNIST), gzipped or not: a big-endian magic
//! (`0x0000 08 nd`: unsigned bytes, `nd` dimensions), the dimensions, data.

use super::{DataError, Dataset, Sample, Split};
use flate2::read::GzDecoder;
use gaussedge_shared::wire::FrameFormat;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Reads an IDX file of unsigned bytes; returns its dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| DataError::format(path, format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(path, "not an IDX file (bad magic)"));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            path,
            format!("IDX element type 0x{:02x}, only unsigned bytes (0x08) are supported", bytes[2]),
        ));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || bytes.len() < 4 + 4 * nd {
        return Err(DataError::format(path, "IDX header truncated"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = bytes[4 + 4 * nd..].to_vec();
    if expected != Some(data.len()) {
        return Err(DataError::format(
            path,
            format!("IDX dimensions {dims:?} need {expected:?} bytes, file has {}", data.len()),
        ));
    }
    Ok((dims, data))
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// Loads Fashion-MNIST (or any MNIST-layout IDX pair) from `dir`.
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_stem = format!("{prefix}-images-idx3-ubyte");
    let labels_stem = format!("{prefix}-labels-idx1-ubyte");
    let missing =
        || DataError::Missing { path: dir.to_path_buf(), expected: format!("{images_stem}[.gz], {labels_stem}[.gz]") };
    let images_path = find(dir, &images_stem).ok_or_else(missing)?;
    let labels_path = find(dir, &labels_stem).ok_or_else(missing)?;
    let (idims, images) = read_idx(&images_path)?;
    let (ldims, labels) = read_idx(&labels_path)?;
    if idims.len() != 3 {
        return Err(DataError::format(&images_path, format!("expected 3 dimensions (n, rows, cols), found {idims:?}")));
    }
    if ldims.len() != 1 || ldims[0] != idims[0] {
        return Err(DataError::format(&labels_path, format!("{ldims:?} labels for {} images", idims[0])));
    }
    let (h, w) = (idims[1], idims[2]);
    if h == 0 || w == 0 || h > u16::MAX as usize || w > u16::MAX as usize {
        return Err(DataError::format(&images_path, format!("image size {w}x{h}")));
    }
    let format = FrameFormat { width: w as u16, height: h as u16, channels: 1 };
    let mut samples = Vec::with_capacity(idims[0]);
    for (i, (px, &label)) in images.chunks_exact(h * w).zip(&labels).enumerate() {
        if label >= 10 {
            return Err(DataError::format(&labels_path, format!("label {label} at {i}, expected 0-9")));
        }
        samples.push(Sample { label: label.into(), format, pixels: px.to_vec() });
    }
    Ok(Dataset {
        name: "fashion-mnist".into(),
        class_names: FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
        samples,
    })
}
