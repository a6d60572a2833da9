//! The `macvlan` driver: sandboxes as hosts of a real LAN.
//!
//! Docker's macvlan makes a kernel macvlan device per container on the
//! parent interface. weft keeps its own design: each sandbox has a TAP
//! switched in userspace, and the parent's LAN is one more port of the
//! network's switch, its uplink (`weft_vswitch::switch`, a raw packet
//! socket in promiscuous mode: `weft_vswitch::sys::packet`). A sandbox
//! then has its own MAC on the LAN, its address from the network's subnet
//! (the LAN's), and the LAN's router as its default gateway; the LAN's
//! hosts reach it directly.
//!
//! # What is built on the bridge driver
//!
//! A macvlan network is a bridge network (`crate::driver::BridgeDriver`)
//! whose gateway is not weft's: the subnet's `--gateway` is the LAN's
//! router, left alone. weft's gateway keeps one address on the LAN for
//! its DNS server only ([`DNS_ADDRESS_OPTION`]: given, or taken from the
//! subnet's IPAM at create time, so it is never handed to a sandbox); the
//! sandboxes' resolv.conf names it, and their names resolve as on any weft
//! network. It answers ARP for that address from the sandboxes, never
//! from the LAN, has no NAT (`outbound` off: traffic leaves through the
//! LAN's router) and no DHCP server (the LAN has its own).
//!
//! # Options
//!
//! - `parent=IFACE` or `parent=IFACE.VID`: the interface (in the daemon's
//!   network namespace) whose LAN the network joins; with `.VID`, weft
//!   tags and untags 802.1Q itself (`weft_vswitch::wire::vlan`), so no
//!   kernel VLAN device is needed. An interface that does not exist is
//!   refused at create time, with its name.
//! - `macvlan_mode=bridge` (default): sandboxes reach each other through
//!   weft and the LAN through the parent; `private`: the LAN only.
//! - `dns_address=IP`: where weft's DNS answers (default: an address of
//!   the subnet, reserved like the gateway).
//!
//! The parent host itself does not reach its macvlan sandboxes, as with
//! the kernel's macvlan: weft reads only frames that arrive from the LAN
//! and writes to the wire, never to the host's own stack.
//!
//! Addresses: before a sandbox takes an address, weft probes the LAN for
//! it (RFC 5227 ARP probes, [`lan_holder`]); an address another LAN host
//! holds is never handed out (it stays reserved, and the next is taken),
//! and a static `--ip` that one holds is refused.
//!
//! Rootless: a packet socket on a host interface needs `CAP_NET_RAW` in
//! the host's network namespace, which a rootless daemon does not have;
//! it is refused with that message.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use weft_datapath::packet_port::PacketPort;
use weft_datapath::taps::PortDevice;
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::sys::packet::PacketSocket;
use weft_vswitch::wire::arp_probe::{claimant, probe_frame};
use weft_vswitch::wire::vlan::MAX_VID;
use weft_vswitch::wire::vnet::{EMPTY, VNET_HDR_LEN};
use weft_vswitch::{MacAddr, PortCounters, PortId, UplinkMode};

use crate::driver::{BridgeDriver, DriverError, NetworkDriver};
use crate::model::{DriverKind, Endpoint, Network};

/// `--opt parent=IFACE[.VID]`.
pub const PARENT_OPTION: &str = "parent";
/// `--opt macvlan_mode=bridge|private`.
pub const MODE_OPTION: &str = "macvlan_mode";
/// `--opt ipvlan_mode=l2` (the one mode weft's ipvlan has).
pub const IPVLAN_MODE_OPTION: &str = "ipvlan_mode";
/// `--opt dns_address=IP`: where weft's DNS answers the sandboxes.
pub const DNS_ADDRESS_OPTION: &str = "dns_address";

/// A parent option, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The interface.
    pub interface: String,
    /// The VLAN weft tags, if any.
    pub vlan: Option<u16>,
}

/// Parse `IFACE` or `IFACE.VID`.
///
/// # Errors
///
/// What is wrong with it, for the user.
pub fn parse_parent(value: &str) -> Result<Parent, String> {
    let (interface, vlan) = match value.rsplit_once('.') {
        Some((interface, vid)) if !vid.is_empty() && vid.bytes().all(|b| b.is_ascii_digit()) => {
            let vid: u16 = vid
                .parse()
                .ok()
                .filter(|v| (1..=MAX_VID).contains(v))
                .ok_or_else(|| format!("VLAN {vid} is out of range: use 1 to {MAX_VID}"))?;
            (interface, Some(vid))
        }
        _ => (value, None),
    };
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
        return Err(format!("{interface:?} is not an interface name"));
    }
    Ok(Parent {
        interface: interface.to_owned(),
        vlan,
    })
}

/// The mode of `--opt macvlan_mode`.
///
/// # Errors
///
/// The value, when it is not a mode weft has.
pub fn parse_mode(value: Option<&str>) -> Result<UplinkMode, String> {
    match value {
        None | Some("bridge") => Ok(UplinkMode::Bridge),
        Some("private") => Ok(UplinkMode::Private),
        Some(other) => Err(format!(
            "{other:?} is not a macvlan mode of weft's: use bridge or private"
        )),
    }
}

/// How long a conflict probe waits for the LAN's answer. RFC 5227 waits
/// seconds for slow links; a LAN answers ARP in milliseconds, and a
/// connect should not take seconds.
pub const PROBE_WAIT: Duration = Duration::from_millis(400);

/// Who holds `address` on `network`'s LAN, if anyone: two ARP probes
/// (RFC 5227, `weft_vswitch::wire::arp_probe`) from `prober` (the MAC the
/// endpoint will have) on the parent, and [`PROBE_WAIT`] for a claim.
/// Blocks: call it off the async runtime.
///
/// # Errors
///
/// [`DriverError::Parent`] when the parent cannot be used.
pub fn lan_holder(
    network: &Network,
    address: Ipv4Addr,
    prober: MacAddr,
) -> Result<Option<MacAddr>, DriverError> {
    let (parent, error) = network_parent(network)?;
    let socket = PacketSocket::open(&parent.interface)
        .map_err(|e| error(format!("probing the LAN: {e}")))?;
    let mut port = PacketPort::new(socket, parent.vlan);
    // An ipvlan sandbox will show the parent's MAC: probe as it.
    let prober = if network.driver == DriverKind::Ipvlan {
        port.hardware_address()
            .map_err(|e| error(format!("probing the LAN: {e}")))?
    } else {
        prober
    };
    let probe = probe_frame(prober, address);
    let started = Instant::now();
    let deadline = started + PROBE_WAIT;
    let mut buf = vec![0u8; weft_vswitch::sys::write_batch::FRAME_BUFFER_LEN];
    let mut claim = |port: &mut PacketPort| -> Option<MacAddr> {
        // Drain what came, bounded.
        for _ in 0..256 {
            match port.recv(&mut buf) {
                Ok(len) if len > VNET_HDR_LEN => {
                    if let Some(holder) = claimant(&buf[VNET_HDR_LEN..len], address, prober) {
                        return Some(holder);
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        None
    };
    let mut probes_sent = 0;
    // Bounded by the deadline: every pass waits on poll until the next
    // probe is due or the deadline.
    loop {
        let now = Instant::now();
        if probes_sent < 2 && now >= started + PROBE_WAIT / 2 * probes_sent {
            port.send_parts(&EMPTY, &probe)
                .map_err(|e| error(format!("sending an ARP probe: {e}")))?;
            probes_sent += 1;
        }
        if now >= deadline {
            break;
        }
        let next = if probes_sent < 2 {
            started + PROBE_WAIT / 2
        } else {
            deadline
        };
        let wait = next.saturating_duration_since(Instant::now());
        let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let fd = std::os::fd::AsFd::as_fd(&port);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(error(format!("waiting for ARP answers: {e}"))),
        }
        if let Some(holder) = claim(&mut port) {
            return Ok(Some(holder));
        }
    }
    // What came while this thread was not running (a loaded machine) is
    // read too before the address is called free.
    Ok(claim(&mut port))
}

/// A network's parent, and how to refuse it: an error that names the
/// `--opt parent` value with a reason.
///
/// # Errors
///
/// [`DriverError::Parent`] when the option is missing or does not parse.
fn network_parent(
    network: &Network,
) -> Result<(Parent, impl Fn(String) -> DriverError + '_), DriverError> {
    let value = network.options.get(PARENT_OPTION);
    let refuse = move |reason: String| DriverError::Parent {
        parent: value.cloned().unwrap_or_default(),
        reason,
    };
    let Some(text) = value else {
        return Err(refuse(format!(
            "a {} network needs --opt parent=IFACE",
            network.driver
        )));
    };
    let parent = parse_parent(text).map_err(&refuse)?;
    Ok((parent, refuse))
}

/// The mode of `--opt ipvlan_mode`.
///
/// # Errors
///
/// Any mode but `l2`, with why.
pub fn parse_ipvlan_mode(value: &str) -> Result<(), String> {
    match value {
        "l2" => Ok(()),
        "l3" | "l3s" => Err(format!(
            "ipvlan {value} (routed) is not weft's: use l2, or a bridge network, which weft routes"
        )),
        other => Err(format!("{other:?} is not an ipvlan mode: use l2")),
    }
}

/// A network's uplink port.
#[derive(Debug)]
struct Uplink {
    port: PortId,
    counters: Arc<PortCounters>,
}

/// See the module header.
#[derive(Debug)]
pub struct MacvlanDriver {
    bridge: Arc<BridgeDriver>,
    /// `Macvlan` or `Ipvlan`.
    kind: DriverKind,
    /// Each network's uplink port and its counters.
    uplinks: Mutex<HashMap<String, Uplink>>,
}

impl MacvlanDriver {
    /// A driver of `kind` (macvlan or ipvlan) whose networks live in
    /// `bridge`'s switch.
    pub fn new(bridge: Arc<BridgeDriver>, kind: DriverKind) -> Self {
        MacvlanDriver {
            bridge,
            kind,
            uplinks: Mutex::new(HashMap::new()),
        }
    }
}

impl NetworkDriver for MacvlanDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    fn create_network(&self, network: &Network) -> Result<(), DriverError> {
        let (parent, refuse) = network_parent(network)?;
        let ipvlan = self.kind == DriverKind::Ipvlan;
        // ipvlan's sandboxes reach each other as in macvlan's bridge mode.
        let mode = if ipvlan {
            UplinkMode::Bridge
        } else {
            parse_mode(network.options.get(MODE_OPTION).map(String::as_str)).map_err(&refuse)?
        };
        let socket = PacketSocket::open(&parent.interface).map_err(|e| {
            refuse(match e.kind() {
                std::io::ErrorKind::NotFound => e.to_string(),
                std::io::ErrorKind::PermissionDenied => "a packet socket on the host's interface needs CAP_NET_RAW in its namespace: run the daemon as root (a rootless daemon cannot join the host's LAN)".into(),
                _ => format!("opening a packet socket on it: {e}"),
            })
        })?;
        // ipvlan's frames all come to the parent's own MAC (or are
        // broadcast): no promiscuous mode.
        let mut port = PacketPort::new(socket, parent.vlan);
        if ipvlan {
            let mac = port.hardware_address().map_err(|e| refuse(e.to_string()))?;
            port = port.with_ipvlan(mac);
        } else {
            port.set_promiscuous(true)
                .map_err(|e| refuse(format!("promiscuous mode: {e}")))?;
        }
        self.bridge.create_network(network)?;
        let network_id = self
            .bridge
            .switch_network(&network.name)
            .ok_or_else(|| DriverError::UnknownNetwork(network.name.clone()))?;
        let device = PortDevice::Packet(Box::new(port));
        let (port, counters) = match self.bridge.datapath().add_uplink(network_id, device, mode) {
            Ok(added) => added,
            Err(e) => {
                let _ = self.bridge.delete_network(network);
                return Err(e.into());
            }
        };
        self.uplinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(network.name.clone(), Uplink { port, counters });
        tracing::info!(network = network.name, parent = parent.interface, vlan = ?parent.vlan, mode = ?mode, "network on its parent's LAN");
        Ok(())
    }

    fn delete_network(&self, network: &Network) -> Result<(), DriverError> {
        // The switch's network goes with all its ports, the uplink
        // included (its socket closes: promiscuous mode ends with it).
        self.uplinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&network.name);
        self.bridge.delete_network(network)
    }

    fn create_endpoint(
        &self,
        network: &Network,
        endpoint: &mut Endpoint,
    ) -> Result<(), DriverError> {
        self.bridge.create_endpoint(network, endpoint)
    }

    fn delete_endpoint(&self, network: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        self.bridge.delete_endpoint(network, endpoint)
    }

    fn join(&self, network: &Network, endpoint: &mut Endpoint) -> Result<(), DriverError> {
        self.bridge.join(network, endpoint)
    }

    fn leave(&self, network: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        self.bridge.leave(network, endpoint)
    }

    fn counters(&self, endpoint: &Endpoint) -> Option<PortCountersSnapshot> {
        self.bridge.counters(endpoint)
    }

    fn uplink(&self, network: &Network) -> Option<crate::driver::UplinkDetails> {
        let uplinks = self.uplinks.lock().unwrap_or_else(PoisonError::into_inner);
        let uplink = uplinks.get(&network.name)?;
        Some(crate::driver::UplinkDetails {
            parent: network.options.get(PARENT_OPTION).cloned()?,
            counters: uplink.counters.snapshot(),
        })
    }

    fn endpoints_changed(
        &self,
        network: &Network,
        endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        if self.kind == DriverKind::Ipvlan {
            let port = self
                .uplinks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&network.name)
                .map(|uplink| uplink.port);
            if let Some(port) = port {
                let sandboxes = endpoints
                    .iter()
                    .flat_map(|e| {
                        let mac = crate::driver::interface_mac(e);
                        e.addresses.iter().map(move |a| (a.addr(), mac))
                    })
                    .collect();
                self.bridge
                    .datapath()
                    .set_uplink_sandboxes(port, sandboxes)?;
            }
        }
        self.bridge.endpoints_changed(network, endpoints)
    }

    fn set_dns_upstreams(&self, upstreams: &[std::net::SocketAddr]) -> Result<(), DriverError> {
        self.bridge.set_dns_upstreams(upstreams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_split_into_interface_and_vlan() {
        assert_eq!(
            parse_parent("eth0").unwrap(),
            Parent {
                interface: "eth0".into(),
                vlan: None
            }
        );
        assert_eq!(parse_parent("eth0.50").unwrap().vlan, Some(50));
        assert_eq!(parse_parent("eth0.50").unwrap().interface, "eth0");
        assert!(parse_parent("eth0.0").unwrap_err().contains("out of range"));
        assert!(parse_parent("eth0.4095").is_err());
        assert!(parse_parent("").is_err());
        assert!(parse_parent("a/b").is_err());
        // A dot without digits is part of the name.
        assert_eq!(parse_parent("br.lan").unwrap().vlan, None);
        assert_eq!(parse_mode(None), Ok(UplinkMode::Bridge));
        assert_eq!(parse_mode(Some("private")), Ok(UplinkMode::Private));
        assert!(parse_mode(Some("passthru")).is_err());
    }
}
