use super::*;
use crate::config::Weights;
use std::time::Duration;

fn host(id: &str, seed: bool, slots: u32) -> HostInfo {
    HostInfo {
        peer_id: id.into(),
        hostname: format!("host-{id}"),
        piece_addr: format!("{id}:1"),
        zone: String::new(),
        rack: String::new(),
        seed,
        upload_slots: slots,
        rdma: false,
        host_id: String::new(),
    }
}

fn task() -> TaskId {
    TaskId::from_url("https://origin/model.bin")
}

/// The clock every test starts from; later times are `t0() + Duration`.
fn t0() -> Instant {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| *t)
}

fn hello(core: &mut Core, info: HostInfo) -> Vec<Outbound> {
    core.hello(info, t0())
}

fn register(core: &mut Core, peer: &str) -> Vec<Outbound> {
    register_task(core, peer, task(), t0())
}

fn register_task(core: &mut Core, peer: &str, t: TaskId, now: Instant) -> Vec<Outbound> {
    core.handle(
        peer,
        PeerEvent::Register {
            task: t,
            url: "https://origin/model.bin".into(),
            have: vec![],
            content_length: None,
            digest: None,
        },
        now,
    )
}

fn done(core: &mut Core, peer: &str, num: u32) -> Vec<Outbound> {
    done_at(core, peer, task(), num, t0())
}

fn done_at(core: &mut Core, peer: &str, t: TaskId, num: u32, now: Instant) -> Vec<Outbound> {
    core.handle(
        peer,
        PeerEvent::PieceDone {
            task: t,
            num,
            digest: [num as u8; 32],
        },
        now,
    )
}

fn failed(core: &mut Core, child: &str, parent: &str, now: Instant) -> Vec<Outbound> {
    core.handle(
        child,
        PeerEvent::PieceFailed {
            task: task(),
            num: 0,
            parent: parent.into(),
        },
        now,
    )
}

fn parents_in(out: &[Outbound], to: &str) -> Vec<String> {
    out.iter()
        .filter(|o| o.to == to)
        .filter_map(|o| match &o.msg {
            ToPeer::Parents(p) => Some(p.iter().map(|p| p.peer_id.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

fn dag() -> Core {
    Core::new(Config {
        candidate_parents: 4,
        acyclic: true,
        ..Config::default()
    })
}

#[test]
fn in_a_mesh_two_peers_trade_both_ways_but_not_in_a_dag() {
    for (mut core, both_ways) in [(Core::default(), true), (dag(), false)] {
        hello(&mut core, host("seed", true, 8));
        for p in ["a", "b"] {
            hello(&mut core, host(p, false, 8));
            register(&mut core, p);
        }
        done(&mut core, "seed", 0);
        done(&mut core, "seed", 1);
        done(&mut core, "a", 0);
        done(&mut core, "b", 1);
        let a_serves_b = core.parents_of(&task(), "b").contains(&"a".to_string());
        let b_serves_a = core.parents_of(&task(), "a").contains(&"b".to_string());
        assert!(a_serves_b || b_serves_a);
        assert_eq!(a_serves_b && b_serves_a, both_ways);
    }
}

#[test]
fn first_child_triggers_the_seed_and_waits_for_it() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    hello(&mut core, host("a", false, 8));
    let out = register(&mut core, "a");
    assert!(out.iter().any(|o| o.to == "seed"
        && o.task == task()
        && o.msg
            == ToPeer::SeedTask {
                url: "https://origin/model.bin".into(),
                digest: None,
            }));
    assert_eq!(parents_in(&out, "a"), vec!["seed"]);
    assert_eq!(core.stats.seeds_triggered, 1);
    // A second child does not trigger the seed again.
    hello(&mut core, host("b", false, 8));
    let out = register(&mut core, "b");
    assert!(!out.iter().any(|o| matches!(o.msg, ToPeer::SeedTask { .. })));
}

#[test]
fn without_a_seed_the_first_peer_goes_back_to_source_and_serves_the_rest() {
    let mut core = Core::default();
    hello(&mut core, host("a", false, 8));
    hello(&mut core, host("b", false, 8));
    let out = register(&mut core, "a");
    assert_eq!(
        out.last().map(|o| &o.msg),
        Some(&ToPeer::BackToSource {
            reason: SourceReason::NoSeed
        })
    );
    let out = register(&mut core, "b");
    assert_eq!(parents_in(&out, "b"), vec!["a"]);
    assert_eq!(core.stats.back_to_source, 1);
}

#[test]
fn piece_completion_reaches_children_and_makes_a_new_parent_at_once() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    let out = done(&mut core, "seed", 0);
    for c in ["a", "b"] {
        assert!(out.iter().any(|o| o.to == c
            && o.msg
                == ToPeer::Available {
                    parent: "seed".into(),
                    num: 0,
                    digest: [0; 32]
                }));
    }
    // `a`'s first piece makes it a candidate for `b` immediately.
    let out = done(&mut core, "a", 0);
    assert_eq!(parents_in(&out, "b"), vec!["a"]);
    let parent = out.iter().find_map(|o| match &o.msg {
        ToPeer::Parents(p) => Some(p[0].clone()),
        _ => None,
    });
    assert_eq!(
        parent.map(|p| p.pieces),
        Some(vec![(0, [0; 32])]),
        "parents come with their pieces"
    );
}

#[test]
fn a_parents_rdma_capability_reaches_its_children() {
    let mut c = Core::default();
    hello(
        &mut c,
        HostInfo {
            rdma: true,
            ..host("seed", true, 8)
        },
    );
    let mut out = Vec::new();
    for p in ["x", "y"] {
        hello(&mut c, host(p, false, 8));
        out.extend(register(&mut c, p));
    }
    out.extend(done(&mut c, "seed", 0));
    out.extend(done(&mut c, "x", 0));
    let offered: Vec<(String, bool)> = out
        .iter()
        .filter(|o| o.to == "y")
        .filter_map(|o| match &o.msg {
            ToPeer::Parents(p) => Some(p.iter().map(|p| (p.peer_id.clone(), p.rdma))),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(offered.contains(&("x".to_string(), false)), "{offered:?}");
    assert!(offered.contains(&("seed".to_string(), true)), "{offered:?}");
}

#[test]
fn peers_on_the_same_host_never_serve_each_other() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    // Same host name and same address: one machine, two processes.
    let mut a = host("a", false, 8);
    a.hostname = "same".into();
    a.piece_addr = "10.0.0.1:7430".into();
    let mut b = host("b", false, 8);
    b.hostname = "same".into();
    b.piece_addr = "10.0.0.1:7431".into();
    hello(&mut core, a);
    hello(&mut core, b);
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "a", 0);
    assert_eq!(core.parents_of(&task(), "b"), vec!["seed"]);
}

#[test]
fn hosts_that_share_a_host_name_but_not_an_address_form_a_swarm() {
    let mut core = Core::default();
    // Cloned VMs all named localhost, the seed among them.
    let named = |id: &str, seed: bool, ip: &str| {
        let mut h = host(id, seed, 8);
        h.hostname = "localhost".into();
        h.piece_addr = format!("{ip}:7430");
        h
    };
    hello(&mut core, named("seed", true, "10.0.0.1"));
    hello(&mut core, named("a", false, "10.0.0.2"));
    hello(&mut core, named("b", false, "10.0.0.3"));
    register(&mut core, "a");
    assert_eq!(
        core.parents_of(&task(), "a"),
        vec!["seed"],
        "the seed is a parent"
    );
    register(&mut core, "b");
    // The seed's digest first: a piece counts only once its source reported it.
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    let mut pb = core.parents_of(&task(), "b");
    pb.sort();
    assert_eq!(pb, vec!["a", "seed"], "a serves b");

    // An explicit host id decides over names and addresses.
    let mut core = Core::default();
    let with_id = |id: &str, seed: bool, host_id: &str| {
        let mut h = host(id, seed, 8);
        h.host_id = host_id.into();
        h
    };
    hello(&mut core, with_id("seed", true, "h0"));
    hello(&mut core, with_id("a", false, "h1"));
    hello(&mut core, with_id("b", false, "h1"));
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "a", 0);
    assert_eq!(core.parents_of(&task(), "b"), vec!["seed"]);
}

#[test]
fn the_source_on_a_childs_own_host_still_serves_it() {
    let mut core = Core::default();
    let mut seed = host("seed", true, 8);
    seed.host_id = "box".into();
    let mut a = host("a", false, 8);
    a.host_id = "box".into();
    hello(&mut core, seed);
    hello(&mut core, a);
    register(&mut core, "a");
    assert_eq!(core.parents_of(&task(), "a"), vec!["seed"]);
}

fn source_request(core: &mut Core, peer: &str, now: Instant) -> Vec<Outbound> {
    core.handle(peer, PeerEvent::SourceRequest { task: task() }, now)
}

fn granted(out: &[Outbound], to: &str) -> bool {
    out.iter().any(|o| {
        o.to == to
            && o.msg
                == ToPeer::BackToSource {
                    reason: SourceReason::Granted,
                }
    })
}

#[test]
fn a_stalled_peer_gets_other_parents_first_then_a_grant_within_the_budget() {
    let mut core = Core::new(Config {
        max_back_to_source: 1,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b", "c"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "b", 0);
    // c reported b broken; once that block expires, c's request finds b
    // again: other parents, no grant.
    failed(&mut core, "c", "b", t0());
    assert!(!core.parents_of(&task(), "c").contains(&"b".to_string()));
    let later = t0() + Duration::from_secs(61);
    let out = source_request(&mut core, "c", later);
    assert!(!granted(&out, "c"), "{out:?}");
    assert!(parents_in(&out, "c").contains(&"b".to_string()), "{out:?}");
    // a asks: phase 1 has nobody new for it, so it is granted — the task's
    // one back-to-source slot.
    let out = source_request(&mut core, "a", later);
    assert!(granted(&out, "a"), "{out:?}");
    assert_eq!(core.origin_fetchers(&task()), 1);
    assert_eq!(core.stats.source_grants, 1);
    // c asks again: the peer now fetching from the origin is a new parent
    // for it; asked once more, with the budget full, c waits.
    let out = source_request(&mut core, "c", later);
    assert_eq!(parents_in(&out, "c"), vec!["a".to_string()]);
    let out = source_request(&mut core, "c", later);
    assert!(!granted(&out, "c"));
    assert_eq!(core.stats.source_refusals, 1);
    // a finishes: its slot is free again.
    core.handle("a", PeerEvent::TaskDone { task: task() }, later);
    assert_eq!(core.origin_fetchers(&task()), 0);
    let out = source_request(&mut core, "c", later);
    assert!(granted(&out, "c"), "{out:?}");
}

#[test]
fn when_the_seed_dies_at_most_the_budget_goes_to_the_origin() {
    let mut core = Core::new(Config {
        max_back_to_source: 2,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 8));
    let peers: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    for p in &peers {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "p3", 0);
    core.disconnect("seed", t0());
    // The most advanced peer stands in as the source.
    assert_eq!(core.origin_fetchers(&task()), 1);
    let mut grants = 0;
    for round in 0..3 {
        for p in &peers {
            let out = source_request(&mut core, p, t0() + Duration::from_secs(30 * round));
            grants += granted(&out, p) as usize;
        }
    }
    assert_eq!(
        grants, 1,
        "the budget of 2 holds one stand-in and one grant"
    );
    assert_eq!(core.origin_fetchers(&task()), 2);
}

#[test]
fn with_the_budget_spent_nobody_goes_and_a_seed_that_connects_takes_the_task() {
    let mut core = Core::new(Config {
        max_back_to_source: 0,
        ..Config::default()
    });
    hello(&mut core, host("a", false, 8));
    let out = register(&mut core, "a");
    assert!(
        !out.iter()
            .any(|o| matches!(o.msg, ToPeer::BackToSource { .. })),
        "no budget: not even the first peer goes: {out:?}"
    );
    assert!(!granted(&source_request(&mut core, "a", t0()), "a"));
    assert_eq!(core.origin_fetchers(&task()), 0);
    let out = hello(&mut core, host("seed", true, 8));
    assert!(
        out.iter()
            .any(|o| o.to == "seed" && matches!(o.msg, ToPeer::SeedTask { .. })),
        "{out:?}"
    );
}

#[test]
fn with_the_seed_gone_complete_peers_serve_a_newcomer() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
        // The seed (the source) reports the piece before the others do.
        done(&mut core, "seed", 0);
        done(&mut core, p, 0);
        core.handle(p, PeerEvent::TaskDone { task: task() }, t0());
    }
    core.disconnect("seed", t0());
    hello(&mut core, host("new", false, 8));
    let out = register(&mut core, "new");
    assert!(
        !out.iter()
            .any(|o| matches!(o.msg, ToPeer::BackToSource { .. })),
        "{out:?}"
    );
    let mut parents = core.parents_of(&task(), "new");
    parents.sort();
    assert_eq!(parents, vec!["a", "b"]);
}

#[test]
fn an_origin_budget_is_shared_by_the_peers_fetching_from_it() {
    let url = "https://hub.example/model.bin";
    let mut core = Core::new(Config {
        origin_rate_limits: BTreeMap::from([("hub.example".to_string(), 100)]),
        ..Config::default()
    });
    hello(&mut core, host("s1", true, 8));
    hello(&mut core, host("s2", true, 8));
    hello(&mut core, host("p", false, 8));
    let budget = |out: &[Outbound], to: &str| {
        out.iter().find_map(|o| match &o.msg {
            ToPeer::OriginBudget {
                origin,
                bytes_per_second,
            } if o.to == to => {
                assert_eq!(origin, "https://hub.example:443");
                Some(*bytes_per_second)
            }
            _ => None,
        })
    };
    let reg = |core: &mut Core, t: TaskId| {
        core.handle(
            "p",
            PeerEvent::Register {
                task: t,
                url: url.into(),
                have: vec![],
                content_length: None,
                digest: None,
            },
            t0(),
        )
    };
    // Two tasks from one origin land on the two seeds (tried until they do).
    let mut tasks = Vec::new();
    let mut seeds = BTreeMap::new();
    for i in 0..64u8 {
        let t = TaskId([i; 32]);
        let out = reg(&mut core, t);
        let seed = out
            .iter()
            .find(|o| matches!(o.msg, ToPeer::SeedTask { .. }))
            .map(|o| o.to.clone())
            .unwrap();
        if let std::collections::btree_map::Entry::Vacant(e) = seeds.entry(seed.clone()) {
            e.insert(t);
            tasks.push((t, out));
        }
        if seeds.len() == 2 {
            break;
        }
    }
    let (first_seed, first_out) = (&tasks[0].1[0].to, &tasks[0].1);
    assert_eq!(budget(first_out, first_seed), Some(100), "alone: all of it");
    let second = &tasks[1].1;
    assert_eq!(budget(second, "s1"), Some(50));
    assert_eq!(budget(second, "s2"), Some(50));
    // One seed finishes: the other gets the whole budget back.
    let done_seed = first_seed.clone();
    let out = core.handle(&done_seed, PeerEvent::TaskDone { task: tasks[0].0 }, t0());
    let other = if done_seed == "s1" { "s2" } else { "s1" };
    assert_eq!(budget(&out, other), Some(100));
    assert_eq!(budget(&out, &done_seed), Some(0));
}

#[test]
fn children_are_spread_by_upload_capacity() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 2));
    for i in 0..5 {
        let p = format!("p{i}");
        hello(&mut core, host(&p, false, 8));
        register(&mut core, &p);
    }
    let with_seed = (0..5)
        .filter(|i| {
            core.parents_of(&task(), &format!("p{i}"))
                .contains(&"seed".to_string())
        })
        .count();
    assert_eq!(with_seed, 2, "the seed is never planned past its 2 slots");
}

#[test]
fn a_departed_parent_is_replaced_and_its_children_told() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b", "c"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    assert!(core.parents_of(&task(), "c").contains(&"a".to_string()));
    let out = core.disconnect("a", t0());
    assert!(out
        .iter()
        .any(|o| o.to == "c" && o.msg == ToPeer::ParentGone { parent: "a".into() }));
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
}

#[test]
fn a_reconnecting_parent_is_dropped_from_its_childrens_parents() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    assert!(core.parents_of(&task(), "b").contains(&"a".to_string()));
    // `a` opens a new stream under the same id: it starts from nothing.
    let out = hello(&mut core, host("a", false, 8));
    assert!(out
        .iter()
        .any(|o| o.to == "b" && o.msg == ToPeer::ParentGone { parent: "a".into() }));
    assert!(!core.parents_of(&task(), "b").contains(&"a".to_string()));
}

#[test]
fn a_departed_seed_is_replaced_by_another_seed() {
    let mut core = Core::default();
    hello(&mut core, host("s1", true, 8));
    hello(&mut core, host("s2", true, 8));
    hello(&mut core, host("a", false, 8));
    let out = register(&mut core, "a");
    let seed = out
        .iter()
        .find(|o| matches!(o.msg, ToPeer::SeedTask { .. }))
        .map(|o| o.to.clone())
        .expect("a seed is triggered");
    let other = if seed == "s1" { "s2" } else { "s1" };
    let out = core.disconnect(&seed, t0());
    assert!(out
        .iter()
        .any(|o| o.to == other && matches!(o.msg, ToPeer::SeedTask { .. })));
    assert!(core.parents_of(&task(), "a").contains(&other.to_string()));
}

#[test]
fn a_failing_parent_is_blocklisted_for_that_child() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "b", "c"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    failed(&mut core, "c", "a", t0());
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
    done(&mut core, "b", 0);
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
    // The seed is never blocklisted: it is the only way new pieces arrive.
    failed(&mut core, "c", "seed", t0());
    assert!(core.parents_of(&task(), "c").contains(&"seed".to_string()));
}

#[test]
fn a_blocklisted_parent_is_eligible_again_after_block_for() {
    let block_for = Duration::from_secs(60);
    let mut core = Core::new(Config {
        block_for,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "c", "d", "e"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    assert!(core.parents_of(&task(), "c").contains(&"a".to_string()));
    failed(&mut core, "c", "a", t0());
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
    // A replan of `c` just before the block ends (`d`'s first piece makes it a
    // new parent) still leaves `a` out ...
    let out = done_at(
        &mut core,
        "d",
        task(),
        0,
        t0() + block_for - Duration::from_secs(1),
    );
    assert_eq!(parents_in(&out, "c"), vec!["d"]);
    // ... and one after it ends takes `a` back.
    let out = done_at(&mut core, "e", task(), 0, t0() + block_for);
    let mut got = parents_in(&out, "c");
    got.sort();
    assert_eq!(got, vec!["a", "e"]);
    assert!(core.parents_of(&task(), "c").contains(&"a".to_string()));
}

#[test]
fn a_conflicting_digest_is_ignored() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    hello(&mut core, host("a", false, 8));
    hello(&mut core, host("b", false, 8));
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "seed", 0);
    let out = core.handle(
        "a",
        PeerEvent::PieceDone {
            task: task(),
            num: 0,
            digest: [0xFF; 32],
        },
        t0(),
    );
    assert!(out.is_empty());
    assert_eq!(core.stats.digest_conflicts, 1);
    assert!(!core.parents_of(&task(), "b").contains(&"a".to_string()));
}

#[test]
fn scoring_follows_the_configured_weights() {
    // Two candidates for `c`: the seed in another zone, `z` in `c`'s zone.
    // Only the weights differ between the runs; each picks its favourite.
    let pick = |weights: Weights| {
        let mut core = Core::new(Config {
            candidate_parents: 1,
            weights,
            ..Config::default()
        });
        hello(
            &mut core,
            HostInfo {
                zone: "far".into(),
                ..host("seed", true, 8)
            },
        );
        for p in ["z", "c"] {
            hello(
                &mut core,
                HostInfo {
                    zone: "near".into(),
                    ..host(p, false, 8)
                },
            );
        }
        register(&mut core, "z");
        done(&mut core, "seed", 0);
        done(&mut core, "z", 0);
        register(&mut core, "c");
        core.parents_of(&task(), "c")
    };
    let none = Weights {
        free_capacity: 0.0,
        live_load: 0.0,
        progress: 0.0,
        same_zone: 0.0,
        same_rack: 0.0,
        seed: 0.0,
    };
    let zone_first = Weights {
        same_zone: 1.0,
        ..none.clone()
    };
    let seed_first = Weights { seed: 1.0, ..none };
    assert_eq!(pick(zone_first), vec!["z"]);
    assert_eq!(pick(seed_first), vec!["seed"]);
}

/// Every host's child count equals its child edges, counted from the edges
/// themselves; and every edge joins two peers of its task.
fn assert_graph_consistent(core: &Core) {
    let mut edges_per_host: BTreeMap<PeerId, u32> = BTreeMap::new();
    for t in core.graph.task_ids() {
        let task = core.tasks.get(&t).expect("edges only in live tasks");
        let (edges, seen_from_parents) = core.graph.edges_both_ways(t);
        assert_eq!(edges, seen_from_parents, "both indexes hold the same edges");
        for (parent, child) in edges {
            assert!(task.peers.contains_key(&parent), "{parent} left {t:?}");
            assert!(task.peers.contains_key(&child), "{child} left {t:?}");
            *edges_per_host.entry(parent).or_default() += 1;
        }
    }
    assert_eq!(core.graph.counts(), &edges_per_host);
    assert_indexes_complete(core);
    for id in core.hosts.keys() {
        assert_eq!(
            core.graph.child_count(id),
            edges_per_host.get(id).copied().unwrap_or(0),
            "{id}"
        );
    }
}

/// The indexes phase 1 walks instead of whole lists hold everything the
/// whole walk would pass: positions match the lists, every parent with a
/// free slot is open, every child short of parents is short.
fn assert_indexes_complete(core: &Core) {
    let want = core.config.candidate_parents;
    for (id, t) in &core.tasks {
        for (i, p) in t.order.iter().enumerate() {
            assert_eq!(t.order_at.get(p), Some(&i), "{p} in order");
            let not_short = t.peers[p].done || core.graph.parents(*id, p).len() >= want;
            assert!(not_short || t.short.contains(&i), "{p} is short of parents");
        }
        assert_eq!(t.order_at.len(), t.order.len());
        for (i, p) in t.eligible.iter().enumerate() {
            assert_eq!(t.eligible_at.get(p), Some(&i), "{p} eligible");
            let free = core
                .hosts
                .get(p)
                .is_some_and(|h| core.graph.child_count(p) < h.info.upload_slots.max(1));
            assert!(!free || t.open.contains(&i), "{p} has a free slot");
        }
        assert_eq!(t.eligible_at.len(), t.eligible.len());
    }
}

#[test]
fn child_counts_equal_child_edges_after_a_long_random_run() {
    let mut core = Core::new(Config {
        candidate_parents: 3,
        ..Config::default()
    });
    let tasks: Vec<TaskId> = (0..3)
        .map(|i| TaskId::from_url(&format!("https://origin/{i}")))
        .collect();
    let peers: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    hello(&mut core, host("seed", true, 4));
    let mut now = t0();
    let (mut planned, mut failures, mut leaves) = (0, 0, 0);
    for step in 0..20_000 {
        now += Duration::from_millis(next() % 2_000);
        let p = &peers[next() as usize % peers.len()];
        let t = tasks[next() as usize % tasks.len()];
        let out = match next() % 100 {
            0..=9 => core.hello(host(p, next() % 10 == 0, 1 + next() as u32 % 4), now),
            10..=29 => register_task(&mut core, p, t, now),
            30..=64 => done_at(&mut core, p, t, (next() % 8) as u32, now),
            65..=79 => {
                let parents = core.parents_of(&t, p);
                if parents.is_empty() {
                    continue;
                }
                failures += 1;
                let parent = parents[next() as usize % parents.len()].clone();
                core.handle(
                    p,
                    PeerEvent::PieceFailed {
                        task: t,
                        num: 0,
                        parent,
                    },
                    now,
                )
            }
            80..=84 => core.handle(p, PeerEvent::TaskDone { task: t }, now),
            85..=92 => {
                leaves += 1;
                core.handle(p, PeerEvent::TaskLeft { task: t }, now)
            }
            93..=96 => core.disconnect(p, now),
            // The seed goes and comes back now and then.
            _ if step % 7 == 0 => core.disconnect("seed", now),
            _ => core.hello(host("seed", true, 4), now),
        };
        // Parents planned for anyone: a child without any gets the next
        // free slot, whoever's event freed it.
        planned += out
            .iter()
            .map(|o| match &o.msg {
                ToPeer::Parents(ps) => ps.len(),
                _ => 0,
            })
            .sum::<usize>();
        if step % 10 == 0 {
            assert_graph_consistent(&core);
        }
    }
    assert_graph_consistent(&core);
    // The run did exercise the graph.
    assert!(
        planned > 1000 && failures > 200 && leaves > 1000,
        "{planned} {failures} {leaves}"
    );
    for id in peers.iter().chain(["seed".to_string()].iter()) {
        core.disconnect(id, now);
    }
    assert!(
        core.graph.counts().is_empty(),
        "every edge left with its peers"
    );
    assert_eq!(core.task_count(), 0);
}

/// Checks that the parent graph of `task` has no cycle.
fn assert_acyclic(core: &Core) {
    let t = &core.tasks[&task()];
    // Kahn's algorithm over child edges.
    let mut indeg: BTreeMap<&str, usize> = t.peers.keys().map(|p| (p.as_str(), 0)).collect();
    for p in t.peers.keys() {
        for c in core.graph.children(task(), p) {
            *indeg
                .get_mut(c.as_str())
                .expect("children are peers of the task") += 1;
        }
    }
    let mut queue: Vec<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(p, _)| *p)
        .collect();
    let mut seen = 0;
    while let Some(p) = queue.pop() {
        seen += 1;
        for c in core.graph.children(task(), p) {
            let d = indeg
                .get_mut(c.as_str())
                .expect("children are peers of the task");
            *d -= 1;
            if *d == 0 {
                queue.push(c);
            }
        }
    }
    assert_eq!(seen, t.peers.len(), "peer graph has a cycle");
}

/// 10,000 peers, pieces completing in a fixed pseudo-random order: the graph
/// stays acyclic, nobody exceeds its slots or candidate count, and the run is
/// reproducible.
fn simulate(peers: usize) -> (Vec<Outbound>, Core) {
    let mut core = Core::new(Config {
        candidate_parents: 4,
        acyclic: true,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 16));
    let mut all = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..peers {
        let p = format!("p{i:05}");
        hello(&mut core, host(&p, false, 4));
        all.extend(register(&mut core, &p));
    }
    all.extend(done(&mut core, "seed", 0));
    for _ in 0..peers * 2 {
        let p = format!("p{:05}", next() as usize % peers);
        let parents = core.parents_of(&task(), &p);
        let has_parent_with_piece = parents
            .iter()
            .any(|q| core.tasks[&task()].peers[q].pieces.contains(&0));
        if has_parent_with_piece {
            all.extend(done(&mut core, &p, 0));
        }
    }
    (all, core)
}

#[test]
fn ten_thousand_peers_deterministic_acyclic_and_within_capacity() {
    let (out1, core) = simulate(10_000);
    let (out2, _) = simulate(10_000);
    assert_eq!(out1, out2, "same inputs, same decisions");
    assert_acyclic(&core);
    for (id, h) in &core.hosts {
        assert!(
            core.graph.child_count(id) <= h.info.upload_slots.max(1),
            "{id} over capacity"
        );
    }
    assert_graph_consistent(&core);
    let t = &core.tasks[&task()];
    let with_piece = t.peers.values().filter(|p| p.pieces.contains(&0)).count();
    assert!(
        with_piece > 1000,
        "the piece spread through the swarm: {with_piece}"
    );
    assert!(t
        .peers
        .keys()
        .all(|p| core.graph.parents(task(), p).len() <= 4));
}

// ---- Lying peers, restarts: whose word about a task's bytes counts ----

fn register_with(
    core: &mut Core,
    peer: &str,
    have: &[u32],
    content_length: Option<u64>,
    now: Instant,
) -> Vec<Outbound> {
    core.handle(
        peer,
        PeerEvent::Register {
            task: task(),
            url: "https://origin/model.bin".into(),
            have: have.iter().map(|n| (*n, [*n as u8; 32])).collect(),
            content_length,
            digest: None,
        },
        now,
    )
}

fn back_to_source(out: &[Outbound], to: &str) -> bool {
    out.iter()
        .any(|o| o.to == to && matches!(o.msg, ToPeer::BackToSource { .. }))
}

fn meta_to(out: &[Outbound], to: &str) -> Option<u64> {
    out.iter().find_map(|o| match o.msg {
        ToPeer::Meta { content_length } if o.to == to => Some(content_length),
        _ => None,
    })
}

/// The parent entry `parent` has in the Parents message to `child`.
fn entry(out: &[Outbound], child: &str, parent: &str) -> Option<ParentEntry> {
    out.iter()
        .filter(|o| o.to == child)
        .find_map(|o| match &o.msg {
            ToPeer::Parents(p) => p.iter().find(|e| e.peer_id == parent).cloned(),
            _ => None,
        })
}

#[test]
fn a_peer_cannot_set_a_tasks_length_or_digests_before_its_source_does() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    for p in ["a", "liar"] {
        hello(&mut core, host(p, false, 8));
        register(&mut core, p);
    }
    // The liar speaks first: a length and a digest of its own.
    let out = core.handle(
        "liar",
        PeerEvent::Meta {
            task: task(),
            content_length: 999,
        },
        t0(),
    );
    assert_eq!(meta_to(&out, "a"), None, "a liar's length reaches nobody");
    let out = core.handle(
        "liar",
        PeerEvent::PieceDone {
            task: task(),
            num: 0,
            digest: [0xEE; 32],
        },
        t0(),
    );
    assert!(
        out.is_empty(),
        "an unconfirmed piece is offered to nobody: {out:?}"
    );
    // The source's word is the task's.
    let out = core.handle(
        "seed",
        PeerEvent::Meta {
            task: task(),
            content_length: 2 << 20,
        },
        t0(),
    );
    assert_eq!(meta_to(&out, "a"), Some(2 << 20));
    done(&mut core, "seed", 0);
    assert_eq!(
        core.stats.digest_conflicts, 1,
        "the liar's claim was refuted"
    );
    hello(&mut core, host("late", false, 8));
    let out = register(&mut core, "late");
    let seed = entry(&out, "late", "seed").expect("the seed is a parent");
    assert_eq!(seed.pieces, vec![(0, [0; 32])], "with the source's digest");
    assert!(
        entry(&out, "late", "liar").is_none(),
        "the liar holds nothing"
    );
}

#[test]
fn a_claim_counts_once_the_source_reports_the_same_digest() {
    let mut core = Core::default();
    hello(&mut core, host("seed", true, 8));
    hello(&mut core, host("b", false, 8));
    // b resumes with piece 1 on disk before the seed has reported it.
    register_with(&mut core, "b", &[1], None, t0());
    hello(&mut core, host("a", false, 8));
    let out = register(&mut core, "a");
    assert!(
        entry(&out, "a", "b").is_none(),
        "b's claim is not confirmed yet"
    );
    let out = done(&mut core, "seed", 1);
    // Confirmed: b becomes a parent of whoever is short of parents.
    assert!(
        core.parents_of(&task(), "a").contains(&"b".to_string())
            || out
                .iter()
                .any(|o| matches!(&o.msg, ToPeer::Available { parent, .. } if parent == "b")),
        "{out:?}"
    );
    hello(&mut core, host("c", false, 8));
    let out = register(&mut core, "c");
    assert_eq!(entry(&out, "c", "b").unwrap().pieces, vec![(1, [1; 32])]);
}

#[test]
fn after_a_scheduler_restart_a_peer_announcing_the_whole_task_serves_newcomers() {
    let mut core = Core::default();
    // Three pieces.
    let len = 3 * weightcast_types::piece::MIN_PIECE_SIZE;
    for p in ["a", "b"] {
        hello(&mut core, host(p, false, 8));
        let out = register_with(&mut core, p, &[0, 1, 2], Some(len), t0());
        assert!(!out
            .iter()
            .any(|o| o.to != p && matches!(o.msg, ToPeer::BackToSource { .. })));
        core.handle(p, PeerEvent::TaskDone { task: task() }, t0());
    }
    hello(&mut core, host("new", false, 8));
    let out = register(&mut core, "new");
    assert!(
        !back_to_source(&out, "new"),
        "the origin is not needed: {out:?}"
    );
    assert_eq!(meta_to(&out, "new"), Some(len));
    let mut parents = core.parents_of(&task(), "new");
    parents.sort();
    assert_eq!(parents, vec!["a", "b"]);
    assert_eq!(entry(&out, "new", "a").unwrap().pieces.len(), 3);
}

#[test]
fn a_restarted_scheduler_waits_for_the_seed_before_sending_a_peer_with_pieces_to_the_origin() {
    let grace = Config::default().seed_grace;
    let mut core = Core::default();
    hello(&mut core, host("a", false, 8));
    // a was mid-download when the old scheduler died.
    let out = register_with(&mut core, "a", &[0], None, t0());
    assert!(!back_to_source(&out, "a"), "{out:?}");
    // The seed reconnects a moment later and takes the task.
    let out = hello(&mut core, host("seed", true, 8));
    assert!(
        out.iter()
            .any(|o| o.to == "seed" && matches!(o.msg, ToPeer::SeedTask { .. })),
        "{out:?}"
    );
    // Without a seed, after the grace, a stalled peer with pieces goes.
    let mut core = Core::default();
    hello(&mut core, host("a", false, 8));
    register_with(&mut core, "a", &[0], None, t0());
    assert!(back_to_source(
        &source_request(&mut core, "a", t0() + grace),
        "a"
    ));
    // A newcomer with nothing is not held back by the grace.
    let mut core = Core::default();
    hello(&mut core, host("n", false, 8));
    assert!(back_to_source(&register(&mut core, "n"), "n"));
}

#[test]
fn a_tasks_digest_reaches_its_seed_only_when_the_task_id_is_that_digests() {
    for (keyed, want) in [(true, true), (false, false)] {
        let mut core = Core::default();
        hello(&mut core, host("seed", true, 8));
        hello(&mut core, host("a", false, 8));
        let d = [9u8; 32];
        let id = if keyed {
            TaskId::from_sha256(&d)
        } else {
            task()
        };
        let out = core.handle(
            "a",
            PeerEvent::Register {
                task: id,
                url: "https://origin/model.bin".into(),
                have: vec![],
                content_length: None,
                digest: Some(d),
            },
            t0(),
        );
        let sent = out.iter().find_map(|o| match &o.msg {
            ToPeer::SeedTask { digest, .. } => Some(*digest),
            _ => None,
        });
        assert_eq!(sent, Some(want.then_some(d)), "keyed by digest: {keyed}");
    }
}

// ---- At scale: children whose scanned window is full ----

/// A child planned when every parent in its scanned window is full still
/// gets a parent that has a free slot elsewhere. At 10,000 peers (window
/// 256 of 10,000 eligible) 26 children got no parent this way and waited
/// for their 30 s stall timeout, the next time anything planned them.
#[test]
fn a_child_whose_scanned_window_is_full_gets_a_free_parent_outside_it() {
    let mut core = Core::new(Config {
        candidate_parents: 1,
        max_scanned: 2,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 1));
    let qs: Vec<String> = (0..8).map(|i| format!("q{i}")).collect();
    for q in &qs {
        hello(&mut core, host(q, false, 1));
        register(&mut core, q);
    }
    done(&mut core, "seed", 0);
    for q in &qs {
        done(&mut core, q, 0);
    }
    let full =
        |core: &Core, p: &str| core.graph.child_count(p) >= core.hosts[p].info.upload_slots.max(1);
    let eligible = |core: &Core| core.tasks[&task()].eligible.clone();
    // Fill every parent's slot; a filler that finds nothing leaves again,
    // so that nobody is waiting for a parent.
    for i in 0..200 {
        if eligible(&core).iter().all(|p| full(&core, p)) {
            break;
        }
        let f = format!("f{i:03}");
        hello(&mut core, host(&f, false, 1));
        if parents_in(&register(&mut core, &f), &f).is_empty() {
            core.handle(&f, PeerEvent::TaskLeft { task: task() }, t0());
        }
    }
    let eligible = eligible(&core);
    let n = eligible.len();
    assert!(eligible.iter().all(|p| full(&core, p)), "every parent full");
    // The one parent to free: just past the newcomer's window.
    let start = small_hash("c") % n;
    let free = eligible[(start + 2) % n].clone();
    let its_child = core.graph.children(task(), &free).first().cloned();
    let its_child = its_child.expect("a full parent has a child");
    core.handle(&its_child, PeerEvent::TaskDone { task: task() }, t0());
    assert!(!full(&core, &free), "{free} has a free slot");
    assert!(
        full(&core, &eligible[start]) && full(&core, &eligible[(start + 1) % n]),
        "the newcomer's window is full"
    );
    hello(&mut core, host("c", false, 1));
    let out = register(&mut core, "c");
    assert_eq!(parents_in(&out, "c"), vec![free]);
}

#[test]
fn a_slot_freed_by_a_finished_child_goes_to_a_child_short_of_parents() {
    let mut core = Core::new(Config {
        candidate_parents: 2,
        ..Config::default()
    });
    hello(&mut core, host("seed", true, 1));
    for p in ["a", "b"] {
        hello(&mut core, host(p, false, 1));
    }
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "seed", 0);
    assert_eq!(core.parents_of(&task(), "a"), vec!["seed".to_string()]);
    // a's first piece makes it b's parent; the seed's one slot is a's.
    done(&mut core, "a", 0);
    assert_eq!(core.parents_of(&task(), "b"), vec!["a".to_string()]);
    // a finishes: the seed's slot is free, and b, one parent short, gets it
    // (it is not parentless, so nothing else would plan it again).
    let out = core.handle("a", PeerEvent::TaskDone { task: task() }, t0());
    assert_eq!(parents_in(&out, "b"), vec!["seed".to_string()]);
    assert_graph_consistent(&core);
}
