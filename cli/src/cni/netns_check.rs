//! CHECK's look inside the container: does `CNI_IFNAME` exist in the
//! netns, up, with weft's MAC and addresses?
//!
//! A thread of its own enters the netns (`setns(CLONE_NEWNET)` changes
//! only the calling thread) and lists the interfaces with `getifaddrs`,
//! whose netlink socket belongs to the namespace of the thread that opens
//! it. The thread ends with the answer, so the process's other threads
//! never see the container's namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;
use nix::net::if_::InterfaceFlags;
use nix::sched::CloneFlags;

/// Whether `ifname` in `netns` is up with `mac` and every one of
/// `addresses`; the difference otherwise.
///
/// # Errors
///
/// What differs, or why the netns could not be read.
pub fn interface_matches(
    netns: &Path,
    ifname: &str,
    mac: &str,
    addresses: &[IpNet],
) -> Result<(), String> {
    let netns = File::open(netns).map_err(|e| format!("opening {}: {e}", netns.display()))?;
    let ifname = ifname.to_owned();
    let mac = mac.to_ascii_lowercase();
    let addresses = addresses.to_vec();
    let worker = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the netns: {e}"))?;
        let mut found = false;
        let mut up = false;
        let mut macs = Vec::new();
        let mut have = Vec::new();
        for entry in nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))? {
            if entry.interface_name != ifname {
                continue;
            }
            found = true;
            up |= entry.flags.contains(InterfaceFlags::IFF_UP);
            let Some(address) = entry.address else {
                continue;
            };
            if let Some(link) = address.as_link_addr() {
                if let Some(bytes) = link.addr() {
                    macs.push(
                        bytes
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
            } else if let Some(v4) = address.as_sockaddr_in() {
                have.push(std::net::IpAddr::V4(v4.ip()));
            } else if let Some(v6) = address.as_sockaddr_in6() {
                have.push(std::net::IpAddr::V6(v6.ip()));
            }
        }
        if !found {
            return Err(format!("the netns has no interface {ifname}"));
        }
        if !up {
            return Err(format!("{ifname} is down"));
        }
        if !macs.contains(&mac) {
            return Err(format!("{ifname} has MAC {macs:?}, weft gave it {mac}"));
        }
        for address in &addresses {
            if !have.contains(&address.addr()) {
                return Err(format!("{ifname} lacks its address {address}"));
            }
        }
        Ok(())
    });
    worker
        .join()
        .unwrap_or_else(|_| Err("the check thread panicked".to_owned()))
}
