//! The data-path thread: one edge-triggered event loop over every TAP,
//! driving the sans-IO [`Switch`].
//!
//! # Theory of operation
//!
//! [`Datapath::spawn`] starts one thread that owns the switch, every port's
//! [`Tap`] and two frame buffers. The control plane talks to it only
//! through [`Datapath`]'s methods, which queue a [`Command`] on a channel
//! and wake the loop with a `mio::Waker`; the loop never blocks on the
//! control plane and takes no lock per frame.
//!
//! On each wake-up the loop:
//! 1. applies queued commands (networks and ports come and go);
//! 2. for every ready port, reads up to [`IO_LOOP_BOUND`] frames; for each
//!    it asks [`Switch::handle_frame`] and writes the frame (header and all,
//!    so GSO segments pass untouched) to one port, floods it to the other
//!    ports of the network, or lets the gateway answer into the second
//!    buffer and writes the reply back to the ingress port;
//! 3. a port that still has frames after the bound goes to the back of the
//!    ready queue, so one busy sandbox cannot starve the others;
//! 4. runs the switch's timer when it is due.
//!
//! A TAP has no batched read or write (one frame per syscall), so a "burst"
//! is a run of reads until `EAGAIN` or the bound within one wake-up, with
//! no allocation, no lock and one `Instant::now()` for the whole run.
//!
//! A port whose device vanished (read error other than `EAGAIN`, such as
//! `EBADFD` when its namespace is torn down) is removed and logged once.
//!
//! Limits: frames up to [`FRAME_BUFFER_LEN`] bytes (a 64 KiB GSO segment
//! plus headers); ports up to `mio::Token` space (u32 port ids).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;

use crate::counters::{DropReason, PortCounters};
use crate::gateway::{GatewayConfig, REPLY_HEADROOM};
use crate::switch::{Decision, NetworkId, PortId, Switch};
use crate::sys::tap::Tap;
use crate::wire::vnet::{self, VNET_HDR_LEN};

/// Frames read from one port per wake-up before the next port gets its
/// turn: 64 frames of up to 64 KiB keep a turn under ~50 µs of copying,
/// short enough for fairness, long enough that the wake-up cost is spread.
pub const IO_LOOP_BOUND: usize = 64;

/// Largest frame read from a TAP: a 64 KiB GSO segment, its Ethernet header
/// and its `virtio_net_hdr`, rounded up.
pub const FRAME_BUFFER_LEN: usize = 65536 + 256;

/// How long the control plane waits for the data path to hand back a port.
const COMMAND_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

const WAKER_TOKEN: Token = Token(usize::MAX);

/// A request from the control plane to the data-path thread.
#[derive(Debug)]
enum Command {
    AddNetwork {
        id: NetworkId,
        gateway: GatewayConfig,
    },
    RemoveNetwork {
        id: NetworkId,
    },
    AddPort {
        id: PortId,
        network: NetworkId,
        tap: Tap,
        counters: Arc<PortCounters>,
    },
    RemovePort {
        id: PortId,
        done: mpsc::Sender<Option<Tap>>,
    },
    Shutdown,
}

/// The handle of the data-path thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct Datapath {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    next_port: AtomicU32,
}

/// Why the data path did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The data-path thread is gone (it panicked or was shut down).
    #[error("the data-path thread has stopped")]
    Stopped,
    /// Waking the data-path thread failed.
    #[error("waking the data-path thread failed")]
    Wake(#[source] io::Error),
    /// The data-path thread did not answer in time.
    #[error("the data-path thread did not answer within {0:?}")]
    Timeout(Duration),
}

struct PortIo {
    tap: Tap,
    counters: Arc<PortCounters>,
}

struct Loop {
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    switch: Switch,
    ports: FxHashMap<PortId, PortIo>,
    ready: VecDeque<PortId>,
    frame: Vec<u8>,
    reply: Vec<u8>,
}

/// What a turn of reading one port ended with.
enum Turn {
    Drained,
    MoreQueued,
    DeviceLost(io::Error),
}

impl Datapath {
    /// Start the data-path thread.
    ///
    /// # Errors
    ///
    /// Creating the epoll instance or its waker, or spawning the thread.
    pub fn spawn() -> io::Result<Datapath> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let (tx, rx) = mpsc::channel();
        let mut event_loop = Loop {
            poll,
            commands: rx,
            switch: Switch::new(),
            ports: FxHashMap::default(),
            ready: VecDeque::new(),
            frame: vec![0; FRAME_BUFFER_LEN],
            reply: vec![0; FRAME_BUFFER_LEN + REPLY_HEADROOM],
        };
        let thread = std::thread::Builder::new()
            .name("weft-datapath".into())
            .spawn(move || event_loop.run())?;
        Ok(Datapath {
            commands: tx,
            waker,
            thread: Some(thread),
            next_port: AtomicU32::new(1),
        })
    }

    fn send(&self, command: Command) -> Result<(), DatapathError> {
        self.commands
            .send(command)
            .map_err(|_| DatapathError::Stopped)?;
        self.waker.wake().map_err(DatapathError::Wake)
    }

    /// Add a network with its gateway.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_network(&self, id: NetworkId, gateway: GatewayConfig) -> Result<(), DatapathError> {
        self.send(Command::AddNetwork { id, gateway })
    }

    /// Remove a network; its ports are closed.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), DatapathError> {
        self.send(Command::RemoveNetwork { id })
    }

    /// Attach a TAP to a network; returns its port id and counters.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_port(
        &self,
        network: NetworkId,
        tap: Tap,
    ) -> Result<(PortId, Arc<PortCounters>), DatapathError> {
        let id = PortId(self.next_port.fetch_add(1, Ordering::Relaxed));
        let counters = Arc::new(PortCounters::default());
        self.send(Command::AddPort {
            id,
            network,
            tap,
            counters: Arc::clone(&counters),
        })?;
        Ok((id, counters))
    }

    /// Detach a port and hand its TAP back (None if the port was unknown or
    /// its device had vanished). Blocks until the data path answers.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn remove_port(&self, id: PortId) -> Result<Option<Tap>, DatapathError> {
        let (done, answer) = mpsc::channel();
        self.send(Command::RemovePort { id, done })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.send(Command::Shutdown).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.ready.is_empty() {
                self.switch
                    .poll_timeout()
                    .map(|due| due.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "data path: epoll failed, stopping");
                return;
            }
            for event in &events {
                if event.token() == WAKER_TOKEN {
                    if !self.apply_commands() {
                        return;
                    }
                } else if let Ok(port) = u32::try_from(event.token().0) {
                    let port = PortId(port);
                    if !self.ready.contains(&port) {
                        self.ready.push_back(port);
                    }
                }
            }
            let now = Instant::now();
            for _ in 0..self.ready.len() {
                let Some(port) = self.ready.pop_front() else {
                    break;
                };
                match self.read_turn(port, now) {
                    Turn::Drained => {}
                    Turn::MoreQueued => self.ready.push_back(port),
                    Turn::DeviceLost(e) => {
                        tracing::error!(port = port.0, error = %e, "TAP device lost, port removed");
                        self.detach(port);
                    }
                }
            }
            self.switch.handle_timeout(now);
        }
    }

    /// Apply every queued command; false on shutdown.
    fn apply_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddNetwork { id, gateway } => {
                    if let Err(e) = self.switch.add_network(id, gateway) {
                        tracing::error!(error = %e, "data path: add network");
                    }
                }
                Command::RemoveNetwork { id } => {
                    for port in self.switch.remove_network(id) {
                        self.detach(port);
                    }
                }
                Command::AddPort {
                    id,
                    network,
                    tap,
                    counters,
                } => self.attach(id, network, tap, counters),
                Command::RemovePort { id, done } => {
                    let tap = self.detach(id);
                    let _ = done.send(tap);
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn attach(&mut self, id: PortId, network: NetworkId, tap: Tap, counters: Arc<PortCounters>) {
        let Ok(token) = usize::try_from(id.0) else {
            return;
        };
        if let Err(e) = self.switch.add_port(id, network) {
            tracing::error!(error = %e, port = id.0, "data path: add port");
            return;
        }
        let raw = tap.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), Token(token), Interest::READABLE)
        {
            tracing::error!(error = %e, port = id.0, "data path: epoll register");
            self.switch.remove_port(id);
            return;
        }
        tracing::debug!(port = id.0, ifname = tap.name(), "port attached");
        self.ports.insert(id, PortIo { tap, counters });
        // Frames may have queued before registration; edge-triggered epoll
        // would not report them.
        self.ready.push_back(id);
    }

    fn detach(&mut self, id: PortId) -> Option<Tap> {
        self.switch.remove_port(id);
        self.ready.retain(|p| *p != id);
        let io = self.ports.remove(&id)?;
        let raw = io.tap.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        Some(io.tap)
    }

    fn read_turn(&mut self, port: PortId, now: Instant) -> Turn {
        for _ in 0..IO_LOOP_BOUND {
            let Some(io) = self.ports.get(&port) else {
                return Turn::Drained;
            };
            let len = match io.tap.recv(&mut self.frame) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Turn::DeviceLost(e),
            };
            self.switch_frame(port, len, now);
        }
        Turn::MoreQueued
    }

    fn switch_frame(&mut self, ingress: PortId, len: usize, now: Instant) {
        let Some(ingress_io) = self.ports.get(&ingress) else {
            return;
        };
        let counters = &ingress_io.counters;
        let Some(frame) = self.frame.get(VNET_HDR_LEN..len) else {
            counters.count_drop(DropReason::Truncated);
            return;
        };
        counters.count_rx(frame.len());
        let with_header = &self.frame[..len];
        match self.switch.handle_frame(now, ingress, frame) {
            Decision::Forward(egress) => send_to(&self.ports, egress, with_header),
            Decision::Flood => {
                for &egress in self.switch.flood_ports(ingress) {
                    if egress != ingress {
                        send_to(&self.ports, egress, with_header);
                    }
                }
            }
            Decision::ToGateway => {
                let (header, body) = self.reply.split_at_mut(VNET_HDR_LEN);
                match self.switch.gateway_reply(ingress, frame, body) {
                    Ok(reply_len) => {
                        header.copy_from_slice(&vnet::EMPTY);
                        send_to(
                            &self.ports,
                            ingress,
                            &self.reply[..VNET_HDR_LEN + reply_len],
                        );
                    }
                    Err(reason) => {
                        tracing::debug!(port = ingress.0, reason = reason.as_str(), "gateway drop");
                        counters.count_drop(reason);
                    }
                }
            }
            Decision::Drop(reason) => {
                tracing::debug!(port = ingress.0, reason = reason.as_str(), "drop");
                counters.count_drop(reason);
            }
        }
    }
}

fn send_to(ports: &FxHashMap<PortId, PortIo>, egress: PortId, frame_with_header: &[u8]) {
    let Some(io) = ports.get(&egress) else {
        return;
    };
    match io.tap.send(frame_with_header) {
        Ok(_) => io.counters.count_tx(frame_with_header.len() - VNET_HDR_LEN),
        Err(e) => {
            tracing::trace!(port = egress.0, error = %e, "TAP write failed");
            io.counters.count_drop(DropReason::EgressFailed);
        }
    }
}
