//! `weft-cni`: the CNI plugin (spec 1.1) that attaches containers to weft
//! networks. A runtime runs it with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; see
//! `cli/src/cni/mod.rs` for the theory of operation and
//! `docs/kubernetes.md` for a conflist.
//!
//! # Dependencies
//!
//! The `weft` CLI's own: its API client (`hyper` over the Unix socket) and
//! the daemon's request types (`weft-cnm`), so a request the plugin sends
//! is the one the daemon decodes; `serde_path_to_error` (already in the
//! tree through axum) names the field of a config that does not decode.

// A driver crate: it reads clocks (clippy.toml).
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)] // the CLI's client: weft-cni uses part of it
#[path = "../client.rs"]
mod client;
#[allow(dead_code)] // the netavark half is the other binary's
#[path = "../cni/mod.rs"]
mod cni;
#[allow(dead_code)] // the default socket only
#[path = "../paths.rs"]
mod paths;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cni::args::{Command, Invocation};
use cni::commands::{self, Daemon};
use cni::config::{self, NetConf, LATEST_VERSION, MAX_STDIN, SUPPORTED_VERSIONS};
use cni::error::{CniError, ErrorCode};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(u64::try_from(MAX_STDIN).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut stdin);
    let version_hint = config::version_of_stdin(&stdin);
    let outcome = match read {
        Err(e) => Err(CniError::new(ErrorCode::Io, "reading stdin", e.to_string())),
        Ok(_) if stdin.len() > MAX_STDIN => Err(CniError::new(
            ErrorCode::Decode,
            "the network configuration is too large",
            format!("stdin holds more than {MAX_STDIN} bytes"),
        )),
        Ok(_) => run(&stdin),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(out, "{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = if config::CniVersion::parse(&version_hint).is_some() {
                version_hint.as_str()
            } else {
                LATEST_VERSION
            };
            let _ = writeln!(out, "{}", e.to_json(version));
            eprintln!("weft-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One invocation: the answer to print, if any.
fn run(stdin: &[u8]) -> Result<Option<String>, CniError> {
    let invocation = Invocation::from_env(|name| std::env::var(name).ok())?;
    if invocation.command == Command::Version {
        let answer = serde_json::json!({
            "cniVersion": LATEST_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        });
        return Ok(Some(answer.to_string()));
    }
    let conf = NetConf::parse(stdin)?;
    let socket = conf
        .socket
        .clone()
        .or_else(|| std::env::var_os("WEFT_SOCKET").map(PathBuf::from))
        .unwrap_or_else(paths::default_socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                "starting the plugin's runtime",
                e.to_string(),
            )
        })?;
    let daemon = Daemon::new(&socket);
    runtime.block_on(async {
        match invocation.command {
            Command::Add => commands::add(&daemon, &invocation, &conf)
                .await
                .map(|result| Some(result.to_string())),
            Command::Del => commands::del(&daemon, &invocation, &conf)
                .await
                .map(|()| None),
            Command::Check => commands::check(&daemon, &invocation, &conf)
                .await
                .map(|()| None),
            Command::Gc => {
                let removed = commands::gc(&daemon, &conf).await?;
                if removed > 0 {
                    eprintln!("weft-cni: GC detached {removed} stale attachment(s)");
                }
                Ok(None)
            }
            Command::Status => commands::status(&daemon, &conf).await.map(|()| None),
            Command::Version => Ok(None),
        }
    })
}
