//! [`VecMap`], an ordered map kept as two sorted vectors (keys, and values at the same
//! positions).
//!
//! The scheduler's peer table, and the swarm simulator's per-peer tables, are small
//! (tens to hundreds of entries), change rarely and are read all the time: every
//! assignment walks every peer. A sorted vector gives them what a `BTreeMap` does
//! (lookup by key, iteration in key order) plus a stable position per entry between
//! changes, so a walk in key order can reach each entry by index instead of by a
//! search. The keys sit apart from the values, so a search reads a few dense cache
//! lines. Inserting and removing shift the vectors: linear, and rare.

use std::ops::Index;

/// An ordered map backed by sorted vectors. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Where `key` sits in key order, if present: an index into [`VecMap::keys`] and
    /// [`VecMap::values`], valid until the next insert or remove.
    pub fn position(&self, key: &K) -> Option<usize> {
        self.keys.binary_search(key).ok()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.values[i])
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).map(|i| &mut self.values[i])
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.keys.binary_search(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.values[i], value)),
            Err(i) => {
                self.keys.insert(i, key);
                self.values.insert(i, value);
                None
            }
        }
    }

    /// The value of `key`, inserting `make()` first if it is absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.keys.binary_search(&key) {
            Ok(i) => i,
            Err(i) => {
                self.keys.insert(i, key);
                self.values.insert(i, make());
                i
            }
        };
        &mut self.values[i]
    }

    /// Removes `key`; its value, if it was present.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        self.keys.remove(i);
        Some(self.values.remove(i))
    }

    /// The keys, in order.
    pub fn keys(&self) -> &[K] {
        &self.keys
    }

    /// The values, in the order of their keys.
    pub fn values(&self) -> &[V] {
        &self.values
    }

    /// The values, in the order of their keys, to change.
    pub fn values_mut(&mut self) -> &mut [V] {
        &mut self.values
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.keys.iter().zip(&self.values)
    }
}

impl<K: Ord, V> Index<&K> for VecMap<K, V> {
    type Output = V;

    /// The value of `key`.
    ///
    /// # Panics
    /// If `key` is absent.
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key present in VecMap")
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, K>, std::slice::Iter<'a, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.iter().zip(&self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random operations leave a `VecMap` equal to a `BTreeMap` given the same ones.
    #[test]
    fn behaves_as_a_btree_map() {
        let mut ours = VecMap::new();
        let mut theirs = BTreeMap::new();
        // A small deterministic generator (xorshift): keys collide often.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..5_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 64) as u32;
            match x % 4 {
                0 | 1 => assert_eq!(ours.insert(key, step), theirs.insert(key, step)),
                2 => assert_eq!(ours.remove(&key), theirs.remove(&key)),
                _ => {
                    *ours.get_or_insert_with(key, || step) += 1;
                    *theirs.entry(key).or_insert(step) += 1;
                }
            }
            assert_eq!(ours.get(&key), theirs.get(&key));
            assert_eq!(ours.contains_key(&key), theirs.contains_key(&key));
        }
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.iter().eq(theirs.iter()));
        for (i, k) in ours.keys().iter().enumerate() {
            assert_eq!(ours.position(k), Some(i));
            assert_eq!(ours[k], ours.values()[i]);
        }
    }

    #[test]
    fn an_absent_key_has_no_position() {
        let mut m = VecMap::new();
        m.insert(3, "c");
        m.insert(1, "a");
        assert_eq!(m.keys(), &[1, 3]);
        assert_eq!(m.position(&2), None);
        assert_eq!(m.remove(&2), None);
        assert_eq!(m.len(), 2);
        assert!(!m.is_empty());
    }
}
