//! The TCP relay's host sockets: one non-blocking `TcpStream` per flow,
//! driven by the relay core's actions and readiness.
//!
//! # Theory of operation
//!
//! The core (`weft_services::tcp_nat`) asks for sockets with
//! [`TcpAction`]s: connect one for a sandbox's SYN, write what the sandbox
//! sent, read what the host has, shut down the write side, close or reset.
//! This module carries them out ([`TcpFlows::act`]) and reports back what
//! the sockets did: connected or failed, and data lent to the core through
//! read and write closures so nothing is copied twice.
//!
//! Sockets are edge-triggered: a flow remembers "readable"/"writable" until
//! a read or write says `EAGAIN`, so an action that comes later (the
//! sandbox's window opened, the stack has data) finds the socket ready
//! without waiting for an event that will not come again.

use std::io;
use std::time::Instant;

use mio::{Interest, Registry, Token};
use rustc_hash::FxHashMap;
use weft_services::nat::FlowId;
use weft_services::tcp_nat::{ConnectFailure, HostRead, HostWrite, TcpAction, TcpNat};

use crate::tokens::{Source, Tokens};

/// The host socket of a relayed TCP flow, with its readiness as last seen.
#[derive(Debug)]
struct FlowIo {
    stream: mio::net::TcpStream,
    token: Token,
    connected: bool,
    readable: bool,
    writable: bool,
}

/// See the module header.
#[derive(Debug, Default)]
pub struct TcpFlows {
    flows: FxHashMap<FlowId, FlowIo>,
}

impl TcpFlows {
    /// Carry out one socket action of the relay.
    pub fn act(
        &mut self,
        relay: &mut TcpNat,
        registry: &Registry,
        tokens: &mut Tokens,
        action: TcpAction,
    ) {
        let now = Instant::now();
        match action {
            TcpAction::Connect { flow, remote } => match mio::net::TcpStream::connect(remote) {
                Ok(stream) => self.add(relay, registry, tokens, flow, stream, false),
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "TCP NAT connect");
                    relay.handle_connect_failed(flow, connect_failure(&e));
                }
            },
            TcpAction::Send { flow } => self.send(relay, flow, now),
            TcpAction::Receive { flow } => self.receive(relay, flow, now),
            TcpAction::ShutdownWrite { flow } => {
                if let Some(io) = self.flows.get(&flow) {
                    let _ = io.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            TcpAction::Close { flow } => self.remove(registry, tokens, flow, false),
            TcpAction::Reset { flow } => self.remove(registry, tokens, flow, true),
        }
    }

    /// Take a flow's socket: `connected` for one accepted on a published
    /// port, else a connect in progress.
    pub fn add(
        &mut self,
        relay: &mut TcpNat,
        registry: &Registry,
        tokens: &mut Tokens,
        flow: FlowId,
        mut stream: mio::net::TcpStream,
        connected: bool,
    ) {
        let _ = stream.set_nodelay(true);
        let token = tokens.insert(Source::TcpFlow(flow));
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            tracing::debug!(error = %e, "TCP NAT register");
            tokens.remove(token);
            relay.host_failed(Instant::now(), flow);
            return;
        }
        self.flows.insert(
            flow,
            FlowIo {
                stream,
                token,
                connected,
                readable: false,
                writable: false,
            },
        );
    }

    fn remove(&mut self, registry: &Registry, tokens: &mut Tokens, flow: FlowId, reset: bool) {
        let Some(mut io) = self.flows.remove(&flow) else {
            return;
        };
        let _ = registry.deregister(&mut io.stream);
        tokens.remove(io.token);
        if reset {
            // Linger 0: close sends a reset, as the sandbox's side did.
            let _ = nix::sys::socket::setsockopt(
                &io.stream,
                nix::sys::socket::sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
    }

    /// Readiness of a flow's host socket.
    pub fn ready(
        &mut self,
        relay: &mut TcpNat,
        registry: &Registry,
        tokens: &mut Tokens,
        (flow, readable, writable): (FlowId, bool, bool),
    ) {
        let now = Instant::now();
        let Some(io) = self.flows.get_mut(&flow) else {
            return;
        };
        if !io.connected {
            if !writable && !readable {
                return;
            }
            match io.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    tracing::debug!(flow = flow.0, error = %e, "TCP NAT connect failed");
                    self.remove(registry, tokens, flow, false);
                    relay.handle_connect_failed(flow, connect_failure(&e));
                    return;
                }
                Ok(None) => {}
            }
            match io.stream.peer_addr() {
                Ok(_) => {
                    io.connected = true;
                    relay.handle_connected(now, flow);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.remove(registry, tokens, flow, false);
                    relay.handle_connect_failed(flow, connect_failure(&e));
                    return;
                }
            }
        }
        if let Some(io) = self.flows.get_mut(&flow) {
            io.readable |= readable;
            io.writable |= writable;
        }
        if writable {
            self.send(relay, flow, now);
        }
        if readable {
            self.receive(relay, flow, now);
        }
    }

    /// Write what the sandbox sent to the host socket, if it is writable.
    fn send(&mut self, relay: &mut TcpNat, flow: FlowId, now: Instant) {
        let Some(io) = self.flows.get_mut(&flow) else {
            return;
        };
        if !io.connected || !io.writable {
            return;
        }
        let stream = &io.stream;
        let outcome = relay.send_to_host(now, flow, |data| io::Write::write(&mut &*stream, data));
        if outcome == HostWrite::Blocked {
            io.writable = false;
        }
    }

    /// Read the host socket into the stack, if it has data.
    fn receive(&mut self, relay: &mut TcpNat, flow: FlowId, now: Instant) {
        let Some(io) = self.flows.get_mut(&flow) else {
            return;
        };
        if !io.connected || !io.readable {
            return;
        }
        let stream = &io.stream;
        let outcome = relay.receive_from_host(now, flow, |buf| io::Read::read(&mut &*stream, buf));
        if matches!(outcome, HostRead::Drained | HostRead::Eof) {
            io.readable = false;
        }
    }
}

/// What a failed connect means for the sandbox: refused (a reset) or
/// unreachable (ICMP).
fn connect_failure(e: &io::Error) -> ConnectFailure {
    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
        ConnectFailure::Refused
    } else {
        ConnectFailure::Unreachable
    }
}
