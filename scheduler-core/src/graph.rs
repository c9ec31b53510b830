//! The peer graph: which parents each child was planned, per task, and how
//! many child edges each host carries over all its tasks.
//!
//! A host's child count is what phase 1 checks against its upload slots, so
//! it must always equal the host's child edges. Keeping the two in step by
//! hand at every site that adds or drops an edge is how they drift apart;
//! here they change together, in [`Graph::add_edge`], [`Graph::remove_edge`]
//! and [`Graph::remove_peer`], and nothing else can touch them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use weightcast_types::{PeerId, TaskId};

/// Nobody's parents or children: what lookups of an unknown peer return.
static NONE: BTreeSet<PeerId> = BTreeSet::new();

/// `(parent, child)` pairs, for invariant tests.
#[cfg(test)]
pub(crate) type EdgeList = BTreeSet<(PeerId, PeerId)>;

#[derive(Debug, Default)]
pub(crate) struct Graph {
    tasks: BTreeMap<TaskId, TaskEdges>,
    /// Child edges per host, over all tasks; hosts with none are absent.
    child_count: BTreeMap<PeerId, u32>,
}

/// One task's edges, indexed both ways. Peers without edges are absent.
#[derive(Debug, Default)]
struct TaskEdges {
    /// child → its parents
    parents: BTreeMap<PeerId, BTreeSet<PeerId>>,
    /// parent → its children
    children: BTreeMap<PeerId, BTreeSet<PeerId>>,
}

/// Removes `item` from the set under `key`, dropping the set once empty.
fn remove_from(map: &mut BTreeMap<PeerId, BTreeSet<PeerId>>, key: &str, item: &str) -> bool {
    let Some(set) = map.get_mut(key) else {
        return false;
    };
    let removed = set.remove(item);
    if set.is_empty() {
        map.remove(key);
    }
    removed
}

impl Graph {
    /// Plans `parent` for `child` in `task`; false if it already was.
    pub(crate) fn add_edge(&mut self, task: TaskId, parent: &str, child: &str) -> bool {
        let edges = self.tasks.entry(task).or_default();
        if !edges
            .parents
            .entry(child.to_string())
            .or_default()
            .insert(parent.to_string())
        {
            return false;
        }
        edges
            .children
            .entry(parent.to_string())
            .or_default()
            .insert(child.to_string());
        *self.child_count.entry(parent.to_string()).or_default() += 1;
        true
    }

    /// Drops the edge `parent → child` in `task`; false if there was none.
    pub(crate) fn remove_edge(&mut self, task: TaskId, parent: &str, child: &str) -> bool {
        let Some(edges) = self.tasks.get_mut(&task) else {
            return false;
        };
        if !remove_from(&mut edges.parents, child, parent) {
            return false;
        }
        remove_from(&mut edges.children, parent, child);
        if edges.parents.is_empty() && edges.children.is_empty() {
            self.tasks.remove(&task);
        }
        self.uncount(parent, 1);
        true
    }

    /// Drops every parent of `child` in `task`; returns them.
    pub(crate) fn remove_parents(&mut self, task: TaskId, child: &str) -> BTreeSet<PeerId> {
        let parents = self.parents(task, child).clone();
        for p in &parents {
            self.remove_edge(task, p, child);
        }
        parents
    }

    /// Takes `peer` out of `task`'s graph: every edge to or from it goes.
    /// Returns the children it had (they need telling, and new parents).
    pub(crate) fn remove_peer(&mut self, task: TaskId, peer: &str) -> BTreeSet<PeerId> {
        let Some(edges) = self.tasks.get_mut(&task) else {
            return BTreeSet::new();
        };
        let parents = edges.parents.remove(peer).unwrap_or_default();
        let children = edges.children.remove(peer).unwrap_or_default();
        for p in &parents {
            remove_from(&mut edges.children, p, peer);
        }
        for c in &children {
            remove_from(&mut edges.parents, c, peer);
        }
        if edges.parents.is_empty() && edges.children.is_empty() {
            self.tasks.remove(&task);
        }
        for p in &parents {
            self.uncount(p, 1);
        }
        self.uncount(peer, children.len() as u32);
        children
    }

    fn uncount(&mut self, host: &str, n: u32) {
        if n == 0 {
            return;
        }
        let Some(c) = self.child_count.get_mut(host) else {
            unreachable!("{host} has child edges, so it has a count");
        };
        *c -= n;
        if *c == 0 {
            self.child_count.remove(host);
        }
    }

    /// `child`'s parents in `task`.
    pub(crate) fn parents(&self, task: TaskId, child: &str) -> &BTreeSet<PeerId> {
        self.tasks
            .get(&task)
            .and_then(|e| e.parents.get(child))
            .unwrap_or(&NONE)
    }

    /// `parent`'s children in `task`.
    pub(crate) fn children(&self, task: TaskId, parent: &str) -> &BTreeSet<PeerId> {
        self.tasks
            .get(&task)
            .and_then(|e| e.children.get(parent))
            .unwrap_or(&NONE)
    }

    /// Child edges on `host`, over all tasks.
    pub(crate) fn child_count(&self, host: &str) -> u32 {
        self.child_count.get(host).copied().unwrap_or(0)
    }

    /// Whether `peer` is reachable from `ancestor` along child edges (a
    /// peer reaches itself): planning `peer` as a parent of `ancestor`
    /// would close a cycle.
    ///
    /// It walks up from `peer`, not down from `ancestor`: collecting every
    /// descendant of a child high in a 10,000-peer graph costs O(peers) per
    /// decision. A child without children (a newcomer, a leaf) has only
    /// itself below it. `cleared` holds peers known not to lie below
    /// `ancestor`, shared by the candidates of one decision so that their
    /// common ancestors are walked once.
    pub(crate) fn reaches<'g>(
        &'g self,
        task: TaskId,
        ancestor: &str,
        peer: &'g str,
        cleared: &mut HashSet<&'g str>,
    ) -> bool {
        if ancestor == peer {
            return true;
        }
        let Some(edges) = self.tasks.get(&task) else {
            return false;
        };
        if !edges.children.contains_key(ancestor) {
            return false;
        }
        let mut seen: HashSet<&'g str> = HashSet::new();
        let mut stack: Vec<&'g str> = vec![peer];
        while let Some(p) = stack.pop() {
            if p == ancestor {
                return true;
            }
            if cleared.contains(p) || !seen.insert(p) {
                continue;
            }
            if let Some(parents) = edges.parents.get(p) {
                stack.extend(parents.iter().map(String::as_str));
            }
        }
        cleared.extend(seen);
        false
    }

    /// Every peer reachable from `from` along child edges, `from` included
    /// (the reference [`Graph::reaches`] is tested against).
    #[cfg(test)]
    pub(crate) fn descendants(&self, task: TaskId, from: &str) -> HashSet<PeerId> {
        let mut seen = HashSet::new();
        let mut queue = std::collections::VecDeque::from([from.to_string()]);
        while let Some(p) = queue.pop_front() {
            if !seen.insert(p.clone()) {
                continue;
            }
            queue.extend(self.children(task, &p).iter().cloned());
        }
        seen
    }

    /// Hosts with a nonzero count, with it (for invariant tests).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> &BTreeMap<PeerId, u32> {
        &self.child_count
    }

    /// Tasks with at least one edge (for invariant tests).
    #[cfg(test)]
    pub(crate) fn task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.keys().copied()
    }

    /// Every `(parent, child)` edge of `task`, read from the child side and
    /// from the parent side: the two indexes must agree.
    #[cfg(test)]
    pub(crate) fn edges_both_ways(&self, task: TaskId) -> (EdgeList, EdgeList) {
        let Some(e) = self.tasks.get(&task) else {
            return Default::default();
        };
        let from_children = e
            .parents
            .iter()
            .flat_map(|(c, ps)| ps.iter().map(move |p| (p.clone(), c.clone())))
            .collect();
        let from_parents = e
            .children
            .iter()
            .flat_map(|(p, cs)| cs.iter().map(move |c| (p.clone(), c.clone())))
            .collect();
        (from_children, from_parents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> TaskId {
        TaskId([n; 32])
    }

    #[test]
    fn counts_follow_edges_in_both_directions() {
        let mut g = Graph::default();
        assert!(g.add_edge(t(1), "p", "a"));
        assert!(!g.add_edge(t(1), "p", "a"), "an edge is added once");
        assert!(g.add_edge(t(1), "p", "b"));
        assert!(g.add_edge(t(2), "p", "a"));
        assert!(g.add_edge(t(1), "a", "b"));
        assert_eq!(g.child_count("p"), 3);
        assert_eq!(g.child_count("a"), 1);

        assert!(g.remove_edge(t(2), "p", "a"));
        assert!(!g.remove_edge(t(2), "p", "a"));
        assert_eq!(g.child_count("p"), 2);

        let children = g.remove_peer(t(1), "a");
        assert_eq!(children, BTreeSet::from(["b".to_string()]));
        assert_eq!(g.child_count("p"), 1);
        assert_eq!(g.child_count("a"), 0);
        assert_eq!(g.parents(t(1), "b"), &BTreeSet::from(["p".to_string()]));

        assert_eq!(g.remove_parents(t(1), "b").len(), 1);
        assert_eq!(g.child_count("p"), 0);
        assert!(g.counts().is_empty() && g.task_ids().next().is_none());
    }

    #[test]
    fn reaches_agrees_with_the_descendants_walk() {
        // A small DAG with shared ancestors: s → a, b; a → c; b → c, d; c → e.
        let mut g = Graph::default();
        for (p, c) in [
            ("s", "a"),
            ("s", "b"),
            ("a", "c"),
            ("b", "c"),
            ("b", "d"),
            ("c", "e"),
        ] {
            g.add_edge(t(1), p, c);
        }
        let peers = ["s", "a", "b", "c", "d", "e", "x"];
        for from in peers {
            let below = g.descendants(t(1), from);
            let mut cleared = HashSet::new();
            for p in peers {
                assert_eq!(
                    g.reaches(t(1), from, p, &mut cleared),
                    below.contains(p),
                    "{p} below {from}"
                );
            }
        }
    }
}
