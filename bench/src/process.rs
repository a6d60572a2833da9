//! Bounded control of external processes: every command the harness runs
//! (ip, iperf3, ping, weft, vde_switch) goes through here.
//!
//! How, and why:
//! - Each process is watched through a pidfd (`pidfd_open`): `poll` wakes
//!   the moment it exits, so a wall-clock figure such as the attach latency
//!   of `weft network connect` is not rounded up to a polling step, a
//!   deadline can always be enforced (SIGKILL once it passes), and a signal
//!   sent through the pidfd can never hit a recycled PID.
//! - stdout and stderr go to files in the harness's work directory, never
//!   to pipes: a process that daemonizes (vde_switch -d) keeps its
//!   inherited descriptors, and a pipe would then never reach end of file.
//! - Every child gets `PR_SET_PDEATHSIG`: if the harness is killed outright
//!   (SIGKILL, so no destructor runs), its daemons and load generators die
//!   with it instead of lingering.
//! - SIGINT, SIGTERM and SIGHUP only raise a flag; every wait checks it and
//!   turns it into an error, so the cleanup guard's `Drop` runs on Ctrl-C.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Raised by the signal handler; read by every wait.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT, SIGTERM and SIGHUP into the interrupt flag.
pub fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler: extern "C" fn(libc::c_int) = note_signal;
        // SAFETY: `action` is zero-initialised (a valid sigaction) and then
        // filled in; the handler only stores to an atomic, which is
        // async-signal-safe. No SA_RESTART: blocking calls return EINTR and
        // the loops around them re-check the flag.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("installing a handler for signal {signal}"));
        }
    }
    Ok(())
}

/// An error if a stop signal arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal: cleaning up");
    }
    Ok(())
}

/// Sleep `duration` in short steps, returning early with an error on a
/// stop signal.
pub fn pause(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// A pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a PID and flags, touches no memory of ours,
    // and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send `signal` to the process behind `pidfd`; a process that is already
/// gone is not an error.
pub fn signal_pidfd(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal reads no memory when `info` is null; the
    // descriptor is valid for the duration of the call (borrowed).
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(error);
    }
    Ok(())
}

/// Whether a stop signal may cut a wait short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruptible {
    /// Measurements and setup: a stop signal ends the wait with an error.
    Yes,
    /// Cleanup: always wait the full bound.
    No,
}

/// Wait until the process behind `pidfd` has exited or `limit` passed;
/// `true` if it exited.
pub fn wait_pidfd(pidfd: &OwnedFd, limit: Duration, interruptible: Interruptible) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if interruptible == Interruptible::Yes {
            check_interrupted()?;
        }
        let now = Instant::now();
        let slice = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        let timeout_ms = i32::try_from(slice.as_micros().div_ceil(1000)).unwrap_or(100);
        let mut poll_fd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll_fd` is a valid pollfd that outlives the call; nfds is 1.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
        if ready > 0 {
            return Ok(true);
        }
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error).context("poll on a pidfd");
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Captured {
    /// The command line, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Wall clock from just before the spawn to its exit.
    pub elapsed: Duration,
}

impl Captured {
    /// `self` if it exited 0, else an error with the end of its stderr.
    pub fn success(self) -> Result<Captured> {
        if self.status.success() {
            return Ok(self);
        }
        bail!(
            "`{}` failed ({}): {}",
            self.command,
            self.status,
            tail(&format!("{}{}", self.stderr, self.stdout), 600)
        );
    }
}

/// The last `max` bytes of `text` (on a char boundary), trimmed.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = if start > 0 { "…" } else { "" };
    format!("{cut}{}", &text[start..])
}

/// Shell-like rendering of an argument vector, for messages and reports.
pub fn render_command(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                (*a).to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A spawned process with its pidfd.
#[derive(Debug)]
pub struct Spawned {
    /// The child (to reap it).
    pub child: Child,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// Its command line.
    pub command: String,
}

/// Spawn `argv` with stdin from /dev/null, stdout and stderr into the two
/// files, and the parent-death signal set.
pub fn spawn(argv: &[&str], stdout_path: &Path, stderr_path: &Path) -> Result<Spawned> {
    let (program, args) = argv.split_first().context("empty command")?;
    let command = render_command(argv);
    let stdout =
        File::create(stdout_path).with_context(|| format!("creating {}", stdout_path.display()))?;
    let stderr =
        File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut builder = Command::new(program);
    builder
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl, which is async-signal-safe.
    unsafe {
        builder.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = builder
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let pidfd = match pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error).with_context(|| format!("pidfd_open for `{command}`"));
        }
    };
    Ok(Spawned {
        child,
        pidfd,
        command,
    })
}

/// Run `argv` to completion within `limit`; SIGKILL and an error past it
/// (or on a stop signal when `interruptible`).
pub fn run_bounded(
    argv: &[&str],
    limit: Duration,
    stdout_path: &Path,
    stderr_path: &Path,
    interruptible: Interruptible,
) -> Result<Captured> {
    let started = Instant::now();
    let mut spawned = spawn(argv, stdout_path, stderr_path)?;
    let finished = wait_pidfd(&spawned.pidfd, limit, interruptible);
    let elapsed = started.elapsed();
    match finished {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            let _ = signal_pidfd(&spawned.pidfd, libc::SIGKILL);
            let _ = spawned.child.wait();
            finished?;
            bail!(
                "`{}` did not finish within {} s: killed",
                spawned.command,
                limit.as_secs_f64()
            );
        }
    }
    let status = spawned
        .child
        .wait()
        .with_context(|| format!("reaping `{}`", spawned.command))?;
    let read = |path: &Path| {
        std::fs::read(path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .with_context(|| format!("reading {}", path.display()))
    };
    Ok(Captured {
        command: spawned.command,
        status,
        stdout: read(stdout_path)?,
        stderr: read(stderr_path)?,
        elapsed,
    })
}

/// The Debian package that provides each external tool the harness needs.
pub const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("taskset", "util-linux"),
    ("vde_switch", "vde2"),
    ("ss", "iproute2"),
    ("pasta", "passt"),
    ("slirp4netns", "slirp4netns"),
];

/// Fail, naming the Debian packages, if one of `tools` is not on PATH.
/// The harness installs nothing itself.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = tools
        .iter()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))))
        .map(|tool| {
            let package = TOOL_PACKAGES
                .iter()
                .find(|(name, _)| name == tool)
                .map_or("?", |(_, package)| package);
            format!("{tool} (Debian package {package})")
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; install them first, e.g. `apt-get install {}` (weft-bench installs nothing)",
            missing.join(", "),
            tools
                .iter()
                .filter_map(|tool| TOOL_PACKAGES.iter().find(|(name, _)| name == tool))
                .map(|(_, package)| *package)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_commands_quoted_where_needed() {
        assert_eq!(
            render_command(&["ip", "-n", "wb-a", "addr", "add", "10.0.0.1/24"]),
            "ip -n wb-a addr add 10.0.0.1/24"
        );
        assert_eq!(
            render_command(&["echo", "a b", "it's"]),
            r"echo 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail("  abcdef \n", 3), "…def");
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("ééé", 3), "…é");
    }
}
