//! Walking a sparse set of positions of a list as if the list were a ring.
//!
//! Phase 1 walks a task's eligible parents, and the first-piece top-up its
//! peers, from a point that rotates with the peer asking, wrapping at the
//! end. Most positions fail the walk's test at 10,000 peers (full parents,
//! children with all their parents), so the core keeps the positions that
//! may pass in a `BTreeSet` and walks only those: the same positions in the
//! same order as walking the whole list, at the cost of the ones that may
//! pass.

use std::collections::BTreeSet;

/// The members of `set` among the `len` positions of a ring of `n` that
/// start at `start` (wrapping past `n - 1` to 0), in ring order. `len` is
/// capped at `n`; `start` must be below `n` unless `n` is 0.
pub(crate) fn cyclic_range(
    set: &BTreeSet<usize>,
    n: usize,
    start: usize,
    len: usize,
) -> impl Iterator<Item = usize> + '_ {
    let len = len.min(n);
    let start = if n == 0 { 0 } else { start % n };
    let end = start + len;
    let (head, tail) = if end <= n {
        (start..end, 0..0)
    } else {
        (start..n, 0..end - n)
    };
    set.range(head).chain(set.range(tail)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_same_positions_as_the_whole_ring() {
        let set: BTreeSet<usize> = [0, 2, 3, 7, 9].into();
        let n = 10;
        for start in 0..n {
            for len in 0..=n + 2 {
                let whole: Vec<usize> = (0..len.min(n))
                    .map(|i| (start + i) % n)
                    .filter(|p| set.contains(p))
                    .collect();
                let walked: Vec<usize> = cyclic_range(&set, n, start, len).collect();
                assert_eq!(walked, whole, "start {start} len {len}");
            }
        }
        assert_eq!(cyclic_range(&BTreeSet::new(), 0, 0, 5).count(), 0);
    }
}
