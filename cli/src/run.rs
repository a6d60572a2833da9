//! `weft run`: run one command in a throwaway sandbox attached to weft
//! networks, then remove the sandbox and pass on the command's exit code.
//!
//! # Theory of operation
//!
//! `weft run` starts `weft __sandbox -- CMD...` with one end of a socket
//! pair as fd [`SANDBOX_FD`]. That child unshares a new network namespace,
//! says "ready", and waits. Meanwhile `weft run` connects
//! `/proc/CHILD/ns/net` to each `--network` through the daemon (which
//! makes `eth0`, `eth1`, ... in it) and then says "go"; the child execs the
//! command, which finds its interfaces configured. When the command exits,
//! `weft run` disconnects every network (the TAPs, and with them the
//! namespace, go away) and exits with the command's code (128+N for a
//! signal N, 125 when weft itself failed, like `docker run`).
//!
//! Rootless: the child first joins a user namespace ([`UserNamespace`]):
//! the daemon's when the daemon runs in one of its own, else a new one in
//! which this user is root (the daemon's attach helper enters it as its
//! owner).
//!
//! The child also gets a mount namespace of its own (mounts private), in
//! which a resolv.conf naming the first network's gateway (the embedded
//! DNS) is bind-mounted over `/etc/resolv.conf`; the host's file is not
//! touched.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use hyper::Method;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use serde_json::Value;
use std::os::unix::ffi::OsStringExt;
use weft_cnm::api::types::{ConnectRequest, DisconnectRequest};
use weft_cnm::model::{Endpoint, PortMapping};

use crate::client::Client;
use crate::network::{network_path, port_lines};

/// The hidden subcommand of the sandbox child.
pub const SANDBOX_SUBCOMMAND: &str = "__sandbox";

/// The fd the sandbox child talks to `weft run` on.
const SANDBOX_FD: i32 = 3;

/// Exit code when weft, not the command, failed (as `docker run`).
pub const EXIT_WEFT_FAILED: i32 = 125;

/// Where the command looks for its resolver.
const RESOLV_CONF: &str = "/etc/resolv.conf";

const READY: u8 = b'r';
const GO: u8 = b'g';

/// `weft run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Network to attach to (repeatable) [default: bridge].
    #[arg(long)]
    pub network: Vec<String>,
    /// DNS name of the sandbox's endpoints.
    #[arg(long)]
    pub name: Option<String>,
    /// Static address on the first network.
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// Publish a port on the first network: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]
    /// (repeatable; host port 0 lets the kernel pick one).
    #[arg(long = "publish", short = 'p', value_name = "SPEC")]
    pub publish: Vec<PortMapping>,
    /// The command and its arguments (`--` before it is optional, as with
    /// `docker run`: everything from the first word that is not an option
    /// of `weft run` is the command's).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = false,
        required = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// Run `weft run`; returns the exit code.
pub async fn run(client: &Client, args: RunArgs) -> i32 {
    match run_inner(client, args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            EXIT_WEFT_FAILED
        }
    }
}

async fn run_inner(client: &Client, args: RunArgs) -> Result<i32> {
    let networks = if args.network.is_empty() {
        vec![weft_cnm::controller::DEFAULT_NETWORK.to_owned()]
    } else {
        args.network.clone()
    };
    let (mut ours, theirs) = UnixStream::pair().context("making the sandbox channel")?;
    let theirs_raw = theirs.as_raw_fd();
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let userns = user_namespace_plan(client).await;
    let mut command = Command::new(exe);
    command.arg(SANDBOX_SUBCOMMAND);
    match &userns {
        UserNamespace::Enter(path) => {
            command.arg("--userns-enter").arg(path);
        }
        UserNamespace::New => {
            command.arg("--userns-new");
        }
        UserNamespace::Keep => {}
    }
    command.arg("--").args(&args.command);
    // SAFETY: only dup2, async-signal-safe, runs between fork and exec; it
    // installs the child's end as SANDBOX_FD without close-on-exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_raw, SANDBOX_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the sandbox")?;
    drop(theirs);
    let mut byte = [0u8; 1];
    if ours.read_exact(&mut byte).is_err() || byte[0] != READY {
        let status = child.wait().context("waiting for the sandbox")?;
        bail!("the sandbox could not be made (exit status {status})");
    }
    let sandbox = format!("/proc/{}/ns/net", child.id());
    // `weft ps` finds the sandboxes of `weft run` by these labels.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let labels: std::collections::BTreeMap<String, String> = [
        (crate::ps::LABEL_PID, child.id().to_string()),
        (crate::ps::LABEL_COMMAND, args.command.join(" ")),
        (crate::ps::LABEL_STARTED, started.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut connected = Vec::new();
    let mut failure = None;
    for (i, network) in networks.iter().enumerate() {
        let request = ConnectRequest {
            sandbox: sandbox.clone(),
            kind: weft_cnm::model::EndpointKind::Tap,
            name: args.name.clone(),
            ips: if i == 0 { args.ip.clone() } else { Vec::new() },
            aliases: Vec::new(),
            ports: if i == 0 {
                args.publish.clone()
            } else {
                Vec::new()
            },
            labels: labels.clone(),
            ..ConnectRequest::default()
        };
        match client
            .call::<_, Value>(
                Method::POST,
                &network_path(network, "/connect"),
                Some(&request),
            )
            .await
        {
            Ok(endpoint) => {
                // Port 0 or `-p 80`: say which host port the kernel gave.
                if let Ok(endpoint) = serde_json::from_value::<Endpoint>(endpoint) {
                    for line in port_lines(&endpoint) {
                        eprintln!("weft: published {line}");
                    }
                }
                connected.push(network.clone());
            }
            Err(e) => {
                failure = Some(e.context(format!("connecting to network {network}")));
                break;
            }
        }
    }
    let resolv_conf = if failure.is_none() {
        match write_resolv_conf(client, &networks[0]).await {
            Ok(path) => path,
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    } else {
        None
    };
    let status = if failure.is_none() {
        let mut go = vec![GO];
        if let Some(path) = &resolv_conf {
            go.extend_from_slice(path.as_os_str().as_encoded_bytes());
        }
        ours.write_all(&go).context("starting the command")?;
        drop(ours);
        wait_child(child).await?
    } else {
        drop(ours);
        let _ = child.kill();
        wait_child(child).await?
    };
    for network in &connected {
        let request = DisconnectRequest {
            sandbox: sandbox.clone(),
        };
        if let Err(e) = client
            .call::<_, ()>(
                Method::POST,
                &network_path(network, "/disconnect"),
                Some(&request),
            )
            .await
        {
            eprintln!("weft: disconnecting from {network}: {e:#}");
        }
    }
    if let Some(path) = resolv_conf {
        let _ = std::fs::remove_file(path);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_WEFT_FAILED))
}

/// Which user namespace the sandbox lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNamespace {
    /// Ours (host root: no user namespace needed).
    Keep,
    /// The daemon's, when it runs in one of its own (`unshare -Ur`): the
    /// sandbox is then owned by the namespace where the daemon has
    /// `CAP_NET_ADMIN`.
    Enter(std::path::PathBuf),
    /// A new one mapping this user to root (rootless, daemon beside us):
    /// the daemon's attach helper enters it, as its owner.
    New,
}

/// Choose the sandbox's user namespace (see [`UserNamespace`]).
async fn user_namespace_plan(client: &Client) -> UserNamespace {
    let daemon_pid = client
        .call::<(), Value>(Method::GET, "/v1/version", None)
        .await
        .ok()
        .and_then(|v| v["pid"].as_u64());
    if let Some(pid) = daemon_pid {
        let theirs = std::path::PathBuf::from(format!("/proc/{pid}/ns/user"));
        if let (Ok(a), Ok(b)) = (
            std::fs::metadata(&theirs),
            std::fs::metadata("/proc/self/ns/user"),
        ) {
            use std::os::unix::fs::MetadataExt;
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return UserNamespace::Enter(theirs);
            }
        }
    }
    if crate::paths::is_host_root() {
        UserNamespace::Keep
    } else {
        UserNamespace::New
    }
}

/// Enter or make the sandbox's user namespace (single-threaded: setns into
/// a user namespace is refused to threaded processes).
fn join_user_namespace(userns: &UserNamespace) -> Result<()> {
    match userns {
        UserNamespace::Keep => Ok(()),
        UserNamespace::Enter(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(std::os::fd::AsFd::as_fd(&file), CloneFlags::CLONE_NEWUSER)
                .with_context(|| format!("entering the daemon's user namespace {}", path.display()))
        }
        UserNamespace::New => {
            let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER).context(
                "making a user namespace: user namespaces are disabled on this host \
                 (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)",
            )?;
            std::fs::write("/proc/self/setgroups", "deny")
                .context("writing /proc/self/setgroups")?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
                .context("writing /proc/self/uid_map")?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
                .context("writing /proc/self/gid_map")?;
            Ok(())
        }
    }
}

/// Write the sandbox's resolv.conf (the network's gateways: the embedded
/// DNS) to a temporary file the child bind-mounts over /etc/resolv.conf.
/// None when the network has no gateway (null and host drivers).
async fn write_resolv_conf(client: &Client, network: &str) -> Result<Option<std::path::PathBuf>> {
    let details: Value = client
        .call(Method::GET, &network_path(network, ""), None::<&()>)
        .await
        .with_context(|| format!("inspecting network {network}"))?;
    let mut gateways: Vec<IpAddr> = details["subnets"]
        .as_array()
        .map(|subnets| {
            subnets
                .iter()
                .filter_map(|s| s["gateway"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if gateways.is_empty() {
        return Ok(None);
    }
    gateways.sort_by_key(|g: &IpAddr| g.is_ipv6());
    let text = weft_cnm::resolv_conf::render(&gateways);
    let path = std::env::temp_dir().join(format!("weft-run-{}.resolv.conf", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

async fn wait_child(mut child: std::process::Child) -> Result<ExitStatus> {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .context("waiting for the command")?
        .context("waiting for the command")
}

/// The sandbox child (`weft __sandbox -- CMD...`): unshare the network
/// namespace, tell `weft run`, wait for "go", exec the command. Returns
/// only on failure, with the exit code.
pub fn sandbox_main(userns: &UserNamespace, command: &[String]) -> i32 {
    // SAFETY: SANDBOX_FD was installed by `weft run` for this process and
    // nothing else here owns that number.
    let channel = unsafe { OwnedFd::from_raw_fd(SANDBOX_FD) };
    let mut channel = UnixStream::from(channel);
    if let Err(e) = join_user_namespace(userns) {
        eprintln!("weft: {e:#}");
        return EXIT_WEFT_FAILED;
    }
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS) {
        eprintln!("weft: making the sandbox's network and mount namespaces: {e}");
        return EXIT_WEFT_FAILED;
    }
    // Our mounts stay ours: nothing propagates back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        eprintln!("weft: making the sandbox's mounts private: {e}");
        return EXIT_WEFT_FAILED;
    }
    let mut message = Vec::new();
    if channel.write_all(&[READY]).is_err()
        || channel.read_to_end(&mut message).is_err()
        || message.first() != Some(&GO)
    {
        return EXIT_WEFT_FAILED;
    }
    drop(channel);
    if message.len() > 1 {
        let source = std::path::PathBuf::from(std::ffi::OsString::from_vec(message[1..].to_vec()));
        if let Err(e) = mount(
            Some(&source),
            RESOLV_CONF,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            eprintln!(
                "weft: bind-mounting {} over {RESOLV_CONF}: {e}",
                source.display()
            );
            return EXIT_WEFT_FAILED;
        }
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("weft: no command to run");
        return EXIT_WEFT_FAILED;
    };
    let error = Command::new(program).args(args).exec();
    eprintln!("weft: running {program}: {error}");
    if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
