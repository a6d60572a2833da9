//! The state file: every network, endpoint and address allocation, written
//! atomically after each change and read back at start.
//!
//! One JSON document, `state.json` in the state directory. A write goes to
//! `state.json.tmp`, is fsynced, renamed over `state.json`, and the
//! directory is fsynced: a crash leaves either the old or the new state,
//! never a torn file. Reading a file that does not parse is an error that
//! names the file: the daemon refuses to start rather than lose state.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_ipam::Ipam;

use crate::docker_plugin::state::DockerState;
use crate::model::{Endpoint, Network};

/// Version of the state format this build writes and reads.
pub const STATE_VERSION: u32 = 1;

const STATE_FILE: &str = "state.json";

/// Everything the controller persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Networks by creation order.
    pub networks: Vec<Network>,
    /// Endpoints by creation order.
    pub endpoints: Vec<Endpoint>,
    /// Address allocations, keyed by network name.
    pub ipam: Ipam,
    /// What the Docker plugin keeps: Docker's pools, networks and
    /// endpoints (see [`crate::docker_plugin`]); empty without Docker.
    #[serde(default, skip_serializing_if = "DockerState::is_empty")]
    pub docker: DockerState,
}

/// Where the state file lives.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a state document of this version.
    #[error("state file {path} is not valid weft state: move it away to start empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by another version.
    #[error("state file {path} has version {found}, this weft reads version {STATE_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            networks: Vec::new(),
            endpoints: Vec::new(),
            ipam: Ipam::with_docker_defaults(),
            docker: DockerState::default(),
        }
    }
}

impl StateStore {
    /// A store in `dir`, created (mode 0700) if missing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                action: "creating state directory",
                path: dir.to_owned(),
                source,
            })?;
        Ok(StateStore {
            dir: dir.to_owned(),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Read the state; a missing file is an empty state.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the file cannot be read or does not parse.
    pub fn load(&self) -> Result<State, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        let state: State =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Version {
                path,
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Write the state atomically (see the module header).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the step that failed.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
            action: "serializing state for",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        // 0600 whatever the umask: the state names every sandbox.
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?
        };
        {
            use std::os::unix::fs::PermissionsExt;
            // A stale temporary file keeps its mode through `open`.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err("setting the mode of", &tmp))?;
        }
        file.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("nested")).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut state = State::default();
        state
            .ipam
            .add_subnet("n1", "10.9.0.0/24".parse().unwrap(), None, None)
            .unwrap();
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!store.dir.join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[test]
    fn the_state_file_is_private_whatever_was_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let tmp = dir.path().join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, b"stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        store.save(&State::default()).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
