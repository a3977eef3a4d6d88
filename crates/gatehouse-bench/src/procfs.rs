//! What a bastion costs, read from `/proc`: CPU time and proportional memory of its processes.
//!
//! CPU: a process's `utime + stime` counts itself; `cutime + cstime` counts every child it has
//! reaped (and, recursively, what those children had reaped). So the CPU ever spent by a
//! bastion is the sum of all four fields over its *live* processes: an exited sshd
//! per-connection child has been folded into the listener's `cutime`/`cstime` by the time it
//! is reaped. Samples are taken only when the bastion is quiescent (no per-connection
//! processes left, see the binary), so no process is caught between exit and reaping.
//!
//! Memory: PSS (`/proc/PID/smaps_rollup`) divides each shared page among the processes that
//! map it, so summing it over sshd's many forked processes counts shared pages once; RSS would
//! count them once per process.

use std::fs;

/// CPU time of one process, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// `utime + stime`: the process itself (all its threads).
    pub own: u64,
    /// `cutime + cstime`: its reaped descendants.
    pub children: u64,
}

impl CpuTicks {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.own + self.children
    }
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<CpuTicks> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime, stime, cutime, cstime are fields 14..=17.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(CpuTicks {
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// CPU ticks of `pid`, or `None` if it is gone.
pub fn cpu_ticks(pid: u32) -> Option<CpuTicks> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Sum of `utime + stime + cutime + cstime` over `pids`, in ticks (gone pids count 0).
pub fn cpu_ticks_sum(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| cpu_ticks(pid))
        .map(|t| t.total())
        .sum()
}

/// Parses a `Key:   123 kB` line's value from `/proc` text (`smaps_rollup`, `status`).
pub fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// PSS of `pid` in KiB, or `None` if it is gone.
pub fn pss_kib(pid: u32) -> Option<u64> {
    parse_kib(
        &fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?,
        "Pss",
    )
}

/// RSS of `pid` in KiB, or `None` if it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS",
    )
}

/// Memory summed over a set of processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub processes: usize,
    pub pss_kib: u64,
    pub rss_kib: u64,
}

/// PSS and RSS summed over `pids` (gone pids are skipped).
pub fn memory(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for &pid in pids {
        if let (Some(pss), Some(rss)) = (pss_kib(pid), rss_kib(pid)) {
            m.processes += 1;
            m.pss_kib += pss;
            m.rss_kib += rss;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        let stat = "4242 (sshd: ghtest (priv)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    17 5 300 40 20 0 1 0 12345 1000 200 18446744073709551615";
        let t = parse_stat(stat).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                own: 22,
                children: 340
            }
        );
        assert_eq!(t.total(), 362);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn kib_lines() {
        let rollup = "55d0-7ff [rollup]\nRss:     9876 kB\nPss:     1350 kB\nPss_Anon: 900 kB\n";
        assert_eq!(parse_kib(rollup, "Pss"), Some(1350));
        assert_eq!(parse_kib(rollup, "Rss"), Some(9876));
        assert_eq!(parse_kib(rollup, "Swap"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(pss_kib(me).unwrap_or(0) > 0);
        assert!(memory(&[me]).rss_kib > 0);
    }
}
