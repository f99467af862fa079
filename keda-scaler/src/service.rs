//! The scaler service: the decision watcher, the gRPC server (KEDA's
//! contract plus the standard health service) and the admin HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rtc_core::supervisor::{Supervisor, TaskFailure};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Admin};
use crate::cache::{self, Snapshot, Watcher};
use crate::config::Config;
use crate::grpc::Scaler;
use crate::metrics::Metrics;
use crate::proto::external_scaler_server::ExternalScalerServer;
use crate::tls::{self, TlsError};

/// The gRPC service name the health service reports on (besides `""`).
pub const SERVICE_NAME: &str = "externalscaler.ExternalScaler";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("tls: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct ScalerHandle {
    /// The gRPC address (KEDA's `scalerAddress`).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// The decision cache every RPC answers from.
    pub cache: watch::Receiver<Snapshot>,
    tasks: Supervisor,
    grace: Duration,
}

impl ScalerHandle {
    /// Stops accepting, ends open `StreamIsActive` streams cleanly, lets
    /// requests in flight finish (up to the grace period), then stops.
    pub async fn shutdown(mut self) {
        self.tasks.stop(self.grace).await;
    }

    /// Waits until a critical task ends early (the process must exit).
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Aborts one critical task, as if it had ended on its own (fault
    /// tests of the supervision).
    #[doc(hidden)]
    pub fn abort_task_for_test(&self, name: &'static str) -> bool {
        self.tasks.abort_for_test(name)
    }
}

/// Wall-clock milliseconds, the clock decisions are stamped with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn start(config: Config) -> Result<ScalerHandle, StartError> {
    let tls = tls::server_config(&config)?;
    let client = config.redis.client()?;
    let conn = rtc_core::redis_io::connection_manager(&client, config.redis_timeout())?;
    let bind = |addr: String| async move {
        TcpListener::bind(&addr).await.map_err(|source| StartError::Listen { addr: addr.clone(), source })
    };
    let listener = bind(config.listen.clone()).await?;
    let admin_listener = bind(config.admin_listen.clone()).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: config.admin_listen.clone(), source })?;

    let shutdown = CancellationToken::new();
    let mut tasks = Supervisor::new(shutdown.clone());
    let metrics = Arc::new(Metrics::new());
    let max_age = config.max_age();
    let (cache_tx, cache) = watch::channel(Snapshot::not_loaded());

    // Health: NOT_SERVING until the watcher has reached Redis.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in ["", SERVICE_NAME] {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    let watcher =
        Watcher { conn, key: config.redis.keys().scale_decision(), poll: config.poll_interval(), clock: now_ms };
    let observer = Observer { reporter, metrics: metrics.clone(), max_age, serving: AtomicU8::new(UNKNOWN) };
    tasks.spawn("decision watcher", watcher.run(cache_tx, observer, shutdown.clone()));

    let scaler = Scaler {
        cache: cache.clone(),
        max_age,
        default_metric_name: config.metric_name.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        clock: now_ms,
    };
    let mut server = Server::builder();
    let secure = tls.is_some();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    // Every error answer of a unary call is counted, also those tonic gives
    // before a handler runs (a request that does not decode, an unknown
    // method): they carry grpc-status in their headers (trailers-only). A
    // stream that ends in an error carries it in trailers: not counted here.
    let counted = metrics.clone();
    let mut server = server.layer(tower::util::MapResponseLayer::new(move |response: http::Response<_>| {
        if let Some(status) = response.headers().get("grpc-status") {
            counted.grpc_status(status.as_bytes());
        }
        response
    }));
    let router = server.add_service(health_service).add_service(ExternalScalerServer::new(scaler));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let token = shutdown.clone();
    tasks.spawn("grpc server", async move {
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, token.cancelled_owned()).await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });

    let app = admin::router(Admin {
        liveness: tasks.liveness(),
        cache: cache.clone(),
        metrics: metrics.clone(),
        max_age,
        clock: now_ms,
    });
    let token = shutdown.clone();
    tasks.spawn("admin http", async move {
        if let Err(e) = axum::serve(admin_listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
            tracing::error!(error = %e, "admin http server failed");
        }
    });
    tracing::info!(%addr, %admin_addr, tls = secure, mtls = config.tls_client_ca.is_some(), ?max_age,
        key = %config.redis.keys().scale_decision(), "keda scaler started");
    Ok(ScalerHandle { addr, admin_addr, metrics, cache, tasks, grace: config.shutdown_grace() })
}

const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;

/// Keeps the metrics and the health service in step with the cache.
struct Observer {
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    max_age: Duration,
    serving: AtomicU8,
}

impl cache::Observer for Observer {
    async fn observed(&self, snapshot: &Snapshot, _changed: bool) {
        self.metrics.redis_read(&snapshot.reading);
        self.metrics.observe(snapshot, now_ms(), self.max_age);
        let (now, status) = if snapshot.redis_reachable() {
            (SERVING, ServingStatus::Serving)
        } else {
            (NOT_SERVING, ServingStatus::NotServing)
        };
        if self.serving.swap(now, Ordering::Relaxed) != now {
            for name in ["", SERVICE_NAME] {
                self.reporter.set_service_status(name, status).await;
            }
        }
    }
}
