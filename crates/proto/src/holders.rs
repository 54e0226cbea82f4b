//! Who else holds what: holder notices from fetches, and a complete node's choice of
//! what it sends.
//!
//! At the start of a burst every fetch asks the seeds too, and a seed answering each
//! request in turn sends the same piece over and over: pieces dozens of fetching hosts
//! already hold go out again while pieces nobody has yet wait in its queue. So a seed
//! sends several times the model before the swarm stops needing it. Here the seed
//! chooses, with what its peers tell it:
//!
//! - A fetch tells the complete peers it is connected to what it has verified since it
//!   last told them, once per [`NOTICE_EVERY`] ([`news`] cuts the difference into
//!   notices of wire size: `Request::Holds`).
//! - A complete node keeps those claims per peer ([`Holders`]) and, when a request
//!   that had to wait for its turn gets it, refuses it (`Status::Elsewhere`) if
//!   [`REFUSE_AT`] of its other peers hold everything it asks for
//!   ([`Holders::should_refuse`]). The asker gets that piece from a fetching holder,
//!   and the seed's upload goes to what the swarm still lacks. A node with room (no
//!   wait) has upload to spare and refuses only what [`REFUSE_IDLE_AT`] peers hold.
//! - A peer's claims outlive its connection by [`CLAIMS_LINGER`]: fetches rotate away
//!   from a busy seed and go on holding (and serving) what they told it.
//! - A peer is refused a piece for at most [`REFUSAL_WINDOW`] after the first refusal,
//!   then answered: a fetch that knows no other holder, or cannot reach them, gets the
//!   piece anyway, and a peer lying about what it holds (claiming everything, to starve
//!   others) delays an honest fetch by that much at worst, not for ever.
//!
//! Claims decide only what a node declines to send, never what anyone stores or
//! serves, and every table is bounded: claims past a bound are dropped, which only
//! makes the node refuse less.
//!
//! ```
//! use modeld_core::ranges::{ChunkNum, ChunkRanges};
//! use std::time::Duration;
//! use modeld_proto::holders::{Holders, REFUSAL_WINDOW, news};
//!
//! let piece = ChunkRanges::from(ChunkNum(0)..ChunkNum(1024));
//! let mut seed: Holders<&str, usize> = Holders::default();
//! // Two fetching peers each tell the seed they hold the first piece.
//! for peer in ["a", "b"] {
//!     let mut told = ChunkRanges::empty();
//!     for notice in news(&piece, &mut told, 8) {
//!         seed.record(peer, 0, &notice);
//!     }
//! }
//! // A third asks the seed for it: it is pointed elsewhere for a while.
//! let t = Duration::from_secs(7);
//! let waited = true; // the seed was busy: the request waited for its turn
//! assert!(seed.should_refuse("c", 0, &piece, waited, t));
//! assert!(seed.should_refuse("c", 0, &piece, waited, t + Duration::from_secs(1)));
//! assert!(!seed.should_refuse("c", 0, &piece, waited, t + REFUSAL_WINDOW));
//! // With room to spare, the seed sends what only two others hold.
//! assert!(!seed.should_refuse("d", 0, &piece, !waited, t));
//! ```

use std::{collections::BTreeMap, time::Duration};

use modeld_core::ranges::{self, ChunkRanges};

use crate::wire::MAX_REQUEST_BOUNDARIES;

/// How often a fetch tells its complete peers what it has newly verified.
pub const NOTICE_EVERY: Duration = Duration::from_millis(100);
/// Most notices a fetch sends one peer per round (the rest waits for the next).
pub const NOTICES_PER_ROUND: usize = 8;
/// A fetch asks a peer that pushes its news (it is fetching too, and this fetch is
/// subscribed: `modeld_net::watch`) for its whole have-map only every this many
/// refresh rounds, not every round: the pushes bring the news within
/// [`NOTICE_EVERY`], and the rare full answer repairs whatever a lost notice or a
/// restarted fetch left out.
pub const POLL_PUSHING_EVERY: u32 = 5;
/// A busy complete node refuses a request whose ranges this many of its other peers
/// hold.
pub const REFUSE_AT: usize = 2;
/// A complete node with room (the request did not wait) refuses only what this many of
/// its other peers hold: its spare upload is worth little on a piece that common, and
/// stays free for the next request for a rare one. (In the 7-host lab a node never has
/// this many other peers holding a piece, so there the rule never engages.)
pub const REFUSE_IDLE_AT: usize = 8;
/// How long a peer's claims still count after its connection ends. A fetch rotates
/// away from a busy seed (it replaces peers whose queues hold its requests longest)
/// but keeps holding, and serving, what it told the seed; forgetting that at once made
/// the seeds of a 3,000-host burst send 3.2x the model instead of 2.8x
/// (docs/simulations). The price: a peer that left the swarm still counts this long.
pub const CLAIMS_LINGER: Duration = Duration::from_secs(10);
/// Most peers whose claims one node keeps, connected or lingering (and that it can
/// refuse: a peer with no room in the table is always answered). More than a node has
/// connections: the daemon takes 256; a simulated seed is connected to every fetch of
/// a burst.
pub const MAX_CLAIMING_PEERS: usize = 16_384;
/// How long a peer may be refused one piece: after that it is answered, whoever holds
/// the piece (the asker may not reach them, or they may have lied).
///
/// Long enough to outlast a burst's busy seconds: at 3,000 and 10,000 simulated hosts a
/// refused fetch often finds no fetching holder free within 5 s and was then served by
/// the seed anyway (seeds sent 4.7x and 5.3x the model with 5 s, 3.1x with 30 s; no
/// window at all gives the same run as 30 s: docs/simulations). The price is what a
/// liar can cost: an honest fetch that only knows liars and a busy seed waits up to
/// this long for a piece.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(30);
/// Most blobs one peer's claims cover.
pub const MAX_CLAIMED_BLOBS: usize = 4096;
/// Most range boundaries kept for one peer and blob (past it, the largest spans stay).
pub const MAX_CLAIM_BOUNDARIES: usize = 16_384;
/// Most refusals remembered per peer; past it, the node refuses that peer nothing more.
pub const MAX_REFUSALS: usize = 65_536;

/// What one peer claims to hold, and what it was refused.
#[derive(Debug, Clone)]
struct Claims<B> {
    blobs: BTreeMap<B, ChunkRanges>,
    /// When each request, by (blob, first chunk), was first refused.
    refused: BTreeMap<(B, u64), Duration>,
    /// When the peer's connection ended, if it did.
    gone: Option<Duration>,
}

impl<B> Claims<B> {
    /// Whether these claims still count at `now`.
    fn current(&self, now: Duration) -> bool {
        self.gone
            .is_none_or(|g| now.saturating_sub(g) < CLAIMS_LINGER)
    }
}

impl<B> Default for Claims<B> {
    fn default() -> Self {
        Self {
            blobs: BTreeMap::new(),
            refused: BTreeMap::new(),
            gone: None,
        }
    }
}

/// A complete node's table of what its connected peers hold (by their notices), and
/// of the requests it pointed elsewhere. `P` names a peer, `B` a blob.
#[derive(Debug, Clone)]
pub struct Holders<P, B> {
    peers: BTreeMap<P, Claims<B>>,
    /// When claims past their linger were last dropped.
    swept: Duration,
}

impl<P, B> Default for Holders<P, B> {
    fn default() -> Self {
        Self {
            peers: BTreeMap::new(),
            swept: Duration::ZERO,
        }
    }
}

impl<P: Ord + Copy, B: Ord + Copy> Holders<P, B> {
    /// `peer` says it now holds `ranges` of `blob` (besides what it said before). The
    /// driver clips `ranges` to the blob's size.
    pub fn record(&mut self, peer: P, blob: B, ranges: &ChunkRanges) {
        let Some(claims) = self.claims(peer) else {
            return;
        };
        if !claims.blobs.contains_key(&blob) && claims.blobs.len() >= MAX_CLAIMED_BLOBS {
            return;
        }
        let held = claims.blobs.entry(blob).or_default();
        *held |= ranges.clone();
        if held.boundaries().len() > MAX_CLAIM_BOUNDARIES {
            *held = ranges::keep_largest(held, MAX_CLAIM_BOUNDARIES);
        }
    }

    /// `peer` connected (again): its claims, if it has any left, are current.
    pub fn connected(&mut self, peer: &P) {
        if let Some(c) = self.peers.get_mut(peer) {
            c.gone = None;
        }
    }

    /// `peer`'s connection ended at `now`: its claims count for [`CLAIMS_LINGER`]
    /// more (it probably still holds what it said; it may have left), then go.
    pub fn disconnected(&mut self, peer: &P, now: Duration) {
        if let Some(c) = self.peers.get_mut(peer) {
            c.gone = Some(now);
        }
        // Dropping the expired at most once a second keeps this cheap with many peers.
        if now.saturating_sub(self.swept) >= Duration::from_secs(1) {
            self.swept = now;
            self.peers.retain(|_, c| c.current(now));
        }
    }

    /// Whether to point `asker`'s request for `ranges` of `blob` elsewhere at time
    /// `now`: at least [`REFUSE_AT`] other peers hold all of it if the request
    /// `waited` for its turn ([`REFUSE_IDLE_AT`] if it did not), and `asker` was not
    /// first refused it more than [`REFUSAL_WINDOW`] ago (this records the refusal).
    pub fn should_refuse(
        &mut self,
        asker: P,
        blob: B,
        ranges: &ChunkRanges,
        waited: bool,
        now: Duration,
    ) -> bool {
        let Some(first) = ranges.boundaries().first().map(|c| c.0) else {
            return false;
        };
        let enough = if waited { REFUSE_AT } else { REFUSE_IDLE_AT };
        if self.count(asker, blob, ranges, enough, now) < enough {
            return false;
        }
        let Some(claims) = self.claims(asker) else {
            return false;
        };
        match claims.refused.get(&(blob, first)) {
            Some(&since) => now.saturating_sub(since) < REFUSAL_WINDOW,
            None if claims.refused.len() < MAX_REFUSALS => {
                claims.refused.insert((blob, first), now);
                true
            }
            None => false,
        }
    }

    /// How many peers other than `asker` claim all of `ranges` of `blob` at `now`
    /// (counting stops at [`REFUSE_IDLE_AT`]).
    pub fn holders(&self, asker: P, blob: B, ranges: &ChunkRanges, now: Duration) -> usize {
        self.count(asker, blob, ranges, REFUSE_IDLE_AT, now)
    }

    fn count(&self, asker: P, blob: B, ranges: &ChunkRanges, upto: usize, now: Duration) -> usize {
        self.peers
            .iter()
            .filter(|(p, c)| {
                **p != asker
                    && c.current(now)
                    && c.blobs.get(&blob).is_some_and(|h| ranges.is_subset(h))
            })
            .take(upto)
            .count()
    }

    /// Peers with claims or refusals on record.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// The entry of `peer`, made if there is room.
    fn claims(&mut self, peer: P) -> Option<&mut Claims<B>> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_CLAIMING_PEERS {
            return None;
        }
        Some(self.peers.entry(peer).or_default())
    }
}

/// What a fetch holds (`held`) of one blob and has not yet told one peer (`told`), cut
/// into notices of at most [`MAX_REQUEST_BOUNDARIES`] boundaries, at most
/// `max_notices` of them (the rest waits for the next round). `told` grows by what
/// they carry.
pub fn news(held: &ChunkRanges, told: &mut ChunkRanges, max_notices: usize) -> Vec<ChunkRanges> {
    let fresh = held - &*told;
    if fresh.is_empty() || max_notices == 0 {
        return Vec::new();
    }
    if fresh.boundaries().len() <= MAX_REQUEST_BOUNDARIES {
        *told |= fresh.clone();
        return vec![fresh];
    }
    // Groups of an even number of boundaries are whole ranges.
    const _: () = assert!(MAX_REQUEST_BOUNDARIES.is_multiple_of(2));
    let notices: Vec<ChunkRanges> = fresh
        .boundaries()
        .chunks(MAX_REQUEST_BOUNDARIES)
        .take(max_notices)
        .map(ranges::from_boundaries)
        .collect();
    for notice in &notices {
        *told |= notice.clone();
    }
    notices
}

#[cfg(test)]
mod tests {
    use modeld_core::ranges::ChunkNum;
    use proptest::prelude::*;

    use super::*;

    const T: Duration = Duration::from_secs(100);
    /// The request waited for its turn (the node is busy).
    const W: bool = true;

    fn r(a: u64, b: u64) -> ChunkRanges {
        ChunkRanges::from(ChunkNum(a)..ChunkNum(b))
    }

    #[test]
    fn a_request_is_pointed_elsewhere_while_enough_other_peers_hold_all_of_it() {
        let mut h: Holders<u8, u8> = Holders::default();
        h.record(1, 0, &r(0, 100));
        // One holder is not enough.
        assert!(!h.should_refuse(9, 0, &r(0, 64), W, T));
        // A second holder of only part of the request is not either.
        h.record(2, 0, &r(0, 32));
        assert!(!h.should_refuse(9, 0, &r(0, 64), W, T));
        // Its claims add up across notices; another blob's claims do not count.
        h.record(2, 1, &r(0, 100));
        assert!(!h.should_refuse(9, 0, &r(0, 64), W, T));
        h.record(2, 0, &r(32, 64));
        // The asker's own claims do not count for it.
        assert!(!h.should_refuse(1, 0, &r(0, 64), W, T));
        assert!(h.should_refuse(9, 0, &r(0, 64), W, T));
        // Asked again within the window, it is refused again; after it, answered.
        assert!(h.should_refuse(9, 0, &r(0, 64), W, T + REFUSAL_WINDOW / 2));
        assert!(!h.should_refuse(9, 0, &r(0, 64), W, T + REFUSAL_WINDOW));
        // Another piece may still be refused.
        assert!(!h.should_refuse(9, 0, &r(64, 100), W, T));
        h.record(1, 0, &r(100, 200));
        h.record(2, 0, &r(100, 200));
        assert!(h.should_refuse(9, 0, &r(100, 164), W, T));
        // A peer that disconnects still counts for a while, then no longer.
        h.disconnected(&2, T);
        assert!(h.should_refuse(8, 0, &r(100, 164), W, T + CLAIMS_LINGER / 2));
        assert_eq!(h.holders(8, 0, &r(100, 164), T + CLAIMS_LINGER), 1);
        assert!(!h.should_refuse(7, 0, &r(100, 164), W, T + CLAIMS_LINGER));
        // Back, it counts again (its fetch tells it everything anew).
        h.connected(&2);
        assert_eq!(h.holders(8, 0, &r(100, 164), T + 2 * CLAIMS_LINGER), 2);
        // Expired claims are dropped from the table, not just ignored.
        h.disconnected(&2, T + 3 * CLAIMS_LINGER);
        h.disconnected(&1, T + 5 * CLAIMS_LINGER);
        assert_eq!(
            h.peers(),
            3,
            "1 lingers; 8 and 9 keep their refusals; 2 is gone"
        );
    }

    #[test]
    fn a_node_with_room_refuses_only_what_many_others_hold() {
        let mut h: Holders<u8, u8> = Holders::default();
        for p in 1..REFUSE_IDLE_AT as u8 {
            h.record(p, 0, &r(0, 100));
        }
        // Busy, the node points the request elsewhere; with room, it sends.
        assert!(h.should_refuse(100, 0, &r(0, 64), W, T));
        assert!(!h.should_refuse(101, 0, &r(0, 64), !W, T));
        // One holder more and it keeps even its spare upload for rarer pieces.
        h.record(REFUSE_IDLE_AT as u8, 0, &r(0, 100));
        assert!(h.should_refuse(101, 0, &r(0, 64), !W, T));
        assert!(!h.should_refuse(101, 0, &r(0, 64), !W, T + REFUSAL_WINDOW));
    }

    #[test]
    fn nothing_asked_is_never_refused() {
        let mut h: Holders<u8, u8> = Holders::default();
        h.record(1, 0, &ChunkRanges::all());
        h.record(2, 0, &ChunkRanges::all());
        assert!(!h.should_refuse(9, 0, &ChunkRanges::empty(), W, T));
    }

    #[test]
    fn tables_stay_bounded() {
        let mut h: Holders<u32, u32> = Holders::default();
        for p in 0..(MAX_CLAIMING_PEERS as u32 + 10) {
            h.record(p, 0, &r(0, 1));
        }
        assert_eq!(h.peers(), MAX_CLAIMING_PEERS);
        for b in 0..(MAX_CLAIMED_BLOBS as u32 + 10) {
            h.record(0, b, &r(0, 1));
        }
        assert_eq!(h.peers[&0].blobs.len(), MAX_CLAIMED_BLOBS);
        for i in 0..(MAX_CLAIM_BOUNDARIES as u64) {
            h.record(0, 0, &r(3 * i, 3 * i + 1 + i % 2));
        }
        let kept = &h.peers[&0].blobs[&0];
        assert!(kept.boundaries().len() <= MAX_CLAIM_BOUNDARIES);
        // The largest spans are the ones kept.
        assert!(r(3, 5).is_subset(kept));
        // Past the bound on refusals, a peer is refused nothing more.
        h.record(1, 0, &ChunkRanges::all());
        h.record(2, 0, &ChunkRanges::all());
        for i in 0..MAX_REFUSALS as u64 {
            assert!(h.should_refuse(7, 0, &r(i, i + 1), W, T));
        }
        assert!(!h.should_refuse(7, 0, &r(1 << 40, (1 << 40) + 1), W, T));
    }

    #[test]
    fn news_carries_only_what_is_new_in_wire_sized_notices() {
        let mut told = ChunkRanges::empty();
        assert_eq!(news(&r(0, 10), &mut told, 8), vec![r(0, 10)]);
        assert_eq!(told, r(0, 10));
        assert!(news(&r(0, 10), &mut told, 8).is_empty());
        assert_eq!(news(&r(0, 20), &mut told, 8), vec![r(10, 20)]);
        // 1,000 spans: four notices of at most 128 spans fit in a round of four.
        let mut many = ChunkRanges::empty();
        for i in 0..1000 {
            many |= r(100 + 2 * i, 101 + 2 * i);
        }
        let mut told = ChunkRanges::empty();
        let first = news(&many, &mut told, 4);
        assert_eq!(first.len(), 4);
        assert!(
            first
                .iter()
                .all(|n| n.boundaries().len() <= MAX_REQUEST_BOUNDARIES)
        );
        let rest = news(&many, &mut told, 100);
        assert_eq!(
            first.len() + rest.len(),
            2000_usize.div_ceil(MAX_REQUEST_BOUNDARIES)
        );
        assert_eq!(told, many);
    }

    proptest! {
        #[test]
        fn the_notices_add_up_to_what_is_held(
            spans in proptest::collection::vec((0u64..100_000, 1u64..50), 0..600),
            already in proptest::collection::vec((0u64..100_000, 1u64..500), 0..20),
        ) {
            let mut held = ChunkRanges::empty();
            for (s, n) in spans {
                held |= r(s, s + n);
            }
            let mut told = ChunkRanges::empty();
            for (s, n) in already {
                told |= r(s, s + n);
            }
            let before = told.clone();
            let mut got = ChunkRanges::empty();
            for n in news(&held, &mut told, usize::MAX) {
                prop_assert!(n.boundaries().len() <= MAX_REQUEST_BOUNDARIES);
                prop_assert!((&n & &before).is_empty(), "told twice");
                got |= n;
            }
            prop_assert_eq!(&got, &(&held - &before));
            prop_assert_eq!(told, &before | &held);
        }
    }
}
