//! The network configuration a runtime writes on the plugin's stdin (CNI
//! spec 1.1, "Network configuration" and the conventions' `runtimeConfig`
//! capabilities), decoded and checked.
//!
//! Untrusted bytes: everything here goes through serde, with the path of
//! a field that has the wrong type in the message
//! (`serde_path_to_error`, already in the tree through axum), and no
//! value reaches the daemon unchecked. Keys this plugin does not know are
//! ignored, as the spec allows and as chained runtimes need (they add
//! their own); `ipam` is refused, since weft is its own IPAM.
//!
//! Keys of weft's own:
//!
//! | key | meaning |
//! |---|---|
//! | `network` | the weft network (default: the config's `name`) |
//! | `subnet`, `gateway`, `driver` | create the network with these if it does not exist |
//! | `socket` | the daemon's API socket (default: root's or the user's) |
//! | `bandwidth` | limits as the `bandwidth` capability gives them, for every attachment of this config |
//! | `portPublisher` | who publishes `portMappings`: `weft` (the daemon listens on the host port and keeps the client's address) or `runtime` (the runtime forwards ports itself, as rootless podman's `rootlessport` always does: weft leaves the host ports to it). Default: `weft`, or `runtime` when the plugin runs in a user namespace (a rootless runtime) |
//!
//! Capabilities (`runtimeConfig`, when the conflist declares them):
//! `portMappings`, `ips`, `mac`, `aliases` (a list, or podman's map of
//! network name to list), `bandwidth` (`ingressRate`/`egressRate` in
//! bits per second, `ingressBurst`/`egressBurst` in bits: enforced by weft's
//! data path, so the reference `bandwidth` plugin, which needs a veth, is
//! not needed). The conventions' `args.cni.ips` and
//! `args.cni.mac` are taken too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use weft_vswitch::BandwidthLimit;

use super::error::{CniError, ErrorCode};

/// The versions of the spec this plugin speaks (0.3.x results have the
/// same shape as 0.4.0's, without CHECK).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest of [`SUPPORTED_VERSIONS`].
pub const LATEST_VERSION: &str = "1.1.0";

/// Largest stdin accepted: a config is a few KiB; a runtime's `prevResult`
/// for many interfaces stays far below this.
pub const MAX_STDIN: usize = 1 << 20;

/// A version of the spec, as far as results and commands differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0 and 0.3.1: results with `version` per IP, no CHECK.
    V0_3,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4,
    /// 1.0.0: IPs lose `version`.
    V1_0,
    /// 1.1.0: adds GC and STATUS, interface `mtu`.
    V1_1,
}

impl CniVersion {
    /// The version of a config's `cniVersion`, if supported.
    pub fn parse(text: &str) -> Option<CniVersion> {
        match text {
            "0.3.0" | "0.3.1" => Some(CniVersion::V0_3),
            "0.4.0" => Some(CniVersion::V0_4),
            "1.0.0" => Some(CniVersion::V1_0),
            "1.1.0" => Some(CniVersion::V1_1),
            _ => None,
        }
    }
}

/// The network configuration, as far as weft reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version the runtime speaks.
    #[serde(default)]
    pub cni_version: String,
    /// The CNI network's name.
    #[serde(default)]
    pub name: String,
    /// The plugin's name (`weft`, or whatever the binary was installed as).
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The weft network (default: `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// Subnet of a network to create.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Gateway of a network to create.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Driver of a network to create (`bridge`, `overlay`).
    #[serde(default)]
    pub driver: Option<String>,
    /// The daemon's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Who publishes `portMappings` (see the module header).
    #[serde(default)]
    pub port_publisher: Option<PortPublisher>,
    /// Bandwidth limits for every attachment of this config (the
    /// capability's, when given, wins).
    #[serde(default)]
    pub bandwidth: Option<CniBandwidth>,
    /// Another plugin's IPAM: refused (weft allocates addresses itself).
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Capabilities the runtime passes.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The previous plugin's result (ADD after another plugin; CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// Runtime arguments (`args.cni.ips`, `args.cni.mac` are read).
    #[serde(default)]
    pub args: Option<ConfArgs>,
    /// GC: the attachments that must stay.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// `runtimeConfig`: the capabilities weft declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings`: published by weft itself.
    #[serde(default)]
    pub port_mappings: Vec<PortMapEntry>,
    /// `ips`: static addresses (`10.1.2.3/24` or `10.1.2.3`).
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac`: the interface's MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// `aliases`: extra DNS names.
    #[serde(default)]
    pub aliases: Option<Aliases>,
    /// `bandwidth`: rate limits.
    #[serde(default)]
    pub bandwidth: Option<CniBandwidth>,
}

/// Who publishes a container's `portMappings` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortPublisher {
    /// The weft daemon: a host listener that keeps the client's address.
    Weft,
    /// The runtime itself (rootless runtimes forward through their own
    /// port handler): weft publishes nothing.
    Runtime,
}

/// The `bandwidth` capability (CNI conventions): rates in bits per
/// second, bursts in bits; ingress is toward the container.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniBandwidth {
    /// Toward the container, bit/s.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Toward the container, bits.
    #[serde(default)]
    pub ingress_burst: u64,
    /// From the container, bit/s.
    #[serde(default)]
    pub egress_rate: u64,
    /// From the container, bits.
    #[serde(default)]
    pub egress_burst: u64,
}

impl From<CniBandwidth> for BandwidthLimit {
    fn from(b: CniBandwidth) -> Self {
        BandwidthLimit {
            ingress_rate: b.ingress_rate,
            ingress_burst: b.ingress_burst,
            egress_rate: b.egress_rate,
            egress_burst: b.egress_burst,
        }
    }
}

/// One `portMappings` entry (CNI conventions).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapEntry {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Host address to listen on (default: all).
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// `aliases`: a plain list, or (podman) a map from network name to list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Aliases {
    /// The names.
    List(Vec<String>),
    /// Names per network.
    PerNetwork(BTreeMap<String, Vec<String>>),
}

/// `args`, as far as the conventions give weft something.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfArgs {
    /// `args.cni`.
    #[serde(default)]
    pub cni: Option<ConfArgsCni>,
}

/// `args.cni`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfArgsCni {
    /// Static addresses.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The MAC.
    #[serde(default)]
    pub mac: Option<String>,
}

/// One attachment of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID` of its ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of its ADD.
    pub ifname: String,
}

/// The bare minimum of VERSION's stdin.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    #[serde(default)]
    cni_version: String,
}

impl NetConf {
    /// Decode stdin.
    ///
    /// # Errors
    ///
    /// Code 6 (decode) with the failing field's path, code 1 for a
    /// `cniVersion` weft does not speak, code 7 for a missing `name` or
    /// `cniVersion`, code 2 for `ipam`.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let conf: NetConf = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            CniError::new(
                ErrorCode::Decode,
                "the network configuration on stdin is not valid",
                if path == "." {
                    format!("{}", e.inner())
                } else {
                    format!("field {path}: {}", e.inner())
                },
            )
        })?;
        if conf.cni_version.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "the network configuration has no cniVersion",
                format!(
                    "add \"cniVersion\": one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if CniVersion::parse(&conf.cni_version).is_none() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?} is not supported: weft-cni speaks {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "the network configuration has no name",
                "add \"name\": the CNI network's name (and the weft network's, unless \"network\" says otherwise)",
            ));
        }
        if conf.ipam.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                "unsupported field \"ipam\"",
                "weft allocates addresses itself: remove \"ipam\" (use \"subnet\"/\"gateway\" for the network, runtimeConfig \"ips\" for static addresses)",
            ));
        }
        Ok(conf)
    }

    /// The config's version (checked by [`NetConf::parse`]).
    pub fn version(&self) -> CniVersion {
        CniVersion::parse(&self.cni_version).unwrap_or(CniVersion::V1_1)
    }

    /// The weft network to attach to.
    pub fn weft_network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    /// The static addresses asked for (runtimeConfig `ips`, else
    /// `args.cni.ips`), prefix lengths dropped (the subnet's count).
    ///
    /// # Errors
    ///
    /// Code 7 naming an entry that is not an address.
    pub fn static_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let texts = if self.runtime_config.ips.is_empty() {
            self.args
                .as_ref()
                .and_then(|a| a.cni.as_ref())
                .map(|c| c.ips.clone())
                .unwrap_or_default()
        } else {
            self.runtime_config.ips.clone()
        };
        texts.iter().map(|text| parse_ip(text)).collect()
    }

    /// The MAC asked for (runtimeConfig `mac`, else `args.cni.mac`).
    pub fn mac(&self) -> Option<&str> {
        self.runtime_config.mac.as_deref().or_else(|| {
            self.args
                .as_ref()
                .and_then(|a| a.cni.as_ref())
                .and_then(|c| c.mac.as_deref())
        })
    }

    /// Who publishes the port mappings: the config's `portPublisher`, else
    /// the runtime when the plugin runs under a rootless runtime
    /// (`in_user_namespace`: its port handler binds the host ports
    /// itself), else weft.
    pub fn port_publisher(&self, in_user_namespace: bool) -> PortPublisher {
        self.port_publisher.unwrap_or(if in_user_namespace {
            PortPublisher::Runtime
        } else {
            PortPublisher::Weft
        })
    }

    /// The bandwidth limits asked for: the capability's, else the
    /// config's own `bandwidth`; None when nothing is limited.
    pub fn bandwidth(&self) -> Option<BandwidthLimit> {
        self.runtime_config
            .bandwidth
            .or(self.bandwidth)
            .map(BandwidthLimit::from)
            .filter(|limit| limit.is_limited() || limit.validate().is_err())
    }

    /// The aliases for this network: a plain list, or the entry of the CNI
    /// network's name (or the weft network's) in podman's map.
    pub fn aliases(&self) -> Vec<String> {
        match &self.runtime_config.aliases {
            None => Vec::new(),
            Some(Aliases::List(list)) => list.clone(),
            Some(Aliases::PerNetwork(map)) => map
                .get(&self.name)
                .or_else(|| map.get(self.weft_network()))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// `10.1.2.3` or `10.1.2.3/24`.
fn parse_ip(text: &str) -> Result<IpAddr, CniError> {
    let address = text.split_once('/').map_or(text, |(a, _)| a);
    address.parse().map_err(|_| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "invalid static address",
            format!("ips: {text:?} is not an IP address (write 10.1.2.3 or 10.1.2.3/24)"),
        )
    })
}

/// The `cniVersion` VERSION's stdin names, if any (an empty or broken
/// stdin is not an error for VERSION).
pub fn version_of_stdin(bytes: &[u8]) -> String {
    serde_json::from_slice::<VersionOnly>(bytes)
        .map(|v| v.cni_version)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn a_full_config_parses() {
        let conf = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"weft","network":"w","subnet":"10.9.0.0/24",
                "gateway":"10.9.0.1","driver":"bridge","socket":"/tmp/s.sock",
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}],
                  "ips":["10.9.0.7/24"],"mac":"02:00:00:00:00:07","aliases":{"n":["web","www"]}},
                "someRuntimeKey":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(conf.version(), CniVersion::V1_0);
        assert_eq!(conf.weft_network(), "w");
        assert_eq!(
            conf.static_ips().unwrap(),
            vec!["10.9.0.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(conf.mac(), Some("02:00:00:00:00:07"));
        assert_eq!(conf.aliases(), vec!["web", "www"]);
        assert_eq!(
            conf.runtime_config.port_mappings[0].host_ip.as_deref(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn bad_input_says_what_to_fix() {
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","subnet":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::Decode);
        assert!(e.details.contains("subnet"), "{e}");
        let e = parse(r#"{"cniVersion":"9.9.9","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        let e = parse(r#"{"name":"n"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        let e = parse(r#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        let e =
            parse(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedField);
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["nope"]}}"#)
            .unwrap()
            .static_ips()
            .unwrap_err();
        assert!(e.details.contains("nope"));
        let e = parse("not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::Decode);
    }

    #[test]
    fn args_cni_and_list_aliases_are_read() {
        let conf = parse(
            r#"{"cniVersion":"0.4.0","name":"n","args":{"cni":{"ips":["10.0.0.9"],"mac":"02:00:00:00:00:09"},"labels":{"a":"b"}},
                "runtimeConfig":{"aliases":["x"]}}"#,
        )
        .unwrap();
        assert_eq!(conf.static_ips().unwrap().len(), 1);
        assert_eq!(conf.mac(), Some("02:00:00:00:00:09"));
        assert_eq!(conf.aliases(), vec!["x"]);
        assert_eq!(conf.weft_network(), "n");
    }

    #[test]
    fn gc_attachments_parse() {
        let conf = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
