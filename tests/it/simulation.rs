//! The deterministic simulator (`payvisor-sim`): a seed's run repeats bit
//! for bit, within one process and across processes.

/// One seed run twice in this process gives the same digest of its whole
/// trace: the same commands, faults, bank calls and outcomes, in the same
/// order, at the same simulated times.
#[test]
fn a_seed_repeats_bit_for_bit() {
    let first = payvisor_sim::run::run(7);
    let second = payvisor_sim::run::run(7);
    assert_eq!(first.summary(), second.summary());
    assert!(first.events > 1_000, "{}", first.summary());
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    let other = payvisor_sim::run::run(8);
    assert_ne!(first.digest, other.digest, "another seed, another run");
}
