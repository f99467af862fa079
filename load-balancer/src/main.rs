use clap::{Parser, Subcommand};
use rtc_load_balancer::ring_report;

/// rtc load balancer.
#[derive(Debug, Parser)]
#[command(name = "load-balancer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capacity planning: spread and movement of users for this engine and
    /// two classic baselines, computed side by side.
    RingReport(ring_report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::RingReport(args) => {
            let report = ring_report::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ring_report::render_table(&report));
            }
        }
    }
    Ok(())
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
    }
}
