//! A small map whose entries expire: the Hub endpoint's brief cache of
//! metadata answers, so a client's burst of HEADs and tree pages (and many
//! pods on one node starting at once) costs the Hub one request each.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (at, v) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // Still full of live entries: start over rather than grow.
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let c = TtlCache::new(Duration::from_millis(50), 2);
        c.insert("a", 1);
        assert_eq!(c.get(&"a"), Some(1));
        c.insert("b", 2);
        c.insert("c", 3);
        assert!(c.entries.lock().unwrap().len() <= 2);
        assert_eq!(c.get(&"c"), Some(3));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&"c"), None);
    }
}
