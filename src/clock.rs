//! Time and randomness, injected. The pure core never reads the clock or
//! draws random numbers itself; it is handed `now` and ids. Production wires
//! the system clock and an entropy-seeded generator; tests seed the generator,
//! and the future deterministic simulation will script both.

use std::sync::Mutex;

use crate::domain::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_unix_millis(since_epoch.as_millis() as i64)
    }
}

/// Time that moves only when told to: for tests of time-dependent logic
/// (stall deadlines, re-drive back-off) without sleeping.
#[derive(Debug)]
pub struct ManualClock {
    millis: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn starting_at(at: Timestamp) -> ManualClock {
        ManualClock {
            millis: std::sync::atomic::AtomicI64::new(at.unix_millis()),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.millis
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.millis.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A source of random 64-bit words.
pub trait Random: Send + Sync + 'static {
    fn next_u64(&self) -> u64;

    /// A uniformly distributed draw below `bound` (`bound` > 0).
    fn below(&self, bound: u64) -> u64 {
        // Multiply-shift: unbiased enough for ids and fault injection.
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

/// SplitMix64: tiny, fast, and reproducible from its seed.
#[derive(Debug)]
pub struct SeededRandom {
    state: Mutex<u64>,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(seed),
        }
    }

    /// Seeded from the process's hash-map entropy (the OS's random source).
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Self::new(hasher.finish())
    }
}

impl Random for SeededRandom {
    fn next_u64(&self) -> u64 {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A fresh payment id: `pay_` and 20 base-32 characters (100 random bits),
/// so generated ids never collide in practice and always satisfy the id rules.
pub fn new_payment_id(random: &dyn Random) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bits = (random.next_u64() as u128) << 64 | random.next_u64() as u128;
    let mut id = String::with_capacity(24);
    id.push_str("pay_");
    for _ in 0..20 {
        id.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    id
}
