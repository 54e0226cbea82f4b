//! The flow-level network: links with capacities, flows across them, and max-min
//! fair rates recomputed when flows start and end. No packets.
//!
//! A flow crosses a handful of resources (the sender's uplink, the receiver's
//! downlink, rack uplinks, optionally a shared CPU budget). Rates are max-min fair
//! (progressive filling: the most constrained resource fixes the rate of its flows,
//! which frees capacity elsewhere, and so on). Between recomputations every flow
//! moves at a constant rate, so its completion time is known exactly.
//!
//! Recomputing is `O(flows x resources per flow x log resources)`. For large runs,
//! recomputations can be spaced by at least `min_gap`: a flow that starts or ends in
//! between waits at most that long for its new rate. `min_gap = 0` recomputes at
//! every change (exact max-min at all times).

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

#[derive(Debug)]
struct Flow {
    /// The resources it crosses: the first `hops` of `path` (kept inline: the solver
    /// walks them for every flow).
    path: [ResourceId; MAX_HOPS],
    /// Where this flow sits in each of those resources' member lists.
    positions: [u32; MAX_HOPS],
    hops: u8,
    bytes: f64,
    /// Bytes left at `since`.
    remaining: f64,
    since: Nanos,
    rate: f64,
    tag: u64,
}

/// An f64 that orders totally (rates and shares are finite and non-negative).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
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
    slots: Vec<Option<Flow>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    active: usize,
    /// Completion times computed at the last recomputation (stale entries skipped).
    completions: BinaryHeap<Reverse<(Nanos, u32, u32)>>,
    dirty: bool,
    last_recompute: Option<Nanos>,
    min_gap: Nanos,
    recomputations: u64,
    /// The flows (slots) across each resource, kept as flows come and go.
    members: Vec<Vec<u32>>,
    // Scratch space reused by `recompute`.
    left: Vec<f64>,
    unfixed: Vec<u32>,
    touched: Vec<u32>,
    is_touched: Vec<bool>,
    heap: Vec<Reverse<(Share, u32)>>,
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
            heap: Vec::new(),
            capacity,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            active: 0,
            completions: BinaryHeap::new(),
            dirty: false,
            last_recompute: None,
            min_gap,
            recomputations: 0,
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

    /// Starts a flow of `bytes` across `resources` at `now`.
    pub fn add(&mut self, now: Nanos, resources: &[ResourceId], bytes: u64, tag: u64) -> FlowId {
        assert!(
            resources.len() <= MAX_HOPS,
            "a flow crosses at most {MAX_HOPS} resources"
        );
        let mut path = [0; MAX_HOPS];
        path[..resources.len()].copy_from_slice(resources);
        let flow = Flow {
            path,
            positions: [0; MAX_HOPS],
            hops: resources.len() as u8,
            bytes: bytes as f64,
            remaining: bytes as f64,
            since: now,
            rate: 0.0,
            tag,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(flow);
                s
            }
            None => {
                self.slots.push(Some(flow));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let flow = self.slots[slot as usize].as_mut().expect("just stored");
        for k in 0..usize::from(flow.hops) {
            let list = &mut self.members[flow.path[k] as usize];
            flow.positions[k] = list.len() as u32;
            list.push(slot);
        }
        self.active += 1;
        self.dirty = true;
        FlowId {
            slot,
            generation: self.generations[slot as usize],
        }
    }

    /// Stops a flow at `now`; returns the bytes it had transferred (0 if unknown).
    pub fn remove(&mut self, now: Nanos, id: FlowId) -> u64 {
        if self.generations.get(id.slot as usize) != Some(&id.generation) {
            return 0;
        }
        let Some(flow) = self.slots[id.slot as usize].take() else {
            return 0;
        };
        let done = (flow.bytes - remaining_at(&flow, now)).max(0.0);
        self.retire(id.slot, &flow, done);
        done as u64
    }

    fn retire(&mut self, slot: u32, flow: &Flow, transferred: f64) {
        for (&r, &at) in flow.resources().iter().zip(&flow.positions) {
            self.carried[r as usize] += transferred;
            let list = &mut self.members[r as usize];
            debug_assert_eq!(list[at as usize], slot);
            list.swap_remove(at as usize);
            // The flow moved into the hole learns its new position.
            if let Some(&moved) = list.get(at as usize) {
                let m = self.slots[moved as usize].as_mut().expect("member");
                let k = m
                    .resources()
                    .iter()
                    .position(|&x| x == r)
                    .expect("crosses r");
                m.positions[k] = at;
            }
        }
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
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
        self.generations[slot as usize] == generation && self.slots[slot as usize].is_some()
    }

    /// Removes and returns the flows that have finished by `now`.
    pub fn finish_until(&mut self, now: Nanos) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Some(t) = self.next_completion() {
            if t > now {
                break;
            }
            let Reverse((t, slot, generation)) = self.completions.pop().expect("peeked");
            let flow = self.slots[slot as usize].take().expect("current");
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
        self.dirty = false;
        self.last_recompute = Some(now);
        self.recomputations += 1;
        self.completions.clear();
        self.left.copy_from_slice(&self.capacity);
        self.heap.clear();
        for (r, m) in self.members.iter().enumerate() {
            self.unfixed[r] = m.len() as u32;
            if !m.is_empty() {
                self.heap
                    .push(Reverse((Share(self.left[r] / m.len() as f64), r as u32)));
            }
        }
        for flow in self.slots.iter_mut().flatten() {
            flow.remaining = remaining_at(flow, now);
            flow.since = now;
            flow.rate = f64::INFINITY;
        }
        // Progressive filling: the resource with the smallest fair share is the
        // bottleneck of its unfixed flows; fixing them frees capacity elsewhere.
        let mut heap = BinaryHeap::from(std::mem::take(&mut self.heap));
        while let Some(Reverse((Share(share), r))) = heap.pop() {
            let r = r as usize;
            if self.unfixed[r] == 0 {
                continue;
            }
            let current = self.left[r].max(0.0) / f64::from(self.unfixed[r]);
            if current != share {
                heap.push(Reverse((Share(current), r as u32)));
                continue;
            }
            for &slot in &self.members[r] {
                let flow = self.slots[slot as usize].as_mut().expect("member");
                if flow.rate.is_finite() {
                    continue;
                }
                flow.rate = share;
                for &o in flow.resources() {
                    let o = o as usize;
                    self.left[o] -= share;
                    self.unfixed[o] -= 1;
                    if o != r && !self.is_touched[o] {
                        self.is_touched[o] = true;
                        self.touched.push(o as u32);
                    }
                }
            }
            // Each resource that lost flows gets its new share once.
            for o in self.touched.drain(..) {
                let o = o as usize;
                self.is_touched[o] = false;
                if self.unfixed[o] > 0 {
                    let share = self.left[o].max(0.0) / f64::from(self.unfixed[o]);
                    heap.push(Reverse((Share(share), o as u32)));
                }
            }
        }
        self.heap = heap.into_vec();
        // Completion times: those within the window, and the earliest after it.
        let window_end = now.saturating_add(self.min_gap);
        let mut first_after = Nanos::MAX;
        let finish = |flow: &Flow| -> Option<Nanos> {
            if flow.rate > 0.0 && flow.rate.is_finite() {
                Some(now + (flow.remaining / flow.rate * 1e9).ceil() as Nanos)
            } else if flow.remaining <= 0.0 {
                Some(now)
            } else {
                None
            }
        };
        for flow in self.slots.iter().flatten() {
            if let Some(t) = finish(flow)
                && t > window_end
            {
                first_after = first_after.min(t);
            }
        }
        let mut due = Vec::new();
        for (slot, flow) in self.slots.iter().enumerate() {
            let Some(flow) = flow else { continue };
            if let Some(t) = finish(flow)
                && (t <= window_end || t == first_after)
            {
                due.push(Reverse((t, slot as u32, self.generations[slot])));
            }
        }
        self.completions = BinaryHeap::from(due);
    }
}

impl Flow {
    fn resources(&self) -> &[ResourceId] {
        &self.path[..usize::from(self.hops)]
    }
}

fn remaining_at(flow: &Flow, now: Nanos) -> f64 {
    let secs = now.saturating_sub(flow.since) as f64 / 1e9;
    (flow.remaining - flow.rate * secs).max(0.0)
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
        net.add(0, &[0], 10_000_000, 1);
        net.add(0, &[0], 30_000_000, 2);
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
        net.add(0, &[0, 1], 2_000_000, 1);
        net.add(0, &[0, 2], 4_000_000, 2);
        net.add(0, &[3], 10_000_000, 3);
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
        net.add(0, &[0, 1], 2_000_000, 1);
        net.add(0, &[0, 2], 8_000_000, 2);
        let done = run(&mut net);
        assert!(close(done[0].1, 1.0) && close(done[1].1, 1.0), "{done:?}");
    }

    #[test]
    fn removing_a_flow_reports_what_it_sent() {
        let mut net = Network::new(vec![10.0 * MB], 0);
        let a = net.add(0, &[0], 100_000_000, 1);
        net.recompute(0);
        assert_eq!(net.remove(S, a), 10_000_000);
        assert_eq!(net.remove(S, a), 0, "a stale id names nothing");
        assert_eq!(net.active(), 0);
    }

    #[test]
    fn a_recompute_gap_delays_rate_changes_by_at_most_the_gap() {
        let mut net = Network::new(vec![10.0 * MB], S / 10);
        net.add(0, &[0], 10_000_000, 1);
        net.recompute(0);
        net.add(S / 20, &[0], 10_000_000, 2);
        assert_eq!(net.recompute_due(S / 20), Some(S / 10));
    }
}
