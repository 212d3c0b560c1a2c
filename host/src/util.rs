//! Small helpers shared by the commands.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `path` as a manifest or model card records it, valid on any machine:
/// under the cache as `$GAUSSEDGE_CACHE/...`, under the working directory
/// (the checkout) relative to it, anything else as given.
pub fn portable_path(path: &Path) -> String {
    let cache = crate::fit::cache_dir();
    let cwd = std::env::current_dir().unwrap_or_default();
    let abs = if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) };
    if let Ok(rest) = abs.strip_prefix(&cache) {
        return format!("$GAUSSEDGE_CACHE/{}", rest.display());
    }
    match abs.strip_prefix(&cwd) {
        Ok(rest) if !rest.as_os_str().is_empty() => rest.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// The command line that ran, with the program as its bare name and every
/// absolute path made [`portable_path`].
pub fn portable_command() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let p = Path::new(&a);
            if i == 0 {
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(a)
            } else if p.is_absolute() {
                portable_path(p)
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resolves a path recorded by [`portable_path`].
pub fn resolve_portable(recorded: &str) -> PathBuf {
    match recorded.strip_prefix("$GAUSSEDGE_CACHE/") {
        Some(rest) => crate::fit::cache_dir().join(rest),
        None => PathBuf::from(recorded),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder,
/// fsync and a rename (`tempfile`'s persist), then syncs the folder, so a
/// crash leaves the old file or the new one, never half of one, and two
/// writers never share a temporary name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = temp_beside(path, "")?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    persist(tmp, path)
}

/// A temporary file in `path`'s folder (a rename stays on one file
/// system), named after it, ending in `suffix`.
pub fn temp_beside(path: &Path, suffix: &str) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(suffix)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Syncs `tmp` and renames it over `path`, then syncs the folder so the
/// new name is durable too.
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Accuracy and confusion matrix (`true x predicted`, `classes x classes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub classes: usize,
    pub matrix: Vec<Vec<u32>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion { classes, matrix: vec![vec![0; classes]; classes] }
    }

    pub fn add(&mut self, truth: u16, pred: u16) {
        if let Some(row) = self.matrix.get_mut(truth as usize) {
            if let Some(cell) = row.get_mut(pred as usize) {
                *cell += 1;
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().map(|&v| v as u64).sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.classes).map(|i| self.matrix[i][i] as u64).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// Accuracy over the rows (true classes) in `classes`.
    pub fn accuracy_of(&self, classes: &[u16]) -> f64 {
        let (mut right, mut total) = (0u64, 0u64);
        for &c in classes {
            let row = &self.matrix[c as usize];
            right += row[c as usize] as u64;
            total += row.iter().map(|&v| v as u64).sum::<u64>();
        }
        right as f64 / total.max(1) as f64
    }

    /// The matrix as an aligned text table.
    pub fn render(&self) -> String {
        let w = self.matrix.iter().flatten().map(|v| v.to_string().len()).max().unwrap_or(1).max(3);
        let mut s = format!("{:>5}", "t\\p");
        for p in 0..self.classes {
            s += &format!(" {p:>w$}");
        }
        s.push('\n');
        for (t, row) in self.matrix.iter().enumerate() {
            s += &format!("{t:>5}");
            for v in row {
                s += &format!(" {v:>w$}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("stats.bin")]);
        // A folder that is not there is named, and nothing is created.
        let err = write_atomic(&dir.path().join("missing/stats.bin"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn confusion_counts() {
        let mut c = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 1), (1, 1), (2, 2), (2, 0)] {
            c.add(t, p);
        }
        assert_eq!(c.total(), 5);
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
        assert!((c.accuracy_of(&[0]) - 0.5).abs() < 1e-12);
        assert!(c.render().contains("t\\p"));
    }
}
