//! The standard `process_*` metrics of the Prometheus client libraries, read from `/proc` at
//! scrape time (Linux; elsewhere they are left out).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::encode::{counter, gauge};

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and
/// `process_start_time_seconds` of this process.
#[derive(Debug)]
pub struct ProcessCollector {
    start_time_seconds: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        let start_time_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
            - process_uptime_seconds().unwrap_or(0.0);
        ProcessCollector { start_time_seconds }
    }
}

/// Clock ticks per second of `/proc/self/stat` (`_SC_CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// `utime + stime` and `starttime`, in ticks, from `/proc/self/stat`.
fn stat_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: the fields follow the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14, 15 and 22 of proc(5), counted from the state (field 3) at index 0.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

fn process_uptime_seconds() -> Option<f64> {
    let (_, start) = stat_ticks()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - start as f64 / TICKS_PER_SECOND)
}

fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        if let Some((ticks, _)) = stat_ticks() {
            let seconds = ticks as f64 / TICKS_PER_SECOND;
            counter(
                e,
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                seconds,
            )?;
        }
        if let Some(bytes) = resident_bytes() {
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                bytes,
            )?;
        }
        if let Some(fds) = open_fds() {
            gauge(e, "process_open_fds", "Open file descriptors.", fds)?;
        }
        gauge(
            e,
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            self.start_time_seconds,
        )
    }
}
