//! The datapaths weft's overlay is measured against, built in the same
//! lab: the kernel's `vxlan` + bridge (as `shared/anchors/vxlan.sh`) and
//! wireguard-go (as `shared/anchors/wireguard-go.sh`), both on the same
//! underlay bridge as weft's hosts.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{
    add_host, sandbox_interface, wait_until, Datapath, Side, CONVERGE_TIMEOUT, KERNEL_HOSTS,
    KERNEL_SANDBOXES, KERNEL_SANDBOX_IPS, KERNEL_UNDERLAY, KERNEL_VNI, OVERLAY_MTU,
};
use crate::lab::Lab;
use crate::topology;

/// wireguard-go's hosts (the tunnel is host to host: each host is its own
/// "sandbox", as in the anchor).
pub(super) const WIREGUARD_HOSTS: [&str; 2] = ["wb-ov-g1", "wb-ov-g2"];
/// Their underlay addresses.
pub(super) const WIREGUARD_UNDERLAY: [&str; 2] = ["192.0.2.21", "192.0.2.22"];
/// The tunnel's addresses.
pub(super) const WIREGUARD_TUNNEL_IPS: [&str; 2] = ["10.242.0.1", "10.242.0.2"];
/// The tunnel devices: distinct names, because wireguard-go's UAPI
/// sockets under /var/run/wireguard are shared by every namespace.
const WIREGUARD_DEVICES: [&str; 2] = ["wbwg1", "wbwg2"];
/// WireGuard's MTU on a 1500-byte underlay (wg-quick's default).
pub(super) const WIREGUARD_MTU: &str = "1420";

/// Two hosts with a kernel vxlan device and a bridge each, one sandbox
/// behind each bridge.
pub(super) fn build_kernel(lab: &mut Lab) -> Result<Side> {
    for index in 0..2 {
        let (host, sandbox) = (KERNEL_HOSTS[index], KERNEL_SANDBOXES[index]);
        let (local, remote) = (KERNEL_UNDERLAY[index], KERNEL_UNDERLAY[1 - index]);
        add_host(lab, host, &format!("pk{}", index + 1), local)?;
        lab.add_netns(sandbox)?;
        lab.ip(
            host,
            &[
                "link", "add", "vx0", "type", "vxlan", "id", KERNEL_VNI, "dstport", "4789",
                "local", local, "remote", remote, "dev", "v0",
            ],
        )?;
        lab.ip(host, &["link", "add", "br0", "type", "bridge"])?;
        lab.ip(
            host,
            &[
                "link",
                "add",
                "vs0",
                "mtu",
                OVERLAY_MTU,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                OVERLAY_MTU,
                "netns",
                sandbox,
            ],
        )?;
        lab.ip(host, &["link", "set", "vx0", "master", "br0"])?;
        lab.ip(host, &["link", "set", "vs0", "master", "br0"])?;
        for device in ["vx0", "vs0", "br0"] {
            lab.ip(host, &["link", "set", device, "up"])?;
        }
        lab.ip(
            sandbox,
            &[
                "addr",
                "add",
                &format!("{}/24", KERNEL_SANDBOX_IPS[index]),
                "dev",
                "eth0",
            ],
        )?;
        lab.ip(sandbox, &["link", "set", "eth0", "up"])?;
    }
    let server_ip = KERNEL_SANDBOX_IPS[1];
    topology::wait_reachable(
        lab,
        KERNEL_SANDBOXES[0],
        server_ip.parse().context("kernel sandbox address")?,
    )?;
    let (_, client_mtu) = sandbox_interface(lab, KERNEL_SANDBOXES[0])?;
    Ok(Side {
        datapath: Datapath::Kernel,
        client_ns: KERNEL_SANDBOXES[0],
        server_ns: KERNEL_SANDBOXES[1],
        server_ip: server_ip.to_owned(),
        daemon_pids: Vec::new(),
        sandbox_mtu: client_mtu,
    })
}

/// Two hosts joined by wireguard-go (Debian's), L3, host to host.
pub(super) fn build_wireguard(lab: &mut Lab) -> Result<Side> {
    let dir = lab.work_dir().join("wireguard");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut public = Vec::new();
    for (index, host) in WIREGUARD_HOSTS.iter().enumerate() {
        add_host(
            lab,
            host,
            &format!("pg{}", index + 1),
            WIREGUARD_UNDERLAY[index],
        )?;
        let key = lab
            .run(&["wg", "genkey"], Duration::from_secs(5))?
            .success()?
            .stdout;
        let key_path = dir.join(format!("wg{}.key", index + 1));
        std::fs::write(&key_path, key.trim()).context("writing a WireGuard key")?;
        let pubkey = lab
            .run(
                &[
                    "sh",
                    "-c",
                    "wg pubkey < \"$1\"",
                    "sh",
                    &key_path.display().to_string(),
                ],
                Duration::from_secs(5),
            )?
            .success()?
            .stdout;
        public.push((key_path, pubkey.trim().to_owned()));
    }
    for index in 0..2 {
        let (host, device) = (WIREGUARD_HOSTS[index], WIREGUARD_DEVICES[index]);
        let other = 1 - index;
        lab.spawn_in(
            host,
            "wireguard-go",
            &[
                "env",
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                "wireguard-go",
                "-f",
                device,
            ],
        )?;
        wait_until(
            lab,
            "wireguard-go makes its device",
            CONVERGE_TIMEOUT,
            |lab| {
                Ok(lab
                    .run_in(
                        host,
                        &["ip", "link", "show", device],
                        Duration::from_secs(5),
                    )?
                    .status
                    .success())
            },
        )?;
        let key_path = public[index].0.display().to_string();
        let allowed = format!("{}/32", WIREGUARD_TUNNEL_IPS[other]);
        let endpoint = format!("{}:51820", WIREGUARD_UNDERLAY[other]);
        lab.run_in(
            host,
            &[
                "wg",
                "set",
                device,
                "private-key",
                &key_path,
                "listen-port",
                "51820",
                "peer",
                &public[other].1,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
            Duration::from_secs(5),
        )?
        .success()?;
        lab.ip(
            host,
            &[
                "addr",
                "add",
                &format!("{}/24", WIREGUARD_TUNNEL_IPS[index]),
                "dev",
                device,
            ],
        )?;
        lab.ip(host, &["link", "set", device, "mtu", WIREGUARD_MTU, "up"])?;
    }
    let server_ip = WIREGUARD_TUNNEL_IPS[1];
    topology::wait_reachable(
        lab,
        WIREGUARD_HOSTS[0],
        server_ip.parse().context("wireguard tunnel address")?,
    )?;
    Ok(Side {
        datapath: Datapath::WireguardGo,
        client_ns: WIREGUARD_HOSTS[0],
        server_ns: WIREGUARD_HOSTS[1],
        server_ip: server_ip.to_owned(),
        daemon_pids: Vec::new(),
        sandbox_mtu: WIREGUARD_MTU.to_owned(),
    })
}
