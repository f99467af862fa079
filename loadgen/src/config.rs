//! Settings of the load generator. Every setting is a flag with an `RTC_*`
//! environment variable, parsed in one place; the checks that need the
//! machine (open files, ports) are pure functions over numbers read at the
//! edge.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::profile::Profile;

/// The profile run when none is given: about 40 s, up to 50 users.
pub const DEFAULT_PROFILE: &str = "ramp:10s:0->50,plateau:20s:50,ramp:10s:50->0";

/// rtc load generator: simulated users that follow the client protocol
/// (route, connect, resume, dedupe), a Kafka producer to random online
/// users, and a report of what was sent, delivered and lost.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about, args_override_self = true)]
pub struct Config {
    /// Load-balancer base URLs (`http://host:port`, comma-separated). Each
    /// user starts on one and fails over to the next on connection errors.
    #[arg(long = "lb", env = "RTC_LOADGEN_LB", value_delimiter = ',', required = true)]
    pub lbs: Vec<String>,
    /// Kafka bootstrap servers for the producer (needed when `--rate` > 0).
    #[arg(long, env = "RTC_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic carrying messages to users (key = recipient user id).
    #[arg(long, env = "RTC_TOPIC", default_value = rtc_core::config::DEFAULT_TOPIC)]
    pub topic: String,
    /// Messages per second, to random online users (0: no producer).
    #[arg(long, env = "RTC_LOADGEN_RATE", default_value_t = 50.0)]
    pub rate: f64,
    /// Load profile: phases like `ramp:60s:0->2000,plateau:60s:2000,spike:20s:5000,idle:30s`.
    #[arg(long, env = "RTC_LOADGEN_PROFILE", conflicts_with = "profile_file")]
    pub profile: Option<String>,
    /// A file holding the profile (one or more phases per line, `#` comments).
    #[arg(long, env = "RTC_LOADGEN_PROFILE_FILE")]
    pub profile_file: Option<PathBuf>,
    /// Most users online at once; a profile asking for more is refused.
    #[arg(long, env = "RTC_LOADGEN_MAX_USERS", default_value_t = 10_000)]
    pub max_users: u64,
    /// User ids are `<prefix><n>`; `[A-Za-z0-9._-]` only.
    #[arg(long, env = "RTC_LOADGEN_USER_PREFIX", default_value = "lg-")]
    pub user_prefix: String,
    /// Local source addresses (comma-separated) the connections are spread
    /// over, e.g. 127.0.0.2,127.0.0.3 (more ephemeral ports, and separate
    /// per-address rate limits at the load balancer). Empty: the OS picks.
    #[arg(long, env = "RTC_LOADGEN_SOURCE_IPS", value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// After the profile: how long to wait for messages still on their way.
    #[arg(long, env = "RTC_LOADGEN_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,
    /// A leaving user waits (at most this long) for messages produced to it
    /// before it closes.
    #[arg(long, env = "RTC_LOADGEN_LEAVE_GRACE_MS", default_value_t = 3_000)]
    pub leave_grace_ms: u64,
    /// Connect attempts (route + WebSocket + welcome) in flight at once.
    #[arg(long, env = "RTC_LOADGEN_CONNECT_CONCURRENCY", default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Bound on each connect step: one route request; TCP, WebSocket
    /// upgrade and `welcome` together.
    #[arg(long, env = "RTC_LOADGEN_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// First retry delay after a failed attempt (doubles, with jitter).
    #[arg(long, env = "RTC_LOADGEN_BACKOFF_BASE_MS", default_value_t = 50)]
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "RTC_LOADGEN_BACKOFF_MAX_MS", default_value_t = 2_000)]
    pub backoff_max_ms: u64,
    /// Failed attempts in a row after which a user gives up.
    #[arg(long, env = "RTC_LOADGEN_MAX_ATTEMPTS", default_value_t = 200)]
    pub max_attempts: u32,
    /// Padding added to each message body (bytes).
    #[arg(long, env = "RTC_LOADGEN_BODY_BYTES", default_value_t = 0)]
    pub body_bytes: usize,
    /// librdkafka `message.timeout.ms`: a record not acknowledged by then
    /// counts as failed.
    #[arg(long, env = "RTC_LOADGEN_ACK_TIMEOUT_MS", default_value_t = 30_000)]
    pub ack_timeout_ms: u64,
    /// Write the final report (JSON) here.
    #[arg(long, env = "RTC_LOADGEN_REPORT")]
    pub report: Option<PathBuf>,
    /// Write one JSON line per second here (live view, charts).
    #[arg(long, env = "RTC_LOADGEN_TIMELINE")]
    pub timeline: Option<PathBuf>,
    /// Print a progress line to stderr this often (0: never).
    #[arg(long, env = "RTC_LOADGEN_PROGRESS_SECS", default_value_t = 5)]
    pub progress_secs: u64,
    /// Runtime worker threads.
    #[arg(long, env = "RTC_LOADGEN_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Lost messages listed in the report.
    #[arg(long, env = "RTC_LOADGEN_LOST_SAMPLE", default_value_t = 20)]
    pub lost_sample: usize,
}

impl Config {
    /// The profile from `--profile`, `--profile-file`, or the default.
    pub fn load_profile(&self) -> anyhow::Result<Profile> {
        let text = match (&self.profile, &self.profile_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the profile file {}: {e}", path.display()))?,
            (None, None) => DEFAULT_PROFILE.to_owned(),
        };
        Profile::parse(&text).map_err(|e| anyhow::anyhow!("--profile: {e}"))
    }

    /// Checks that need no I/O.
    pub fn validate(&self, profile: &Profile) -> anyhow::Result<()> {
        anyhow::ensure!(!self.lbs.is_empty(), "--lb: at least one load balancer is needed");
        for lb in &self.lbs {
            lb_url(lb)?;
        }
        anyhow::ensure!(self.rate.is_finite() && self.rate >= 0.0, "--rate must be a number ≥ 0");
        anyhow::ensure!(
            self.rate == 0.0 || self.kafka_brokers.as_deref().is_some_and(|b| !b.is_empty()),
            "--kafka-brokers (RTC_KAFKA_BROKERS) is needed to produce messages (or set --rate 0)"
        );
        anyhow::ensure!(
            !self.user_prefix.is_empty()
                && self.user_prefix.len() <= 64
                && self.user_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "--user-prefix must be 1..=64 characters of [A-Za-z0-9._-]"
        );
        anyhow::ensure!(
            profile.peak() <= self.max_users,
            "the profile asks for {} users at its peak, more than --max-users {}",
            profile.peak(),
            self.max_users
        );
        anyhow::ensure!(self.connect_concurrency >= 1, "--connect-concurrency must be at least 1");
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        Ok(())
    }
}

/// The machine limits a run has to fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Soft `RLIMIT_NOFILE` of this process.
    pub open_files: u64,
    /// Hard `RLIMIT_NOFILE` (what `ulimit -n` can be raised to).
    pub open_files_hard: u64,
    /// Size of the ephemeral port range.
    pub ephemeral_ports: u64,
}

/// Files the process needs besides its users' sockets (runtime, Kafka
/// client, report files, stdio).
pub const FILE_MARGIN: u64 = 128;

/// Refuses, with the reason and the fix, a run that cannot fit: each user
/// holds one socket (never two), each attempt in flight one more for its
/// route request.
/// A load balancer's base URL from `--lb`: `http://host:port`, or
/// `host:port` (taken as `http://`).
pub fn lb_url(text: &str) -> anyhow::Result<String> {
    let url = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
    anyhow::ensure!(url.starts_with("http://"), "--lb {text:?}: only http:// load balancers are supported");
    let authority = url["http://".len()..].split('/').next().unwrap_or_default();
    anyhow::ensure!(!authority.is_empty(), "--lb {text:?}: no host");
    authority.parse::<http::uri::Authority>().map_err(|e| anyhow::anyhow!("--lb {text:?}: {e}"))?;
    Ok(url.trim_end_matches('/').to_owned())
}

pub fn check_fits(peak_users: u64, concurrency: u64, source_ips: u64, limits: Limits) -> Result<(), String> {
    let files = peak_users + concurrency + FILE_MARGIN;
    if files > limits.open_files {
        let fix = if files <= limits.open_files_hard {
            format!("raise it with `ulimit -n {files}` (the hard limit is {})", limits.open_files_hard)
        } else {
            format!(
                "the hard limit is {}: lower the profile's peak to at most {} users, or run several load generators",
                limits.open_files_hard,
                limits.open_files_hard.saturating_sub(concurrency + FILE_MARGIN)
            )
        };
        return Err(format!(
            "the profile needs up to {files} open files ({peak_users} users + {concurrency} connects in flight + {FILE_MARGIN}) \
             but this process may open {}: {fix}",
            limits.open_files
        ));
    }
    let per_ip = (peak_users + concurrency).div_ceil(source_ips.max(1));
    // Keep a tenth of the range for everything else on the machine.
    let usable = limits.ephemeral_ports - limits.ephemeral_ports / 10;
    if per_ip > usable {
        let needed = (peak_users + concurrency).div_ceil(usable.max(1));
        return Err(format!(
            "{per_ip} connections per source address exceed the {usable} usable ephemeral ports: \
             spread them with --source-ips over at least {needed} addresses (127.0.0.2,127.0.0.3,…)"
        ));
    }
    Ok(())
}

/// Reads the limits from `/proc` (Linux); `None` elsewhere.
pub fn read_limits() -> Option<Limits> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let (open_files, open_files_hard) = parse_open_files(&limits)?;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_ports = parse_port_range(&range).unwrap_or(28_232);
    Some(Limits { open_files, open_files_hard, ephemeral_ports })
}

fn parse_open_files(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| s.map(|s| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() });
    Some((parse(fields.next())??, parse(fields.next())??))
}

fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>());
    let (low, high) = (it.next()?.ok()?, it.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Config::command()), Vec::<String>::new());
    }

    #[test]
    fn defaults_and_lists() {
        let c = parse(&["--lb", "http://127.0.0.1:8000,127.0.0.1:8001", "--kafka-brokers", "127.0.0.1:9092"]);
        assert_eq!(c.lbs, vec!["http://127.0.0.1:8000", "127.0.0.1:8001"]);
        assert_eq!(c.topic, "rtc.messages");
        assert!(c.source_ips.is_empty());
        let profile = c.load_profile().unwrap();
        assert_eq!(profile.to_string(), DEFAULT_PROFILE);
        c.validate(&profile).unwrap();
        let c = parse(&["--lb", "127.0.0.1:8000", "--source-ips", "127.0.0.2,127.0.0.3", "--rate", "0"]);
        assert_eq!(c.source_ips.len(), 2);
        c.validate(&c.load_profile().unwrap()).unwrap();
        assert_eq!(lb_url("127.0.0.1:8001").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(lb_url("http://lb.example:80/").unwrap(), "http://lb.example:80");
        assert!(lb_url("https://lb.example").is_err(), "TLS is not supported");
        assert!(lb_url("http://").is_err(), "no host");
    }

    #[test]
    fn refusals_say_why() {
        let err = |args: &[&str]| {
            let c = parse(args);
            match c.load_profile() {
                Ok(p) => c.validate(&p).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert!(err(&["--lb", "x:1"]).contains("--kafka-brokers"));
        assert!(err(&["--lb", "x:1", "--rate", "0", "--profile", "plateau:1s:20000"]).contains("--max-users"));
        assert!(err(&["--lb", "x:1", "--rate", "0", "--profile", "nope"]).contains("--profile"));
        assert!(err(&["--lb", "x:1", "--rate", "0", "--user-prefix", "a b"]).contains("--user-prefix"));
        assert!(err(&["--lb", "ftp://x:1", "--rate", "0"]).contains("--lb"));
        assert!(Config::try_parse_from(["loadgen"]).is_err(), "--lb is required");
        assert!(
            Config::try_parse_from(["loadgen", "--lb", "x:1", "--profile", "idle:1s", "--profile-file", "f"]).is_err()
        );
    }

    #[test]
    fn profile_from_a_file() {
        let path = std::env::temp_dir().join(format!("loadgen-profile-{}.txt", std::process::id()));
        std::fs::write(&path, "# test\nramp:2s:0->4\nidle:1s\n").unwrap();
        let c = parse(&["--lb", "x:1", "--rate", "0", "--profile-file", path.to_str().unwrap()]);
        assert_eq!(c.load_profile().unwrap().duration_ms(), 3000);
        std::fs::remove_file(&path).unwrap();
        assert!(c.load_profile().unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn runs_must_fit_the_machine() {
        let limits = Limits { open_files: 20_000, open_files_hard: 20_000, ephemeral_ports: 28_232 };
        assert_eq!(check_fits(5_000, 256, 1, limits), Ok(()));
        let e = check_fits(19_800, 256, 1, limits).unwrap_err();
        assert!(e.contains("hard limit is 20000") && e.contains("at most 19616 users"), "{e}");
        let soft = Limits { open_files: 1024, ..limits };
        let e = check_fits(2_000, 256, 1, soft).unwrap_err();
        assert!(e.contains("ulimit -n 2384"), "{e}");
        let big = Limits { open_files: 100_000, open_files_hard: 100_000, ephemeral_ports: 28_232 };
        let e = check_fits(60_000, 256, 1, big).unwrap_err();
        assert!(e.contains("at least 3 addresses"), "{e}");
        assert_eq!(check_fits(60_000, 256, 3, big), Ok(()));
    }

    #[test]
    fn proc_files_are_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(parse_open_files(limits), Some((1024, 20_000)));
        assert_eq!(parse_open_files("Max open files unlimited unlimited files"), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_open_files("nothing"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("9 1"), None);
        assert!(read_limits().is_some_and(|l| l.open_files > 0));
    }
}
