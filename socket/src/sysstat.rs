//! CPU and memory usage of this process's container, as fractions of its
//! limits, for the node's heartbeats.
//!
//! Under cgroup v2 the figures are the container's own, measured against the
//! limits the orchestrator enforces. Without one (cgroup v1, bare metal) they
//! are the whole host's: the best a process can say about the machine it
//! shares.
//!
//! Every figure comes from small kernel pseudo-files that are read in
//! microseconds, so sampling once per heartbeat from an async task is fine.

use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// Files a cgroup must expose for its figures to be used. The root cgroup and
/// cgroups without the cpu or memory controller lack some; no limit of ours
/// lives in them then, so the host's figures are the honest answer.
const CGROUP_FILES: [&str; 5] = ["cpu.max", "cpu.stat", "memory.current", "memory.max", "memory.stat"];

/// Reads CPU and memory usage of this process's container.
pub struct SysStat {
    /// Prefix of every path read: "/" in production, a fake tree in tests.
    root: PathBuf,
    source: Source,
    /// CPUs this process may run on, the CPU limit when the cgroup sets no quota.
    host_cpus: f64,
}

/// Where the figures come from, with the previous CPU reading: CPU usage is
/// a cumulative counter, so a fraction needs two readings.
enum Source {
    Cgroup2 {
        /// This process's cgroup directory.
        dir: PathBuf,
        /// When `usage_usec` was last read, and its value.
        last: Option<(Instant, u64)>,
    },
    Host {
        last: Option<HostCpu>,
    },
}

/// One reading, as fractions of the container's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// CPU used since the previous sample over the CPU available in that time.
    pub cpu: f64,
    /// Memory in use over the memory limit.
    pub memory: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SysStatError {
    // Not `#[source]`: the io error is part of the message so a plain `%err`
    // in a log line still says why.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot parse {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
}

impl SysStat {
    /// Detects cgroup v2 (unified hierarchy at /sys/fs/cgroup, reading
    /// /proc/self/cgroup to find this process's cgroup path) or falls back to
    /// the host (/proc/stat, /proc/meminfo, number of CPUs from
    /// [`std::thread::available_parallelism`]).
    pub fn detect() -> SysStat {
        Self::with_root("/")
    }

    /// Same as [`SysStat::detect`], with every file read under `root`
    /// (e.g. `root/sys/fs/cgroup/cpu.max`), for tests.
    pub fn with_root(root: impl Into<PathBuf>) -> SysStat {
        let root = root.into();
        let source = match cgroup_dir(&root) {
            Some(dir) => Source::Cgroup2 { dir, last: None },
            None => Source::Host { last: None },
        };
        // available_parallelism already honours CPU affinity (cpusets) and,
        // rounded up, cgroup quotas. If it cannot tell, one CPU is the cautious
        // guess: it overstates usage rather than hiding load.
        let host_cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get) as f64;
        let stat = SysStat { root, source, host_cpus };
        tracing::debug!(source = stat.source(), "CPU and memory figures source detected");
        stat
    }

    /// "cgroup2" or "host": where the figures come from.
    pub fn source(&self) -> &'static str {
        match self.source {
            Source::Cgroup2 { .. } => "cgroup2",
            Source::Host { .. } => "host",
        }
    }

    /// Takes a sample. CPU is the usage since the previous call over (elapsed
    /// wall time × CPU limit in cores); the first call returns cpu 0.0. Both
    /// values are clamped into 0.0..=1.0. Unreadable or malformed files give
    /// an error.
    pub fn sample(&mut self) -> Result<Sample, SysStatError> {
        self.sample_at(Instant::now())
    }

    /// [`SysStat::sample`] with the clock injected, so tests need no sleeps.
    pub(crate) fn sample_at(&mut self, now: Instant) -> Result<Sample, SysStatError> {
        let meminfo = self.root.join("proc/meminfo");
        match &mut self.source {
            Source::Cgroup2 { dir, last } => {
                let usage = read(&dir.join("cpu.stat"), |text| parse_field(text, "usage_usec"))?;
                // A quota above the CPUs we may run on can never be reached.
                let cores = match read(&dir.join("cpu.max"), parse_cpu_max)? {
                    Some(quota) => quota.min(self.host_cpus),
                    None => self.host_cpus,
                };

                let current = read(&dir.join("memory.current"), parse_number)?;
                let inactive_file = read(&dir.join("memory.stat"), |text| parse_field(text, "inactive_file"))?;
                let limit = match read(&dir.join("memory.max"), parse_memory_max)? {
                    Some(bytes) => bytes,
                    None => read(&meminfo, |text| parse_field(text, "MemTotal"))?.saturating_mul(1024),
                };

                let cpu = last.map_or(0.0, |(at, previous)| {
                    cgroup_cpu(usage.saturating_sub(previous), now.saturating_duration_since(at), cores)
                });
                *last = Some((now, usage));
                Ok(Sample { cpu, memory: cgroup_memory(current, inactive_file, limit) })
            }
            Source::Host { last } => {
                let ticks = read(&self.root.join("proc/stat"), parse_proc_stat)?;
                let memory = read(&meminfo, host_memory)?;
                let cpu = last.map_or(0.0, |previous| host_cpu(previous, ticks));
                *last = Some(ticks);
                Ok(Sample { cpu, memory })
            }
        }
    }
}

/// This process's cgroup v2 directory, if the unified hierarchy is mounted at
/// `root/sys/fs/cgroup` and the cgroup exposes every file a sample reads.
fn cgroup_dir(root: &Path) -> Option<PathBuf> {
    let mount = root.join("sys/fs/cgroup");
    // Every v2 cgroup has cgroup.controllers; a v1 (or hybrid) /sys/fs/cgroup
    // is a tmpfs of per-controller hierarchies and has none.
    if !mount.join("cgroup.controllers").is_file() {
        return None;
    }
    let own = fs::read_to_string(root.join("proc/self/cgroup")).ok();
    let own = own.as_deref().and_then(parse_cgroup_path).map(|path| mount.join(path.trim_start_matches('/')));
    // With its own cgroup namespace a container sees "/" and the mount is its
    // cgroup. Without one the path is relative to the host's hierarchy, which
    // the container may not see: its mount is then its own cgroup too.
    own.into_iter().chain([mount.clone()]).find(|dir| CGROUP_FILES.iter().all(|file| dir.join(file).is_file()))
}

/// Reads `path` and parses it, naming the file in any error.
fn read<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, SysStatError> {
    let text = fs::read_to_string(path).map_err(|error| SysStatError::Read { path: path.to_owned(), error })?;
    parse(&text).map_err(|reason| SysStatError::Parse { path: path.to_owned(), reason })
}

/// This process's path in the cgroup v2 hierarchy: the `0::` line of
/// `/proc/self/cgroup` (v1 hierarchies have other numbers).
fn parse_cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

fn parse_number(text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse().map_err(|_| format!("{text:?} is not a number"))
}

/// `cpu.max` is "<quota> <period>" in µs, "max <period>" without a quota.
/// Returns the limit in cores, `None` for no limit.
fn parse_cpu_max(text: &str) -> Result<Option<f64>, String> {
    let mut fields = text.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!("expected \"<quota> <period>\", got {:?}", text.trim()));
    };
    let period = parse_number(period)?;
    if quota == "max" {
        return Ok(None);
    }
    let quota = parse_number(quota)?;
    // Zero would make every later division meaningless; the kernel never reports it.
    if quota == 0 || period == 0 {
        return Err(format!("zero in {:?}", text.trim()));
    }
    Ok(Some(quota as f64 / period as f64))
}

/// `memory.max` is a byte count, "max" without a limit.
fn parse_memory_max(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "max" => Ok(None),
        limit => parse_number(limit).map(Some),
    }
}

/// The number after `key` in "key value" lines (`cpu.stat`, `memory.stat`)
/// or "Key: value kB" lines (`/proc/meminfo`). Names match whole, so
/// `inactive_file` is not confused with `total_inactive_file`.
fn parse_field(text: &str, key: &str) -> Result<u64, String> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next().map(|name| name.strip_suffix(':').unwrap_or(name)) == Some(key) {
            return parse_number(words.next().unwrap_or_default());
        }
    }
    Err(format!("no `{key}` field"))
}

/// Cumulative CPU time of all the host's CPUs, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HostCpu {
    busy: u64,
    total: u64,
}

/// The first line of `/proc/stat`: "cpu user nice system idle iowait irq
/// softirq steal guest guest_nice", summed over all CPUs.
fn parse_proc_stat(text: &str) -> Result<HostCpu, String> {
    let mut words = text.lines().next().unwrap_or_default().split_whitespace();
    if words.next() != Some("cpu") {
        return Err("first line is not the aggregate `cpu` line".into());
    }
    // Stop at steal: guest and guest_nice are already counted in user and
    // nice. Old kernels stop earlier; idle (the fourth) is the least we need.
    let ticks = words.take(8).map(parse_number).collect::<Result<Vec<u64>, String>>()?;
    let (Some(&idle), iowait) = (ticks.get(3), ticks.get(4).copied().unwrap_or(0)) else {
        return Err(format!("{} CPU time fields, expected at least 4", ticks.len()));
    };
    let total = ticks.iter().try_fold(0u64, |sum, &t| sum.checked_add(t)).ok_or("CPU time fields overflow")?;
    // idle and iowait are terms of total, so this cannot underflow. iowait
    // is idle time spent waiting for disk: the CPU was free for other work.
    Ok(HostCpu { busy: total - idle - iowait, total })
}

/// `part / whole` clamped into 0.0..=1.0; 0.0 for an empty `whole` (no time
/// elapsed, a zero limit): there is no usage to report then.
fn fraction(part: f64, whole: f64) -> f64 {
    if whole > 0.0 && part.is_finite() { (part / whole).clamp(0.0, 1.0) } else { 0.0 }
}

/// CPU time used over the CPU time available: `cores` for `elapsed`.
fn cgroup_cpu(used_usec: u64, elapsed: Duration, cores: f64) -> f64 {
    fraction(used_usec as f64 / 1e6, elapsed.as_secs_f64() * cores)
}

/// The host's busy ticks over all ticks between two readings. Ticks of every
/// CPU are counted, so this already is the fraction of all CPUs and USER_HZ
/// cancels out.
fn host_cpu(previous: HostCpu, now: HostCpu) -> f64 {
    fraction(now.busy.saturating_sub(previous.busy) as f64, now.total.saturating_sub(previous.total) as f64)
}

/// The cgroup's working set over its limit. `memory.current` includes page
/// cache, and inactive file pages are the first the kernel reclaims when the
/// limit is near, without OOM-killing anyone: counting them would make a node
/// that merely wrote logs look full. Kubelet's working set (what its
/// evictions and `kubectl top` use) subtracts them the same way.
fn cgroup_memory(current: u64, inactive_file: u64, limit: u64) -> f64 {
    fraction(current.saturating_sub(inactive_file) as f64, limit as f64)
}

/// Host memory in use: 1 − MemAvailable/MemTotal. MemAvailable is the
/// kernel's estimate of what new work could get, reclaimable cache included.
fn host_memory(meminfo: &str) -> Result<f64, String> {
    let total = parse_field(meminfo, "MemTotal")?;
    let available = parse_field(meminfo, "MemAvailable")?;
    Ok(fraction(total.saturating_sub(available) as f64, total as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MIB: u64 = 1024 * 1024;

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    /// A fake filesystem root under the system temp dir, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("rtc-sysstat-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeRoot(dir)
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn remove(&self, path: &str) {
            fs::remove_file(self.0.join(path)).unwrap();
        }

        /// A container in its own cgroup namespace: its cgroup is the mount.
        fn cgroup(test: &str, cpu_max: &str, memory_max: &str) -> Self {
            let root = Self::new(test);
            root.write("proc/self/cgroup", "0::/\n");
            root.write("proc/meminfo", "MemTotal:        2048 kB\nMemFree:         1024 kB\n");
            root.write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
            root.write("sys/fs/cgroup/cpu.max", cpu_max);
            root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(1_000_000));
            root.write("sys/fs/cgroup/memory.max", memory_max);
            root.write("sys/fs/cgroup/memory.current", "0\n");
            root.write("sys/fs/cgroup/memory.stat", &memory_stat(0));
            root
        }

        fn stat(&self) -> SysStat {
            SysStat::with_root(&self.0)
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cpu_stat(usage_usec: u64) -> String {
        format!("usage_usec {usage_usec}\nuser_usec {}\nsystem_usec 0\nnr_periods 0\n", usage_usec / 2)
    }

    fn memory_stat(inactive_file: u64) -> String {
        format!("anon 4096\nfile 8192\nactive_file 1234\ninactive_file {inactive_file}\nslab 100\n")
    }

    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         2000000 kB\n\
                           MemAvailable:    4000000 kB\nBuffers:          100000 kB\n";

    #[test]
    fn cpu_max_parses_quota_and_no_limit() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Ok(Some(0.5)));
        assert_eq!(parse_cpu_max("200000 100000"), Ok(Some(2.0)));
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
    }

    #[test]
    fn cpu_max_rejects_garbage() {
        for text in ["", "\n", "max", "50000", "half 100000", "50000 100000 7", "0 100000", "50000 0", "-1 100000"] {
            assert!(parse_cpu_max(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn memory_max_parses_bytes_and_no_limit() {
        assert_eq!(parse_memory_max("536870912\n"), Ok(Some(512 * MIB)));
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert!(parse_memory_max("lots").is_err());
        assert!(parse_memory_max("").is_err());
    }

    #[test]
    fn field_finds_keyed_values_by_whole_name() {
        let stat = "user_usec 10\nusage_usec 42\nsystem_usec 32\n";
        assert_eq!(parse_field(stat, "usage_usec"), Ok(42));
        assert_eq!(parse_field(stat, "user_usec"), Ok(10));
        // v1's total_inactive_file must not stand in for inactive_file.
        assert!(parse_field("total_inactive_file 5\n", "inactive_file").is_err());
        assert_eq!(parse_field(MEMINFO, "MemTotal"), Ok(16_000_000));
        assert_eq!(parse_field(MEMINFO, "MemAvailable"), Ok(4_000_000));
    }

    #[test]
    fn field_rejects_missing_or_garbage_values() {
        assert!(parse_field("", "usage_usec").is_err());
        assert!(parse_field("usage_usec\n", "usage_usec").is_err());
        assert!(parse_field("usage_usec many\n", "usage_usec").is_err());
        assert!(parse_field("MemTotal: -5 kB\n", "MemTotal").is_err());
    }

    #[test]
    fn cgroup_path_is_the_unified_line() {
        let hybrid = "12:memory:/user.slice\n1:name=systemd:/user.slice\n0::/kubepods/pod1/ctr\n";
        assert_eq!(parse_cgroup_path(hybrid), Some("/kubepods/pod1/ctr"));
        assert_eq!(parse_cgroup_path("0::/\n"), Some("/"));
        assert_eq!(parse_cgroup_path("4:memory:/docker/abc\n1:cpu:/\n"), None);
    }

    #[test]
    fn proc_stat_sums_ticks_up_to_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let text = "cpu  100 10 50 800 40 5 3 2 70 7\ncpu0 50 5 25 400 20 2 1 1 35 3\nintr 1 2 3\n";
        assert_eq!(parse_proc_stat(text), Ok(HostCpu { busy: 170, total: 1010 }));
        // An old kernel without iowait and later fields.
        assert_eq!(parse_proc_stat("cpu 1 2 3 4\n"), Ok(HostCpu { busy: 6, total: 10 }));
    }

    #[test]
    fn proc_stat_rejects_garbage() {
        let max = u64::MAX;
        for text in [
            "",
            "intr 1 2 3\ncpu 1 2 3 4\n",
            "cpu0 1 2 3 4\n",
            "cpu 1 2 3\n",
            "cpu 1 x 3 4\n",
            &format!("cpu {max} 1 0 0\n"),
        ] {
            assert!(parse_proc_stat(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn fractions_are_clamped_and_safe() {
        assert_eq!(fraction(1.0, 4.0), 0.25);
        assert_eq!(fraction(5.0, 4.0), 1.0);
        assert_eq!(fraction(1.0, 0.0), 0.0);
        assert_eq!(fraction(f64::NAN, 1.0), 0.0);
        assert_close(cgroup_cpu(250_000, SECOND, 0.5), 0.5);
        assert_close(cgroup_cpu(250_000, Duration::ZERO, 0.5), 0.0);
        assert_close(host_cpu(HostCpu { busy: 100, total: 1000 }, HostCpu { busy: 130, total: 1100 }), 0.3);
        assert_close(host_cpu(HostCpu { busy: 100, total: 1000 }, HostCpu { busy: 100, total: 1000 }), 0.0);
        assert_close(cgroup_memory(600 * MIB, 200 * MIB, 1024 * MIB), 0.390625);
        // More reclaimable cache than usage (racing reads) is no usage, not a wrap-around.
        assert_close(cgroup_memory(MIB, 2 * MIB, 1024 * MIB), 0.0);
        assert_close(host_memory(MEMINFO).unwrap(), 0.75);
        assert!(host_memory("MemTotal: 100 kB\n").is_err());
    }

    #[test]
    fn cgroup_cpu_is_usage_over_quota() {
        let root = FakeRoot::cgroup("quota", "50000 100000\n", "max\n");
        let mut stat = root.stat();
        stat.host_cpus = 4.0;
        assert_eq!(stat.source(), "cgroup2");
        let t0 = Instant::now();
        assert_eq!(stat.sample_at(t0).unwrap().cpu, 0.0, "first sample has no interval");
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(1_250_000));
        assert_close(stat.sample_at(t0 + SECOND).unwrap().cpu, 0.5);
        // The next interval starts where the last ended: 0.1 s of CPU in 2 s at 0.5 cores.
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(1_350_000));
        assert_close(stat.sample_at(t0 + 3 * SECOND).unwrap().cpu, 0.1);
    }

    #[test]
    fn cgroup_cpu_without_quota_uses_host_cpus() {
        let root = FakeRoot::cgroup("no-quota", "max 100000\n", "max\n");
        let mut stat = root.stat();
        stat.host_cpus = 2.0;
        let t0 = Instant::now();
        stat.sample_at(t0).unwrap();
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(1_500_000));
        assert_close(stat.sample_at(t0 + SECOND).unwrap().cpu, 0.25);
    }

    #[test]
    fn cgroup_quota_above_host_cpus_is_capped() {
        let root = FakeRoot::cgroup("big-quota", "400000 100000\n", "max\n");
        let mut stat = root.stat();
        stat.host_cpus = 2.0;
        let t0 = Instant::now();
        stat.sample_at(t0).unwrap();
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(2_000_000));
        assert_close(stat.sample_at(t0 + SECOND).unwrap().cpu, 0.5);
    }

    #[test]
    fn cgroup_cpu_is_clamped() {
        let root = FakeRoot::cgroup("clamp", "50000 100000\n", "max\n");
        let mut stat = root.stat();
        let t0 = Instant::now();
        stat.sample_at(t0).unwrap();
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(3_000_000));
        assert_eq!(stat.sample_at(t0 + SECOND).unwrap().cpu, 1.0);
        // A counter that went backwards (a new cgroup) reads as idle, not as a huge number.
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(10));
        assert_eq!(stat.sample_at(t0 + 2 * SECOND).unwrap().cpu, 0.0);
    }

    #[test]
    fn cgroup_memory_is_working_set_over_limit() {
        let root = FakeRoot::cgroup("memory", "max 100000\n", &format!("{}\n", 1024 * MIB));
        root.write("sys/fs/cgroup/memory.current", &format!("{}\n", 600 * MIB));
        root.write("sys/fs/cgroup/memory.stat", &memory_stat(200 * MIB));
        assert_close(root.stat().sample().unwrap().memory, 0.390625);
    }

    #[test]
    fn cgroup_memory_without_limit_uses_host_total() {
        // The fake meminfo says 2048 kB = 2 MiB.
        let root = FakeRoot::cgroup("memory-no-limit", "max 100000\n", "max\n");
        root.write("sys/fs/cgroup/memory.current", &format!("{}\n", MIB));
        root.write("sys/fs/cgroup/memory.stat", &memory_stat(MIB / 2));
        assert_close(root.stat().sample().unwrap().memory, 0.25);
    }

    #[test]
    fn cgroup_dir_comes_from_proc_self_cgroup() {
        let root = FakeRoot::new("nested");
        root.write("proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
        root.write("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        let dir = "sys/fs/cgroup/kubepods/pod1/ctr";
        root.write(&format!("{dir}/cpu.max"), "max 100000\n");
        root.write(&format!("{dir}/cpu.stat"), &cpu_stat(0));
        root.write(&format!("{dir}/memory.max"), &format!("{}\n", 4 * MIB));
        root.write(&format!("{dir}/memory.current"), &format!("{}\n", MIB));
        root.write(&format!("{dir}/memory.stat"), &memory_stat(0));
        let mut stat = root.stat();
        assert_eq!(stat.source(), "cgroup2");
        assert_close(stat.sample().unwrap().memory, 0.25);
    }

    #[test]
    fn cgroup_path_not_visible_uses_the_mount() {
        // No cgroup namespace: the host's path, while the container's mount is its own cgroup.
        let root = FakeRoot::cgroup("host-path", "max 100000\n", &format!("{}\n", 4 * MIB));
        root.write("proc/self/cgroup", "0::/system.slice/docker-abc.scope\n");
        root.write("sys/fs/cgroup/memory.current", &format!("{}\n", 3 * MIB));
        let mut stat = root.stat();
        assert_eq!(stat.source(), "cgroup2");
        assert_close(stat.sample().unwrap().memory, 0.75);
    }

    #[test]
    fn unified_mount_without_our_files_falls_back_to_host() {
        // The root cgroup of a v2 host: no cpu.max, memory.max or memory.current.
        let root = FakeRoot::new("v2-root");
        root.write("proc/self/cgroup", "0::/\n");
        root.write("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        root.write("sys/fs/cgroup/cpu.stat", &cpu_stat(0));
        assert_eq!(root.stat().source(), "host");

        // Without cgroup.controllers the mount is not a v2 hierarchy, whatever files it holds.
        let v1 = FakeRoot::cgroup("v1", "max 100000\n", "max\n");
        v1.remove("sys/fs/cgroup/cgroup.controllers");
        assert_eq!(v1.stat().source(), "host");
    }

    #[test]
    fn host_figures_come_from_proc() {
        let root = FakeRoot::new("host");
        root.write("proc/stat", "cpu  100 0 100 700 100 0 0 0 0 0\n");
        root.write("proc/meminfo", MEMINFO);
        let mut stat = root.stat();
        assert_eq!(stat.source(), "host");
        let t0 = Instant::now();
        assert_eq!(stat.sample_at(t0).unwrap(), Sample { cpu: 0.0, memory: 0.75 });
        // 300 of 1000 new ticks busy; the new iowait ticks count as idle.
        root.write("proc/stat", "cpu  300 0 200 1300 200 0 0 0 0 0\n");
        assert_close(stat.sample_at(t0 + SECOND).unwrap().cpu, 0.3);
    }

    #[test]
    fn missing_files_are_errors() {
        let mut empty = FakeRoot::new("empty").stat();
        assert_eq!(empty.source(), "host");
        assert!(matches!(empty.sample(), Err(SysStatError::Read { .. })));

        let root = FakeRoot::cgroup("vanished", "max 100000\n", "max\n");
        let mut stat = root.stat();
        root.remove("sys/fs/cgroup/memory.stat");
        let error = stat.sample().unwrap_err();
        assert!(matches!(&error, SysStatError::Read { path, .. } if path.ends_with("memory.stat")), "{error}");
        // With no memory limit, the host's MemTotal is needed too.
        root.write("sys/fs/cgroup/memory.stat", &memory_stat(0));
        root.remove("proc/meminfo");
        assert!(matches!(stat.sample(), Err(SysStatError::Read { path, .. }) if path.ends_with("meminfo")));
    }

    #[test]
    fn garbage_files_are_errors() {
        let root = FakeRoot::cgroup("garbage", "half 100000\n", "max\n");
        let error = root.stat().sample().unwrap_err();
        assert!(matches!(&error, SysStatError::Parse { path, .. } if path.ends_with("cpu.max")), "{error}");
        assert!(error.to_string().contains("cpu.max"), "{error}");

        let host = FakeRoot::new("garbage-host");
        host.write("proc/stat", "cpu 1 2 3 4\n");
        host.write("proc/meminfo", "MemTotal: lots\n");
        assert!(matches!(host.stat().sample(), Err(SysStatError::Parse { .. })));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn detect_reads_this_machine() {
        let mut stat = SysStat::detect();
        let t0 = Instant::now();
        for sample in [stat.sample_at(t0).unwrap(), stat.sample_at(t0 + SECOND).unwrap()] {
            assert!((0.0..=1.0).contains(&sample.cpu), "{sample:?}");
            assert!((0.0..=1.0).contains(&sample.memory), "{sample:?}");
        }
    }
}
