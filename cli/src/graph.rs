//! `weft graph`: the topology page's picture (`weft daemon --web`,
//! `cnm/src/web.html`) as a file: Graphviz DOT, or an SVG drawn here with
//! no Graphviz installed.
//!
//! # Theory of operation
//!
//! The command reads what the page reads, through the API socket: `GET
//! /v1/networks`, `GET /v1/networks/NAME` for each (endpoints and, for an
//! overlay, the hosts its tunnel carries frames to) and `GET /v1/peers`
//! (refused when the daemon has no cluster: then the picture has no other
//! hosts). [`Topology::build`] turns those answers into nodes and edges, a
//! pure function the unit tests drive with fixed input; [`Topology::to_dot`]
//! and [`Topology::to_svg`] only draw what it decided.
//!
//! Nodes: this host; every cluster member (name, gossip address, state);
//! every network (name, driver, subnets, VNI); every endpoint (DNS name,
//! interface, MAC, addresses); every endpoint of an overlay network on
//! another host (`remote_endpoints` of the network's details: name, MAC,
//! addresses). Edges: this host to each of its networks and to each
//! member; a network to each of its endpoints; an overlay network to each
//! other host its tunnel has a port for (matched to a member by underlay
//! address, or drawn as a static peer when no member has it): that edge
//! is the network crossing hosts; another host's endpoint to that host. Order is stable
//! (networks, endpoints and members sorted by name), so two runs over the
//! same state give the same file.
//!
//! # Output
//!
//! DOT is written here (undirected, one `cluster_host` subgraph around
//! this host and its networks and endpoints); every id and label goes
//! through [`dot_quote`], so a name with quotes or backslashes cannot end
//! the string. SVG comes from `layout-rs` (crate `layout-rs`, module
//! `layout`): a pure-Rust port of the Graphviz `dot` pipeline (rank
//! assignment, crossing reduction, placement) with an SVG writer and no
//! dependencies of its own, MIT, kept up (0.1.3). Chosen over the
//! alternatives because the others either bind the Graphviz C library
//! (`graphviz-rust` runs the `dot` binary, `vizoxide` links libgvc: both
//! need Graphviz on the user's machine, which is what `--format svg`
//! avoids), or only compute coordinates (`rust-sugiyama`, `dagre-rs`) and
//! would leave the drawing to us. The graph is handed to `layout-rs`
//! through its API, not by parsing our DOT: its DOT lexer does not keep
//! escaped quotes, and its layout has no clusters, so the SVG shows the
//! same nodes and edges without the frame around this host. `layout-rs`
//! escapes text it writes into the SVG.
//!
//! # Limits
//!
//! The picture is one moment: counters are left out (the page shows
//! them live). Large graphs lay out
//! in `layout-rs`'s time, which grows faster than linearly with edges:
//! fine for hundreds of endpoints, not for tens of thousands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper::Method;
use serde::Deserialize;

use crate::client::{Client, Refusal};
use crate::network::network_path;

/// `weft graph` options.
#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Output format: Graphviz DOT text, or an SVG drawn by weft itself
    /// (no Graphviz needed).
    #[arg(long, default_value = "dot", value_parser = ["dot", "svg"])]
    pub format: String,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// A network as `GET /v1/networks/NAME` shows it: what the graph reads.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkView {
    /// Unique name.
    pub name: String,
    /// Driver (`bridge`, `overlay`, ...).
    pub driver: String,
    /// Subnets.
    #[serde(default)]
    pub subnets: Vec<SubnetView>,
    /// VXLAN network identifier (overlay).
    #[serde(default)]
    pub vni: Option<u32>,
    /// This host's endpoints on it.
    #[serde(default)]
    pub endpoints: Vec<EndpointView>,
    /// Overlay: the other hosts its tunnel has a port for.
    #[serde(default)]
    pub tunnel: Vec<TunnelView>,
    /// Overlay: its endpoints on the other hosts.
    #[serde(default)]
    pub remote_endpoints: Vec<RemoteEndpointView>,
}

/// An endpoint of an overlay network on another host.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteEndpointView {
    /// DNS name, when it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// MAC.
    pub mac: String,
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its host's underlay address, once known.
    #[serde(default)]
    pub host: Option<IpAddr>,
}

/// One subnet of a network.
#[derive(Debug, Clone, Deserialize)]
pub struct SubnetView {
    /// CIDR.
    pub subnet: String,
}

/// One endpoint of a network.
#[derive(Debug, Clone, Deserialize)]
pub struct EndpointView {
    /// Random id (unique on the host).
    #[serde(default)]
    pub id: String,
    /// DNS name.
    pub name: String,
    /// Interface inside the sandbox.
    #[serde(default)]
    pub ifname: String,
    /// MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses with prefix length.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One other host an overlay network's tunnel carries frames to.
#[derive(Debug, Clone, Deserialize)]
pub struct TunnelView {
    /// Its VXLAN address.
    pub host: IpAddr,
}

/// `GET /v1/peers`: this host and the cluster's members.
#[derive(Debug, Clone, Deserialize)]
pub struct PeersView {
    /// This host's node name.
    pub name: String,
    /// This host's gossip address.
    pub address: SocketAddr,
    /// The other members.
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// One cluster member.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberView {
    /// Node id (unique).
    pub id: String,
    /// Node name (several members may share one).
    pub name: String,
    /// Gossip address.
    pub address: SocketAddr,
    /// Where its VXLAN goes.
    #[serde(default)]
    pub underlay: Option<SocketAddr>,
    /// `alive`, `suspect` or `dead`.
    pub state: String,
}

/// A node's id in the graph: unique, stable across runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeId(pub String);

/// What a node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// The host whose daemon answered.
    ThisHost,
    /// A cluster member, with its state (`alive`, `suspect`, `dead`), or
    /// `static` for a tunnel peer no member has.
    Peer(String),
    /// A network on this host.
    Network,
    /// An endpoint on this host.
    Endpoint,
    /// An endpoint of an overlay network on another host.
    RemoteEndpoint,
}

/// One node: its id, kind and label (one string a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Id.
    pub id: NodeId,
    /// Kind.
    pub kind: NodeKind,
    /// Label lines.
    pub label: Vec<String>,
}

/// What an edge stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// This host has the network.
    HostsNetwork,
    /// The endpoint is on the network.
    Attaches,
    /// This host and the member are in one cluster.
    Member,
    /// The overlay network carries frames to that host.
    Tunnel,
    /// The (remote) endpoint runs on that host.
    RunsOn,
}

/// One edge (undirected; `from` is the side nearer this host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Nearer this host.
    pub from: NodeId,
    /// Farther.
    pub to: NodeId,
    /// Kind.
    pub kind: EdgeKind,
}

/// The picture: nodes in drawing order, edges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Nodes, this host first.
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
}

impl Topology {
    /// The graph of what the daemon answered: `networks` (their details),
    /// and `peers` (None without a cluster).
    pub fn build(networks: &[NetworkView], peers: Option<&PeersView>) -> Topology {
        let mut topology = Topology::default();
        let host = NodeId("host".to_owned());
        let host_label = match peers {
            Some(p) => vec![format!("{} (this host)", p.name), p.address.to_string()],
            None => vec!["this host".to_owned()],
        };
        topology.node(host.clone(), NodeKind::ThisHost, host_label);

        // Members first, so tunnel edges can find them by underlay address.
        let mut members: Vec<&MemberView> = peers
            .map(|p| p.members.iter().collect())
            .unwrap_or_default();
        members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let mut by_underlay: BTreeMap<IpAddr, NodeId> = BTreeMap::new();
        for member in members {
            let id = NodeId(format!("peer:{}", member.id));
            let label = vec![
                member.name.clone(),
                member.address.to_string(),
                member.state.clone(),
            ];
            topology.node(id.clone(), NodeKind::Peer(member.state.clone()), label);
            topology.edge(&host, &id, EdgeKind::Member);
            if let Some(underlay) = member.underlay {
                by_underlay.entry(underlay.ip()).or_insert(id);
            }
        }

        let mut networks: Vec<&NetworkView> = networks.iter().collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        for network in networks {
            let net = NodeId(format!("net:{}", network.name));
            let mut label = vec![format!("{} ({})", network.name, network.driver)];
            let subnets: Vec<&str> = network.subnets.iter().map(|s| s.subnet.as_str()).collect();
            if !subnets.is_empty() {
                label.push(subnets.join(", "));
            }
            if let Some(vni) = network.vni {
                label.push(format!("VNI {vni}"));
            }
            topology.node(net.clone(), NodeKind::Network, label);
            topology.edge(&host, &net, EdgeKind::HostsNetwork);

            let mut endpoints: Vec<&EndpointView> = network.endpoints.iter().collect();
            endpoints.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            for endpoint in endpoints {
                let key = if endpoint.id.is_empty() {
                    &endpoint.name
                } else {
                    &endpoint.id
                };
                let id = NodeId(format!("ep:{}/{key}", network.name));
                topology.node(id.clone(), NodeKind::Endpoint, endpoint_label(endpoint));
                topology.edge(&net, &id, EdgeKind::Attaches);
            }

            let mut remotes: Vec<IpAddr> = network.tunnel.iter().map(|t| t.host).collect();
            remotes.sort();
            remotes.dedup();
            for remote in remotes {
                let peer = topology.peer_at(&by_underlay, remote);
                topology.edge(&net, &peer, EdgeKind::Tunnel);
            }

            // The network's endpoints on other hosts: on the network, and
            // on their host.
            let mut others: Vec<&RemoteEndpointView> = network.remote_endpoints.iter().collect();
            others.sort_by(|a, b| (&a.host, &a.name, &a.mac).cmp(&(&b.host, &b.name, &b.mac)));
            for endpoint in others {
                let id = NodeId(format!("rep:{}/{}", network.name, endpoint.mac));
                let mut label = vec![
                    endpoint
                        .name
                        .clone()
                        .unwrap_or_else(|| "(no name)".to_owned()),
                    endpoint.mac.clone(),
                ];
                label.extend(endpoint.addresses.iter().cloned());
                topology.node(id.clone(), NodeKind::RemoteEndpoint, label);
                topology.edge(&net, &id, EdgeKind::Attaches);
                if let Some(host) = endpoint.host {
                    let peer = topology.peer_at(&by_underlay, host);
                    topology.edge(&peer, &id, EdgeKind::RunsOn);
                }
            }
        }
        topology
    }

    /// The node of the host at underlay address `at`: the member with
    /// that address, or a static peer (made the first time).
    fn peer_at(&mut self, by_underlay: &BTreeMap<IpAddr, NodeId>, at: IpAddr) -> NodeId {
        if let Some(id) = by_underlay.get(&at) {
            return id.clone();
        }
        let id = NodeId(format!("static:{at}"));
        if !self.nodes.iter().any(|n| n.id == id) {
            let label = vec![at.to_string(), "static peer".to_owned()];
            self.node(id.clone(), NodeKind::Peer("static".to_owned()), label);
        }
        id
    }

    fn node(&mut self, id: NodeId, kind: NodeKind, label: Vec<String>) {
        self.nodes.push(Node { id, kind, label });
    }

    fn edge(&mut self, from: &NodeId, to: &NodeId, kind: EdgeKind) {
        self.edges.push(Edge {
            from: from.clone(),
            to: to.clone(),
            kind,
        });
    }

    /// The graph as Graphviz DOT (`dot -Tpng`): this host's networks and
    /// endpoints inside a frame, the other hosts outside it.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        out.push_str("graph weft {\n");
        out.push_str("  rankdir=LR;\n");
        out.push_str(
            "  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\", fontsize=11];\n",
        );
        out.push_str("  edge [color=\"#999999\"];\n");
        let (local, remote): (Vec<&Node>, Vec<&Node>) = self
            .nodes
            .iter()
            .partition(|n| !matches!(n.kind, NodeKind::Peer(_) | NodeKind::RemoteEndpoint));
        out.push_str("  subgraph cluster_host {\n");
        out.push_str("    style=\"rounded\"; color=\"#5b7db1\"; label=\"\";\n");
        for node in local {
            write_dot_node(&mut out, "    ", node);
        }
        out.push_str("  }\n");
        for node in remote {
            write_dot_node(&mut out, "  ", node);
        }
        for edge in &self.edges {
            let style = match edge.kind {
                EdgeKind::Tunnel => " [style=dashed, label=\"vxlan\", color=\"#5b7db1\"]",
                EdgeKind::Member => " [style=dotted]",
                EdgeKind::RunsOn => " [color=\"#5b7db1\"]",
                EdgeKind::HostsNetwork | EdgeKind::Attaches => "",
            };
            let _ = writeln!(
                out,
                "  {} -- {}{style};",
                dot_quote(&edge.from.0),
                dot_quote(&edge.to.0)
            );
        }
        out.push_str("}\n");
        out
    }

    /// The graph laid out and drawn as SVG by `layout-rs`, top to bottom.
    pub fn to_svg(&self) -> String {
        use layout::backends::svg::SVGWriter;
        use layout::core::base::Orientation;
        use layout::core::color::Color;
        use layout::core::style::{LineStyleKind, StyleAttr};
        use layout::std_shapes::render::get_shape_size;
        use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
        use layout::topo::layout::VisualGraph;

        const FONT_SIZE: usize = 14;
        let orientation = Orientation::TopToBottom;
        let mut graph = VisualGraph::new(orientation);
        let mut handles = BTreeMap::new();
        for node in &self.nodes {
            let (fill, stroke) = colours(&node.kind);
            let shape = ShapeKind::new_box(&node.label.join("\n"));
            let look = StyleAttr::new(
                Color::fast(stroke),
                2,
                Some(Color::fast(fill)),
                8,
                FONT_SIZE,
            );
            // Shapes are sized in the flipped orientation (as layout-rs's
            // own DOT builder does).
            let size = get_shape_size(orientation.flip(), &shape, FONT_SIZE, false);
            let handle = graph.add_node(Element::create(shape, look, orientation.flip(), size));
            handles.insert(node.id.clone(), handle);
        }
        for edge in &self.edges {
            let (Some(&from), Some(&to)) = (handles.get(&edge.from), handles.get(&edge.to)) else {
                continue;
            };
            let (style, text, colour) = match edge.kind {
                EdgeKind::Tunnel => (LineStyleKind::Dashed, "vxlan", "#5b7db1"),
                EdgeKind::Member => (LineStyleKind::Dotted, "", "#999999"),
                EdgeKind::RunsOn => (LineStyleKind::Normal, "", "#5b7db1"),
                EdgeKind::HostsNetwork | EdgeKind::Attaches => {
                    (LineStyleKind::Normal, "", "#999999")
                }
            };
            let look = StyleAttr::new(Color::fast(colour), 2, None, 0, FONT_SIZE);
            let arrow = Arrow::new(
                LineEndKind::None,
                LineEndKind::None,
                style,
                text,
                &look,
                &None,
                &None,
            );
            graph.add_edge(arrow, from, to);
        }
        let mut svg = SVGWriter::new();
        graph.do_it(false, false, false, &mut svg);
        svg.finalize()
    }
}

/// Fill and stroke of a node, the page's colours (`web.html`).
fn colours(kind: &NodeKind) -> (&'static str, &'static str) {
    match kind {
        NodeKind::ThisHost => ("#eef3fb", "#5b7db1"),
        NodeKind::Network => ("#f4faee", "#6a9f3c"),
        NodeKind::Endpoint => ("#ffffff", "#888888"),
        NodeKind::RemoteEndpoint => ("#f7f9fc", "#5b7db1"),
        NodeKind::Peer(state) => match state.as_str() {
            "alive" => ("#e8f6e8", "#3c8c3c"),
            "suspect" => ("#fff6dd", "#b8860b"),
            "dead" => ("#fbe9e9", "#bb3333"),
            _ => ("#f2f2f2", "#777777"),
        },
    }
}

/// An endpoint's label: name; interface and MAC; one address a line.
fn endpoint_label(endpoint: &EndpointView) -> Vec<String> {
    let mut label = vec![endpoint.name.clone()];
    let link: Vec<&str> = [Some(endpoint.ifname.as_str()), endpoint.mac.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    if !link.is_empty() {
        label.push(link.join(" "));
    }
    label.extend(endpoint.addresses.iter().cloned());
    label
}

fn write_dot_node(out: &mut String, indent: &str, node: &Node) {
    let (fill, stroke) = colours(&node.kind);
    let label = node.label.join("\n");
    let _ = writeln!(
        out,
        "{indent}{} [label={}, fillcolor=\"{fill}\", color=\"{stroke}\"];",
        dot_quote(&node.id.0),
        dot_quote(&label)
    );
}

/// `text` as a DOT quoted string: `"` and `\` escaped, a line break as
/// DOT's `\n` (centred line), other control characters dropped.
pub fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Read the daemon's state and write the picture.
///
/// # Errors
///
/// The daemon is unreachable or refused a network's details, or the file
/// could not be written.
pub async fn run(client: &Client, args: GraphArgs) -> Result<()> {
    let list: Vec<NetworkView> = client
        .call(Method::GET, "/v1/networks", None::<&()>)
        .await?;
    let mut networks = Vec::with_capacity(list.len());
    for network in list {
        let path = network_path(&network.name, "");
        match client
            .call::<(), NetworkView>(Method::GET, &path, None)
            .await
        {
            Ok(details) => networks.push(details),
            // Removed between the list and now: not in the picture.
            Err(e) if e.downcast_ref::<Refusal>().is_some_and(|r| r.status == 404) => {}
            Err(e) => return Err(e.context(format!("reading network {}", network.name))),
        }
    }
    // A refusal here means no cluster (`--join`/`--listen` not given).
    let peers: Option<PeersView> = match client.call(Method::GET, "/v1/peers", None::<&()>).await {
        Ok(peers) => Some(peers),
        Err(e) if e.is::<Refusal>() => None,
        Err(e) => return Err(e),
    };
    let topology = Topology::build(&networks, peers.as_ref());
    let text = match args.format.as_str() {
        "svg" => topology.to_svg(),
        _ => topology.to_dot(),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
        }
        None => std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
            .context("writing stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Vec<NetworkView>, PeersView) {
        let networks: Vec<NetworkView> = serde_json::from_value(serde_json::json!([
            {
                "name": "ov", "id": "x", "driver": "overlay", "scope": "cluster", "vni": 4100,
                "subnets": [{"subnet": "10.250.0.0/24", "gateway": "10.250.0.1"}],
                "internal": false, "mtu": 1450,
                "endpoints": [],
                "tunnel": [{"host": "192.0.2.2", "rx_frames": 1}, {"host": "192.0.2.9"}],
                "remote_endpoints": [
                    {"name": "web", "mac": "02:42:0a:fa:00:05", "addresses": ["10.250.0.5"],
                     "host": "192.0.2.2"}
                ]
            },
            {
                "name": "app", "id": "y", "driver": "bridge", "scope": "local",
                "subnets": [{"subnet": "10.240.1.0/24", "gateway": "10.240.1.1"}],
                "internal": false, "mtu": 1500,
                "endpoints": [
                    {"id": "e2", "network": "app", "sandbox": "/var/run/netns/b", "name": "beta",
                     "ifname": "eth0", "mac": "02:42:0a:f0:01:03", "addresses": ["10.240.1.3/24"],
                     "counters": {"rx_frames": 5}},
                    {"id": "e1", "network": "app", "sandbox": "/var/run/netns/a", "name": "al\"pha",
                     "ifname": "eth0", "mac": "02:42:0a:f0:01:02",
                     "addresses": ["10.240.1.2/24", "fd00::2/64"]}
                ]
            }
        ]))
        .expect("fixture networks");
        let peers: PeersView = serde_json::from_value(serde_json::json!({
            "id": "aa", "name": "h1", "address": "192.0.2.1:7946",
            "members": [
                {"id": "cc", "name": "h3", "address": "192.0.2.3:7946", "state": "dead"},
                {"id": "bb", "name": "h2", "address": "192.0.2.2:7946",
                 "underlay": "192.0.2.2:4789", "state": "alive"}
            ],
            "tunnel": {"rx": 0, "tx": 0}, "gossip": {}
        }))
        .expect("fixture peers");
        (networks, peers)
    }

    fn id(s: &str) -> NodeId {
        NodeId(s.to_owned())
    }

    fn find<'a>(t: &'a Topology, node: &str) -> &'a Node {
        t.nodes
            .iter()
            .find(|n| n.id.0 == node)
            .unwrap_or_else(|| panic!("no node {node} in {t:#?}"))
    }

    #[test]
    fn build_makes_hosts_networks_endpoints_and_their_links() {
        let (networks, peers) = fixture();
        let t = Topology::build(&networks, Some(&peers));
        let ids: Vec<&str> = t.nodes.iter().map(|n| n.id.0.as_str()).collect();
        assert_eq!(
            ids,
            [
                "host",
                "peer:bb",
                "peer:cc",
                "net:app",
                "ep:app/e1",
                "ep:app/e2",
                "net:ov",
                "static:192.0.2.9",
                "rep:ov/02:42:0a:fa:00:05",
            ]
        );
        assert_eq!(
            find(&t, "rep:ov/02:42:0a:fa:00:05").label,
            ["web", "02:42:0a:fa:00:05", "10.250.0.5"]
        );
        assert_eq!(find(&t, "host").label, ["h1 (this host)", "192.0.2.1:7946"]);
        assert_eq!(find(&t, "host").kind, NodeKind::ThisHost);
        assert_eq!(find(&t, "peer:cc").kind, NodeKind::Peer("dead".into()));
        assert_eq!(find(&t, "peer:bb").label, ["h2", "192.0.2.2:7946", "alive"]);
        assert_eq!(find(&t, "net:app").label, ["app (bridge)", "10.240.1.0/24"]);
        assert_eq!(
            find(&t, "net:ov").label,
            ["ov (overlay)", "10.250.0.0/24", "VNI 4100"]
        );
        assert_eq!(
            find(&t, "ep:app/e1").label,
            [
                "al\"pha",
                "eth0 02:42:0a:f0:01:02",
                "10.240.1.2/24",
                "fd00::2/64"
            ]
        );
        assert_eq!(find(&t, "ep:app/e2").kind, NodeKind::Endpoint);
        assert_eq!(
            find(&t, "static:192.0.2.9").kind,
            NodeKind::Peer("static".into())
        );

        let edge = |from: &str, to: &str, kind| Edge {
            from: id(from),
            to: id(to),
            kind,
        };
        assert_eq!(
            t.edges,
            [
                edge("host", "peer:bb", EdgeKind::Member),
                edge("host", "peer:cc", EdgeKind::Member),
                edge("host", "net:app", EdgeKind::HostsNetwork),
                edge("net:app", "ep:app/e1", EdgeKind::Attaches),
                edge("net:app", "ep:app/e2", EdgeKind::Attaches),
                edge("host", "net:ov", EdgeKind::HostsNetwork),
                // The member whose underlay is the tunnel's host.
                edge("net:ov", "peer:bb", EdgeKind::Tunnel),
                edge("net:ov", "static:192.0.2.9", EdgeKind::Tunnel),
                // h2's endpoint: on the network, and on h2.
                edge("net:ov", "rep:ov/02:42:0a:fa:00:05", EdgeKind::Attaches),
                edge("peer:bb", "rep:ov/02:42:0a:fa:00:05", EdgeKind::RunsOn),
            ]
        );
    }

    #[test]
    fn without_a_cluster_only_this_host() {
        let (networks, _) = fixture();
        let t = Topology::build(&networks[1..], None);
        assert_eq!(find(&t, "host").label, ["this host"]);
        assert!(!t.nodes.iter().any(|n| matches!(n.kind, NodeKind::Peer(_))));
        assert_eq!(t.edges.len(), 3);
        let empty = Topology::build(&[], None);
        assert_eq!(empty.nodes.len(), 1);
        assert!(empty.edges.is_empty());
    }

    #[test]
    fn dot_quote_escapes_quotes_backslashes_and_line_breaks() {
        assert_eq!(dot_quote("plain"), "\"plain\"");
        assert_eq!(dot_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(dot_quote("a\\b"), "\"a\\\\b\"");
        assert_eq!(dot_quote("\\\""), "\"\\\\\\\"\"");
        assert_eq!(dot_quote("one\ntwo"), "\"one\\ntwo\"");
        assert_eq!(dot_quote("bell\u{7}"), "\"bell\"");
    }

    #[test]
    fn dot_has_every_node_and_edge_with_escaped_labels() {
        let (networks, peers) = fixture();
        let dot = Topology::build(&networks, Some(&peers)).to_dot();
        assert!(
            dot.starts_with("graph weft {\n") && dot.ends_with("}\n"),
            "{dot}"
        );
        assert!(
            dot.contains(
                "\"ep:app/e1\" [label=\"al\\\"pha\\neth0 02:42:0a:f0:01:02\\n10.240.1.2/24\\nfd00::2/64\""
            ),
            "{dot}"
        );
        assert!(dot.contains("\"net:app\" -- \"ep:app/e2\";"), "{dot}");
        assert!(
            dot.contains("\"net:ov\" -- \"peer:bb\" [style=dashed"),
            "{dot}"
        );
        assert!(
            dot.contains("\"host\" -- \"peer:cc\" [style=dotted]"),
            "{dot}"
        );
        // Peers outside this host's frame, the rest inside.
        let (inside, outside) = dot.split_once("  }\n").expect("the cluster_host subgraph");
        assert!(inside.contains("\"net:ov\" [") && !inside.contains("\"peer:bb\" ["));
        assert!(outside.contains("\"peer:bb\" ["));
        // Every quote in the text is either a delimiter or escaped: the
        // DOT strings balance on each line.
        for line in dot.lines() {
            let unescaped = line.replace("\\\\", "").replace("\\\"", "");
            assert_eq!(unescaped.matches('"').count() % 2, 0, "{line}");
        }
    }

    #[test]
    fn svg_draws_every_label_escaped() {
        let (networks, peers) = fixture();
        let svg = Topology::build(&networks, Some(&peers)).to_svg();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        for text in [
            "h1 (this host)",
            "app (bridge)",
            "al&quot;pha",
            "eth0 02:42:0a:f0:01:03",
            "10.240.1.3/24",
            "VNI 4100",
            "h2",
            "vxlan",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        assert!(!svg.contains("al\"pha"));
        // One node alone lays out too.
        assert!(Topology::build(&[], None).to_svg().contains("this host"));
    }
}
