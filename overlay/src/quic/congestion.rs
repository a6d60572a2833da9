//! The tunnel's congestion control: none of its own.
//!
//! # Theory of operation
//!
//! A QUIC tunnel carries other flows' packets, and those flows (TCP inside
//! the sandboxes, QUIC of their own) already control their congestion. A
//! second controller in the tunnel (quinn's default is CUBIC) would queue
//! their packets in the tunnel when its window is full and release them in
//! its own sawtooth: the inner flows would see delay instead of loss, and
//! two control loops stacked on one path oscillate against each other.
//! Overlay frames ride QUIC datagrams (RFC 9221), which are never
//! retransmitted, so there is no head-of-line blocking to begin with; what
//! remains is the window, and [`Transparent`]'s is wide enough never to
//! bind (and above quinn's pacing limit, so no pacing either): a datagram
//! leaves when the inner flow sends it, a loss on the underlay is a loss the
//! inner flow sees and answers. Loss detection, RTT estimates and PMTUD go
//! on as usual; they only no longer throttle.
//!
//! Measured (`weft-bench overlay`, bench/RESULTS.md): the inner TCP's
//! throughput with quinn's CUBIC against this, side by side.

use std::any::Any;
use std::sync::Arc;

use quinn_proto::congestion::{Controller, ControllerFactory};
use std::time::Instant;

/// A window no inner flow fills: 1 TiB, above `u32::MAX` so that quinn's
/// pacer stands aside too.
const WINDOW: u64 = 1 << 40;

/// See the module header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transparent;

impl Controller for Transparent {
    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        WINDOW
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(*self)
    }

    fn initial_window(&self) -> u64 {
        WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl ControllerFactory for Transparent {
    fn build(self: Arc<Self>, _now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Transparent)
    }
}
