//! Kubernetes actuation against a fake API server (`tower_test::mock`): each
//! test asserts the exact requests the actuator sends and answers them as the
//! real API server would (objects on success, a `Status` on failure).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::fmt::Debug;
use std::pin::pin;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use rtc_load_balancer::actuate::{ActuateError, Actuator, WorkloadKind};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiServer = Handle<Request<Body>, Response<Body>>;

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/rtc/deployments/socket";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/rtc/statefulsets/socket";
const VICTIM: &str = "/api/v1/namespaces/rtc/pods/socket-abc";

fn fake() -> (Actuator, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    // The client's default namespace differs on purpose: the actuator must use "rtc".
    let client = kube::Client::new(service, "default");
    (Actuator::new(client, "rtc", "socket"), handle)
}

/// The next request, which must be `method` on `path` with exactly the query
/// parameters `query` (kube writes `?&name=value`; the API server, like us,
/// reads the pairs, not the raw string).
async fn expect(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
) -> (Request<Body>, SendResponse<Response<Body>>) {
    let (request, respond) = server.next_request().await.expect("the actuator sent no request");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().path(), path);
    let pairs: Vec<(&str, &str)> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    assert_eq!(pairs, query);
    (request, respond)
}

/// Runs the actuator's `call` while the fake API server's `script` expects and
/// answers requests. Fails (rather than hangs) when the call finishes before
/// the script has seen every request it expects, or sends one more after.
async fn exchange<T: Debug>(
    server: &mut ApiServer,
    call: impl Future<Output = T>,
    script: impl AsyncFnOnce(&mut ApiServer),
) -> T {
    let mut call = pin!(call);
    tokio::select! {
        // The script finishes as it sends its last answer, before the call can
        // see it: a call that finishes first skipped an expected request.
        biased;
        () = script(&mut *server) => {}
        result = &mut call => panic!("the actuator finished ({result:?}) before sending every expected request"),
    }
    tokio::select! {
        result = &mut call => result,
        Some((request, _)) = server.next_request() => panic!("unexpected request: {} {}", request.method(), request.uri()),
    }
}

/// Asserts that the actuator sent no request left unread. Dropping it drops
/// every client handle, so the channel closes once everything sent is read.
async fn expect_no_more(actuator: Actuator, mut server: ApiServer) {
    drop(actuator);
    if let Some((request, _)) = server.next_request().await {
        panic!("unexpected request: {} {}", request.method(), request.uri());
    }
}

fn object(value: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&value).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap()
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    failure(404, "NotFound", &format!("{resource} \"{name}\" not found"))
}

fn conflict() -> Response<Body> {
    failure(
        409,
        "Conflict",
        "Operation cannot be fulfilled on pods \"socket-abc\": the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "socket", "namespace": "rtc", "uid": "d-1", "resourceVersion": "11" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "socket" } },
            "template": {
                "metadata": { "labels": { "app": "socket" } },
                "spec": { "containers": [{ "name": "socket", "image": "rtc/socket:dev" }] }
            }
        }
    })
}

fn statefulset() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": "socket", "namespace": "rtc", "uid": "s-1", "resourceVersion": "12" },
        "spec": {
            "replicas": 3,
            "serviceName": "socket",
            "selector": { "matchLabels": { "app": "socket" } },
            "template": {
                "metadata": { "labels": { "app": "socket" } },
                "spec": { "containers": [{ "name": "socket", "image": "rtc/socket:dev" }] }
            }
        }
    })
}

fn victim_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "socket-abc", "namespace": "rtc", "uid": "p-1", "resourceVersion": "13",
            "annotations": { "controller.kubernetes.io/pod-deletion-cost": "-2147483648" }
        },
        "spec": { "containers": [{ "name": "socket", "image": "rtc/socket:dev" }] }
    })
}

/// The next request must be the one merge patch of the victim's deletion cost.
async fn expect_victim_patch(server: &mut ApiServer) -> SendResponse<Response<Body>> {
    expect_cost_patch(server, VICTIM, json!("-2147483648")).await
}

/// A merge patch of the pod at `path` setting its deletion cost to `cost`
/// (`null`: removing it).
async fn expect_cost_patch(server: &mut ApiServer, path: &str, cost: Value) -> SendResponse<Response<Body>> {
    let (request, respond) = expect(server, Method::PATCH, path, &[("fieldManager", "rtc-load-balancer")]).await;
    assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
    let body = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, json!({"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":cost}}}));
    respond
}

#[tokio::test]
async fn detects_a_deployment_with_one_get() {
    let (actuator, mut server) = fake();
    let kind = exchange(&mut server, actuator.detect_kind(), async |server| {
        let (request, respond) = expect(server, Method::GET, DEPLOYMENT, &[]).await;
        assert!(request.into_body().collect_bytes().await.unwrap().is_empty());
        respond.send_response(object(deployment()));
    })
    .await;
    assert_eq!(kind.unwrap(), WorkloadKind::Deployment);
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn detects_a_statefulset_after_the_deployment_is_not_found() {
    let (actuator, mut server) = fake();
    let kind = exchange(&mut server, actuator.detect_kind(), async |server| {
        let (_, respond) = expect(server, Method::GET, DEPLOYMENT, &[]).await;
        respond.send_response(not_found("deployments.apps", "socket"));
        let (_, respond) = expect(server, Method::GET, STATEFULSET, &[]).await;
        respond.send_response(object(statefulset()));
    })
    .await;
    assert_eq!(kind.unwrap(), WorkloadKind::StatefulSet);
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn neither_workload_found_is_not_found_naming_both() {
    let (actuator, mut server) = fake();
    let kind = exchange(&mut server, actuator.detect_kind(), async |server| {
        let (_, respond) = expect(server, Method::GET, DEPLOYMENT, &[]).await;
        respond.send_response(not_found("deployments.apps", "socket"));
        let (_, respond) = expect(server, Method::GET, STATEFULSET, &[]).await;
        respond.send_response(not_found("statefulsets.apps", "socket"));
    })
    .await;
    match kind {
        Err(ActuateError::NotFound(message)) => {
            for part in ["deployments.apps", "statefulsets.apps", "\"socket\"", "\"rtc\""] {
                assert!(message.contains(part), "{message:?} lacks {part}");
            }
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn forbidden_detection_names_the_missing_permission_and_stops() {
    let (actuator, mut server) = fake();
    let kind = exchange(&mut server, actuator.detect_kind(), async |server| {
        let (_, respond) = expect(server, Method::GET, DEPLOYMENT, &[]).await;
        respond.send_response(failure(
            403,
            "Forbidden",
            "deployments.apps \"socket\" is forbidden: User \"system:serviceaccount:rtc:load-balancer\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"rtc\"",
        ));
    })
    .await;
    match kind {
        Err(ActuateError::Forbidden(message)) => {
            assert!(message.contains("get deployments.apps"), "{message:?}");
            assert!(message.contains("\"rtc\""), "{message:?}");
            assert!(message.contains("system:serviceaccount:rtc:load-balancer"), "server message kept: {message:?}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // No fall-through to the StatefulSet: a 403 says nothing about what exists.
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn deployment_victim_gets_the_lowest_deletion_cost_in_one_patch() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::Deployment, "socket-abc"), async |server| {
        expect_victim_patch(server).await.send_response(object(victim_pod()));
    })
    .await;
    marked.unwrap();
    // Exactly one request: no list, no other pod.
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn a_conflict_is_retried_once() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::Deployment, "socket-abc"), async |server| {
        expect_victim_patch(server).await.send_response(conflict());
        expect_victim_patch(server).await.send_response(object(victim_pod()));
    })
    .await;
    marked.unwrap();
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn two_conflicts_are_a_conflict_error() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::Deployment, "socket-abc"), async |server| {
        expect_victim_patch(server).await.send_response(conflict());
        expect_victim_patch(server).await.send_response(conflict());
    })
    .await;
    match marked {
        Err(ActuateError::Conflict(message)) => assert!(message.contains("patch pods \"socket-abc\""), "{message:?}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn a_vanished_victim_is_not_found() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::Deployment, "socket-abc"), async |server| {
        expect_victim_patch(server).await.send_response(not_found("pods", "socket-abc"));
    })
    .await;
    match marked {
        Err(ActuateError::NotFound(message)) => assert!(message.contains("\"socket-abc\""), "{message:?}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Not retried: the pod is gone.
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn forbidden_patch_names_the_pods_permission() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::Deployment, "socket-abc"), async |server| {
        expect_victim_patch(server).await.send_response(failure(
            403,
            "Forbidden",
            "pods \"socket-abc\" is forbidden: User \"system:serviceaccount:rtc:load-balancer\" cannot patch resource \"pods\" in API group \"\" in the namespace \"rtc\"",
        ));
    })
    .await;
    match marked {
        Err(ActuateError::Forbidden(message)) => assert!(message.contains("patch pods"), "{message:?}"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn a_statefulset_victim_needs_no_request() {
    let (actuator, mut server) = fake();
    let marked = exchange(&mut server, actuator.mark_victim(WorkloadKind::StatefulSet, "socket-2"), async |_| {}).await;
    marked.unwrap();
    expect_no_more(actuator, server).await;
}

#[tokio::test]
async fn other_failures_surface_as_api_errors() {
    let (actuator, mut server) = fake();
    let kind = exchange(&mut server, actuator.detect_kind(), async |server| {
        let (_, respond) = expect(server, Method::GET, DEPLOYMENT, &[]).await;
        respond.send_response(failure(500, "InternalError", "etcdserver: request timed out"));
    })
    .await;
    match kind {
        Err(ActuateError::Api(kube::Error::Api(status))) => assert_eq!(status.code, 500),
        other => panic!("expected Api, got {other:?}"),
    }
}

/// A leader paused past its lease (SIGSTOP) and resumed still runs one tick
/// before it learns it was deposed: its patches never reach the API server.
/// The current leader clears the mark of a victim that serves again, then
/// marks the new one.
#[tokio::test]
async fn a_deposed_leader_patches_nothing_and_a_returning_victim_is_unmarked() {
    use redis::AsyncCommands;
    use rtc_load_balancer::decide::{Actuation, patch_fenced};
    use rtc_load_balancer::election::{ElectionError, LeaseStore};
    let url = std::env::var("RTC_TEST_REDIS_URL").expect("run through scripts/test");
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys = rtc_core::Keys::new(format!("act{}:", std::process::id()));
    let store = LeaseStore::new(&keys, std::time::Duration::from_secs(10));
    let deposed = store.try_acquire(&mut conn, "lb-a", 1).await.unwrap().unwrap();
    let _: () = conn.del(keys.leader()).await.unwrap();
    let leader = store.try_acquire(&mut conn, "lb-b", 1).await.unwrap().unwrap();

    let (actuator, mut server) = fake();
    let actuation = Actuation { kind: WorkloadKind::Deployment, kube: Some(Box::new(actuator)) };
    let metrics = rtc_load_balancer::metrics::Metrics::new();
    let victims = ["socket-abc".to_owned()];
    let returning = ["socket-old".to_owned()];
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        patch_fenced((&store, &mut conn, &deposed), &actuation, &victims, &returning, &metrics),
    )
    .await
    .expect("refused without waiting on the API server");
    assert!(matches!(refused, Err(ElectionError::Fenced)), "{refused:?}");

    // The leader's patches: the first request the API server sees.
    let call = patch_fenced((&store, &mut conn, &leader), &actuation, &victims, &returning, &metrics);
    let patched = exchange(&mut server, call, async |server| {
        let old = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "socket-old", "namespace": "rtc", "uid": "p-0", "resourceVersion": "9"}});
        expect_cost_patch(server, "/api/v1/namespaces/rtc/pods/socket-old", Value::Null)
            .await
            .send_response(object(old));
        expect_victim_patch(server).await.send_response(object(victim_pod()));
    })
    .await
    .unwrap();
    assert!(patched.mark_error.is_none() && patched.unmark_failed.is_empty(), "{patched:?}");
    let Actuation { kube: Some(actuator), .. } = actuation else { unreachable!() };
    expect_no_more(*actuator, server).await;
}
