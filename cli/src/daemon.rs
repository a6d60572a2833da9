//! `weft daemon`: the controller, the data path and the API socket in one
//! process, until SIGINT or SIGTERM.
//!
//! Stopping leaves every TAP in place (they are persistent): a daemon
//! started again with the same state directory re-opens them and traffic
//! resumes by itself.
//!
//! With `--listen IP:PORT` the daemon is a member of a gossip cluster
//! (`--join` any member), overlay networks work, and VXLAN is received on
//! `IP:--vxlan-port`; see `weft_overlay::driver::gossip`. The cluster knows
//! the host by a random node id kept in the state directory (`node-id`,
//! made on first start); `--node-name` (default the hostname, read from
//! [`HOSTNAME`]: the daemon's UTS namespace) is only its display name, so
//! hosts that share a hostname still form one cluster. An explicit
//! `--node-name` that a live member already uses makes the daemon leave
//! the cluster and exit with that error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

use crate::ownership;
use tokio::signal::unix::{signal, SignalKind};
use weft_cnm::controller::{ControllerConfig, NETNS_DIR};
use weft_cnm::{api, docker_plugin, Controller};
use weft_overlay::driver::gossip::{ClusterConfig, QuicSettings};

/// The kernel's hostname (of the daemon's UTS namespace).
const HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// Where the host's resolvers are listed.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The daemon's options.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// State directory [default: /var/lib/weft as root, else $XDG_STATE_HOME/weft].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do not create the default `bridge` network.
    #[arg(long)]
    pub no_default_network: bool,
    /// Group that may use the API socket (mode 0660), like dockerd's `-G`
    /// [default: the daemon's own group].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Upstream resolver for names that are not local, IP or IP:PORT
    /// (repeatable) [default: the nameservers of /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub dns_upstream: Vec<String>,
    /// Gossip address of this host (UDP); enables overlay networks. Its IP
    /// is also where other hosts send VXLAN (and QUIC). With 0.0.0.0:PORT
    /// (and --join) the host takes the address its route to the cluster
    /// leaves from, and follows it when it changes (a laptop on another
    /// network): the cluster is told, tunnels move, sandboxes stay.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// A cluster member to join through (repeatable; any member will do).
    #[arg(long, value_name = "IP:PORT", requires = "listen")]
    pub join: Vec<SocketAddr>,
    /// This host's display name in the cluster [default: the hostname].
    /// Given explicitly, it must be unique: a daemon joining with the name
    /// of a live member is refused and exits. The cluster itself knows the
    /// host by a random id kept in STATE_DIR/node-id.
    #[arg(long, value_name = "NAME", requires = "listen")]
    pub node_name: Option<String>,
    /// File whose contents (trimmed) are the cluster's shared secret:
    /// gossip is encrypted and authenticated with it.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub cluster_key: Option<PathBuf>,
    /// UDP port of VXLAN, the same on every host.
    #[arg(long, value_name = "PORT", default_value_t = VXLAN_PORT)]
    pub vxlan_port: u16,
    /// How overlay networks made on this host carry their frames unless
    /// `-o encrypted=true|false` says: `vxlan` (clear VXLAN over UDP, as
    /// Linux's vxlan devices) or `quic` (encrypted and authenticated with
    /// the cluster key; needs --cluster-key). With a cluster key the QUIC
    /// transport runs either way, for networks made with -o encrypted=true.
    #[arg(
        long,
        value_name = "TRANSPORT",
        default_value = "vxlan",
        requires = "listen"
    )]
    pub transport: TransportKind,
    /// UDP port of the QUIC transport, the same on every host.
    #[arg(long, value_name = "PORT", default_value_t = weft_overlay::driver::gossip::DEFAULT_QUIC_PORT)]
    pub quic_port: u16,
    /// Congestion control of the QUIC tunnels: `none` (the inner flows do
    /// their own; the default) or `cubic` (quinn's, for comparison).
    #[arg(long, value_name = "ALGORITHM", default_value = "none")]
    pub quic_congestion: QuicCongestion,
    /// Flows the NAT holds at once, per table (UDP and ICMP echo; TCP);
    /// when full, new flows are refused and counted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NAT_MAX_FLOWS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub nat_max_flows: u32,
    /// Also serve Prometheus metrics (`GET /metrics`) on this TCP address;
    /// the API socket serves them too.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Also serve a live topology page (networks, endpoints, cluster
    /// members) and the read-only API it reads on this TCP address.
    #[arg(long, value_name = "IP:PORT")]
    pub web: Option<SocketAddr>,
    /// Seconds a UDP flow may idle before its host socket closes.
    #[arg(long, value_name = "SECS", default_value_t = weft_services::nat::UDP_IDLE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub nat_udp_idle: u64,
    /// Seconds an established TCP flow may idle before both its ends are
    /// reset [default: 7440, 2 h 4 min, RFC 5382's least].
    #[arg(long, value_name = "SECS", default_value_t = weft_services::tcp_nat::ESTABLISHED_IDLE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=2_592_000), hide_default_value = true)]
    pub nat_tcp_idle: u64,
    /// Also serve Docker's network and IPAM plugin protocol as NAME
    /// (`docker network create -d NAME --ipam-driver NAME`), on
    /// DIR/NAME.sock (see --docker-plugin-dir).
    #[arg(long, value_name = "NAME")]
    pub docker_plugin: Option<String>,
    /// Where dockerd looks for plugin sockets [default: /run/docker/plugins
    /// as root, else $XDG_RUNTIME_DIR/docker/plugins, a rootless dockerd's].
    #[arg(long, value_name = "DIR", requires = "docker_plugin")]
    pub docker_plugin_dir: Option<PathBuf>,
    /// What to log: a level (error, warn, info, debug, trace) or
    /// per-module directives such as `info,weft_overlay=debug`.
    #[arg(long, value_name = "FILTER", env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,
    /// How to log on stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "WEFT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// `--transport`: the default carrier of overlay networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// VXLAN over UDP, in clear.
    Vxlan,
    /// QUIC datagrams, encrypted.
    Quic,
}

/// `--quic-congestion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuicCongestion {
    /// None of the tunnel's own.
    None,
    /// quinn's CUBIC.
    Cubic,
}

/// The daemon's log format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; coloured only on a terminal.
    Text,
    /// One JSON object per line: time, level, target, message, fields.
    Json,
}

/// Start logging to stderr as `--log-level` and `--log-format` say.
///
/// # Errors
///
/// A filter that does not parse.
pub fn init_logging(args: &DaemonArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?}: not a level or filter (try info, debug, or info,weft_overlay=debug)",
            args.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => {
            // Colour only for a person at a terminal: not in journald,
            // files or pipes, and never with NO_COLOR (https://no-color.org).
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
    }
    Ok(())
}

/// The NAT's default flow bound, as the flag's type (it fits: 4096).
const DEFAULT_NAT_MAX_FLOWS: u32 = weft_services::nat::DEFAULT_MAX_FLOWS as u32;

/// VXLAN's IANA port (RFC 7348 section 5), Linux's `vxlan` default too.
const VXLAN_PORT: u16 = weft_overlay::DEFAULT_PORT;

/// Run the daemon until a signal stops it.
pub fn run(socket: &Path, args: DaemonArgs) -> Result<()> {
    // Before the runtime's threads: it edits the environment.
    let activated = crate::notify::activated_listener()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(socket, args, activated))
}

async fn serve(
    socket: &Path,
    args: DaemonArgs,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<()> {
    let state_dir = args
        .state_dir
        .unwrap_or_else(crate::paths::default_state_dir);
    // Before anything is restored: a live daemon on the socket, a path
    // that is not a socket, or another daemon on the state directory stops
    // this one here, having touched nothing.
    if activated.is_none() {
        ownership::check_socket_path(socket).await?;
    }
    let group = args
        .group
        .as_deref()
        .map(ownership::socket_group)
        .transpose()?;
    let _state_lock = ownership::lock_state_dir(&state_dir)?;
    let fds = crate::fd_limit::raise();
    tracing::info!(
        limit = fds.limit,
        reserve = fds.reserve,
        nat_flows = fds.flows,
        "open files: the NAT's flows may take what the reserve leaves"
    );
    let helper_exe =
        std::env::current_exe().context("finding the weft binary for the attach helper")?;
    let dns_upstreams = if args.dns_upstream.is_empty() {
        let text = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
        let upstreams = weft_cnm::resolv_conf::parse_nameservers(&text);
        if upstreams.is_empty() {
            tracing::warn!("no nameserver in {HOST_RESOLV_CONF}: names that are not local get SERVFAIL (give --dns-upstream)");
        }
        upstreams
    } else {
        args.dns_upstream
            .iter()
            .map(|a| weft_cnm::resolv_conf::parse_upstream(a))
            .collect::<Result<Vec<_>, _>>()?
    };
    let quic = QuicSettings {
        port: args.quic_port,
        encrypt_by_default: args.transport == TransportKind::Quic,
        cubic: args.quic_congestion == QuicCongestion::Cubic,
    };
    let cluster = cluster_config(
        &state_dir,
        &args.listen,
        &args.join,
        args.node_name,
        args.cluster_key.as_deref(),
        (args.vxlan_port, quic),
    )?;
    let controller = Controller::start(ControllerConfig {
        state_dir: state_dir.clone(),
        helper_exe,
        netns_dir: PathBuf::from(NETNS_DIR),
        dns_upstreams,
        cluster,
        nat: weft_services::NatLimits {
            max_flows: usize::try_from(args.nat_max_flows).unwrap_or(usize::MAX),
            socket_budget: usize::try_from(fds.flows).unwrap_or(usize::MAX),
            udp_idle: std::time::Duration::from_secs(args.nat_udp_idle),
            tcp_established_idle: std::time::Duration::from_secs(args.nat_tcp_idle),
        },
    })
    .await
    .with_context(|| format!("starting with state directory {}", state_dir.display()))?;
    let controller = Arc::new(controller);
    tokio::spawn(Arc::clone(&controller).follow_cluster());
    if !args.no_default_network {
        controller
            .ensure_default_network()
            .await
            .context("creating the default network `bridge`")?;
    }
    // Activated: systemd's socket (its path, mode and group are the
    // socket unit's, and the file stays when we stop); else our own.
    let owns_socket = activated.is_none();
    let (listener, socket) = match activated {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf));
            let listener =
                UnixListener::from_std(listener).context("serving the activated socket")?;
            (listener, path.unwrap_or_else(|| socket.to_path_buf()))
        }
        None => (bind(socket, group).await?, socket.to_path_buf()),
    };
    if let Some(addr) = args.metrics {
        serve_metrics(addr, &controller).await?;
    }
    if let Some(addr) = args.web {
        serve_web(addr, &controller).await?;
    }
    let refusal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let stop = {
        let refusal = Arc::clone(&refusal);
        let cluster = controller.cluster();
        async move {
            let refused = async move {
                match cluster {
                    Some(cluster) => cluster.refused().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown_signal() => {}
                reason = refused => {
                    *refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                }
            }
        }
    };
    let plugin_files = match &args.docker_plugin {
        Some(name) => serve_docker_plugin(name, args.docker_plugin_dir, &controller).await?,
        None => Vec::new(),
    };
    tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), "weft daemon listening");
    // The socket is bound and listening: connections wait in its backlog
    // until serve accepts them, so systemd may start what depends on us.
    crate::notify::notify("READY=1");
    let result = api::serve(listener, controller, async {
        stop.await;
        crate::notify::notify("STOPPING=1");
    })
    .await
    .context("serving the API");
    if owns_socket {
        let _ = std::fs::remove_file(&socket);
    }
    for path in plugin_files {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("weft daemon stopped; TAPs stay for the next start");
    result?;
    let refused = refusal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match refused {
        Some(reason) => bail!("left the cluster: {reason}"),
        None => Ok(()),
    }
}

/// The cluster part of the options; None without `--listen`.
fn cluster_config(
    state_dir: &Path,
    listen: &Option<SocketAddr>,
    join: &[SocketAddr],
    node_name: Option<String>,
    cluster_key: Option<&Path>,
    (vxlan_port, quic): (u16, QuicSettings),
) -> Result<Option<ClusterConfig>> {
    let Some(listen) = *listen else {
        return Ok(None);
    };
    if listen.ip().is_unspecified() && join.is_empty() {
        bail!("--listen {listen}: on every address, this host finds its own from its route to the cluster: give --join (or give this host's own address, the one other hosts reach it at)");
    }
    let explicit_name = node_name.is_some();
    let node_name = match node_name {
        Some(name) => name,
        None => std::fs::read_to_string(HOSTNAME)
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .with_context(|| {
                format!("reading the hostname from {HOSTNAME} for the node name (give --node-name)")
            })?,
    };
    if node_name.is_empty() || node_name.len() > 253 || node_name.chars().any(char::is_whitespace) {
        bail!("--node-name {node_name:?}: give 1 to 253 characters without blanks, unique in the cluster");
    }
    let (node_id, made) = weft_overlay::driver::node_id::load_or_create(state_dir)?;
    if made {
        tracing::info!(id = %node_id, "this host's node id was made (kept in the state directory)");
    }
    let secret = match cluster_key {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("reading the cluster key {}", path.display()))?;
            let secret = text.trim_ascii().to_vec();
            if secret.is_empty() {
                bail!(
                    "the cluster key file {} is empty: put a secret in it",
                    path.display()
                );
            }
            Some(secret)
        }
        None => None,
    };
    if quic.encrypt_by_default && secret.is_none() {
        bail!("--transport quic: encrypted overlays authenticate with the cluster key; give --cluster-key FILE");
    }
    if quic.port == vxlan_port {
        bail!(
            "--quic-port {}: VXLAN uses that port (--vxlan-port); give another",
            quic.port
        );
    }
    Ok(Some(ClusterConfig {
        listen,
        join: join.to_vec(),
        node_id,
        node_name,
        explicit_name,
        secret,
        vxlan_port,
        quic,
    }))
}

/// Serve Docker's plugin protocol as `name` (see
/// `weft_cnm::docker_plugin`) until the daemon stops; the files to remove
/// then (the socket, and for a daemon that is not root the spec file that
/// points a rootless dockerd at it).
async fn serve_docker_plugin(
    name: &str,
    dir: Option<PathBuf>,
    controller: &Arc<Controller>,
) -> Result<Vec<PathBuf>> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        bail!("--docker-plugin {name:?}: give a plain name (letters, digits, '-', '_', '.'), the one `docker network create -d NAME` uses");
    }
    let is_root = nix::unistd::geteuid().is_root();
    let chosen = dir.is_some();
    let dir = dir.unwrap_or_else(|| {
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        docker_plugin::default_plugin_dir(is_root, runtime_dir.as_deref())
    });
    let path = dir.join(format!("{name}.sock"));
    let listener = bind(&path, None)
        .await
        .context("serving the Docker plugin (--docker-plugin)")?;
    let mut files = vec![path.clone()];
    if !is_root && !chosen {
        let config_home = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(spec) =
            docker_plugin::rootless_spec_path(name, config_home.as_deref(), home.as_deref())
        {
            write_atomically(&spec, &docker_plugin::spec_text(&path)).with_context(|| {
                format!(
                    "writing the plugin spec {} for a rootless dockerd",
                    spec.display()
                )
            })?;
            tracing::info!(spec = %spec.display(), "a rootless dockerd finds the plugin through this spec file");
            files.push(spec);
        }
    }
    let plugin = docker_plugin::Plugin::new(Arc::clone(controller));
    tokio::spawn(async move {
        if let Err(e) = docker_plugin::serve(listener, plugin, std::future::pending()).await {
            tracing::error!(error = %e, "the Docker plugin stopped serving");
        }
    });
    tracing::info!(socket = %path.display(), plugin = name, "serving Docker's network and IPAM plugin protocol");
    Ok(files)
}

/// Serve `GET /metrics` on a TCP address, beside the API.
async fn serve_metrics(addr: SocketAddr, controller: &Arc<Controller>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: binding"))?;
    let controller = Arc::clone(controller);
    tokio::spawn(async move {
        if let Err(e) = api::serve_metrics(listener, controller).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// Serve the topology page and the read-only API on a TCP address.
async fn serve_web(addr: SocketAddr, controller: &Arc<Controller>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--web {addr}: binding"))?;
    let controller = Arc::clone(controller);
    tokio::spawn(async move {
        if let Err(e) = api::serve_web(listener, controller).await {
            tracing::error!(error = %e, "the web listener stopped");
        }
    });
    tracing::info!(%addr, "serving the topology page");
    Ok(())
}

/// Write `text` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("spec.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn bind(socket: &Path, group: Option<nix::unistd::Gid>) -> Result<UnixListener> {
    ownership::make_socket_dir(socket, group)?;
    // Checked at start to be nothing or a socket; a stale one goes now.
    ownership::check_socket_path(socket).await?;
    if std::fs::symlink_metadata(socket).is_ok() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    ownership::set_socket_mode(socket, group)?;
    Ok(listener)
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, stopping");
}
