//! `weft-cni`: weft as a CNI plugin (CNI spec 1.1), and the netavark
//! plugin beside it; both thin clients of the daemon's API.
//!
//! # Theory of operation
//!
//! A runtime (podman 4 with CNI, containerd, CRI-O, kubelet through them)
//! executes the plugin once per operation, with the operation and the
//! container in the environment ([`args`]) and the network configuration
//! on stdin ([`config`]). The plugin answers on stdout: a result for ADD
//! ([`result`]), nothing for DEL/CHECK/GC/STATUS, the versions for
//! VERSION, or the spec's error object ([`error`]) with a non-zero exit.
//! Everything real happens in the daemon ([`commands`]): the plugin keeps
//! no state, so two runtimes, a retry, or a daemon restart see one truth.
//!
//! Data flow of ADD: environment + stdin → checked [`args::Invocation`]
//! and [`config::NetConf`] → network looked up (created if the config says
//! how) → `connect` with the interface name, MAC, addresses, ports,
//! aliases and labels → the daemon's attach helper makes the TAP named
//! `CNI_IFNAME` in the netns → result (merged with `prevResult`) printed.
//!
//! Not implemented: `sctp` port mappings (weft publishes TCP and UDP), a
//! container attached twice to one weft network (the daemon keeps one
//! endpoint per network and sandbox), the `bandwidth`/`ipRanges`/`dns`
//! capabilities (chain the reference plugins for the first; weft is its
//! own IPAM and DNS).

pub mod args;
pub mod commands;
pub mod config;
pub mod error;
pub mod netavark;
pub mod netns_check;
pub mod result;
