//! Randomness, injected, and the ids drawn from it. The pure core draws no
//! random numbers itself; it is handed ids. Production seeds the generator
//! from the operating system's entropy once at start; tests seed it, and the
//! future deterministic simulation will script it.

use std::sync::Mutex;

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
