//! The daemon's file descriptor budget.
//!
//! Every outbound NAT flow holds a host socket, so a sandbox that opens
//! flows as fast as it can would otherwise run the daemon out of file
//! descriptors, and then the API (whose connections need fds too) stops
//! answering, and other sandboxes lose their flows. At start the daemon
//! raises its soft `RLIMIT_NOFILE` to the hard limit (a service manager's
//! default soft limit of 1,024 is common), keeps [`reserve`] descriptors
//! for the API's connections, the TAPs, the attach helpers' sockets, the
//! state files, the DNS upstream and published-port sockets, and gives the
//! rest to the NAT's flows, which refuse new flows (counted) before the
//! budget is spent ([`weft_services::NatLimits::socket_budget`]).

use std::io;

/// `getrlimit(RLIMIT_NOFILE)`: (soft, hard).
fn nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// `setrlimit(RLIMIT_NOFILE, {soft, hard})`.
fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's ceiling on a process's open files.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// The fd limits the daemon runs with, and what its NAT flows may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit after raising it.
    pub limit: u64,
    /// Descriptors kept for everything but NAT flows.
    pub reserve: u64,
    /// Descriptors NAT flows may take.
    pub flows: u64,
}

/// Descriptors kept for everything but NAT flows: an eighth of the limit,
/// at least 256 (the API's connections, a TAP per endpoint, helpers'
/// sockets, state files, DNS upstream and published-port sockets).
pub fn reserve(limit: u64) -> u64 {
    (limit / 8).max(256)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (a failure to raise
/// keeps the soft limit, logged) and split it into reserve and flows.
pub fn raise() -> FdBudget {
    let limit = match nofile() {
        Ok((soft, hard)) if soft < hard => {
            // An unlimited hard limit cannot be a soft one: the kernel's
            // ceiling is fs.nr_open.
            let nr_open = std::fs::read_to_string(NR_OPEN)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(1 << 20);
            let target = hard.min(nr_open).max(soft);
            match set_nofile(target, hard) {
                Ok(()) => target,
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "could not raise the open files limit to the hard limit");
                    soft
                }
            }
        }
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open files limit; assuming 1024");
            1024
        }
    };
    split(limit)
}

/// The budget of a limit.
pub fn split(limit: u64) -> FdBudget {
    let reserve = reserve(limit);
    FdBudget {
        limit,
        reserve,
        flows: limit.saturating_sub(reserve),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_keeps_a_quarter_and_a_large_one_an_eighth() {
        assert_eq!(
            split(1024),
            FdBudget {
                limit: 1024,
                reserve: 256,
                flows: 768
            }
        );
        assert_eq!(split(1 << 20).reserve, 1 << 17);
        assert_eq!(split(100).flows, 0);
    }
}
