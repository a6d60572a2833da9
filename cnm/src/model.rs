//! The CNM objects as weft stores and shows them: networks and endpoints.
//! A sandbox is not stored on its own: it is the namespace path its
//! endpoints name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_datapath::published::L4Proto;
use weft_vswitch::{BandwidthLimit, MacAddr};

/// Default MTU of a local network's sandbox interfaces: Ethernet's 1500,
/// chosen by measurement against pasta's 65520 (`weft-bench nat`,
/// bench/RESULTS.md). Between sandboxes offloads make the MTU matter
/// little (64 KiB segments cross TAP to TAP whatever it is), and through
/// the TCP relay they do too: the sandbox's TSO segments enter the relay
/// whole and the relay's 64 KiB segments reach the sandbox as GSO frames.
/// Measured in one run: outbound 9.5 Gbit/s at 1500 vs 9.8 at 65520,
/// inbound through a published port 12.6 vs 11.1; so the MTU every
/// network and tool expects wins. `--mtu 65520` is there for who wants it.
pub const DEFAULT_MTU: u32 = 1500;

/// Default MTU of an overlay network's sandbox interfaces: Ethernet's less
/// what VXLAN over IPv4 adds (50 bytes), as Linux's `vxlan` does.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;

/// An encrypted overlay network's MTU: QUIC's header, frame and tag take
/// 38 bytes more than VXLAN's UDP (1500 - 88 = 1412).
// 88 fits a u32.
#[allow(clippy::cast_possible_truncation)]
pub const DEFAULT_ENCRYPTED_OVERLAY_MTU: u32 = 1500 - weft_overlay::quic::OVERHEAD_V4 as u32;

/// Lowest MTU accepted (IPv4's minimum is 68; IPv6 needs 1280, enforced when
/// a network has an IPv6 subnet).
pub const MIN_MTU: u32 = 68;

/// Largest MTU accepted: a TAP frame must fit the data path's 64 KiB
/// buffer.
pub const MAX_MTU: u32 = 65520;

/// A network driver (Docker's CNM names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// No interface but loopback.
    Null,
    /// The sandbox is the host's own namespace: bookkeeping only.
    Host,
    /// A local L2 network switched in userspace by weft.
    Bridge,
    /// A cluster-wide L2 network: switched by weft on every host, carried
    /// between hosts in VXLAN.
    Overlay,
    /// Sandboxes as hosts of a real LAN: switched by weft, with the parent
    /// interface's LAN as one more port (see `crate::macvlan_driver`).
    Macvlan,
    /// As `Macvlan`, but every sandbox shows the parent's MAC on the LAN
    /// (ipvlan L2 mode: a parent that takes one MAC, such as Wi-Fi).
    Ipvlan,
}

/// Local (this host) or cluster (every host of the gossip cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This host only.
    Local,
    /// Every host of the gossip cluster.
    Cluster,
}

/// One subnet of a network, as shown by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// The subnet (CIDR).
    pub subnet: IpNet,
    /// The gateway's address in it.
    pub gateway: IpAddr,
    /// The part of the subnet dynamic addresses come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// Random 64-hex-digit id, like Docker's.
    pub id: String,
    /// Its driver.
    pub driver: DriverKind,
    /// Its scope.
    pub scope: Scope,
    /// Its subnets (none for `null` and `host`).
    pub subnets: Vec<SubnetInfo>,
    /// No way out of the network (no NAT).
    pub internal: bool,
    /// MTU of the sandbox interfaces.
    pub mtu: u32,
    /// Driver options (`--opt K=V`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Labels (`--label K=V`), the creating host's only: an overlay
    /// network's record does not carry them to other hosts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// The VXLAN network identifier of an overlay network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<weft_vswitch::Vni>,
    /// Addresses never handed out (`--aux-address NAME=IP`): other hosts
    /// of the LAN a macvlan network shares, or anything else the user
    /// keeps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

impl Network {
    /// Where the network's sandboxes ask DNS: the gateway's addresses,
    /// or for a macvlan network (whose gateway is the LAN's router) the
    /// address weft's DNS answers on, `--opt dns_address`.
    pub fn dns_addresses(&self) -> Vec<IpAddr> {
        if self.driver.has_uplink() {
            return self
                .options
                .get(crate::macvlan_driver::DNS_ADDRESS_OPTION)
                .and_then(|a| a.parse().ok())
                .into_iter()
                .collect();
        }
        self.subnets.iter().map(|s| s.gateway).collect()
    }
}

/// An endpoint: one network's interface inside one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Random id.
    pub id: String,
    /// The network's name.
    pub network: String,
    /// The sandbox's network-namespace path.
    pub sandbox: PathBuf,
    /// DNS name.
    pub name: String,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Interface name inside the sandbox (`eth0`, ...); `lo` for the `null`
    /// driver, empty for `host`.
    pub ifname: String,
    /// What the endpoint's switch port is: a TAP in a sandbox, or a VM's
    /// stream socket (then `sandbox` is the socket's path and `ifname` is
    /// empty: the interface is the guest's).
    #[serde(default)]
    pub kind: EndpointKind,
    /// The interface's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Its addresses with the subnet's prefix length.
    pub addresses: Vec<IpNet>,
    /// The per-namespace resolv.conf weft wrote for it, removed when it
    /// leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    /// Its published ports, with the host port really bound (see
    /// [`PortMapping`]).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Labels the connect asked to keep (see `ConnectRequest::labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its bandwidth limits (see `ConnectRequest::bandwidth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthLimit>,
    /// The interface name a new endpoint asked for (`ConnectRequest::ifname`);
    /// None picks the first free `ethN`. Not stored: once joined, `ifname`
    /// holds the name.
    #[serde(skip)]
    pub requested_ifname: Option<String>,
    /// Docker's names of the endpoint when Docker made it through the
    /// plugin (see `crate::docker_plugin`): its TAP is made in the
    /// daemon's namespace for Docker to move, and its addresses belong to
    /// the plugin, not to this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerAttachment>,
}

/// What an endpoint's switch port is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// A TAP inside the sandbox's network namespace.
    #[default]
    Tap,
    /// A Unix stream socket a VM connects to (QEMU `-netdev stream`,
    /// 4-byte length-prefixed frames): `weft vm`.
    Stream,
    /// A Unix datagram socket a VM sends to, a frame per datagram (QEMU
    /// `-netdev dgram`): `weft vm --dgram`.
    Dgram,
}

impl EndpointKind {
    /// The name `inspect` shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Tap => "tap",
            EndpointKind::Stream => "stream",
            EndpointKind::Dgram => "dgram",
        }
    }

    /// Whether the endpoint's port is a VM's socket (at the path in its
    /// `sandbox`) rather than a TAP.
    pub const fn is_vm_socket(self) -> bool {
        matches!(self, EndpointKind::Stream | EndpointKind::Dgram)
    }
}

/// The Docker side of an endpoint made through the Docker plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerAttachment {
    /// Docker's network id (`docker network ls` shows its first 12 digits).
    pub network_id: String,
    /// Docker's endpoint id (`docker network inspect` shows it).
    pub endpoint_id: String,
    /// The TAP's name in the daemon's namespace before Docker moved it
    /// into the container (and renamed it `ethN`).
    pub src_name: String,
}

/// A driver name that is not one of weft's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown driver {0:?}: use bridge, overlay, macvlan, ipvlan, host or null")]
pub struct UnknownDriver(pub String);

impl DriverKind {
    /// The name users type.
    pub const fn as_str(self) -> &'static str {
        match self {
            DriverKind::Null => "null",
            DriverKind::Host => "host",
            DriverKind::Bridge => "bridge",
            DriverKind::Overlay => "overlay",
            DriverKind::Macvlan => "macvlan",
            DriverKind::Ipvlan => "ipvlan",
        }
    }

    /// Whether the driver gives endpoints addresses and interfaces.
    pub const fn has_interfaces(self) -> bool {
        matches!(
            self,
            DriverKind::Bridge | DriverKind::Overlay | DriverKind::Macvlan | DriverKind::Ipvlan
        )
    }

    /// Whether the driver's networks join a parent interface's LAN
    /// (macvlan, ipvlan): the LAN's router is their gateway.
    pub const fn has_uplink(self) -> bool {
        matches!(self, DriverKind::Macvlan | DriverKind::Ipvlan)
    }

    /// The scope of the driver's networks.
    pub const fn scope(self) -> Scope {
        match self {
            DriverKind::Overlay => Scope::Cluster,
            DriverKind::Null
            | DriverKind::Host
            | DriverKind::Bridge
            | DriverKind::Macvlan
            | DriverKind::Ipvlan => Scope::Local,
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriverKind {
    type Err = UnknownDriver;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "null" | "none" => Ok(DriverKind::Null),
            "host" => Ok(DriverKind::Host),
            "bridge" => Ok(DriverKind::Bridge),
            "overlay" => Ok(DriverKind::Overlay),
            "macvlan" => Ok(DriverKind::Macvlan),
            "ipvlan" => Ok(DriverKind::Ipvlan),
            other => Err(UnknownDriver(other.to_owned())),
        }
    }
}

impl Scope {
    /// `local` or `cluster`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Cluster => "cluster",
        }
    }
}

impl Network {
    /// The short id shown in tables (12 hex digits, like Docker).
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// `ip` with the prefix length of the subnet holding it (a host
    /// prefix when no subnet of the network holds it).
    pub fn address_with_prefix(&self, ip: IpAddr) -> IpNet {
        let prefix = self
            .subnets
            .iter()
            .find(|s| s.subnet.contains(&ip))
            .map_or(if ip.is_ipv4() { 32 } else { 128 }, |s| {
                s.subnet.prefix_len()
            });
        // The prefix comes from a subnet of the same family, so it is valid.
        IpNet::new(ip, prefix).unwrap_or_else(|_| IpNet::from(ip))
    }
}

impl Endpoint {
    /// The endpoint's IPv4 address, if any.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The endpoint's first IPv6 address, if any.
    pub fn ipv6(&self) -> Option<std::net::Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }

    /// Where a published port of this endpoint listens on the host and
    /// where it leads in the sandbox: the family is the host address's,
    /// or IPv4 without one (IPv6 for an endpoint that has only IPv6).
    /// None when the endpoint has no address of that family.
    pub fn publish_addrs(&self, mapping: &PortMapping) -> Option<(SocketAddr, SocketAddr)> {
        let v6 = match mapping.host_ip {
            Some(ip) => ip.is_ipv6(),
            None => self.ipv4().is_none(),
        };
        let target: IpAddr = if v6 {
            self.ipv6()?.into()
        } else {
            self.ipv4()?.into()
        };
        let host = mapping.host_ip.unwrap_or(if v6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        });
        Some((
            SocketAddr::new(host, mapping.host_port),
            SocketAddr::new(target, mapping.container_port),
        ))
    }
}

impl Endpoint {
    /// Every host socket a published port listens on, each with where it
    /// leads: [`Endpoint::publish_addrs`], and for a mapping without a
    /// host address on an endpoint with both families, also `[::]` (bound
    /// IPv6-only) leading to its IPv6 address, so the port is dual-stack
    /// and each client still reaches the sandbox from its own address.
    /// Empty when the endpoint has no address of the mapping's family.
    pub fn publish_listens(&self, mapping: &PortMapping) -> Vec<(SocketAddr, SocketAddr)> {
        let mut all: Vec<_> = self.publish_addrs(mapping).into_iter().collect();
        if let (None, Some(_), Some(v6)) = (mapping.host_ip, self.ipv4(), self.ipv6()) {
            all.push((
                SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    mapping.host_port,
                ),
                SocketAddr::new(IpAddr::V6(v6), mapping.container_port),
            ));
        }
        all
    }
}

/// The transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    /// TCP connections (the default, as in Docker).
    #[default]
    Tcp,
    /// UDP datagrams.
    Udp,
}

impl PortProto {
    /// `tcp` or `udp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

impl From<PortProto> for L4Proto {
    fn from(proto: PortProto) -> L4Proto {
        match proto {
            PortProto::Tcp => L4Proto::Tcp,
            PortProto::Udp => L4Proto::Udp,
        }
    }
}

/// A published port (`-p [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`, Docker's
/// syntax): the daemon listens on `host_ip:host_port` and relays into the
/// sandbox's `container_port`.
///
/// Host port 0 lets the kernel choose; the endpoint stores the port that
/// was really bound, so `inspect` shows it and a restart binds it again.
/// No host address means every IPv4 address of the host (`0.0.0.0`), or
/// every IPv6 address for an endpoint that has only IPv6.
///
/// In JSON it is either the `-p` text (`"127.0.0.1:8080:80/tcp"`) or an
/// object with the fields below; it is written as the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortMapping {
    /// The host address to listen on (None: all of one family).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The host port (0: the kernel picks one).
    pub host_port: u16,
    /// The port inside the sandbox (1-65535).
    pub container_port: u16,
    /// TCP or UDP.
    pub proto: PortProto,
}

/// Why a `-p` text or a port mapping is not valid; the message quotes it
/// and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("-p {spec}: {reason}")]
pub struct PortMappingError {
    /// The text as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

const PORT_SYNTAX: &str =
    "write [HOSTIP:]HOSTPORT:PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8053:53/udp";

impl PortMapping {
    /// Check the ranges (for a mapping that came as JSON fields).
    ///
    /// # Errors
    ///
    /// [`PortMappingError`] when the container port is 0.
    pub fn validate(&self) -> Result<(), PortMappingError> {
        if self.container_port == 0 {
            return Err(PortMappingError {
                spec: self.to_string(),
                reason: "container port must be a number 1-65535".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V4(v4)) => write!(f, "{v4}:")?,
            Some(IpAddr::V6(v6)) => write!(f, "[{v6}]:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

impl FromStr for PortMapping {
    type Err = PortMappingError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| PortMappingError {
            spec: spec.to_owned(),
            reason,
        };
        let (ports, proto) = match spec.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, PortProto::Tcp),
            Some((ports, "udp")) => (ports, PortProto::Udp),
            Some((_, other)) => {
                return Err(fail(format!(
                    "unknown protocol {other:?}: use /tcp or /udp"
                )))
            }
            None => (spec, PortProto::Tcp),
        };
        // The host address, if any, is everything before the last two
        // `:`-separated fields; IPv6 addresses come in brackets.
        let (host_ip, rest) = if let Some(bracketed) = ports.strip_prefix('[') {
            let Some((ip, rest)) = bracketed.split_once(']') else {
                return Err(fail(format!(
                    "no ']' after the IPv6 address: {PORT_SYNTAX}"
                )));
            };
            let Some(rest) = rest.strip_prefix(':') else {
                return Err(fail(format!("':' expected after ']': {PORT_SYNTAX}")));
            };
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| fail(format!("{ip:?} is not an IPv6 address")))?;
            (Some(IpAddr::V6(ip)), rest)
        } else {
            match ports.matches(':').count() {
                0 | 1 => (None, ports),
                2 => {
                    let (ip, rest) = ports.split_once(':').unwrap_or_default();
                    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                        fail(format!(
                            "host address {ip:?} is not an IPv4 address (put IPv6 addresses in brackets: [::1]:8080:80)"
                        ))
                    })?;
                    (Some(IpAddr::V4(ip)), rest)
                }
                _ => {
                    return Err(fail(format!(
                    "too many ':' (put IPv6 addresses in brackets: [::1]:8080:80); {PORT_SYNTAX}"
                )))
                }
            }
        };
        // `-p 80` (Docker's syntax too): the kernel picks the host port.
        // With a host address the host port is needed (`IP:HOSTPORT:PORT`).
        let (host, container) = match rest.split_once(':') {
            Some(pair) => pair,
            None if host_ip.is_none() => ("0", rest),
            None => {
                return Err(fail(format!(
                    "both the host port and the container port are needed after a host address (use host port 0 to let the kernel pick one); {PORT_SYNTAX}"
                )))
            }
        };
        if container.contains(':') {
            return Err(fail(format!("too many ':'; {PORT_SYNTAX}")));
        }
        let host_port: u16 = parse_port(host).ok_or_else(|| {
            fail("host port must be a number 0-65535 (0: the kernel picks one)".into())
        })?;
        let container_port: u16 = parse_port(container)
            .filter(|p| *p != 0)
            .ok_or_else(|| fail("container port must be a number 1-65535".into()))?;
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            proto,
        })
    }
}

/// A decimal port number (no sign, no blanks).
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The object form, with the same names as the output.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            host_ip: Option<IpAddr>,
            host_port: u16,
            container_port: u16,
            #[serde(default)]
            proto: PortProto,
        }

        struct MappingVisitor;

        impl<'de> serde::de::Visitor<'de> for MappingVisitor {
            type Value = PortMapping;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port mapping: \"[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]\" or {\"host_port\":..,\"container_port\":..}")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PortMapping, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PortMapping, A::Error> {
                let fields =
                    Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let mapping = PortMapping {
                    host_ip: fields.host_ip,
                    host_port: fields.host_port,
                    container_port: fields.container_port,
                    proto: fields.proto,
                };
                mapping.validate().map_err(serde::de::Error::custom)?;
                Ok(mapping)
            }
        }

        deserializer.deserialize_any(MappingVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PortMapping {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn error(text: &str) -> String {
        match text.parse::<PortMapping>() {
            Ok(m) => panic!("{text:?} should not parse, got {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn docker_port_syntax_parses() {
        let m = parse("8080:80");
        assert_eq!(
            m,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: PortProto::Tcp
            }
        );
        assert_eq!(parse("8080:80/udp").proto, PortProto::Udp);
        assert_eq!(parse("8080:80/tcp").proto, PortProto::Tcp);
        let m = parse("127.0.0.1:8080:80/tcp");
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        let m = parse("[::1]:8080:80");
        assert_eq!(m.host_ip, Some("::1".parse().unwrap()));
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        assert_eq!(parse("0:53/udp").host_port, 0);
        assert_eq!(parse("65535:65535").host_port, 65535);
        // Docker's `-p 80`: a host port the kernel picks.
        let m = parse("80");
        assert_eq!((m.host_ip, m.host_port, m.container_port), (None, 0, 80));
        assert_eq!(parse("53/udp").proto, PortProto::Udp);
    }

    #[test]
    fn display_is_the_same_syntax() {
        for text in [
            "8080:80/tcp",
            "8080:80/udp",
            "127.0.0.1:8080:80/tcp",
            "[::1]:8080:80/udp",
            "[fd00::1]:0:53/udp",
        ] {
            assert_eq!(parse(text).to_string(), text);
            assert_eq!(parse(&parse(text).to_string()), parse(text));
        }
        assert_eq!(parse("8080:80").to_string(), "8080:80/tcp");
    }

    #[test]
    fn bad_port_texts_say_what_is_wrong() {
        let e = error("80x:80");
        assert!(
            e.starts_with("-p 80x:80: host port must be a number"),
            "{e}"
        );
        let e = error("8080:0");
        assert!(e.contains("container port must be a number 1-65535"), "{e}");
        let e = error("8080:70000");
        assert!(e.contains("container port"), "{e}");
        let e = error("65536:80");
        assert!(e.contains("host port"), "{e}");
        let e = error("[::1]:80");
        assert!(
            e.contains("both the host port and the container port"),
            "{e}"
        );
        let e = error("8080:80/sctp");
        assert!(e.contains("unknown protocol \"sctp\""), "{e}");
        let e = error("::1:8080:80");
        assert!(e.contains("brackets"), "{e}");
        let e = error("1.2.3:8080:80");
        assert!(e.contains("not an IPv4 address"), "{e}");
        let e = error("[::1:8080:80");
        assert!(e.contains("']'"), "{e}");
        let e = error("[1.2.3.4]:8080:80");
        assert!(e.contains("not an IPv6 address"), "{e}");
        assert!(error("+80:80").contains("host port"));
        assert!(error(":80").contains("host port"));
        assert!(error("").contains("container port"));
    }

    #[test]
    fn published_ports_listen_and_lead_in_one_family() {
        let mut endpoint = Endpoint {
            id: "e".into(),
            network: "n".into(),
            sandbox: "/var/run/netns/s".into(),
            name: "s".into(),
            aliases: Vec::new(),
            ifname: String::new(),
            kind: EndpointKind::Tap,
            mac: None,
            addresses: vec![
                "10.1.0.2/24".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            resolv_conf: None,
            ports: Vec::new(),
            labels: BTreeMap::new(),
            bandwidth: None,
            requested_ifname: None,
            docker: None,
        };
        let addrs = |e: &Endpoint, spec: &str| {
            e.publish_addrs(&parse(spec))
                .map(|(h, t)| (h.to_string(), t.to_string()))
        };
        assert_eq!(
            addrs(&endpoint, "8080:80"),
            Some(("0.0.0.0:8080".into(), "10.1.0.2:80".into()))
        );
        assert_eq!(
            addrs(&endpoint, "127.0.0.1:8080:80"),
            Some(("127.0.0.1:8080".into(), "10.1.0.2:80".into()))
        );
        assert_eq!(
            addrs(&endpoint, "[::1]:8080:80/udp"),
            Some(("[::1]:8080".into(), "[fd00::2]:80".into()))
        );
        let listens = |e: &Endpoint, spec: &str| -> Vec<String> {
            e.publish_listens(&parse(spec))
                .iter()
                .map(|(h, t)| format!("{h}>{t}"))
                .collect()
        };
        assert_eq!(
            listens(&endpoint, "8080:80"),
            ["0.0.0.0:8080>10.1.0.2:80", "[::]:8080>[fd00::2]:80"]
        );
        assert_eq!(
            listens(&endpoint, "127.0.0.1:8080:80"),
            ["127.0.0.1:8080>10.1.0.2:80"]
        );
        endpoint.addresses.truncate(1);
        assert_eq!(listens(&endpoint, "8080:80"), ["0.0.0.0:8080>10.1.0.2:80"]);
        assert_eq!(addrs(&endpoint, "[::1]:8080:80"), None);
        endpoint.addresses = vec!["fd00::2/64".parse().unwrap()];
        assert_eq!(
            addrs(&endpoint, "8080:80"),
            Some(("[::]:8080".into(), "[fd00::2]:80".into()))
        );
        assert_eq!(addrs(&endpoint, "127.0.0.1:8080:80"), None);
    }

    #[test]
    fn json_takes_text_or_fields_and_writes_fields() {
        let from_text: Vec<PortMapping> =
            serde_json::from_str(r#"["127.0.0.1:8080:80/udp"]"#).unwrap();
        let from_fields: Vec<PortMapping> = serde_json::from_str(
            r#"[{"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"proto":"udp"}]"#,
        )
        .unwrap();
        assert_eq!(from_text, from_fields);
        let written = serde_json::to_value(from_text[0]).unwrap();
        assert_eq!(
            written,
            serde_json::json!({"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"proto":"udp"})
        );
        let round: PortMapping = serde_json::from_value(written).unwrap();
        assert_eq!(round, from_text[0]);
        let defaulted: PortMapping =
            serde_json::from_str(r#"{"host_port":1,"container_port":2}"#).unwrap();
        assert_eq!((defaulted.host_ip, defaulted.proto), (None, PortProto::Tcp));
        let bad = serde_json::from_str::<PortMapping>(r#""80x:80""#).unwrap_err();
        assert!(
            bad.to_string().contains("host port must be a number"),
            "{bad}"
        );
        assert!(
            serde_json::from_str::<PortMapping>(r#"{"host_port":1,"container_port":0}"#).is_err()
        );
        assert!(serde_json::from_str::<PortMapping>(
            r#"{"host_port":1,"container_port":2,"bogus":3}"#
        )
        .is_err());
        assert!(serde_json::from_str::<PortMapping>("80").is_err());
    }
}
