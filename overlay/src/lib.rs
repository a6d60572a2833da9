//! weft's overlay: VXLAN between weft hosts, peers found by gossip, and the
//! cluster directory that tells every host where every endpoint lives.
//!
//! A core and its drivers, side by side (like quinn-proto and quinn). The
//! core is sans-IO: bytes and time go in, decisions and bytes come out; no
//! socket, thread, clock read or global randomness. The drivers
//! ([`driver`]) own the gossip socket, the tunnel's sockets and the
//! timers.
//!
//! Modules of the core, in the order a newcomer should read them:
//! - [`vxlan`]: the RFC 7348 codec and the outer source-port hash;
//! - [`transport`]: the seam between the data path's tunnel port and the
//!   way frames travel (VXLAN over UDP, [`driver::udp`]; QUIC);
//! - [`vtep`]: which tunnel port leads to which host of which overlay
//!   network, and the diff the switch applies when that changes;
//! - [`identity`]: what a host is in the cluster: a random node id kept
//!   in its state directory (everything keys on it) and a display name;
//! - [`envelope`]: gossip framing, protocol version and AEAD sealing with
//!   the cluster key;
//! - [`directory`]: the replicated records (hosts, networks, endpoints, leases);
//! - [`allocation`]: address blocks leased across hosts without duplicates;
//! - [`message`]: the directory's datagrams;
//! - [`node`]: membership (SWIM), replication and allocation glued into one
//!   [`Node`] with `handle_*` / `poll_*`;
//! - [`quic`]: the encrypted transport's core: one QUIC connection per
//!   pair of hosts, frames in QUIC datagrams, authenticated by the cluster
//!   key.
//!
//! The drivers: [`driver::gossip`] (the tokio task around [`Node`]),
//! [`driver::udp`] (VXLAN over UDP with GSO sends and GRO receives) and
//! [`driver::quic`] (QUIC over UDP).
//!
//! # Dependencies and why
//!
//! - `foca` (SWIM membership): sans-IO, bytes in and bytes out with timers
//!   handed to us, so wrapping every datagram in our own AEAD envelope is
//!   trivial and the whole cluster can be simulated in memory. `chitchat`
//!   was rejected: its per-node key-value state would fit the directory, but
//!   it owns its UDP envelope, which cannot be encrypted or authenticated
//!   without a fork. foca's `postcard-codec` feature encodes SWIM messages.
//!   foca 2 needs Rust 1.88, hence this crate's `rust-version`.
//! - `chacha20poly1305` (XChaCha20-Poly1305): RustCrypto's audited AEAD with
//!   a 24-byte nonce, safe to pick at random per datagram, no counter state
//!   to keep across restarts; pure Rust, no C toolchain.
//! - `hkdf` + `sha2`: HKDF-SHA256 (RFC 5869) turns the cluster-key file into
//!   the AEAD key; same RustCrypto family and versions as the AEAD.
//! - `postcard`: compact serde format (varints, no field names), maintained,
//!   returns errors on malformed input, already what foca's codec uses, so
//!   one serializer for everything on the wire. `bincode` 2 was the other
//!   candidate; it would be a second format for no gain.
//! - `rand` 0.10 (`StdRng`, seeded by the caller): the version foca's RNG
//!   bound requires; seeded so simulations replay exactly.
//! - `ipnet`: subnets in network records, with serde (as in the workspace).
//! - `serde`, `thiserror`, `tracing`: as everywhere in weft.
//! - `weft-vswitch` for the types every room shares (`MacAddr`, `Vni`, the
//!   switch's port and network ids, port counters) and the GSO segmenter
//!   the UDP transport cuts frames with (DESIGN.md: `overlay -> vswitch`).
//! - `tokio` runs the gossip driver (a UDP socket, timers, a watch channel
//!   for the controller); `nix` gives the tunnel's sockets UDP GSO and GRO
//!   (`sendmsg`/`recvmsg` with control messages).
//! - `rustc-hash` (FxHash) for the VTEP table, keyed by our own ids.
//! - `quinn-proto` (QUIC, RFC 9000, with RFC 9221 datagrams): the sans-IO
//!   half of quinn, time and datagrams passed in, so it runs inside the
//!   data path's own event loop (no second runtime, no channel per frame)
//!   and in memory in tests; maintained, PMTUD, path migration, GSO
//!   transmits and a pluggable congestion controller. `quiche` was the
//!   other candidate: C build (BoringSSL) and no raw-public-key TLS.
//! - `rustls` (with `ring`): quinn's TLS 1.3; its RFC 7250 raw public keys
//!   let every host present the key derived from the cluster secret
//!   without certificates; `ring` for AES-GCM with AES-NI/VAES and
//!   Ed25519, no C toolchain beyond what it vendors.
//! - `bytes`: quinn's datagram type.

pub mod allocation;
pub mod directory;
pub mod driver;
pub mod envelope;
pub mod identity;
pub mod message;
pub mod node;
pub mod quic;
pub mod transport;
pub mod vtep;
pub mod vxlan;

pub use allocation::{AllocateError, Allocation, AllocationTicket};
pub use directory::{ClusterNetworkId, Directory, EndpointRecord, MacAddr, NetworkRecord, OwnerId};
pub use envelope::ClusterKey;
pub use identity::NodeId;
pub use node::{
    Counters, Event, MemberInfo, MemberState, Node, NodeConfig, NodeIdentity, PublishError,
};
pub use transport::{Received, Transport, TunnelPeer};
pub use vtep::{OverlayTable, OverlayUpdate, RemoteEndpoint, VtepTable};
pub use vxlan::{decap, encap_header, source_port, DecapError, Vni, DEFAULT_PORT, OVERHEAD_V4};
