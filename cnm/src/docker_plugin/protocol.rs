//! The JSON of Docker's plugin protocol: the bodies of the calls Docker
//! makes to a remote network driver (`NetworkDriver.*`, libnetwork's
//! `docs/remote.md`) and a remote IPAM driver (`IpamDriver.*`,
//! `docs/ipam.md`), and the answers.
//!
//! Field names are Docker's (Go's exported names: `NetworkID`, `IPv4Data`,
//! `PoolID`, ...). Requests accept fields this build does not know (a
//! newer Docker may send more) and `null` where Docker's Go code may send
//! a nil map or slice. Every body is parsed here with serde; a body that
//! does not parse is answered with HTTP 400 and serde's message (see
//! [`super::parse_body`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Docker's option carrying `-o K=V` (a map of strings).
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// Docker's option: `--ipv6`.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// Docker's option: `--internal`.
pub const INTERNAL: &str = "com.docker.network.internal";
/// Docker's `-o` key for the MTU.
pub const DRIVER_MTU: &str = "com.docker.network.driver.mtu";
/// Docker's option with an endpoint's published ports (`-p`).
pub const PORT_MAP: &str = "com.docker.network.portmap";
/// The `RequestAddress` option saying what the address is for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value for a network's gateway.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// `/Plugin.Activate`'s answer.
#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    /// The plugin kinds served.
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

/// An error answer (HTTP 200 for a call that was understood but failed,
/// 400 for a body that was not). libnetwork's network-driver client
/// reads the message from `Err`, its IPAM client from `Error`: both carry
/// it.
#[derive(Debug, Serialize)]
pub struct ErrorResponse {
    /// What went wrong and what to do; Docker shows it to the user.
    #[serde(rename = "Err")]
    pub err: String,
    /// The same, for the IPAM client.
    #[serde(rename = "Error")]
    pub error: String,
}

impl ErrorResponse {
    /// An error answer with `message`.
    pub fn new(message: String) -> Self {
        ErrorResponse {
            error: message.clone(),
            err: message,
        }
    }
}

/// `NetworkDriver.GetCapabilities`' answer.
#[derive(Debug, Serialize)]
pub struct CapabilitiesResponse {
    /// Where allocations are made: `local` (Docker needs no swarm).
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    /// Where the network reaches: `global` (weft's overlay spans hosts).
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
}

/// A pool's data in `CreateNetwork`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamData {
    /// The address space.
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The subnet (CIDR).
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The gateway (CIDR), if any.
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
    /// `--aux-address` entries.
    #[serde(rename = "AuxAddresses", default)]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateNetworkRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's options (see the constants above).
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
    /// IPv4 pools.
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// IPv6 pools.
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// A call naming only a network.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// A call naming an endpoint (`DeleteEndpoint`, `EndpointOperInfo`,
/// `Leave`, `RevokeExternalConnectivity`).
#[derive(Debug, Clone, Deserialize)]
pub struct EndpointRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// An endpoint's interface: in `CreateEndpoint` what Docker chose, in
/// the answer what weft chose (only the fields Docker left empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// IPv4 address with prefix length.
    #[serde(rename = "Address", default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// IPv6 address with prefix length.
    #[serde(
        rename = "AddressIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    /// MAC address.
    #[serde(
        rename = "MacAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateEndpointRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// What Docker chose (may be absent or empty).
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
}

/// `NetworkDriver.CreateEndpoint`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct CreateEndpointResponse {
    /// What weft chose; absent when Docker gave everything.
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, Deserialize)]
pub struct JoinRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The container's network namespace (a path).
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
}

/// The interface Docker moves into the container.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceName {
    /// Its name in the daemon's namespace.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// The prefix of its name in the container (Docker appends a number).
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: &'static str,
}

/// `NetworkDriver.Join`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct JoinResponse {
    /// The TAP to move.
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// IPv4 default gateway (none on an internal network).
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// IPv6 default gateway.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    /// Routes besides the connected subnet (none).
    #[serde(rename = "StaticRoutes")]
    pub static_routes: Vec<Value>,
    /// Docker must not add its own gateway network (`docker_gwbridge`).
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// `NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Options; [`PORT_MAP`] lists the published ports.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

/// One entry of [`PORT_MAP`] (libnetwork's `PortBinding`).
#[derive(Debug, Clone, Deserialize)]
pub struct PortBinding {
    /// IP protocol number: 6 TCP, 17 UDP, 132 SCTP.
    #[serde(rename = "Proto", default)]
    pub proto: u8,
    /// The container port.
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// The host address (empty: all).
    #[serde(rename = "HostIP", default)]
    pub host_ip: Option<String>,
    /// The host port (0: any).
    #[serde(rename = "HostPort", default)]
    pub host_port: u16,
    /// The end of a host port range (`-p 8000-8010:80`).
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u16,
}

/// `NetworkDriver.EndpointOperInfo`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct OperInfoResponse {
    /// Free-form facts about the endpoint.
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

/// `IpamDriver.GetCapabilities`' answer.
#[derive(Debug, Clone, Serialize)]
pub struct IpamCapabilitiesResponse {
    /// weft needs no MAC to choose an address.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// weft keeps its pools itself: no replay after a Docker restart.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces`' answer.
#[derive(Debug, Clone, Serialize)]
pub struct AddressSpacesResponse {
    /// For local-scope networks.
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    /// For global-scope networks.
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestPoolRequest {
    /// The address space (weft has one).
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// `--subnet`, or empty for weft's choice.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// `--ip-range`.
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    /// `--ipam-opt K=V`.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
    /// Whether a pool of weft's choice is to be IPv6.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `IpamDriver.RequestPool`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct RequestPoolResponse {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The subnet (CIDR).
    #[serde(rename = "Pool")]
    pub pool: String,
    /// Nothing more.
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReleasePoolRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address wanted (empty: any).
    #[serde(rename = "Address", default)]
    pub address: String,
    /// [`REQUEST_ADDRESS_TYPE`] says a gateway is asked for.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// `IpamDriver.RequestAddress`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct RequestAddressResponse {
    /// The address with the subnet's prefix length.
    #[serde(rename = "Address")]
    pub address: String,
    /// Nothing more.
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address.
    #[serde(rename = "Address", default)]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_as_docker_20_10_sends_it() {
        let body = r#"{"NetworkID":"5f0c","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"weft.network":"app","com.docker.network.driver.mtu":"1400"}},
            "IPv4Data":[{"AddressSpace":"weft-local","Gateway":"10.240.0.1/24","Pool":"10.240.0.0/24"}],
            "IPv6Data":null}"#;
        let r: CreateNetworkRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.network_id, "5f0c");
        let v4 = r.ipv4_data.unwrap();
        assert_eq!(v4[0].pool, "10.240.0.0/24");
        assert_eq!(v4[0].gateway.as_deref(), Some("10.240.0.1/24"));
        assert!(r.ipv6_data.is_none());
        assert!(r.options.unwrap().contains_key(GENERIC_OPTIONS));
    }

    #[test]
    fn endpoint_interface_answers_only_what_weft_chose() {
        let answer = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:f0:00:02".into(),
                ..EndpointInterface::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"Interface":{"MacAddress":"02:42:0a:f0:00:02"}}"#
        );
        let r: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":null,"Options":{}}"#,
        )
        .unwrap();
        assert!(r.interface.is_none());
    }

    #[test]
    fn port_bindings_parse() {
        let p: Vec<PortBinding> = serde_json::from_str(
            r#"[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]"#,
        )
        .unwrap();
        assert_eq!((p[0].proto, p[0].port, p[0].host_port), (6, 80, 8080));
    }
}
