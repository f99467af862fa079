//! The scaler's gRPC contract against a real Redis, through a tonic client.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::Duration;

use rtc_keda_scaler::proto::{GetMetricsResponse, MetricSpec, MetricValue};
use rtc_keda_scaler::service::now_ms;
use support::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap();
    reply.into_inner().status()
}

type Client = rtc_keda_scaler::proto::external_scaler_client::ExternalScalerClient<tonic::transport::Channel>;

/// Waits until GetMetrics is UNAVAILABLE with `words` in its message, checks
/// IsActive says the same and GetMetricSpec still answers; the message.
async fn expect_unavailable(c: &mut Client, words: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let message = loop {
        match c.get_metrics(metrics_request("m")).await {
            Err(err) if err.message().contains(words) => {
                assert_eq!(err.code(), Code::Unavailable, "{err:?}");
                break err.message().to_owned();
            }
            other => {
                assert!(tokio::time::Instant::now() < deadline, "no UNAVAILABLE `{words}`; last: {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let err = c.is_active(reference(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(words), "{}", err.message());
    // The spec never depends on the decision.
    assert!(c.get_metric_spec(reference(None)).await.is_ok());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_answers_from_the_leaders_decision() {
    let prefix = prefix();
    let d = decide(&prefix, 5).await;
    let scaler = scaler(&prefix, &[]).await;
    cached(&scaler, &d).await;
    let mut c = client(scaler.addr).await;

    // GetMetricSpec: target 1 in both fields, the trigger's metric name.
    let spec = c.get_metric_spec(reference(None)).await.unwrap().into_inner();
    assert_eq!(
        spec.metric_specs,
        vec![MetricSpec { metric_name: "socket-desired-replicas".into(), target_size: 1, target_size_float: 1.0 }]
    );
    let spec = c.get_metric_spec(reference(Some("rtc-socket"))).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs[0].metric_name, "rtc-socket");

    // GetMetrics: desired replicas in both fields, the requested name echoed.
    for metric in ["socket-desired-replicas", "s0-anything"] {
        let values = c.get_metrics(metrics_request(metric)).await.unwrap().into_inner();
        assert_eq!(
            values,
            GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name: metric.into(),
                    metric_value: 5,
                    metric_value_float: 5.0
                }]
            }
        );
    }

    // IsActive: desired > 0; and 0 is inactive.
    assert!(c.is_active(reference(None)).await.unwrap().into_inner().result);
    let zero = decide(&prefix, 0).await;
    cached(&scaler, &zero).await;
    assert!(!c.is_active(reference(None)).await.unwrap().into_inner().result);
    let values = c.get_metrics(metrics_request("m")).await.unwrap().into_inner().metric_values;
    assert_eq!((values[0].metric_value, values[0].metric_value_float), (0, 0.0));

    // StreamIsActive: the current activity on connect.
    let mut stream = c.stream_is_active(reference(None)).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(!first.result);

    // Health (Redis reachable) and the admin port.
    assert_eq!(health(scaler.addr, "").await, ServingStatus::Serving);
    assert_eq!(health(scaler.addr, "externalscaler.ExternalScaler").await, ServingStatus::Serving);
    assert_eq!(http_get(scaler.admin_addr, "/livez").await.0, 200);
    assert_eq!(http_get(scaler.admin_addr, "/readyz").await.0, 200);
    let (status, body) = http_get(scaler.admin_addr, "/v1/decision").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["desired_replicas"], 0, "{body}");
    let (status, text) = http_get(scaler.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"rtc_scaler_requests_total{rpc="GetMetrics",outcome="ok"} 3"#,
        r#"rtc_scaler_requests_total{rpc="GetMetricSpec",outcome="ok"} 2"#,
        r#"rtc_scaler_requests_total{rpc="IsActive",outcome="ok"} 2"#,
        r#"rtc_scaler_requests_total{rpc="StreamIsActive",outcome="ok"} 1"#,
        r#"rtc_scaler_request_duration_seconds_bucket{rpc="GetMetrics",le="+Inf"} 3"#,
        "rtc_scaler_desired_replicas 0",
        "rtc_scaler_decision_age_seconds ",
        "rtc_scaler_redis_up 1",
        "rtc_scaler_decision_fresh 1",
        "rtc_scaler_streams_open 1",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    drop(stream);

    // A critical task that ends early is reported (the binary exits
    // non-zero on it) and turns /livez to 503.
    assert!(scaler.abort_task_for_test("decision watcher"));
    let failure = tokio::time::timeout(Duration::from_secs(5), scaler.failed()).await.unwrap();
    assert_eq!(failure.to_string(), "critical task `decision watcher` was cancelled");
    assert_eq!(http_get(scaler.admin_addr, "/livez").await, (503, failure.to_string()));
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_missing_and_malformed_decisions_are_unavailable() {
    let prefix = prefix();
    let scaler = scaler(&prefix, &["--decision-max-age-ms", "1500"]).await;
    let mut c = client(scaler.addr).await;
    let message = expect_unavailable(&mut c, "missing").await;
    assert!(message.contains("no load-balancer leader"), "{message}");

    // Older than its bound.
    write_raw(&prefix, &rtc_core::Document::to_json(&decision(4, now_ms() - 1_600))).await;
    let message = expect_unavailable(&mut c, "stale").await;
    assert!(message.contains("staleness bound 1500 ms"), "{message}");

    // Fresh when written, stale 1.5 s later: judged at answer time.
    let d = decide(&prefix, 4).await;
    cached(&scaler, &d).await;
    assert_eq!(c.get_metrics(metrics_request("m")).await.unwrap().into_inner().metric_values[0].metric_value, 4);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    expect_unavailable(&mut c, "stale").await;

    // Not a decision at all, a field out of range, another contract version.
    write_raw(&prefix, "{not json").await;
    let message = expect_unavailable(&mut c, "malformed").await;
    assert!(message.contains("not valid JSON"), "{message}");
    let valid: serde_json::Value = serde_json::from_str(&rtc_core::Document::to_json(&decision(2, now_ms()))).unwrap();
    for (field, value, words) in
        [("desired_replicas", serde_json::json!(-3), "desired_replicas"), ("v", serde_json::json!(2), "version 2")]
    {
        let mut v = valid.clone();
        v[field] = value;
        write_raw(&prefix, &v.to_string()).await;
        let message = expect_unavailable(&mut c, words).await;
        assert!(message.starts_with("scale decision malformed"), "{message}");
    }

    // And back.
    let d = decide(&prefix, 6).await;
    cached(&scaler, &d).await;
    assert!(c.is_active(reference(None)).await.unwrap().into_inner().result);
    delete(&prefix).await;
    expect_unavailable(&mut c, "missing").await;

    let (_, text) = http_get(scaler.admin_addr, "/metrics").await;
    for outcome in ["missing", "stale", "malformed"] {
        let line = format!(r#"rtc_scaler_requests_total{{rpc="GetMetrics",outcome="{outcome}"}} "#);
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(text.contains("rtc_scaler_decision_fresh 0"), "{text}");
    // Readiness is about Redis, which is fine.
    assert_eq!(http_get(scaler.admin_addr, "/readyz").await.0, 200);
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_is_unavailable_and_back_answers_again() {
    let prefix = prefix();
    let proxy = Proxy::start(&redis_url()).await;
    let scaler = scaler_on(&proxy.url, &prefix, &[]).await;
    // The leader keeps deciding throughout (straight to Redis).
    let keep_deciding = {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            loop {
                decide(&prefix, 3).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut c = client(scaler.addr).await;
    until("answers", Duration::from_secs(3), async || c.get_metrics(metrics_request("m")).await.is_ok()).await;
    assert_eq!(health(scaler.addr, "").await, ServingStatus::Serving);

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    until("unavailable: redis unreachable", Duration::from_secs(3), async || {
        match c.is_active(reference(None)).await {
            Err(e) => e.code() == Code::Unavailable && e.message().contains("redis unreachable"),
            Ok(_) => false,
        }
    })
    .await;
    eprintln!("UNAVAILABLE {:?} after the cut", cut_at.elapsed());
    let err = c.get_metrics(metrics_request("m")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().starts_with("redis unreachable"), "{}", err.message());
    assert_eq!(health(scaler.addr, "").await, ServingStatus::NotServing);
    assert_eq!(health(scaler.addr, "externalscaler.ExternalScaler").await, ServingStatus::NotServing);
    let (status, body) = http_get(scaler.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(http_get(scaler.admin_addr, "/metrics").await.1.contains("rtc_scaler_redis_up 0"));

    proxy.restore();
    until("answers again", Duration::from_secs(5), async || c.get_metrics(metrics_request("m")).await.is_ok()).await;
    let values = c.get_metrics(metrics_request("m")).await.unwrap().into_inner().metric_values;
    assert_eq!(values[0].metric_value, 3);
    assert_eq!(health(scaler.addr, "").await, ServingStatus::Serving);
    assert_eq!(http_get(scaler.admin_addr, "/readyz").await.0, 200);
    keep_deciding.abort();
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_active_sends_on_connect_and_on_inactive_to_active_edges_only() {
    let prefix = prefix();
    let scaler = scaler(&prefix, &[]).await;
    let mut c = client(scaler.addr).await;
    let mut stream = c.stream_is_active(reference(None)).await.unwrap().into_inner();
    let quiet = Duration::from_millis(200);

    // No decision yet: the activity is unknown and nothing is sent.
    assert!(tokio::time::timeout(quiet, stream.message()).await.is_err());
    // Then: first fresh decision (on connect), and edges only.
    let sequence: [(u32, Option<bool>); 9] = [
        (0, Some(false)),
        (0, None),
        (2, Some(true)),
        (4, None),
        (3, None),
        (0, None),
        (0, None),
        (1, Some(true)),
        (5, None),
    ];
    for (step, (desired, expected)) in sequence.into_iter().enumerate() {
        let d = decide(&prefix, desired).await;
        cached(&scaler, &d).await;
        match expected {
            Some(result) => {
                let got = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
                let got = got.unwrap_or_else(|_| panic!("step {step}: nothing sent for {desired}")).unwrap().unwrap();
                assert_eq!(got.result, result, "step {step}");
            }
            None => {
                let got = tokio::time::timeout(quiet, stream.message()).await;
                assert!(got.is_err(), "step {step}: unexpected {got:?} for {desired}");
            }
        }
    }
    // A stale decision sends nothing either, and a fresh one after it is
    // compared with the last known activity (active: no edge).
    write_raw(&prefix, &rtc_core::Document::to_json(&decision(0, now_ms() - 10_000))).await;
    assert!(tokio::time::timeout(quiet, stream.message()).await.is_err());
    let d = decide(&prefix, 2).await;
    cached(&scaler, &d).await;
    assert!(tokio::time::timeout(quiet, stream.message()).await.is_err());

    // A client that goes away ends its stream on the server.
    let mut second = c.stream_is_active(reference(None)).await.unwrap().into_inner();
    assert!(second.message().await.unwrap().unwrap().result);
    let open = |n: u32| format!("rtc_scaler_streams_open {n}\n");
    assert!(scaler.metrics.render().contains(&open(2)));
    drop(second);
    until("the server drops the stream", Duration::from_secs(3), async || scaler.metrics.render().contains(&open(1)))
        .await;

    // Server shutdown ends the stream cleanly (status OK, end of stream).
    let shutdown = tokio::spawn(scaler.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.expect("stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(3), shutdown).await.expect("shutdown completes").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_identically() {
    let prefix = prefix();
    let d = decide(&prefix, 9).await;
    let (a, b) = (scaler(&prefix, &[]).await, scaler(&prefix, &[]).await);
    cached(&a, &d).await;
    cached(&b, &d).await;
    let (mut ca, mut cb) = (client(a.addr).await, client(b.addr).await);
    let (ra, rb) = (
        ca.get_metrics(metrics_request("m")).await.unwrap().into_inner(),
        cb.get_metrics(metrics_request("m")).await.unwrap().into_inner(),
    );
    assert_eq!(ra, rb);
    assert_eq!(ra.metric_values[0].metric_value, 9);
    a.shutdown().await;
    b.shutdown().await;
}
