//! DHT keys and the mapping between node ids and libp2p peer ids.

use libp2p::{PeerId, identity};
use modeld_core::{Hash, ModelName, PublicKey, Version};

/// Prefix of name-record keys.
pub const NAME_PREFIX: &[u8] = b"/modeld/name/";

/// The DHT key of a name record: `/modeld/name/org/model` or `/modeld/name/org/model:version`.
pub fn name_key(name: &ModelName, version: Option<&Version>) -> Vec<u8> {
    let mut k = NAME_PREFIX.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    if let Some(v) = version {
        k.push(b':');
        k.extend_from_slice(v.as_str().as_bytes());
    }
    k
}

/// Parses a name-record key back into name and version.
pub fn parse_name_key(key: &[u8]) -> Option<(ModelName, Option<Version>)> {
    let rest = std::str::from_utf8(key.strip_prefix(NAME_PREFIX)?).ok()?;
    match rest.split_once(':') {
        Some((n, v)) => Some((n.parse().ok()?, Some(v.parse().ok()?))),
        None => Some((rest.parse().ok()?, None)),
    }
}

/// The DHT key of a provider record for a blob or manifest: its 32 hash bytes.
pub fn provider_key(hash: &Hash) -> Vec<u8> {
    hash.as_bytes().to_vec()
}

/// The libp2p peer id of a node id.
pub fn peer_of_key(key: &PublicKey) -> Option<PeerId> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).ok()?;
    Some(identity::PublicKey::from(pk).to_peer_id())
}

/// The node id inside an ed25519 libp2p peer id.
pub fn key_of_peer(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let bytes = pk.try_into_ed25519().ok()?.to_bytes();
    PublicKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_keys_round_trip() {
        let n: ModelName = "org/model".parse().unwrap();
        let v: Version = "1.2".parse().unwrap();
        assert_eq!(parse_name_key(&name_key(&n, None)), Some((n.clone(), None)));
        assert_eq!(
            parse_name_key(&name_key(&n, Some(&v))),
            Some((n.clone(), Some(v)))
        );
        assert_eq!(parse_name_key(b"/other/x"), None);
    }

    #[test]
    fn node_ids_and_peer_ids_correspond() {
        let key = modeld_core::SecretKey::from_seed([4; 32]);
        let peer = peer_of_key(&key.public()).unwrap();
        assert_eq!(key_of_peer(&peer), Some(key.public()));
        let mut seed = key.to_seed();
        let kp = identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
        assert_eq!(kp.public().to_peer_id(), peer);
    }
}
