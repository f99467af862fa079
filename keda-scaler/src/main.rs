use clap::Parser;
use rtc_keda_scaler::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .json()
        .init();
    let scaler = rtc_keda_scaler::service::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        failure = scaler.failed() => Some(failure),
    };
    tracing::info!("stopping");
    scaler.shutdown().await;
    match failed {
        // Exit non-zero so the orchestrator restarts this replica.
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}
