//! weft's controller, after Docker's Container Network Model: networks,
//! endpoints and sandboxes; the drivers (`null`, `host`, `bridge`) that make
//! them real; the state file; and the HTTP+JSON control API on a Unix
//! socket.
//!
//! # Theory of operation
//!
//! The API ([`api`], with its request and response bodies in
//! [`api::types`]) turns requests into calls on the [`Controller`], which
//! owns the state (networks, endpoints, IPAM) and persists it atomically
//! ([`store`]) after every change; errors become HTTP statuses at the API's
//! edge only ([`api::status_of`]). Drivers ([`driver`]) do what is
//! specific to a network's kind: the bridge driver owns the data path
//! (`weft_datapath::Datapath`) and attaches sandboxes through the attach
//! helper ([`attach`]), a short-lived process that enters the sandbox,
//! makes the TAP and passes its fd back.
//!
//! Overlay (cluster-scope) networks add the overlay's gossip driver
//! (`weft_overlay::driver::gossip`) that keeps this host in the cluster
//! directory; the controller follows the directory
//! ([`Controller::follow_cluster`]) to make networks created on other
//! hosts, and the overlay driver ([`overlay_driver`]) gives the switch its
//! view of the other hosts.
//!
//! Docker's remote network and IPAM driver protocol ([`docker_plugin`])
//! is a second face of the same controller: a Docker network is a weft
//! network, a Docker endpoint a weft endpoint whose TAP Docker moves into
//! the container.
//!
//! # Dependencies
//!
//! - `axum` serves the API on a `tokio::net::UnixListener`: it works with
//!   `curl --unix-socket` and accepts Docker's `+json` content types.
//! - `tokio` runs the control plane; the data path has its own thread.
//! - `nix` for the socket pair and `SCM_RIGHTS` of the attach protocol.
//! - `humantime` formats creation times (RFC 3339); `rand` makes ids,
//!   random VNIs and the gossip node's seed (from the OS's randomness).
//! - `weft-overlay`, the cluster (gossip node and driver, VXLAN transport):
//!   [`overlay_driver`] turns its directory into the switch's tunnel
//!   tables; `weft-datapath`, the data-path thread; `weft-services`, for
//!   the DNS zone entries of the embedded DNS.

// A driver crate: it reads clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod api;
pub mod attach;
pub mod capture;
pub mod controller;
pub mod docker_plugin;
pub mod driver;
pub mod error_chain;
pub mod events;
pub mod host_routes;
pub mod macvlan_driver;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod overlay_driver;
pub mod resolv_conf;
pub mod store;

pub use controller::{Controller, ControllerConfig, ControllerError};
