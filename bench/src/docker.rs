//! `weft-bench docker`: container to container on a weft network (the
//! Docker plugin) against Docker's own bridge network, in the same
//! dockerd: one TCP stream (iperf3) and ping.
//!
//! Lab: namespace `wb-dk-host` holds the weft daemon (`--docker-plugin
//! wbdocker`) and a dockerd started with `nsenter --net` (data and exec
//! roots in the work directory, `--storage-driver vfs --bridge none
//! --iptables=false`, `--dns` on the namespace's own loopback). The image
//! is a busybox-static rootfs `docker import`ed. On each network two
//! containers sleep; the harness names their namespaces (`ip netns
//! attach wb-dk-...`) and runs the host's iperf3 and ping inside them, so
//! nothing needs installing in the image. Runs alternate between the two
//! networks; the report shows medians (min–max) and the ratio, and the
//! weft daemon's CPU seconds per GB moved.
//!
//! Teardown: containers removed, networks removed, dockerd stopped
//! (SIGTERM, then the lab's SIGKILL), mounts it left under the work
//! directory unmounted, the plugin socket removed; then the lab deletes
//! its namespaces and the weft daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::e2e::{kernel_release, tool_versions};
use crate::lab::Lab;
use crate::measure::{self, Pinning, TcpFlow, IPERF_PORT};
use crate::process;
use crate::report::{self, ratio, Summary};
use crate::topology::{self, WeftDaemon};

/// What `weft-bench docker` was asked.
#[derive(Debug)]
pub struct DockerOptions {
    /// Runs per network.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// The report file (its Docker section is replaced).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// The namespace of weft and dockerd.
const HOST_NS: &str = "wb-dk-host";
/// The plugin's name (its socket is in /run/docker/plugins).
const PLUGIN: &str = "wbdocker";
/// Where a root dockerd finds plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";
/// The image the containers run.
const IMAGE: &str = "weft-bench/busybox:1";
/// The report's section.
const SECTION_HEADING: &str = "## Docker: a weft network vs Docker's bridge network";
/// How long dockerd may take to answer.
const DOCKERD_READY: Duration = Duration::from_secs(60);
/// Bound on one docker CLI call.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(90);

/// One network under test: Docker's name, and its two containers'
/// namespaces (as named by the harness) and the server's address.
struct Side {
    label: &'static str,
    network: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: String,
    cpu_pids: Vec<u32>,
}

#[derive(Default)]
struct Figures {
    gbps: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    ping_us: Vec<f64>,
    udp_kpps: Vec<f64>,
    /// `docker run` of a container until its first ping of the server
    /// answers, ms.
    ready_ms: Vec<f64>,
}

/// Starts timed per network and run.
const STARTS_PER_RUN: usize = 3;

/// Run the benchmark.
///
/// # Errors
///
/// A tool missing, the lab not built, or the report not written; a failed
/// measurement is reported in the section instead.
pub fn run(options: &DockerOptions) -> Result<()> {
    process::require_tools(&[
        "ip", "iperf3", "ping", "taskset", "dockerd", "docker", "nsenter",
    ])?;
    if !Path::new("/bin/busybox").exists() {
        bail!("no /bin/busybox: apt-get install busybox-static");
    }
    let weft = topology::weft_binary()?;
    let date_utc = report::utc_now();
    let started = Instant::now();
    let pin = Pinning::split(crate::cpu_count());
    let mut lab = Lab::open()?;
    let versions = tool_versions(&mut lab, &weft, &["iperf3", "dockerd"]);
    lab.add_netns(HOST_NS)?;
    lab.ip(HOST_NS, &["addr", "add", "192.0.2.53/32", "dev", "lo"])?;
    let dir = lab.work_dir().join("docker");
    let daemon = WeftDaemon::start_with(
        &mut lab,
        &weft,
        HOST_NS,
        &dir.join("weft"),
        &["--docker-plugin", PLUGIN],
    )?;
    let docker = Dockerd::start(&mut lab, &dir)?;
    let measured = measure_all(&mut lab, &docker, daemon.pid, options, pin);
    docker.teardown(&mut lab);
    let _ = std::fs::remove_file(Path::new(PLUGIN_DIR).join(format!("{PLUGIN}.sock")));
    let (results, failures) = measured?;

    let markdown = section(
        options,
        &results,
        &failures,
        &versions,
        &date_utc,
        started.elapsed(),
    );
    println!("{markdown}");
    report::write_section(&options.out, SECTION_HEADING, &markdown)?;
    eprintln!(
        "weft-bench: report section written to {}",
        options.out.display()
    );
    Ok(())
}

fn measure_all(
    lab: &mut Lab,
    docker: &Dockerd,
    weft_pid: u32,
    options: &DockerOptions,
    pin: Pinning,
) -> Result<(BTreeMap<&'static str, Figures>, Vec<String>)> {
    docker.import_image(lab)?;
    docker.cli_ok(
        lab,
        &[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--ipam-driver",
            PLUGIN,
            "--subnet",
            "10.239.1.0/24",
            "weftnet",
        ],
    )?;
    docker.cli_ok(
        lab,
        &[
            "network",
            "create",
            "-d",
            "bridge",
            "--subnet",
            "10.239.2.0/24",
            "bridgenet",
        ],
    )?;
    let sides = [
        docker.side(lab, "weft network", "weftnet", "wb-dk-w", vec![weft_pid])?,
        docker.side(lab, "Docker bridge", "bridgenet", "wb-dk-b", Vec::new())?,
    ];
    let mut results: BTreeMap<&'static str, Figures> = BTreeMap::new();
    let mut failures = Vec::new();
    for run in 1..=options.runs {
        for side in &sides {
            let figures = results.entry(side.label).or_default();
            let flow = TcpFlow {
                client_ns: &side.client_ns,
                server_ns: &side.server_ns,
                server_bind: Some(&side.server_ip),
                destination: &side.server_ip,
                port: IPERF_PORT,
                cpu_pids: &side.cpu_pids,
            };
            match measure::tcp_flow(lab, &flow, options.seconds, pin) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {} run {run}: {:.2} Gbit/s",
                        side.label, sample.gbps
                    );
                    figures.gbps.push(sample.gbps);
                    if let Some(c) = sample.cpu_seconds_per_gb() {
                        figures.cpu_per_gb.push(c);
                    }
                }
                Err(e) => lab.record_failure(
                    &format!("{} TCP run {run}", side.label),
                    &e,
                    &[],
                    &mut failures,
                )?,
            }
            match measure::ping_from(lab, &side.client_ns, &side.server_ip, pin) {
                Ok(sample) => figures.ping_us.push(sample.p50_us),
                Err(e) => lab.record_failure(
                    &format!("{} ping run {run}", side.label),
                    &e,
                    &[],
                    &mut failures,
                )?,
            }
            match measure::udp64_between(
                lab,
                &side.client_ns,
                &side.server_ns,
                &side.server_ip,
                options.seconds,
                pin,
            ) {
                Ok(sample) => figures.udp_kpps.push(sample.kpps),
                Err(e) => lab.record_failure(
                    &format!("{} UDP 64 B run {run}", side.label),
                    &e,
                    &[],
                    &mut failures,
                )?,
            }
            for start in 0..STARTS_PER_RUN {
                match docker.time_to_ready(lab, side, &format!("ready-{run}-{start}")) {
                    Ok(ms) => figures.ready_ms.push(ms),
                    Err(e) => lab.record_failure(
                        &format!("{} start {start} of run {run}", side.label),
                        &e,
                        &[],
                        &mut failures,
                    )?,
                }
            }
        }
    }
    Ok((results, failures))
}

/// The dockerd of the lab.
struct Dockerd {
    pid: u32,
    dir: PathBuf,
    socket: String,
}

impl Dockerd {
    fn start(lab: &mut Lab, dir: &Path) -> Result<Dockerd> {
        for sub in ["root", "exec"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let text = |p: PathBuf| p.to_string_lossy().into_owned();
        let socket = text(dir.join("docker.sock"));
        let netns = format!("--net=/var/run/netns/{HOST_NS}");
        let (root, exec, host) = (
            text(dir.join("root")),
            text(dir.join("exec")),
            format!("unix://{socket}"),
        );
        let pid = lab.spawn(
            "dockerd",
            &[
                "nsenter",
                &netns,
                "dockerd",
                "--data-root",
                &root,
                "--exec-root",
                &exec,
                "-H",
                &host,
                "--storage-driver",
                "vfs",
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--userland-proxy=false",
                "--dns",
                "192.0.2.53",
            ],
        )?;
        let docker = Dockerd {
            pid,
            dir: dir.to_owned(),
            socket,
        };
        let deadline = Instant::now() + DOCKERD_READY;
        loop {
            if !lab.is_running(pid) {
                bail!("dockerd exited at start: {}", lab.log_tail(pid));
            }
            if docker.cli(lab, &["version"])?.status.success() {
                return Ok(docker);
            }
            if Instant::now() >= deadline {
                bail!(
                    "dockerd did not answer within {DOCKERD_READY:?}: {}",
                    lab.log_tail(pid)
                );
            }
            process::pause(Duration::from_millis(250))?;
        }
    }

    fn cli(&self, lab: &mut Lab, args: &[&str]) -> Result<process::Captured> {
        let host = format!("unix://{}", self.socket);
        let mut argv = vec!["docker", "-H", host.as_str()];
        argv.extend_from_slice(args);
        lab.run(&argv, DOCKER_TIMEOUT)
    }

    fn cli_ok(&self, lab: &mut Lab, args: &[&str]) -> Result<String> {
        Ok(self.cli(lab, args)?.success()?.stdout.trim().to_owned())
    }

    /// Start a container on `side`'s network whose command pings the
    /// server until it answers (bounded: 50 tries) and exits: the wall time
    /// of that `docker run` (create, the network driver's endpoint and
    /// join, start, the first answered ping), in ms. Removed after, untimed.
    fn time_to_ready(&self, lab: &mut Lab, side: &Side, name: &str) -> Result<f64> {
        let script = format!(
            "i=0; until ping -c 1 -W 1 {} >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 50 ] && exit 1; done",
            side.server_ip
        );
        let started = Instant::now();
        let ran = self.cli(
            lab,
            &[
                "run",
                "--name",
                name,
                "--network",
                side.network,
                IMAGE,
                "sh",
                "-c",
                &script,
            ],
        );
        let elapsed = started.elapsed();
        let _ = self.cli(lab, &["rm", "-f", name]);
        ran?.success()?;
        Ok(elapsed.as_secs_f64() * 1000.0)
    }

    fn import_image(&self, lab: &mut Lab) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        for d in [
            "bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "root",
        ] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying busybox")?;
        let list = lab
            .run(&["/bin/busybox", "--list"], Duration::from_secs(5))?
            .success()?;
        for applet in list
            .stdout
            .lines()
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        let script = format!(
            "tar -C {} -c . | docker -H unix://{} import - {IMAGE}",
            rootfs.display(),
            self.socket
        );
        lab.run(&["sh", "-c", &script], DOCKER_TIMEOUT)?.success()?;
        Ok(())
    }

    /// Two containers on `network`, their namespaces named `prefix-c` and
    /// `prefix-s`.
    fn side(
        &self,
        lab: &mut Lab,
        label: &'static str,
        network: &'static str,
        prefix: &str,
        cpu_pids: Vec<u32>,
    ) -> Result<Side> {
        let mut namespaces = Vec::new();
        let mut server_ip = String::new();
        for role in ["s", "c"] {
            let name = format!("{network}-{role}");
            self.cli_ok(
                lab,
                &[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    network,
                    IMAGE,
                    "sleep",
                    "3600",
                ],
            )?;
            let pid: u32 = self
                .cli_ok(lab, &["inspect", "-f", "{{.State.Pid}}", &name])?
                .parse()
                .with_context(|| format!("the pid of container {name}"))?;
            let ns = format!("{prefix}-{role}");
            lab.attach_netns(&ns, pid)?;
            if role == "s" {
                server_ip = self.cli_ok(
                    lab,
                    &[
                        "inspect",
                        "-f",
                        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                        &name,
                    ],
                )?;
            }
            namespaces.push(ns);
        }
        let [server_ns, client_ns] = <[String; 2]>::try_from(namespaces)
            .map_err(|_| anyhow::anyhow!("two containers expected"))?;
        Ok(Side {
            label,
            network,
            client_ns,
            server_ns,
            server_ip,
            cpu_pids,
        })
    }

    /// Remove containers and networks, stop dockerd, unmount what it left.
    fn teardown(&self, lab: &mut Lab) {
        if let Ok(ids) = self.cli_ok(lab, &["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.cli(lab, &args);
            }
        }
        let _ = self.cli(lab, &["network", "rm", "weftnet", "bridgenet"]);
        // SAFETY: kill(2) on the pid of our own child, no memory passed.
        unsafe {
            libc::kill(libc::pid_t::try_from(self.pid).unwrap_or(0), libc::SIGTERM);
        }
        let _ = lab.wait_or_stop(self.pid, Duration::from_secs(40));
        let prefix = self.dir.to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = lab.run(&["umount", "-l", point], Duration::from_secs(10));
        }
    }
}

fn section(
    options: &DockerOptions,
    results: &BTreeMap<&'static str, Figures>,
    failures: &[String],
    versions: &[String],
    date_utc: &str,
    took: Duration,
) -> String {
    let get = |label: &str| results.get(label);
    let summary =
        |label: &str, f: fn(&Figures) -> &Vec<f64>| get(label).and_then(|r| Summary::of(f(r)));
    let cell = report::cell;
    let (w, b) = ("weft network", "Docker bridge");
    let mut text = format!(
        "{SECTION_HEADING}\n\n{date_utc} UTC, `{}`, {} run(s) × {} s per network, alternating; \
         kernel {}; {}. Two busybox containers per network in one dockerd (vfs, \
         `--iptables=false`); iperf3 (one TCP stream; 64-byte UDP at full rate) and ping of the \
         host run in the containers' namespaces; start time: `docker run` of a container whose \
         command pings the server until it answers, {STARTS_PER_RUN} per network and run. \
         Took {} s.\n\n",
        options.command,
        options.runs,
        options.seconds,
        kernel_release(),
        versions.join(", "),
        took.as_secs()
    );
    text.push_str("| | weft network | Docker bridge | weft / bridge |\n|---|---|---|---|\n");
    text.push_str(&format!(
        "| TCP, 1 stream (Gbit/s) | {} | {} | {} |\n",
        cell(summary(w, |f| &f.gbps)),
        cell(summary(b, |f| &f.gbps)),
        ratio(summary(w, |f| &f.gbps), summary(b, |f| &f.gbps))
    ));
    text.push_str(&format!(
        "| ping p50 (µs) | {} | {} | {} (lower is better) |\n",
        cell(summary(w, |f| &f.ping_us)),
        cell(summary(b, |f| &f.ping_us)),
        ratio(summary(w, |f| &f.ping_us), summary(b, |f| &f.ping_us))
    ));
    text.push_str(&format!(
        "| UDP 64 B received (kpps) | {} | {} | {} |\n",
        cell(summary(w, |f| &f.udp_kpps)),
        cell(summary(b, |f| &f.udp_kpps)),
        ratio(summary(w, |f| &f.udp_kpps), summary(b, |f| &f.udp_kpps))
    ));
    text.push_str(&format!(
        "| `docker run` to the first answered ping (ms) | {} | {} | {} (lower is better) |\n",
        cell(summary(w, |f| &f.ready_ms)),
        cell(summary(b, |f| &f.ready_ms)),
        ratio(summary(w, |f| &f.ready_ms), summary(b, |f| &f.ready_ms))
    ));
    text.push_str(&format!(
        "| switch CPU-s per GB | {} | kernel | - |\n",
        cell(summary(w, |f| &f.cpu_per_gb))
    ));
    if !failures.is_empty() {
        text.push_str("\nFailed measurements:\n");
        for f in failures {
            text.push_str(&format!("- {f}\n"));
        }
    }
    text
}
