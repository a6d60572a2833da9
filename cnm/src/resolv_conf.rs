//! The resolv.conf weft gives sandboxes: the gateways of their network,
//! where the embedded DNS answers.
//!
//! For a namespace named under `/var/run/netns/NAME`, `ip netns exec`
//! bind-mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`: weft
//! writes that file when it attaches the namespace, unless one exists, and
//! removes it again when the last endpoint that needed it leaves (only if
//! weft wrote it). `weft run` bind-mounts its own copy in the command's
//! mount namespace.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where `ip netns exec` looks for per-namespace files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The first line weft writes, so that it recognizes its own file.
const MARKER: &str = "# written by weft: the embedded DNS on the network's gateway";

/// The file's text for these nameservers.
pub fn render(nameservers: &[IpAddr]) -> String {
    let mut text = format!("{MARKER}\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    // Names of other sandboxes are single labels: look them up as they are
    // (Docker's embedded DNS does the same).
    text.push_str("options ndots:0\n");
    text
}

/// The per-namespace resolv.conf of a sandbox path, if it is a named
/// namespace under `netns_dir`.
pub fn netns_resolv_conf(netns_dir: &Path, sandbox: &Path) -> Option<PathBuf> {
    let name = sandbox.strip_prefix(netns_dir).ok()?;
    if name.components().count() != 1 {
        return None;
    }
    Some(Path::new(NETNS_ETC).join(name).join("resolv.conf"))
}

/// Write `path` unless a file not written by weft is there. Returns
/// whether weft's file is in place.
///
/// # Errors
///
/// Creating the directory or writing the file failed.
pub fn install(path: &Path, nameservers: &[IpAddr]) -> io::Result<bool> {
    if path.exists() && !is_ours(path) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("weft-tmp");
    std::fs::write(&tmp, render(nameservers))?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Remove `path` if weft wrote it, and its directory if that is then
/// empty.
pub fn remove(path: &Path) {
    if is_ours(path) {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARKER))
}

/// The DNS port.
const DNS_PORT: u16 = 53;

/// The `nameserver` lines of a resolv.conf, as upstream addresses.
pub fn parse_nameservers(text: &str) -> Vec<std::net::SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            // An IPv6 link-local nameserver may carry a %zone: not supported.
            let addr: IpAddr = words.next()?.parse().ok()?;
            Some(std::net::SocketAddr::new(addr, DNS_PORT))
        })
        .collect()
}

/// An upstream given as `IP` or `IP:PORT` (`[IPv6]:PORT`).
///
/// # Errors
///
/// A message saying what form is expected.
pub fn parse_upstream(text: &str) -> Result<std::net::SocketAddr, UpstreamError> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(std::net::SocketAddr::new(addr, DNS_PORT));
    }
    text.parse().map_err(|_| UpstreamError(text.to_owned()))
}

/// An upstream resolver address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid DNS upstream {0:?}: give an IP address, IP:PORT or [IPv6]:PORT")]
pub struct UpstreamError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_recognizes_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns1/resolv.conf");
        assert!(install(&path, &["10.0.0.1".parse().unwrap()]).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("nameserver 10.0.0.1\n"));
        remove(&path);
        assert!(!path.exists());
        // A file of the user's is left alone.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "nameserver 192.0.2.53\n").unwrap();
        assert!(!install(&path, &["10.0.0.1".parse().unwrap()]).unwrap());
        remove(&path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn parses_nameservers_and_upstreams() {
        let text = "# comment\nnameserver 192.0.2.53\nsearch example\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("10.0.0.1:5353").unwrap(),
            "10.0.0.1:5353".parse().unwrap()
        );
        assert!(parse_upstream("dns.example").is_err());
    }

    #[test]
    fn only_named_namespaces_get_a_file() {
        let dir = Path::new("/var/run/netns");
        assert_eq!(
            netns_resolv_conf(dir, Path::new("/var/run/netns/web")),
            Some(PathBuf::from("/etc/netns/web/resolv.conf"))
        );
        assert_eq!(netns_resolv_conf(dir, Path::new("/proc/1/ns/net")), None);
    }
}
