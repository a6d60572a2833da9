//! systemd's readiness protocol (`Type=notify`, sd_notify(3)), in the few
//! lines it takes: one datagram `READY=1` to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`)
//! once the API socket accepts connections, and `STOPPING=1` when a signal
//! stops the daemon. Without `$NOTIFY_SOCKET` (not under systemd) nothing
//! is sent. No crate: the protocol is a datagram of text.
//!
//! Socket activation (optional, `contrib/systemd/weft.socket`): when
//! systemd passes the API socket ([`activated_listener`]), the daemon
//! serves on it instead of binding its own, and leaves the file to systemd
//! when it stops.

use std::os::unix::net::UnixDatagram;

/// Tell systemd `state` (`READY=1`, `STOPPING=1`); a failure is logged,
/// never fatal (the daemon works without systemd).
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &target)
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, socket = ?target, state, "cannot notify systemd");
    }
}

/// The first fd systemd passes (sd_listen_fds(3)).
const LISTEN_FDS_START: std::os::fd::RawFd = 3;

/// Socket activation (`weft.socket`, or `systemd-socket-activate`): the
/// API socket systemd bound and passed as fd 3, when `$LISTEN_PID` is this
/// process and `$LISTEN_FDS` is 1. The variables are removed so that the
/// attach helpers the daemon starts do not take them for theirs. None when
/// not activated.
///
/// # Errors
///
/// An activation that passes something else than one listening Unix
/// stream socket.
pub fn activated_listener() -> anyhow::Result<Option<std::os::unix::net::UnixListener>> {
    use anyhow::{bail, Context};
    use std::os::fd::FromRawFd;
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok();
    // SAFETY: single-threaded yet (the runtime has not started when the
    // daemon calls this, see daemon::run), so no other thread reads the
    // environment meanwhile.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !for_us {
        return Ok(None);
    }
    if count.as_deref() != Some("1") {
        bail!("socket activation passed {count:?} sockets: give weft exactly one, its API socket (ListenStream=/run/weft/weft.sock)");
    }
    let fd = LISTEN_FDS_START;
    let listening = nix::sys::socket::getsockopt(
        // SAFETY: fd 3 was passed to us by systemd for this process
        // (LISTEN_PID); it stays open for the borrow.
        &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::sys::socket::sockopt::AcceptConn,
    )
    .context("socket activation: fd 3 is not a socket")?;
    if !listening {
        bail!(
            "socket activation: fd 3 is not a listening socket (use ListenStream=, not Accept=yes)"
        );
    }
    // SAFETY: as above; from here the listener owns fd 3.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .ok()
        .filter(|a| a.as_pathname().is_some())
        .context("socket activation: fd 3 is not a Unix socket with a path")?;
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("socket activation: setting close-on-exec")?;
    listener
        .set_nonblocking(true)
        .context("socket activation: setting non-blocking")?;
    Ok(Some(listener))
}
