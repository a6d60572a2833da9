//! One network's userspace TCP stack (smoltcp in "any IP" mode at the
//! gateway's MAC) and how it is taught the sandboxes' MACs: the relay's
//! per-network state, apart from the flows it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use weft_vswitch::wire::ethernet::{EthernetFrame, MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use weft_vswitch::GatewayConfig;

use crate::nat::FlowId;
use crate::smol_device::{arp_request, FrameQueues};

/// Largest frame the stack takes or makes: a 64 KiB IP packet.
pub(super) const MAX_FRAME: usize = 65_535 + 14;

/// Frames queued in either direction per network.
pub(super) const MAX_QUEUED_FRAMES: usize = 4096;

/// How often a sandbox's MAC is taught to the stack again.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(20);

/// Senders remembered as taught (a network's sandboxes); past this the
/// memory starts over.
const MAX_TAUGHT: usize = 4096;

pub(super) struct Stack {
    pub(super) iface: Interface,
    pub(super) device: FrameQueues,
    pub(super) sockets: SocketSet<'static>,
    pub(super) mac: MacAddr,
    pub(super) gateway_v4: Option<Ipv4Addr>,
    pub(super) flows: Vec<FlowId>,
    /// Senders whose MAC the stack was taught, and when.
    pub(super) taught: FxHashMap<Ipv4Addr, (MacAddr, Instant)>,
}

impl Stack {
    pub(super) fn new(gateway: &GatewayConfig, seed: u64) -> Stack {
        let mut device = FrameQueues::new(MAX_FRAME, MAX_QUEUED_FRAMES);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(gateway.mac.0)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.set_any_ip(true);
        let gateway_v4 = gateway.ipv4.first().copied();
        let gateway_v6: Option<Ipv6Addr> = gateway.ipv6.first().copied();
        iface.update_ip_addrs(|addrs| {
            // Prefix 0: every address counts as on-link, so the stack
            // answers each sandbox directly by its MAC.
            if let Some(v4) = gateway_v4 {
                let _ = addrs.push(IpCidr::new(IpAddr::V4(v4).into(), 0));
            }
            if let Some(v6) = gateway_v6 {
                let _ = addrs.push(IpCidr::new(IpAddr::V6(v6).into(), 0));
            }
        });
        Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            mac: gateway.mac,
            gateway_v4,
            flows: Vec::new(),
            taught: FxHashMap::default(),
        }
    }

    /// Feed a frame whose only purpose is to teach the stack a neighbour,
    /// and discard what the stack answers to it.
    pub(super) fn learn(&mut self, now: Instant, epoch: Instant, arp: &[u8]) {
        let micros = now.saturating_duration_since(epoch).as_micros();
        let smol_now =
            smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX));
        let queued = self.device.tx.len();
        self.device.push_rx(arp.to_vec());
        self.iface
            .poll(smol_now, &mut self.device, &mut self.sockets);
        // Frames already queued are kept; the ARP reply (last) is dropped,
        // and anything else the poll sent stays.
        let mut extra: Vec<Vec<u8>> = self.device.tx.drain(queued..).collect();
        extra.retain(|f| {
            EthernetFrame::new_checked(&f[..]).is_ok_and(|e| e.ethertype() != ETHERTYPE_ARP)
        });
        self.device.tx.extend(extra);
    }

    /// Teach the stack again the MAC of a sandbox it was taught before
    /// (its neighbour entry lasts a minute): before a reset of a flow that
    /// was quiet for longer, which would otherwise wait for an ARP answer
    /// and be lost with the flow.
    pub(super) fn reteach(&mut self, now: Instant, epoch: Instant, sandbox: IpAddr) {
        let IpAddr::V4(ip) = sandbox else {
            return;
        };
        let Some((mac, _)) = self.taught.get(&ip).copied() else {
            return;
        };
        let arp = arp_request(
            mac,
            ip,
            self.mac,
            self.gateway_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
        );
        self.learn(now, epoch, &arp);
        self.taught.insert(ip, (mac, now));
    }

    /// An ARP request from the sender of an IPv4 frame, unless the stack
    /// was taught this sender's MAC recently (smoltcp keeps a neighbour
    /// for a minute; teaching it every [`NEIGHBOUR_REFRESH`] keeps it
    /// fresh without a second stack pass per frame).
    pub(super) fn synthetic_arp(&mut self, now: Instant, frame: &[u8]) -> Option<Vec<u8>> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return None;
        }
        let ip = eth.payload();
        let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        let src = Ipv4Addr::from(src);
        let sender = eth.source();
        if let Some((mac, at)) = self.taught.get(&src) {
            if *mac == sender && now.saturating_duration_since(*at) < NEIGHBOUR_REFRESH {
                return None;
            }
        }
        if self.taught.len() >= MAX_TAUGHT {
            self.taught.clear();
        }
        self.taught.insert(src, (sender, now));
        Some(arp_request(
            sender,
            src,
            self.mac,
            self.gateway_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
        ))
    }
}

pub(super) fn new_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    // A relay forwards what it has at once: no Nagle, and ACKs without
    // delay so the sandbox's window keeps moving.
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    socket
}
