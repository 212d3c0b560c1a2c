//! Dataset readers on synthetic files in the real formats, good and bad.

use flate2::write::GzEncoder;
use gaussedge_data::{self as data, load_cifar10, load_fashion_mnist, load_folder, DataError, DatasetKind, Split};
use std::io::Write;
use std::path::Path;

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u8).wrapping_mul(seed)));
    r
}

#[test]
fn cifar_any_record_count_and_planar_to_interleaved() {
    let dir = tempfile::tempdir().unwrap();
    // 3 records in one batch, 2 in another, 1 test record.
    let b1: Vec<u8> = (0..3).flat_map(|i| cifar_record(i, i + 1)).collect();
    let b2: Vec<u8> = (0..2).flat_map(|i| cifar_record(9 - i, 7)).collect();
    std::fs::write(dir.path().join("data_batch_1.bin"), &b1).unwrap();
    std::fs::write(dir.path().join("data_batch_2.bin"), &b2).unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(4, 3)).unwrap();
    let train = load_cifar10(dir.path(), Split::Train).unwrap();
    assert_eq!(train.len(), 5);
    assert_eq!(train.samples.iter().map(|s| s.label).collect::<Vec<_>>(), vec![0, 1, 2, 9, 8]);
    assert_eq!(train.class_names[0], "airplane");
    // Pixel 1 of record 1 (seed 2): R = byte 1, G = byte 1025, B = byte 2049.
    let s = &train.samples[1];
    assert_eq!(&s.pixels[3..6], &[2u8, (1025u32 * 2) as u8, (2049u32 * 2) as u8]);
    assert_eq!(load_cifar10(dir.path(), Split::Test).unwrap().len(), 1);

    std::fs::write(dir.path().join("batches.meta.txt"), "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n").unwrap();
    assert_eq!(load_cifar10(dir.path(), Split::Train).unwrap().class_names[9], "j");
}

#[test]
fn cifar_malformed_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data_batch_1.bin"), vec![0u8; 3073 + 10]).unwrap();
    let err = load_cifar10(dir.path(), Split::Train).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }) && err.to_string().contains("data_batch_1.bin"), "{err}");
    std::fs::write(dir.path().join("data_batch_1.bin"), cifar_record(10, 1)).unwrap();
    assert!(load_cifar10(dir.path(), Split::Train).unwrap_err().to_string().contains("label 10"));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(load_cifar10(empty.path(), Split::Test), Err(DataError::Missing { .. })));
    std::fs::write(dir.path().join("data_batch_1.bin"), cifar_record(1, 1)).unwrap();
    std::fs::write(dir.path().join("batches.meta.txt"), "only\nthree\nnames\n").unwrap();
    assert!(load_cifar10(dir.path(), Split::Train).is_err());
}

fn idx(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(vec![], flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_mnist(dir: &Path, prefix: &str, n: u32, labels: &[u8], compress: bool) {
    let images = idx(8, &[n, 4, 3], &(0..n * 12).map(|i| i as u8).collect::<Vec<_>>());
    let labels = idx(8, &[labels.len() as u32], labels);
    let (a, b) = if compress { (gz(&images), gz(&labels)) } else { (images, labels) };
    let ext = if compress { ".gz" } else { "" };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), a).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), b).unwrap();
}

#[test]
fn idx_gzipped_or_not() {
    for compress in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), "train", 3, &[1, 2, 9], compress);
        let ds = load_fashion_mnist(dir.path(), Split::Train).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.samples[2].label, 9);
        assert_eq!((ds.samples[1].format.width, ds.samples[1].format.height, ds.samples[1].format.channels), (3, 4, 1));
        assert_eq!(ds.samples[1].pixels[0], 12);
        assert_eq!(ds.class_names[9], "Ankle boot");
    }
}

#[test]
fn idx_malformed_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), "t10k", 3, &[1, 2], false);
    let err = load_fashion_mnist(dir.path(), Split::Test).unwrap_err();
    assert!(err.to_string().contains("labels for 3 images"), "{err}");
    write_mnist(dir.path(), "t10k", 2, &[1, 12], false);
    assert!(load_fashion_mnist(dir.path(), Split::Test).unwrap_err().to_string().contains("label 12"));
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), idx(8, &[5, 4, 3], &[0; 10])).unwrap();
    assert!(load_fashion_mnist(dir.path(), Split::Test).unwrap_err().to_string().contains("need"));
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), idx(0x0d, &[1, 1, 1], &[0; 4])).unwrap();
    assert!(load_fashion_mnist(dir.path(), Split::Test).unwrap_err().to_string().contains("element type"));
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), b"\x1f\x8bnot gzip").unwrap();
    assert!(load_fashion_mnist(dir.path(), Split::Test).unwrap_err().to_string().contains("gzip"));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(load_fashion_mnist(empty.path(), Split::Train), Err(DataError::Missing { .. })));
}

#[test]
fn image_folder_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("cat", 2), ("dog", 1)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        for i in 0..n {
            let s = data::Sample {
                label: 0,
                format: gaussedge_shared::wire::FrameFormat { width: 5, height: 4, channels: 3 },
                pixels: (0..60).map(|v| (v * (i + 1)) as u8).collect(),
            };
            data::write_png(&s, &dir.path().join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let ds = load_folder(dir.path()).unwrap();
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!(ds.samples.iter().map(|s| s.label).collect::<Vec<_>>(), vec![0, 0, 1]);
    assert_eq!(ds.samples[1].pixels, (0..60).map(|v| (v * 2) as u8).collect::<Vec<_>>());
    assert_eq!(data::load(DatasetKind::Folder, dir.path(), Split::Test).unwrap().len(), 3);
    std::fs::write(dir.path().join("dog").join("broken.png"), b"not a png").unwrap();
    let err = load_folder(dir.path()).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
}

#[test]
fn the_development_split_reads_with_its_record_counts() {
    // The shared development split (8,000 records per training file) when
    // this checkout has it beside it; CI always does.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar-10-dev");
    if !dir.exists() {
        eprintln!("{} not present; skipping", dir.display());
        return;
    }
    let train = load_cifar10(&dir, Split::Train).unwrap();
    let test = load_cifar10(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (40_000, 10_000));
    assert!(train.counts().iter().all(|&c| c == 4000));
}
