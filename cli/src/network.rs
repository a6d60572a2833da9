//! `weft network ...`: clients of the API that print like `docker network`.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hyper::Method;
use ipnet::IpNet;
use serde_json::Value;
use weft_cnm::api::types::{
    ConnectRequest, CreateNetworkRequest, DisconnectRequest, SubnetRequest,
};
use weft_cnm::model::{Endpoint, EndpointKind, Network, PortMapping};

use crate::client::{Client, Refusal};
use crate::listing::{Facts, Filters, Format};

/// `weft network` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network; prints its id.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove every network without endpoints (not the default `bridge`).
    Prune {
        /// Do not ask for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
        /// Only networks that match (driver=, name=, label=, label!=,
        /// scope=, id=).
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
    },
    /// Exit 0 if the network exists, 1 if not (as `podman network exists`).
    Exists {
        /// The network's name.
        name: String,
    },
    /// Show networks and their endpoints as JSON.
    Inspect {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while endpoints are attached).
    #[command(alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Attach a network namespace to a network.
    Connect(ConnectArgs),
    /// Detach a network namespace from a network; its interface goes away.
    Disconnect {
        /// The network.
        network: String,
        /// Namespace path, or a name under /var/run/netns.
        netns: String,
    },
    /// Show a network's forwarding table (the same as `weft fdb`).
    Fdb(crate::observe::FdbArgs),
}

/// `weft network ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output: table, json, or a template such as '{{.Name}}' or
    /// 'table {{.Name}}\t{{.Driver}}' (fields: .Name .ID .Driver .Scope
    /// .Subnet .Internal .IPv6 .Labels .CreatedAt, .Label "KEY", json .).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Only names, one a line (names are what every weft command takes).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Only networks that match KEY=VALUE: driver, scope, name (part of
    /// it), id (prefix), label (KEY or KEY=VALUE), dangling (true: no
    /// endpoints). Repeatable: one key's values OR, different keys AND.
    #[arg(long, short = 'f', value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
}

/// `weft network create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Driver: bridge, overlay, macvlan, host or null.
    #[arg(long, short = 'd', default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form (repeatable: one IPv4 and/or IPv6 subnet each).
    #[arg(long)]
    pub subnet: Vec<IpNet>,
    /// Gateway of the subnet that contains it (repeatable).
    #[arg(long)]
    pub gateway: Vec<IpAddr>,
    /// Allocate addresses from this part of the subnet that contains it.
    #[arg(long)]
    pub ip_range: Vec<IpNet>,
    /// No outbound access.
    #[arg(long)]
    pub internal: bool,
    /// MTU of the sandbox interfaces.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Driver option KEY=VALUE (repeatable).
    #[arg(long, short = 'o', value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Label KEY=VALUE or KEY (repeatable): kept, shown by inspect, matched
    /// by `ls --filter label=...`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// An address never handed out, NAME=IP (repeatable): another host of
    /// a macvlan network's LAN, say.
    #[arg(long, value_name = "NAME=IP")]
    pub aux_address: Vec<String>,
    /// The network's name.
    pub name: String,
}

/// What an endpoint gets, for `network connect` and `weft vm`.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    /// DNS name of the endpoint [default: the namespace's name, or the
    /// VM socket's file name without its extension].
    #[arg(long)]
    pub name: Option<String>,
    /// Static address (one IPv4 and/or one IPv6).
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// Extra DNS name (repeatable).
    #[arg(long)]
    pub alias: Vec<String>,
    /// Publish a port: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp] (repeatable; host
    /// port 0 lets the kernel pick one). Prints each as Docker's `docker
    /// port` does: `80/tcp -> 0.0.0.0:8080`.
    #[arg(long = "publish", short = 'p', value_name = "SPEC")]
    pub publish: Vec<PortMapping>,
}

impl EndpointArgs {
    /// A connect request of these, to `sandbox`, of `kind`.
    pub fn request(self, sandbox: String, kind: EndpointKind) -> ConnectRequest {
        ConnectRequest {
            sandbox,
            kind,
            name: self.name,
            ips: self.ip,
            aliases: self.alias,
            ports: self.publish,
            ..ConnectRequest::default()
        }
    }
}

/// `weft network connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The endpoint's name, addresses and published ports.
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// The network.
    pub network: String,
    /// Namespace path, or a name under /var/run/netns.
    pub netns: String,
}

/// Run a `weft network` subcommand.
pub async fn run(client: &Client, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => {
            let request = create_request(args)?;
            let network: Network = client
                .call(Method::POST, "/v1/networks", Some(&request))
                .await?;
            println!("{}", network.id);
        }
        NetworkCommand::Ls(args) => {
            let format = Format::parse(&args.format)?;
            let filters = Filters::parse(&args.filter)?;
            let networks = matching_networks(client, &filters).await?;
            if args.quiet {
                for network in &networks {
                    println!("{}", network.name);
                }
            } else {
                print!("{}", format.render(&networks)?);
            }
        }
        NetworkCommand::Prune { force, filter } => prune(client, force, &filter).await?,
        NetworkCommand::Exists { name } => {
            let found = client
                .call::<(), Value>(Method::GET, &network_path(&name, ""), None)
                .await;
            match found {
                Ok(_) => {}
                Err(e) => match e.downcast_ref::<Refusal>() {
                    Some(r) if r.status == hyper::StatusCode::NOT_FOUND => {
                        return Err(NoSuchNetwork.into())
                    }
                    _ => return Err(e),
                },
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut all = Vec::new();
            for name in &names {
                let details: Value = client
                    .call(Method::GET, &network_path(name, ""), None::<&()>)
                    .await?;
                all.push(details);
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        NetworkCommand::Rm { names } => {
            for name in &names {
                let () = client
                    .call(Method::DELETE, &network_path(name, ""), None::<&()>)
                    .await?;
                println!("{name}");
            }
        }
        NetworkCommand::Connect(args) => {
            let request = args
                .endpoint
                .request(netns_arg(&args.netns)?, EndpointKind::Tap);
            connect(client, &args.network, &request).await?;
        }
        NetworkCommand::Disconnect { network, netns } => {
            let request = DisconnectRequest {
                sandbox: netns_arg(&netns)?,
            };
            let () = client
                .call(
                    Method::POST,
                    &network_path(&network, "/disconnect"),
                    Some(&request),
                )
                .await?;
        }
        NetworkCommand::Fdb(args) => crate::observe::fdb(client, args).await?,
    }
    Ok(())
}

/// Connect an endpoint to `network` and print what it got (its line, then
/// its published ports as `docker port` shows them).
///
/// # Errors
///
/// The daemon's refusal, or a failed call.
pub async fn connect(client: &Client, network: &str, request: &ConnectRequest) -> Result<Endpoint> {
    let endpoint: Endpoint = client
        .call(
            Method::POST,
            &network_path(network, "/connect"),
            Some(request),
        )
        .await?;
    println!("{}", endpoint_line(&endpoint));
    for line in port_lines(&endpoint) {
        println!("{line}");
    }
    Ok(endpoint)
}

/// `network exists` of a network that does not: exit 1 without a word.
#[derive(Debug)]
pub struct NoSuchNetwork;

impl std::fmt::Display for NoSuchNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such network")
    }
}

impl std::error::Error for NoSuchNetwork {}

/// The networks that pass `filters` (with an inspect of each when a filter
/// needs its endpoints).
async fn matching_networks(client: &Client, filters: &Filters) -> Result<Vec<Network>> {
    let networks: Vec<Network> = client
        .call(Method::GET, "/v1/networks", None::<&()>)
        .await?;
    let mut kept = Vec::with_capacity(networks.len());
    for network in networks {
        let facts = if filters.needs_facts() {
            Some(facts_of(client, &network.name).await?)
        } else {
            None
        };
        if filters.matches(&network, facts) {
            kept.push(network);
        }
    }
    Ok(kept)
}

async fn facts_of(client: &Client, name: &str) -> Result<Facts> {
    let details: Value = client
        .call(Method::GET, &network_path(name, ""), None::<&()>)
        .await?;
    Ok(Facts {
        endpoints: details["endpoints"].as_array().map_or(0, Vec::len),
    })
}

/// `network prune`: every network without endpoints, but the default
/// `bridge` (Docker keeps its predefined networks too); asks first unless
/// `--force`. Prints what it removed under Docker's heading.
async fn prune(client: &Client, force: bool, filter: &[String]) -> Result<()> {
    let mut filters = filter.to_vec();
    filters.push("dangling=true".to_owned());
    let filters = Filters::parse(&filters)?;
    if !force {
        eprint!("WARNING! This will remove all weft networks not used by at least one sandbox.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).ok();
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing removed");
            return Ok(());
        }
    }
    let mut removed = Vec::new();
    for network in matching_networks(client, &filters).await? {
        if network.name == weft_cnm::controller::DEFAULT_NETWORK {
            continue;
        }
        // An endpoint may have come meanwhile: the daemon refuses then, and
        // that network stays.
        match client
            .call::<(), ()>(Method::DELETE, &network_path(&network.name, ""), None)
            .await
        {
            Ok(()) => removed.push(network.name),
            Err(e) => eprintln!("weft: keeping {}: {e:#}", network.name),
        }
    }
    if !removed.is_empty() {
        println!("Deleted Networks:");
        for name in removed {
            println!("{name}");
        }
    }
    Ok(())
}

/// The API path of a network; names are validated by the daemon, but a
/// `/` or `?` must not change the path.
pub fn network_path(name: &str, suffix: &str) -> String {
    let escaped: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("/v1/networks/{escaped}{suffix}")
}

/// A namespace argument: a bare name stays a name (the daemon looks under
/// /var/run/netns); a path is made absolute, since the daemon's working
/// directory is not ours.
pub fn netns_arg(netns: &str) -> Result<String> {
    if !netns.contains('/') {
        return Ok(netns.to_owned());
    }
    let path = Path::new(netns);
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .context("reading the working directory")?
            .join(path)
    };
    absolute
        .to_str()
        .map(str::to_owned)
        .context("the namespace path is not UTF-8")
}

fn create_request(args: CreateArgs) -> Result<CreateNetworkRequest> {
    let mut subnets: Vec<SubnetRequest> = args
        .subnet
        .iter()
        .map(|s| SubnetRequest {
            subnet: *s,
            gateway: None,
            ip_range: None,
        })
        .collect();
    for gateway in args.gateway {
        let Some(s) = subnets.iter_mut().find(|s| s.subnet.contains(&gateway)) else {
            bail!("--gateway {gateway} is in no --subnet: give the subnet it belongs to");
        };
        if s.gateway.replace(gateway).is_some() {
            bail!("two --gateway for subnet {}: give one", s.subnet);
        }
    }
    for range in args.ip_range {
        let Some(s) = subnets.iter_mut().find(|s| s.subnet.contains(&range)) else {
            bail!("--ip-range {range} is in no --subnet: give the subnet it belongs to");
        };
        if s.ip_range.replace(range).is_some() {
            bail!("two --ip-range for subnet {}: give one", s.subnet);
        }
    }
    let mut options = std::collections::BTreeMap::new();
    for opt in args.opt {
        let Some((k, v)) = opt.split_once('=') else {
            bail!("--opt {opt:?} is not KEY=VALUE");
        };
        options.insert(k.to_owned(), v.to_owned());
    }
    // Docker's `--label KEY` is KEY with an empty value.
    let labels = args
        .label
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.clone(), String::new()),
        })
        .collect();
    let mut aux_addresses = std::collections::BTreeMap::new();
    for spec in &args.aux_address {
        let (name, ip) = spec
            .split_once('=')
            .with_context(|| format!("--aux-address {spec:?}: write NAME=IP"))?;
        let ip: IpAddr = ip
            .parse()
            .with_context(|| format!("--aux-address {spec:?}: {ip:?} is not an IP address"))?;
        aux_addresses.insert(name.to_owned(), ip);
    }
    Ok(CreateNetworkRequest {
        name: args.name,
        driver: Some(args.driver),
        subnets,
        internal: args.internal,
        mtu: args.mtu,
        options,
        labels,
        aux_addresses,
    })
}

/// Published ports of an endpoint the way `docker port` shows them:
/// `80/tcp -> 0.0.0.0:8080`.
/// A dual-stack port has one line per family, as `docker port` shows it.
pub fn port_lines(endpoint: &Endpoint) -> Vec<String> {
    endpoint
        .ports
        .iter()
        .flat_map(|m| {
            let listens = endpoint.publish_listens(m);
            let hosts: Vec<String> = if listens.is_empty() {
                vec![m.to_string()]
            } else {
                listens.iter().map(|(host, _)| host.to_string()).collect()
            };
            hosts
                .into_iter()
                .map(move |host| format!("{}/{} -> {host}", m.container_port, m.proto.as_str()))
        })
        .collect()
}

/// What a sandbox got from `network connect`, on one line: its interface,
/// DNS name, addresses and MAC.
pub fn endpoint_line(endpoint: &Endpoint) -> String {
    let mut line = format!("{}: {}", endpoint.network, endpoint.sandbox.display());
    if !endpoint.ifname.is_empty() {
        line.push_str(&format!(" {}", endpoint.ifname));
    }
    line.push_str(&format!(" name {}", endpoint.name));
    for address in &endpoint.addresses {
        line.push_str(&format!(" {address}"));
    }
    if let Some(mac) = endpoint.mac {
        line.push_str(&format!(" mac {mac}"));
    }
    line
}

/// Columns padded to their widest cell, three spaces apart, one line per
/// row after the header, like `docker network ls`.
pub fn render_table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.clone().map(|h| h.len());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_print_like_docker_port() {
        let endpoint: Endpoint = serde_json::from_value(serde_json::json!({
            "id": "e", "network": "n", "sandbox": "/var/run/netns/s", "name": "s",
            "ifname": "eth0", "addresses": ["10.1.0.2/24", "fd00::2/64"],
            "ports": ["8080:80", "[::1]:5353:53/udp", "127.0.0.1:81:80"],
        }))
        .unwrap();
        assert_eq!(
            port_lines(&endpoint),
            [
                "80/tcp -> 0.0.0.0:8080",
                "80/tcp -> [::]:8080",
                "53/udp -> [::1]:5353",
                "80/tcp -> 127.0.0.1:81"
            ]
        );
    }

    #[test]
    fn connect_parses_repeated_publish() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            connect: ConnectArgs,
        }
        let cli = Cli::try_parse_from(["x", "-p", "8080:80", "--publish", "53:53/udp", "n", "s"])
            .unwrap();
        assert_eq!(cli.connect.endpoint.publish.len(), 2);
        assert_eq!(cli.connect.endpoint.publish[1].to_string(), "53:53/udp");
        let bad = Cli::try_parse_from(["x", "-p", "80x:80", "n", "s"])
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("host port must be a number"), "{bad}");
    }

    #[test]
    fn paths_escape_names() {
        assert_eq!(network_path("n1", "/connect"), "/v1/networks/n1/connect");
        assert_eq!(network_path("a/b?c", ""), "/v1/networks/a%2Fb%3Fc");
    }

    #[test]
    fn gateways_and_ranges_pair_with_their_subnet() {
        let args = CreateArgs {
            driver: "bridge".into(),
            subnet: vec!["10.1.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
            gateway: vec!["fd00::fe".parse().unwrap()],
            ip_range: vec!["10.1.0.128/25".parse().unwrap()],
            internal: false,
            mtu: None,
            opt: vec!["a=b".into()],
            label: vec!["k=v".into(), "bare".into()],
            aux_address: vec!["router=10.1.0.9".into()],
            name: "n".into(),
        };
        let request = create_request(args).unwrap();
        assert_eq!(
            request.subnets[0].ip_range,
            Some("10.1.0.128/25".parse().unwrap())
        );
        assert_eq!(
            request.subnets[1].gateway,
            Some("fd00::fe".parse().unwrap())
        );
        assert_eq!(request.options.get("a").map(String::as_str), Some("b"));
        assert_eq!(request.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(request.labels.get("bare").map(String::as_str), Some(""));
        assert_eq!(
            request.aux_addresses.get("router"),
            Some(&"10.1.0.9".parse().unwrap())
        );
        let bad = CreateArgs {
            driver: "bridge".into(),
            subnet: vec!["10.1.0.0/24".parse().unwrap()],
            gateway: vec!["10.2.0.1".parse().unwrap()],
            ip_range: vec![],
            internal: false,
            mtu: None,
            opt: vec![],
            label: vec![],
            aux_address: vec![],
            name: "n".into(),
        };
        assert!(create_request(bad).is_err());
    }
}
