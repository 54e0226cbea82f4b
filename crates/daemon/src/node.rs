//! The daemon's shared state, and the progress of a running request.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use modeld_api::protocol::Event;
use modeld_net::{Net, discovery::Discovery};
use modeld_store::Store;

use crate::config::Config;

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) store: Store,
    pub(crate) net: Net,
    pub(crate) discovery: Discovery,
    pub(crate) config: Config,
    pub(crate) started: Instant,
    pub(crate) counters: Counters,
}

/// Monotonic counters shown by `modelctl status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_imported: AtomicU64,
    pub(crate) bytes_exported: AtomicU64,
    pub(crate) bytes_verified: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("bytes_imported", &self.bytes_imported),
            ("bytes_exported", &self.bytes_exported),
            ("bytes_verified", &self.bytes_verified),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Progress of one request, updated from any thread and sampled by the session.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    phase: Mutex<String>,
    item: Mutex<Option<String>>,
    done: AtomicU64,
    total: AtomicU64,
    /// Peers in use plus one (0: not a transfer).
    peers: AtomicU64,
}

impl Progress {
    /// Starts a phase of `total` bytes.
    pub(crate) fn start(&self, phase: &str, total: u64) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_owned();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Names the item being worked on.
    pub(crate) fn item(&self, item: impl Into<String>) {
        *self.item.lock().unwrap_or_else(|e| e.into_inner()) = Some(item.into());
    }

    /// Adds `n` bytes done.
    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the bytes done, the total and the peers in use (transfers).
    pub(crate) fn transfer(&self, done: u64, total: u64, peers: usize) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.peers.store(peers as u64 + 1, Ordering::Relaxed);
    }

    /// The event to send now, if a phase is running.
    pub(crate) fn event(&self) -> Option<Event> {
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if phase.is_empty() {
            return None;
        }
        Some(Event::Progress {
            phase,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            item: self.item.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            peers: match self.peers.load(Ordering::Relaxed) {
                0 => None,
                n => Some((n - 1) as u32),
            },
        })
    }
}
