//! The result an ADD prints (CNI spec 1.1, "Success" and the versions'
//! result types): the interface weft made, its addresses and default
//! routes, and weft's DNS, appended to the previous plugin's result when
//! weft is not first in the chain.
//!
//! Shape by version: 0.3.x and 0.4.0 give each IP a `"version"` of `"4"`
//! or `"6"`; 1.0.0 drops it; 1.1.0 adds the interface's `mtu`. Every
//! other key of `prevResult` passes through unchanged, and the indices of
//! weft's IPs point past the interfaces already there.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::config::CniVersion;
use super::error::{CniError, ErrorCode};

/// What weft made for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Its MAC, `aa:bb:...`.
    pub mac: String,
    /// `CNI_NETNS`.
    pub sandbox: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses with prefix length.
    pub addresses: Vec<IpNet>,
    /// The gateway of each family (also weft's DNS server).
    pub gateways: Vec<IpAddr>,
}

/// The result of an ADD for a config of `version`, built on `prev`.
///
/// # Errors
///
/// Code 7 when `prev` is not a JSON object, or its `interfaces`, `ips`,
/// `routes` are not lists.
pub fn build(
    version: CniVersion,
    cni_version: &str,
    prev: Option<&Value>,
    attached: &Attached,
) -> Result<Value, CniError> {
    let mut result = match prev {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(bad_prev("prevResult is not a JSON object")),
    };
    result.insert("cniVersion".into(), Value::String(cni_version.to_owned()));
    let mut interfaces = take_list(&mut result, "interfaces")?;
    let index = interfaces.len();
    let mut interface = json!({
        "name": attached.ifname,
        "mac": attached.mac,
        "sandbox": attached.sandbox,
    });
    if version >= CniVersion::V1_1 {
        interface["mtu"] = json!(attached.mtu);
    }
    interfaces.push(interface);
    let mut ips = take_list(&mut result, "ips")?;
    for address in &attached.addresses {
        let v4 = address.addr().is_ipv4();
        let mut ip = json!({ "address": address.to_string(), "interface": index });
        if let Some(gateway) = attached.gateways.iter().find(|g| g.is_ipv4() == v4) {
            ip["gateway"] = json!(gateway.to_string());
        }
        if version < CniVersion::V1_0 {
            ip["version"] = json!(if v4 { "4" } else { "6" });
        }
        ips.push(ip);
    }
    let mut routes = take_list(&mut result, "routes")?;
    for gateway in &attached.gateways {
        let dst = if gateway.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        let has_family = attached
            .addresses
            .iter()
            .any(|a| a.addr().is_ipv4() == gateway.is_ipv4());
        if has_family {
            routes.push(json!({ "dst": dst, "gw": gateway.to_string() }));
        }
    }
    result.insert("interfaces".into(), Value::Array(interfaces));
    result.insert("ips".into(), Value::Array(ips));
    result.insert("routes".into(), Value::Array(routes));
    result.insert("dns".into(), dns(result.get("dns"), &attached.gateways));
    Ok(Value::Object(result))
}

/// weft's DNS first (the gateways answer names of the network), then the
/// previous plugin's servers; its search domains and options stay.
fn dns(prev: Option<&Value>, gateways: &[IpAddr]) -> Value {
    let mut dns = prev.and_then(Value::as_object).cloned().unwrap_or_default();
    let mut servers: Vec<Value> = gateways.iter().map(|g| json!(g.to_string())).collect();
    if let Some(Value::Array(old)) = dns.get("nameservers") {
        for server in old {
            if !servers.contains(server) {
                servers.push(server.clone());
            }
        }
    }
    dns.insert("nameservers".into(), Value::Array(servers));
    Value::Object(dns)
}

fn take_list(result: &mut Map<String, Value>, key: &str) -> Result<Vec<Value>, CniError> {
    match result.remove(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err(bad_prev(&format!("prevResult.{key} is not a list"))),
    }
}

fn bad_prev(what: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        "invalid prevResult",
        format!("{what}: the runtime must pass the previous plugin's result unchanged"),
    )
}

/// The addresses a result gives interface `ifname` in `sandbox` (CHECK):
/// its index in `interfaces`, then the `ips` that point at it.
pub fn addresses_of(result: &Value, ifname: &str, sandbox: &str) -> Option<(String, Vec<IpNet>)> {
    let interfaces = result.get("interfaces")?.as_array()?;
    let index = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
    })?;
    let mac = interfaces[index]
        .get("mac")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let addresses = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter(|ip| {
                    ip.get("interface").and_then(Value::as_u64) == u64::try_from(index).ok()
                })
                .filter_map(|ip| ip.get("address")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some((mac, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            ifname: "eth1".into(),
            mac: "02:42:0a:09:00:02".into(),
            sandbox: "/var/run/netns/a".into(),
            mtu: 1500,
            addresses: vec![
                "10.9.0.2/24".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            gateways: vec!["10.9.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        }
    }

    #[test]
    fn versions_differ_where_the_spec_says() {
        let old = build(CniVersion::V0_4, "0.4.0", None, &attached()).unwrap();
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = build(CniVersion::V1_0, "1.0.0", None, &attached()).unwrap();
        assert!(v1["ips"][0].get("version").is_none());
        let v11 = build(CniVersion::V1_1, "1.1.0", None, &attached()).unwrap();
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert_eq!(v11["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v11["routes"][1]["dst"], "::/0");
        assert_eq!(v11["dns"]["nameservers"][0], "10.9.0.1");
    }

    #[test]
    fn prev_result_is_kept_and_indices_shift() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "aa:aa:aa:aa:aa:aa", "sandbox": "/var/run/netns/a"}],
            "ips": [{"address": "192.0.2.5/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"], "search": ["example"]},
            "custom": 1
        });
        let r = build(CniVersion::V1_0, "1.0.0", Some(&prev), &attached()).unwrap();
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["ips"][1]["interface"], 1);
        assert_eq!(r["ips"][0]["address"], "192.0.2.5/24");
        assert_eq!(r["custom"], 1);
        assert_eq!(
            r["dns"]["nameservers"],
            json!(["10.9.0.1", "fd00::1", "192.0.2.53"])
        );
        assert_eq!(r["dns"]["search"], json!(["example"]));
        let (mac, addresses) = addresses_of(&r, "eth1", "/var/run/netns/a").unwrap();
        assert_eq!(mac, "02:42:0a:09:00:02");
        assert_eq!(addresses, attached().addresses);
        assert!(build(CniVersion::V1_0, "1.0.0", Some(&json!([1])), &attached()).is_err());
        assert!(build(
            CniVersion::V1_0,
            "1.0.0",
            Some(&json!({"ips": 5})),
            &attached()
        )
        .is_err());
    }
}
