//! What a sandbox path must be: a network namespace, and not the daemon's
//! own.
//!
//! `network connect` takes a path (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
//! Anything else that exists there (a file, a directory, another kind of
//! namespace) would only fail deep inside the attach helper; and the
//! daemon's own namespace would get an `eth0` and a default route it must
//! never have. Both are refused up front, with what to give instead.
//!
//! The kind is asked of the kernel (`ioctl(NS_GET_NSTYPE)` on the opened
//! file, Linux 4.11+); "own" is the same namespace inode as
//! `/proc/self/ns/net`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `_IO(0xb7, 0x3)`: the type of the namespace an nsfs fd refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why a path cannot be a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotASandbox {
    /// Not a namespace file, or a namespace of another kind.
    NotANetworkNamespace,
    /// The daemon's own network namespace.
    DaemonsOwn,
}

/// Check that `path` is a network namespace other than the daemon's.
///
/// # Errors
///
/// [`NotASandbox`] saying which rule it breaks. A path that cannot be
/// opened at all is not a network namespace.
pub fn check(path: &Path) -> Result<(), NotASandbox> {
    let file = File::open(path).map_err(|_| NotASandbox::NotANetworkNamespace)?;
    // SAFETY: the fd is open for the duration of the call (borrowed from
    // `file`), and NS_GET_NSTYPE takes no argument; on a file that is not
    // a namespace the kernel answers ENOTTY.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(NotASandbox::NotANetworkNamespace);
    }
    let own = std::fs::metadata("/proc/self/ns/net");
    let theirs = file.metadata();
    if let (Ok(own), Ok(theirs)) = (own, theirs) {
        if own.dev() == theirs.dev() && own.ino() == theirs.ino() {
            return Err(NotASandbox::DaemonsOwn);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_other_namespaces_are_not_network_namespaces() {
        for path in [
            "/etc/passwd",
            "/tmp",
            "/dev/null",
            "/proc/self/ns/mnt",
            "/nonexistent",
        ] {
            assert_eq!(
                check(Path::new(path)),
                Err(NotASandbox::NotANetworkNamespace),
                "{path}"
            );
        }
    }

    #[test]
    fn the_daemons_own_namespace_is_refused() {
        assert_eq!(
            check(Path::new("/proc/self/ns/net")),
            Err(NotASandbox::DaemonsOwn)
        );
    }
}
