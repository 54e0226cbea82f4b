//! The flow-level network: links with capacities, flows across them, and max-min
//! fair rates recomputed when flows start and end. No packets.
//!
//! A flow crosses a handful of resources (the sender's uplink, the receiver's
//! downlink, rack uplinks, optionally a shared CPU budget). Rates are max-min fair
//! (progressive filling: the most constrained resource fixes the rate of its flows,
//! which frees capacity elsewhere, and so on). Between recomputations every flow
//! moves at a constant rate, so its completion time is known exactly.
//!
//! Recomputing is `O(flows x resources per flow x log resources)`: the resources
//! wait in an indexed heap keyed by their current fair share (one entry each, so
//! the heap stays as small as the number of resources and in cache), and the hot
//! per-flow fields (rate, bytes left, whether fixed yet) live in dense arrays apart
//! from the cold ones (path, tag), because the filling visits flows in no
//! particular order. For large runs, recomputations can be spaced by at least
//! `min_gap`: a flow that starts or ends in between waits at most that long for
//! its new rate. `min_gap = 0` recomputes at every change (exact max-min at all
//! times).

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
};

/// Simulated time in nanoseconds.
pub type Nanos = u64;

/// Index of a resource (a link or budget with a capacity).
pub type ResourceId = u32;

/// Most resources one flow crosses.
pub const MAX_HOPS: usize = 6;

/// Identifies a flow (slot and generation, so a stale id never names a new flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    slot: u32,
    generation: u32,
}

/// What the solver reads once per flow and recomputation (the hot fields are in
/// [`Network`]'s dense arrays).
#[derive(Debug)]
#[repr(C)]
struct Flow {
    hops: u8,
    /// The resources it crosses: the first `hops` of `path`.
    path: [ResourceId; MAX_HOPS],
    /// Where this flow sits in each of those resources' member lists.
    positions: [u32; MAX_HOPS],
    bytes: f64,
    tag: u64,
}

/// One flow's place: what a recomputation reads and writes for every flow comes
/// first, so that a flow costs it one or two cache lines (the networks of the big
/// runs hold hundreds of thousands of flows, far beyond the caches).
#[derive(Debug)]
#[repr(C)]
struct Slot {
    /// Bumped as the slot is freed, so stale ids and completions are told apart.
    generation: u32,
    /// The rate set at the last recomputation (0 for a flow added since).
    rate: f64,
    /// Bytes left at the last recomputation (or when added, if later).
    remaining: f64,
    flow: Option<Flow>,
}

/// A flow that finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    /// Its id.
    pub id: FlowId,
    /// The tag given when it was added.
    pub tag: u64,
    /// When it finished.
    pub at: Nanos,
}

/// The network.
#[derive(Debug)]
pub struct Network {
    capacity: Vec<f64>,
    /// Bytes carried by each resource (accounted when a flow ends).
    carried: Vec<f64>,
    slots: Vec<Slot>,
    /// Per slot: the recomputation that last fixed its rate (apart from the slots: a
    /// recomputation meets most flows twice, once per end, and this one check is all
    /// the second meeting needs).
    fixed_in: Vec<u32>,
    free: Vec<u32>,
    active: usize,
    /// Completion times computed at the last recomputation (stale entries skipped).
    completions: BinaryHeap<Reverse<(Nanos, u32, u32)>>,
    dirty: bool,
    last_recompute: Option<Nanos>,
    min_gap: Nanos,
    recomputations: u64,
    /// Numbers recomputations for `fixed_in` (wraps; only equality matters).
    epoch: u32,
    /// The flows (slots) across each resource, kept as flows come and go.
    members: Vec<Vec<u32>>,
    // Scratch space reused by `recompute`.
    left: Vec<f64>,
    unfixed: Vec<u32>,
    touched: Vec<u32>,
    is_touched: Vec<bool>,
    heap: ShareHeap,
    after: Vec<u32>,
}

impl Network {
    /// A network of resources with these capacities (bytes per second).
    pub fn new(capacity: Vec<f64>, min_gap: Nanos) -> Self {
        let n = capacity.len();
        Self {
            carried: vec![0.0; n],
            members: vec![Vec::new(); n],
            left: vec![0.0; n],
            unfixed: vec![0; n],
            touched: Vec::new(),
            is_touched: vec![false; n],
            heap: ShareHeap::new(n),
            after: Vec::new(),
            capacity,
            slots: Vec::new(),
            fixed_in: Vec::new(),
            free: Vec::new(),
            active: 0,
            completions: BinaryHeap::new(),
            dirty: false,
            last_recompute: None,
            min_gap,
            recomputations: 0,
            epoch: 0,
        }
    }

    /// Changes a resource's capacity (a link cut or restored).
    pub fn set_capacity(&mut self, r: ResourceId, bytes_per_sec: f64) {
        self.capacity[r as usize] = bytes_per_sec;
        self.dirty = true;
    }

    /// Capacity of resource `r` left unused at the last recomputation.
    pub fn spare(&self, r: ResourceId) -> f64 {
        self.left[r as usize]
    }

    /// Bytes each resource has carried so far (flows still running not included).
    pub fn carried(&self, r: ResourceId) -> f64 {
        self.carried[r as usize]
    }

    /// Flows running now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Rate recomputations so far.
    pub fn recomputations(&self) -> u64 {
        self.recomputations
    }

    /// Starts a flow of `bytes` across `resources`. It moves at rate 0 until the next
    /// recomputation, whenever it was added.
    pub fn add(&mut self, resources: &[ResourceId], bytes: u64, tag: u64) -> FlowId {
        assert!(
            (1..=MAX_HOPS).contains(&resources.len()),
            "a flow crosses 1 to {MAX_HOPS} resources"
        );
        let mut path = [0; MAX_HOPS];
        path[..resources.len()].copy_from_slice(resources);
        let mut flow = Flow {
            path,
            positions: [0; MAX_HOPS],
            hops: resources.len() as u8,
            bytes: bytes as f64,
            tag,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.fixed_in.push(0);
                self.slots.push(Slot {
                    generation: 0,
                    rate: 0.0,
                    remaining: 0.0,
                    flow: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        for (k, &r) in resources.iter().enumerate() {
            let list = &mut self.members[r as usize];
            flow.positions[k] = list.len() as u32;
            list.push(slot);
        }
        let s = slot as usize;
        let place = &mut self.slots[s];
        place.flow = Some(flow);
        place.rate = 0.0;
        place.remaining = bytes as f64;
        self.fixed_in[s] = self.epoch;
        self.active += 1;
        self.dirty = true;
        FlowId {
            slot,
            generation: self.slots[s].generation,
        }
    }

    /// Stops a flow at `now`; returns the bytes it had transferred (0 if unknown).
    pub fn remove(&mut self, now: Nanos, id: FlowId) -> u64 {
        if self.slots.get(id.slot as usize).map(|p| p.generation) != Some(id.generation) {
            return 0;
        }
        let Some(flow) = self.slots[id.slot as usize].flow.take() else {
            return 0;
        };
        let done = (flow.bytes - self.remaining_at(id.slot, now)).max(0.0);
        self.retire(id.slot, &flow, done);
        done as u64
    }

    /// Bytes flow `slot` has left at `now`: every flow moving now got its rate at
    /// the last recomputation (flows added since have rate 0).
    fn remaining_at(&self, slot: u32, now: Nanos) -> f64 {
        let since = self.last_recompute.unwrap_or(now);
        let secs = now.saturating_sub(since) as f64 / 1e9;
        let place = &self.slots[slot as usize];
        (place.remaining - place.rate * secs).max(0.0)
    }

    fn retire(&mut self, slot: u32, flow: &Flow, transferred: f64) {
        for (&r, &at) in flow.resources().iter().zip(&flow.positions) {
            self.carried[r as usize] += transferred;
            let list = &mut self.members[r as usize];
            debug_assert_eq!(list[at as usize], slot);
            list.swap_remove(at as usize);
            // The flow moved into the hole learns its new position.
            if let Some(&moved) = list.get(at as usize) {
                let m = self.slots[moved as usize].flow.as_mut().expect("member");
                let k = m
                    .resources()
                    .iter()
                    .position(|&x| x == r)
                    .expect("crosses r");
                m.positions[k] = at;
            }
        }
        let place = &mut self.slots[slot as usize];
        place.rate = 0.0;
        place.generation = place.generation.wrapping_add(1);
        self.free.push(slot);
        self.active -= 1;
        self.dirty = true;
    }

    /// When the rates must next be recomputed, if they are out of date.
    pub fn recompute_due(&self, now: Nanos) -> Option<Nanos> {
        if !self.dirty {
            return None;
        }
        Some(match self.last_recompute {
            Some(t) => now.max(t + self.min_gap),
            None => now,
        })
    }

    /// The earliest time a flow finishes at its current rate.
    pub fn next_completion(&mut self) -> Option<Nanos> {
        while let Some(&Reverse((t, slot, generation))) = self.completions.peek() {
            if self.is_current(slot, generation) {
                return Some(t);
            }
            self.completions.pop();
        }
        None
    }

    fn is_current(&self, slot: u32, generation: u32) -> bool {
        let place = &self.slots[slot as usize];
        place.generation == generation && place.flow.is_some()
    }

    /// Removes and returns the flows that have finished by `now`.
    pub fn finish_until(&mut self, now: Nanos) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Some(t) = self.next_completion() {
            if t > now {
                break;
            }
            let Reverse((t, slot, generation)) = self.completions.pop().expect("peeked");
            let flow = self.slots[slot as usize].flow.take().expect("current");
            let bytes = flow.bytes;
            let tag = flow.tag;
            self.retire(slot, &flow, bytes);
            out.push(Finished {
                id: FlowId { slot, generation },
                tag,
                at: t,
            });
        }
        out
    }

    /// Recomputes max-min fair rates at `now` and the completion times of the flows
    /// that finish before the next recomputation can come (`min_gap`), plus the
    /// earliest of the rest: until then nothing else can finish, and every change
    /// marks the rates out of date.
    pub fn recompute(&mut self, now: Nanos) {
        let since = self.last_recompute.unwrap_or(now);
        let elapsed = now.saturating_sub(since) as f64 / 1e9;
        self.dirty = false;
        self.last_recompute = Some(now);
        self.recomputations += 1;
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        self.left.copy_from_slice(&self.capacity);
        self.heap.clear();
        for (r, m) in self.members.iter().enumerate() {
            self.unfixed[r] = m.len() as u32;
            if !m.is_empty() {
                self.heap
                    .insert_unordered(r as u32, self.left[r] / m.len() as f64);
            }
        }
        self.heap.heapify();
        let window_end = now.saturating_add(self.min_gap);
        let mut first_after = Nanos::MAX;
        self.after.clear();
        let mut due = std::mem::take(&mut self.completions).into_vec();
        due.clear();
        // Progressive filling: the resource with the smallest fair share is the
        // bottleneck of its unfixed flows; fixing them frees capacity elsewhere.
        while let Some((r, share)) = self.heap.pop() {
            let r = r as usize;
            if self.unfixed[r] == 0 {
                continue;
            }
            let members = &self.members[r];
            for (j, &slot) in members.iter().enumerate() {
                // The slots lie scattered over far more memory than the caches hold:
                // ask for those a few flows ahead while this one is worked on.
                if let Some(&ahead) = members.get(j + PREFETCH_AHEAD) {
                    prefetch(&self.slots[ahead as usize]);
                }
                let s = slot as usize;
                if self.fixed_in[s] == epoch {
                    continue;
                }
                self.fixed_in[s] = epoch;
                let place = &mut self.slots[s];
                // Bytes left now, at the old rate; then the new rate.
                let remaining = (place.remaining - place.rate * elapsed).max(0.0);
                place.remaining = remaining;
                place.rate = share;
                let generation = place.generation;
                let flow = place.flow.as_ref().expect("member");
                for &o in flow.resources() {
                    let o = o as usize;
                    self.left[o] -= share;
                    self.unfixed[o] -= 1;
                    if o != r && !self.is_touched[o] {
                        self.is_touched[o] = true;
                        self.touched.push(o as u32);
                    }
                }
                // Its completion: within the window, or the earliest after it.
                let finish = if share > 0.0 {
                    Some(now + (remaining / share * 1e9).ceil() as Nanos)
                } else if remaining <= 0.0 {
                    Some(now)
                } else {
                    None
                };
                match finish {
                    Some(t) if t <= window_end => {
                        due.push(Reverse((t, slot, generation)));
                    }
                    Some(t) if t < first_after => {
                        first_after = t;
                        self.after.clear();
                        self.after.push(slot);
                    }
                    Some(t) if t == first_after => self.after.push(slot),
                    _ => {}
                }
            }
            // Each resource that lost flows gets its new share.
            for o in self.touched.drain(..) {
                let o = o as usize;
                self.is_touched[o] = false;
                if self.unfixed[o] > 0 {
                    let share = self.left[o].max(0.0) / f64::from(self.unfixed[o]);
                    self.heap.set(o as u32, share);
                }
            }
        }
        for &slot in &self.after {
            due.push(Reverse((
                first_after,
                slot,
                self.slots[slot as usize].generation,
            )));
        }
        self.completions = BinaryHeap::from(due);
    }
}

/// How many members ahead of the one being fixed a recomputation prefetches.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to bring `value` into the cache (a hint: no effect on results).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault, and `value` is a valid
    // reference anyway; SSE, which it needs, is part of every x86-64 CPU.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

impl Flow {
    fn resources(&self) -> &[ResourceId] {
        &self.path[..usize::from(self.hops)]
    }
}

/// An indexed min-heap of resources keyed by (fair share, id): one entry per
/// resource, updated in place as its share changes.
#[derive(Debug)]
struct ShareHeap {
    heap: Vec<u32>,
    /// Where each resource sits in `heap` (`ABSENT` if it does not).
    pos: Vec<u32>,
    share: Vec<f64>,
}

const ABSENT: u32 = u32::MAX;

impl ShareHeap {
    fn new(resources: usize) -> Self {
        Self {
            heap: Vec::new(),
            pos: vec![ABSENT; resources],
            share: vec![0.0; resources],
        }
    }

    fn clear(&mut self) {
        for &r in &self.heap {
            self.pos[r as usize] = ABSENT;
        }
        self.heap.clear();
    }

    /// Adds `r` without restoring the heap order (call [`Self::heapify`] after).
    fn insert_unordered(&mut self, r: u32, share: f64) {
        self.share[r as usize] = share;
        self.pos[r as usize] = self.heap.len() as u32;
        self.heap.push(r);
    }

    fn heapify(&mut self) {
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }

    /// Sets `r`'s share, adding it if absent.
    fn set(&mut self, r: u32, share: f64) {
        let old = self.share[r as usize];
        self.share[r as usize] = share;
        match self.pos[r as usize] {
            ABSENT => {
                self.pos[r as usize] = self.heap.len() as u32;
                self.heap.push(r);
                self.sift_up(self.heap.len() - 1);
            }
            i if share.total_cmp(&old) == Ordering::Less => self.sift_up(i as usize),
            i => self.sift_down(i as usize),
        }
    }

    /// Removes the resource with the smallest (share, id).
    fn pop(&mut self) -> Option<(u32, f64)> {
        let top = *self.heap.first()?;
        let last = self.heap.pop().expect("non-empty");
        self.pos[top as usize] = ABSENT;
        if !self.heap.is_empty() {
            self.heap[0] = last;
            self.pos[last as usize] = 0;
            self.sift_down(0);
        }
        Some((top, self.share[top as usize]))
    }

    fn less(&self, a: u32, b: u32) -> bool {
        let (sa, sb) = (self.share[a as usize], self.share[b as usize]);
        sa.total_cmp(&sb).then(a.cmp(&b)) == Ordering::Less
    }

    fn place(&mut self, i: usize, r: u32) {
        self.heap[i] = r;
        self.pos[r as usize] = i as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        let r = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            let p = self.heap[parent];
            if !self.less(r, p) {
                break;
            }
            self.place(i, p);
            i = parent;
        }
        self.place(i, r);
    }

    fn sift_down(&mut self, mut i: usize) {
        let r = self.heap[i];
        let n = self.heap.len();
        loop {
            let mut child = 2 * i + 1;
            if child >= n {
                break;
            }
            if child + 1 < n && self.less(self.heap[child + 1], self.heap[child]) {
                child += 1;
            }
            let c = self.heap[child];
            if !self.less(c, r) {
                break;
            }
            self.place(i, c);
            i = child;
        }
        self.place(i, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;
    const MB: f64 = 1e6;

    /// Runs the network until every flow has finished; returns (tag, finish time).
    fn run(net: &mut Network) -> Vec<(u64, f64)> {
        let mut out = Vec::new();
        let mut now = 0;
        loop {
            if let Some(t) = net.recompute_due(now) {
                now = t;
                net.recompute(now);
            }
            let Some(t) = net.next_completion() else {
                break;
            };
            now = t;
            for f in net.finish_until(now) {
                out.push((f.tag, f.at as f64 / 1e9));
            }
        }
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn two_flows_share_a_link_equally_then_one_takes_it_all() {
        // One link of 10 MB/s; flows of 10 MB and 30 MB. Together 5 MB/s each: the
        // first ends at 2 s (10 MB); the second has 20 MB left at 10 MB/s: ends at 4 s.
        let mut net = Network::new(vec![10.0 * MB], 0);
        net.add(&[0], 10_000_000, 1);
        net.add(&[0], 30_000_000, 2);
        let done = run(&mut net);
        assert_eq!(done.len(), 2);
        assert!(close(done[0].1, 2.0) && done[0].0 == 1, "{done:?}");
        assert!(close(done[1].1, 4.0) && done[1].0 == 2, "{done:?}");
        assert!(close(net.carried(0), 40.0 * MB));
    }

    #[test]
    fn a_bottleneck_uplink_caps_its_flows_and_frees_the_rest() {
        // Resources: 0 = a rack uplink of 4 MB/s; 1, 2, 3 = receivers' downlinks of
        // 10 MB/s. Flows A and B cross the uplink and go to 1 and 2; flow C goes
        // straight to 3 and shares 3's downlink with nothing. Max-min: A = B = 2 MB/s
        // (uplink shared), C = 10 MB/s.
        let mut net = Network::new(vec![4.0 * MB, 10.0 * MB, 10.0 * MB, 10.0 * MB], 0);
        net.add(&[0, 1], 2_000_000, 1);
        net.add(&[0, 2], 4_000_000, 2);
        net.add(&[3], 10_000_000, 3);
        let done = run(&mut net);
        // A: 2 MB at 2 MB/s = 1 s; then B alone on the uplink at 4 MB/s: 2 MB left
        // after 1 s, so 0.5 s more. C: 1 s.
        let at = |tag| done.iter().find(|d| d.0 == tag).unwrap().1;
        assert!(close(at(1), 1.0), "{done:?}");
        assert!(close(at(2), 1.5), "{done:?}");
        assert!(close(at(3), 1.0), "{done:?}");
    }

    #[test]
    fn max_min_gives_leftover_capacity_to_the_unconstrained_flow() {
        // A sender uplink (0) of 10 MB/s feeds two receivers: one with a 2 MB/s
        // downlink (1), one with 100 MB/s (2). Max-min: 2 and 8 MB/s (not 5 and 5).
        let mut net = Network::new(vec![10.0 * MB, 2.0 * MB, 100.0 * MB], 0);
        net.add(&[0, 1], 2_000_000, 1);
        net.add(&[0, 2], 8_000_000, 2);
        let done = run(&mut net);
        assert!(close(done[0].1, 1.0) && close(done[1].1, 1.0), "{done:?}");
    }

    #[test]
    fn removing_a_flow_reports_what_it_sent() {
        let mut net = Network::new(vec![10.0 * MB], 0);
        let a = net.add(&[0], 100_000_000, 1);
        net.recompute(0);
        assert_eq!(net.remove(S, a), 10_000_000);
        assert_eq!(net.remove(S, a), 0, "a stale id names nothing");
        assert_eq!(net.active(), 0);
    }

    /// The rates of every live flow, by slot.
    fn rates(net: &Network) -> Vec<(usize, f64)> {
        (0..net.slots.len())
            .filter(|&s| net.slots[s].flow.is_some())
            .map(|s| (s, net.slots[s].rate))
            .collect()
    }

    proptest::proptest! {
        /// Max-min fairness, checked by its definition: no resource carries more
        /// than its capacity, and every flow has a bottleneck: a full resource on
        /// which no flow is faster than it.
        #[test]
        fn rates_are_max_min_fair(
            capacity in proptest::collection::vec(1u32..1000, 1..12),
            paths in proptest::collection::vec(
                proptest::collection::vec(0usize..64, 1..=MAX_HOPS), 1..40),
            removed in proptest::collection::vec(0usize..40, 0..10),
        ) {
            let r = capacity.len();
            let mut net = Network::new(capacity.iter().map(|&c| f64::from(c)).collect(), 0);
            let mut ids = Vec::new();
            for path in &paths {
                let mut path: Vec<ResourceId> = path.iter().map(|&x| (x % r) as u32).collect();
                path.sort_unstable();
                path.dedup();
                ids.push(net.add(&path, 1_000_000, 0));
            }
            net.recompute(0);
            for &k in &removed {
                net.remove(S / 1000, ids[k % ids.len()]);
            }
            net.recompute(S / 1000);
            let rates = rates(&net);
            let mut load = vec![0.0; r];
            for &(s, rate) in &rates {
                for &x in net.slots[s].flow.as_ref().unwrap().resources() {
                    load[x as usize] += rate;
                }
            }
            for (x, (load, cap)) in load.iter().zip(&net.capacity).enumerate() {
                proptest::prop_assert!(*load <= cap * (1.0 + 1e-9), "resource {} over capacity", x);
            }
            for &(s, rate) in &rates {
                let flow = net.slots[s].flow.as_ref().unwrap();
                let bottleneck = flow.resources().iter().any(|&x| {
                    let x = x as usize;
                    let full = load[x] >= net.capacity[x] * (1.0 - 1e-9);
                    full && net.members[x].iter().all(|&o| net.slots[o as usize].rate <= rate * (1.0 + 1e-9))
                });
                proptest::prop_assert!(bottleneck, "flow {} at {} has no bottleneck", s, rate);
            }
        }
    }

    #[test]
    fn a_recompute_gap_delays_rate_changes_by_at_most_the_gap() {
        let mut net = Network::new(vec![10.0 * MB], S / 10);
        net.add(&[0], 10_000_000, 1);
        net.recompute(0);
        net.add(&[0], 10_000_000, 2);
        assert_eq!(net.recompute_due(S / 20), Some(S / 10));
    }
}
