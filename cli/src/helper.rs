//! The attach helper (`weft __attach REQUEST`): a short-lived,
//! single-threaded process that enters a sandbox's network namespace,
//! makes or re-opens its TAP, configures it over netlink and passes the fd
//! back to the daemon. See `weft_cnm::attach` for the protocol and why the
//! daemon does not do this itself.
//!
//! Steps for a TAP, in the sandbox's namespace:
//! 1. pick the name: the one asked for (re-open), the new name asked for
//!    (CNI's `CNI_IFNAME`; refused if taken), or the first `ethN` that
//!    does not exist yet;
//! 2. `TUNSETIFF` creates the TAP (or attaches to the persistent one of that
//!    name), its MAC is set, then `TUNSETPERSIST` keeps it across daemon
//!    restarts, offloads on. In that order: a TAP that outlives this
//!    helper always has the endpoint's MAC, which is how a restarted
//!    daemon finds and removes what a connect cut short left (the
//!    `Remove` action);
//! 3. over netlink: MAC, MTU, up; each address (IPv6 without DAD, so it is
//!    usable at once); a default route per family via the gateway; `lo` up.
//!    "Already exists" answers are fine: a re-open finds everything in
//!    place;
//! 4. send `Attached { ifname }` with the fd; exit.
//!
//! A new TAP that fails half-way is removed again, so a failed connect
//! leaves nothing behind.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use weft_cnm::attach::{
    send_reply, AttachAction, AttachReply, AttachRequest, DockerTapConfig, TapConfig, HELPER_FD,
};
use weft_vswitch::sys::tap::{Offloads, Tap};

/// Interface names tried for a new endpoint: eth0 .. eth{MAX_INTERFACES-1}.
const MAX_INTERFACES: u32 = 1000;

/// Run the helper; the process exit code.
pub fn main(request_json: &str) -> i32 {
    // SAFETY: HELPER_FD was installed by the daemon for this process (dup2
    // before exec) and nothing else in this process uses that number.
    let channel = unsafe { BorrowedFd::borrow_raw(HELPER_FD) };
    let outcome = serde_json::from_str::<AttachRequest>(request_json)
        .context("parsing the attach request")
        .and_then(|request| attach(&request));
    let sent = match &outcome {
        Ok((ifname, tap)) => send_reply(
            channel,
            &AttachReply::Attached {
                ifname: ifname.clone(),
            },
            tap.as_ref().map(|t| t.as_fd()),
        ),
        Err(e) => send_reply(
            channel,
            &AttachReply::Failed {
                error: format!("{e:#}"),
            },
            None,
        ),
    };
    if let Err(e) = sent {
        eprintln!("weft attach helper: sending the answer: {e}");
        return 1;
    }
    i32::from(outcome.is_err())
}

fn attach(request: &AttachRequest) -> Result<(String, Option<Tap>)> {
    let netns = File::open(&request.sandbox)
        .with_context(|| format!("opening network namespace {}", request.sandbox.display()))?;
    enter_owning_user_namespace(&netns).with_context(|| {
        format!(
            "entering the user namespace that owns {}",
            request.sandbox.display()
        )
    })?;
    nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        let hint = if e == nix::errno::Errno::EPERM {
            not_ours_hint(&netns)
        } else {
            String::new()
        };
        anyhow::anyhow!(
            "entering network namespace {}: {e}{hint}",
            request.sandbox.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the helper's runtime")?;
    match &request.action {
        AttachAction::Loopback => {
            runtime.block_on(async {
                let handle = netlink()?;
                loopback_up(&handle).await
            })?;
            Ok(("lo".to_owned(), None))
        }
        AttachAction::Tap(config) => {
            let (ifname, created) = match (&config.ifname, &config.new_name) {
                (Some(name), _) => (name.clone(), !interface_exists(name)),
                (None, Some(name)) if interface_exists(name) => {
                    bail!("the sandbox has an interface named {name} already: choose another name")
                }
                (None, Some(name)) => (name.clone(), true),
                (None, None) => (first_free_name()?, true),
            };
            let tap = Tap::create(&ifname).map_err(|e| tap_error(&ifname, e))?;
            let configured = (|| {
                runtime.block_on(set_mac(&ifname, config.mac))?;
                tap.set_persistent(true)
                    .context("making the TAP persistent")?;
                // USO needs Linux 6.2: older kernels refuse the flag.
                tap.set_offloads(Offloads::ALL)
                    .or_else(|_| tap.set_offloads(Offloads::ALL_BUT_USO))
                    .context("enabling TAP offloads")?;
                runtime.block_on(configure(&ifname, config))
            })();
            if let Err(e) = configured {
                if created {
                    let _ = tap.set_persistent(false);
                }
                return Err(e);
            }
            Ok((ifname, Some(tap)))
        }
        AttachAction::DockerTap(config) => docker_tap(&runtime, config),
        AttachAction::Remove { mac } => {
            let removed = runtime.block_on(remove_link_with_mac(mac.0))?;
            Ok((removed.unwrap_or_default(), None))
        }
    }
}

/// Delete the interface whose MAC is `mac`, if any; its name.
async fn remove_link_with_mac(mac: [u8; 6]) -> Result<Option<String>> {
    let Ok(name) = link_with_mac(mac).await else {
        return Ok(None);
    };
    let handle = netlink()?;
    let index = link_index(&handle, &name).await?;
    handle
        .link()
        .del(index)
        .execute()
        .await
        .with_context(|| format!("deleting {name}"))?;
    Ok(Some(name))
}

/// Set a new TAP's MAC (before it is made persistent: see the module
/// header).
async fn set_mac(ifname: &str, mac: weft_vswitch::MacAddr) -> Result<()> {
    let handle = netlink()?;
    let index = link_index(&handle, ifname).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("setting MAC {mac} on {ifname}"))
}

/// Docker's TAP (see `AttachAction::DockerTap`): made in this (the
/// daemon's) namespace, MAC and MTU set, left down for Docker to move,
/// configure and bring up; or, re-opened, found in the sandbox by its MAC.
/// A new TAP that fails half-way is removed again.
fn docker_tap(
    runtime: &tokio::runtime::Runtime,
    config: &DockerTapConfig,
) -> Result<(String, Option<Tap>)> {
    let ifname = if config.reopen {
        runtime.block_on(link_with_mac(config.mac.0))?
    } else {
        config.src_name.clone()
    };
    let created = !interface_exists(&ifname);
    let tap = Tap::create(&ifname).map_err(|e| tap_error(&ifname, e))?;
    let configured = (|| {
        if !config.reopen {
            runtime.block_on(set_mac(&ifname, config.mac))?;
        }
        tap.set_persistent(true)
            .context("making the TAP persistent")?;
        tap.set_offloads(Offloads::ALL)
            .or_else(|_| tap.set_offloads(Offloads::ALL_BUT_USO))
            .context("enabling TAP offloads")?;
        if config.reopen {
            return Ok(());
        }
        runtime.block_on(async {
            let handle = netlink()?;
            let index = link_index(&handle, &ifname).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .address(config.mac.0.to_vec())
                        .mtu(config.mtu)
                        .build(),
                )
                .execute()
                .await
                .with_context(|| {
                    format!(
                        "setting MAC {} and MTU {} on {ifname}",
                        config.mac, config.mtu
                    )
                })
        })
    })();
    if let Err(e) = configured {
        if created {
            let _ = tap.set_persistent(false);
        }
        return Err(e);
    }
    Ok((ifname, Some(tap)))
}

/// The name of the interface whose MAC is `mac` (a Docker endpoint's TAP,
/// renamed by Docker).
async fn link_with_mac(mac: [u8; 6]) -> Result<String> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let handle = netlink()?;
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.context("listing interfaces")? {
        let has_mac = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(bytes) if bytes.as_slice() == mac));
        if has_mac {
            if let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            }) {
                return Ok(name);
            }
        }
    }
    bail!(
        "no interface with MAC {} in the sandbox: the container's interface is gone",
        weft_vswitch::MacAddr(mac)
    )
}

/// A sandbox of a rootless container lives in a network namespace owned by
/// the container's user namespace: creating a TAP there needs
/// `CAP_NET_ADMIN` in that user namespace, which we get by entering it
/// (allowed when our user owns it and we are in its parent, as a rootless
/// runtime's user is). Nothing to do when it is our own user namespace.
fn enter_owning_user_namespace(netns: &File) -> Result<()> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd (or -1)
    // for the user namespace that owns the namespace behind `netns`.
    let raw = unsafe { libc::ioctl(netns.as_raw_fd(), libc::NS_GET_USERNS) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            not_ours_hint(netns)
        } else {
            String::new()
        };
        bail!("NS_GET_USERNS: {e}{hint}");
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let owner = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let ours = std::fs::metadata("/proc/self/ns/user").context("reading /proc/self/ns/user")?;
    let theirs = File::from(owner);
    let theirs_meta = theirs
        .metadata()
        .context("reading the owning user namespace")?;
    use std::os::unix::fs::MetadataExt;
    if (ours.dev(), ours.ino()) == (theirs_meta.dev(), theirs_meta.ino()) {
        return Ok(());
    }
    nix::sched::setns(theirs.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(|e| anyhow::anyhow!("setns: {e}{}", not_ours_hint(netns)))?;
    Ok(())
}

/// Why a daemon may not enter a network namespace (EPERM from setns):
/// the namespace belongs to a user namespace in which this daemon has no
/// `CAP_NET_ADMIN`, typically a root-made namespace (`ip netns add`) and a
/// rootless daemon. Names the owner when the kernel tells it.
fn not_ours_hint(netns: &File) -> String {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd (or -1).
    let raw = unsafe { libc::ioctl(netns.as_raw_fd(), libc::NS_GET_USERNS) };
    // EPERM here: the owner is outside (above) this daemon's user
    // namespace, which the kernel does not let it name.
    let owner = if raw >= 0 {
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let userns = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut uid: libc::uid_t = 0;
        // SAFETY: NS_GET_OWNER_UID writes one uid_t to the pointer given,
        // which points at `uid`, alive for the call.
        let got = unsafe { libc::ioctl(userns.as_raw_fd(), libc::NS_GET_OWNER_UID, &mut uid) };
        (got == 0).then_some(uid)
    } else {
        None
    };
    let me = nix::unistd::geteuid();
    let whose = match owner {
        Some(uid) => format!("a user namespace owned by uid {uid}"),
        None => "a user namespace outside this daemon's (the host's, for a namespace root made)"
            .to_owned(),
    };
    format!(
        ": this daemon (uid {me}) has no CAP_NET_ADMIN over the namespace; it belongs to {whose}. \
         A rootless daemon attaches only namespaces of its own user or user namespace \
         (`weft run` as that user, `unshare -rn`): run the daemon as root for namespaces root made \
         (`ip netns add`), or as the namespace's owner"
    )
}

/// Say what to do when the host forbids TAPs.
fn tap_error(ifname: &str, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied if e.raw_os_error() == Some(libc::EACCES) => {
            ": /dev/net/tun is not accessible to this user (some hosts ship it 0600; as root: chmod 0666 /dev/net/tun)"
        }
        std::io::ErrorKind::NotFound => ": /dev/net/tun is missing (as root: modprobe tun)",
        _ if e.raw_os_error() == Some(libc::EPERM) => {
            ": no CAP_NET_ADMIN over the sandbox (its user namespace is not ours)"
        }
        _ => "",
    };
    anyhow::anyhow!("creating TAP {ifname}: {e}{hint}")
}

fn netlink() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

fn first_free_name() -> Result<String> {
    (0..MAX_INTERFACES)
        .map(|i| format!("eth{i}"))
        .find(|name| !interface_exists(name))
        .context("no free interface name eth0..eth999 in the sandbox")
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await? {
        Some(link) => Ok(link.header.index),
        None => bail!("interface {name} vanished while being configured"),
    }
}

async fn loopback_up(handle: &Handle) -> Result<()> {
    let index = link_index(handle, "lo").await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("bringing lo up")
}

fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

async fn configure(ifname: &str, config: &TapConfig) -> Result<()> {
    let handle = netlink()?;
    let index = link_index(&handle, ifname).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(config.mac.0.to_vec())
                .mtu(config.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .with_context(|| {
            format!(
                "setting MAC {}, MTU {} and up on {ifname}",
                config.mac, config.mtu
            )
        })?;
    for addr in &config.addresses {
        let mut request = handle.address().add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            let message = request.message_mut();
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        ignore_exists(request.execute().await)
            .with_context(|| format!("adding {addr} to {ifname}"))?;
    }
    for gateway in &config.gateways {
        let route = match gateway {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .gateway(*v4)
                .output_interface(index)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(*v6)
                .output_interface(index)
                .build(),
        };
        ignore_exists(handle.route().add(route).execute().await)
            .with_context(|| format!("adding a default route via {gateway} on {ifname}"))?;
    }
    loopback_up(&handle).await
}
