//! The deterministic simulator (`payvisor-sim`): a seed's run repeats bit
//! for bit (here within one process, where each run has fresh hash-map
//! keys and actor ids; the test command's seeds run in processes of their
//! own), and each planted bug is found.

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

/// The seeds the planted bugs are looked for in: a violation must show in
/// one of the first this many.
const SEEDS_TO_FIND_A_MUTATION: u64 = 10;

/// Each planted bug (payvisor's `mutations`, one at a time, in the
/// simulation's own thread) breaks an invariant within the first
/// `SEEDS_TO_FIND_A_MUTATION` seeds; the invariant it breaks is named.
fn finds(mutation: payvisor::mutations::Mutation, expected: &[&str]) {
    for seed in 1..=SEEDS_TO_FIND_A_MUTATION {
        let report = payvisor_sim::run::run_with(seed, Some(mutation));
        if let Some(violation) = report.violations.first() {
            assert!(
                expected.contains(&violation.invariant),
                "{} found by {violation:?}",
                mutation.name()
            );
            return;
        }
    }
    panic!(
        "{} not found in {SEEDS_TO_FIND_A_MUTATION} seeds",
        mutation.name()
    );
}

#[test]
fn the_simulator_finds_a_refund_written_without_its_version_conditions() {
    finds(
        payvisor::mutations::Mutation::RefundWithoutVersionCondition,
        // The account item's version condition is the fence too, and the
        // planted bug reads the stored versions before it sends (a read
        // during which the lease may move): an owner's write may then go
        // out, and land, after its lease did.
        &[
            "one_owner_per_epoch",
            "no_fenced_write_lands",
            "ledger_balances",
            "balances_match_payments",
            "refunds_within_amount",
            "terminal_payments_never_change",
            "store_agrees_with_banks",
        ],
    );
}

#[test]
fn the_simulator_finds_a_stale_owners_write_that_is_not_fenced() {
    finds(
        payvisor::mutations::Mutation::StaleOwnerNotFenced,
        &[
            "ledger_balances",
            "balances_match_payments",
            "one_owner_per_epoch",
            "no_fenced_write_lands",
            "refunds_within_amount",
        ],
    );
}

#[test]
fn the_simulator_finds_a_payment_sent_before_its_commit() {
    finds(
        payvisor::mutations::Mutation::OutboxSentBeforeCommit,
        &[
            "banks_hold_only_stored_payments",
            "one_bank_per_payment",
            "one_owner_per_epoch",
        ],
    );
}

#[test]
fn the_simulator_finds_a_callback_recorded_without_the_inbox_dedupe() {
    finds(
        payvisor::mutations::Mutation::CallbackWithoutInboxDedupe,
        &["callbacks_decided_once"],
    );
}

#[test]
fn the_simulator_finds_a_page_sent_without_recording_it() {
    finds(
        payvisor::mutations::Mutation::PageSentWithoutRecording,
        &["every_stall_paged_once"],
    );
}

#[test]
fn the_simulator_finds_a_node_that_does_not_demote_itself() {
    finds(
        payvisor::mutations::Mutation::NoSelfDemotion,
        &["one_owner_per_epoch", "no_fenced_write_lands"],
    );
}

/// Without a mutation, the planted-bug switch is off in every other
/// thread: a simulation planting one leaves the rest of the tests alone.
#[test]
fn a_planted_mutation_stays_in_its_thread() {
    payvisor::mutations::plant(Some(payvisor::mutations::Mutation::NoSelfDemotion));
    let elsewhere = std::thread::spawn(|| {
        payvisor::mutations::planted(payvisor::mutations::Mutation::NoSelfDemotion)
    });
    assert!(!elsewhere.join().unwrap());
    assert!(payvisor::mutations::planted(
        payvisor::mutations::Mutation::NoSelfDemotion
    ));
    payvisor::mutations::plant(None);
}
