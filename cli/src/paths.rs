//! Default locations of the daemon's socket and state (DESIGN.md): root
//! uses `/run/weft/weft.sock` and `/var/lib/weft`; other users
//! `$XDG_RUNTIME_DIR/weft/weft.sock` and `$XDG_STATE_HOME/weft` (or
//! `~/.local/state/weft`).

use std::path::PathBuf;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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
        .unwrap_or_else(|| std::env::temp_dir().join(format!("weft-{}", nix::unistd::getuid())));
    runtime.join("weft/weft.sock")
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
