//! The smoltcp "device" of the gateway's TCP stacks ([`crate::dns::tcp`],
//! [`crate::tcp_nat`]): two frame queues, frames in and frames out.
//!
//! smoltcp is sans-IO: its interface pulls received frames from a device
//! and pushes frames to send into it. Here the device is memory: the
//! switch pushes the frames a sandbox sent, the stack's output is popped
//! and put into the network. Both queues are bounded; extra frames are
//! dropped (TCP retransmits).
//!
//! Checksums are not verified on receive: every frame comes from a local
//! TAP, where the kernel leaves TCP checksums partial (checksum offload),
//! and a frame corrupted in memory is not a failure this stack could
//! mend. Checksums are computed on send, for the sandbox's kernel.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::phy::{RxToken, TxToken};

use weft_vswitch::wire::ethernet::{MacAddr, ETHERTYPE_ARP};

/// An ARP request from `sender_mac`/`sender` for `target`, addressed to
/// `gateway_mac`: fed to a stack so that it learns the sender's MAC
/// without an ARP round trip of its own (its reply is discarded).
pub(crate) fn arp_request(
    sender_mac: MacAddr,
    sender: Ipv4Addr,
    gateway_mac: MacAddr,
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut arp = Vec::with_capacity(42);
    arp.extend_from_slice(&gateway_mac.0);
    arp.extend_from_slice(&sender_mac.0);
    arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&sender_mac.0);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    arp
}

/// A smoltcp device over two bounded frame queues.
pub(crate) struct FrameQueues {
    /// Frames for the stack.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames from the stack.
    pub tx: VecDeque<Vec<u8>>,
    max_frame: usize,
    max_queued: usize,
}

impl FrameQueues {
    /// Queues for frames of up to `max_frame` bytes (Ethernet header
    /// included), at most `max_queued` in each direction.
    pub fn new(max_frame: usize, max_queued: usize) -> Self {
        FrameQueues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            max_frame,
            max_queued,
        }
    }

    /// Queue a received frame; false when the queue is full.
    pub fn push_rx(&mut self, frame: Vec<u8>) -> bool {
        if self.rx.len() >= self.max_queued {
            return false;
        }
        self.rx.push_back(frame);
        true
    }
}

/// A device that lends the stack one frame it does not own (no copy) and
/// queues what the stack sends into a [`FrameQueues`]'s output.
pub(crate) struct OneFrame<'f, 'q> {
    frame: Option<&'f [u8]>,
    queues: &'q mut FrameQueues,
}

impl<'f, 'q> OneFrame<'f, 'q> {
    /// The stack will receive `frame` once, and send into `queues`.
    pub fn new(frame: &'f [u8], queues: &'q mut FrameQueues) -> Self {
        OneFrame {
            frame: Some(frame),
            queues,
        }
    }
}

pub(crate) struct BorrowedRx<'f>(&'f [u8]);

impl RxToken for BorrowedRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<'f> Device for OneFrame<'f, '_> {
    type RxToken<'a>
        = BorrowedRx<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(BorrowedRx<'f>, Tx<'_>)> {
        let frame = self.frame.take()?;
        Some((
            BorrowedRx(frame),
            Tx {
                queue: &mut self.queues.tx,
                max_queued: self.queues.max_queued,
            },
        ))
    }

    fn transmit(&mut self, now: smoltcp::time::Instant) -> Option<Tx<'_>> {
        self.queues.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.queues.capabilities()
    }
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    max_queued: usize,
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        if self.queue.len() < self.max_queued {
            self.queue.push_back(frame);
        }
        result
    }
}

impl Device for FrameQueues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            Rx(frame),
            Tx {
                queue: &mut self.tx,
                max_queued: self.max_queued,
            },
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        if self.tx.len() >= self.max_queued {
            return None;
        }
        Some(Tx {
            queue: &mut self.tx,
            max_queued: self.max_queued,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
