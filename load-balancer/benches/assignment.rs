//! Criterion benchmarks: user → node lookup (engine beside the classic ring
//! and jump hash, in one run) and assignment recompute time.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rtc_core::{NodeState, partition_for_key};
use rtc_load_balancer::assign::{Balance, LiveNode, assign, assign_balanced};
use rtc_load_balancer::baselines::{HashRing, jump_consistent_hash, jump_key};

fn ready(n: u32, prefix: &str) -> Vec<LiveNode> {
    (0..n).map(|i| LiveNode::new(format!("{prefix}{i}"), format!("ws://n{i}/ws"), NodeState::Ready)).collect()
}

fn lookup(c: &mut Criterion) {
    let users: Vec<String> = (0..4096).map(|i| format!("user-{i}")).collect();
    let placement = assign(None, &ready(10, "socket-"), 360, &[]);
    let owners: Vec<u32> = placement.owners.iter().map(|o| o.unwrap()).collect();
    let ids: Vec<String> = (0..10).map(|i| format!("socket-{i}")).collect();
    let ring = HashRing::new(&ids, 160);

    let mut group = c.benchmark_group("lookup_user_to_node");
    let mut i = 0usize;
    group.bench_function("engine_partition_then_owner", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let u = black_box(users[i].as_bytes());
            owners[partition_for_key(u, 360) as usize]
        })
    });
    group.bench_function("ring_160", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            ring.node_for(black_box(users[i].as_bytes()))
        })
    });
    group.bench_function("jump", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            jump_consistent_hash(jump_key(black_box(users[i].as_bytes())), 10)
        })
    });
    group.finish();
}

fn recompute(c: &mut Criterion) {
    let mut group = c.benchmark_group("assignment_recompute");
    for (partitions, n) in [(360u32, 10u32), (10_000, 200)] {
        let nodes = ready(n, "socket-");
        let current = assign(None, &nodes, partitions, &[]).into_assignment(1, 1);
        let mut grown = nodes.clone();
        grown.extend(ready(1, "socket-new-"));
        let connections: Vec<u64> = (0..u64::from(partitions)).map(|p| p * 7919 % 100).collect();
        group.bench_with_input(
            BenchmarkId::new("first_placement", format!("P{partitions}_n{n}")),
            &nodes,
            |b, nodes| b.iter(|| assign(None, black_box(nodes), partitions, &[])),
        );
        group.bench_with_input(BenchmarkId::new("add_one_node", format!("P{partitions}_n{n}")), &grown, |b, grown| {
            b.iter(|| assign(Some(&current), black_box(grown), partitions, &connections))
        });
        // Balancing users: skewed partitions (Zipf 0.6, 1 000 users on
        // average each); a node joins, and the leader's every-tick recompute
        // once balanced (nothing moves).
        let load = Balance::Load { tolerance: 0.1 };
        let skewed: Vec<u64> = rtc_load_balancer::ring_report::zipf_shares(partitions, 0.6)
            .iter()
            .map(|s| (s * 1000.0 * f64::from(partitions)).round() as u64)
            .collect();
        let balanced = assign_balanced(Some(&current), &nodes, partitions, &skewed, load).into_assignment(2, 1);
        group.bench_with_input(
            BenchmarkId::new("add_one_node_by_load", format!("P{partitions}_n{n}")),
            &grown,
            |b, grown| b.iter(|| assign_balanced(Some(&balanced), black_box(grown), partitions, &skewed, load)),
        );
        group.bench_with_input(
            BenchmarkId::new("steady_tick_by_load", format!("P{partitions}_n{n}")),
            &nodes,
            |b, nodes| b.iter(|| assign_balanced(Some(&balanced), black_box(nodes), partitions, &skewed, load)),
        );
    }
    group.finish();
}

criterion_group!(benches, lookup, recompute);
criterion_main!(benches);
