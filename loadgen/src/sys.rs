//! What loadgen reads from and asks of the operating system: CPU time and
//! memory of a process (its own or the server's) from /proc, the kernel's
//! TCP socket memory, and the open-file limit. Linux only. The text parsers
//! are separate from the reads so that tests can feed them.

use std::time::Duration;

use anyhow::{bail, Context};

/// Which process to read: loadgen itself or another one by PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    Myself,
    Other(u32),
}

impl Pid {
    fn proc_dir(self) -> String {
        match self {
            Pid::Myself => "/proc/self".to_owned(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// User plus system CPU time a process has used so far.
pub fn cpu_time(pid: Pid) -> anyhow::Result<Duration> {
    let path = format!("{}/stat", pid.proc_dir());
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}: is the process running?"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("unexpected {path}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_s() as f64))
}

/// Resident set size (VmRSS) of a process, in bytes.
pub fn rss_bytes(pid: Pid) -> anyhow::Result<u64> {
    let path = format!("{}/status", pid.proc_dir());
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}: is the process running?"))?;
    parse_vmrss_kib(&text)
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Memory the kernel holds for all TCP sockets (`TCP: ... mem PAGES` of
/// /proc/net/sockstat), in bytes. On loopback it counts both ends.
pub fn tcp_mem_bytes() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").context("cannot read /proc/net/sockstat")?;
    parse_sockstat_tcp_mem_pages(&text)
        .map(|pages| pages * page_size())
        .context("no TCP mem in /proc/net/sockstat")
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in clock ticks.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses itself; the fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state), so utime is its 12th field.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn parse_sockstat_tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_ascii_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

#[allow(unsafe_code)]
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no
    // preconditions and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: as above, sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (and the hard limit too,
/// where the process may), so that thousands of sockets can be open.
/// Returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    // Try for the kernel's ceiling first; an unprivileged process may not
    // raise its hard limit, and then the hard limit it has is the ceiling.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(lim.rlim_max);
    for target in [ceiling.max(lim.rlim_max), lim.rlim_max] {
        if lim.rlim_cur >= target {
            break;
        }
        let wanted = libc::rlimit {
            rlim_cur: target,
            rlim_max: target,
        };
        // SAFETY: `wanted` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            lim = wanted;
            break;
        }
    }
    Ok(lim.rlim_cur)
}

/// Fails with a clear message when `sockets` more sockets would not fit
/// under the open-file limit `limit`.
pub fn check_fd_budget(sockets: u64, limit: u64) -> anyhow::Result<()> {
    // stdio, the runtime's epoll and eventfds, /proc reads, the HTTP client.
    const RESERVED_FDS: u64 = 64;
    if sockets + RESERVED_FDS > limit {
        bail!(
            "{sockets} sockets need about {} open files, but RLIMIT_NOFILE is {limit} here \
             and loadgen may not raise it further; raise the hard limit (ulimit -Hn, \
             limits.conf, or systemd LimitNOFILE) or ask for at most {} connections",
            sockets + RESERVED_FDS,
            limit.saturating_sub(RESERVED_FDS)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (tick wire) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 9 0 12345 567890 1234 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\ttickwire\nVmPeak:\t  10000 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_kib(status), Some(5120));
        assert_eq!(parse_vmrss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn sockstat_tcp_mem_is_in_pages() {
        let sockstat = "sockets: used 19\nTCP: inuse 5 orphan 0 tw 0 alloc 5 mem 57\nUDP: inuse 0 mem 3\n";
        assert_eq!(parse_sockstat_tcp_mem_pages(sockstat), Some(57));
        assert_eq!(parse_sockstat_tcp_mem_pages("UDP: inuse 0 mem 3\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(rss_bytes(Pid::Myself).unwrap() > 0);
        cpu_time(Pid::Myself).unwrap();
        tcp_mem_bytes().unwrap();
    }

    #[test]
    fn fd_budget_names_the_limit() {
        check_fd_budget(1000, 20000).unwrap();
        let err = check_fd_budget(100_000, 20000).unwrap_err().to_string();
        assert!(err.contains("RLIMIT_NOFILE is 20000"), "{err}");
    }
}
