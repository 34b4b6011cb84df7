//! End-to-end tests: a real `payvisor serve` process, real gRPC.

use std::collections::HashSet;

use crate::common::*;
use payvisor::grpc::pb;
use payvisor::grpc::pb::payment::State;
use tonic::Code;

#[tokio::test]
async fn a_payment_is_created_and_processed() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let created = created_payment(&mut client, "acme", "req-1", 1250).await;
    assert!(
        created.name.starts_with("accounts/acme/payments/pay_"),
        "{}",
        created.name
    );
    assert_eq!(
        state(&created),
        State::Sent,
        "acknowledged once durably sent"
    );
    let history: Vec<i32> = created.history.iter().map(|t| t.to_state).collect();
    assert_eq!(
        history,
        [
            State::Created as i32,
            State::Approved as i32,
            State::Sent as i32
        ]
    );

    let processed = wait_for(&mut client, &created.name, |p| state(p) == State::Processed).await;
    assert_eq!(processed.amount, Some(usd(1250)));
    assert!(processed.update_time.unwrap().seconds >= processed.create_time.unwrap().seconds);
    assert_balances_match_payments(&mut client, "acme").await;
}

#[tokio::test]
async fn a_caller_chosen_payment_id_is_used_and_never_silently_reused() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut request = create_request("acme", "req-1", 500);
    request.payment_id = "order-42".into();
    let payment = client
        .create_payment(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.name, "accounts/acme/payments/order-42");

    // Same payment id under another request id: refused, original untouched.
    request.request_id = "req-2".into();
    request.payment.as_mut().unwrap().amount = Some(usd(999));
    let error = client.create_payment(request).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(reason(&error), "PAYMENT_ALREADY_EXISTS");
    let stored = client
        .get_payment(pb::GetPaymentRequest {
            name: payment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.amount, Some(usd(500)));
}

#[tokio::test]
async fn a_sequential_replay_returns_the_original_payment_without_a_second_effect() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    // A replay is marked as one in the response metadata (as Stripe's
    // `Idempotent-Replayed` header); a first call is not.
    let replay_mark = |metadata: &tonic::metadata::MetadataMap| {
        metadata
            .get("idempotent-replayed")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let first = client
        .create_payment(create_request("acme", "req-1", 700))
        .await
        .unwrap();
    assert_eq!(replay_mark(first.metadata()), None);
    let second = client
        .create_payment(create_request("acme", "req-1", 700))
        .await
        .unwrap();
    assert_eq!(replay_mark(second.metadata()).as_deref(), Some("true"));
    let (first, second) = (first.into_inner(), second.into_inner());
    assert_eq!(first.name, second.name);
    assert_eq!(list_all(&mut client, "acme", 10).await.len(), 1);

    wait_for(&mut client, &first.name, |p| state(p) == State::Processed).await;
    let refund = refund_request(&first.name, "refund-1", Some(200));
    let refunded = client.refund_payment(refund.clone()).await.unwrap();
    assert_eq!(replay_mark(refunded.metadata()), None);
    let replayed = client.refund_payment(refund).await.unwrap();
    assert_eq!(replay_mark(replayed.metadata()).as_deref(), Some("true"));
    let replayed = replayed.into_inner();
    assert_eq!(
        replayed.refunds.len(),
        1,
        "one refund, however often it is asked for"
    );
    wait_for(&mut client, &first.name, is_settled).await;
    assert_balances_match_payments(&mut client, "acme").await;
}

#[tokio::test]
async fn concurrent_duplicates_produce_exactly_one_payment() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_payment(create_request("acme", "same-key", 300))
                    .await
            })
        })
        .collect();
    let mut names = HashSet::new();
    for task in tasks {
        names.insert(
            task.await
                .unwrap()
                .expect("every duplicate is answered")
                .into_inner()
                .name,
        );
    }
    assert_eq!(names.len(), 1, "all duplicates see the same payment");
    let mut client = client;
    assert_eq!(list_all(&mut client, "acme", 10).await.len(), 1);
}

#[tokio::test]
async fn reusing_a_request_id_for_a_different_request_is_rejected() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = created_payment(&mut client, "acme", "req-1", 700).await;
    let error = client
        .create_payment(create_request("acme", "req-1", 701))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(reason(&error), "IDEMPOTENCY_KEY_REUSED");

    // A refund may not borrow the create's key either.
    wait_for(&mut client, &payment.name, |p| state(p) == State::Processed).await;
    let error = client
        .refund_payment(refund_request(&payment.name, "req-1", None))
        .await
        .unwrap_err();
    assert_eq!(reason(&error), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(list_all(&mut client, "acme", 10).await.len(), 1);
}

#[tokio::test]
async fn bad_input_is_rejected_with_field_violations_and_leaves_no_state() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let valid = || create_request("fresh", "req-ok", 100);
    let with_amount = |currency: &str, minor_units: i64| {
        let mut request = valid();
        request.payment.as_mut().unwrap().amount = Some(pb::Money {
            currency_code: currency.into(),
            minor_units,
        });
        request
    };
    let with_metadata = |entries: Vec<(String, String)>| {
        let mut request = valid();
        request.payment.as_mut().unwrap().metadata = entries.into_iter().collect();
        request
    };
    let cases: Vec<(&str, pb::CreatePaymentRequest, &str)> = vec![
        (
            "unknown currency",
            with_amount("XYZ", 100),
            "payment.amount.currency_code",
        ),
        (
            "lower-case currency",
            with_amount("usd", 100),
            "payment.amount.currency_code",
        ),
        (
            "zero amount",
            with_amount("USD", 0),
            "payment.amount.minor_units",
        ),
        (
            "negative amount",
            with_amount("USD", -5),
            "payment.amount.minor_units",
        ),
        (
            "overflowing amount",
            with_amount("USD", i64::MAX),
            "payment.amount.minor_units",
        ),
        (
            "missing amount",
            {
                let mut request = valid();
                request.payment.as_mut().unwrap().amount = None;
                request
            },
            "payment.amount",
        ),
        (
            "missing payment",
            pb::CreatePaymentRequest {
                payment: None,
                ..valid()
            },
            "payment",
        ),
        (
            "malformed parent",
            pb::CreatePaymentRequest {
                parent: "acct/fresh".into(),
                ..valid()
            },
            "parent",
        ),
        (
            "parent with a slash",
            pb::CreatePaymentRequest {
                parent: "accounts/a/b".into(),
                ..valid()
            },
            "parent",
        ),
        (
            "malformed payment id",
            pb::CreatePaymentRequest {
                payment_id: "no spaces".into(),
                ..valid()
            },
            "payment_id",
        ),
        (
            "missing request id",
            pb::CreatePaymentRequest {
                request_id: String::new(),
                ..valid()
            },
            "request_id",
        ),
        (
            "oversize request id",
            pb::CreatePaymentRequest {
                request_id: "x".repeat(256),
                ..valid()
            },
            "request_id",
        ),
        (
            "too many metadata entries",
            with_metadata((0..33).map(|n| (format!("k{n}"), "v".into())).collect()),
            "payment.metadata",
        ),
        (
            "oversize metadata value",
            with_metadata(vec![("k".into(), "v".repeat(513))]),
            "payment.metadata[\"k\"]",
        ),
        (
            "oversize metadata key",
            with_metadata(vec![("k".repeat(65), "v".into())]),
            "payment.metadata",
        ),
    ];
    for (what, request, field) in cases {
        let error = client.create_payment(request).await.expect_err(what);
        assert_eq!(error.code(), Code::InvalidArgument, "{what}: {error:?}");
        assert_eq!(reason(&error), "INVALID_ARGUMENT", "{what}");
        let fields = bad_fields(&error);
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{what}: {fields:?} should name {field}"
        );
    }
    // Several mistakes at once are all reported.
    let mut many = with_amount("XYZ", -1);
    many.request_id = String::new();
    let error = client.create_payment(many).await.unwrap_err();
    assert!(bad_fields(&error).len() >= 3, "{:?}", bad_fields(&error));

    // Nothing was left behind: the account does not exist, no payments.
    let error = client
        .get_account(pb::GetAccountRequest {
            name: "accounts/fresh".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(list_all(&mut client, "fresh", 10).await.is_empty());
    // And the key is still free for a correct request.
    client.create_payment(valid()).await.unwrap();

    // Reads and refunds validate too.
    for name in [
        "",
        "accounts/fresh",
        "accounts/fresh/payments/",
        "payments/x",
    ] {
        let error = client
            .get_payment(pb::GetPaymentRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{name:?}");
    }
    let error = client
        .list_payments(pb::ListPaymentsRequest {
            parent: "accounts/fresh".into(),
            page_size: 10,
            page_token: "garbage".into(),
            state: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&error), ["page_token"]);
    let error = client
        .list_payments(pb::ListPaymentsRequest {
            parent: "accounts/fresh".into(),
            page_size: -1,
            page_token: String::new(),
            state: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&error), ["page_size"]);
    // Across accounts only the review queue can be listed.
    let error = client
        .list_payments(pb::ListPaymentsRequest {
            parent: "accounts/-".into(),
            page_size: 10,
            page_token: String::new(),
            state: pb::payment::State::Sent as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&error), ["state"]);
    let mut refund = refund_request("accounts/fresh/payments/p", "r", Some(0));
    refund.reason = String::new();
    let error = client.refund_payment(refund).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let fields = bad_fields(&error);
    assert!(
        fields.contains(&"amount.minor_units".to_string())
            && fields.contains(&"reason".to_string()),
        "{fields:?}"
    );
}

#[tokio::test]
async fn unknown_resources_are_not_found() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let error = client
        .get_payment(pb::GetPaymentRequest {
            name: "accounts/acme/payments/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), reason(&error).as_str()),
        (Code::NotFound, "NOT_FOUND")
    );
    let error = client
        .refund_payment(refund_request("accounts/acme/payments/nope", "r1", None))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn refunds_of_unprocessed_payments_or_beyond_what_remains_fail_their_precondition() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut hanging = create_request("acme", "req-hang", 1000);
    hanging
        .payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), "hang".into());
    let hanging = client.create_payment(hanging).await.unwrap().into_inner();
    let error = client
        .refund_payment(refund_request(&hanging.name, "r1", None))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), reason(&error).as_str()),
        (Code::FailedPrecondition, "PAYMENT_NOT_REFUNDABLE")
    );

    let payment = processed_payment(&mut client, "acme", "req-ok", 1000).await;
    let error = client
        .refund_payment(refund_request(&payment.name, "r2", Some(1001)))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), reason(&error).as_str()),
        (Code::FailedPrecondition, "REFUND_EXCEEDS_REMAINING")
    );
    let mut euros = refund_request(&payment.name, "r3", Some(10));
    euros.amount.as_mut().unwrap().currency_code = "EUR".into();
    let error = client.refund_payment(euros).await.unwrap_err();
    assert_eq!(bad_fields(&error), ["amount.currency_code"]);
    let unchanged = client
        .get_payment(pb::GetPaymentRequest {
            name: payment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        unchanged.refunds.is_empty(),
        "rejected refunds leave nothing behind"
    );
}

#[tokio::test]
async fn partial_then_full_refunds_return_all_the_money() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "acme", "req-1", 1000).await;

    client
        .refund_payment(refund_request(&payment.name, "refund-1", Some(300)))
        .await
        .unwrap();
    let partial = wait_for(&mut client, &payment.name, is_settled).await;
    assert_eq!(state(&partial), State::PartiallyRefunded);
    assert_eq!(partial.refunded_amount, Some(usd(300)));
    assert_balances_match_payments(&mut client, "acme").await;

    // No amount: all that remains.
    let rest = client
        .refund_payment(refund_request(&payment.name, "refund-2", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.refunds[1].amount, Some(usd(700)));
    let refunded = wait_for(&mut client, &payment.name, is_settled).await;
    assert_eq!(state(&refunded), State::Refunded);
    assert_eq!(refunded.refunded_amount, Some(usd(1000)));
    assert_eq!(
        refunded
            .refunds
            .iter()
            .map(|r| r.reason.as_str())
            .collect::<Vec<_>>(),
        ["customer request"; 2]
    );

    let error = client
        .refund_payment(refund_request(&payment.name, "refund-3", None))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_balances_match_payments(&mut client, "acme").await;
    let account = client
        .get_account(pb::GetAccountRequest {
            name: "accounts/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.balances[0].available, Some(usd(0)));
}

#[tokio::test]
async fn twenty_concurrent_refunds_never_exceed_the_amount() {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "acme", "req-1", 1000).await;

    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let mut client = client.clone();
            let request = refund_request(&payment.name, &format!("refund-{n}"), Some(150));
            tokio::spawn(async move { client.refund_payment(request).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(error) => {
                assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
                assert_eq!(reason(&error), "REFUND_EXCEEDS_REMAINING");
            }
        }
    }
    assert_eq!(accepted, 6, "6 × 150 fits in 1000, a 7th does not");
    let settled = wait_for(&mut client, &payment.name, is_settled).await;
    assert_eq!(settled.refunded_amount, Some(usd(900)));
    assert_eq!(state(&settled), State::PartiallyRefunded);
    assert_balances_match_payments(&mut client, "acme").await;
    server.verify_ledger(&["acme"]);
}

#[tokio::test]
async fn pagination_returns_every_payment_exactly_once() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut created = HashSet::new();
    for n in 0..57 {
        let payment = client
            .create_payment(create_request("acme", &format!("req-{n}"), 100 + n))
            .await
            .unwrap();
        created.insert(payment.into_inner().name);
    }
    client
        .create_payment(create_request("other", "req-0", 100))
        .await
        .unwrap();
    for page_size in [1, 10, 57, 500] {
        let listed: Vec<String> = list_all(&mut client, "acme", page_size)
            .await
            .into_iter()
            .map(|p| p.name)
            .collect();
        let unique: HashSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed.len(), 57, "page size {page_size}");
        assert_eq!(unique, created, "page size {page_size}");
    }
}

#[tokio::test]
async fn balances_equal_processed_minus_refunded() {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    let mut names = Vec::new();
    for n in 0..12 {
        let mut request = create_request("acme", &format!("req-{n}"), 1000 + n * 10);
        if n % 4 == 0 {
            request
                .payment
                .as_mut()
                .unwrap()
                .metadata
                .insert("bank_sim".into(), "fail".into());
        }
        names.push(
            client
                .create_payment(request)
                .await
                .unwrap()
                .into_inner()
                .name,
        );
    }
    for (n, name) in names.iter().enumerate() {
        let payment = wait_for(&mut client, name, is_settled).await;
        if state(&payment) == State::Failed {
            assert_eq!(payment.failure_reason, "insufficient funds at payer bank");
            continue;
        }
        if n % 3 == 0 {
            client
                .refund_payment(refund_request(name, &format!("refund-{n}"), Some(250)))
                .await
                .unwrap();
        }
    }
    for name in &names {
        wait_for(&mut client, name, is_settled).await;
    }
    assert_balances_match_payments(&mut client, "acme").await;
    server.verify_ledger(&["acme"]);
}

#[tokio::test]
async fn fees_are_kept_from_processed_payments() {
    let mut server = Server::start(&["--fee-basis-points", "290", "--fee-fixed-minor", "30"]);
    let mut client = server.client().await;
    let payment = created_payment(&mut client, "acme", "req-1", 10_000).await;
    let processed = wait_for(&mut client, &payment.name, |p| state(p) == State::Processed).await;
    assert_eq!(processed.fee, Some(usd(320)));
    let account = client
        .get_account(pb::GetAccountRequest {
            name: "accounts/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.balances[0].available, Some(usd(9_680)));
    // A full refund needs more than is available after the fee.
    let error = client
        .refund_payment(refund_request(&payment.name, "refund-1", None))
        .await
        .unwrap_err();
    assert_eq!(reason(&error), "INSUFFICIENT_FUNDS");
    client
        .refund_payment(refund_request(&payment.name, "refund-2", Some(9_680)))
        .await
        .unwrap();
    wait_for(&mut client, &payment.name, is_settled).await;
    server.verify_ledger(&["acme"]);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let server = Server::start(&[]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "payvisor.v1.PaymentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["payvisor.v1.PaymentService", "grpc.health.v1.Health"] {
        assert!(services.contains(&service.to_string()), "{services:?}");
    }
}

/// A tool that speaks only reflection v1alpha (Python's grpcio-reflection,
/// as grpcurl before 1.8.8, Postman and Evans) finds the services and
/// calls them from the descriptors reflection gives it alone.
#[tokio::test]
async fn tools_that_speak_reflection_v1alpha_discover_and_call_the_api() {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reflection_v1alpha.py");
    let installed = std::process::Command::new(python)
        .args(["-c", "import grpc_reflection"])
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "grpcio-reflection is not in .venv under CI=true; run the tests through `bash tests/run.sh`"
        );
        eprintln!(
            "reflection v1alpha client: skipped (`bash tests/run.sh` installs grpcio-reflection)"
        );
        return;
    }
    let server = Server::start(&[]);
    let address = server.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(client)
            .arg(address)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["health"], "SERVING", "{seen}");
    assert_eq!(seen["amount"], 1250, "{seen}");
    // An error's details, decoded from reflection's descriptors alone.
    let details = &seen["refused"]["details"];
    assert_eq!(
        details["google.rpc.ErrorInfo"]["reason"], "INVALID_ARGUMENT",
        "{seen}"
    );
    assert_eq!(
        details["google.rpc.BadRequest"],
        serde_json::json!(["payment.amount.currency_code"]),
        "{seen}"
    );
}

#[tokio::test]
async fn the_bank_simulator_can_be_steered_per_payment() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let steer = |key: &str, behaviour: &str| {
        let mut request = create_request("acme", key, 500);
        request
            .payment
            .as_mut()
            .unwrap()
            .metadata
            .insert("bank_sim".into(), behaviour.into());
        request
    };
    let fail = client
        .create_payment(steer("k1", "fail"))
        .await
        .unwrap()
        .into_inner();
    let hang = client
        .create_payment(steer("k2", "hang"))
        .await
        .unwrap()
        .into_inner();
    let dropped = client
        .create_payment(steer("k3", "drop_callback"))
        .await
        .unwrap()
        .into_inner();
    let succeed = client
        .create_payment(steer("k4", "succeed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(&wait_for(&mut client, &fail.name, is_settled).await),
        State::Failed
    );
    assert_eq!(
        state(&wait_for(&mut client, &succeed.name, is_settled).await),
        State::Processed
    );
    // hang and drop_callback never answer: they stay SENT (the watchdog's job).
    for name in [&hang.name, &dropped.name] {
        let payment = client
            .get_payment(pb::GetPaymentRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&payment), State::Sent);
    }
    let account = client
        .get_account(pb::GetAccountRequest {
            name: "accounts/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        account.balances[0].pending,
        Some(usd(1000)),
        "two payments still in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_with_exit_code_zero() {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = created_payment(&mut client, "acme", "req-1", 100).await;
    // The client stays connected: shutdown must not wait on it forever.
    let status = server.terminate_async().await;
    assert!(status.success(), "{status:?}");
    server.restart();
    let mut client = server.client().await;
    wait_for(&mut client, &payment.name, |p| state(p) == State::Processed).await;
}

/// Draining starts with health NOT_SERVING for the payment service: a
/// health watcher, whose stream the draining server still serves, sees the
/// change after SIGTERM; once it leaves, the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_not_serving_while_draining_then_exits_zero() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut server = Server::start(&[]);
    let mut health = HealthClient::new(server.channel().await);
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: "payvisor.v1.PaymentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = statuses.message().await.unwrap().expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    server.send_sigterm();
    let draining = statuses.message().await.unwrap().expect("a status");
    assert_eq!(draining.status, ServingStatus::NotServing as i32);

    drop((statuses, health));
    let status = server.exited().await;
    assert!(status.success(), "{status:?}");
}

/// ListPaymentEvents comes in pages (AIP-158): oldest first, each page
/// after the last event of the one before, a bad token refused.
#[tokio::test]
async fn a_payments_events_come_in_pages() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "acme", "paged-1", 900).await;
    client
        .refund_payment(refund_request(&payment.name, "paged-r1", Some(100)))
        .await
        .unwrap();
    wait_for(&mut client, &payment.name, is_settled).await;
    let list = |page_token: String| pb::ListPaymentEventsRequest {
        parent: payment.name.clone(),
        page_size: 2,
        page_token,
    };
    let mut sequences = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_payment_events(list(page_token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2, "{page:?}");
        sequences.extend(page.events.iter().map(|event| event.sequence));
        pages += 1;
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    // created, approved, sent, processed, and the refund's changes.
    assert!(sequences.len() >= 5, "{sequences:?}");
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert_eq!(pages, sequences.len().div_ceil(2));
    let refused = client
        .list_payment_events(list("not-a-token".into()))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&refused), ["page_token"]);
}

/// The command line shows times as RFC 3339 in the machine's zone, with
/// its offset, or in UTC with `--utc`; and a payment's table shows when it
/// was created, its approval and its route.
#[tokio::test]
async fn the_command_line_shows_local_times_with_their_offset_or_utc() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "acme", "times-1", 700).await;
    let show = |extra: &[&str]| {
        let output = std::process::Command::new(BINARY)
            .args(["payments", "get", &payment.name])
            .args(extra)
            .args(["--server", &format!("http://{}", server.address)])
            // A POSIX zone five and a half hours east of UTC (no zone
            // database needed).
            .env("TZ", "PVT-05:30")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let created = |table: &str| {
        table
            .lines()
            .find_map(|line| line.strip_prefix("created   "))
            .unwrap_or_else(|| panic!("no created line: {table}"))
            .to_owned()
    };
    let local = show(&[]);
    let utc = show(&["--utc"]);
    assert!(created(&local).ends_with("+05:30"), "{local}");
    assert!(created(&utc).ends_with('Z'), "{utc}");
    assert_eq!(
        payvisor::domain::time::parse_rfc3339(&created(&local)),
        payvisor::domain::time::parse_rfc3339(&created(&utc)),
        "the same instant"
    );
    assert!(local.contains("approval  approve"), "{local}");
    assert!(local.contains("route     "), "{local}");
}

/// An error names the resource it is about in `ErrorInfo.metadata`
/// (`resource`), so a client with several calls in flight knows which one
/// failed.
#[tokio::test]
async fn an_error_names_the_resource_it_is_about() {
    use tonic_types::StatusExt;
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let resource = |status: &tonic::Status| {
        let info = status.get_error_details().error_info().cloned().unwrap();
        info.metadata.get("resource").cloned()
    };
    let missing = client
        .get_payment(pb::GetPaymentRequest {
            name: "accounts/acme/payments/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        resource(&missing).as_deref(),
        Some("accounts/acme/payments/nope")
    );
    let mut hung = create_request("acme", "resource-1", 800);
    (hung.payment.as_mut().unwrap().metadata).insert("bank_sim".into(), "hang".into());
    let payment = client.create_payment(hung).await.unwrap().into_inner();
    let refused = client
        .refund_payment(refund_request(&payment.name, "resource-r1", None))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "PAYMENT_NOT_REFUNDABLE");
    assert_eq!(resource(&refused).as_deref(), Some(payment.name.as_str()));
    let unknown = client
        .get_account(pb::GetAccountRequest {
            name: "accounts/nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(resource(&unknown).as_deref(), Some("accounts/nobody"));
}

/// `ListPayments` is newest first, pages keep that order, and a window of
/// creation times and a state narrow it; so does `payments list` with
/// `--since`/`--until`. An account whose payments have no creation pointers
/// (as payvisor 0.1.0 wrote them) is indexed on its first listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_listed_newest_first_within_a_window_of_creation_times() {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    let mut created = Vec::new();
    for n in 0..5 {
        let mut request = create_request("newest", &format!("n-{n}"), 100 + n);
        if n == 1 {
            (request.payment.as_mut().unwrap().metadata).insert("bank_sim".into(), "fail".into());
        }
        created.push(client.create_payment(request).await.unwrap().into_inner());
        // Distinct milliseconds, so the order is by time alone.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let newest_first: Vec<String> = created.iter().rev().map(|p| p.name.clone()).collect();
    let names = |payments: &[pb::Payment]| -> Vec<String> {
        payments
            .iter()
            .map(|payment| payment.name.clone())
            .collect()
    };
    let lister = client.clone();
    let list = |request: pb::ListPaymentsRequest| {
        let mut client = lister.clone();
        async move { client.list_payments(request).await }
    };
    assert_eq!(
        names(&list_all(&mut client, "newest", 500).await),
        newest_first
    );
    assert_eq!(
        names(&list_all(&mut client, "newest", 2).await),
        newest_first
    );
    // [created[1], created[3]): created[2] and created[1].
    let window = pb::ListPaymentsRequest {
        parent: "accounts/newest".into(),
        start_time: created[1].create_time,
        end_time: created[3].create_time,
        ..Default::default()
    };
    let page = list(window.clone()).await.unwrap().into_inner();
    assert_eq!(
        names(&page.payments),
        [created[2].name.clone(), created[1].name.clone()]
    );
    // A state within the window: the failed one.
    wait_for(&mut client, &created[1].name, |p| state(p) == State::Failed).await;
    let failed = pb::ListPaymentsRequest {
        state: State::Failed as i32,
        ..window.clone()
    };
    let page = list(failed).await.unwrap().into_inner();
    assert_eq!(names(&page.payments), [created[1].name.clone()]);
    // An empty or inverted window is refused, and so are times across
    // accounts (the review queue is in deadline order).
    let inverted = pb::ListPaymentsRequest {
        start_time: created[3].create_time,
        end_time: created[1].create_time,
        ..window.clone()
    };
    assert_eq!(bad_fields(&list(inverted).await.unwrap_err()), ["end_time"]);
    let across = pb::ListPaymentsRequest {
        parent: "accounts/-".into(),
        state: State::InReview as i32,
        ..window.clone()
    };
    assert_eq!(bad_fields(&list(across).await.unwrap_err()), ["start_time"]);

    // The command line, with RFC 3339 times.
    let rfc3339 = |payment: &pb::Payment| {
        let millis = created_millis(payment);
        payvisor::domain::time::rfc3339(payvisor::domain::Timestamp::from_unix_millis(millis))
    };
    let since = rfc3339(&created[1]);
    let until = rfc3339(&created[3]);
    let listed = cli(
        &server,
        &[
            "payments",
            "list",
            "--account",
            "newest",
            "--since",
            &since,
            "--until",
            &until,
        ],
    );
    let listed: Vec<&str> = (listed["payments"].as_array().unwrap().iter())
        .map(|payment| payment["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [created[2].name.as_str(), created[1].name.as_str()]);

    // As payvisor 0.1.0 left it: no creation pointers, no index record.
    let stopped = server.terminate_async().await;
    assert!(stopped.success());
    {
        use payvisor::store::Store;
        let store: std::sync::Arc<dyn Store> = match server.dynamodb_table() {
            None => server.open_embedded_store(),
            Some(table) => {
                use payvisor::store::dynamodb::{DynamoDbSettings, DynamoDbStore};
                std::sync::Arc::new(DynamoDbStore::connect(&DynamoDbSettings::new(table)).await)
            }
        };
        store
            .transact(as_0_1_0_wrote("newest", &created))
            .await
            .unwrap();
    }
    server.restart();
    let mut client = server.client().await;
    assert_eq!(
        names(&list_all(&mut client, "newest", 2).await),
        newest_first
    );
}

/// A payment's creation time in Unix milliseconds.
fn created_millis(payment: &pb::Payment) -> i64 {
    let time = payment.create_time.unwrap();
    time.seconds * 1000 + i64::from(time.nanos / 1_000_000)
}

/// The writes that take an account's creation order away, as payvisor
/// 0.1.0 left its payments: no pointers, no index record.
fn as_0_1_0_wrote(account: &str, created: &[pb::Payment]) -> Vec<payvisor::store::WriteOp> {
    use payvisor::store::{schema, Condition, WriteOp};
    let account = payvisor::domain::AccountId::new(account).unwrap();
    let mut ops = vec![WriteOp::Delete {
        key: schema::creation_index_key(&account),
        condition: Condition::VersionIs(1),
    }];
    for payment in created {
        let name = payvisor::domain::parse_payment_name(&payment.name).unwrap();
        let at = payvisor::domain::Timestamp::from_unix_millis(created_millis(payment));
        ops.push(WriteOp::Delete {
            key: schema::created_key(&name, at),
            condition: Condition::VersionIs(1),
        });
    }
    ops
}

/// An account of 0.1.0 is indexed by creation in bounded steps: each call
/// does at most its budget (in whole batches) and the next resumes where
/// it stopped, until the index is complete and lists every payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_account_is_indexed_by_creation_in_bounded_steps_that_resume() {
    use payvisor::store::schema;
    let mut server = Server::start(&[]);
    if server.dynamodb_table().is_some() {
        // The steps are the store's own; the embedded store shows them.
        return;
    }
    let mut client = server.client().await;
    let mut created = Vec::new();
    for n in 0..300 {
        let request = create_request("old", &format!("old-{n}"), 100 + n);
        created.push(client.create_payment(request).await.unwrap().into_inner());
    }
    assert!(server.terminate_async().await.success());
    let store = server.open_embedded_store();
    let account = payvisor::domain::AccountId::new("old").unwrap();
    for chunk in as_0_1_0_wrote("old", &created).chunks(50) {
        store.transact(chunk.to_vec()).await.unwrap();
    }
    let window = schema::CreatedWindow::default();
    let listed = schema::list_payments_by_creation(&*store, &account, None, window, 500).await;
    assert!(listed.unwrap().0.is_empty(), "no pointers left");
    // A batch is 256 payments: the first call stops after one, the second
    // finishes from there.
    assert!(!schema::index_by_creation(&*store, &account, 100)
        .await
        .unwrap());
    let (partial, _) = schema::list_payments_by_creation(&*store, &account, None, window, 500)
        .await
        .unwrap();
    assert_eq!(partial.len(), 256);
    assert!(schema::index_by_creation(&*store, &account, 100)
        .await
        .unwrap());
    let (all, next) = schema::list_payments_by_creation(&*store, &account, None, window, 500)
        .await
        .unwrap();
    assert!(next.is_none());
    let mut expected: Vec<(i64, String)> = created
        .iter()
        .map(|p| {
            let time = p.create_time.unwrap();
            (
                time.seconds * 1000 + i64::from(time.nanos / 1_000_000),
                p.name.clone(),
            )
        })
        .collect();
    // Newest first; within a millisecond, by payment id.
    expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let listed: Vec<String> = all.iter().map(|p| p.name().to_string()).collect();
    assert_eq!(
        listed,
        expected
            .into_iter()
            .map(|(_, name)| name)
            .collect::<Vec<_>>()
    );
    drop(store);
    server.restart();
}

/// `payvisor … | head`: the command ends quietly (exit 0, nothing on
/// stderr) when its reader goes away, never with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_ends_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    let server = Server::start(&[]);
    let mut client = server.client().await;
    // Well over a pipe's 64 KiB, as JSON and as a table (~140 bytes a row).
    for n in 0..600 {
        let mut request = create_request("piped", &format!("piped-{n}"), 100 + n);
        (request.payment.as_mut().unwrap().metadata).insert("order".into(), "x".repeat(200));
        client.create_payment(request).await.unwrap();
    }
    for args in [
        &["payments", "list", "--account", "piped", "--all", "--json"][..],
        &["payments", "list", "--account", "piped", "--all"][..],
    ] {
        let mut child = std::process::Command::new(BINARY)
            .args(args)
            .args(["--server", &format!("http://{}", server.address)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert!(output.status.success(), "{args:?}: {:?}", output.status);
    }
}
