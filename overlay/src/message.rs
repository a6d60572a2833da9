//! Directory datagrams: the messages hosts exchange besides SWIM.
//!
//! # Theory of operation
//!
//! One enum, [`GossipMessage`], serialized with postcard (a compact,
//! non-self-describing serde format with varint integers) and carried in a
//! [`crate::envelope`] of kind `Directory`. Decoding bytes from the network
//! returns an error on anything malformed and never panics; serde's
//! cautious size hints bound what a forged length prefix can preallocate,
//! and a datagram bounds the input anyway.
//!
//! Large answers are cut into chunks that fit `max_payload` bytes
//! ([`chunk_by_size`]); each chunk is a complete message on its own.

use serde::{Deserialize, Serialize};

use crate::allocation::AllocationMessage;
use crate::directory::{Digest, LeaseRecord, NetworkEntry, OwnerId, VersionedRecord};
use crate::identity::{NodeId, NodeIdentity};

/// Every message of the directory protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMessage {
    /// "This is what I have": the receiver sends what the sender lacks and
    /// requests what it lacks itself.
    Digest(Digest),
    /// "Send me `owner`'s records newer than `since`."
    Request {
        /// Whose records.
        owner: OwnerId,
        /// Version the requester has.
        since: u64,
    },
    /// Records of one owner with versions in `base+1..=upto`.
    Records {
        /// Whose records.
        owner: OwnerId,
        /// The version the sender assumed the receiver had.
        base: u64,
        /// Every record of the owner up to this version is in this or an
        /// earlier chunk.
        upto: u64,
        /// The records, oldest first.
        records: Vec<VersionedRecord>,
    },
    /// Network entries; `reply`: the receiver should answer with its own.
    Networks {
        /// The entries (tombstones included).
        entries: Vec<NetworkEntry>,
        /// Ask the receiver to send its map back (push-pull).
        reply: bool,
    },
    /// Address-block claims and their answers.
    Allocation(AllocationMessage),
    /// SWIM members the receiver's digest lacked (push-pull membership
    /// sync, as memberlist's periodic state exchange): applied to foca
    /// like SWIM updates, so a joiner learns the whole cluster at once.
    Members(Vec<foca::Member<NodeIdentity>>),
    /// "While you were down I held these leases for your node id": sent to
    /// a member that comes back (a new boot or a renewed identity), which
    /// takes back the blocks its allocator no longer knows.
    Returned {
        /// The node id the leases are held for (the receiver's).
        holder: NodeId,
        /// The held leases.
        leases: Vec<LeaseRecord>,
    },
}

/// Why a directory datagram was not understood.
#[derive(Debug, thiserror::Error)]
#[error("malformed directory message")]
pub struct DecodeError(#[source] postcard::Error);

impl GossipMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing into a Vec fails only if a Serialize impl fails, and
        // these are derived over plain data.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Parses a message received from the network.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on malformed or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (message, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError)?;
        if !rest.is_empty() {
            return Err(DecodeError(postcard::Error::DeserializeBadEncoding));
        }
        Ok(message)
    }
}

/// Cuts `items` into runs whose encoded sizes add up to at most `budget`
/// bytes (a single larger item gets a run of its own).
pub fn chunk_by_size<T: Serialize>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut used = 0;
    for item in items {
        let size = postcard::experimental::serialized_size(&item).unwrap_or(budget);
        if !current.is_empty() && used + size > budget {
            chunks.push(std::mem::take(&mut current));
            used = 0;
        }
        used += size;
        current.push(item);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let message = GossipMessage::Request {
            owner: OwnerId {
                id: NodeId(0xa),
                boot: 9,
            },
            since: 3,
        };
        assert_eq!(GossipMessage::decode(&message.encode()).unwrap(), message);
        let mut trailing = message.encode();
        trailing.push(0);
        assert!(GossipMessage::decode(&trailing).is_err());
        for garbage in [
            &[][..],
            &[200],
            &[0, 255, 255, 255, 255, 15],
            &[3, 0xff, 0xff, 0xff, 0x7f],
        ] {
            assert!(GossipMessage::decode(garbage).is_err());
        }
    }

    #[test]
    fn chunks_respect_the_budget() {
        let items: Vec<u64> = (0..1000).map(|i| i * 1_000_000).collect();
        let chunks = chunk_by_size(items.clone(), 100);
        assert!(chunks.len() > 10);
        for chunk in &chunks {
            assert!(postcard::to_allocvec(chunk).unwrap().len() <= 100 + 2);
        }
        assert_eq!(chunks.concat(), items);
        assert_eq!(
            chunk_by_size(Vec::<u64>::new(), 100),
            vec![Vec::<u64>::new()]
        );
    }
}
