//! Ethernet II header (IEEE 802.3 clause 3.1.1), the only header the switch
//! reads for every frame.
//!
//! A view over the first 14 bytes: destination, source, EtherType. An
//! 802.1Q tag, when present, is not interpreted: the switch forwards by MAC
//! alone and a tagged frame passes through like any other.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = 14;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A 48-bit IEEE 802 MAC address.
///
/// Serialized as its text (`02:42:0a:00:00:02`) in human-readable formats
/// (the state file, the API) and as its six bytes in binary ones (gossip).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// A frame too short to hold an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

/// A view of an Ethernet II frame. Once [`EthernetFrame::new_checked`] has
/// accepted the buffer, no getter can panic.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<B: AsRef<[u8]>> {
    buffer: B,
}

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The MAC Docker derives from an IPv4 address: `02:42` and its four
    /// bytes. Locally administered, unicast, stable for the address.
    pub fn from_ipv4(addr: Ipv4Addr) -> MacAddr {
        let [a, b, c, d] = addr.octets();
        MacAddr([0x02, 0x42, a, b, c, d])
    }

    /// The group bit: broadcast and multicast destinations.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Neither multicast nor all-zero: a valid source address.
    pub fn is_valid_source(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }
}

impl<B: AsRef<[u8]>> EthernetFrame<B> {
    /// Wrap a buffer without checking its length.
    pub const fn new_unchecked(buffer: B) -> Self {
        EthernetFrame { buffer }
    }

    /// Wrap a buffer after checking it holds a whole header.
    ///
    /// # Errors
    ///
    /// [`Truncated`] when the buffer is shorter than 14 bytes.
    pub fn new_checked(buffer: B) -> Result<Self, Truncated> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Check the buffer holds a whole header.
    ///
    /// # Errors
    ///
    /// [`Truncated`] when the buffer is shorter than 14 bytes.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Truncated)
        } else {
            Ok(())
        }
    }

    /// The destination MAC.
    pub fn destination(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::DESTINATION.start))
    }

    /// The source MAC.
    pub fn source(&self) -> MacAddr {
        MacAddr(mac_at(self.buffer.as_ref(), field::SOURCE.start))
    }

    /// The EtherType (or the TPID 0x8100 of a tagged frame).
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::ETHERTYPE.start], b[field::ETHERTYPE.start + 1]])
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<B> {
    /// Write the destination MAC.
    pub fn set_destination(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Write the source MAC.
    pub fn set_source(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Write the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }
}

fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    [b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]]
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address string that is not six colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:42:0a:00:00:02")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_newtype_struct("MacAddr", &self.0)
        }
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 6]>::deserialize(d).map(MacAddr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP request captured from a Linux sandbox (who-has 10.231.0.1).
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0xe7, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0xe7, 0x00, 0x02, 0x0a, 0xe7,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xe7, 0x00, 0x01,
    ];

    #[test]
    fn deconstruct() {
        let frame = EthernetFrame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(frame.destination(), MacAddr::BROADCAST);
        assert_eq!(frame.source(), MacAddr([0x02, 0x42, 10, 231, 0, 2]));
        assert_eq!(frame.ethertype(), ETHERTYPE_ARP);
        assert_eq!(frame.payload().len(), 28);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5u8; 14];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_destination(MacAddr::BROADCAST);
        frame.set_source(MacAddr([0x02, 0x42, 10, 231, 0, 2]));
        frame.set_ethertype(ETHERTYPE_ARP);
        assert_eq!(bytes, ARP_FRAME[..14]);
    }

    #[test]
    fn truncated_is_an_error() {
        assert_eq!(
            EthernetFrame::new_checked(&ARP_FRAME[..13]).unwrap_err(),
            Truncated
        );
    }

    #[test]
    fn mac_from_ipv4_and_text() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 231, 0, 50));
        assert_eq!(mac.to_string(), "02:42:0a:e7:00:32");
        assert_eq!("02:42:0a:e7:00:32".parse::<MacAddr>().unwrap(), mac);
        assert!("02:42:0a:e7:00".parse::<MacAddr>().is_err());
        assert!("02:42:0a:e7:00:32:00".parse::<MacAddr>().is_err());
        assert!("zz:42:0a:e7:00:32".parse::<MacAddr>().is_err());
        assert!(mac.is_valid_source());
        assert!(!MacAddr::BROADCAST.is_valid_source());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
    }
}
