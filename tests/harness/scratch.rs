//! A test's temporary directory: configs, keys, logs and data files live here.
//!
//! It is world-readable (0755) because sshd reads `authorized_keys` with the test user's uid.
//! When the test fails the directory is kept and its path printed, so the daemons' logs can be
//! read afterwards.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The test's temporary directory, removed on drop unless the test is panicking.
pub struct Scratch {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/gatehouse-e2e-XXXXXX` with mode 0755.
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-e2e-")
            .tempdir()
            .expect("create the test's temporary directory");
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the test's temporary directory");
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory (nothing is created).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file (mode 0644, parents created) and returns its path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create a directory in the scratch dir");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path
    }

    /// Creates a subdirectory (mode 0755) and returns its path.
    pub fn subdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let path = self.path.join(name);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path
    }

    /// Creates a subdirectory owned by `uid:gid` (mode 0755), e.g. where the test user may write.
    pub fn owned_subdir(&self, name: impl AsRef<Path>, uid: u32, gid: u32) -> PathBuf {
        let path = self.subdir(name);
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test failed: kept its files in {}", kept.display());
            }
        }
    }
}
