//! The simulator's flash: a small file system that bundles are flashed to.
//!
//! Flashing a bundle is a sequence of writes, syncs, a rename and folder
//! syncs (see [`crate::bundles`]). Whether that sequence survives a power
//! cut depends on what storage keeps of each step, which a test on a real
//! disk cannot show: a killed process leaves the kernel's page cache behind,
//! so unsynced writes survive and a missing sync goes unnoticed. So the
//! sequence is written against [`Flash`], with two implementations:
//!
//! * [`DiskFlash`]: `std::fs` under a folder, what the simulator runs on;
//! * [`MemFlash`]: an emulated file system with POSIX's durability rules
//!   (file contents are durable once the file is synced, names once their
//!   folder is), which can cut the power at any operation, tear the write it
//!   cuts, and then keep only what storage would. This is littlefs's
//!   power-loss testing, brought to the bundle flash.
//!
//! Paths are relative, `/`-separated, and never leave the flash's root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// What the bundle store needs of a file system.
pub trait Flash {
    /// A file's contents as they read now.
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    /// Whether a file exists now.
    fn exists(&self, path: &str) -> bool;
    /// The names in a folder (empty when it does not exist).
    fn list(&self, dir: &str) -> Vec<String>;
    /// Creates a folder and its parents.
    fn create_dir_all(&mut self, dir: &str) -> io::Result<()>;
    /// Creates or replaces a file's contents (durable only once synced).
    fn write(&mut self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes a file's contents durable.
    fn sync(&mut self, path: &str) -> io::Result<()>;
    /// Replaces `to` with `from` in one step (durable once the folder is
    /// synced).
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a folder and everything in it; a missing one is not an error.
    fn remove_dir_all(&mut self, dir: &str) -> io::Result<()>;
    /// Makes the names in a folder (created, renamed, removed) durable.
    fn sync_dir(&mut self, dir: &str) -> io::Result<()>;
}

fn check_relative(path: &str) -> io::Result<()> {
    let p = Path::new(path);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("flash path {path:?} leaves the flash")))
    }
}

/// The flash as a folder on the host's disk.
#[derive(Debug, Clone)]
pub struct DiskFlash {
    root: PathBuf,
}

impl DiskFlash {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(DiskFlash { root })
    }

    fn path(&self, rel: &str) -> io::Result<PathBuf> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        check_relative(rel)?;
        Ok(self.root.join(rel))
    }
}

impl Flash for DiskFlash {
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(path)?)
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).is_ok_and(|p| p.is_file())
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let Ok(p) = self.path(dir) else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(p) else { return Vec::new() };
        let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        names
    }

    fn create_dir_all(&mut self, dir: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.path(dir)?)
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        File::create(self.path(path)?)?.write_all(bytes)
    }

    fn sync(&mut self, path: &str) -> io::Result<()> {
        File::open(self.path(path)?)?.sync_all()
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from)?, self.path(to)?)
    }

    fn remove_dir_all(&mut self, dir: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.path(dir)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        File::open(self.path(dir)?)?.sync_all()
    }
}

/// Where and how [`MemFlash`] loses power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut {
    /// Index of the operation (every mutating call counts, syncs included,
    /// from creation or the last reboot) during which the power fails; it
    /// and everything after it do not happen, except a write's torn part.
    pub at_op: u64,
    /// How many bytes of a cut write reach storage.
    pub torn_at: usize,
    /// Whether what was not yet synced survives (write-through storage) or
    /// is lost (a write-back cache).
    pub keep_unsynced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(usize),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    live: Vec<u8>,
}

/// An emulated file system that can lose power (see the module's notes).
#[derive(Debug, Clone, Default)]
pub struct MemFlash {
    /// Names as they read now.
    live: BTreeMap<String, Node>,
    /// Names as a reboot finds them (before reachability is applied).
    durable: BTreeMap<String, Node>,
    inodes: Vec<Inode>,
    ops: u64,
    cut: Option<PowerCut>,
    /// Set once the power is gone: every later call fails.
    dead: bool,
    /// A write the cut tore: its inode and the bytes that landed.
    torn: Option<(usize, Vec<u8>)>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn power_lost() -> io::Error {
    io::Error::other("power lost")
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: not found"))
}

impl MemFlash {
    pub fn new() -> Self {
        MemFlash::default()
    }

    /// The power fails during operation `cut.at_op`.
    pub fn cut_power(&mut self, cut: PowerCut) {
        self.cut = Some(cut);
    }

    pub fn power_lost(&self) -> bool {
        self.dead
    }

    /// Operations so far (since creation or the last reboot).
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// What storage holds after the power comes back: the durable names and
    /// contents (everything, for write-through storage), a torn write on
    /// top, and only what is reachable from the root.
    pub fn reboot(&self) -> MemFlash {
        let keep_all = self.cut.is_some_and(|c| c.keep_unsynced);
        let mut inodes: Vec<Inode> = self
            .inodes
            .iter()
            .map(|i| {
                let kept = if keep_all { i.live.clone() } else { i.durable.clone() };
                Inode { durable: kept.clone(), live: kept }
            })
            .collect();
        if let Some((ino, landed)) = &self.torn {
            inodes[*ino] = Inode { durable: landed.clone(), live: landed.clone() };
        }
        let names = if keep_all { &self.live } else { &self.durable };
        let reachable: BTreeMap<String, Node> = names
            .iter()
            .filter(|(path, _)| {
                let mut p = parent(path);
                while !p.is_empty() {
                    if names.get(p) != Some(&Node::Dir) {
                        return false;
                    }
                    p = parent(p);
                }
                true
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        MemFlash { live: reachable.clone(), durable: reachable, inodes, ops: 0, cut: None, dead: false, torn: None }
    }

    /// Counts a mutating operation; `Err` when the power fails at it.
    fn step(&mut self) -> io::Result<Option<PowerCut>> {
        if self.dead {
            return Err(power_lost());
        }
        let i = self.ops;
        self.ops += 1;
        match self.cut {
            Some(c) if c.at_op == i => {
                self.dead = true;
                Ok(Some(c))
            }
            _ => Ok(None),
        }
    }

    fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty() || self.live.get(dir) == Some(&Node::Dir)
    }

    fn file(&self, path: &str) -> Option<usize> {
        match self.live.get(path) {
            Some(Node::File(i)) => Some(*i),
            _ => None,
        }
    }
}

impl Flash for MemFlash {
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        self.file(path).map(|i| self.inodes[i].live.clone()).ok_or_else(|| not_found(path))
    }

    fn exists(&self, path: &str) -> bool {
        self.file(path).is_some()
    }

    fn list(&self, dir: &str) -> Vec<String> {
        self.live
            .keys()
            .filter(|k| parent(k) == dir && !k.is_empty())
            .map(|k| k.rsplit_once('/').map_or(k.as_str(), |(_, n)| n).to_string())
            .collect()
    }

    fn create_dir_all(&mut self, dir: &str) -> io::Result<()> {
        check_relative(dir)?;
        if self.step()?.is_some() {
            return Err(power_lost());
        }
        let mut prefix = String::new();
        for part in dir.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.live.get(&prefix) {
                Some(Node::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{prefix} is a file")))
                }
                Some(Node::Dir) => {}
                None => {
                    self.live.insert(prefix.clone(), Node::Dir);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        check_relative(path)?;
        if !self.dir_exists(parent(path)) {
            return Err(not_found(parent(path)));
        }
        let cut = self.step()?;
        let ino = match self.live.get(path) {
            Some(Node::File(i)) => *i,
            Some(Node::Dir) => return Err(io::Error::new(io::ErrorKind::IsADirectory, path.to_string())),
            None => {
                self.inodes.push(Inode::default());
                let i = self.inodes.len() - 1;
                self.live.insert(path.to_string(), Node::File(i));
                i
            }
        };
        if let Some(c) = cut {
            // The file was truncated and part of the new bytes written back.
            self.torn = Some((ino, bytes[..c.torn_at.min(bytes.len())].to_vec()));
            return Err(power_lost());
        }
        self.inodes[ino].live = bytes.to_vec();
        Ok(())
    }

    fn sync(&mut self, path: &str) -> io::Result<()> {
        let ino = self.file(path).ok_or_else(|| not_found(path))?;
        if self.step()?.is_some() {
            return Err(power_lost());
        }
        self.inodes[ino].durable = self.inodes[ino].live.clone();
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        check_relative(to)?;
        let ino = self.file(from).ok_or_else(|| not_found(from))?;
        if !self.dir_exists(parent(to)) {
            return Err(not_found(parent(to)));
        }
        if self.live.get(to) == Some(&Node::Dir) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, to.to_string()));
        }
        if self.step()?.is_some() {
            return Err(power_lost());
        }
        self.live.remove(from);
        self.live.insert(to.to_string(), Node::File(ino));
        Ok(())
    }

    fn remove_dir_all(&mut self, dir: &str) -> io::Result<()> {
        check_relative(dir)?;
        if !self.live.contains_key(dir) {
            return Ok(());
        }
        if self.step()?.is_some() {
            return Err(power_lost());
        }
        let inside = format!("{dir}/");
        self.live.retain(|k, _| k != dir && !k.starts_with(&inside));
        Ok(())
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        if !self.dir_exists(dir) {
            return Err(not_found(dir));
        }
        if self.step()?.is_some() {
            return Err(power_lost());
        }
        let children = |m: &BTreeMap<String, Node>| -> BTreeSet<String> {
            m.keys().filter(|k| parent(k) == dir && !k.is_empty()).cloned().collect()
        };
        for name in children(&self.durable) {
            if !self.live.contains_key(&name) {
                self.durable.remove(&name);
            }
        }
        for name in children(&self.live) {
            self.durable.insert(name.clone(), self.live[&name]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_flash_keeps_contents_once_synced_and_names_once_their_folder_is() {
        let mut f = MemFlash::new();
        f.create_dir_all("a").unwrap();
        f.write("a/x", b"one").unwrap();
        f.sync("a/x").unwrap();
        // The folder's name and the file's name were never made durable.
        assert!(!f.reboot().exists("a/x"));
        f.sync_dir("").unwrap();
        assert!(!f.reboot().exists("a/x"));
        f.sync_dir("a").unwrap();
        assert_eq!(f.reboot().read("a/x").unwrap(), b"one");
        // New contents not synced: the old ones come back.
        f.write("a/x", b"two").unwrap();
        assert_eq!(f.reboot().read("a/x").unwrap(), b"one");
        // A rename not made durable is undone; once it is, it holds.
        f.write("a/y", b"three").unwrap();
        f.sync("a/y").unwrap();
        f.rename("a/y", "a/x").unwrap();
        assert_eq!(f.read("a/x").unwrap(), b"three");
        assert_eq!(f.reboot().read("a/x").unwrap(), b"one");
        f.sync_dir("a").unwrap();
        assert_eq!(f.reboot().read("a/x").unwrap(), b"three");
        assert!(!f.reboot().exists("a/y"));
        // Removal, like creation, needs the parent synced.
        f.remove_dir_all("a").unwrap();
        assert!(f.reboot().exists("a/x"));
        f.sync_dir("").unwrap();
        assert!(!f.reboot().exists("a/x"));
    }

    #[test]
    fn mem_flash_tears_the_write_the_power_fails_in_and_does_nothing_after() {
        let mut f = MemFlash::new();
        f.write("x", b"old").unwrap();
        f.sync("x").unwrap();
        f.sync_dir("").unwrap();
        f.cut_power(PowerCut { at_op: 3, torn_at: 2, keep_unsynced: false });
        assert!(f.write("x", b"new bytes").is_err());
        assert!(f.power_lost());
        assert!(f.sync("x").is_err());
        assert_eq!(f.reboot().read("x").unwrap(), b"ne");
        // Write-through storage keeps what was not synced.
        let mut f = MemFlash::new();
        f.cut_power(PowerCut { at_op: 2, torn_at: 0, keep_unsynced: true });
        f.write("y", b"kept").unwrap();
        f.create_dir_all("d").unwrap();
        assert!(f.sync("y").is_err());
        let after = f.reboot();
        assert_eq!(after.read("y").unwrap(), b"kept");
        assert_eq!(after.list(""), vec!["d".to_string(), "y".to_string()]);
    }

    #[test]
    fn disk_flash_refuses_paths_that_leave_its_folder() {
        let dir = std::env::temp_dir().join(format!("gaussedge-flash-{}", std::process::id()));
        let mut f = DiskFlash::new(&dir).unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x"] {
            assert!(f.write(bad, b"x").is_err(), "{bad}");
            assert!(MemFlash::new().write(bad, b"x").is_err(), "{bad}");
        }
        f.create_dir_all("b/c").unwrap();
        f.write("b/c/f", b"1").unwrap();
        assert_eq!(f.list("b"), vec!["c".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
