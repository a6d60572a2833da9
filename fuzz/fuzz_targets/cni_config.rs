//! weft-cni's untrusted input: the network configuration on stdin and the
//! `CNI_*` environment (with `CNI_ARGS`). The input is split at NUL bytes
//! into CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and
//! the config. Decoding never panics, and what is accepted holds the
//! promises the plugin relies on: a supported version, a name, checked
//! container variables, and error objects that are JSON with their code.
#![no_main]

#[allow(dead_code)] // the plugin's, partly used here
#[path = "../../cli/src/cni/args.rs"]
mod args;
#[allow(dead_code)] // the plugin's, partly used here
#[path = "../../cli/src/cni/config.rs"]
mod config;
#[allow(dead_code)] // the plugin's, partly used here
#[path = "../../cli/src/cni/error.rs"]
mod error;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(6, |b| *b == 0);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let env = [
        ("CNI_COMMAND", text()),
        ("CNI_CONTAINERID", text()),
        ("CNI_NETNS", text()),
        ("CNI_IFNAME", text()),
        ("CNI_ARGS", text()),
    ];
    let stdin = parts.next().unwrap_or_default();
    match args::Invocation::from_env(|name| {
        env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }) {
        Ok(invocation) => {
            if matches!(invocation.command, args::Command::Add | args::Command::Check) {
                assert!(invocation.netns.starts_with('/'));
                assert!(!invocation.container_id.is_empty());
                assert!(!invocation.ifname.is_empty() && invocation.ifname.len() <= 15);
                assert!(!invocation.ifname.contains('/'));
            }
        }
        Err(e) => check_error(&e),
    }
    match config::NetConf::parse(stdin) {
        Ok(conf) => {
            assert!(config::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            assert!(!conf.name.is_empty());
            assert!(!conf.weft_network().is_empty());
            if let Err(e) = conf.static_ips() {
                check_error(&e);
            }
            let _ = conf.aliases();
            let _ = conf.mac();
        }
        Err(e) => check_error(&e),
    }
    let _ = config::version_of_stdin(stdin);
});

fn check_error(e: &error::CniError) {
    let json: serde_json::Value =
        serde_json::from_str(&e.to_json("1.1.0")).expect("error objects are JSON");
    assert_eq!(json["code"], e.code.number());
    assert!(!e.msg.is_empty());
}
