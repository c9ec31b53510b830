use super::*;

fn host(id: &str, seed: bool, slots: u32) -> pb::HostInfo {
    pb::HostInfo {
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

fn register(core: &mut Core, peer: &str) -> Vec<Outbound> {
    core.handle(
        peer,
        PeerMsg::Register(pb::RegisterTask {
            task_id: task().to_hex(),
            url: "https://origin/model.bin".into(),
            have: vec![],
            content_length: 0,
        }),
    )
}

fn done(core: &mut Core, peer: &str, num: u32) -> Vec<Outbound> {
    core.handle(
        peer,
        PeerMsg::PieceDone(pb::PieceDone {
            task_id: task().to_hex(),
            num,
            digest: vec![num as u8; 32],
        }),
    )
}

fn parents_in(out: &[Outbound], to: &str) -> Vec<String> {
    out.iter()
        .filter(|o| o.to == to)
        .filter_map(|o| match &o.msg {
            SchedMsg::Parents(p) => Some(p.parents.iter().map(|p| p.peer_id.clone())),
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
        core.hello(host("seed", true, 8));
        for p in ["a", "b"] {
            core.hello(host(p, false, 8));
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
    core.hello(host("seed", true, 8));
    core.hello(host("a", false, 8));
    let out = register(&mut core, "a");
    assert!(out
        .iter()
        .any(|o| o.to == "seed" && matches!(o.msg, SchedMsg::SeedTask(_))));
    assert_eq!(parents_in(&out, "a"), vec!["seed"]);
    assert_eq!(core.stats.seeds_triggered, 1);
    // A second child does not trigger the seed again.
    core.hello(host("b", false, 8));
    let out = register(&mut core, "b");
    assert!(!out.iter().any(|o| matches!(o.msg, SchedMsg::SeedTask(_))));
}

#[test]
fn without_a_seed_the_first_peer_goes_back_to_source_and_serves_the_rest() {
    let mut core = Core::default();
    core.hello(host("a", false, 8));
    core.hello(host("b", false, 8));
    let out = register(&mut core, "a");
    assert!(matches!(out.last().unwrap().msg, SchedMsg::BackToSource(_)));
    let out = register(&mut core, "b");
    assert_eq!(parents_in(&out, "b"), vec!["a"]);
    assert_eq!(core.stats.back_to_source, 1);
}

#[test]
fn piece_completion_reaches_children_and_makes_a_new_parent_at_once() {
    let mut core = Core::default();
    core.hello(host("seed", true, 8));
    for p in ["a", "b"] {
        core.hello(host(p, false, 8));
        register(&mut core, p);
    }
    let out = done(&mut core, "seed", 0);
    for c in ["a", "b"] {
        assert!(out
            .iter()
            .any(|o| o.to == c && matches!(o.msg, SchedMsg::Available(_))));
    }
    // `a`'s first piece makes it a candidate for `b` immediately.
    let out = done(&mut core, "a", 0);
    assert_eq!(parents_in(&out, "b"), vec!["a"]);
    let parents = out.iter().find_map(|o| match &o.msg {
        SchedMsg::Parents(p) => Some(p.parents[0].clone()),
        _ => None,
    });
    assert_eq!(
        parents.unwrap().pieces.len(),
        1,
        "parents come with their pieces"
    );
}

#[test]
fn a_parents_rdma_capability_reaches_its_children() {
    let mut c = Core::default();
    c.hello(pb::HostInfo {
        rdma: true,
        ..host("seed", true, 8)
    });
    let mut out = Vec::new();
    for p in ["x", "y"] {
        c.hello(host(p, false, 8));
        out.extend(register(&mut c, p));
    }
    out.extend(done(&mut c, "seed", 0));
    out.extend(done(&mut c, "x", 0));
    let offered: Vec<(String, bool)> = out
        .iter()
        .filter(|o| o.to == "y")
        .filter_map(|o| match &o.msg {
            SchedMsg::Parents(p) => Some(p.parents.iter().map(|p| (p.peer_id.clone(), p.rdma))),
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
    core.hello(host("seed", true, 8));
    let mut a = host("a", false, 8);
    a.hostname = "same".into();
    let mut b = host("b", false, 8);
    b.hostname = "same".into();
    core.hello(a);
    core.hello(b);
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "a", 0);
    assert_eq!(core.parents_of(&task(), "b"), vec!["seed"]);
}

#[test]
fn children_are_spread_by_upload_capacity() {
    let mut core = Core::default();
    core.hello(host("seed", true, 2));
    for i in 0..5 {
        let p = format!("p{i}");
        core.hello(host(&p, false, 8));
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
    core.hello(host("seed", true, 8));
    for p in ["a", "b", "c"] {
        core.hello(host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    assert!(core.parents_of(&task(), "c").contains(&"a".to_string()));
    let out = core.disconnect("a");
    assert!(out
        .iter()
        .any(|o| o.to == "c" && matches!(&o.msg, SchedMsg::ParentGone(g) if g.parent_id == "a")));
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
}

#[test]
fn a_departed_seed_is_replaced_by_another_seed() {
    let mut core = Core::default();
    core.hello(host("s1", true, 8));
    core.hello(host("s2", true, 8));
    core.hello(host("a", false, 8));
    let out = register(&mut core, "a");
    let seed = out
        .iter()
        .find(|o| matches!(o.msg, SchedMsg::SeedTask(_)))
        .unwrap()
        .to
        .clone();
    let other = if seed == "s1" { "s2" } else { "s1" };
    let out = core.disconnect(&seed);
    assert!(out
        .iter()
        .any(|o| o.to == other && matches!(o.msg, SchedMsg::SeedTask(_))));
    assert!(core.parents_of(&task(), "a").contains(&other.to_string()));
}

#[test]
fn a_failing_parent_is_blocklisted_for_that_child() {
    let mut core = Core::default();
    core.hello(host("seed", true, 8));
    for p in ["a", "b", "c"] {
        core.hello(host(p, false, 8));
        register(&mut core, p);
    }
    done(&mut core, "seed", 0);
    done(&mut core, "a", 0);
    let failed = |core: &mut Core, parent: &str| {
        core.handle(
            "c",
            PeerMsg::PieceFailed(pb::PieceFailed {
                task_id: task().to_hex(),
                num: 0,
                parent_id: parent.into(),
                reason: "connection reset".into(),
            }),
        )
    };
    failed(&mut core, "a");
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
    done(&mut core, "b", 0);
    assert!(!core.parents_of(&task(), "c").contains(&"a".to_string()));
    // The seed is never blocklisted: it is the only way new pieces arrive.
    failed(&mut core, "seed");
    assert!(core.parents_of(&task(), "c").contains(&"seed".to_string()));
}

#[test]
fn a_conflicting_digest_is_ignored() {
    let mut core = Core::default();
    core.hello(host("seed", true, 8));
    core.hello(host("a", false, 8));
    core.hello(host("b", false, 8));
    register(&mut core, "a");
    register(&mut core, "b");
    done(&mut core, "seed", 0);
    let out = core.handle(
        "a",
        PeerMsg::PieceDone(pb::PieceDone {
            task_id: task().to_hex(),
            num: 0,
            digest: vec![0xFF; 32],
        }),
    );
    assert!(out.is_empty());
    assert_eq!(core.stats.digest_conflicts, 1);
    assert!(!core.parents_of(&task(), "b").contains(&"a".to_string()));
}

/// Checks that the parent graph of `task` has no cycle.
fn assert_acyclic(core: &Core) {
    let t = &core.tasks[&task()];
    // Kahn's algorithm over child edges.
    let mut indeg: BTreeMap<&str, usize> = t.peers.keys().map(|p| (p.as_str(), 0)).collect();
    for tp in t.peers.values() {
        for c in &tp.children {
            *indeg.get_mut(c.as_str()).unwrap() += 1;
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
        for c in &t.peers[p].children {
            let d = indeg.get_mut(c.as_str()).unwrap();
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
    core.hello(host("seed", true, 16));
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
        core.hello(host(&p, false, 4));
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
            h.children <= h.info.upload_slots.max(1),
            "{id} over capacity"
        );
    }
    let t = &core.tasks[&task()];
    let with_piece = t.peers.values().filter(|p| p.pieces.contains(&0)).count();
    assert!(
        with_piece > 1000,
        "the piece spread through the swarm: {with_piece}"
    );
    assert!(t.peers.values().all(|p| p.parents.len() <= 4));
}
