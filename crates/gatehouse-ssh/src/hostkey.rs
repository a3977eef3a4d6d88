//! The bastion's host key: loaded from a file, or created (ed25519, mode 0600) on first start.
//!
//! Creation is crash-safe and race-free: the key is written to a temporary file in the same
//! directory, synced, then hard-linked into place, which fails if another process got there
//! first (then that key is used). A key file readable by group or others is refused, as
//! OpenSSH refuses it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::{Algorithm, PrivateKey};

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// Reading, writing or creating the file or its directory failed.
    #[error("host key {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file exists but is not an OpenSSH private key we can use.
    #[error("host key {path}: not a usable OpenSSH private key: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The file may be read by other users.
    #[error("host key {path}: permissions {mode:o} are too open; it must not be readable by group or others (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Loads the ed25519 host key at `path`, creating it (and its directory, 0700) if absent.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    match load(path) {
        Err(HostKeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            create(path)?;
            load(path)
        }
        other => other,
    }
}

/// Loads the ed25519 host key at `path` (no creation).
pub fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io_err = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HostKeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io_err)?;
    let invalid = |reason: String| HostKeyError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    if key.is_encrypted() {
        return Err(invalid("it is encrypted with a passphrase".into()));
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(invalid(format!(
            "it is {}, gatehouse uses ed25519 host keys",
            key.algorithm()
        )));
    }
    Ok(key)
}

/// Keeps `key` at `path` (0600, its directory created 0700), replacing what is there
/// atomically (a temporary file renamed over it), unless the file already holds that key.
/// Used for the copy of an SSM host key that a restart falls back on while SSM cannot be read.
pub fn store(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    if load(path).is_ok_and(|held| held.public_key() == key.public_key()) {
        return Ok(());
    }
    let io_err = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    make_parent(path)?;
    let text = encode(path, key)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Created with O_EXCL under a random name, mode 0600 (removed if anything fails): nothing
    // another user placed beside the key (a file, a symbolic link) is opened for writing.
    let written = (|| {
        let mut file = tempfile::Builder::new()
            .prefix(".host_key.")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    written.map_err(io_err)
}

fn make_parent(path: &Path) -> Result<(), HostKeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| HostKeyError::Io {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(())
}

fn encode(path: &Path, key: &PrivateKey) -> Result<String, HostKeyError> {
    key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map(|text| text.to_string())
        .map_err(|e| HostKeyError::Invalid {
            path: path.to_owned(),
            reason: format!("encoding the key failed: {e}"),
        })
}

fn create(path: &Path) -> Result<(), HostKeyError> {
    let io_err = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    make_parent(path)?;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| {
        HostKeyError::Invalid {
            path: path.to_owned(),
            reason: format!("generating a key failed: {e}"),
        }
    })?;
    let text = encode(path, &key)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(io_err)?;
    tracing::info!(path = %path.display(), "created a new ed25519 host key");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/host_key");
        let first = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_stored_copy_loads_back_and_replaces_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/copy");
        let a = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let b = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        store(&path, &a).unwrap();
        assert_eq!(load(&path).unwrap().public_key(), a.public_key());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store(&path, &a).unwrap();
        store(&path, &b).unwrap();
        assert_eq!(load(&path).unwrap().public_key(), b.public_key());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    /// The temporary file is made exclusively: a link placed where the old name (`.tmpPID`)
    /// was predictable is never written through, and a link at the key's own path is
    /// replaced, its target left alone.
    #[test]
    fn a_store_writes_through_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(
            &victim,
            path.with_extension(format!("tmp{}", std::process::id())),
        )
        .unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let a = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        store(&path, &a).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&path).unwrap().public_key(), a.public_key());
    }

    #[test]
    fn too_open_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("too open"), "{err}");
    }

    #[test]
    fn garbage_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not a usable"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key");
    }
}
