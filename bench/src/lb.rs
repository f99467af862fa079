//! Load-balancer bench tools: a heartbeat writer standing in for a fleet of
//! socket nodes, and a failover timer that kills leaders.

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use redis::AsyncCommands;
use rtc_core::{Decision, Document, Heartbeat, Keys, NodeState};
use tokio::process::{Child, Command};

#[derive(Debug, Args)]
pub struct HeartbeatsArgs {
    #[arg(long, env = "RTC_BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "RTC_BENCH_KEY_PREFIX", default_value = rtc_core::config::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    /// Fake nodes (`bench-0` …), each beating once per interval.
    #[arg(long, env = "RTC_BENCH_NODES", default_value_t = 10)]
    nodes: u32,
    #[arg(long, env = "RTC_BENCH_INTERVAL_MS", default_value_t = 1000)]
    interval_ms: u64,
    /// How long to write (bounded).
    #[arg(long, env = "RTC_BENCH_DURATION_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Users each node reports (a fraction of its 20 000 capacity).
    #[arg(long, env = "RTC_BENCH_CONNECTIONS", default_value_t = 2000)]
    connections: u64,
}

/// Writes every node's heartbeat once per interval, spread over the interval
/// in slices of 20 ms (pipelined XADDs), and prints what it wrote.
pub async fn heartbeats(args: HeartbeatsArgs) -> anyhow::Result<()> {
    let keys = Keys::new(args.key_prefix);
    let stream = keys.heartbeats();
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await??;
    let slice = Duration::from_millis(20);
    let slices = (args.interval_ms / 20).max(1);
    let per_slice = args.nodes.div_ceil(slices as u32).max(1);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let mut tick = tokio::time::interval(slice);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut written, mut next_node, mut seq, mut behind) = (0u64, 0u32, 1u64, 0u64);
    while Instant::now() < end {
        tick.tick().await;
        let slice_started = Instant::now();
        let mut pipe = redis::pipe();
        for _ in 0..per_slice {
            let node = format!("bench-{next_node}");
            let hb = Heartbeat {
                v: 1,
                url: format!("ws://127.0.0.1:9/{node}"),
                node_id: node,
                state: NodeState::Ready,
                seq,
                sent_at_ms: crate::now_ms() as u64,
                assignment_epoch: 0,
                connections: args.connections,
                capacity: 20_000,
                cpu: 0.2,
                memory: 0.3,
                mps_in: 10.0,
                mps_out: 100.0,
                p95_latency_ms: 8.0,
                kafka_lag: 0,
                partition_connections: None,
            };
            pipe.cmd("XADD").arg(&stream).arg("MAXLEN").arg("~").arg(100_000).arg("*").arg("hb").arg(hb.to_json());
            next_node += 1;
            if next_node == args.nodes {
                next_node = 0;
                seq += 1;
            }
        }
        let _: Vec<String> = pipe.query_async(&mut conn).await?;
        written += u64::from(per_slice);
        // A write slower than its slice means Redis (or this writer) cannot
        // keep the rate: the figures would be for a lower one.
        if slice_started.elapsed() > slice {
            behind += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let length: u64 = conn.xlen(&stream).await?;
    println!(
        "{}",
        serde_json::json!({"nodes": args.nodes, "written": written, "seconds": secs,
            "per_second": written as f64 / secs, "slow_slices": behind, "stream_length": length})
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    #[arg(long, env = "RTC_BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "RTC_BENCH_KEY_PREFIX", default_value = rtc_core::config::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    /// The load-balancer binary.
    #[arg(long, env = "RTC_BENCH_LB_BIN")]
    lb_bin: std::path::PathBuf,
    #[arg(long, env = "RTC_BENCH_TRIALS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=200))]
    trials: u32,
    /// The replicas' lease TTL.
    #[arg(long, env = "RTC_BENCH_LEASE_TTL_MS", default_value_t = 5000)]
    lease_ttl_ms: u64,
}

/// Runs two load balancers; each trial SIGKILLs the leader and times until
/// the new leader's first fenced write (its decision, stamped with its
/// epoch) is in Redis, then restarts the killed one.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let keys = Keys::new(args.key_prefix.clone());
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await??;
    let mut replicas = vec![spawn_lb(&args, "lb-a")?, spawn_lb(&args, "lb-b")?];
    let mut times_ms = Vec::new();
    for trial in 0..args.trials {
        let before = wait_for_decision(&mut conn, &keys, 0, Duration::from_secs(30)).await?;
        // Kill at a random point of the renewal cycle, as a crash would.
        let offset = rand::random_range(0..args.lease_ttl_ms.max(3) / 3);
        tokio::time::sleep(Duration::from_millis(offset)).await;
        let holder: String = conn.get(keys.leader()).await?;
        let index = if holder.contains("lb-a") { 0 } else { 1 };
        replicas[index].start_kill()?;
        let killed = Instant::now();
        replicas[index].wait().await?;
        let after = wait_for_decision(&mut conn, &keys, before.leader_epoch, Duration::from_secs(30)).await?;
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        eprintln!("trial {trial}: epoch {} -> {} in {ms:.0} ms", before.leader_epoch, after.leader_epoch);
        times_ms.push(ms);
        replicas[index] = spawn_lb(&args, if index == 0 { "lb-a" } else { "lb-b" })?;
        // Let the restarted replica settle in as a follower.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for mut r in replicas {
        let _ = r.start_kill();
        let _ = r.wait().await;
    }
    times_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| times_ms[((times_ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({"trials": times_ms.len(), "lease_ttl_ms": args.lease_ttl_ms,
            "p50_ms": pct(0.5), "max_ms": times_ms.last(), "min_ms": times_ms.first(), "all_ms": times_ms})
    );
    Ok(())
}

fn spawn_lb(args: &FailoverArgs, id: &str) -> anyhow::Result<Child> {
    Ok(Command::new(&args.lb_bin)
        .args(["serve", "--auth", "none", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--replica-id", id, "--redis-url", &args.redis_url, "--key-prefix", &args.key_prefix])
        .args(["--lease-ttl-ms", &args.lease_ttl_ms.to_string()])
        .env("RTC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Polls (every 2 ms) until a decision written by a leader epoch above
/// `after_epoch` is in Redis.
async fn wait_for_decision(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    after_epoch: u64,
    timeout: Duration,
) -> anyhow::Result<Decision> {
    let deadline = Instant::now() + timeout;
    loop {
        let raw: Option<String> = conn.get(keys.scale_decision()).await?;
        if let Some(d) = raw.map(|r| Decision::from_json(r.as_bytes())).transpose()?
            && d.leader_epoch > after_epoch
        {
            return Ok(d);
        }
        anyhow::ensure!(Instant::now() < deadline, "no decision from a leader epoch above {after_epoch}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
