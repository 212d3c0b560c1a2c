//! Hashes this crate's sources and manifest into `GAUSSEDGE_BACKBONE_SOURCE`,
//! the part of a compiled backbone's fingerprint that names the code which
//! wrote it: a compiled graph stores the ops' fields as this code lays them
//! out, so bytes from any other version of it must not be read back. The
//! manifest pins tract's exact version, so a tract update changes it too.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let mut paths = vec![PathBuf::from("Cargo.toml")];
    files(Path::new("src"), &mut paths);
    paths.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in &paths {
        p.hash(&mut h);
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    println!("cargo:rustc-env=GAUSSEDGE_BACKBONE_SOURCE={:016x}", h.finish());
}
