//! [`Turns`]: the order in which a busy server answers the requests waiting for it.
//!
//! A node answers only so many requests at once (the daemon's answer budget); the
//! rest wait. Every blob request says how much the asker already holds of what it is
//! fetching (`Request::GetBlob::held`), and the asker that holds least goes first;
//! between equals, the earliest.
//!
//! Why not first come, first served: at the start of a burst a host that has just
//! verified its first piece is asked for it by most of the fetches that watch it, and
//! in arrival order it serves hosts that are already sending to others as often as
//! hosts that hold nothing, so a fresh piece spreads through one queue, copy after
//! copy. Serving those that hold least first makes every fresh host a source sooner
//! (each copy it receives adds a sender), and later lets the hosts that fell behind
//! catch up, which narrows the spread of completions. In the simulated burst of 1,000
//! hosts the last host finishes at 1.185x the lower bound instead of 1.223x (the mean of
//! three draws; `docs/simulations/README.md`, twelfth round).
//!
//! No request is overtaken for ever: one that has waited [`OVERTAKE_LIMIT`] goes next,
//! in arrival order. So an asker that lies (claims to hold nothing) gains a place in
//! the queue, never more than that limit over honest askers, and nothing else: what it
//! receives is verified like anything else.
//!
//! ```
//! use std::time::Duration;
//! use modeld_proto::turns::{OVERTAKE_LIMIT, Turns};
//!
//! let t0 = Duration::ZERO;
//! let mut turns = Turns::default();
//! turns.push(900 << 20, t0, "almost done");
//! turns.push(0, t0, "fresh");
//! turns.push(300 << 20, t0, "a third");
//! assert_eq!(turns.pop(t0).map(|(_, who)| who), Some("fresh"));
//! // After the limit the earliest goes first, whatever it holds.
//! assert_eq!(turns.pop(t0 + OVERTAKE_LIMIT).map(|(_, who)| who), Some("almost done"));
//! assert_eq!(turns.pop(t0 + OVERTAKE_LIMIT).map(|(_, who)| who), Some("a third"));
//! assert!(turns.is_empty());
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

/// The longest a waiting request lets askers that hold less go before it.
pub const OVERTAKE_LIMIT: Duration = Duration::from_secs(5);

/// A place in the queue: the request's arrival number, unique within one [`Turns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

#[derive(Debug, Clone)]
struct Waiting<T> {
    held: u64,
    since: Duration,
    item: T,
}

/// Requests waiting for a turn, in the order described in the [module docs](self).
/// Every operation is logarithmic in the number waiting.
#[derive(Debug, Clone)]
pub struct Turns<T> {
    /// Every waiting request, by arrival.
    by_arrival: BTreeMap<Ticket, Waiting<T>>,
    /// The same requests by what their askers held, then arrival.
    by_held: BTreeSet<(u64, Ticket)>,
    arrived: u64,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Self {
            by_arrival: BTreeMap::new(),
            by_held: BTreeSet::new(),
            arrived: 0,
        }
    }
}

impl<T> Turns<T> {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.by_arrival.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_arrival.is_empty()
    }

    /// Queues `item`, asked at `now` by an asker that holds `held` bytes.
    pub fn push(&mut self, held: u64, now: Duration, item: T) -> Ticket {
        let ticket = Ticket(self.arrived);
        self.arrived += 1;
        self.by_held.insert((held, ticket));
        self.by_arrival.insert(
            ticket,
            Waiting {
                held,
                since: now,
                item,
            },
        );
        ticket
    }

    /// The request whose turn is next at `now`, left in the queue.
    pub fn peek(&self, now: Duration) -> Option<(Ticket, &T)> {
        let ticket = self.next(now)?;
        Some((ticket, &self.by_arrival[&ticket].item))
    }

    /// Takes the request whose turn is next at `now`.
    pub fn pop(&mut self, now: Duration) -> Option<(Ticket, T)> {
        let ticket = self.next(now)?;
        self.remove(ticket).map(|item| (ticket, item))
    }

    /// Takes a request out of the queue (its asker withdrew it), if it still waits.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        let w = self.by_arrival.remove(&ticket)?;
        self.by_held.remove(&(w.held, ticket));
        Some(w.item)
    }

    fn next(&self, now: Duration) -> Option<Ticket> {
        let (&oldest, w) = self.by_arrival.first_key_value()?;
        if now.saturating_sub(w.since) >= OVERTAKE_LIMIT {
            return Some(oldest);
        }
        self.by_held.first().map(|&(_, ticket)| ticket)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: Duration = Duration::ZERO;

    #[test]
    fn the_asker_that_holds_least_goes_first_then_the_earliest() {
        let mut t = Turns::default();
        for (held, name) in [(5, "a"), (1, "b"), (5, "c"), (1, "d"), (0, "e")] {
            t.push(held, T0, name);
        }
        let order: Vec<_> = std::iter::from_fn(|| t.pop(T0).map(|(_, n)| n)).collect();
        assert_eq!(order, ["e", "b", "d", "a", "c"]);
    }

    #[test]
    fn a_request_waits_behind_others_for_at_most_the_limit() {
        let mut t = Turns::default();
        t.push(100, T0, "old");
        let later = T0 + Duration::from_secs(1);
        t.push(0, later, "new");
        t.push(0, later, "newer");
        assert_eq!(t.peek(later).map(|(_, n)| *n), Some("new"));
        let due = T0 + OVERTAKE_LIMIT;
        assert_eq!(t.pop(due).map(|(_, n)| n), Some("old"));
        assert_eq!(t.pop(due).map(|(_, n)| n), Some("new"));
    }

    #[test]
    fn a_withdrawn_request_leaves_no_trace() {
        let mut t = Turns::default();
        let a = t.push(0, T0, "a");
        t.push(1, T0, "b");
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop(T0).map(|(_, n)| n), Some("b"));
        assert!(t.is_empty() && t.pop(T0).is_none());
    }

    proptest! {
        /// Against a plain list: every pushed request comes out exactly once, and each
        /// pop takes the earliest one overdue, or else the least held.
        #[test]
        fn pops_follow_the_rule(ops in proptest::collection::vec((0u8..3, 0u64..4, 0u64..3), 1..200)) {
            let mut t = Turns::default();
            let mut model: Vec<(u64, Duration, u64)> = Vec::new(); // (held, since, id)
            let mut now = T0;
            let mut next_id = 0;
            for (op, held, step) in ops {
                now += Duration::from_secs(step);
                match op {
                    0 | 1 => {
                        t.push(held, now, next_id);
                        model.push((held, now, next_id));
                        next_id += 1;
                    }
                    _ => {
                        let want = match model.first() {
                            Some(&(_, since, _)) if now - since >= OVERTAKE_LIMIT => Some(0),
                            _ => (0..model.len()).min_by_key(|&i| (model[i].0, i)),
                        };
                        let got = t.pop(now).map(|(_, id)| id);
                        prop_assert_eq!(got, want.map(|i| model.remove(i).2));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
        }
    }
}
