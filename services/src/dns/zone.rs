//! The local names: one [`Zone`] per network, compiled into lookup tables.
//!
//! # Theory of operation
//!
//! The controller describes each network's endpoints as a [`Zone`] (names,
//! aliases, addresses) and replaces it whole on every connect/disconnect
//! ([`Zones::set`]). Compiling it checks every name once (what is not a
//! valid DNS name is left out and logged; [`check_name`] lets the control
//! API refuse it earlier), so that queries only hash:
//!
//! - `names`: every name and alias, bare (`web`) and qualified with the
//!   network's name (`web.frontnet`), to the union of the addresses of every
//!   endpoint that carries it (several endpoints may share an alias);
//! - `ptrs`: every endpoint address to `NAME.NETWORK.` of the endpoints that
//!   own it (the primary name, qualified so that it resolves back on this
//!   server, as Docker answers).
//!
//! Keys are [`Name`]s, whose `Eq` and `Hash` ignore ASCII case; every key
//! and every name in a query is fully qualified, so `web`, `WEB` and `web.`
//! are one name.
//!
//! Beside the per-network tables, [`Zones`] keeps a reference count of every
//! name and address over all networks, so that a lookup can tell "local to
//! another network" (NXDOMAIN for this asker, never forwarded: that would
//! leak the name to the upstream and let the upstream answer for it) from
//! "not ours" (forwarded).
//!
//! Capacity: the tables hold exactly what the controller gives, at most
//! (1 + aliases) × 2 names and one reverse entry per address for each
//! endpoint; the controller bounds endpoints per network, so no eviction is
//! needed here.
//!
//! A name one label under the asker's own network's name that no endpoint
//! there has (`nosuch.frontnet`) is NXDOMAIN, answered here: it is in the
//! network's domain, so no upstream can know it. Only the asker's own
//! network, and only one label deep: a network called `com` shadows
//! `example.com` for its own sandboxes (their choice of name), never for
//! anyone else's, and `www.example.com` is still forwarded.
//!
//! Not implemented: wildcards, CNAMEs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Name;
use hickory_proto::ProtoError;

use weft_vswitch::NetworkId;

/// The names of one network, as the controller knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// The network's name: `NAME.NETWORK` resolves too.
    pub network_name: String,
    /// One entry per endpoint on the network.
    pub entries: Vec<ZoneEntry>,
}

/// One endpoint's names and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneEntry {
    /// The primary name; reverse lookups of the addresses answer it.
    pub name: String,
    /// More names for the same addresses; several endpoints may share one.
    pub aliases: Vec<String>,
    /// The endpoint's IPv4 and IPv6 addresses on this network.
    pub addresses: Vec<IpAddr>,
}

/// A name the server cannot serve (see [`check_name`]).
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A name, an alias or the network's name is empty (or just `.`).
    #[error("empty DNS name")]
    Empty,
    /// A name, an alias or the network's name is not a valid DNS name
    /// (a label longer than 63 bytes, an empty label, a bad escape), or
    /// `NAME.NETWORK` is longer than 255 bytes.
    #[error("{name:?} is not a valid DNS name")]
    InvalidName {
        /// The name as given (`NAME.NETWORK` when only the qualified form
        /// is too long).
        name: String,
        /// Why the codec refused it.
        #[source]
        source: ProtoError,
    },
}

/// What the local zones say about one query name, for one asker's network.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// A local forward name: its addresses (possibly none of the asked
    /// family).
    Addresses(&'a [IpAddr]),
    /// A reverse name of an endpoint address: the names to answer.
    Pointers(&'a [Name]),
    /// Local to another network only: NXDOMAIN for this asker.
    OtherNetwork,
    /// One label under the asker's network's name, and no endpoint's:
    /// NXDOMAIN.
    NoSuchName,
    /// Not ours anywhere: forward it.
    NotLocal,
}

/// One network's compiled tables. See the module header.
#[derive(Debug, Default)]
struct CompiledZone {
    /// The network's name as a domain (None when it is not a DNS name).
    domain: Option<Name>,
    names: HashMap<Name, Vec<IpAddr>>,
    ptrs: HashMap<IpAddr, Vec<Name>>,
}

/// Every network's zone, and what is local anywhere. See the module header.
#[derive(Debug, Default)]
pub(crate) struct Zones {
    by_network: HashMap<NetworkId, CompiledZone>,
    names_anywhere: HashMap<Name, usize>,
    addrs_anywhere: HashMap<IpAddr, usize>,
}

impl Zones {
    /// Replaces the zone of `network`. Names that are not valid DNS names
    /// are left out (see [`CompiledZone::compile`]); returns how many.
    pub(crate) fn set(&mut self, network: NetworkId, zone: &Zone) -> usize {
        let (compiled, skipped) = CompiledZone::compile(zone);
        self.remove(network);
        for name in compiled.names.keys() {
            *self.names_anywhere.entry(name.clone()).or_default() += 1;
        }
        for addr in compiled.ptrs.keys() {
            *self.addrs_anywhere.entry(*addr).or_default() += 1;
        }
        self.by_network.insert(network, compiled);
        skipped
    }

    /// Forgets the zone of `network`; no-op when it has none.
    pub(crate) fn remove(&mut self, network: NetworkId) {
        let Some(old) = self.by_network.remove(&network) else {
            return;
        };
        for name in old.names.keys() {
            release(&mut self.names_anywhere, name);
        }
        for addr in old.ptrs.keys() {
            release(&mut self.addrs_anywhere, addr);
        }
    }

    /// Looks `qname` up for an asker on `network`.
    pub(crate) fn lookup(&self, network: NetworkId, qname: &Name) -> Lookup<'_> {
        let zone = self.by_network.get(&network);
        if let Some(addr) = reverse_address(qname) {
            if let Some(names) = zone.and_then(|z| z.ptrs.get(&addr)) {
                return Lookup::Pointers(names);
            }
            if self.addrs_anywhere.contains_key(&addr) {
                return Lookup::OtherNetwork;
            }
            return Lookup::NotLocal;
        }
        if let Some(addrs) = zone.and_then(|z| z.names.get(qname)) {
            return Lookup::Addresses(addrs);
        }
        if self.names_anywhere.contains_key(qname) {
            return Lookup::OtherNetwork;
        }
        let domain = zone.and_then(|z| z.domain.as_ref());
        if domain.is_some_and(|d| qname.num_labels() == d.num_labels() + 1 && d.zone_of(qname)) {
            return Lookup::NoSuchName;
        }
        Lookup::NotLocal
    }
}

impl CompiledZone {
    /// Compiles `zone`, leaving out what is not a valid DNS name (each
    /// logged): a bad alias loses only itself; a bad endpoint name loses
    /// its two forms, and its addresses then have no reverse name (PTR
    /// queries get NODATA); a bad network name, or a `NAME.NETWORK` longer
    /// than 255 bytes, loses the qualified forms, and reverse names answer
    /// `NAME.` instead. One bad name never hides the rest of the network.
    /// Returns the zone and how many names were left out.
    fn compile(zone: &Zone) -> (Self, usize) {
        let mut skipped = 0;
        let mut valid = |raw: &str, result: Result<Name, ZoneError>| match result {
            Ok(name) => Some(name),
            Err(error) => {
                tracing::warn!(network = %zone.network_name, name = raw, %error, "DNS name left out");
                skipped += 1;
                None
            }
        };
        let network = valid(&zone.network_name, parse_name(&zone.network_name));
        let mut compiled = CompiledZone {
            domain: network.clone(),
            ..CompiledZone::default()
        };
        for entry in &zone.entries {
            let mut primary = None;
            for (i, raw) in std::iter::once(&entry.name)
                .chain(&entry.aliases)
                .enumerate()
            {
                let Some(name) = valid(raw, parse_name(raw)) else {
                    continue;
                };
                let qualified = network.as_ref().and_then(|network| {
                    valid(raw, qualify(&name, network, raw, &zone.network_name))
                });
                if i == 0 {
                    primary = Some(qualified.clone().unwrap_or_else(|| name.clone()));
                }
                for key in std::iter::once(name).chain(qualified) {
                    let addrs = compiled.names.entry(key).or_default();
                    for addr in &entry.addresses {
                        if !addrs.contains(addr) {
                            addrs.push(*addr);
                        }
                    }
                }
            }
            for addr in &entry.addresses {
                let names = compiled.ptrs.entry(*addr).or_default();
                if let Some(primary) = &primary {
                    if !names.contains(primary) {
                        names.push(primary.clone());
                    }
                }
            }
        }
        (compiled, skipped)
    }
}

/// Checks that `name` can be an endpoint name, an alias or a network name,
/// the way [`crate::dns::DnsServer::set_zone`] will: the control API can
/// call this to refuse a bad `--alias` before it reaches the data path.
///
/// # Errors
///
/// [`ZoneError::Empty`] for `""` and `"."`, [`ZoneError::InvalidName`] for
/// what is not a DNS name.
pub fn check_name(name: &str) -> Result<(), ZoneError> {
    parse_name(name).map(|_| ())
}

/// `raw` as a fully qualified [`Name`].
fn parse_name(raw: &str) -> Result<Name, ZoneError> {
    let mut name = Name::from_ascii(raw).map_err(|source| ZoneError::InvalidName {
        name: raw.to_owned(),
        source,
    })?;
    if name.num_labels() == 0 {
        return Err(ZoneError::Empty);
    }
    name.set_fqdn(true);
    Ok(name)
}

/// `NAME.NETWORK.`
fn qualify(name: &Name, network: &Name, raw: &str, raw_network: &str) -> Result<Name, ZoneError> {
    let mut bare = name.clone();
    bare.set_fqdn(false);
    bare.append_domain(network)
        .map_err(|source| ZoneError::InvalidName {
            name: format!("{}.{}", raw.trim_end_matches('.'), raw_network),
            source,
        })
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The address a full reverse name stands for: `d.c.b.a.in-addr.arpa.`
/// (RFC 1035 §3.5) or 32 nibbles under `ip6.arpa.` (RFC 3596 §2.5).
/// Partial reverse names (a /24 zone, say) are not addresses: `None`.
pub(crate) fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    match labels.as_slice() {
        [d, c, b, a, inaddr, arpa]
            if inaddr.eq_ignore_ascii_case(b"in-addr") && arpa.eq_ignore_ascii_case(b"arpa") =>
        {
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa]
            if nibbles.len() == 32
                && ip6.eq_ignore_ascii_case(b"ip6")
                && arpa.eq_ignore_ascii_case(b"arpa") =>
        {
            let mut bytes = [0u8; 16];
            // Least significant nibble first.
            for (i, label) in nibbles.iter().enumerate() {
                let [digit] = label else { return None };
                let value = u8::try_from(char::from(*digit).to_digit(16)?).ok()?;
                let byte = 15 - i / 2;
                bytes[byte] |= if i % 2 == 0 { value } else { value << 4 };
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// One decimal octet label: 1 to 3 digits, at most 255.
fn octet(label: &[u8]) -> Option<u8> {
    if label.is_empty() || label.len() > 3 || !label.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(label).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn zone() -> Zone {
        Zone {
            network_name: "frontnet".into(),
            entries: vec![
                ZoneEntry {
                    name: "web".into(),
                    aliases: vec!["www".into(), "pool".into()],
                    addresses: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                },
                ZoneEntry {
                    name: "Cache.".into(),
                    aliases: vec!["pool".into()],
                    addresses: vec!["10.0.0.3".parse().unwrap()],
                },
            ],
        }
    }

    #[test]
    fn names_aliases_and_qualified_names() {
        let mut zones = Zones::default();
        zones.set(NetworkId(1), &zone());
        let web: &[IpAddr] = &["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        for q in ["web.", "WEB.", "www.", "web.frontnet.", "Www.FrontNet."] {
            assert_eq!(
                zones.lookup(NetworkId(1), &name(q)),
                Lookup::Addresses(web),
                "{q}"
            );
        }
        assert_eq!(
            zones.lookup(NetworkId(1), &name("cache.")),
            Lookup::Addresses(&["10.0.0.3".parse().unwrap()])
        );
        let Lookup::Addresses(pool) = zones.lookup(NetworkId(1), &name("pool.frontnet.")) else {
            panic!("pool is local");
        };
        assert_eq!(pool.len(), 3);
        // In the network's domain but nobody's: NXDOMAIN, for its own
        // sandboxes; deeper names and other networks' askers forward.
        assert_eq!(
            zones.lookup(NetworkId(1), &name("nosuch.frontnet.")),
            Lookup::NoSuchName
        );
        assert_eq!(
            zones.lookup(NetworkId(1), &name("a.nosuch.frontnet.")),
            Lookup::NotLocal
        );
        assert_eq!(
            zones.lookup(NetworkId(7), &name("nosuch.frontnet.")),
            Lookup::NotLocal
        );
    }

    #[test]
    fn scoping_and_refcounts() {
        let mut zones = Zones::default();
        zones.set(NetworkId(1), &zone());
        zones.set(NetworkId(2), &zone());
        assert_eq!(
            zones.lookup(NetworkId(3), &name("web.")),
            Lookup::OtherNetwork
        );
        zones.remove(NetworkId(1));
        assert_eq!(
            zones.lookup(NetworkId(3), &name("web.")),
            Lookup::OtherNetwork
        );
        zones.remove(NetworkId(2));
        assert_eq!(zones.lookup(NetworkId(3), &name("web.")), Lookup::NotLocal);
        assert!(zones.names_anywhere.is_empty());
        assert!(zones.addrs_anywhere.is_empty());
        // Replacing a zone releases the old names.
        zones.set(NetworkId(1), &zone());
        zones.set(NetworkId(1), &Zone::default_named("frontnet"));
        assert!(zones.names_anywhere.is_empty());
    }

    #[test]
    fn pointers_name_the_primary_qualified() {
        let mut zones = Zones::default();
        zones.set(NetworkId(1), &zone());
        let Lookup::Pointers(names) = zones.lookup(NetworkId(1), &name("3.0.0.10.in-addr.arpa."))
        else {
            panic!("10.0.0.3 is local");
        };
        assert_eq!(names, &[name("Cache.frontnet.")]);
        assert_eq!(
            zones.lookup(NetworkId(2), &name("3.0.0.10.in-addr.arpa.")),
            Lookup::OtherNetwork
        );
        assert_eq!(
            zones.lookup(NetworkId(1), &name("9.0.0.10.in-addr.arpa.")),
            Lookup::NotLocal
        );
    }

    #[test]
    fn invalid_names_are_left_out_alone() {
        let mut zones = Zones::default();
        let mut bad = zone();
        bad.entries[0].aliases.push("a".repeat(64));
        bad.entries[1].name = String::new();
        assert_eq!(zones.set(NetworkId(1), &bad), 2);
        // The rest of the zone is served; the nameless endpoint's address
        // has no reverse name.
        assert!(matches!(
            zones.lookup(NetworkId(1), &name("www.frontnet.")),
            Lookup::Addresses(_)
        ));
        assert_eq!(
            zones.lookup(NetworkId(1), &name("3.0.0.10.in-addr.arpa.")),
            Lookup::Pointers(&[])
        );

        // NAME.NETWORK over 255 bytes: only the bare name stays, and the
        // reverse name is the bare one.
        let mut long = zone();
        long.network_name = ["n".repeat(63), "n".repeat(63), "n".repeat(63)].join(".");
        long.entries[0].name = "w".repeat(63);
        assert_eq!(zones.set(NetworkId(1), &long), 1);
        let w = name(&format!("{}.", "w".repeat(63)));
        assert!(matches!(
            zones.lookup(NetworkId(1), &w),
            Lookup::Addresses(_)
        ));
        assert_eq!(
            zones.lookup(NetworkId(1), &name("2.0.0.10.in-addr.arpa.")),
            Lookup::Pointers(std::slice::from_ref(&w))
        );

        assert!(check_name("web").is_ok());
        assert!(matches!(check_name("."), Err(ZoneError::Empty)));
        assert!(matches!(check_name(""), Err(ZoneError::Empty)));
        assert!(matches!(
            check_name(&"a".repeat(64)),
            Err(ZoneError::InvalidName { .. })
        ));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_address(&name("4.3.2.1.IN-ADDR.ARPA.")),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(reverse_address(&name("3.2.1.in-addr.arpa.")), None);
        assert_eq!(reverse_address(&name("256.3.2.1.in-addr.arpa.")), None);
        assert_eq!(reverse_address(&name("x.3.2.1.in-addr.arpa.")), None);
        let v6: Ipv6Addr = "2001:db8::567:89ab".parse().unwrap();
        let arpa =
            name("b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.");
        assert_eq!(reverse_address(&arpa), Some(IpAddr::V6(v6)));
        // hickory's own forward direction agrees.
        assert_eq!(
            reverse_address(&Name::from(IpAddr::V6(v6))),
            Some(IpAddr::V6(v6))
        );
        assert_eq!(reverse_address(&name("0.8.b.d.0.1.0.0.2.ip6.arpa.")), None);
        assert_eq!(reverse_address(&name("web.")), None);
    }

    impl Zone {
        fn default_named(network: &str) -> Zone {
            Zone {
                network_name: network.into(),
                entries: Vec::new(),
            }
        }
    }
}
