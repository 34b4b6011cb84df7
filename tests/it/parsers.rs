//! Every parser of outside input, fed generated input: protobuf requests
//! through the validation layer, the rules file, the access list, page
//! tokens, resource names, certificate subjects. A bounded number of
//! cases per run (the test command runs them all); none may panic, and
//! what is refused is refused with an error, not a crash. Cases proptest
//! finds failing are kept in `proptest-regressions/` and rerun first.
//! (The banks and webhooks files and bank callbacks are fuzzed in their
//! modules' own tests, where their parsers are.)

use payvisor::domain::access::AccessList;
use payvisor::domain::rules::RuleSet;
use payvisor::grpc::{convert, pb};
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Text that looks like what the parsers expect often enough to get past
/// their first checks: fragments of JSON and names, and noise.
fn near_miss_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"".to_owned()),
        Just("accounts/".to_owned()),
        Just("/payments/".to_owned()),
        Just("/events/".to_owned()),
        Just("\"rules\"".to_owned()),
        Just("\"keys\"".to_owned()),
        Just("\"version\": \"v1\"".to_owned()),
        Just("\"kind\": \"block_list\"".to_owned()),
        Just("\"kind\": \"velocity\"".to_owned()),
        Just("\"roles\": [\"admin\"]".to_owned()),
        Just("1e999".to_owned()),
        Just("-0".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[a-z_]{0,12}".prop_map(|s| s),
        "\\PC{0,8}".prop_map(|s| s),
        any::<u32>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

fn create_request() -> impl Strategy<Value = pb::CreatePaymentRequest> {
    (
        near_miss_text(),
        near_miss_text(),
        near_miss_text(),
        "\\PC{0,4}",
        any::<i64>(),
        prop::collection::hash_map("\\PC{0,70}", "\\PC{0,600}", 0..40),
        "\\PC{0,70}",
        "\\PC{0,4}",
    )
        .prop_map(
            |(
                parent,
                request_id,
                payment_id,
                currency,
                minor_units,
                metadata,
                payer_id,
                country,
            )| {
                pb::CreatePaymentRequest {
                    parent,
                    payment: Some(pb::Payment {
                        amount: Some(pb::Money {
                            currency_code: currency,
                            minor_units,
                        }),
                        metadata,
                        payer_id,
                        payer_country: country,
                        ..Default::default()
                    }),
                    request_id,
                    payment_id,
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: decoded or refused by prost, then validated or refused;
    /// never a panic.
    #[test]
    fn any_bytes_through_decoding_and_validation(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::CreatePaymentRequest::decode(&bytes[..]) {
            let _ = convert::create_payment(request);
        }
        if let Ok(request) = pb::RefundPaymentRequest::decode(&bytes[..]) {
            let _ = convert::refund_payment(request);
        }
    }

    /// Structured requests with hostile fields: an error lists fields, a
    /// success holds only what the limits allow.
    #[test]
    fn create_requests_are_validated_or_refused(request in create_request()) {
        match convert::create_payment(request) {
            Ok(command) => {
                prop_assert!(command.metadata.len() <= payvisor::limits::METADATA_ENTRIES_MAX);
                prop_assert!(!command.amount.is_negative() && !command.amount.is_zero());
            }
            Err(payvisor::actors::CommandError::InvalidArgument { violations }) => {
                prop_assert!(!violations.is_empty());
            }
            Err(other) => prop_assert!(false, "not a validation error: {other:?}"),
        }
    }

    #[test]
    fn rules_files_parse_or_list_their_problems(text in near_miss_text()) {
        if let Err(error) = RuleSet::parse(&text) {
            prop_assert!(!error.problems.is_empty());
        }
    }

    #[test]
    fn access_lists_parse_or_are_refused(text in near_miss_text()) {
        let _ = AccessList::parse(&text);
    }

    #[test]
    fn names_and_tokens_parse_or_are_refused(text in near_miss_text()) {
        let _ = payvisor::domain::parse_account_name(&text);
        let _ = payvisor::domain::parse_payment_name(&text);
        let _ = payvisor::domain::events::parse_event_name(&text);
        let _ = convert::decode_page_token(&text);
        let _ = convert::decode_audit_token(&text);
        let _ = payvisor::store::schema::IndexPosition::parse(&text);
        let tokens = payvisor::grpc::page_token::PageTokens::new(&payvisor::grpc::page_token::fresh_key());
        for listing in [payvisor::grpc::page_token::Listing::ReviewQueue, payvisor::grpc::page_token::Listing::Stalled] {
            let _ = tokens.open(listing, &text);
            let _ = tokens.open(listing, &format!("r2.{text}"));
        }
    }

    /// Certificate subjects are read from DER the client sends: anything
    /// at all, and near misses of a real one.
    #[test]
    fn certificate_subjects_are_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256), cut in 0usize..64, flip in any::<u8>()) {
        let _ = payvisor::tls::subject_of(&bytes);
        let mut near = vec![0x30, 0x81, 0xf0, 0x30, 0x81, 0xed, 0xa0, 0x03, 0x02, 0x01, 0x02];
        near.extend_from_slice(&bytes);
        if let Some(byte) = near.get_mut(cut) {
            *byte ^= flip;
        }
        let _ = payvisor::tls::subject_of(&near);
    }
}
