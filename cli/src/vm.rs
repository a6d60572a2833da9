//! `weft vm`: put a virtual machine on a network. The daemon listens on a
//! Unix socket for QEMU's `-netdev stream` (a switch port like a
//! sandbox's TAP, see `weft_datapath::stream_port`), and this command
//! prints the QEMU arguments that connect a guest to it with the
//! endpoint's MAC. The guest takes its address, gateway and DNS by DHCP
//! from the network's gateway.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use hyper::Method;
use weft_cnm::model::{Endpoint, EndpointKind};
use weft_vswitch::MacAddr;

use crate::client::Client;
use crate::network::{endpoint_line, netns_arg, network_path, port_lines, EndpointArgs};

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
    let mut request = args.endpoint.request(path, EndpointKind::Stream);
    request.mac = args.mac;
    let endpoint: Endpoint = client
        .call(
            Method::POST,
            &network_path(&args.network, "/connect"),
            Some(&request),
        )
        .await?;
    println!("{}", endpoint_line(&endpoint));
    for line in port_lines(&endpoint) {
        println!("{line}");
    }
    println!("{}", qemu_arguments(&endpoint.sandbox, endpoint.mac));
    Ok(())
}

/// The QEMU arguments of a guest NIC on the socket at `path`. The MAC
/// must be the endpoint's: port security lets only it through, and the
/// gateway's DHCP server knows the guest by it.
pub fn qemu_arguments(path: &Path, mac: Option<MacAddr>) -> String {
    let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
    format!(
        "-netdev stream,id=weft0,server=off,addr.type=unix,addr.path={} -device virtio-net-pci,netdev=weft0{mac}",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_arguments_name_the_socket_and_the_mac() {
        let mac: MacAddr = "02:42:0a:00:00:05".parse().unwrap();
        assert_eq!(
            qemu_arguments(Path::new("/run/user/1000/vm1.sock"), Some(mac)),
            "-netdev stream,id=weft0,server=off,addr.type=unix,addr.path=/run/user/1000/vm1.sock -device virtio-net-pci,netdev=weft0,mac=02:42:0a:00:00:05"
        );
    }
}
