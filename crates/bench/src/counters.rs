//! What a process cost over a window, from Linux's `/proc`: CPU time
//! (user + system) and bytes it caused to be written to the block device.
//! The load phase is bracketed by two readings of the server (its pid given
//! with `--server-pid`) and of the bench's own CPU, so a run reports the
//! server's cost per payment and the client's own cost per request: the
//! load generator shares the machine and must be cheap.
//!
//! `write_bytes` is what the kernel counts as the process's writes to the
//! block layer, by page as each first becomes dirty; the file system's
//! journal (written by a kernel thread) is not in it, and on tmpfs it
//! stays 0.

use std::time::Duration;

use anyhow::Context;

/// `/proc` reports CPU times in clock ticks of `USER_HZ`, 100 on Linux
/// (fixed by the kernel's ABI whatever the internal tick rate).
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub cpu: Duration,
    /// `write_bytes` of `/proc/PID/io`.
    pub write_bytes: u64,
}

/// Reads process `pid`'s counters.
pub fn read(pid: u32) -> anyhow::Result<Reading> {
    let dir = format!("/proc/{pid}");
    let io = std::fs::read_to_string(format!("{dir}/io")).with_context(|| format!("{dir}/io"))?;
    let write_bytes = io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .context("no write_bytes in io")?;
    Ok(Reading {
        cpu: cpu(&dir)?,
        write_bytes,
    })
}

/// This process's CPU time so far.
pub fn cpu_of_self() -> anyhow::Result<Duration> {
    cpu("/proc/self")
}

/// The CPU time of the process whose `/proc` directory is `dir`.
fn cpu(dir: &str) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("{dir}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last closing parenthesis are fixed: utime and stime
    // (fields 14 and 15 of proc(5)) are the 12th and 13th of them.
    let after_name = stat.rsplit_once(')').context("unexpected stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .context("unexpected stat format")
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(cpu_ticks * 1000 / TICKS_PER_SECOND))
}

/// What a process cost between two readings.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub cpu: Duration,
    pub write_bytes: u64,
}

pub fn between(before: Reading, after: Reading) -> Cost {
    Cost {
        cpu: after.cpu.saturating_sub(before.cpu),
        write_bytes: after.write_bytes.saturating_sub(before.write_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read_and_its_cpu_only_grows() {
        let pid = std::process::id();
        let before = read(pid).unwrap();
        let own_before = cpu_of_self().unwrap();
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(60) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let cost = between(before, read(pid).unwrap());
        assert!(cost.cpu >= Duration::from_millis(20), "{cost:?}");
        assert!(cpu_of_self().unwrap() - own_before >= Duration::from_millis(20));
    }
}
