//! Default locations of the daemon's socket and state (DESIGN.md): root
//! uses `/run/weft/weft.sock` and `/var/lib/weft`; other users
//! `$XDG_RUNTIME_DIR/weft/weft.sock` and `$XDG_STATE_HOME/weft` (or
//! `~/.local/state/weft`). Root inside a user namespace counts as another
//! user.

use std::path::PathBuf;

/// Root of the host: uid 0 in the initial user namespace. Root inside a
/// user namespace (`unshare -Ur`) is an ordinary user to the filesystem,
/// so it gets the per-user paths.
pub fn is_host_root() -> bool {
    nix::unistd::geteuid().is_root() && in_initial_user_namespace()
}

/// The initial user namespace maps every id to itself.
pub fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    })
}

fn is_root() -> bool {
    is_host_root()
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The default API socket.
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/weft/weft.sock");
    }
    let runtime = env_dir("XDG_RUNTIME_DIR")
        .or_else(rootless_fallback_dir)
        .unwrap_or_else(std::env::temp_dir);
    runtime.join("weft/weft.sock")
}

/// Where a user's daemon keeps its socket when `XDG_RUNTIME_DIR` is not
/// set: `/tmp/weft-UID` (which the daemon makes private, or refuses; see
/// `crate::ownership`). None for root or when `XDG_RUNTIME_DIR` is set.
pub fn rootless_fallback_dir() -> Option<PathBuf> {
    if is_root() || env_dir("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    Some(std::env::temp_dir().join(format!("weft-{}", nix::unistd::getuid())))
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/weft");
    }
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local/state")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("weft-state-{}", nix::unistd::getuid()))
        })
        .join("weft")
}
