//! Files that hold secrets: the gallery's device key, the MQTT password, the MQTT command key and
//! the MQTT TLS client key.
//!
//! Role: one permission check, [`check_private`], run before any of them is read: the file must
//! be readable by its owner only, and its owner must be the user the process runs as. A secret
//! that other local users can read is no secret, and a key file owned by someone else may have
//! been planted; both are refused with the fix in the message (`chmod 600`, `chown`).
//!
//! Must not: read, log or return a secret's bytes. Errors carry the path and the mode, never the
//! content.

use std::path::Path;

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
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::Exposed { mode, path: path.display().to_string() });
        }
        // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 && meta.uid() != uid {
            return Err(SecretFileError::WrongOwner {
                owner: meta.uid(),
                uid,
                path: path.display().to_string(),
            });
        }
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path)?;
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
}
