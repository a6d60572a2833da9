//! The runtime that collects what foca asks for during one call
//! (datagrams, timers, notifications) for the [`super::Node`] to act on
//! afterwards.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use foca::{OwnedNotification, Runtime, Timer};

use crate::identity::NodeIdentity;

/// Collects what foca asks for during one call.
pub(super) struct FocaRuntime {
    /// Set before every foca call; foca only calls back during those.
    pub(super) now: Option<Instant>,
    /// Timers submitted while `now` was unset: due at once.
    pub(super) unscheduled: Vec<Timer<NodeIdentity>>,
    pub(super) sends: Vec<(NodeIdentity, Vec<u8>)>,
    pub(super) timers: BinaryHeap<Reverse<PendingTimer>>,
    pub(super) timer_seq: u64,
    pub(super) notifications: Vec<OwnedNotification<NodeIdentity>>,
}

pub(super) struct PendingTimer {
    pub(super) due: Instant,
    seq: u64,
    timer: Timer<NodeIdentity>,
}

impl FocaRuntime {
    pub(super) fn new() -> Self {
        Self {
            now: None,
            unscheduled: Vec::new(),
            sends: Vec::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            notifications: Vec::new(),
        }
    }

    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer<NodeIdentity>> {
        if let Some(timer) = self.unscheduled.pop() {
            return Some(timer);
        }
        if self
            .timers
            .peek()
            .is_some_and(|Reverse(timer)| timer.due <= now)
        {
            self.timers.pop().map(|Reverse(timer)| timer.timer)
        } else {
            None
        }
    }
}

impl Runtime<NodeIdentity> for FocaRuntime {
    fn notify(&mut self, notification: foca::Notification<'_, NodeIdentity>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, timer: Timer<NodeIdentity>, after: Duration) {
        let Some(now) = self.now else {
            self.unscheduled.push(timer);
            return;
        };
        self.timer_seq += 1;
        self.timers.push(Reverse(PendingTimer {
            due: now + after,
            seq: self.timer_seq,
            timer,
        }));
    }
}

impl PartialEq for PendingTimer {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for PendingTimer {}

impl PartialOrd for PendingTimer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PendingTimer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}
