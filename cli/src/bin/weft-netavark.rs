//! `weft-netavark`: weft as a netavark plugin (podman 5: `podman network
//! create --driver weft-netavark`): `create`, `setup NETNS`, `teardown
//! NETNS`, `info`. See `cli/src/cni/netavark.rs`.

// A driver crate: it reads clocks (clippy.toml).
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)] // the CLI's client: this plugin uses part of it
#[path = "../client.rs"]
mod client;
#[allow(dead_code)] // the CNI half is the other binary's
#[path = "../cni/mod.rs"]
mod cni;
#[allow(dead_code)] // the default socket only
#[path = "../paths.rs"]
mod paths;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cni::commands::Daemon;
use cni::config::MAX_STDIN;
use cni::netavark::{self, PluginError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = run(&args);
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(out, "{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json());
            eprintln!("weft-netavark: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<Option<String>, PluginError> {
    let usage = || {
        PluginError(
            "usage: weft-netavark create | setup NETNS | teardown NETNS | info (JSON on stdin, see netavark's plugin API)".into(),
        )
    };
    let command = args.first().ok_or_else(usage)?;
    if command == "info" {
        return Ok(Some(netavark::info().to_string()));
    }
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(u64::try_from(MAX_STDIN).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| PluginError(format!("reading stdin: {e}")))?;
    if stdin.len() > MAX_STDIN {
        return Err(PluginError(format!(
            "stdin holds more than {MAX_STDIN} bytes"
        )));
    }
    let socket = std::env::var_os("WEFT_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(paths::default_socket);
    let daemon = Daemon::new(&socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PluginError(format!("starting the plugin's runtime: {e}")))?;
    let netns = || {
        args.get(1)
            .filter(|n| n.starts_with('/'))
            .cloned()
            .ok_or_else(|| PluginError(format!("{command}: give the netns path: {command} NETNS")))
    };
    runtime.block_on(async {
        match command.as_str() {
            "create" => netavark::create(&daemon, &stdin)
                .await
                .map(|v| Some(v.to_string())),
            "setup" => netavark::setup(&daemon, &netns()?, &stdin)
                .await
                .map(|v| Some(v.to_string())),
            "teardown" => netavark::teardown(&daemon, &netns()?, &stdin)
                .await
                .map(|()| None),
            _ => Err(usage()),
        }
    })
}
