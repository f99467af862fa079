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
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    scaler.shutdown().await;
    Ok(())
}
