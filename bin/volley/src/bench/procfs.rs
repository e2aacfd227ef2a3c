//! CPU time and peak memory from `/proc` (Linux only; elsewhere every figure reads as zero).
//!
//! Times are in clock ticks of `USER_HZ`, which Linux fixes at 100 on every architecture the
//! bench runs on, so a tick is 10 ms: short phases are rounded to that.

use std::collections::BTreeMap;

/// Seconds per clock tick (`USER_HZ` = 100).
const TICK: f64 = 0.01;

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The name in parentheses may contain spaces: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 * TICK)
}

/// CPU seconds used so far by process `pid` (all its threads, living and ended).
pub fn process_cpu(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat")).unwrap_or(0.0)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes; `None` when it cannot be read.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/status"), "VmHWM:").map(|kb| kb * 1024)
}

/// Peak resident set size of this process, in bytes.
pub fn self_peak_rss() -> Option<u64> {
    status_kb("/proc/self/status", "VmHWM:").map(|kb| kb * 1024)
}

fn status_kb(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU seconds of this process's living threads, keyed by thread id, with each thread's name.
///
/// Threads that ended are not listed: callers take deltas between snapshots of threads that
/// live through the measured phase.
pub fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        if let Some(cpu) = stat_cpu(&format!("/proc/self/task/{tid}/stat")) {
            threads.insert(tid, (name, cpu));
        }
    }
    threads
}

/// CPU seconds of the whole of this process.
pub fn self_cpu() -> f64 {
    stat_cpu("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds the whole machine has spent busy (every CPU, every process), from
/// `/proc/stat`: user, nice, system, irq, softirq and steal; idle and iowait are not busy.
pub fn machine_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    busy as f64 * TICK
}

/// The 1-minute load average, as a measure of how busy the machine was.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(self_peak_rss().unwrap_or(0) > 0);
        assert!(process_cpu(std::process::id()) >= 0.0);
        let threads = thread_cpu();
        assert!(!threads.is_empty());
        assert!(machine_busy() > 0.0);
    }
}
