//! `weft vm`: put a virtual machine on a network. The daemon listens on a
//! Unix socket for QEMU's `-netdev stream` (a switch port like a
//! sandbox's TAP, see `weft_datapath::stream_port`), and this command
//! prints the QEMU arguments that connect a guest to it with the
//! endpoint's MAC. The guest takes its address, gateway and DNS by DHCP
//! from the network's gateway.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use weft_cnm::model::EndpointKind;
use weft_vswitch::MacAddr;

use crate::client::Client;
use crate::network::{connect, netns_arg, EndpointArgs};

/// `weft vm NETWORK SOCKET`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// The VM's name, addresses (handed to the guest by DHCP) and published
    /// ports.
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// The guest's MAC [default: 02:42 + its IPv4 address].
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// A datagram socket (QEMU `-netdev dgram`, a frame per datagram)
    /// instead of a stream socket (`-netdev stream`).
    #[arg(long)]
    pub dgram: bool,
    /// The network (bridge or overlay).
    pub network: String,
    /// Where the daemon listens for the VM (its directory must exist);
    /// `weft network disconnect NETWORK SOCKET` removes it.
    pub path: String,
}

/// Make the VM's endpoint and print it and the QEMU arguments.
pub async fn run(client: &Client, args: VmArgs) -> Result<()> {
    let path = netns_arg(&args.path)?;
    if !path.starts_with('/') {
        bail!("give the socket's path (with a '/'), such as ./vm1.sock");
    }
    let kind = if args.dgram {
        EndpointKind::Dgram
    } else {
        EndpointKind::Stream
    };
    let mut request = args.endpoint.request(path, kind);
    request.mac = args.mac;
    let endpoint = connect(client, &args.network, &request).await?;
    println!(
        "{}",
        qemu_arguments(&endpoint.sandbox, endpoint.kind, endpoint.mac)
    );
    Ok(())
}

/// The QEMU arguments of a guest NIC on the socket at `path`. The MAC
/// must be the endpoint's: port security lets only it through, and the
/// gateway's DHCP server knows the guest by it. A datagram guest binds a
/// socket of its own beside weft's (`PATH.guest`).
pub fn qemu_arguments(path: &Path, kind: EndpointKind, mac: Option<MacAddr>) -> String {
    let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
    let netdev = match kind {
        EndpointKind::Dgram => format!(
            "dgram,id=weft0,local.type=unix,local.path={}.guest,remote.type=unix,remote.path={}",
            path.display(),
            path.display()
        ),
        _ => format!(
            "stream,id=weft0,server=off,addr.type=unix,addr.path={}",
            path.display()
        ),
    };
    format!("-netdev {netdev} -device virtio-net-pci,netdev=weft0{mac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_arguments_name_the_socket_and_the_mac() {
        let mac: MacAddr = "02:42:0a:00:00:05".parse().unwrap();
        assert_eq!(
            qemu_arguments(
                Path::new("/run/user/1000/vm1.sock"),
                EndpointKind::Stream,
                Some(mac)
            ),
            "-netdev stream,id=weft0,server=off,addr.type=unix,addr.path=/run/user/1000/vm1.sock -device virtio-net-pci,netdev=weft0,mac=02:42:0a:00:00:05"
        );
        assert_eq!(
            qemu_arguments(Path::new("/run/vm2.sock"), EndpointKind::Dgram, None),
            "-netdev dgram,id=weft0,local.type=unix,local.path=/run/vm2.sock.guest,remote.type=unix,remote.path=/run/vm2.sock -device virtio-net-pci,netdev=weft0"
        );
    }
}
