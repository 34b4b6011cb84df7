//! What a process cost over a window, from Linux's `/proc`: CPU time
//! (user + system) and bytes it caused to be written to the block device.
//! The load phase is bracketed by two readings of the server (its pid given
//! with `--server-pid`) and of the bench itself, so a run reports the
//! server's cost per payment and the client's own cost per request: the
//! load generator shares the machine and must be cheap.

use std::time::Duration;

use anyhow::Context;

/// `/proc` reports CPU times in clock ticks of `USER_HZ`, 100 on Linux
/// (fixed by the kernel's ABI whatever the internal tick rate).
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub cpu: Duration,
    /// `write_bytes` of `/proc/PID/io`: what reached (or will reach) the
    /// disk, page cache write-back included, not what `write` was asked.
    pub write_bytes: u64,
}

/// Reads `pid`'s counters (`None`: this process).
pub fn read(pid: Option<u32>) -> anyhow::Result<Reading> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat =
        std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("{dir}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis are fixed: utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').context("unexpected stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .context("unexpected stat format")
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let io = std::fs::read_to_string(format!("{dir}/io")).with_context(|| format!("{dir}/io"))?;
    let write_bytes = io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .context("no write_bytes in io")?;
    Ok(Reading {
        cpu: Duration::from_millis(cpu_ticks * 1000 / TICKS_PER_SECOND),
        write_bytes,
    })
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
        let before = read(None).unwrap();
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(60) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let after = read(None).unwrap();
        let cost = between(before, after);
        assert!(cost.cpu >= Duration::from_millis(20), "{cost:?}");
    }
}
