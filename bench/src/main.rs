//! `weft-bench`: weft's end-to-end benchmark harness (root only).
//!
//! - `weft-bench e2e [--runs 3] [--seconds 5] [--out bench/RESULTS.md]`:
//!   TCP throughput, 64-byte UDP packet rate, ping round trip and switch
//!   CPU per GB for weft, the kernel bridge + veth and vde_switch, in
//!   network namespaces, alternating runs, medians (see `e2e`).
//! - `weft-bench scale [--sandboxes 200] [--pairs 20]`: attach latency,
//!   daemon memory per endpoint and reachability with many sandboxes on
//!   one network (see `scale`); the section is appended to `--out`.
//! - `weft-bench nat [--runs 3] [--seconds 5] [--no-far]`: weft's NAT and
//!   published ports against pasta and slirp4netns at MTU 1500 and 65520
//!   (see `nat`); its section of `--out` is replaced (or appended).
//! - `weft-bench overlay [--runs 3] [--seconds 5]`: sandbox to sandbox
//!   across two hosts, weft's overlay against the kernel's vxlan + bridge
//!   (see `overlay`); its section of `--out` is replaced (or appended).
//! - `weft-bench docker [--runs 3] [--seconds 5]`: container to container
//!   on a weft network (the Docker plugin) against Docker's own bridge
//!   network in one dockerd (see `docker`; needs docker.io and
//!   busybox-static); its section of `--out` is replaced (or appended).
//! - `weft-bench cni [--iterations 200] [--runs 3] [--seconds 5]`: ADD and
//!   DEL latency of `weft-cni` against the reference `bridge` +
//!   `host-local` plugins, and pod-to-pod TCP on each (see `cni`).
//! - `weft-bench flood [--flows 4200] [--probes 50] [--fill 0]`: one sandbox floods
//!   the NAT with TCP, then UDP flows; the daemon's peak RSS and fds and
//!   the other sandboxes' success rates (see `flood`); its section of
//!   `--out` is replaced (or appended).
//! - `weft-bench macvlan [--runs 3] [--seconds 5]`: a LAN host to a
//!   sandbox on weft's macvlan network against the kernel's macvlan on the
//!   same parent (see `macvlan`).
//! - `weft-bench vm [--runs 3] [--mib 32]`: a QEMU guest's TCP and ping to
//!   a sandbox through weft's stream port against `-netdev user` (see
//!   `vm`; needs qemu-system-x86, cpio, socat and the guest kernel
//!   `.ci/run` unpacks).
//!
//! Needs the release weft binary (`cargo build --release -p weft`, or
//! `WEFT_BIN`), and iproute2, iperf3, iputils-ping, util-linux (taskset),
//! vde2 (and for `nat`: passt, slirp4netns); it installs nothing. Everything happens in `wb-*` namespaces the
//! harness creates and removes (see `lab`).

// A driver crate: it reads clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod cni;
mod docker;
mod e2e;
mod flood;
mod lab;
mod macvlan;
mod measure;
mod nat;
mod overlay;
mod process;
mod report;
mod scale;
mod topology;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

/// The report file by default: bench/RESULTS.md in the source tree.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md");

/// weft's end-to-end benchmarks (run as root).
#[derive(Debug, Parser)]
#[command(name = "weft-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// weft vs kernel bridge vs vde_switch: TCP, UDP 64 B, ping, CPU per GB.
    E2e {
        /// Runs per topology (the report shows the median and min–max).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
        seconds: u32,
        /// Markdown report (overwritten).
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
    /// Many sandboxes on one weft network: attach latency, RSS, reachability.
    Scale {
        /// How many sandbox namespaces to attach.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=5000))]
        sandboxes: u32,
        /// How many random pairs must ping each other.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        pairs: u32,
        /// Markdown file the section is appended to.
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
    /// weft's NAT and published ports vs pasta and slirp4netns, MTU 1500 and 65520.
    Nat {
        /// Runs per datapath, path and MTU (the report shows the median and min–max).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
        seconds: u32,
        /// Skip the "out to a real address" runs (sandbox → a namespace beyond the host).
        #[arg(long)]
        no_far: bool,
        /// Markdown file whose NAT section is replaced (appended if absent).
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
    /// Sandbox to sandbox across two hosts: weft's overlay vs kernel vxlan + bridge.
    Overlay {
        /// Runs per datapath (the report shows the median and min–max).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
        seconds: u32,
        /// Markdown file whose overlay section is replaced (appended if absent).
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
        /// The weft daemons' `--quic-congestion` for the encrypted network.
        #[arg(long, default_value = "none", value_parser = ["none", "cubic"])]
        quic_congestion: String,
        /// Leave wireguard-go out (not installed: `apt-get install
        /// wireguard-go wireguard-tools`).
        #[arg(long)]
        no_wireguard: bool,
    },
    /// Container to container: a weft network (Docker plugin) vs Docker's bridge.
    Docker {
        /// Runs per network (the report shows the median and min–max).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
        seconds: u32,
        /// Markdown file whose Docker section is replaced (appended if absent).
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
    /// weft-cni vs the reference bridge + host-local plugins: ADD/DEL latency, pod-to-pod TCP.
    Cni(CniArgs),
    /// One sandbox floods the NAT (TCP, then UDP): peak RSS, fds, the others' success.
    Flood(FloodArgs),
    /// A QEMU guest to a sandbox: weft's stream port vs -netdev user.
    Vm(VmArgs),
    /// A LAN host to a macvlan sandbox: weft's userspace macvlan vs the kernel's.
    Macvlan(RunsArgs),
}

/// `flood` subcommand's arguments.
#[derive(Debug, clap::Args)]
struct FloodArgs {
    /// Flows the flooding sandbox opens at once, per flood.
    #[arg(long, default_value_t = 4200, value_parser = clap::value_parser!(u32).range(1..=20000))]
    flows: u32,
    /// TCP connects and UDP round trips each other sandbox tries.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    probes: u32,
    /// Seconds the TCP flooder keeps writing on every flow (0: 64 KiB once).
    #[arg(long = "fill", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=120))]
    fill_secs: u32,
    /// Markdown file whose flood section is replaced (appended if absent).
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// `cni` subcommand's arguments (kept apart so the enum above stays as
/// it was).
#[derive(Debug, clap::Args)]
struct CniArgs {
    /// ADDs (then DELs) per plugin.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=2000))]
    iterations: u32,
    /// iperf3 runs per plugin, their length, the report.
    #[command(flatten)]
    iperf: RunsArgs,
}

/// iperf3 runs, their length and the report file (the `cni` and
/// `macvlan` subcommands').
#[derive(Debug, clap::Args)]
struct RunsArgs {
    /// iperf3 runs per side (plugin, macvlan).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
    seconds: u32,
    /// Markdown file whose section is replaced (appended if absent).
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// `vm` subcommand's arguments.
#[derive(Debug, clap::Args)]
struct VmArgs {
    /// Guest boots per backend.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// MiB the guest sends per boot.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    mib: u32,
    /// Markdown file whose VM section is replaced (appended if absent).
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// CPUs this process may run on, as `nproc` counts them.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line as the user typed it: `cargo run` leaves
/// CARGO_PKG_NAME in the environment of the program it runs.
fn invocation() -> String {
    let argv: Vec<String> = std::env::args().collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let launched_by_cargo =
        std::env::var_os("CARGO_PKG_NAME").is_some_and(|name| name == "weft-bench");
    match argv.split_first() {
        Some((program, args)) if launched_by_cargo => {
            let release = if program.contains("/release/") {
                " --release"
            } else {
                ""
            };
            format!(
                "cargo run{release} -p weft-bench -- {}",
                process::render_command(args)
            )
        }
        _ => process::render_command(&argv),
    }
}

fn run(cli: Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("weft-bench must run as root: it creates network namespaces");
    }
    process::install_signal_handlers()?;
    let command = invocation();
    match cli.command {
        Command::E2e { runs, seconds, out } => e2e::run(&e2e::E2eOptions {
            runs,
            seconds,
            out,
            command,
        }),
        Command::Scale {
            sandboxes,
            pairs,
            out,
        } => scale::run(&scale::ScaleOptions {
            sandboxes,
            pairs,
            out,
            command,
        }),
        Command::Nat {
            runs,
            seconds,
            no_far,
            out,
        } => nat::run(&nat::NatOptions {
            runs,
            seconds,
            no_far,
            out,
            command,
        }),
        Command::Overlay {
            runs,
            seconds,
            out,
            quic_congestion,
            no_wireguard,
        } => overlay::run(&overlay::OverlayOptions {
            runs,
            seconds,
            out,
            command,
            quic_congestion,
            no_wireguard,
        }),
        Command::Docker { runs, seconds, out } => docker::run(&docker::DockerOptions {
            runs,
            seconds,
            out,
            command,
        }),
        Command::Flood(args) => flood::run(&flood::FloodOptions {
            flows: args.flows,
            probes: args.probes,
            fill_secs: args.fill_secs,
            out: args.out,
            command,
        }),
        Command::Cni(args) => cni::run(&cni::CniOptions {
            iterations: args.iterations,
            runs: args.iperf.runs,
            seconds: args.iperf.seconds,
            out: args.iperf.out,
            command,
        }),
        Command::Macvlan(args) => macvlan::run(&macvlan::MacvlanOptions {
            runs: args.runs,
            seconds: args.seconds,
            out: args.out,
            command,
        }),
        Command::Vm(args) => vm::run(&vm::VmOptions {
            runs: args.runs,
            mib: args.mib,
            out: args.out,
            command,
        }),
    }
}
