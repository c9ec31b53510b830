//! Consistent hashing of tasks onto seed peers.
//!
//! Each task has one seed that goes back to source for it, cluster-wide.
//! A ring with virtual nodes keeps that choice stable when seeds come and go:
//! only the tasks of a departed seed move.

use std::collections::BTreeMap;
use weightcast_types::piece::piece_digest;
use weightcast_types::{PeerId, TaskId};

const VIRTUAL_NODES: u32 = 64;

/// The seeds, each at [`VIRTUAL_NODES`] points of a hash ring.
#[derive(Debug, Default)]
pub(crate) struct SeedRing {
    ring: BTreeMap<u64, PeerId>,
}

/// A point on the ring: the first 8 bytes of the data's sha256 (the digest
/// pieces use; any stable, well-spread hash would do).
fn point(data: &[u8]) -> u64 {
    let h = piece_digest(data);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first)
}

impl SeedRing {
    pub(crate) fn add(&mut self, seed: &str) {
        for v in 0..VIRTUAL_NODES {
            self.ring
                .insert(point(format!("{seed}#{v}").as_bytes()), seed.to_string());
        }
    }

    pub(crate) fn remove(&mut self, seed: &str) {
        self.ring.retain(|_, s| s != seed);
    }

    /// The seed for `task`, skipping any for which `exclude` is true.
    pub(crate) fn pick(&self, task: &TaskId, exclude: impl Fn(&str) -> bool) -> Option<&PeerId> {
        let p = point(task.as_bytes());
        self.ring
            .range(p..)
            .chain(self.ring.range(..p))
            .map(|(_, s)| s)
            .find(|s| !exclude(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_is_stable_and_only_moves_tasks_of_a_removed_seed() {
        let mut ring = SeedRing::default();
        for s in ["seed-a", "seed-b", "seed-c"] {
            ring.add(s);
        }
        let tasks: Vec<TaskId> = (0..300)
            .map(|i| TaskId::from_url(&format!("https://o/{i}")))
            .collect();
        let before: Vec<PeerId> = tasks
            .iter()
            .map(|t| ring.pick(t, |_| false).unwrap().clone())
            .collect();
        let spread = |s: &str| before.iter().filter(|b| b.as_str() == s).count();
        assert!(spread("seed-a") > 50 && spread("seed-b") > 50 && spread("seed-c") > 50);
        ring.remove("seed-b");
        for (t, b) in tasks.iter().zip(&before) {
            let now = ring.pick(t, |_| false).unwrap();
            if b != "seed-b" {
                assert_eq!(now, b);
            } else {
                assert_ne!(now, "seed-b");
            }
        }
        assert_eq!(ring.pick(&tasks[0], |_| true), None);
    }
}
