//! What this node tells the DHT: the blobs and manifests it holds, and the name records
//! of the manifests it pins; and how it judges the name records others send.

use std::{collections::BTreeMap, sync::Arc};

use modeld_core::{Hash, SignedManifest};
use modeld_net::discovery::{RecordCheck, records};
use modeld_store::{Store, unix_now};

use crate::node::Node;

/// Accepts a name record only if the key names the manifest it holds and the manifest
/// passes this node's trust policy (signature, trusted key and scope, expiry). Returns
/// its sequence; the DHT keeps the highest.
pub(crate) fn record_check(store: Store) -> RecordCheck {
    Arc::new(move |key: &[u8], value: &[u8]| {
        let (name, version) = records::parse_name_key(key).ok_or("not a modeld name key")?;
        let signed = SignedManifest::open(value).map_err(|e| e.to_string())?;
        let m = &signed.manifest;
        if m.name() != &name || version.as_ref().is_some_and(|v| v != m.version()) {
            return Err(format!(
                "record under {name}{} holds a manifest for {}:{}",
                version.map(|v| format!(":{v}")).unwrap_or_default(),
                m.name(),
                m.version()
            ));
        }
        let trust = store.trust().map_err(|e| e.to_string())?;
        trust
            .accept(&signed, unix_now(), None)
            .map_err(|e| e.to_string())?;
        Ok(m.sequence())
    })
}

/// Announces a manifest this node holds: provider records for it and its complete or
/// partial blobs, and, if pinned, its name records.
pub(crate) fn announce_manifest(node: &Node, id: Hash) {
    let Ok(Some(stored)) = node.store.manifest(id) else {
        return;
    };
    let mut keys = vec![id];
    for f in stored.signed.manifest.files() {
        if matches!(node.store.blob(f.blake3), Ok(Some(_))) {
            keys.push(f.blake3);
        }
    }
    let discovery = node.discovery.clone();
    let envelope = stored.pinned.is_some().then_some(stored.envelope);
    tokio::runtime::Handle::current().spawn(async move {
        discovery.provide(keys).await;
        if let Some(env) = envelope
            && let Err(e) = discovery.publish_name(&env).await
        {
            tracing::warn!(error = %e, "cannot publish name record");
        }
    });
}

/// At start: announces every blob and manifest in the store, and republishes the name
/// records of each name's highest-sequence pinned manifest.
pub(crate) async fn announce_store(node: &Node) {
    let store = node.store.clone();
    let Ok(Ok((blobs, manifests))) =
        tokio::task::spawn_blocking(move || -> Result<_, modeld_store::StoreError> {
            Ok((store.blobs()?, store.manifests()?))
        })
        .await
    else {
        tracing::warn!("cannot read the store to announce it");
        return;
    };
    let mut keys: Vec<Hash> = blobs.iter().map(|b| b.hash).collect();
    keys.extend(manifests.iter().map(|m| m.id));
    node.discovery.provide(keys).await;
    let mut latest: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.pinned.is_some()) {
        let name = m.signed.manifest.name().to_string();
        let seq = m.signed.manifest.sequence();
        if latest.get(&name).is_none_or(|(s, _)| *s < seq) {
            latest.insert(name, (seq, m.envelope.clone()));
        }
    }
    for (_, env) in latest.values() {
        let _ = node.discovery.publish_name(env).await;
    }
}
