//! Moving bytes between a flow's stack socket and its host socket: the
//! driver lends the core `read(2)` and `write(2)` as closures, and the
//! bytes go straight between the kernel and the stack's ring buffers.

use std::io;
use std::time::Instant;

use smoltcp::socket::tcp;

use super::{FlowId, HostRead, HostWrite, TcpNat};

impl TcpNat {
    /// Write what the sandbox sent on `flow` to its host socket through
    /// `write` (which returns what `write(2)` would).
    pub fn send_to_host(
        &mut self,
        now: Instant,
        flow_id: FlowId,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> HostWrite {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            return HostWrite::Gone;
        };
        if let Some(flow) = self.flows.get_mut(&flow_id) {
            flow.send_announced = false;
        }
        let Some(stack) = self.stacks.get_mut(&network) else {
            return HostWrite::Gone;
        };
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        let mut outcome = HostWrite::Done;
        let mut written = 0u64;
        // Bounded: each round empties the contiguous part of the ring.
        for _ in 0..4 {
            if socket.recv_queue() == 0 {
                break;
            }
            let result = socket.recv(|data| match write(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match result {
                Ok(Ok(n)) => written += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome = HostWrite::Blocked;
                    break;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    outcome = HostWrite::Gone;
                    break;
                }
            }
        }
        self.counters.bytes_out += written;
        if written > 0 {
            if let Some(flow) = self.flows.get_mut(&flow_id) {
                flow.last_active = now;
            }
        }
        if outcome == HostWrite::Gone {
            self.host_failed(now, flow_id);
            return HostWrite::Gone;
        }
        // The window opened: tell the sandbox.
        self.poll_stack(now, network);
        outcome
    }

    /// Read the host socket of `flow` into the stack through `read` (which
    /// returns what `read(2)` would).
    pub fn receive_from_host(
        &mut self,
        now: Instant,
        flow_id: FlowId,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> HostRead {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            return HostRead::Gone;
        };
        let Some(stack) = self.stacks.get_mut(&network) else {
            return HostRead::Gone;
        };
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        let mut outcome = HostRead::StackFull;
        let mut total = 0u64;
        for _ in 0..8 {
            if !socket.may_send() || socket.send_queue() >= socket.send_capacity() {
                break;
            }
            let result = socket.send(|buf| match read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match result {
                Ok(Ok(0)) => {
                    outcome = HostRead::Eof;
                    break;
                }
                Ok(Ok(n)) => total += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome = HostRead::Drained;
                    break;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    outcome = HostRead::Gone;
                    break;
                }
            }
        }
        self.counters.bytes_in += total;
        if total > 0 || outcome == HostRead::Eof {
            if let Some(flow) = self.flows.get_mut(&flow_id) {
                flow.last_active = now;
            }
        }
        match outcome {
            HostRead::Gone => {
                self.host_failed(now, flow_id);
                return HostRead::Gone;
            }
            HostRead::Eof => {
                socket.close();
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.host_eof = true;
                }
            }
            HostRead::StackFull => {
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.wants_host_data = true;
                }
            }
            HostRead::Drained => {}
        }
        self.poll_stack(now, network);
        outcome
    }
}
