//! The answer budget: how many bytes of blob answers a node assembles in memory at
//! once, and in which order requests that find it full get their turn.
//!
//! A request takes its answer's size from the budget before the answer is read from
//! the store, and gives it back when the answer has been sent (or has failed). When
//! the budget has no room, requests wait in the order of `modeld_proto::turns`: the
//! askers that hold least of what they fetch first, none overtaken for longer than
//! `OVERTAKE_LIMIT`. The request at the head of the queue is served before any
//! behind it, even if a smaller one behind would fit, so a large answer is never
//! starved by small ones.
//!
//! Waiting is cancel-safe: a request whose asker withdraws it (its `acquire` future is
//! dropped) leaves the queue, and if its turn had just come, the room goes back.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use modeld_proto::turns::{Ticket, Turns};
use tokio::sync::oneshot;

use crate::lock;

/// Room in the budget for one answer; the bytes go back when it is dropped.
#[must_use = "the room is given back when the permit is dropped"]
pub(crate) struct Permit<'a> {
    budget: &'a AnswerBudget,
    bytes: u64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.budget.state);
        state.free += self.bytes;
        self.budget.grant(&mut state);
    }
}

struct Waiter {
    bytes: u64,
    wake: oneshot::Sender<()>,
}

struct State {
    free: u64,
    waiting: Turns<Waiter>,
}

/// A byte budget shared by every answer a node is assembling. See the
/// [module docs](self).
pub(crate) struct AnswerBudget {
    capacity: u64,
    started: Instant,
    state: Mutex<State>,
}

impl AnswerBudget {
    /// A budget of `capacity` bytes.
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            started: Instant::now(),
            state: Mutex::new(State {
                free: capacity,
                waiting: Turns::default(),
            }),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Room for `bytes` now, if there is room and nobody waits for it.
    pub(crate) fn try_acquire(&self, bytes: u64) -> Option<Permit<'_>> {
        let bytes = bytes.min(self.capacity);
        let mut state = lock(&self.state);
        if !state.waiting.is_empty() || state.free < bytes {
            return None;
        }
        state.free -= bytes;
        Some(Permit {
            budget: self,
            bytes,
        })
    }

    /// Room for `bytes`, for an asker that holds `held` bytes of what it fetches: at
    /// once if there is room and nobody waits, otherwise in its turn.
    pub(crate) async fn acquire(&self, bytes: u64, held: u64) -> Permit<'_> {
        let bytes = bytes.min(self.capacity);
        let (wake, woken) = oneshot::channel();
        let ticket = {
            let mut state = lock(&self.state);
            if state.waiting.is_empty() && state.free >= bytes {
                state.free -= bytes;
                return Permit {
                    budget: self,
                    bytes,
                };
            }
            state.waiting.push(held, self.now(), Waiter { bytes, wake })
        };
        let mut queued = Queued {
            budget: self,
            ticket,
            bytes,
            armed: true,
        };
        // The sender is consumed when the turn comes, and the waiter leaves the queue
        // otherwise only through `Queued::drop`, which ends this wait first.
        woken
            .await
            .expect("a queued request is woken or withdrawn, never dropped");
        queued.armed = false;
        Permit {
            budget: self,
            bytes,
        }
    }

    /// Wakes the requests whose turn has come, as long as the head of the queue fits.
    fn grant(&self, state: &mut State) {
        let now = self.now();
        while let Some((_, next)) = state.waiting.peek(now) {
            if next.bytes > state.free {
                break;
            }
            let Some((_, w)) = state.waiting.pop(now) else {
                break;
            };
            state.free -= w.bytes;
            if w.wake.send(()).is_err() {
                state.free += w.bytes;
            }
        }
    }

    /// Bytes free now (for tests).
    #[cfg(test)]
    fn free(&self) -> u64 {
        lock(&self.state).free
    }
}

/// A request waiting in the queue; dropped before its turn, it withdraws it.
struct Queued<'a> {
    budget: &'a AnswerBudget,
    ticket: Ticket,
    bytes: u64,
    armed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = lock(&self.budget.state);
        if state.waiting.remove(self.ticket).is_none() {
            // Its turn came as it was withdrawn: the room it was given goes back.
            state.free += self.bytes;
        }
        // Either way the head of the queue may fit now.
        self.budget.grant(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use std::{pin::pin, task::Poll};

    use super::*;

    /// Polls a future once, without a runtime.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }

    #[test]
    fn with_room_and_nobody_waiting_a_request_goes_at_once() {
        let b = AnswerBudget::new(10);
        let p = b.try_acquire(6).expect("room");
        assert!(b.try_acquire(6).is_none());
        assert_eq!(b.free(), 4);
        drop(p);
        assert_eq!(b.free(), 10);
    }

    #[test]
    fn waiting_requests_go_in_turn_least_held_first() {
        let b = AnswerBudget::new(10);
        let full = b.try_acquire(10).expect("room");
        let mut much = pin!(b.acquire(5, 900));
        let mut little = pin!(b.acquire(5, 10));
        assert!(poll_once(much.as_mut()).is_pending());
        assert!(poll_once(little.as_mut()).is_pending());
        // Nobody jumps the queue, even with room for it.
        drop(full);
        assert!(b.try_acquire(1).is_none());
        let Poll::Ready(first) = poll_once(little.as_mut()) else {
            panic!("the asker holding less did not go first");
        };
        let Poll::Ready(second) = poll_once(much.as_mut()) else {
            panic!("room for both, but the second waits");
        };
        drop((first, second));
        assert_eq!(b.free(), 10);
    }

    #[test]
    fn the_head_of_the_queue_is_not_passed_by_smaller_requests() {
        let b = AnswerBudget::new(10);
        let part = b.try_acquire(6).expect("room");
        let mut big = pin!(b.acquire(8, 0));
        let mut small = pin!(b.acquire(2, 5));
        assert!(poll_once(big.as_mut()).is_pending());
        // 4 bytes free, enough for the small one, but the big one is first.
        assert!(poll_once(small.as_mut()).is_pending());
        drop(part);
        assert!(poll_once(big.as_mut()).is_ready());
        assert!(poll_once(small.as_mut()).is_ready());
    }

    #[test]
    fn a_withdrawn_request_gives_back_its_place_and_any_room_it_was_given() {
        let b = AnswerBudget::new(10);
        let full = b.try_acquire(10).expect("room");
        {
            let mut gone = pin!(b.acquire(4, 0));
            assert!(poll_once(gone.as_mut()).is_pending());
        }
        // Withdrawn before its turn: the queue is empty again.
        drop(full);
        assert_eq!(b.free(), 10);
        let full = b.try_acquire(10).expect("room");
        {
            let mut woken = pin!(b.acquire(4, 0));
            assert!(poll_once(woken.as_mut()).is_pending());
            drop(full); // its turn comes here, but it is never polled again
            assert_eq!(b.free(), 6);
        }
        assert_eq!(b.free(), 10);
        assert!(b.try_acquire(10).is_some());
    }
}
