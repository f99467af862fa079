//! The load generator against the real thing, small and in-process: an
//! embedded Kafka, socket nodes and two load balancers on a real Redis
//! (`RTC_TEST_REDIS_URL`, started by `scripts/test`), each test under a key
//! prefix of its own.
//!
//! 50 users for about 10 s at 50 messages/s; mid-run one load balancer is
//! killed (users fail over to the other) and a third socket node joins (the
//! leader rebalances: users are told to reconnect and `resume`). Nothing may
//! be lost, no user may hold two sessions, every acknowledged message must
//! be delivered.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::time::Duration;

use clap::Parser;
use rtc_load_balancer::service::LbHandle;
use rtc_load_balancer::testing::TestLb;
use rtc_socket::kafka::EmbeddedKafka;
use rtc_socket::server::NodeHandle;
use rtc_socket::testing::TestNode;
use tokio_util::sync::CancellationToken;

const P: u32 = 12;
const SECRET: &str = "loadgen-test-secret";

fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL")
        .expect("RTC_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts Redis")
}

fn prefix() -> String {
    format!("lg{}-{}:", std::process::id(), rtc_loadgen::now_ms() % 1_000_000)
}

async fn node(prefix: &str, brokers: &str, id: &str) -> NodeHandle {
    TestNode::new(id, &redis_url(), prefix, brokers)
        .token_secret(SECRET)
        .partitions(P)
        .start()
        .await
        .expect("node starts")
}

async fn lb(prefix: &str, id: &str) -> LbHandle {
    TestLb::new(&redis_url(), prefix, id)
        .partitions(P)
        .args(&["--token-secret", SECRET, "--rate-limit", "100000", "--rate-burst", "100000"])
        .start()
        .await
        .expect("lb starts")
}

/// Waits until `lb` routes users to ready nodes.
async fn wait_routing(lb: &LbHandle) {
    let config = rtc_client::ClientConfig::new([format!("http://{}", lb.addr)], "probe");
    let (probe, mut events) = rtc_client::RtcClient::connect(config).expect("client settings");
    let connected = async {
        while let Some(event) = events.recv().await {
            if event == rtc_client::Event::State(rtc_client::State::Connected) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), connected).await.expect("the load balancer never routed");
    probe.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_lose_nothing_through_a_failover_and_a_rebalance() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let kafka = EmbeddedKafka::start("rtc.messages", P).expect("embedded kafka");
    let brokers = kafka.bootstrap_servers().to_owned();
    let prefix = prefix();
    let n0 = node(&prefix, &brokers, "socket-0").await;
    let n1 = node(&prefix, &brokers, "socket-1").await;
    let lb_a = lb(&prefix, "lb-a").await;
    let lb_b = lb(&prefix, "lb-b").await;
    wait_routing(&lb_a).await;
    wait_routing(&lb_b).await;

    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (report_path, timeline_path) = (dir.join("report.json"), dir.join("timeline.jsonl"));
    let lbs = format!("http://{},http://{}", lb_a.addr, lb_b.addr);
    let config = rtc_loadgen::config::Config::try_parse_from([
        "loadgen",
        "--lb",
        &lbs,
        "--kafka-brokers",
        &brokers,
        "--rate",
        "50",
        "--profile",
        "ramp:2s:0->50,plateau:8s:50",
        "--drain-secs",
        "5",
        "--source-ips",
        "127.0.0.1,127.0.0.2",
        "--progress-secs",
        "0",
        "--report",
        report_path.to_str().unwrap(),
        "--timeline",
        timeline_path.to_str().unwrap(),
    ])
    .unwrap();
    let run = tokio::spawn(rtc_loadgen::run(config, CancellationToken::new()));

    // Mid-run: a load balancer dies, then a node joins (rebalance).
    tokio::time::sleep(Duration::from_secs(3)).await;
    lb_a.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n2 = node(&prefix, &brokers, "socket-2").await;

    let report = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the run ends").unwrap().unwrap();
    let v = serde_json::to_value(&report).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());

    assert_eq!(report.messages.messages_lost, 0, "lost: {:?}", report.messages.lost_sample);
    assert_eq!(report.double_sessions, 0);
    assert!(report.messages.messages_sent >= 300, "sent {}", report.messages.messages_sent);
    assert_eq!(report.messages.messages_delivered, report.messages.messages_sent);
    assert_eq!(report.messages.misrouted, 0);
    assert_eq!(report.messages.duplicate_deliveries, 0);
    assert_eq!(report.peak_users, 50);
    assert!(report.ok);
    assert!(report.reconnects > 0, "the new node took partitions: some users moved");
    assert!(report.reconnect_max_ms <= 5_000, "reconnect max {} ms", report.reconnect_max_ms);
    assert_eq!(report.gave_up, 0);

    // The files the demo reads.
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(written["messages_sent"], v["messages_sent"]);
    let timeline = std::fs::read_to_string(&timeline_path).unwrap();
    let lines: Vec<serde_json::Value> = timeline.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 10, "{} timeline lines", lines.len());
    assert!(lines.iter().any(|l| l["users_online"] == 50));
    for key in ["ts_ms", "users_online", "connecting", "messages_sent_per_s", "delivered_per_s", "reconnects"] {
        assert!(lines[0].get(key).is_some(), "{key}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    lb_b.shutdown().await;
    for n in [n0, n1, n2] {
        n.shutdown().await;
    }
    drop(kafka);
}
