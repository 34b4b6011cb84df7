//! The simulated world's two shared inputs: one seeded source of
//! randomness that every simulated part draws from, and the trace of what
//! happened, folded into a digest. The run is one thread under virtual
//! time, so the order of draws, and with it the whole run, follows from the
//! seed.

use std::collections::VecDeque;
use std::sync::Mutex;

use payvisor::random::{Random, SeededRandom};

use crate::limits;

pub struct World {
    pub seed: u64,
    random: SeededRandom,
    trace: Mutex<Trace>,
    origin: tokio::time::Instant,
}

struct Trace {
    /// FNV-1a over every line ever logged.
    digest: u64,
    lines: u64,
    tail: VecDeque<String>,
}

impl World {
    /// Call inside the simulation's runtime (time starts at its origin).
    pub fn new(seed: u64) -> World {
        World {
            seed,
            random: SeededRandom::new(seed),
            trace: Mutex::new(Trace {
                digest: 0xcbf2_9ce4_8422_2325,
                lines: 0,
                tail: VecDeque::new(),
            }),
            origin: tokio::time::Instant::now(),
        }
    }

    /// Simulated milliseconds since the start of the run.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// True with a chance of `per_mille` in 1,000.
    pub fn chance(&self, per_mille: u64) -> bool {
        self.random.below(1000) < per_mille
    }

    /// A draw in `low..=high`.
    pub fn between(&self, low: u64, high: u64) -> u64 {
        low + self.random.below(high - low + 1)
    }

    /// A fresh 64-bit draw (seeds of the nodes' own generators).
    pub fn draw(&self) -> u64 {
        self.random.next_u64()
    }

    /// Records a line of the trace, stamped with simulated time.
    pub fn log(&self, line: impl AsRef<str>) {
        let line = format!("{:>9} ms  {}", self.now_ms(), line.as_ref());
        let mut trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            trace.digest ^= u64::from(byte);
            trace.digest = trace.digest.wrapping_mul(0x0000_0100_0000_01b3);
        }
        trace.lines += 1;
        if trace.tail.len() == limits::TRACE_TAIL_LINES {
            trace.tail.pop_front();
        }
        trace.tail.push_back(line);
    }

    /// The digest of the whole trace so far, and its length in lines.
    pub fn digest(&self) -> (u64, u64) {
        let trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        (trace.digest, trace.lines)
    }

    /// The last lines of the trace.
    pub fn tail(&self) -> Vec<String> {
        let trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        trace.tail.iter().cloned().collect()
    }
}
