//! The cleanup guard: every namespace, process and file the harness makes
//! is registered in a [`Lab`], and `Lab`'s `Drop` removes them, on success,
//! on error and on panic (a stop signal becomes an error, see `process`).
//!
//! Safety rules it enforces:
//! - Namespaces are named `wb-*` (refused otherwise), and every `ip`
//!   command goes through [`Lab::ip`] (`ip -n NS ...`) or
//!   [`Lab::run_in`] (`ip netns exec NS ...`): nothing is added to the
//!   machine's own namespace.
//! - Every command runs under a deadline ([`process::run_bounded`]).
//! - One harness at a time (`flock` on [`LOCK_FILE`]); so it is safe to
//!   delete leftover `wb-*` namespaces of an aborted run at start, with the
//!   `/etc/netns/wb-*/resolv.conf` weft wrote for them and a vde_switch
//!   left running (found through its pid file).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{self, Captured, Interruptible};

/// The harness's lock, outside the work directory so wiping it is safe.
pub const LOCK_FILE: &str = "/run/weft-bench.lock";
/// Work directory: daemon state and sockets, command outputs, pid files.
/// Wiped at start and removed at the end.
pub const WORK_DIR: &str = "/run/weft-bench";
/// Where `ip netns` keeps named namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";
/// Where `ip netns exec` finds per-namespace /etc files (weft writes a
/// resolv.conf there for each sandbox it attaches).
const NETNS_ETC_DIR: &str = "/etc/netns";
/// The first line of the resolv.conf weft writes: only such files are
/// removed.
const WEFT_RESOLV_MARKER: &str = "# written by weft";
/// The prefix of every namespace the harness creates.
pub const NETNS_PREFIX: &str = "wb-";
/// The pid file of the vde_switch topology (a daemon: not our child).
pub const VDE_PID_FILE: &str = "vde/vde_switch.pid";

/// Deadline for one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a process gets after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A process the lab stops at cleanup.
#[derive(Debug)]
struct Tracked {
    label: String,
    pid: u32,
    pidfd: OwnedFd,
    /// `None` for a process that is not our child (daemonized vde_switch).
    child: Option<Child>,
    log_path: Option<PathBuf>,
}

/// The cleanup guard and command runner.
#[derive(Debug)]
pub struct Lab {
    work_dir: PathBuf,
    namespaces: Vec<String>,
    processes: Vec<Tracked>,
    output_counter: u64,
    cleaned: bool,
    _lock: File,
}

impl Lab {
    /// Take the lock, remove what an aborted run left, make the work
    /// directory.
    pub fn open() -> Result<Lab> {
        let lock = File::create(LOCK_FILE).with_context(|| format!("creating {LOCK_FILE}"))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another weft-bench holds {LOCK_FILE}: wait for it to finish");
        }
        let mut lab = Lab {
            work_dir: PathBuf::from(WORK_DIR),
            namespaces: Vec::new(),
            processes: Vec::new(),
            output_counter: 0,
            cleaned: false,
            _lock: lock,
        };
        lab.remove_leftovers()?;
        for sub in ["out", "logs", "vde"] {
            let dir = lab.work_dir.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(lab)
    }

    /// The work directory (daemon state, sockets).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    fn remove_leftovers(&mut self) -> Result<()> {
        kill_leftover_vde_switch(&self.work_dir.join(VDE_PID_FILE));
        let leftovers: Vec<String> = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(NETNS_PREFIX))
                .collect(),
            Err(_) => Vec::new(),
        };
        if !leftovers.is_empty() {
            eprintln!(
                "weft-bench: deleting {} leftover namespace(s) of an earlier run: {}",
                leftovers.len(),
                leftovers.join(" ")
            );
        }
        for name in &leftovers {
            self.delete_netns(name, Interruptible::Yes)?;
        }
        if let Ok(entries) = std::fs::read_dir(NETNS_ETC_DIR) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str() {
                    if name.starts_with(NETNS_PREFIX) {
                        remove_weft_resolv_conf(name);
                    }
                }
            }
        }
        if self.work_dir.exists() {
            std::fs::remove_dir_all(&self.work_dir)
                .with_context(|| format!("removing the old {}", self.work_dir.display()))?;
        }
        Ok(())
    }

    fn output_paths(&mut self, label: &str) -> (PathBuf, PathBuf) {
        self.output_counter += 1;
        let stem = format!("{:05}-{}", self.output_counter, sanitize(label));
        let dir = self.work_dir.join("out");
        (
            dir.join(format!("{stem}.out")),
            dir.join(format!("{stem}.err")),
        )
    }

    /// Run `argv` (in the harness's own namespace: only for commands that
    /// touch no network, such as the weft CLI talking to its socket) under
    /// a deadline.
    pub fn run(&mut self, argv: &[&str], limit: Duration) -> Result<Captured> {
        let label = argv.first().copied().unwrap_or("cmd");
        let (stdout, stderr) = self.output_paths(label);
        process::run_bounded(argv, limit, &stdout, &stderr, Interruptible::Yes)
    }

    /// Run `argv` inside namespace `netns` (`ip netns exec`) under a deadline.
    pub fn run_in(&mut self, netns: &str, argv: &[&str], limit: Duration) -> Result<Captured> {
        check_netns_name(netns)?;
        let mut full = vec!["ip", "netns", "exec", netns];
        full.extend_from_slice(argv);
        self.run(&full, limit)
    }

    /// `ip -n NETNS ARGS...`, which must succeed.
    pub fn ip(&mut self, netns: &str, args: &[&str]) -> Result<()> {
        check_netns_name(netns)?;
        let mut full = vec!["ip", "-n", netns];
        full.extend_from_slice(args);
        self.run(&full, IP_TIMEOUT)?.success()?;
        Ok(())
    }

    /// Create namespace `name` (deleting a stale one first) with lo up.
    pub fn add_netns(&mut self, name: &str) -> Result<()> {
        check_netns_name(name)?;
        if Path::new(NETNS_RUN_DIR).join(name).exists() {
            self.delete_netns(name, Interruptible::Yes)?;
        }
        self.run(&["ip", "netns", "add", name], IP_TIMEOUT)?
            .success()?;
        self.namespaces.push(name.to_owned());
        self.ip(name, &["link", "set", "lo", "up"])
    }

    fn delete_netns(&mut self, name: &str, interruptible: Interruptible) -> Result<()> {
        check_netns_name(name)?;
        let (stdout, stderr) = self.output_paths("ip-netns-del");
        process::run_bounded(
            &["ip", "netns", "del", name],
            IP_TIMEOUT,
            &stdout,
            &stderr,
            interruptible,
        )?
        .success()?;
        remove_weft_resolv_conf(name);
        Ok(())
    }

    /// Start `argv` in the background inside `netns` (`ip netns exec`
    /// execs, so the PID is the command's own); stopped at cleanup.
    pub fn spawn_in(&mut self, netns: &str, label: &str, argv: &[&str]) -> Result<u32> {
        check_netns_name(netns)?;
        let mut full = vec!["ip", "netns", "exec", netns];
        full.extend_from_slice(argv);
        self.spawn(label, &full)
    }

    /// Start `argv` as given in the background (the caller enters the
    /// namespace itself, e.g. `nsenter --net=/var/run/netns/wb-...`,
    /// which dockerd needs); stopped at cleanup.
    pub fn spawn(&mut self, label: &str, full: &[&str]) -> Result<u32> {
        self.output_counter += 1;
        let log = self.work_dir.join("logs").join(format!(
            "{:05}-{}.log",
            self.output_counter,
            sanitize(label)
        ));
        let spawned = process::spawn(full, &log, &log)?;
        let pid = spawned.child.id();
        self.processes.push(Tracked {
            label: label.to_owned(),
            pid,
            pidfd: spawned.pidfd,
            child: Some(spawned.child),
            log_path: Some(log),
        });
        Ok(pid)
    }

    /// Name the network namespace of process `pid` `name` (`ip netns
    /// attach`), so the harness's commands can run there; the name is
    /// removed at cleanup (the namespace stays its process's).
    pub fn attach_netns(&mut self, name: &str, pid: u32) -> Result<()> {
        check_netns_name(name)?;
        self.run(
            &["ip", "netns", "attach", name, &pid.to_string()],
            IP_TIMEOUT,
        )?
        .success()?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    /// Track a process that is not our child (a daemon that forked away).
    pub fn adopt(&mut self, label: &str, pid: u32) -> Result<()> {
        let pidfd =
            process::pidfd_open(pid).with_context(|| format!("pidfd_open({pid}) for {label}"))?;
        self.processes.push(Tracked {
            label: label.to_owned(),
            pid,
            pidfd,
            child: None,
            log_path: None,
        });
        Ok(())
    }

    /// Whether tracked process `pid` is still running.
    pub fn is_running(&self, pid: u32) -> bool {
        self.processes
            .iter()
            .find(|p| p.pid == pid)
            .is_some_and(|p| {
                !process::wait_pidfd(&p.pidfd, Duration::ZERO, Interruptible::No).unwrap_or(true)
            })
    }

    /// Note a failed measurement and go on: an interrupt (Ctrl-C) ends the
    /// run instead. The note is `what: error`, with the end of the log of
    /// each process in `processes` (what to call it, its pid) that has
    /// exited; it is printed and kept in `failures` for the report.
    ///
    /// # Errors
    ///
    /// The run was interrupted.
    pub fn record_failure(
        &self,
        what: &str,
        error: &anyhow::Error,
        processes: &[(&str, u32)],
        failures: &mut Vec<String>,
    ) -> Result<()> {
        process::check_interrupted()?;
        let mut text = format!("{what}: {error:#}");
        for (label, pid) in processes {
            if !self.is_running(*pid) {
                text.push_str(&format!(
                    " (the {label} {pid} has exited: {})",
                    self.log_tail(*pid)
                ));
            }
        }
        eprintln!("weft-bench: FAILED {text}");
        failures.push(text);
        Ok(())
    }

    /// The end of a tracked process's log, for error messages.
    pub fn log_tail(&self, pid: u32) -> String {
        self.processes
            .iter()
            .find(|p| p.pid == pid)
            .and_then(|p| p.log_path.as_ref())
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| process::tail(&String::from_utf8_lossy(&bytes), 800))
            .unwrap_or_default()
    }

    /// Wait up to `limit` for tracked process `pid` to exit by itself;
    /// stop it if it does not. Forgets it either way.
    pub fn wait_or_stop(&mut self, pid: u32, limit: Duration) -> Result<()> {
        let Some(index) = self.processes.iter().position(|p| p.pid == pid) else {
            return Ok(());
        };
        let exited = process::wait_pidfd(&self.processes[index].pidfd, limit, Interruptible::Yes);
        let mut tracked = self.processes.remove(index);
        if !matches!(exited, Ok(true)) {
            stop(&mut tracked);
        } else if let Some(child) = tracked.child.as_mut() {
            let _ = child.wait();
        }
        exited.map(|_| ())
    }

    /// Remove everything, in reverse order of creation. Idempotent; also
    /// run by `Drop`.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        while let Some(mut tracked) = self.processes.pop() {
            stop(&mut tracked);
        }
        kill_leftover_vde_switch(&self.work_dir.join(VDE_PID_FILE));
        while let Some(name) = self.namespaces.pop() {
            if let Err(error) = self.delete_netns(&name, Interruptible::No) {
                eprintln!("weft-bench: cleanup: deleting namespace {name}: {error:#}");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.work_dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "weft-bench: cleanup: removing {}: {error}",
                    self.work_dir.display()
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// SIGTERM, a grace period, SIGKILL; reap our children.
fn stop(tracked: &mut Tracked) {
    let _ = process::signal_pidfd(&tracked.pidfd, libc::SIGTERM);
    let exited =
        process::wait_pidfd(&tracked.pidfd, TERM_GRACE, Interruptible::No).unwrap_or(false);
    if !exited {
        eprintln!(
            "weft-bench: {} (pid {}) ignored SIGTERM for {} s: SIGKILL",
            tracked.label,
            tracked.pid,
            TERM_GRACE.as_secs()
        );
        let _ = process::signal_pidfd(&tracked.pidfd, libc::SIGKILL);
        let _ = process::wait_pidfd(&tracked.pidfd, TERM_GRACE, Interruptible::No);
    }
    if let Some(child) = tracked.child.as_mut() {
        let _ = child.wait();
    }
}

/// Refuse any namespace name the harness does not own.
fn check_netns_name(name: &str) -> Result<()> {
    if !name.starts_with(NETNS_PREFIX)
        || name.len() <= NETNS_PREFIX.len()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("refusing namespace name {name:?}: the harness only uses its own {NETNS_PREFIX}* namespaces");
    }
    Ok(())
}

/// Remove `/etc/netns/NAME/resolv.conf` if weft wrote it, then the
/// directory if it is empty.
fn remove_weft_resolv_conf(name: &str) {
    let dir = Path::new(NETNS_ETC_DIR).join(name);
    let file = dir.join("resolv.conf");
    if std::fs::read_to_string(&file).is_ok_and(|text| text.starts_with(WEFT_RESOLV_MARKER)) {
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir(&dir);
}

/// Kill a vde_switch an aborted run left (it daemonizes, so the
/// parent-death signal does not reach it), identified by its pid file and
/// its command name.
fn kill_leftover_vde_switch(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    else {
        return;
    };
    let Ok(pidfd) = process::pidfd_open(pid) else {
        return;
    };
    let is_vde = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "vde_switch");
    if is_vde {
        let mut tracked = Tracked {
            label: "leftover vde_switch".into(),
            pid,
            pidfd,
            child: None,
            log_path: None,
        };
        stop(&mut tracked);
    }
    let _ = std::fs::remove_file(pid_file);
}

/// A label safe in a file name.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wb_namespaces_are_accepted() {
        assert!(check_netns_name("wb-a").is_ok());
        assert!(check_netns_name("wb-s17").is_ok());
        assert!(check_netns_name("wb-").is_err());
        assert!(check_netns_name("a").is_err());
        assert!(check_netns_name("wb-a/../x").is_err());
        assert!(check_netns_name("wb a").is_err());
    }

    #[test]
    fn labels_become_file_names() {
        assert_eq!(sanitize("vde_switch -t"), "vde_switch_-t");
        assert_eq!(sanitize("a/b"), "a_b");
    }
}
