//! An image folder: one sub-folder per class (sorted by name: the first is
//! label 0), PNG or JPEG files inside. This is what `gaussedge captures pull`
//! writes, so samples captured on devices can feed host-side training.

use super::{DataError, Dataset, Sample};
use gaussedge_shared::wire::FrameFormat;
use std::path::Path;

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Decodes an image file (EXIF orientation applied) into a grey or RGB
/// sample at its own size.
pub fn read_image(path: &Path, label: u16) -> Result<Sample, DataError> {
    crate::photo::to_sample(crate::photo::decode(path)?, label, path)
}

pub fn load_folder(dir: &Path) -> Result<Dataset, DataError> {
    let mut classes: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Missing { path: dir.to_path_buf(), expected: "one sub-folder per class".into() });
    }
    let mut samples = vec![];
    let mut class_names = vec![];
    for (label, class_dir) in classes.iter().enumerate() {
        class_names.push(class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let mut files: Vec<_> = std::fs::read_dir(class_dir)
            .map_err(|e| DataError::io(class_dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        for f in files {
            samples.push(read_image(&f, label as u16)?);
        }
    }
    if samples.is_empty() {
        return Err(DataError::Missing { path: dir.to_path_buf(), expected: "PNG or JPEG files".into() });
    }
    Ok(Dataset { name: "folder".into(), class_names, samples })
}

/// Writes a sample as PNG.
pub fn write_png(sample: &Sample, path: &Path) -> Result<(), DataError> {
    let FrameFormat { width, height, channels } = sample.format;
    let color = if channels == 1 { image::ColorType::L8 } else { image::ColorType::Rgb8 };
    image::save_buffer(path, &sample.pixels, width.into(), height.into(), color)
        .map_err(|e| DataError::format(path, format!("cannot write PNG: {e}")))
}
