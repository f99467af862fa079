use clap::{Parser, Subcommand};
use rtc_load_balancer::{ring_report, scale_report};

/// rtc load balancer.
#[derive(Debug, Parser)]
#[command(name = "load-balancer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer: election, assignment, routing.
    Serve(Box<rtc_load_balancer::config::ServeArgs>),
    /// Capacity planning: spread and movement of users for this engine and
    /// two classic baselines, computed side by side.
    RingReport(ring_report::ReportArgs),
    /// Scaling quality: rtc's engine, the plain HPA rules and hand-written
    /// steps on the same traffic traces, side by side on a virtual clock.
    ScaleReport(Box<scale_report::ReportArgs>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args)?,
        Command::RingReport(args) => {
            let report = ring_report::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ring_report::render_table(&report));
            }
        }
        Command::ScaleReport(args) => {
            let runs = scale_report::run(&args)?;
            if let Some(path) = &args.chart {
                std::fs::write(path, scale_report::chart::svg(&runs))?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&scale_report::report(&runs))?);
            } else {
                print!("{}", scale_report::render_table(&runs));
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn serve(args: rtc_load_balancer::config::ServeArgs) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .json()
        .init();
    let lb = rtc_load_balancer::service::start(args).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        failure = lb.failed() => Some(failure),
    };
    tracing::info!("stopping");
    lb.shutdown().await;
    match failed {
        // Exit non-zero so the orchestrator restarts this replica.
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Cli::command()), Vec::<String>::new());
    }

    #[test]
    fn add_and_remove_exclude_each_other() {
        assert!(Cli::try_parse_from(["lb", "ring-report", "--add", "1", "--remove", "1"]).is_err());
        assert!(Cli::try_parse_from(["lb", "ring-report", "--nodes", "0"]).is_err());
        // Authentication is never implied: `none` must be asked for.
        assert!(Cli::try_parse_from(["lb", "serve"]).is_err());
        assert!(Cli::try_parse_from(["lb", "serve", "--auth", "none"]).is_ok());
    }
}
