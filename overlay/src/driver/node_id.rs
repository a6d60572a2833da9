//! The node id file: this host's [`NodeId`], generated once and kept in the
//! state directory (see [`crate::identity`] for what the id is for).
//!
//! # Theory of operation
//!
//! [`load_or_create`] reads `STATE_DIR/node-id` (32 hex digits and a
//! newline). When the file is missing it draws 16 bytes from the operating
//! system's randomness and writes them there atomically: a temporary file
//! created with mode 0600 (the id is not a secret, but nobody else has a
//! reason to write it), flushed to disk, renamed over the final name, and
//! the directory flushed, so a crash leaves either no file or a whole one.
//! A file that exists but does not hold an id is an error, never replaced:
//! a new id would make this host a stranger to its own address blocks.
//!
//! Wiping the state directory gives the host a new identity; copying it to
//! another host (a cloned VM image made after the first start) gives both
//! the same one, which the cluster cannot tell apart: clone images before
//! the daemon first runs, or delete `node-id` in the clone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::identity::{NodeId, NodeIdParseError};

/// The file's name inside the state directory.
pub const NODE_ID_FILE: &str = "node-id";

/// Why the node id could not be had.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// The file could not be read.
    #[error("reading the node id {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something else than an id.
    #[error("{} does not hold a node id (32 hex digits); remove it to make a new one, and this host becomes a new member", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: NodeIdParseError,
    },
    /// The file could not be written.
    #[error("writing the node id {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("reading the OS's randomness for a new node id: {0}")]
    Random(getrandom::Error),
}

/// This host's node id from `state_dir`, made and saved on first use;
/// `true` when it was made now.
///
/// # Errors
///
/// [`NodeIdError`] when the file cannot be read or written, or holds
/// something else than an id.
pub fn load_or_create(state_dir: &Path) -> Result<(NodeId, bool), NodeIdError> {
    let path = state_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text
                .trim()
                .parse()
                .map_err(|source| NodeIdError::Malformed {
                    path: path.clone(),
                    source,
                })?;
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(NodeIdError::Random)?;
            let id = NodeId::from_bytes(bytes);
            write_atomically(state_dir, &path, &format!("{id}\n"))
                .map_err(|source| NodeIdError::Write { path, source })?;
            Ok((id, true))
        }
        Err(source) => Err(NodeIdError::Read { path, source }),
    }
}

fn write_atomically(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{NODE_ID_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_kept_after_and_private() {
        let dir = std::env::temp_dir().join(format!("weft-node-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (id, made) = load_or_create(&dir).unwrap();
        assert!(made);
        let path = dir.join(NODE_ID_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&dir).unwrap(), (id, false));
        std::fs::write(&path, "not an id\n").unwrap();
        assert!(matches!(
            load_or_create(&dir),
            Err(NodeIdError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
