//! The messages of the local API (`docs/api.md`).
//!
//! A connection is a session: the client sends [`ClientMessage::Hello`], then any
//! number of requests one after another. For each request the daemon sends zero or
//! more [`ServerMessage::Event`]s and then exactly one [`ServerMessage::Ok`] or
//! [`ServerMessage::Error`]. Every message is one line of JSON, at most
//! [`MAX_FRAME`] bytes. Blobs imported in a session stay protected from GC until the
//! session ends, so `publish` can import, sign, and add its manifest without a race.

use std::path::PathBuf;

use modeld_core::{Hash, ModelName, PublicKey, format::FileFormat};
use serde::{Deserialize, Serialize};

/// The protocol version spoken by this code.
pub const PROTOCOL: u32 = 1;
/// Largest message, in bytes (a maximal signed manifest fits).
pub const MAX_FRAME: usize = 16 << 20;

/// A message from client to daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of a session.
    Hello {
        /// The client's protocol version.
        protocol: u32,
        /// The token from the run-info file (TCP API only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A request.
    Request(Request),
}

/// A message from daemon to client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to hello.
    Hello {
        /// The daemon's protocol version.
        protocol: u32,
        /// The daemon's version.
        version: String,
    },
    /// Progress of the running request.
    Event(Event),
    /// The request succeeded.
    Ok(Box<Reply>),
    /// The request failed.
    Error(ApiError),
}

/// What a client can ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Daemon and store summary.
    Status,
    /// Import local files (absolute paths readable by the daemon) into the store.
    Import {
        /// The files.
        paths: Vec<PathBuf>,
        /// Accept pickle-based files whose globals are all allow-listed.
        #[serde(default)]
        allow_pickle: bool,
    },
    /// What a publisher needs before signing: the next sequence and whether the key is trusted.
    PreparePublish {
        /// The model name.
        name: ModelName,
        /// The publisher's key.
        publisher: PublicKey,
    },
    /// Verify and add a signed manifest.
    AddManifest {
        /// The envelope (JSON text).
        envelope: String,
        /// Pin it.
        pin: bool,
    },
    /// One manifest by reference (id, id prefix, `org/model`, `org/model:version`).
    GetManifest {
        /// The reference.
        reference: String,
    },
    /// Every manifest in the store.
    ListManifests,
    /// Export a manifest's files to a directory.
    Export {
        /// The manifest reference.
        reference: String,
        /// Absolute target directory.
        target: PathBuf,
        /// Replace differing existing files.
        overwrite: bool,
        /// Always copy, never link.
        copy: bool,
    },
    /// Pin a manifest.
    Pin {
        /// The manifest reference.
        reference: String,
    },
    /// Unpin a manifest.
    Unpin {
        /// The manifest reference.
        reference: String,
    },
    /// Remove unpinned manifests and unreferenced blobs.
    Gc,
    /// Re-hash stored data (all of it, or one manifest's files).
    Verify {
        /// Only this manifest's files.
        reference: Option<String>,
    },
    /// Trust a publisher key for a scope.
    TrustAdd {
        /// The key.
        key: PublicKey,
        /// `*`, `org/` or `org/model`.
        scope: String,
    },
    /// Stop trusting a key (for one scope, or entirely).
    TrustRemove {
        /// The key.
        key: PublicKey,
        /// One scope, or all of them.
        scope: Option<String>,
    },
    /// The trusted keys.
    TrustList,
    /// The peers this node knows.
    Peers,
    /// Fetch a model from peers into the store (and optionally export it).
    Fetch {
        /// A manifest id, 6+ hex digits of one, or `org/model[:version]` known to the store.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// A signed manifest (JSON text), instead of a reference.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        envelope: Option<String>,
        /// Peers to fetch from (`IP:PORT` or `ed25519:<hex>@IP:PORT`), besides configured ones.
        #[serde(default)]
        peers: Vec<String>,
        /// Export to this absolute directory when done.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out: Option<PathBuf>,
        /// Replace differing existing files when exporting.
        #[serde(default)]
        overwrite: bool,
        /// Always copy when exporting.
        #[serde(default)]
        copy: bool,
    },
}

/// Progress of a long request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Bytes processed so far out of a total.
    Progress {
        /// What is being done: `hashing`, `exporting`, `verifying`.
        phase: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
        /// The item being worked on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<String>,
        /// Peers in use (transfers only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peers: Option<u32>,
    },
}

/// A successful answer; the variant matches the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::Import`].
    Imported(Vec<ImportedFile>),
    /// To [`Request::PreparePublish`].
    PublishPlan(PublishPlan),
    /// To [`Request::AddManifest`].
    Added(ManifestSummary),
    /// To [`Request::GetManifest`].
    Manifest(ManifestDetail),
    /// To [`Request::ListManifests`].
    Manifests(Vec<ManifestSummary>),
    /// To [`Request::Export`].
    Exported(ExportSummary),
    /// To [`Request::Pin`] and [`Request::Unpin`]: the manifest and whether anything changed.
    Pinned {
        /// The manifest.
        id: Hash,
        /// Whether the pin state changed.
        changed: bool,
    },
    /// To [`Request::Gc`].
    Gc(GcSummary),
    /// To [`Request::Verify`].
    Verified(VerifySummary),
    /// To the trust requests: the trust set after the change.
    Trust(Vec<TrustedKey>),
    /// To [`Request::Fetch`].
    Fetched(FetchSummary),
    /// To [`Request::Peers`].
    Peers(Vec<PeerSummary>),
}

/// A known peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSummary {
    /// Its node id.
    pub id: PublicKey,
    /// Its control-plane addresses.
    pub addrs: Vec<String>,
    /// Its data-plane address, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// How it became known: `mdns`, `bootstrap`, `dht`, `inbound`.
    pub sources: Vec<String>,
    /// Whether a control-plane connection is open.
    pub connected: bool,
    /// Last round-trip time in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
}

/// What a fetch did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchSummary {
    /// The manifest fetched.
    pub manifest: ManifestSummary,
    /// Bytes of the model.
    pub bytes_total: u64,
    /// Bytes already present when the fetch started (resumed).
    pub bytes_present: u64,
    /// New verified bytes downloaded.
    pub bytes_fetched: u64,
    /// Verified bytes downloaded that were already present (endgame duplicates).
    pub bytes_duplicate: u64,
    /// Milliseconds taken.
    pub elapsed_ms: u64,
    /// What each peer contributed.
    pub peers: Vec<PeerContribution>,
    /// Peers that could not be reached, with the reason.
    pub unreachable: Vec<(String, String)>,
    /// The export, if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSummary>,
}

/// One peer's part in a fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerContribution {
    /// Its node id.
    pub id: PublicKey,
    /// Its address.
    pub addr: String,
    /// Verified bytes it delivered.
    pub bytes: u64,
    /// Why it was dropped or banned, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// Daemon and store summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Complete blobs.
    pub blobs_complete: u64,
    /// Partial blobs.
    pub blobs_partial: u64,
    /// Verified bytes held.
    pub bytes: u64,
    /// Manifests held.
    pub manifests: u64,
    /// Pinned manifests.
    pub pinned: u64,
    /// Trusted publisher keys.
    pub trusted_keys: u64,
    /// Named counters (bytes served, received, re-downloaded ...).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
    /// This node's id on the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<PublicKey>,
    /// Addresses the daemon listens on, by protocol.
    #[serde(default)]
    pub listen: std::collections::BTreeMap<String, String>,
}

/// One imported file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportedFile {
    /// The path given.
    pub path: PathBuf,
    /// Its hash.
    pub hash: Hash,
    /// Its size.
    pub size: u64,
    /// Its detected format.
    pub format: FileFormat,
    /// Already in the store.
    pub deduplicated: bool,
}

/// What a publisher needs to know before signing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishPlan {
    /// One more than the highest sequence this node accepted for the name.
    pub next_sequence: u64,
    /// Whether this node trusts the key for the name.
    pub trusted: bool,
}

/// A manifest in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSummary {
    /// Its id.
    pub id: Hash,
    /// `org/model`.
    pub name: ModelName,
    /// Version label.
    pub version: String,
    /// Sequence.
    pub sequence: u64,
    /// Number of files.
    pub files: usize,
    /// Total bytes.
    pub size: u64,
    /// Files complete in the store.
    pub complete_files: usize,
    /// Pinned.
    pub pinned: bool,
    /// Created (Unix seconds).
    pub created: u64,
    /// Expires (Unix seconds).
    pub expires: Option<u64>,
    /// The publisher key.
    pub publisher: PublicKey,
}

/// A manifest with its envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestDetail {
    /// The summary.
    pub summary: ManifestSummary,
    /// The signed envelope (JSON text).
    pub envelope: String,
}

/// What an export did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportSummary {
    /// The manifest.
    pub id: Hash,
    /// Where it went.
    pub target: PathBuf,
    /// Per file: path and placement (`reflink`, `hardlink`, `copy`, `unchanged`).
    pub files: Vec<(String, String)>,
    /// Total bytes.
    pub bytes: u64,
}

/// What GC removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcSummary {
    /// Manifests removed.
    pub manifests_removed: usize,
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What verify found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifySummary {
    /// Blobs checked.
    pub blobs: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Outboards rebuilt from good data.
    pub outboards_repaired: Vec<Hash>,
    /// Corrupt blobs, now marked missing where bad.
    pub corrupt: Vec<CorruptBlob>,
}

/// One corrupt blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorruptBlob {
    /// The blob.
    pub hash: Hash,
    /// Model files that have this content (`org/model:version/path`).
    pub files: Vec<String>,
    /// Bad byte ranges `[start, end)`.
    pub bad: Vec<(u64, u64)>,
}

/// A trusted key and its scopes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Its scopes (`*`, `org/`, `org/model`).
    pub scopes: Vec<String>,
}

/// A failed request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// Kinds of failure, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    Invalid,
    /// Something named does not exist.
    NotFound,
    /// Refused by policy (trust, signature, rollback, expiry).
    Refused,
    /// Would clobber something (an existing file).
    Conflict,
    /// Data failed verification.
    Corrupt,
    /// The daemon failed (disk, index).
    Internal,
    /// Stopped because the daemon is shutting down or the client went away.
    Cancelled,
}

impl ApiError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
