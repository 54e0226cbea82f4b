//! The local API between `modelctl` and `modeld`, kept free of the daemon's heavy
//! dependencies (no libp2p, no redb, no async runtime), so the CLI stays small.
//!
//! - [`paths`]: where the data dir is and how a client finds the running daemon
//!   (`daemon.json`).
//! - [`protocol`]: the request, event and reply messages (`docs/api.md`).
//! - [`frame`]: one JSON message per line, bounded in size.
//! - [`client`]: a blocking client.
//!
//! ```no_run
//! use modeld_api::{client::Client, paths, protocol::{Reply, Request}};
//!
//! let mut client = Client::connect(&paths::data_dir(None))?;
//! if let Reply::Status(s) = client.call(Request::Status, &mut |_| {})? {
//!     println!("{} manifests, {} bytes", s.manifests, s.bytes);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod client;
pub mod frame;
pub mod paths;
pub mod protocol;
