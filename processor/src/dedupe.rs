//! The in-memory fast path in front of `ON CONFLICT DO NOTHING`: a bounded set of recently
//! stored (device, fix time) pairs, and a bounded map of each device's speed-check state (its
//! [`Track`]: the anchor, the fix awaiting confirmation, a relocation in progress). Both are only
//! ever filled from what the database has committed (a batch's tracks are settled after its
//! commit), so a miss costs a database round trip and a hit is always right.

use gps_domain::validation::{PreviousFix, Track};
use gps_store::positions::FixKey;
use std::collections::{HashMap, HashSet, VecDeque};
use uuid::Uuid;

/// A bounded set of stored fix keys, evicting the oldest insertions first.
#[derive(Debug)]
pub struct DedupeCache {
    set: HashSet<FixKey>,
    order: VecDeque<FixKey>,
    capacity: usize,
}

impl DedupeCache {
    /// A cache holding at most `capacity` keys (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::with_capacity(capacity.min(1 << 20)),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            capacity,
        }
    }

    /// Whether `key` is known to be stored.
    pub fn contains(&self, key: &FixKey) -> bool {
        self.set.contains(key)
    }

    /// Remember that `key` is stored.
    pub fn insert(&mut self, key: FixKey) {
        if self.capacity == 0 || !self.set.insert(key) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Each device's speed-check state, bounded: when full it is cleared, and the next batch
/// reloads what it needs from `last_positions`, whose newest stored fix becomes the anchor again
/// (what awaited confirmation is forgotten, which only makes the next fixes judged against the
/// stored track).
#[derive(Debug)]
pub struct DeviceCache {
    map: HashMap<Uuid, Track>,
    capacity: usize,
}

impl DeviceCache {
    /// A cache of at most `capacity` devices.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// `Some(anchor)` when the device is known (`anchor` is `None` for a device with no
    /// confirmed fix yet), `None` when it must be looked up.
    pub fn get(&self, device: &Uuid) -> Option<Option<PreviousFix>> {
        self.map.get(device).map(|track| track.anchor)
    }

    /// The device's whole speed-check state, when known.
    pub fn track(&self, device: &Uuid) -> Option<Track> {
        self.map.get(device).copied()
    }

    /// Record what the database says about `device`: its newest stored fix, if any.
    pub fn set(&mut self, device: Uuid, previous: Option<PreviousFix>) {
        self.put(device, Track::from_stored(previous));
    }

    /// Record the device's state after a committed batch.
    pub fn put(&mut self, device: Uuid, track: Track) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&device) {
            self.map.clear();
        }
        self.map.insert(device, track);
    }

    /// Move the device's anchor forward to `fix` (a fix known to be confirmed) if it is newer.
    pub fn advance(&mut self, device: Uuid, fix: PreviousFix) {
        let track = self.track(&device).unwrap_or_default();
        if track
            .anchor
            .is_none_or(|current| fix.taken() > current.taken())
        {
            self.put(device, Track::from_stored(Some(fix)));
        }
    }

    /// Forget everything (e.g. after partitions moved to another instance).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_cache_is_bounded_and_evicts_oldest_first() {
        let device = Uuid::new_v4();
        let mut cache = DedupeCache::new(3);
        for t in 0..5 {
            cache.insert((device, t));
        }
        cache.insert((device, 4));
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains(&(device, 1)));
        assert!(cache.contains(&(device, 2)) && cache.contains(&(device, 4)));
        let mut off = DedupeCache::new(0);
        off.insert((device, 1));
        assert!(off.is_empty());
    }

    #[test]
    fn device_cache_only_moves_forward_and_stays_bounded() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let fix = |t| PreviousFix {
            fix_time: t,
            lat: 1.0,
            lon: 1.0,
            accuracy_m: None,
            received_at: t,
        };
        let mut cache = DeviceCache::new(1);
        assert_eq!(cache.get(&a), None);
        cache.advance(a, fix(10));
        cache.advance(a, fix(5));
        assert_eq!(cache.get(&a), Some(Some(fix(10))));
        cache.set(b, None);
        assert_eq!(cache.get(&a), None, "cleared when full");
        assert_eq!(cache.get(&b), Some(None));
    }
}
