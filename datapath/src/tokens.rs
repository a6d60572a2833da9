//! The token table: every fd the event loop polls, by what it is.
//!
//! # Theory of operation
//!
//! Each registered fd gets its `mio::Token` from one slab ([`Tokens`]),
//! whose entry says what kind of fd it is ([`Source`]) and which one (a
//! switch port, a NAT flow, a published port...). The loop's dispatch is
//! one lookup and one `match`: no token ranges to keep apart, and a slot
//! freed by one kind of fd can serve any other. The waker has a fixed token
//! outside the slab ([`WAKER`]).
//!
//! A token may be looked up after its fd was deregistered (an event of the
//! same turn, a socket queued for another read): the slot is then empty, or
//! holds a newer fd that gets a spurious readiness, which every reader
//! handles (it reads until `WouldBlock`).

use mio::Token;
use weft_services::nat::FlowId;
use weft_vswitch::PortId;

/// The id of a published port in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId(pub u32);

/// The waker's token: commands from the control plane are queued.
pub const WAKER: Token = Token(usize::MAX);

/// What a registered fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A local port's device, by its switch port: a sandbox's TAP, or the
    /// connection of a VM's stream socket.
    Port(PortId),
    /// The listening socket of a VM's stream port.
    StreamListener(PortId),
    /// The overlay's transport.
    Tunnel(crate::tunnel::Carrier),
    /// The socket for upstream DNS resolvers of one address family.
    Upstream {
        /// IPv4 (else IPv6).
        v4: bool,
    },
    /// A NAT flow's UDP or ping socket.
    Nat(FlowId),
    /// A TCP relay flow's host socket.
    TcpFlow(FlowId),
    /// A published port's listening or bound socket.
    Published(PublishId),
}

/// See the module header.
#[derive(Debug, Default)]
pub struct Tokens(slab::Slab<Source>);

impl Tokens {
    /// A token for a new fd of this kind.
    pub fn insert(&mut self, source: Source) -> Token {
        Token(self.0.insert(source))
    }

    /// Free a token (its fd was deregistered).
    pub fn remove(&mut self, token: Token) {
        self.0.try_remove(token.0);
    }

    /// What `token` is now, if anything.
    pub fn get(&self, token: Token) -> Option<Source> {
        self.0.get(token.0).copied()
    }

    /// Tokens in use.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No token in use.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_source_until_freed_and_slots_are_reused() {
        let mut tokens = Tokens::default();
        let tap = tokens.insert(Source::Port(PortId(3)));
        let nat = tokens.insert(Source::Nat(FlowId(9)));
        assert_ne!(tap, nat);
        assert_ne!(tap, WAKER);
        assert_eq!(tokens.get(tap), Some(Source::Port(PortId(3))));
        assert_eq!(tokens.get(nat), Some(Source::Nat(FlowId(9))));
        tokens.remove(tap);
        assert_eq!(tokens.get(tap), None);
        tokens.remove(tap);
        assert_eq!(tokens.len(), 1);
        let reused = tokens.insert(Source::Tunnel(crate::tunnel::Carrier::Vxlan));
        assert_eq!(reused, tap, "a freed slot serves the next fd");
        assert_eq!(tokens.get(WAKER), None);
    }
}
