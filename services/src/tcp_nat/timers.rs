//! The relay's idle timers: flows whose ends went quiet are ended on both
//! sides, so that neither a table entry nor a host socket outlives them
//! (see the module header of [`super`] for the timers and their values).
//!
//! Once a second while there are flows ([`SWEEP_INTERVAL`]), every flow's
//! last activity is compared with the timer of its state: connecting (the
//! host connect, or the handshake with the sandbox), half-closed, or
//! established. An expired flow that is still connecting is answered with
//! ICMP unreachable (what a sandbox gets from a router for a host that
//! never answered); an open one is aborted, which sends the sandbox a
//! reset. Either way its host socket is closed with a reset
//! ([`TcpAction::Reset`]).

use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

use super::segments::unreachable_for;
use super::{FlowId, Phase, TcpAction, TcpNat};
use weft_vswitch::NetworkId;

/// How often the timers look at the flows: the timers are seconds to
/// hours, so a second late is in the noise; a sweep costs one pass over
/// the table (a few microseconds per thousand flows).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl TcpNat {
    /// End the flows whose timer ran out, if a sweep is due.
    pub(super) fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|due| now < due) {
            return;
        }
        let config = &self.config;
        let expired: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, flow)| {
                let limit = match flow.phase {
                    Phase::Connecting { .. } => config.connect_timeout,
                    Phase::Open { .. } if !flow.synchronized => config.connect_timeout,
                    Phase::Open { .. } if flow.shutdown_sent || flow.host_eof => {
                        config.half_closed_idle
                    }
                    Phase::Open { .. } => config.established_idle,
                };
                now.saturating_duration_since(flow.last_active) >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        let mut networks: Vec<NetworkId> = Vec::new();
        for flow_id in &expired {
            let Some(flow) = self.flows.get(flow_id) else {
                continue;
            };
            self.counters.flows_timed_out += 1;
            let network = flow.tuple.network;
            match &flow.phase {
                Phase::Connecting { syn } => {
                    if let Some(frame) = unreachable_for(syn) {
                        self.push_frame(network, frame);
                    }
                }
                Phase::Open { handle } => {
                    if let Some(stack) = self.stacks.get_mut(&network) {
                        stack.reteach(now, self.epoch, flow.tuple.sandbox.ip());
                        stack.sockets.get_mut::<tcp::Socket>(*handle).abort();
                    }
                    if !networks.contains(&network) {
                        networks.push(network);
                    }
                }
            }
        }
        // The resets leave with one pass of each stack.
        for network in networks {
            self.poll_stack(now, network);
        }
        for flow_id in expired {
            if self.flows.contains_key(&flow_id) {
                self.forget(flow_id);
                self.actions.push_back(TcpAction::Reset { flow: flow_id });
            }
        }
        self.next_sweep = (!self.flows.is_empty()).then(|| now + SWEEP_INTERVAL);
    }

    /// Arm the sweep for a new flow.
    pub(super) fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }
}
