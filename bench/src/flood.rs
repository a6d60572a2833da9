//! `weft-bench flood`: what one sandbox flooding the NAT costs the others
//! and the daemon.
//!
//! One daemon (in `wb-flood-host`, its only world beyond a namespace
//! `wb-flood-inet` on a veth), a network `flood` with sandboxes A (the
//! flooder) and B, and a network `other` with sandbox C. The servers in
//! INET and the sandboxes' clients are threads of the harness that entered
//! their namespace (`setns`), so thousands of flows cost no processes:
//! a TCP server that accepts and never reads (a slow remote; INET's receive
//! buffers and the daemon's host sockets' send buffers made small, so that
//! what the flooder sends waits in the relay), one that reads until end of
//! stream, a UDP echo.
//!
//! Each flood: A opens `--flows` flows at once (TCP: non-blocking
//! connects to the slow remote, then 64 KiB written on each, and with
//! `--fill SECS` written again and again for that long, so that every
//! window the relay offers fills: its worst case for memory; UDP: one
//! datagram each, paced so that the sandbox's own TAP queue does not drop
//! them) and holds them while B (same network) and C (other network) each
//! try `--probes` TCP connects and UDP round trips, one at a time; then A
//! resets its TCP flows (UDP sockets are closed; their flows idle out).
//! The daemon's RSS and fds are sampled every 50 ms from before the flood
//! to its end (peak), and read again after it: 10 s after the TCP flows'
//! resets, 65 s after the UDP flood (its flows idle out after 60 s).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::measure;
use crate::process;
use crate::report;
use crate::topology::{self, WeftDaemon};

const HOST: &str = "wb-flood-host";
const INET: &str = "wb-flood-inet";
const INET_ADDR: [u8; 4] = [198, 51, 100, 10];
const HOLDER_PORT: u16 = 7802;
const READER_PORT: u16 = 7801;
const ECHO_PORT: u16 = 7803;
/// When "after" is read: 10 s after a TCP flood's resets, and after a UDP
/// flood once its flows' idle timer (60 s, `--nat-udp-idle`) has run.
const AFTER_TCP: Duration = Duration::from_secs(10);
const AFTER_UDP: Duration = Duration::from_secs(65);
/// The section's heading in the report.
const HEADING: &str = "## NAT under a flood from one sandbox";

/// `weft-bench flood` options.
#[derive(Debug)]
pub struct FloodOptions {
    /// Flows the flooder opens at once, per flood.
    pub flows: u32,
    /// TCP connects and UDP round trips each other sandbox tries.
    pub probes: u32,
    /// Seconds the TCP flooder keeps writing on every flow (0: 64 KiB
    /// once).
    pub fill_secs: u32,
    /// The Markdown file whose section is replaced (or appended).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

fn inet(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(INET_ADDR.into(), port)
}

/// Run `f` on a thread of its own inside the named namespace.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a descriptor we own; it changes this thread's
        // network namespace only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(f())
    })
}

fn join<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("a flood thread panicked"))?
}

/// A non-blocking TCP connect from this thread's namespace.
fn connect_nonblocking(to: SocketAddrV4) -> Option<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_in of `len` bytes.
    let r = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    let in_progress = std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS);
    (r == 0 || in_progress).then(|| TcpStream::from(owned))
}

/// Close with a reset (`SO_LINGER` 0).
fn abort(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one linger struct we own.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A server thread in INET, stopped with the flag.
fn server(stop: Arc<AtomicBool>, port: u16, read: bool) -> JoinHandle<Result<()>> {
    in_netns(INET, move || {
        let listener = TcpListener::bind(inet(port)).expect("bind in INET");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut conns: Vec<TcpStream> = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(900);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            while let Ok((conn, _)) = listener.accept() {
                let _ = conn.set_nonblocking(true);
                conns.push(conn);
            }
            if read {
                conns.retain_mut(|c| loop {
                    match c.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn echo(stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
    in_netns(INET, move || {
        let socket = UdpSocket::bind(inet(ECHO_PORT)).expect("bind in INET");
        let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(900);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    })
}

/// `n` TCP connects and `n` UDP round trips from `ns`, one at a time:
/// (TCP successes, UDP successes).
fn probe(ns: &str, n: u32) -> JoinHandle<Result<(u32, u32)>> {
    in_netns(ns, move || {
        let (mut tcp, mut udp) = (0, 0);
        for i in 0..n {
            let to = SocketAddr::V4(inet(READER_PORT));
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                if s.write_all(b"probe\n").is_ok() {
                    tcp += 1;
                }
            }
            let Ok(u) = UdpSocket::bind("0.0.0.0:0") else {
                continue;
            };
            let _ = u.set_read_timeout(Some(Duration::from_secs(2)));
            let payload = format!("probe {i}");
            if u.connect(inet(ECHO_PORT)).is_ok() && u.send(payload.as_bytes()).is_ok() {
                let mut buf = [0u8; 64];
                if matches!(u.recv(&mut buf), Ok(len) if &buf[..len] == payload.as_bytes()) {
                    udp += 1;
                }
            }
        }
        (tcp, udp)
    })
}

/// Peak RSS (KiB) and fds of a process, sampled every 50 ms until stopped.
fn sampler(pid: u32, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, Arc<AtomicU64>, JoinHandle<()>) {
    let rss = Arc::new(AtomicU64::new(0));
    let fds = Arc::new(AtomicU64::new(0));
    let (r, f) = (rss.clone(), fds.clone());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            r.fetch_max(measure::process_rss_kib(pid).unwrap_or(0), Ordering::SeqCst);
            f.fetch_max(fd_count(pid), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (rss, fds, thread)
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// One flood's figures.
struct Figures {
    what: &'static str,
    opened: u64,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    fds_before: u64,
    fds_peak: u64,
    fds_after: u64,
    same_network: (u32, u32),
    other_network: (u32, u32),
}

/// One flood from A while B and C probe.
fn flood(daemon: &WeftDaemon, tcp: bool, options: &FloodOptions) -> Result<Figures> {
    let rss_before = measure::process_rss_kib(daemon.pid)?;
    let fds_before = fd_count(daemon.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let (peak_rss, peak_fds, sampling) = sampler(daemon.pid, stop.clone());
    let flows = options.flows;
    let fill = Duration::from_secs(u64::from(options.fill_secs));
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<u64>();
    let flooder = in_netns("wb-flood-a", move || {
        if tcp {
            let pending: Vec<TcpStream> = (0..flows)
                .filter_map(|_| connect_nonblocking(inet(HOLDER_PORT)))
                .collect();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut connected = Vec::new();
            let mut pending = pending;
            while !pending.is_empty() && Instant::now() < deadline {
                pending.retain(|s| match s.take_error() {
                    Ok(None) if s.peer_addr().is_ok() => {
                        connected.push(s.try_clone().ok());
                        false
                    }
                    Ok(None) => true,
                    _ => false,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
            let connected: Vec<TcpStream> = connected.into_iter().flatten().collect();
            let data = vec![0x5a_u8; 64 << 10];
            for mut s in &connected {
                let _ = s.write(&data);
            }
            // With --fill: keep writing, so every window the relay offers
            // fills (the relay's worst case for memory).
            let until = Instant::now() + fill;
            while Instant::now() < until {
                for mut s in &connected {
                    let _ = s.write(&data);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = held_tx.send(connected.len() as u64);
            let _ = go_rx.recv_timeout(Duration::from_secs(300));
            for s in &connected {
                abort(s);
            }
        } else {
            let sockets: Vec<UdpSocket> = (0..flows)
                .filter_map(|i| {
                    let u = UdpSocket::bind("0.0.0.0:0").ok()?;
                    u.connect(inet(ECHO_PORT)).ok()?;
                    u.set_nonblocking(true).ok()?;
                    let _ = u.send(format!("{i}").as_bytes());
                    if i % 64 == 63 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Some(u)
                })
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            let mut buf = [0u8; 16];
            let answered = sockets.iter().filter(|u| u.recv(&mut buf).is_ok()).count();
            let _ = held_tx.send(answered as u64);
            let _ = go_rx.recv_timeout(Duration::from_secs(300));
        }
    });
    let opened = held_rx
        .recv_timeout(Duration::from_secs(120))
        .context("the flooder did not report")?;
    let b = probe("wb-flood-b", options.probes);
    let c = probe("wb-flood-c", options.probes);
    let same_network = join(b)?;
    let other_network = join(c)?;
    let _ = go_tx.send(());
    join(flooder)?;
    stop.store(true, Ordering::SeqCst);
    let _ = sampling.join();
    // TCP flows end with their resets; UDP flows idle out (60 s).
    process::pause(if tcp { AFTER_TCP } else { AFTER_UDP })?;
    Ok(Figures {
        what: if tcp { "TCP" } else { "UDP" },
        opened,
        rss_before,
        rss_peak: peak_rss.load(Ordering::SeqCst),
        rss_after: measure::process_rss_kib(daemon.pid)?,
        fds_before,
        fds_peak: peak_fds.load(Ordering::SeqCst),
        fds_after: fd_count(daemon.pid),
        same_network,
        other_network,
    })
}

/// Run both floods and replace the report's section.
pub fn run(options: &FloodOptions) -> Result<()> {
    process::require_tools(&["ip", "sysctl"])?;
    let weft = topology::weft_binary()?;
    let date_utc = report::utc_now();
    let mut lab = Lab::open()?;
    for ns in [HOST, INET, "wb-flood-a", "wb-flood-b", "wb-flood-c"] {
        lab.add_netns(ns)?;
    }
    lab.ip(HOST, &["link", "set", "lo", "up"])?;
    lab.ip(INET, &["link", "set", "lo", "up"])?;
    lab.ip(
        HOST,
        &[
            "link", "add", "inet0", "type", "veth", "peer", "name", "host0", "netns", INET,
        ],
    )?;
    lab.ip(HOST, &["addr", "add", "198.51.100.1/24", "dev", "inet0"])?;
    lab.ip(INET, &["addr", "add", "198.51.100.10/24", "dev", "host0"])?;
    lab.ip(HOST, &["link", "set", "inet0", "up"])?;
    lab.ip(INET, &["link", "set", "host0", "up"])?;
    // Small socket buffers at the slow remote and on the daemon's host
    // sockets: what the flooder sends stays in the relay, not in kernels.
    for (ns, setting) in [
        (INET, "net.ipv4.tcp_rmem=4096 16384 16384"),
        (INET, "net.ipv4.icmp_ratelimit=0"),
        (HOST, "net.ipv4.tcp_wmem=4096 16384 16384"),
    ] {
        lab.run_in(ns, &["sysctl", "-qw", setting], Duration::from_secs(5))?
            .success()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let servers = vec![
        server(stop.clone(), HOLDER_PORT, false),
        server(stop.clone(), READER_PORT, true),
        echo(stop.clone()),
    ];
    let dir = lab.work_dir().join("weft-flood");
    let daemon = WeftDaemon::start(&mut lab, &weft, HOST, &dir)?;
    daemon.cli_ok(
        &mut lab,
        &["network", "create", "--subnet", "10.215.1.0/24", "flood"],
    )?;
    daemon.cli_ok(
        &mut lab,
        &["network", "create", "--subnet", "10.215.2.0/24", "other"],
    )?;
    for (network, ns) in [
        ("flood", "wb-flood-a"),
        ("flood", "wb-flood-b"),
        ("other", "wb-flood-c"),
    ] {
        daemon.cli_ok(&mut lab, &["network", "connect", network, ns])?;
    }
    // Warm up: each sandbox reaches INET once.
    for ns in ["wb-flood-a", "wb-flood-b", "wb-flood-c"] {
        if join(probe(ns, 1))? != (1, 1) {
            bail!("{ns} cannot reach INET before the flood");
        }
    }
    let mut figures = Vec::new();
    for tcp in [true, false] {
        eprintln!(
            "weft-bench: {} flood of {} flows",
            if tcp { "TCP" } else { "UDP" },
            options.flows
        );
        figures.push(flood(&daemon, tcp, options)?);
    }
    let inspect = daemon
        .cli_ok(&mut lab, &["network", "inspect", "flood"])?
        .stdout;
    stop.store(true, Ordering::SeqCst);
    for s in servers {
        let _ = join(s);
    }
    lab.cleanup();

    let mut section = String::new();
    let _ = writeln!(section, "{HEADING}\n");
    let _ = writeln!(
        section,
        "`{}` on {date_utc} (TCP flood: {}). One sandbox opens {} flows at once (the default table holds 4,096 per protocol, a sandbox a quarter of it) while a sandbox of the same network and one of another network each try {} TCP connects and {} UDP round trips. RSS and fds of the daemon: before, peak (sampled every 50 ms during the flood), and after (10 s after the TCP flows were reset; 65 s after the UDP flood, past the 60 s UDP idle timer).\n",
        options.command,
        if options.fill_secs == 0 {
            "64 KiB written once on each flow".to_owned()
        } else {
            format!("every flow written to for {} s, filling the relay's windows", options.fill_secs)
        },
        options.flows,
        options.probes,
        options.probes
    );
    let _ = writeln!(
        section,
        "| flood | flooder's flows | RSS before / peak / after (MiB) | fds before / peak / after | same network: TCP, UDP ok | other network: TCP, UDP ok |"
    );
    let _ = writeln!(section, "|---|---|---|---|---|---|");
    for f in &figures {
        let _ = writeln!(
            section,
            "| {} | {} | {:.0} / {:.0} / {:.0} | {} / {} / {} | {}/{}, {}/{} | {}/{}, {}/{} |",
            f.what,
            f.opened,
            f.rss_before as f64 / 1024.0,
            f.rss_peak as f64 / 1024.0,
            f.rss_after as f64 / 1024.0,
            f.fds_before,
            f.fds_peak,
            f.fds_after,
            f.same_network.0,
            options.probes,
            f.same_network.1,
            options.probes,
            f.other_network.0,
            options.probes,
            f.other_network.1,
            options.probes,
        );
    }
    let nat = serde_json::from_str::<serde_json::Value>(&inspect)
        .ok()
        .and_then(|v| v.get(0).and_then(|n| n.get("nat")).cloned())
        .map(|n| n.to_string())
        .unwrap_or_default();
    let _ = writeln!(section, "\n`network inspect flood` afterwards: `{nat}`");
    print!("{section}");
    report::write_section(&options.out, HEADING, &section)?;
    eprintln!("weft-bench: section written to {}", options.out.display());
    Ok(())
}
