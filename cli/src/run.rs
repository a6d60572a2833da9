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

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use hyper::Method;
use nix::sched::CloneFlags;
use serde_json::Value;
use weft_cnm::controller::{ConnectRequest, DisconnectRequest};

use crate::client::Client;
use crate::network::network_path;

/// The hidden subcommand of the sandbox child.
pub const SANDBOX_SUBCOMMAND: &str = "__sandbox";

/// The fd the sandbox child talks to `weft run` on.
const SANDBOX_FD: i32 = 3;

/// Exit code when weft, not the command, failed (as `docker run`).
pub const EXIT_WEFT_FAILED: i32 = 125;

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
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
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
    let mut command = Command::new(exe);
    command
        .arg(SANDBOX_SUBCOMMAND)
        .arg("--")
        .args(&args.command);
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
    let mut connected = Vec::new();
    let mut failure = None;
    for (i, network) in networks.iter().enumerate() {
        let request = ConnectRequest {
            sandbox: sandbox.clone(),
            name: args.name.clone(),
            ips: if i == 0 { args.ip.clone() } else { Vec::new() },
            aliases: Vec::new(),
        };
        match client
            .call::<_, Value>(
                Method::POST,
                &network_path(network, "/connect"),
                Some(&request),
            )
            .await
        {
            Ok(_) => connected.push(network.clone()),
            Err(e) => {
                failure = Some(e.context(format!("connecting to network {network}")));
                break;
            }
        }
    }
    let status = if failure.is_none() {
        ours.write_all(&[GO]).context("starting the command")?;
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
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_WEFT_FAILED))
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
pub fn sandbox_main(command: &[String]) -> i32 {
    // SAFETY: SANDBOX_FD was installed by `weft run` for this process and
    // nothing else here owns that number.
    let channel = unsafe { OwnedFd::from_raw_fd(SANDBOX_FD) };
    let mut channel = UnixStream::from(channel);
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
        eprintln!("weft: making the sandbox's network namespace: {e}");
        return EXIT_WEFT_FAILED;
    }
    let mut byte = [0u8; 1];
    if channel.write_all(&[READY]).is_err()
        || channel.read_exact(&mut byte).is_err()
        || byte[0] != GO
    {
        return EXIT_WEFT_FAILED;
    }
    drop(channel);
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
