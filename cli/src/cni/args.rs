//! The environment a runtime calls a plugin with (CNI spec 1.1,
//! "Parameters"): `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`; and `CNI_ARGS`'s `K=V;K=V` pairs.
//!
//! Which variables each command needs: ADD and CHECK all of container id,
//! netns and ifname; DEL container id and ifname (the netns may be gone
//! and is then empty); GC, STATUS and VERSION none. `CNI_PATH` is not
//! needed: weft-cni runs no other plugin.
//!
//! `CNI_ARGS` keys weft knows: `IgnoreUnknown`, `K8S_POD_NAME` (the DNS
//! name), `K8S_POD_NAMESPACE`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`,
//! `IP` (static addresses, comma-separated) and `MAC`. Any other key is an
//! error unless `IgnoreUnknown` is `1` or `true` (what the reference
//! plugins do).

use super::error::{CniError, ErrorCode};

/// Longest interface name Linux takes.
const MAX_IFNAME: usize = 15;

/// The command asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Remove attachments that are not in the valid list.
    Gc,
    /// Can ADD work now?
    Status,
    /// Which versions?
    Version,
}

/// `CNI_ARGS`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown=1|true`.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `IP`: static addresses.
    pub ips: Vec<String>,
    /// `MAC`.
    pub mac: Option<String>,
}

/// One invocation's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for GC, STATUS, VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

impl Command {
    /// The command of a `CNI_COMMAND` value.
    ///
    /// # Errors
    ///
    /// Code 4 naming the variable.
    pub fn parse(text: &str) -> Result<Command, CniError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "invalid CNI_COMMAND",
                    format!("CNI_COMMAND={other:?}: use ADD, DEL, CHECK, GC, STATUS or VERSION"),
                ))
            }
        })
    }
}

impl CniArgs {
    /// Parse `K=V;K=V`.
    ///
    /// # Errors
    ///
    /// Code 4 for a pair without `=` or (without `IgnoreUnknown`) a key
    /// weft does not know.
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let pairs: Vec<(&str, &str)> = text
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                pair.split_once('=').ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidEnvironment,
                        "invalid CNI_ARGS",
                        format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let mut args = CniArgs {
            ignore_unknown: pairs.iter().any(|(k, v)| {
                *k == "IgnoreUnknown" && (v.eq_ignore_ascii_case("true") || *v == "1")
            }),
            ..CniArgs::default()
        };
        for (key, value) in pairs {
            match key {
                "IgnoreUnknown" | "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {}
                "K8S_POD_NAME" => args.pod_name = Some(value.to_owned()),
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.to_owned()),
                "IP" => args.ips = value.split(',').map(str::to_owned).collect(),
                "MAC" => args.mac = Some(value.to_owned()),
                other if !args.ignore_unknown => {
                    return Err(CniError::new(
                        ErrorCode::InvalidEnvironment,
                        "invalid CNI_ARGS",
                        format!(
                            "CNI_ARGS: unknown key {other:?} (add IgnoreUnknown=1 to ignore keys weft does not use)"
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

impl Invocation {
    /// Read the environment through `var` (the process's, or a test's).
    ///
    /// # Errors
    ///
    /// Code 4 naming each missing or invalid variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command_text = var("CNI_COMMAND").unwrap_or_default();
        if command_text.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_COMMAND is not set",
                "weft-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION and the network configuration on stdin",
            ));
        }
        let command = Command::parse(&command_text)?;
        let get = |name: &str| var(name).unwrap_or_default();
        // VERSION, GC and STATUS are about the plugin and the network, not
        // a container: whatever else is set (libcni's VERSION passes
        // `CNI_NETNS=dummy`) is not looked at.
        if matches!(command, Command::Version | Command::Gc | Command::Status) {
            return Ok(Invocation {
                command,
                container_id: String::new(),
                netns: String::new(),
                ifname: String::new(),
                args: CniArgs::default(),
            });
        }
        let invocation = Invocation {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: CniArgs::parse(&get("CNI_ARGS"))?,
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let mut missing = Vec::new();
        if needs_container && invocation.container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if needs_container && invocation.ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if needs_netns && invocation.netns.is_empty() {
            missing.push("CNI_NETNS");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "required environment variables missing",
                format!("{} must be set for {command_text}", missing.join(", ")),
            ));
        }
        if needs_container {
            check_container_id(&invocation.container_id)?;
            check_ifname(&invocation.ifname)?;
        }
        if !invocation.netns.is_empty() && !invocation.netns.starts_with('/') {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "invalid CNI_NETNS",
                format!(
                    "CNI_NETNS={:?} must be an absolute path (/var/run/netns/NAME, /proc/PID/ns/net)",
                    invocation.netns
                ),
            ));
        }
        Ok(invocation)
    }

    /// The DNS name the runtime gave the container, if any.
    pub fn container_name(&self) -> Option<&str> {
        self.args.pod_name.as_deref().filter(|n| !n.is_empty())
    }
}

/// The spec's container id: alphanumerics, then alphanumerics, `_`, `.`
/// or `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::InvalidEnvironment,
        "invalid CNI_CONTAINERID",
        format!("CNI_CONTAINERID={id:?}: letters, digits, '_', '.' and '-', starting with a letter or digit"),
    ))
}

/// An interface name Linux takes.
fn check_ifname(ifname: &str) -> Result<(), CniError> {
    let ok = ifname.len() <= MAX_IFNAME
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::InvalidEnvironment,
        "invalid CNI_IFNAME",
        format!("CNI_IFNAME={ifname:?}: 1 to 15 bytes, no '/', ':' or whitespace"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn cni_args_known_and_unknown_keys() {
        let args = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar;IP=10.0.0.5").unwrap();
        assert!(args.ignore_unknown);
        assert_eq!(args.pod_name.as_deref(), Some("web"));
        assert_eq!(args.ips, vec!["10.0.0.5"]);
        let e = CniArgs::parse("FOO=bar").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.details.contains("FOO") && e.details.contains("IgnoreUnknown"));
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=bar").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar").is_err());
        assert!(CniArgs::parse("novalue").is_err());
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn each_command_needs_its_variables() {
        let e = Invocation::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]))
            .unwrap_err();
        assert!(e.details.contains("CNI_CONTAINERID") && e.details.contains("CNI_NETNS"));
        let del = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.command, Command::Del);
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "STATUS")])).is_ok());
        // libcni's VERSION call.
        assert!(Invocation::from_env(env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_CONTAINERID", "dummy"),
            ("CNI_IFNAME", "dummy"),
        ]))
        .is_ok());
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "BOGUS")])).is_err());
        assert!(Invocation::from_env(env(&[])).is_err());
        let bad_id = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert!(bad_id.details.contains("CNI_CONTAINERID"));
        let bad_if = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ]))
        .unwrap_err();
        assert!(bad_if.details.contains("CNI_IFNAME"));
        let relative = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "netns"),
        ]))
        .unwrap_err();
        assert!(relative.details.contains("absolute"));
    }
}
