//! systemd's readiness protocol (`Type=notify`, sd_notify(3)), in the few
//! lines it takes: one datagram `READY=1` to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`)
//! once the API socket accepts connections, and `STOPPING=1` when a signal
//! stops the daemon. Without `$NOTIFY_SOCKET` (not under systemd) nothing
//! is sent. No crate: the protocol is a datagram of text.

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
