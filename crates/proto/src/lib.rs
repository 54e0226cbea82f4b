//! modeld's protocol core, free of IO: no sockets, no disks, no clocks.
//!
//! - [`wire`]: the data-plane messages (`docs/protocol.md`), encoded and decoded as
//!   pure functions with every length bounded.
//! - [`scheduler`]: the piece scheduler, a state machine driven with the current time
//!   (rarest first, pipelining with per-peer windows, endgame, bans and timeouts).
//! - [`holders`]: what a fetch tells the complete peers it holds, and how a complete
//!   node uses it to keep its upload for pieces the swarm lacks.
//! - [`turns`]: the order in which a busy server answers waiting requests (the askers
//!   that hold least first).
//! - [`vecmap`]: an ordered map on sorted vectors, for the scheduler's peer table.
//!
//! The same scheduler runs inside `modeld` (driven by QUIC) and inside the swarm
//! simulator (driven by simulated time), so what the simulator predicts is what the
//! daemon does.
//!
//! ```
//! use std::time::Duration;
//! use modeld_proto::scheduler::{Action, BlobSpec, Scheduler, SchedulerConfig};
//! use modeld_core::ranges::ChunkRanges;
//!
//! let mut s = Scheduler::new(
//!     &[BlobSpec { size: 3 << 20, present: ChunkRanges::empty() }],
//!     SchedulerConfig::default(),
//! );
//! s.add_peer("seed", Duration::ZERO);
//! s.peer_has("seed", 0, &ChunkRanges::all(), Duration::ZERO);
//! while let Some(Action::Request { id, .. }) = s.poll_action(Duration::ZERO) {
//!     s.on_complete(id, Duration::ZERO); // the driver fetched and verified it
//! }
//! assert!(s.is_done());
//! ```

pub mod holders;
pub mod scheduler;
pub mod turns;
pub mod vecmap;
pub mod wire;
