//! Attaching a sandbox: the protocol between the daemon and its attach
//! helper, and the daemon's side of it.
//!
//! # Theory of operation
//!
//! `setns` into another user namespace is refused to a multithreaded
//! process, and a netlink socket belongs to the namespace of the thread
//! that opens it. So the daemon never enters a sandbox: for every attach it
//! starts a short-lived helper (the same binary, hidden subcommand
//! [`HELPER_SUBCOMMAND`]) with an [`AttachRequest`] as its argument and one
//! end of a `SOCK_SEQPACKET` socket pair as fd [`HELPER_FD`]. The helper
//! enters the sandbox's network namespace, creates (or re-opens) the TAP,
//! configures it over netlink, and sends back one [`AttachReply`] with the
//! TAP's fd as `SCM_RIGHTS`. An fd passed this way keeps its flags
//! (`IFF_VNET_HDR`, non-blocking).
//!
//! The helper is bounded in time ([`HELPER_TIMEOUT`]): if it neither
//! answers nor exits, it is killed and the attach fails with what it
//! printed on stderr.

use std::io::{IoSlice, IoSliceMut, Read};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::IpNet;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use weft_vswitch::MacAddr;

/// The hidden subcommand that runs the helper.
pub const HELPER_SUBCOMMAND: &str = "__attach";

/// The fd number the helper finds its end of the socket pair on.
pub const HELPER_FD: RawFd = 3;

/// How long a helper may take. Creating and configuring a TAP takes a few
/// milliseconds; seconds mean something is stuck.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply message.
const REPLY_MAX: usize = 4096;

/// What the helper is to do in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The sandbox's network-namespace path.
    pub sandbox: PathBuf,
    /// What to make there.
    pub action: AttachAction,
}

/// The helper's task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachAction {
    /// Bring up loopback only (the `null` driver).
    Loopback,
    /// Create or re-open a TAP and configure it; send its fd back.
    Tap(TapConfig),
    /// Remove the interface with this MAC, if there is one: what a connect
    /// cut short by a crash left (see `crate::store`'s attach journal).
    /// Answers `Attached` with the name removed (empty: none found).
    Remove {
        /// The endpoint's MAC, set before the TAP was made persistent.
        mac: MacAddr,
    },
    /// A TAP for Docker (the Docker plugin's `Join`): made in the
    /// daemon's own namespace with its MAC and MTU, down and without
    /// addresses, for Docker to move into the container and configure;
    /// or, on a re-open after a restart, found in the sandbox by its MAC
    /// (Docker renamed it). The fd goes back as for `Tap`.
    DockerTap(DockerTapConfig),
}

/// The TAP of a Docker endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerTapConfig {
    /// The name to create it with (Docker's `SrcName`).
    pub src_name: String,
    /// The interface's MAC (also how a re-open finds it).
    pub mac: MacAddr,
    /// The interface's MTU.
    pub mtu: u32,
    /// Re-open: find the TAP with `mac` in the sandbox instead of
    /// creating `src_name`.
    pub reopen: bool,
}

/// The TAP to make inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapConfig {
    /// Interface name, for a re-open; None picks the first free `ethN`.
    pub ifname: Option<String>,
    /// The interface's MAC.
    pub mac: MacAddr,
    /// The interface's MTU.
    pub mtu: u32,
    /// Addresses with prefix length.
    pub addresses: Vec<IpNet>,
    /// Default routes via these gateways (one per family; an existing
    /// default route is left alone).
    pub gateways: Vec<IpAddr>,
    /// The name for a new interface (CNI's `CNI_IFNAME`) when `ifname` is
    /// None: an interface of that name in the sandbox already is an error,
    /// never re-opened. None with `ifname` None: the first free `ethN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachReply {
    /// Done; the TAP's fd rides along (none for `Loopback`).
    Attached {
        /// The interface's name inside the sandbox.
        ifname: String,
    },
    /// Failed, with a message for the user.
    Failed {
        /// What went wrong, with context.
        error: String,
    },
}

/// Why an attach failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The helper could not be started.
    #[error("starting the attach helper {exe}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket pair could not be made or read.
    #[error("talking to the attach helper")]
    Channel(#[source] nix::Error),
    /// The helper did not answer in time and was killed.
    #[error("the attach helper for {sandbox} did not answer within {HELPER_TIMEOUT:?}")]
    Timeout {
        /// The sandbox.
        sandbox: PathBuf,
    },
    /// The helper exited without an answer.
    #[error("the attach helper for {sandbox} exited without an answer: {stderr}")]
    NoAnswer {
        /// The sandbox.
        sandbox: PathBuf,
        /// What it printed.
        stderr: String,
    },
    /// The helper answered with an error.
    #[error("attaching {sandbox}: {message}")]
    Failed {
        /// The sandbox.
        sandbox: PathBuf,
        /// The helper's message.
        message: String,
    },
    /// The helper's answer did not parse, or lacked the TAP fd.
    #[error("the attach helper for {sandbox} sent a malformed answer")]
    Protocol {
        /// The sandbox.
        sandbox: PathBuf,
    },
}

/// Run the helper `exe` for `request`; returns the interface name and, for
/// a TAP, its fd. Blocks up to [`HELPER_TIMEOUT`]: call it off the async
/// runtime.
///
/// # Errors
///
/// [`AttachError`] describing which step failed.
pub fn run_helper(
    exe: &Path,
    request: &AttachRequest,
) -> Result<(String, Option<OwnedFd>), AttachError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(AttachError::Channel)?;
    let json = serde_json::to_string(request).map_err(|_| AttachError::Protocol {
        sandbox: request.sandbox.clone(),
    })?;
    let theirs_raw = theirs.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .arg(HELPER_SUBCOMMAND)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only dup2, an async-signal-safe call,
    // runs; it installs the helper's end of the pair as HELPER_FD and (as
    // dup2 does) without close-on-exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| AttachError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    drop(theirs);
    let sandbox = request.sandbox.clone();
    let answer = recv_with_timeout(ours.as_fd(), HELPER_TIMEOUT);
    let answer = match answer {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(AttachError::Timeout { sandbox });
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(AttachError::Channel(e));
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        // The helper has answered, so it is about to exit; its stderr is
        // short and closes with it.
        let _ = pipe.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    match answer {
        (None, _) => Err(AttachError::NoAnswer {
            sandbox,
            stderr: stderr.trim().to_owned(),
        }),
        (Some(AttachReply::Failed { error }), _) => Err(AttachError::Failed {
            sandbox,
            message: error,
        }),
        (Some(AttachReply::Attached { ifname }), fd) => Ok((ifname, fd)),
    }
}

/// Wait for one message: Ok(None) on timeout, Ok(Some((None, _))) when the
/// peer closed without a message.
#[allow(clippy::type_complexity)]
fn recv_with_timeout(
    sock: BorrowedFd<'_>,
    timeout: Duration,
) -> Result<Option<(Option<AttachReply>, Option<OwnedFd>)>, nix::Error> {
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let (reply, fd) = recv_reply(sock)?;
    Ok(Some((reply, fd)))
}

/// Receive one reply and the fd riding with it. `(None, _)` when the peer
/// closed without sending.
///
/// # Errors
///
/// The `recvmsg` error.
pub fn recv_reply(
    sock: BorrowedFd<'_>,
) -> Result<(Option<AttachReply>, Option<OwnedFd>), nix::Error> {
    let mut buf = [0u8; REPLY_MAX];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed this fd in our table for
                // us; nothing else owns it. Extra fds are closed on drop.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    let len = msg.bytes;
    if len == 0 {
        return Ok((None, fd));
    }
    let reply = serde_json::from_slice(&buf[..len]).ok();
    Ok((reply, fd))
}

/// Send one reply, with an fd if given (the helper's side).
///
/// # Errors
///
/// The `sendmsg` error.
pub fn send_reply(
    sock: BorrowedFd<'_>,
    reply: &AttachReply,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), nix::Error> {
    let bytes = serde_json::to_vec(reply).map_err(|_| nix::Error::EINVAL)?;
    let iov = [IoSlice::new(&bytes)];
    let raw = fd.map(|fd| [fd.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| vec![ControlMessage::ScmRights(r)])
        .unwrap_or_default();
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_and_fd_cross_a_socket_pair() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let reply = AttachReply::Attached {
            ifname: "eth0".into(),
        };
        send_reply(a.as_fd(), &reply, Some(file.as_fd())).unwrap();
        let (got, fd) = recv_reply(b.as_fd()).unwrap();
        assert_eq!(got, Some(reply));
        assert!(fd.is_some());
        drop(a);
        let (got, fd) = recv_reply(b.as_fd()).unwrap();
        assert_eq!(got, None);
        assert!(fd.is_none());
    }

    #[test]
    fn request_round_trips_as_json() {
        let request = AttachRequest {
            sandbox: "/var/run/netns/a".into(),
            action: AttachAction::Tap(TapConfig {
                ifname: None,
                mac: "02:42:0a:00:00:02".parse().unwrap(),
                mtu: 1500,
                addresses: vec!["10.0.0.2/24".parse().unwrap()],
                gateways: vec!["10.0.0.1".parse().unwrap()],
                new_name: None,
            }),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<AttachRequest>(&json).unwrap(),
            request
        );
    }
}
