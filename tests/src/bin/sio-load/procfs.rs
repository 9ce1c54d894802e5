//! Resident memory, CPU time and open descriptors of the measured processes, from `/proc`.

use std::process::Command;

/// A process and every descendant of it (nginx's workers, for example).
pub fn tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_field(pid, 4) {
                parents.push((pid, ppid as u32));
            }
        }
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        all.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    all
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count from its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of one process.
pub fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let user = stat_field(pid, 14).unwrap_or(0);
    let system = stat_field(pid, 15).unwrap_or(0);
    (user + system) as f64 / ticks
}

/// Open file descriptors of one process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Sum of the RSS of every process in the trees of `roots`.
pub fn rss_of_trees(roots: &[u32]) -> u64 {
    roots.iter().flat_map(|r| tree(*r)).map(rss_bytes).sum()
}

/// Sum of the CPU seconds of every process in the trees of `roots`.
pub fn cpu_of_trees(roots: &[u32], ticks: f64) -> f64 {
    roots
        .iter()
        .flat_map(|r| tree(*r))
        .map(|p| cpu_seconds(p, ticks))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me) > 0);
        assert!(open_fds(me) > 0);
        assert!(tree(me).contains(&me));
        assert!(cpu_seconds(me, clock_ticks()) >= 0.0);
    }
}
