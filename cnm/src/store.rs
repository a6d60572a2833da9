//! The state file: every network, endpoint and address allocation, written
//! atomically after each change and read back at start.
//!
//! One JSON document, `state.json` in the state directory. A write goes to
//! `state.json.tmp`, is fsynced, renamed over `state.json`, and the
//! directory is fsynced: a crash leaves either the old or the new state,
//! never a torn file. Reading a file that does not parse is an error that
//! names the file: the daemon refuses to start rather than lose state.
//! So does a file that parses but cannot be true ([`State::check`]): two
//! networks of one name or on overlapping subnets, an endpoint of a
//! network that does not exist, outside its subnets, or sharing an address
//! or a sandbox with another endpoint of its network. The error says where
//! (what a hand edit or a bad merge made), and nothing is changed.
//!
//! The attach journal makes `network connect` crash-safe. Before a TAP is
//! made, `attaching/ENDPOINT.json` records where (its network namespace)
//! and with which MAC; the entry goes when the endpoint is in the state
//! file, or when the connect failed and was undone. The helper sets the
//! MAC before it makes the TAP persistent, so a TAP that survives a crash
//! has the journaled MAC. At start, an entry whose endpoint is not in the
//! state names an interface nobody knows: the daemon removes it (and with
//! it its addresses and routes) before restoring anything, so a kill at any
//! moment of a connect leaves a clean sandbox, and connecting again gets
//! `eth0` again.

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
/// The attach journal's directory in the state directory.
const JOURNAL_DIR: &str = "attaching";

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
    /// The file parses but describes a state that cannot be.
    #[error("state file {path} is inconsistent: {problem}; fix it by hand or move it away to start empty")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the networks and endpoints.
        problem: String,
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

impl State {
    /// Whether this state can be true (see the module header); the first
    /// problem found, naming what is wrong.
    ///
    /// # Errors
    ///
    /// The problem, as a sentence.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeMap::new();
        for network in &self.networks {
            if seen.insert(network.name.as_str(), network).is_some() {
                return Err(format!("two networks are named {:?}", network.name));
            }
        }
        for (i, a) in self.networks.iter().enumerate() {
            for b in &self.networks[i + 1..] {
                for sa in &a.subnets {
                    for sb in &b.subnets {
                        if sa.subnet.contains(&sb.subnet.network())
                            || sb.subnet.contains(&sa.subnet.network())
                        {
                            return Err(format!(
                                "networks {:?} ({}) and {:?} ({}) overlap",
                                a.name, sa.subnet, b.name, sb.subnet
                            ));
                        }
                    }
                }
            }
        }
        let mut addresses = std::collections::BTreeMap::new();
        let mut sandboxes = std::collections::BTreeMap::new();
        for endpoint in &self.endpoints {
            let Some(network) = seen.get(endpoint.network.as_str()) else {
                return Err(format!(
                    "endpoint {:?} ({}) is on network {:?}, which does not exist",
                    endpoint.name, endpoint.id, endpoint.network
                ));
            };
            let sandbox = (endpoint.network.as_str(), &endpoint.sandbox);
            if let Some(other) = sandboxes.insert(sandbox, endpoint) {
                return Err(format!(
                    "endpoints {:?} and {:?} of network {:?} are both in {}",
                    other.name,
                    endpoint.name,
                    endpoint.network,
                    endpoint.sandbox.display()
                ));
            }
            for address in &endpoint.addresses {
                if !network
                    .subnets
                    .iter()
                    .any(|s| s.subnet.contains(&address.addr()))
                {
                    return Err(format!(
                        "endpoint {:?} of network {:?} has {address}, outside the network's subnets",
                        endpoint.name, endpoint.network
                    ));
                }
                let key = (endpoint.network.as_str(), address.addr());
                if let Some(other) = addresses.insert(key, endpoint) {
                    return Err(format!(
                        "endpoints {:?} and {:?} of network {:?} both have {}",
                        other.name,
                        endpoint.name,
                        endpoint.network,
                        address.addr()
                    ));
                }
            }
        }
        Ok(())
    }
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
        state
            .check()
            .map_err(|problem| StoreError::Inconsistent { path, problem })?;
        Ok(state)
    }

    /// Write the state atomically (see the module header).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the step that failed.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
            action: "serializing state for",
            path: self.path(),
            source: io::Error::other(e),
        })?;
        write_atomically(&self.dir, STATE_FILE, &bytes)
    }

    fn journal_dir(&self) -> PathBuf {
        self.dir.join(JOURNAL_DIR)
    }

    /// Record an attach about to start (see the module header), durably.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the step that failed.
    pub fn journal_attach(&self, pending: &PendingAttach) -> Result<(), StoreError> {
        let dir = self.journal_dir();
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StoreError::Io {
                    action: "creating",
                    path: dir.clone(),
                    source,
                })?;
        }
        let bytes = serde_json::to_vec(pending).map_err(|e| StoreError::Io {
            action: "serializing",
            path: dir.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&dir, &format!("{}.json", pending.endpoint), &bytes)
    }

    /// Forget an attach that finished (recorded in the state) or was
    /// undone.
    pub fn clear_attach(&self, endpoint: &str) {
        let path = self.journal_dir().join(format!("{endpoint}.json"));
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an attach journal entry");
            }
        }
    }

    /// The attaches recorded and not cleared: connects a crash cut short.
    /// An entry that does not parse is logged and removed.
    pub fn pending_attaches(&self) -> Vec<PendingAttach> {
        let Ok(entries) = fs::read_dir(self.journal_dir()) else {
            return Vec::new();
        };
        let mut pending = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<PendingAttach>(&bytes).ok())
            {
                Some(entry) => pending.push(entry),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable attach journal entry removed");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        pending
    }
}

/// An attach in progress: where its TAP is being made and with which MAC
/// (see the module header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAttach {
    /// The endpoint's id.
    pub endpoint: String,
    /// Its network's name.
    pub network: String,
    /// The network namespace the TAP is made in.
    pub netns: PathBuf,
    /// The TAP's MAC (set before the TAP is made persistent).
    pub mac: weft_vswitch::MacAddr,
}

/// Write `bytes` to `dir/name` so that a crash leaves the old file or the
/// new one, never a torn one: a temporary file (mode 0600 whatever the
/// umask: the state names every sandbox), fsynced, renamed over, the
/// directory fsynced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    };
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
    file.write_all(bytes).map_err(io_err("writing", &tmp))?;
    file.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))?;
    Ok(())
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

    fn network(name: &str, subnet: &str) -> Network {
        let subnet: ipnet::IpNet = subnet.parse().unwrap();
        Network {
            name: name.into(),
            id: format!("id-{name}"),
            driver: crate::model::DriverKind::Bridge,
            scope: crate::model::Scope::Local,
            subnets: vec![crate::model::SubnetInfo {
                subnet,
                gateway: subnet.hosts().next().unwrap(),
                ip_range: None,
            }],
            internal: false,
            mtu: 1500,
            options: Default::default(),
            created: String::new(),
            aux_addresses: Default::default(),
            vni: None,
            labels: Default::default(),
        }
    }

    fn endpoint(name: &str, network: &str, sandbox: &str, address: &str) -> Endpoint {
        Endpoint {
            id: format!("id-{name}"),
            network: network.into(),
            sandbox: sandbox.into(),
            name: name.into(),
            aliases: Vec::new(),
            ifname: "eth0".into(),
            kind: crate::model::EndpointKind::Tap,
            mac: None,
            addresses: vec![address.parse().unwrap()],
            resolv_conf: None,
            ports: Vec::new(),
            labels: Default::default(),
            bandwidth: None,
            requested_ifname: None,
            docker: None,
        }
    }

    #[test]
    fn a_state_that_cannot_be_is_refused_and_says_where() {
        let good = State {
            networks: vec![network("a", "10.1.0.0/24"), network("b", "10.2.0.0/24")],
            endpoints: vec![
                endpoint("x", "a", "/run/netns/x", "10.1.0.2/24"),
                endpoint("y", "a", "/run/netns/y", "10.1.0.3/24"),
                endpoint("x2", "b", "/run/netns/x", "10.2.0.2/24"),
            ],
            ..State::default()
        };
        assert_eq!(good.check(), Ok(()));
        let broken = |edit: &dyn Fn(&mut State)| {
            let mut state = good.clone();
            edit(&mut state);
            state.check().unwrap_err()
        };
        assert!(broken(&|s| s.networks.push(network("a", "10.3.0.0/24")))
            .contains("two networks are named \"a\""));
        let overlap = broken(&|s| s.networks.push(network("c", "10.1.0.0/16")));
        assert!(
            overlap.contains("\"c\" (10.1.0.0/16)") && overlap.contains("\"a\""),
            "{overlap}"
        );
        assert!(broken(&|s| s.endpoints[0].network = "gone".into()).contains("does not exist"));
        assert!(
            broken(&|s| s.endpoints[1].addresses = vec!["10.1.0.2/24".parse().unwrap()])
                .contains("both have 10.1.0.2")
        );
        assert!(broken(&|s| s.endpoints[1].sandbox = "/run/netns/x".into())
            .contains("both in /run/netns/x"));
        assert!(
            broken(&|s| s.endpoints[1].addresses = vec!["10.9.0.3/24".parse().unwrap()])
                .contains("outside")
        );
        // And at load: an error that names the file; the file stays.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut state = good.clone();
        state.networks.push(network("c", "10.2.0.0/25"));
        fs::write(store.path(), serde_json::to_vec(&state).unwrap()).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("overlap"),
            "{err}"
        );
        assert!(store.path().exists());
    }

    #[test]
    fn the_attach_journal_keeps_what_was_not_cleared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.pending_attaches().is_empty());
        let pending = |id: &str| PendingAttach {
            endpoint: id.into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            mac: "02:42:0a:00:00:02".parse().unwrap(),
        };
        store.journal_attach(&pending("a")).unwrap();
        store.journal_attach(&pending("b")).unwrap();
        let file = dir.path().join(JOURNAL_DIR).join("a.json");
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.clear_attach("b");
        store.clear_attach("never-there");
        fs::write(dir.path().join(JOURNAL_DIR).join("torn.json"), b"{").unwrap();
        assert_eq!(store.pending_attaches(), vec![pending("a")]);
        assert!(!dir.path().join(JOURNAL_DIR).join("torn.json").exists());
    }
}
