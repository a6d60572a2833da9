//! The underlay transport: how tunnelled frames reach another host.
//!
//! # Theory of operation
//!
//! The overlay's cores decide *what* to send to *which* host; a driver
//! outside this crate's sans-IO core owns the socket and implements
//! [`Transport`]. Plain VXLAN over UDP is the default driver; a QUIC driver
//! (frames as QUIC datagrams, RFC 9221) implements the same trait, so the
//! switch's tunnel port does not care which one carries its frames.
//!
//! The trait is object-safe (`Box<dyn Transport>`) and deliberately small:
//! one call to send a datagram, one to learn the largest payload. Sending
//! never blocks: a driver whose queue is full drops the datagram and says so
//! with [`SendError::WouldBlock`], which the caller counts (a tunnel, like a
//! wire, may lose frames; inner protocols retransmit).
//!
//! Receiving is the driver's business: it hands what it reads to
//! [`crate::vxlan::decap`] (after checking the sender is a member or a
//! static peer) and to [`crate::Node::handle_datagram`] for gossip.

use std::net::SocketAddr;

/// Why a datagram was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The driver's queue is full; the datagram was dropped.
    #[error("transport queue full, datagram dropped")]
    WouldBlock,
    /// The payload is larger than [`Transport::max_payload`].
    #[error("payload of {len} bytes exceeds the transport's maximum of {max}")]
    TooLarge {
        /// Length of the rejected payload.
        len: usize,
        /// The transport's maximum payload.
        max: usize,
    },
    /// The operating system refused the send.
    #[error("sending to {peer} failed")]
    Io {
        /// The intended receiver.
        peer: SocketAddr,
        /// The error from the socket.
        #[source]
        source: std::io::Error,
    },
}

/// A way to carry one datagram (a VXLAN header and inner frame, or a
/// gossip datagram) to a peer host.
pub trait Transport {
    /// Queues `payload` for `peer`; never blocks.
    ///
    /// # Errors
    ///
    /// [`SendError`] when the datagram was not queued; it is then lost.
    fn send(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<(), SendError>;

    /// The largest payload [`Transport::send`] accepts, in bytes (for UDP:
    /// the underlay path MTU less the outer IP and UDP headers).
    fn max_payload(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory transport, as a test or the simulation would write one.
    struct Recorder {
        sent: Vec<(SocketAddr, Vec<u8>)>,
    }

    impl Transport for Recorder {
        fn send(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<(), SendError> {
            if payload.len() > self.max_payload() {
                return Err(SendError::TooLarge {
                    len: payload.len(),
                    max: self.max_payload(),
                });
            }
            self.sent.push((peer, payload.to_vec()));
            Ok(())
        }

        fn max_payload(&self) -> usize {
            1472
        }
    }

    #[test]
    fn is_object_safe_and_enforces_its_limit() {
        let mut transport: Box<dyn Transport> = Box::new(Recorder { sent: Vec::new() });
        let peer: SocketAddr = "192.0.2.7:4789".parse().unwrap();
        transport.send(peer, &[0; 1472]).unwrap();
        assert!(matches!(
            transport.send(peer, &[0; 1473]),
            Err(SendError::TooLarge {
                len: 1473,
                max: 1472
            })
        ));
    }
}
