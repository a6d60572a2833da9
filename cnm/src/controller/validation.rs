//! Checks of what a request asks for: names, driver options, and the
//! ids of new networks.

use std::collections::BTreeMap;
use std::path::Path;

use weft_overlay::Vni;
use weft_vswitch::MacAddr;

use crate::model::DriverKind;
use crate::overlay_driver::{self, PEERS_OPTION, VNI_OPTION};

use super::error::ControllerError;

/// Longest name of a network or endpoint (a DNS label is 63 bytes).
pub(super) const MAX_NAME_LEN: usize = 63;

/// The options (`--opt K=V`) each driver knows, with their values.
pub(super) const BRIDGE_OPTIONS: &[(&str, &[&str])] = &[
    // Connections to the gateway's address on ports that are not gateway
    // services go to the host's loopback.
    ("host_loopback", &["true", "false"]),
    // Each endpoint sends only from its own MAC and addresses (default);
    // false for guests that bridge further (a VM with its own bridge).
    (crate::driver::PORT_SECURITY_OPTION, &["true", "false"]),
    // The gateway answers DHCP for the network's endpoints (default);
    // false leaves DHCP broadcasts to a server inside a sandbox.
    (crate::driver::DHCP_OPTION, &["true", "false"]),
];

/// Refuse options the driver does not know and values it does not take;
/// the error says what is allowed.
pub(super) fn validate_options(
    driver: DriverKind,
    options: &BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    let known: &[(&str, &[&str])] = match driver {
        DriverKind::Bridge => BRIDGE_OPTIONS,
        DriverKind::Overlay => return validate_overlay_options(options),
        DriverKind::Macvlan => return validate_macvlan_options(options, false),
        DriverKind::Ipvlan => return validate_macvlan_options(options, true),
        DriverKind::Null | DriverKind::Host => &[],
    };
    for (key, value) in options {
        let Some((_, values)) = known.iter().find(|(k, _)| k == key) else {
            let reason = if known.is_empty() {
                format!("the {driver} driver takes no options: drop --opt")
            } else {
                let list: Vec<String> = known
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.join("|")))
                    .collect();
                format!(
                    "unknown option of the {driver} driver: known options are {}",
                    list.join(", ")
                )
            };
            return Err(ControllerError::InvalidOption {
                key: key.clone(),
                reason,
            });
        };
        if !values.contains(&value.as_str()) {
            return Err(ControllerError::InvalidOption {
                key: key.clone(),
                reason: format!(
                    "{value:?} is not a value of {key}: use {}",
                    values.join(" or ")
                ),
            });
        }
    }
    Ok(())
}

/// `--opt parent=IFACE[.VID]` (required), `dns_address=IP`, and
/// `macvlan_mode=bridge|private` (macvlan) or `ipvlan_mode=l2` (ipvlan);
/// nothing else.
pub(super) fn validate_macvlan_options(
    options: &BTreeMap<String, String>,
    ipvlan: bool,
) -> Result<(), ControllerError> {
    use crate::macvlan_driver::{
        parse_ipvlan_mode, parse_mode, parse_parent, DNS_ADDRESS_OPTION, IPVLAN_MODE_OPTION,
        MODE_OPTION, PARENT_OPTION,
    };
    let invalid = |key: &str, reason: String| ControllerError::InvalidOption {
        key: key.to_owned(),
        reason,
    };
    let driver = if ipvlan { "ipvlan" } else { "macvlan" };
    for (key, value) in options {
        match key.as_str() {
            PARENT_OPTION => {
                parse_parent(value).map_err(|reason| invalid(key, reason))?;
            }
            MODE_OPTION if !ipvlan => {
                parse_mode(Some(value)).map_err(|reason| invalid(key, reason))?;
            }
            IPVLAN_MODE_OPTION if ipvlan => {
                parse_ipvlan_mode(value).map_err(|reason| invalid(key, reason))?;
            }
            DNS_ADDRESS_OPTION => {
                value
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| invalid(key, format!("{value:?} is not an IP address")))?;
            }
            _ => {
                let mode = if ipvlan {
                    "ipvlan_mode=l2"
                } else {
                    "macvlan_mode=bridge|private"
                };
                return Err(invalid(
                    key,
                    format!("unknown option of the {driver} driver: known options are parent=IFACE[.VID], {mode}, dns_address=IP"),
                ));
            }
        }
    }
    if !options.contains_key(PARENT_OPTION) {
        return Err(invalid(
            PARENT_OPTION,
            format!("a {driver} network needs its parent interface: --opt parent=eth0 (or eth0.VID for a VLAN)"),
        ));
    }
    Ok(())
}

/// `--opt vni=N` (1 to 2^24-1) and `--opt peers=IP[,IP...]`, nothing else.
pub(super) fn validate_overlay_options(
    options: &BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    for (key, value) in options {
        let reason = match key.as_str() {
            VNI_OPTION => match value.parse::<u32>() {
                Ok(vni) if vni >= 1 && Vni::new(vni).is_ok() => continue,
                _ => format!(
                    "{value:?} is not a VNI: use a number from 1 to {}",
                    Vni::MAX
                ),
            },
            crate::driver::PORT_SECURITY_OPTION
            | crate::driver::DHCP_OPTION
            | overlay_driver::ENCRYPTED_OPTION
                if value == "true" || value == "false" =>
            {
                continue
            }
            crate::driver::DHCP_OPTION => {
                format!("{value:?} is not a value of dhcp: use true or false")
            }
            crate::driver::PORT_SECURITY_OPTION => {
                format!("{value:?} is not a value of port_security: use true or false")
            }
            overlay_driver::ENCRYPTED_OPTION => {
                format!("{value:?} is not a value of encrypted: use true or false")
            }
            PEERS_OPTION => match overlay_driver::parse_peers(value) {
                Ok(peers) if !peers.is_empty() => continue,
                Ok(_) => "give at least one address: peers=IP[,IP...]".to_owned(),
                Err(bad) => format!("{bad:?} is not an IP address: use peers=IP[,IP...]"),
            },
            _ => "unknown option of the overlay driver: known options are vni=N, peers=IP[,IP...], encrypted=true|false, port_security=true|false, dhcp=true|false"
                .to_owned(),
        };
        return Err(ControllerError::InvalidOption {
            key: key.clone(),
            reason,
        });
    }
    Ok(())
}

/// Most labels one network keeps: they live in the state file and every
/// `network ls` answer.
const MAX_LABELS: usize = 64;

/// Longest label, key and value together, in bytes.
const MAX_LABEL_LEN: usize = 1024;

/// Labels are free text (Docker's are), but a key is never empty and the
/// whole stays small: see [`MAX_LABELS`], [`MAX_LABEL_LEN`].
pub(super) fn validate_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    if labels.len() > MAX_LABELS {
        return Err(ControllerError::InvalidLabel {
            key: labels.keys().nth(MAX_LABELS).cloned().unwrap_or_default(),
            reason: format!("at most {MAX_LABELS} labels per network"),
        });
    }
    for (key, value) in labels {
        let reason = if key.is_empty() {
            "the key is empty: write KEY=VALUE"
        } else if key.len() + value.len() > MAX_LABEL_LEN {
            "longer than 1024 bytes: shorten it"
        } else {
            continue;
        };
        return Err(ControllerError::InvalidLabel {
            key: key.clone(),
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

pub(super) fn validate_name(what: &'static str, name: &str) -> Result<(), ControllerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ControllerError::InvalidName {
            what,
            name: name.into(),
        })
    }
}

/// Longest interface name Linux takes (`IFNAMSIZ` less the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// An interface name Linux takes: 1 to 15 bytes, no `/`, `:` or
/// whitespace, not `.` or `..`.
pub(super) fn validate_ifname(ifname: &str) -> Result<(), ControllerError> {
    let reason = if ifname.is_empty() || ifname.len() > MAX_IFNAME_LEN {
        "an interface name has 1 to 15 bytes"
    } else if ifname == "." || ifname == ".." {
        "not a usable interface name"
    } else if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "an interface name has no '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(ControllerError::InvalidInterface {
        field: "ifname",
        value: ifname.into(),
        reason,
    })
}

/// Longest path a Unix socket address holds (`sun_path` less the NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

/// A path a stream endpoint can listen on: absolute, short enough for a
/// socket address, in a directory that exists, and not a file, nor a
/// socket another program listens on. A socket file nobody listens on (a
/// VM's endpoint from before a crash) is stale: the driver replaces it.
pub(super) fn validate_socket_path(path: &Path) -> Result<(), ControllerError> {
    let invalid = |reason| ControllerError::InvalidSocketPath {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid("give an absolute path"));
    }
    if path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
        return Err(invalid(
            "a Unix socket's path has at most 107 bytes: choose a shorter one",
        ));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(invalid("its directory does not exist: create it first"));
    }
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            // Probing a socket weft itself listens on would replace the
            // VM's connection: the caller checks its own endpoints first.
            let datagram_live = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|probe| probe.connect(path))
                .is_ok();
            if std::os::unix::net::UnixStream::connect(path).is_ok() || datagram_live {
                Err(invalid(
                    "another program listens on it: stop it or choose another path",
                ))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(invalid(
            "a file that is not a socket is there: choose another path",
        )),
    }
}

/// A MAC an endpoint can have: unicast and not all zeros.
pub(super) fn validate_mac(mac: MacAddr) -> Result<(), ControllerError> {
    let reason = if mac.is_multicast() {
        "a multicast MAC (lowest bit of the first byte set): use a unicast one, such as 02:..."
    } else if mac.0 == [0; 6] {
        "the zero MAC: use a unicast one, such as 02:..."
    } else {
        return Ok(());
    };
    Err(ControllerError::InvalidInterface {
        field: "mac",
        value: mac.to_string(),
        reason,
    })
}

pub(super) fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The endpoint name when none is given: the namespace's name for
/// `/var/run/netns/NAME`, `pidN` for `/proc/N/ns/net`.
pub(super) fn default_endpoint_name(sandbox: &Path) -> String {
    let parts: Vec<&str> = sandbox.iter().filter_map(|p| p.to_str()).collect();
    if let ["/", "proc", pid, "ns", "net"] = parts.as_slice() {
        return format!("pid{pid}");
    }
    sandbox
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sandbox")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_linux_takes() {
        for good in ["eth0", "net1", "a", "fifteen-chars-x"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            let e = validate_ifname(bad).unwrap_err().to_string();
            assert!(e.starts_with("ifname"), "{bad}: {e}");
        }
    }

    #[test]
    fn endpoint_macs_are_unicast_and_not_zero() {
        assert!(validate_mac("02:00:00:00:00:01".parse().unwrap()).is_ok());
        let e = validate_mac("01:00:5e:00:00:01".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
        assert!(validate_mac("00:00:00:00:00:00".parse().unwrap()).is_err());
        assert!(validate_mac("ff:ff:ff:ff:ff:ff".parse().unwrap()).is_err());
    }
}
