//! The host-side sockets a join binds before an endpoint becomes a port:
//! a VM's stream socket, and the host sockets of published ports (see the
//! parent module's header, "Published ports"); and what is left of a
//! port's device when it leaves.

use std::net::SocketAddr;
use std::path::Path;

use weft_datapath::dgram_port::DgramPort;
use weft_datapath::published::{HostListener, PublishError};
use weft_datapath::stream_port::StreamPort;
use weft_datapath::taps::PortDevice;

use crate::model::{Endpoint, PortMapping};

use super::error::DriverError;

/// Bind a VM's stream socket at `path` and make it a port. A socket file
/// already there is stale (the controller refused live ones, and after a
/// restart it is this endpoint's own from the last run): it is replaced.
pub(super) fn bind_stream_port(path: &Path) -> Result<StreamPort, DriverError> {
    remove_stale_socket(path)?;
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(socket_error(path))?;
    StreamPort::new(listener, path.to_owned()).map_err(socket_error(path))
}

/// Bind a VM's datagram socket at `path` and make it a port; a stale
/// socket file is replaced as for a stream socket.
pub(super) fn bind_dgram_port(path: &Path) -> Result<DgramPort, DriverError> {
    remove_stale_socket(path)?;
    let socket = std::os::unix::net::UnixDatagram::bind(path).map_err(socket_error(path))?;
    DgramPort::new(socket, path.to_owned()).map_err(socket_error(path))
}

/// Remove a socket file left at `path` (never another kind of file).
fn remove_stale_socket(path: &Path) -> Result<(), DriverError> {
    if std::fs::symlink_metadata(path)
        .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
    {
        std::fs::remove_file(path).map_err(socket_error(path))?;
    }
    Ok(())
}

fn socket_error(path: &Path) -> impl Fn(std::io::Error) -> DriverError + '_ {
    move |source| DriverError::StreamSocket {
        path: path.to_owned(),
        source,
    }
}

/// What is left of a port's device once it is off the switch: a TAP stops
/// being persistent (the interface disappears from the sandbox when this
/// last fd closes); a VM socket's file is removed.
pub(super) fn release_device(device: PortDevice) {
    match device {
        PortDevice::Tap(tap) => {
            if let Err(e) = tap.set_persistent(false) {
                tracing::warn!(ifname = tap.name(), error = %e, "could not clear TAP persistence");
            }
        }
        PortDevice::Stream(stream) => remove_vm_socket(stream.path()),
        PortDevice::Dgram(dgram) => remove_vm_socket(dgram.path()),
        // Its socket closes here (and with it the promiscuous mode).
        PortDevice::Packet(_) => {}
    }
}

fn remove_vm_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove the VM's socket");
    }
}

/// Bind the host sockets of `endpoint.ports` (see the module header) and
/// write the bound host ports back; each with the sandbox address it leads
/// to. A mapping without a host address on a dual-stack endpoint listens
/// on `0.0.0.0` and `[::]` with one port ([`Endpoint::publish_listens`]).
/// When `restoring`, a port that cannot be bound is logged and dropped
/// from the endpoint; otherwise it is the error (and the sockets bound so
/// far close).
pub(super) fn bind_published_ports(
    endpoint: &mut Endpoint,
    restoring: bool,
) -> Result<Vec<(HostListener, SocketAddr)>, DriverError> {
    let mut listeners = Vec::with_capacity(endpoint.ports.len());
    let mut kept = Vec::with_capacity(endpoint.ports.len());
    for mapping in &endpoint.ports {
        let bound = bind_one_mapping(endpoint, mapping);
        match bound {
            Ok((bound, port)) => {
                listeners.extend(bound);
                kept.push(PortMapping {
                    host_port: port,
                    ..*mapping
                });
            }
            Err(e) if restoring => {
                tracing::warn!(sandbox = %endpoint.sandbox.display(), mapping = %mapping, error = %crate::error_chain::error_chain(&e), "published port dropped: disconnect and connect again to publish it");
            }
            Err(e) => return Err(e),
        }
    }
    endpoint.ports = kept;
    Ok(listeners)
}

/// Whether a bind failed because the host has no IPv6 at all.
fn ipv6_is_off(e: &PublishError) -> bool {
    match e {
        PublishError::NoSuchAddress(_) => true,
        PublishError::Bind { source, .. } => source.raw_os_error() == Some(libc::EAFNOSUPPORT),
        _ => false,
    }
}

/// Tries at a host port the kernel picks for the first family that is
/// also free in the second (another program may hold it there).
const DUAL_STACK_PICKS: usize = 8;

/// Bind every host socket of one mapping on one port; the sockets with
/// their targets, and the port.
fn bind_one_mapping(
    endpoint: &Endpoint,
    mapping: &PortMapping,
) -> Result<(Vec<(HostListener, SocketAddr)>, u16), DriverError> {
    let plan = endpoint.publish_listens(mapping);
    if plan.is_empty() {
        return Err(DriverError::NoAddressFor {
            mapping: mapping.to_string(),
        });
    }
    let proto = mapping.proto.into();
    let mut last_error = None;
    for _ in 0..DUAL_STACK_PICKS {
        let mut bound = Vec::with_capacity(plan.len());
        let mut port = mapping.host_port;
        let mut failed = None;
        for (i, (host, target)) in plan.iter().enumerate() {
            let host = SocketAddr::new(host.ip(), port);
            match HostListener::bind(proto, host) {
                Ok(listener) => {
                    if i == 0 {
                        port = listener
                            .local_addr()
                            .map_err(|source| PublishError::Bind {
                                addr: host,
                                proto,
                                source,
                            })?
                            .port();
                    }
                    bound.push((listener, *target));
                }
                // A host whose kernel has IPv6 off: the IPv4 socket alone.
                Err(e) if i > 0 && ipv6_is_off(&e) => {
                    tracing::debug!(%host, "no IPv6 on this host: published port on IPv4 only");
                }
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        match failed {
            None => return Ok((bound, port)),
            // The kernel's pick for IPv4 is taken on IPv6: pick again.
            Some((i, e @ PublishError::InUse { .. })) if i > 0 && mapping.host_port == 0 => {
                last_error = Some(e);
            }
            Some((_, e)) => return Err(e.into()),
        }
    }
    Err(last_error
        .map(DriverError::from)
        .unwrap_or_else(|| DriverError::NoAddressFor {
            mapping: mapping.to_string(),
        }))
}
