//! CPU time and resident memory of a process, read from Linux's /proc.

use std::io;

#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    /// The user-mode part of `cpu_seconds`: the process's own code, not the kernel's work for
    /// it (system calls, and the softirq work the kernel happens to run in its context).
    pub user_seconds: f64,
    pub rss_bytes: u64,
}

impl ProcessSample {
    pub fn of_pid(pid: u32) -> io::Result<ProcessSample> {
        Self::read(&format!("/proc/{pid}"))
    }

    /// This process (the load tool itself); zeros where /proc is unavailable.
    pub fn of_self() -> ProcessSample {
        Self::read("/proc/self").unwrap_or(ProcessSample {
            cpu_seconds: 0.0,
            user_seconds: 0.0,
            rss_bytes: 0,
        })
    }

    fn read(dir: &str) -> io::Result<ProcessSample> {
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let (utime, stime) = parse_stat_times(&stat).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat format")
        })?;
        let ticks = clock_ticks_per_second();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(ProcessSample {
            cpu_seconds: (utime + stime) as f64 / ticks,
            user_seconds: utime as f64 / ticks,
            rss_bytes: rss_kib * 1024,
        })
    }
}

/// utime and stime (fields 14 and 15) from /proc/<pid>/stat; the command name (field 2) may
/// contain spaces, so fields are counted after its closing parenthesis.
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field n is at index n - 3.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_stat_times(stat), Some((250, 75)));
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessSample::of_pid(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.user_seconds <= s.cpu_seconds);
    }
}
