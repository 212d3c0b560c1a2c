//! Ordinary photos to the frames a device needs.
//!
//! A phone photo is 1600x1200 or more, RGB, and often stored sideways with
//! an EXIF orientation tag; a device's backbone takes, say, 64x64 and its
//! frame buffer holds little more. [`fit_frame`] is the one host-side step
//! between a decoded image and the device: grey for a grey backbone, and a
//! frame larger than the backbone's input shrunk to exactly that input with
//! an antialiasing filter (the device's own bilinear resize does not
//! antialias, and would alias a 25x reduction badly). A frame no larger than
//! the input goes as it is: the device upsamples it exactly as it does its
//! camera's frames. `learn --from`, `predict` and the feature extraction
//! behind `fit` and `eval` all pass images through it, so one photo gives
//! the same pixels whichever way it reaches a head.

use super::{DataError, Sample};
use gaussedge_shared::wire::FrameFormat;
use image::imageops::FilterType;
use std::borrow::Cow;
use std::path::Path;

/// Largest side and decoded size accepted from a file: a few-hundred-byte
/// PNG can claim 100000x100000 pixels.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Decodes a PNG or JPEG with its EXIF orientation applied (a phone's
/// portrait photo is stored landscape with a tag saying so).
pub fn decode(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bad = |e: &dyn std::fmt::Display| DataError::format(path, format!("cannot decode image: {e}"));
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let format = reader.format();
    if !matches!(format, Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)) {
        let what = format.map_or("not an image".to_string(), |f| format!("{f:?} is not supported"));
        return Err(DataError::format(path, format!("cannot decode image: {what} (PNG and JPEG are)")));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(&e))?;
    use image::ImageDecoder;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// A decoded image as a grey or RGB sample (grey, grey with alpha: grey;
/// anything else: RGB).
pub fn to_sample(img: image::DynamicImage, label: u16, path: &Path) -> Result<Sample, DataError> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 || w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(DataError::format(path, format!("image size {w}x{h}")));
    }
    let (pixels, channels) = match img.color().channel_count() {
        1 | 2 => (img.into_luma8().into_raw(), 1),
        _ => (img.into_rgb8().into_raw(), 3),
    };
    Ok(Sample { label, format: FrameFormat { width: w as u16, height: h as u16, channels }, pixels })
}

/// The frame to send a device whose backbone takes `input` (width, height,
/// channels): see the module's notes. Borrows when nothing changes.
pub fn fit_frame<'a>(s: &'a Sample, input: FrameFormat) -> Cow<'a, Sample> {
    let FrameFormat { width, height, channels } = s.format;
    let grey = input.channels == 1 && channels == 3;
    let shrink = width > input.width || height > input.height;
    if !grey && !shrink {
        return Cow::Borrowed(s);
    }
    let (w, h) = (u32::from(width), u32::from(height));
    let mut img = if channels == 1 {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, s.pixels.clone()).expect("grey frame"))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, s.pixels.clone()).expect("RGB frame"))
    };
    if grey {
        img = image::DynamicImage::ImageLuma8(img.into_luma8());
    }
    if shrink {
        // Triangle widens with the reduction: every source pixel counts.
        img = img.resize_exact(u32::from(input.width), u32::from(input.height), FilterType::Triangle);
    }
    let format = FrameFormat {
        width: img.width() as u16,
        height: img.height() as u16,
        channels: if grey { 1 } else { channels },
    };
    let pixels = if format.channels == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    Cow::Owned(Sample { label: s.label, format, pixels })
}

/// A photo as the frame for a device whose backbone takes `input`.
pub fn read_photo(path: &Path, label: u16, input: FrameFormat) -> Result<Sample, DataError> {
    let s = to_sample(decode(path)?, label, path)?;
    Ok(fit_frame(&s, input).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(w: u16, h: u16, f: impl Fn(u16, u16) -> [u8; 3]) -> Sample {
        let mut pixels = vec![];
        for y in 0..h {
            for x in 0..w {
                pixels.extend(f(x, y));
            }
        }
        Sample { label: 0, format: FrameFormat { width: w, height: h, channels: 3 }, pixels }
    }

    const INPUT: FrameFormat = FrameFormat { width: 64, height: 64, channels: 3 };

    #[test]
    fn small_frames_pass_untouched_and_large_ones_shrink_to_the_input_with_antialiasing() {
        let small = rgb(32, 32, |x, y| [x as u8, y as u8, 7]);
        assert!(matches!(fit_frame(&small, INPUT), Cow::Borrowed(_)));
        // A fine checkerboard: point sampling would give black or white; an
        // antialiased reduction gives its average grey.
        let board = rgb(1600, 1200, |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] });
        let out = fit_frame(&board, INPUT);
        assert_eq!(out.format, INPUT);
        assert_eq!(out.pixels.len(), 64 * 64 * 3);
        assert!(out.pixels.iter().all(|&v| (118..=137).contains(&v)), "{:?}", &out.pixels[..12]);
        // Grey backbones get grey frames.
        let g = fit_frame(&small, FrameFormat { channels: 1, ..INPUT });
        assert_eq!(g.format, FrameFormat { width: 32, height: 32, channels: 1 });
    }

    #[test]
    fn exif_orientation_is_applied_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        // A 40x20 JPEG tagged "rotate 90 degrees clockwise" (orientation 6)
        // is a 20x40 picture.
        let img = image::RgbImage::from_fn(40, 20, |x, _| image::Rgb([if x < 20 { 255 } else { 0 }, 0, 0]));
        let mut jpeg = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
        let path = dir.path().join("turned.jpg");
        std::fs::write(&path, with_orientation(&jpeg, 6)).unwrap();
        let s = read_photo(&path, 0, INPUT).unwrap();
        assert_eq!((s.format.width, s.format.height), (20, 40));
        // Turned clockwise, the red left half is now the top half.
        assert!(s.pixels[0] > 200 && s.pixels[(39 * 20) * 3] < 60, "{} {}", s.pixels[0], s.pixels[(39 * 20) * 3]);

        let text = dir.path().join("notes.jpg");
        std::fs::write(&text, "not a picture").unwrap();
        let e = read_photo(&text, 0, INPUT).unwrap_err().to_string();
        assert!(e.contains("notes.jpg") && e.contains("cannot decode"), "{e}");
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() / 3]).unwrap();
        let e = read_photo(&cut, 0, INPUT).unwrap_err().to_string();
        assert!(e.contains("cut.jpg"), "{e}");
        let gif = dir.path().join("anim.gif");
        std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
        let e = read_photo(&gif, 0, INPUT).unwrap_err().to_string();
        assert!(e.contains("anim.gif") && e.contains("not supported"), "{e}");
    }

    /// `jpeg` with an APP1 Exif segment carrying one orientation tag.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend(1u16.to_be_bytes()); // one entry
        tiff.extend(0x0112u16.to_be_bytes()); // Orientation
        tiff.extend(3u16.to_be_bytes()); // SHORT
        tiff.extend(1u32.to_be_bytes()); // count
        tiff.extend(orientation.to_be_bytes());
        tiff.extend([0, 0]);
        tiff.extend(0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend([0xFF, 0xE1]);
        out.extend(((app1.len() + 2) as u16).to_be_bytes());
        out.extend(app1);
        out.extend(&jpeg[2..]);
        out
    }
}
