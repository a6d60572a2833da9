//! `weft`: a userspace virtual switch and overlay router for containers.
//!
//! One binary: the daemon (`weft daemon`), the clients of its API
//! (`weft network ...`, `weft run`), and two hidden helpers the daemon and
//! `weft run` start (`__attach`, `__sandbox`).
//!
//! # Dependencies
//!
//! - `clap` (derive) for the command line, `anyhow` for errors with
//!   context, `tracing-subscriber` for logs (only the binary installs one).
//! - `hyper` + `hyper-util` for the API client over a Unix socket: the
//!   daemon side is axum, and hyper's HTTP/1 client connection works on any
//!   stream.
//! - `rtnetlink` configures interfaces inside a sandbox from the attach
//!   helper (its socket belongs to the namespace the helper entered).
//! - `clap_complete` and `clap_mangen` make the completion scripts and man
//!   pages from the same clap definition (`weft completion`, `weft man`),
//!   so they cannot drift from the command line.
//! - `layout-rs` lays out and draws `weft graph --format svg` without
//!   Graphviz (why this one: `graph.rs`).

// A driver crate: it reads clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod client;
mod daemon;
mod fd_limit;
mod graph;
mod helper;
mod info;
mod listing;
mod manuals;
mod network;
mod notify;
mod observe;
mod ownership;
mod paths;
mod peers;
mod ps;
mod run;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::client::Client;

/// weft: userspace container networking.
#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "A userspace virtual switch and overlay router for containers"
)]
struct Cli {
    /// The daemon's API socket [default: /run/weft/weft.sock as root, else $XDG_RUNTIME_DIR/weft/weft.sock].
    #[arg(long, global = true, env = "WEFT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (switch, controller and API).
    Daemon(daemon::DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Run a command in a new sandbox attached to weft networks.
    Run(run::RunArgs),
    /// Put a virtual machine on a network: make its socket and print the
    /// QEMU arguments (-netdev stream) that connect it.
    Vm(vm::VmArgs),
    /// Show the cluster's members (alive, suspect, dead) and tunnel counters.
    Peers(peers::PeersArgs),
    /// Capture a network's (or one endpoint's) frames as pcapng.
    Capture(observe::CaptureArgs),
    /// Show a network's forwarding table: MAC, kind, endpoint or host, age.
    Fdb(observe::FdbArgs),
    /// Print network and endpoint events as they happen.
    Events(observe::EventsArgs),
    /// Show live per-endpoint rates (like docker stats).
    Stats(observe::StatsArgs),
    /// Draw this host, its networks and endpoints and the cluster's members
    /// (the topology page's picture) as Graphviz DOT or SVG.
    Graph(graph::GraphArgs),
    /// List the sandboxes `weft run` started that still run.
    Ps(ps::PsArgs),
    /// Show the client's and the daemon's versions.
    Version(info::InfoArgs),
    /// Show what the daemon is doing: version, uptime, state directory,
    /// counts, cluster.
    Info(info::InfoArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completion(manuals::CompletionArgs),
    /// Print the man page weft(1), or write every page with --dir.
    Man(manuals::ManArgs),
    /// The attach helper the daemon starts (internal).
    #[command(name = "__attach", hide = true)]
    Attach {
        /// The request, JSON.
        request: String,
    },
    /// The sandbox child of `weft run` (internal).
    #[command(name = "__sandbox", hide = true)]
    Sandbox {
        /// Enter this user namespace first (the daemon's).
        #[arg(long, value_name = "PATH", conflicts_with = "userns_new")]
        userns_enter: Option<std::path::PathBuf>,
        /// Make a new user namespace first, mapping this user to root.
        #[arg(long)]
        userns_new: bool,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(paths::default_socket);
    let code = match cli.command {
        Command::Attach { request } => helper::main(&request),
        Command::Sandbox {
            userns_enter,
            userns_new,
            command,
        } => {
            let userns = match (userns_enter, userns_new) {
                (Some(path), _) => run::UserNamespace::Enter(path),
                (None, true) => run::UserNamespace::New,
                (None, false) => run::UserNamespace::Keep,
            };
            run::sandbox_main(&userns, &command)
        }
        Command::Completion(args) => report(manuals::completion::<Cli>(&args)),
        Command::Man(args) => report(manuals::man::<Cli>(&args)),
        Command::Daemon(args) => {
            report(daemon::init_logging(&args).and_then(|()| daemon::run(&socket, args)))
        }
        Command::Network(command) => {
            let client = Client::new(&socket);
            report(block_on(async { network::run(&client, command).await }))
        }
        Command::Peers(args) => {
            let client = Client::new(&socket);
            report(block_on(async { peers::run(&client, args).await }))
        }
        Command::Capture(args) => {
            let client = Client::new(&socket);
            report(block_on(async { observe::capture(&client, args).await }))
        }
        Command::Fdb(args) => {
            let client = Client::new(&socket);
            report(block_on(async { observe::fdb(&client, args).await }))
        }
        Command::Events(args) => {
            let client = Client::new(&socket);
            report(block_on(async { observe::events(&client, args).await }))
        }
        Command::Stats(args) => {
            let client = Client::new(&socket);
            report(block_on(async { observe::stats(&client, args).await }))
        }
        Command::Graph(args) => {
            let client = Client::new(&socket);
            report(block_on(async { graph::run(&client, args).await }))
        }
        Command::Ps(args) => {
            let client = Client::new(&socket);
            report(block_on(async { ps::run(&client, args).await }))
        }
        Command::Vm(args) => {
            let client = Client::new(&socket);
            report(block_on(async { vm::run(&client, args).await }))
        }
        Command::Version(args) => {
            let client = Client::new(&socket);
            report(block_on(async { info::version(&client, args).await }))
        }
        Command::Info(args) => {
            let client = Client::new(&socket);
            report(block_on(async { info::info(&client, &socket, args).await }))
        }
        Command::Run(args) => {
            let client = Client::new(&socket);
            match block_on(async { Ok(run::run(&client, args).await) }) {
                Ok(code) => code,
                Err(e) => report(Err(e)),
            }
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn report(result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        // `network exists`: the exit code is the answer.
        Err(e) if e.is::<network::NoSuchNetwork>() => 1,
        Err(e) => {
            eprintln!("weft: {e:#}");
            1
        }
    }
}
