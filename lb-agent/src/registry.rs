//! Stable ids: a service's slot, a real server's id. An id stays with its owner while
//! the owner is configured and, once the owner is removed ("retired"), for as long as
//! something may still point at it: a connection entry, or a packet that read the old
//! maps. Only then is it given to another owner.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    time::Instant,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct Registry<K> {
    ids: HashMap<K, u32>,
    /// Retired ids, with when they were retired.
    retired: HashMap<u32, Instant>,
    free: Vec<u32>,
}

/// What a registry knows, as the agent saves it for the next (see `director::saved`).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SavedRegistry<K> {
    /// Every owner's id, retired ones too.
    pub ids: Vec<(K, u32)>,
    pub retired: Vec<u32>,
}

/// An id handed out, and whether it is new to its owner (its counters start at zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub id: u32,
    pub fresh: bool,
}

impl<K: Clone + Eq + Hash> Registry<K> {
    pub fn new(capacity: u32) -> Self {
        Self { ids: HashMap::new(), retired: HashMap::new(), free: (0..capacity).rev().collect() }
    }

    /// The registry `saved` describes; its retired ids count as retired `now`. An id
    /// `in_use` (named by a connection entry, say) that no owner has (a state saved
    /// before the maps changed) is held as retired too, never handed out while in use.
    pub fn restore(capacity: u32, saved: SavedRegistry<K>, in_use: &HashSet<u32>, now: Instant) -> Self {
        let ids: HashMap<K, u32> = saved.ids.into_iter().filter(|&(_, id)| id < capacity).collect();
        let owned: HashSet<u32> = ids.values().copied().collect();
        let unowned = in_use.iter().copied().filter(|id| *id < capacity && !owned.contains(id));
        let retired: HashMap<u32, Instant> =
            saved.retired.into_iter().filter(|id| owned.contains(id)).chain(unowned).map(|id| (id, now)).collect();
        let free = (0..capacity).rev().filter(|id| !owned.contains(id) && !retired.contains_key(id)).collect();
        Self { ids, retired, free }
    }

    pub fn save(&self) -> SavedRegistry<K> {
        let mut ids: Vec<(K, u32)> = self.ids.iter().map(|(owner, &id)| (owner.clone(), id)).collect();
        ids.sort_by_key(|&(_, id)| id);
        let mut retired: Vec<u32> = self.retired.keys().copied().collect();
        retired.sort_unstable();
        SavedRegistry { ids, retired }
    }

    /// Every id in use, retired ones too.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.values().copied()
    }

    pub fn get(&self, owner: &K) -> Option<u32> {
        self.ids.get(owner).copied()
    }

    /// The owner's id: the one it had (also if retired), else a free one. `None` when
    /// every id is taken; [`Registry::reclaim`] may free retired ones.
    pub fn assign(&mut self, owner: &K) -> Option<Assigned> {
        if let Some(&id) = self.ids.get(owner) {
            self.retired.remove(&id);
            return Some(Assigned { id, fresh: false });
        }
        let id = self.free.pop()?;
        self.ids.insert(owner.clone(), id);
        Some(Assigned { id, fresh: true })
    }

    /// The owner is no longer configured; its id is kept for it until reclaimed.
    pub fn retire(&mut self, owner: &K, now: Instant) {
        if let Some(&id) = self.ids.get(owner) {
            self.retired.entry(id).or_insert(now);
        }
    }

    /// Owners currently configured (not retired).
    pub fn active(&self) -> impl Iterator<Item = (&K, u32)> {
        self.ids.iter().map(|(owner, &id)| (owner, id)).filter(|(_, id)| !self.retired.contains_key(id))
    }

    /// Frees the ids retired before `before` that nothing in `in_use` points at.
    pub fn reclaim(&mut self, in_use: &HashSet<u32>, before: Instant) {
        let reclaimed: Vec<u32> = self
            .retired
            .iter()
            .filter(|&(id, &since)| since < before && !in_use.contains(id))
            .map(|(&id, _)| id)
            .collect();
        self.ids.retain(|_, id| !reclaimed.contains(id));
        for id in &reclaimed {
            self.retired.remove(id);
        }
        self.free.extend(&reclaimed);
    }

    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_owner_keeps_its_id_until_reclaimed() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut registry = Registry::new(2);
        let a = registry.assign(&"a").unwrap();
        assert_eq!(a, Assigned { id: 0, fresh: true });
        assert_eq!(registry.assign(&"a").unwrap(), Assigned { id: 0, fresh: false });
        registry.retire(&"a", t0);
        assert_eq!(registry.assign(&"a").unwrap(), Assigned { id: 0, fresh: false }, "re-added before reclaim");
        registry.retire(&"a", t0);
        registry.assign(&"b").unwrap();
        assert_eq!(registry.assign(&"c"), None, "a's id is still retired, not free");
        registry.reclaim(&HashSet::from([0]), later);
        assert_eq!(registry.assign(&"c"), None, "a connection still uses it");
        registry.reclaim(&HashSet::new(), t0);
        assert_eq!(registry.assign(&"c"), None, "retired just now: a packet may still be using it");
        registry.reclaim(&HashSet::new(), later);
        assert_eq!(registry.assign(&"c").unwrap(), Assigned { id: 0, fresh: true });
        assert_eq!(registry.active().count(), 2);
    }

    #[test]
    fn a_restored_registry_gives_the_same_ids_and_keeps_retired_ones_away() {
        let t0 = Instant::now();
        let mut registry = Registry::new(3);
        for owner in ["a", "b", "c"] {
            registry.assign(&owner).unwrap();
        }
        registry.retire(&"b", t0);
        let saved = registry.save();
        assert_eq!(saved, SavedRegistry { ids: vec![("a", 0), ("b", 1), ("c", 2)], retired: vec![1] });
        let mut restored = Registry::restore(4, saved, &HashSet::from([3]), t0);
        assert_eq!(restored.assign(&"c").unwrap(), Assigned { id: 2, fresh: false });
        assert_eq!(restored.assign(&"d"), None, "b's id stays retired, and 3, unowned, is in use");
        restored.reclaim(&HashSet::from([3]), t0 + Duration::from_secs(2));
        assert_eq!(restored.assign(&"d").unwrap(), Assigned { id: 1, fresh: true });
        assert_eq!(restored.assign(&"e"), None, "3 is still in use");
        restored.reclaim(&HashSet::new(), t0 + Duration::from_secs(2));
        assert_eq!(restored.assign(&"e").unwrap(), Assigned { id: 3, fresh: true });
    }
}
