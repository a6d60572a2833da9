//! The host's own IPv4 routes, so that a default subnet never hides a
//! network the host already reaches (Docker does the same check).
//!
//! Read from `/proc/net/route` of the daemon's network namespace: one line
//! per route, destination and mask as hex host-order integers. The default route
//! (0.0.0.0/0) is skipped: everything overlaps it.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

const PROC_ROUTES: &str = "/proc/net/route";

/// The destinations of the host's IPv4 routes; empty if unreadable.
pub fn ipv4_routes() -> Vec<IpNet> {
    std::fs::read_to_string(PROC_ROUTES)
        .map(|text| parse_proc_net_route(&text))
        .unwrap_or_default()
}

/// Parse the text of `/proc/net/route`.
pub fn parse_proc_net_route(text: &str) -> Vec<IpNet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            // The kernel prints the network-order words as host integers:
            // their in-memory bytes are the address.
            let prefix =
                u8::try_from(u32::from_be_bytes(mask.to_ne_bytes()).leading_ones()).ok()?;
            if prefix == 0 {
                return None;
            }
            let addr = Ipv4Addr::from(dest.to_ne_bytes());
            Ipv4Net::new(addr, prefix).ok().map(IpNet::V4)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_skips_default() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    br0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = parse_proc_net_route(text);
        assert_eq!(
            routes,
            vec![
                "192.168.0.0/24".parse::<IpNet>().unwrap(),
                "172.17.0.0/16".parse().unwrap()
            ]
        );
    }
}
