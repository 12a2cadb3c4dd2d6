//! Files that hold secrets: the gallery's device key, the MQTT password, the MQTT command key and
//! the MQTT TLS client key.
//!
//! Role: one permission check, [`check_private`], run before any of them is read: the file must
//! be readable by its owner only, and its owner must be the user the process runs as. A secret
//! that other local users can read is no secret, and a key file owned by someone else may have
//! been planted; both are refused with the fix in the message (`chmod 600`, `chown`). And one
//! way to write such a file, `write_private`: mode 0600 from the first byte, atomically.
//!
//! Must not: read, log or return a secret's bytes. Errors carry the path and the mode, never the
//! content.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// How [`write_private`] puts the finished file at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Hard link: fails with [`ErrorKind::AlreadyExists`] if the path exists (a key is never
    /// replaced).
    KeepExisting,
    /// Rename over whatever is there (a new backup replaces the old one).
    Replace,
}

/// Writes `bytes` to `path` with mode 0600: into a temporary file beside it (created with
/// O_EXCL, owner-only from the start), fsynced, then linked or renamed into place and the
/// folder fsynced. A kill at any point leaves the old state or the whole new file, never part
/// of one.
pub(crate) fn write_private(path: &Path, bytes: &[u8], place: Place) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Named after our pid: a temporary file left by a killed process with another pid is never
    // touched by us (it is readable by its owner only, and nothing uses it).
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let placed = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        match place {
            Place::KeepExisting => std::fs::hard_link(&tmp, path),
            Place::Replace => std::fs::rename(&tmp, path),
        }
    })();
    // After a link the temporary name is a second name of the same file; after a failure it is
    // a leftover. Either way it goes; failing to remove it leaves an unused owner-only file.
    let _ = std::fs::remove_file(&tmp);
    placed?;
    File::open(&dir)?.sync_all()
}

/// Why a secret file is refused. The caller adds the path and what the file is for.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file's metadata cannot be read (missing, no permission on a folder).
    #[error("cannot read file status: {0}")]
    Io(#[from] std::io::Error),
    /// Group or others have some access to the file.
    #[error(
        "mode {mode:04o} lets group or others access it; run `chmod 600 {path}` (owner read/write \
         only)"
    )]
    Exposed {
        /// Permission bits found.
        mode: u32,
        /// The file, for the command in the message.
        path: String,
    },
    /// The file belongs to another user than the one portier runs as.
    #[error(
        "owned by uid {owner}, but portier runs as uid {uid}; run `chown <service user> {path}` \
         (on the device: portier)"
    )]
    WrongOwner {
        /// Owner of the file.
        owner: u32,
        /// Effective uid of this process.
        uid: u32,
        /// The file, for the command in the message.
        path: String,
    },
}

/// Checks that `path` is accessible to its owner only (no group or other bits) and that the
/// owner is this process's effective user. Root (uid 0) may use a file owned by anyone, because
/// a technician runs `sudo portier gallery ...` on files that belong to the service user.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
        let uid = unsafe { libc::geteuid() };
        check_mode_and_owner(path, meta.mode(), meta.uid(), uid)
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path)?;
        Ok(())
    }
}

/// The rule of [`check_private`] on a file's `st_mode` and owner, and the process's uid.
#[cfg(unix)]
fn check_mode_and_owner(
    path: &Path,
    mode: u32,
    owner: u32,
    uid: u32,
) -> Result<(), SecretFileError> {
    let mode = mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed { mode, path: path.display().to_string() });
    }
    if uid != 0 && owner != uid {
        return Err(SecretFileError::WrongOwner { owner, uid, path: path.display().to_string() });
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_only_files_pass_and_others_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        check_private(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_private(&path).unwrap_err();
            assert!(matches!(err, SecretFileError::Exposed { mode: m, .. } if m == mode), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
        }
        let err = check_private(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, SecretFileError::Io(_)), "{err}");
    }

    #[test]
    fn write_private_is_0600_keeps_or_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_private(&path, b"one", Place::KeepExisting).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_private(&path, b"two", Place::KeepExisting).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_private(&path, b"three", Place::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_of_another_user_is_refused_except_for_root() {
        let p = Path::new("/var/lib/portier/gallery.key");
        check_mode_and_owner(p, 0o100600, 1000, 1000).unwrap();
        check_mode_and_owner(p, 0o100600, 1000, 0).unwrap();
        let err = check_mode_and_owner(p, 0o100600, 0, 1000).unwrap_err();
        assert!(matches!(err, SecretFileError::WrongOwner { owner: 0, uid: 1000, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("owned by uid 0, but portier runs as uid 1000"), "{msg}");
        assert!(msg.contains("chown <service user> /var/lib/portier/gallery.key"), "{msg}");
        // Exposure is refused for root too: a readable key is readable by everyone else.
        assert!(check_mode_and_owner(p, 0o100640, 0, 0).is_err());
    }
}
