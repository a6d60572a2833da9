//! What the daemon owns on disk, made to mean what it says whatever the
//! umask: its state directory (locked, so one daemon owns it), its API
//! socket and the socket's directory.
//!
//! # Theory of operation
//!
//! Before anything is restored, the daemon takes an exclusive `flock` on
//! `STATE_DIR/daemon.lock` ([`lock_state_dir`]) and holds it for its life:
//! a second daemon on the same state directory exits at once with one line
//! and touches nothing (two daemons writing one state file would lose one's
//! networks). It also checks its socket path first ([`check_socket_path`]):
//! a live daemon there, or a path that is not a socket, stops it before the
//! restore, not after.
//!
//! Modes are set, not left to the umask (a service manager may start the
//! daemon with umask 000): the socket's directory is made 0750 (0700 for a
//! rootless daemon), the socket 0660, group `--group` when given (like
//! dockerd's `-G`: members may use the API; without it only the daemon's
//! own group), the lock file 0600. A rootless daemon without
//! `XDG_RUNTIME_DIR` falls back to `/tmp/weft-UID`, which it makes 0700 and
//! refuses, with what to do, when someone else made it first or opened it
//! to others: whoever owns that directory could swap the socket under the
//! user's client.
//!
//! `--socket` never removes anything but a stale socket: an ordinary file
//! or a directory there is an error.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Group};

/// The lock file in the state directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// The socket's mode: owner and group.
pub const SOCKET_MODE: u32 = 0o660;

/// The held lock on a state directory; released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct StateDirLock {
    _lock: Flock<File>,
}

/// Lock `dir` (made 0700 if missing) for this daemon.
///
/// # Errors
///
/// Another daemon holds it, or the directory or lock file cannot be made.
pub fn lock_state_dir(dir: &Path) -> Result<StateDirLock> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            drop(file);
            bail!(
                "another weft daemon{} uses the state directory {}: stop it, or give this one another --state-dir",
                pid_note(&pid),
                dir.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    // Who holds it, for the message a second daemon prints.
    let _ = lock.set_len(0);
    let _ = write!(lock, "{}", std::process::id());
    Ok(StateDirLock { _lock: lock })
}

fn pid_note(pid: &str) -> String {
    let pid = pid.trim();
    if pid.is_empty() {
        String::new()
    } else {
        format!(" (pid {pid})")
    }
}

/// Check that the daemon may take `socket`: nothing there, or a stale
/// socket (removed later by the bind); not a live daemon's socket, not an
/// ordinary file or directory. The rootless fallback directory is checked
/// (or made) here too.
///
/// # Errors
///
/// What is in the way, and what to do.
pub async fn check_socket_path(socket: &Path) -> Result<()> {
    if let Some(fallback) = crate::paths::rootless_fallback_dir() {
        if socket.starts_with(&fallback) {
            own_private_dir(&fallback)?;
        }
    }
    let Ok(meta) = fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: weft only replaces a stale socket; remove it or give another --socket",
            socket.display()
        );
    }
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        bail!(
            "another weft daemon is listening on {}: stop it, or give this one another --socket",
            socket.display()
        );
    }
    Ok(())
}

/// The group `--group NAME` names.
///
/// # Errors
///
/// No such group.
pub fn socket_group(name: &str) -> Result<Gid> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => {
            bail!("--group {name}: no such group (getent group {name}); create it or give another")
        }
        Err(e) => Err(e).with_context(|| format!("looking up group {name}")),
    }
}

/// Make the socket's directory (0750, or 0700 for a rootless daemon) if
/// missing, with `group`.
///
/// # Errors
///
/// The directory cannot be made.
pub fn make_socket_dir(socket: &Path, group: Option<Gid>) -> Result<()> {
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let mode = if crate::paths::is_host_root() {
        0o750
    } else {
        0o700
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // The builder's mode passes through the umask; set it exactly.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(dir, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", dir.display()))?;
    }
    Ok(())
}

/// Give the bound socket its mode (0660) and group.
///
/// # Errors
///
/// `chmod` or `chown` failed.
pub fn set_socket_mode(socket: &Path, group: Option<Gid>) -> Result<()> {
    fs::set_permissions(socket, fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(socket, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", socket.display()))?;
    }
    Ok(())
}

/// A directory only this user may use: made 0700 if missing; refused if
/// another user owns it or others may enter or write it.
fn own_private_dir(dir: &Path) -> Result<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    match fs::symlink_metadata(dir) {
        Err(_) => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        Ok(meta) => {
            if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
                bail!(
                    "{} is not this user's private directory (owner uid {}, mode {:o}): another user may have made it; remove it, or set XDG_RUNTIME_DIR",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                );
            }
        }
    }
    Ok(dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-ownership-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_on_a_state_dir_is_refused_until_the_first_is_gone() {
        let dir = temp_dir("lock");
        let first = lock_state_dir(&dir).unwrap();
        let second = lock_state_dir(&dir).unwrap_err().to_string();
        assert!(second.contains("another weft daemon"), "{second}");
        assert!(
            second.contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        let mode = fs::metadata(dir.join(LOCK_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(first);
        assert!(lock_state_dir(&dir).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_ordinary_file_is_never_taken_for_a_socket() {
        let dir = temp_dir("file");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weft.sock");
        fs::write(&path, b"precious").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(check_socket_path(&path)).unwrap_err();
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_private_dir_must_be_this_users_and_closed_to_others() {
        let dir = temp_dir("private");
        own_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let error = own_private_dir(&dir).unwrap_err().to_string();
        assert!(
            error.contains("not this user's private directory"),
            "{error}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_socket_gets_its_mode_whatever_the_umask() {
        let dir = temp_dir("socket");
        let socket = dir.join("run/weft.sock");
        make_socket_dir(&socket, None).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        set_socket_mode(&socket, None).unwrap();
        assert_eq!(fs::metadata(&socket).unwrap().mode() & 0o777, SOCKET_MODE);
        drop(listener);
        let _ = fs::remove_dir_all(&dir);
    }
}
