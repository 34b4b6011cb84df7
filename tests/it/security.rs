//! Every caller authenticated, every action authorized by role and account
//! scope (docs/security.md): the real server with an access list made by
//! `payvisor auth new-key`, called over gRPC with each kind of credential.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use payvisor::grpc::pb;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common::bank_sim::{free_port, metric};
use crate::common::{create_request, refund_request, state, Server, BINARY, PROGRESS_DEADLINE};

/// The roles, and what each may call (the product's table, written out
/// here independently of the server's, so that a change to either shows).
const ROLES: [&str; 6] = ["gateway", "support", "reviewer", "oncall", "admin", "node"];
const READS: [&str; 5] = [
    "GetPayment",
    "ListPayments",
    "GetAccount",
    "ListPaymentEvents",
    "WatchPaymentEvents",
];

/// The roles that may call `method` (`Service/Method`).
fn allowed(method: &str) -> BTreeSet<&'static str> {
    let persons = ["gateway", "support", "reviewer", "oncall", "admin"];
    let (_, name) = method.split_once('/').unwrap();
    let roles: Vec<&str> = if READS.contains(&name) {
        persons.to_vec()
    } else {
        match method {
            "PaymentService/CreatePayment" => vec!["gateway", "admin"],
            "PaymentService/RefundPayment" => vec!["support", "admin"],
            "PaymentService/ApprovePayment" | "PaymentService/DeclinePayment" => {
                vec!["reviewer", "admin"]
            }
            "PaymentService/RetryPayment"
            | "PaymentService/FailPayment"
            | "PaymentService/ListStalledPayments"
            | "PaymentService/WatchAlerts"
            | "PaymentService/ResendPaymentEvent"
            | "PaymentService/ListAuditRecords"
            | "ClusterService/GetClusterStatus" => vec!["oncall", "admin"],
            "ClusterService/HandBankCallback" | "ClusterService/WatchNodeEvents" => vec!["node"],
            "ServerReflection/ServerReflectionInfo" => ROLES.to_vec(),
            other => panic!("{other}: a method the test has no rule for; add it here"),
        }
    };
    roles.into_iter().collect()
}

/// Keys drawn with the CLI, by name, and the access list holding them.
struct Keys {
    keys: BTreeMap<&'static str, String>,
    file: PathBuf,
    entries: Vec<serde_json::Value>,
}

impl Keys {
    fn key(&self, name: &str) -> &str {
        &self.keys[name]
    }

    /// Writes the access list with the entries whose id passes `keep`.
    fn write(&self, keep: impl Fn(&str) -> bool) {
        let keys: Vec<&serde_json::Value> = self
            .entries
            .iter()
            .filter(|entry| keep(entry["id"].as_str().unwrap()))
            .collect();
        let text = serde_json::json!({ "keys": keys }).to_string();
        // Written whole, then renamed: the server never reads half a file.
        let partial = self.file.with_extension("partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &self.file).unwrap();
    }
}

/// `payvisor auth new-key --json` with `args`: (key, entry).
pub fn new_key(args: &[&str]) -> (String, serde_json::Value) {
    let output = Command::new(BINARY)
        .args(["auth", "new-key", "--json"])
        .args(args)
        .output()
        .expect("run auth new-key");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        printed["key"].as_str().unwrap().to_owned(),
        printed["entry"].clone(),
    )
}

/// A key per role (id = role), scoped keys for `acme`, and an expired one.
fn keys(dir: &Path) -> Keys {
    let mut keys = BTreeMap::new();
    let mut entries = Vec::new();
    let mut add = |name: &'static str, args: &[&str]| {
        let (key, entry) = new_key(&[&["--id", name], args].concat());
        keys.insert(name, key);
        entries.push(entry);
    };
    for role in ROLES {
        add(role, &["--role", role]);
    }
    add("gateway-acme", &["--role", "gateway", "--account", "acme"]);
    add(
        "support-acme",
        &["--role", "support", "--account-prefix", "acme"],
    );
    add(
        "reviewer-acme",
        &["--role", "reviewer", "--account", "acme"],
    );
    add(
        "expired",
        &["--role", "admin", "--expires", "2020-01-01T00:00:00Z"],
    );
    let keys = Keys {
        keys,
        file: dir.join("access.json"),
        entries,
    };
    keys.write(|_| true);
    keys
}

/// Sets `key` as the request's credentials.
pub fn present<T>(request: &mut Request<T>, key: &str) {
    let value = MetadataValue::try_from(format!("Bearer {key}")).unwrap();
    request.metadata_mut().insert("authorization", value);
}

/// A request carrying `key`.
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    present(&mut request, key);
    request
}

/// Every method the server serves, as (`Service/Method`, full path, client
/// streaming, server streaming): payvisor's from its descriptors, and the
/// health and reflection services tonic provides.
fn methods() -> Vec<(String, String, bool, bool)> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|file| file.package() == "payvisor.v1")
    {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("{}/{}", service.name(), method.name()),
                    format!("/payvisor.v1.{}/{}", service.name(), method.name()),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    assert!(methods.len() >= 17, "{methods:?}");
    for version in ["v1", "v1alpha"] {
        methods.push((
            "ServerReflection/ServerReflectionInfo".into(),
            format!("/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"),
            true,
            true,
        ));
    }
    methods
}

/// Calls `path` with an empty message (and `key`), returns the code: what
/// the edge decides comes before any handler reads the message.
async fn call(channel: &Channel, path: &str, streams: (bool, bool), key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let answer = match streams {
        (false, false) => {
            let mut request = Request::new(());
            if let Some(key) = key {
                present(&mut request, key);
            }
            grpc.unary(request, path, codec).await.map(|_| ())
        }
        (false, true) => {
            let mut request = Request::new(());
            if let Some(key) = key {
                present(&mut request, key);
            }
            grpc.server_streaming(request, path, codec)
                .await
                .map(|_| ())
        }
        _ => {
            let mut request = Request::new(tokio_stream::iter(Vec::<()>::new()));
            if let Some(key) = key {
                present(&mut request, key);
            }
            grpc.streaming(request, path, codec).await.map(|_| ())
        }
    };
    match answer {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_kind_of_caller_with_the_code_its_role_gets() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start_logged(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--metrics-listen",
        &metrics,
    ]);
    let channel = server.channel().await;
    let admin = keys.key("admin");
    let wrong_secret = format!("{}0000", &admin[..admin.len() - 4]);
    let mut failures = Vec::new();
    let mut refusals = 0;
    for (method, path, client_streams, server_streams) in methods() {
        let allowed = allowed(&method);
        let streams = (client_streams, server_streams);
        // No, bad, wrong and expired credentials: never past the edge.
        for (who, key) in [
            ("no key", None),
            ("a malformed key", Some("pvk_nonsense")),
            ("a wrong secret", Some(wrong_secret.as_str())),
            ("an expired key", Some(keys.key("expired"))),
        ] {
            let code = call(&channel, &path, streams, key).await;
            refusals += 1;
            if code != Code::Unauthenticated {
                failures.push(format!("{method} with {who}: {code:?}"));
            }
        }
        for role in ROLES {
            let code = call(&channel, &path, streams, Some(keys.key(role))).await;
            // Past the edge, the handler answers an empty message as it
            // will (OK, INVALID_ARGUMENT, NOT_FOUND...).
            let passed = !matches!(code, Code::Unauthenticated | Code::PermissionDenied);
            if passed != allowed.contains(role) {
                failures.push(format!("{method} by {role}: {code:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Health needs no key: load balancers check it.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a key");

    // Every refusal was counted and logged; nothing presented was logged.
    assert_eq!(metric(&metrics, "payvisor_auth_failures_total"), refusals);
    let log = server.log();
    assert!(log.contains("not authenticated"), "{log}");
    for secret in keys.keys.values().chain([&wrong_secret]) {
        let (_, secret_part) = secret.rsplit_once('_').unwrap();
        assert!(!log.contains(secret_part), "a secret reached the log");
    }
}

/// Creates a payment with `key` and waits until the bank processed it.
async fn processed(
    client: &mut PaymentServiceClient<Channel>,
    key: &str,
    account: &str,
    request_id: &str,
    minor_units: i64,
) -> pb::Payment {
    let created = client
        .create_payment(with_key(
            create_request(account, request_id, minor_units),
            key,
        ))
        .await
        .expect("create")
        .into_inner();
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let payment = client
            .get_payment(with_key(
                pb::GetPaymentRequest {
                    name: created.name.clone(),
                },
                key,
            ))
            .await
            .expect("get")
            .into_inner();
        if state(&payment) == pb::payment::State::Processed {
            return payment;
        }
        assert!(tokio::time::Instant::now() < deadline, "{payment:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scoped_to_one_account_cannot_reach_or_learn_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let server = Server::start(&["--auth", keys.file.to_str().unwrap()]);
    let mut client = server.client().await;
    let admin = keys.key("admin");
    let acme = processed(&mut client, admin, "acme", "p-acme", 1_000).await;
    let globex = processed(&mut client, admin, "globex", "p-globex", 1_000).await;
    let gateway = keys.key("gateway-acme");

    // Its own account: read, list, create.
    client
        .get_payment(with_key(
            pb::GetPaymentRequest {
                name: acme.name.clone(),
            },
            gateway,
        ))
        .await
        .expect("its own payment");
    // Another account's payment, and one that does not exist: the same
    // answer, word for word.
    let denied = |status: tonic::Status| (status.code(), status.message().to_owned());
    let existing = client
        .get_payment(with_key(
            pb::GetPaymentRequest {
                name: globex.name.clone(),
            },
            gateway,
        ))
        .await
        .map_err(denied)
        .unwrap_err();
    let missing = client
        .get_payment(with_key(
            pb::GetPaymentRequest {
                name: "accounts/globex/payments/never".into(),
            },
            gateway,
        ))
        .await
        .map_err(denied)
        .unwrap_err();
    assert_eq!(existing.0, Code::PermissionDenied);
    assert_eq!(existing, missing);
    let missing_account = client
        .get_account(with_key(
            pb::GetAccountRequest {
                name: "accounts/nobody".into(),
            },
            gateway,
        ))
        .await
        .map_err(denied)
        .unwrap_err();
    let other_account = client
        .get_account(with_key(
            pb::GetAccountRequest {
                name: "accounts/globex".into(),
            },
            gateway,
        ))
        .await
        .map_err(denied)
        .unwrap_err();
    assert_eq!(missing_account, other_account);
    assert_eq!(other_account.0, Code::PermissionDenied);

    for refused in [
        client
            .list_payments(with_key(
                pb::ListPaymentsRequest {
                    parent: "accounts/globex".into(),
                    ..Default::default()
                },
                gateway,
            ))
            .await
            .map(|_| ()),
        client
            .create_payment(with_key(create_request("globex", "r-new", 100), gateway))
            .await
            .map(|_| ()),
        client
            .list_payment_events(with_key(
                pb::ListPaymentEventsRequest {
                    parent: globex.name.clone(),
                    ..Default::default()
                },
                gateway,
            ))
            .await
            .map(|_| ()),
        client
            .watch_payment_events(with_key(
                pb::WatchPaymentEventsRequest {
                    after_event: format!("{}/events/1", globex.name),
                },
                gateway,
            ))
            .await
            .map(|_| ()),
        client
            .refund_payment(with_key(
                refund_request(&globex.name, "r-refund-globex", None),
                keys.key("support-acme"),
            ))
            .await
            .map(|_| ()),
        // The review queue is not the gateway's, nor a scoped reviewer's
        // way to another account.
        client
            .list_payments(with_key(
                pb::ListPaymentsRequest {
                    parent: "accounts/-".into(),
                    state: pb::payment::State::InReview as i32,
                    ..Default::default()
                },
                keys.key("gateway"),
            ))
            .await
            .map(|_| ()),
    ] {
        assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    }
    // A support key for acme* refunds acme's payment.
    client
        .refund_payment(with_key(
            refund_request(&acme.name, "r-refund-acme", None),
            keys.key("support-acme"),
        ))
        .await
        .expect("a refund in its own account");

    // Watching: only its own account's events come through.
    let mut everything = client
        .watch_payment_events(with_key(pb::WatchPaymentEventsRequest::default(), admin))
        .await
        .unwrap()
        .into_inner();
    let mut scoped = client
        .watch_payment_events(with_key(pb::WatchPaymentEventsRequest::default(), gateway))
        .await
        .unwrap()
        .into_inner();
    let globex_2 = processed(&mut client, admin, "globex", "p-globex-2", 500).await;
    // The admin's stream saw globex's payment processed: it was broadcast.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, everything.next())
            .await
            .expect("globex's events")
            .unwrap()
            .unwrap();
        if event.payment == globex_2.name && event.to_state == pb::payment::State::Processed as i32
        {
            break;
        }
    }
    let acme_2 = processed(&mut client, admin, "acme", "p-acme-2", 500).await;
    loop {
        let event = tokio::time::timeout_at(deadline, scoped.next())
            .await
            .expect("acme's events")
            .unwrap()
            .unwrap();
        assert!(event.payment.starts_with("accounts/acme/"), "{event:?}");
        if event.payment == acme_2.name && event.to_state == pb::payment::State::Processed as i32 {
            break;
        }
    }
}

/// Every page of the review queue as `key` sees it, `page_size` at a
/// time, with the tokens that led there.
async fn review_queue(
    client: &mut PaymentServiceClient<Channel>,
    key: &str,
    page_size: i32,
) -> (Vec<String>, Vec<String>) {
    let (mut names, mut tokens) = (Vec::new(), Vec::new());
    let mut page_token = String::new();
    loop {
        let page = client
            .list_payments(with_key(
                pb::ListPaymentsRequest {
                    parent: "accounts/-".into(),
                    state: pb::payment::State::InReview as i32,
                    page_size,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .expect("a page of the review queue")
            .into_inner();
        names.extend(page.payments.into_iter().map(|payment| payment.name));
        if page.next_page_token.is_empty() {
            return (names, tokens);
        }
        page_token = page.next_page_token;
        tokens.push(page_token.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_reviewer_pages_the_queue_without_learning_of_other_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        serde_json::json!({
            "version": "v1",
            "rules": [{"name": "big", "kind": "amount_above", "currency": "USD", "minor_units": 10_000, "action": "review"}]
        })
        .to_string(),
    )
    .unwrap();
    let server = Server::start(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let mut client = server.client().await;
    let admin = keys.key("admin");
    let mut acme = BTreeSet::new();
    for (account, request_id) in [
        ("globex", "q-secret-1"),
        ("acme", "q-1"),
        ("globex", "q-secret-2"),
        ("globex", "q-secret-3"),
        ("acme", "q-2"),
        ("globex", "q-secret-4"),
    ] {
        let payment = client
            .create_payment(with_key(create_request(account, request_id, 50_000), admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(payment.state, pb::payment::State::InReview as i32);
        if account == "acme" {
            acme.insert(payment.name);
        }
    }
    // The whole queue, for a reviewer of every account.
    let (everyone, _) = review_queue(&mut client, keys.key("reviewer"), 1).await;
    assert_eq!(everyone.len(), 6, "{everyone:?}");
    let globex_ids: Vec<String> = everyone
        .iter()
        .filter(|name| !acme.contains(*name))
        .map(|name| name.rsplit('/').next().unwrap().to_owned())
        .collect();
    // A reviewer of acme: acme's part of the queue, and tokens that name
    // nothing of globex's (they used to hold the index position of the
    // last payment read, whoever's it was).
    let (seen, tokens) = review_queue(&mut client, keys.key("reviewer-acme"), 1).await;
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), acme);
    // Its pages are filled from further on: one per payment of its own,
    // not one per payment queued (which would tell it the queue's size).
    assert!(
        !tokens.is_empty() && tokens.len() <= acme.len(),
        "{tokens:?}"
    );
    // And every token is as long as any other: the hidden ids' lengths
    // do not show.
    assert!(tokens.iter().all(|token| token.len() == tokens[0].len()));
    for token in &tokens {
        assert!(!token.contains("globex"), "{token}");
        for id in &globex_ids {
            assert!(!token.contains(id.as_str()), "{token} names {id}");
        }
    }
    // An altered token is the client's error.
    let mut altered = tokens[0].clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    let refused = client
        .list_payments(with_key(
            pb::ListPaymentsRequest {
                parent: "accounts/-".into(),
                state: pb::payment::State::InReview as i32,
                page_size: 1,
                page_token: String::from_utf8(altered).unwrap(),
                ..Default::default()
            },
            keys.key("reviewer-acme"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // A token survives a restart: the key it is sealed with is the store's.
    let mut server = server;
    assert!(server.terminate_async().await.success());
    server.restart();
    let mut client = server.client().await;
    let rest = client
        .list_payments(with_key(
            pb::ListPaymentsRequest {
                parent: "accounts/-".into(),
                state: pb::payment::State::InReview as i32,
                page_size: 10,
                page_token: tokens[0].clone(),
                ..Default::default()
            },
            keys.key("reviewer"),
        ))
        .await
        .expect("a token from before the restart")
        .into_inner();
    // It goes on after the scoped reviewer's first payment.
    let first = everyone.iter().position(|name| *name == seen[0]).unwrap();
    assert_eq!(rest.payments.len(), everyone.len() - first - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_access_list_takes_effect_within_seconds_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    keys.write(|id| id == "admin");
    let server = Server::start_logged(&["--auth", keys.file.to_str().unwrap()]);
    let mut client = server.client().await;
    let get = |key: &str| {
        with_key(
            pb::GetAccountRequest {
                name: "accounts/acme".into(),
            },
            key,
        )
    };
    // No payments yet: an accepted key reads NOT_FOUND.
    let code = |answer: Result<tonic::Response<pb::Account>, tonic::Status>| match answer {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    let accepted = Code::NotFound;
    assert_eq!(
        code(client.get_account(get(keys.key("oncall"))).await),
        Code::Unauthenticated
    );

    // Added: in force within seconds (the list is checked every second).
    // The bound is the acceptance's "within seconds", not a measurement.
    keys.write(|id| id == "admin" || id == "oncall");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while code(client.get_account(get(keys.key("oncall"))).await) != accepted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new key took over 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Streams opened by the key about to be removed, and by one that stays.
    let mut events = client
        .watch_payment_events(with_key(
            pb::WatchPaymentEventsRequest::default(),
            keys.key("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut alerts = client
        .watch_alerts(with_key(
            pb::WatchAlertsRequest::default(),
            keys.key("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut staying = client
        .watch_alerts(with_key(
            pb::WatchAlertsRequest::default(),
            keys.key("oncall"),
        ))
        .await
        .unwrap()
        .into_inner();
    // Removed: refused within seconds.
    keys.write(|id| id == "oncall");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while code(client.get_account(get(keys.key("admin"))).await) != Code::Unauthenticated {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a removed key took over 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its open streams end too, told why; the other key's goes on.
    let ended = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the removed key's event stream ended within seconds")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), alerts.message())
        .await
        .expect("the removed key's alert stream ended within seconds")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), staying.message())
            .await
            .is_err(),
        "the remaining key's stream goes on, waiting for alerts"
    );
    // A bad file is refused, with its problems; the keys in force stay.
    std::fs::write(
        &keys.file,
        r#"{"keys": [{"id": "x", "secret_sha256": "short", "roles": ["root"]}]}"#,
    )
    .unwrap();
    let checked = Command::new(BINARY)
        .args(["auth", "check"])
        .arg(&keys.file)
        .output()
        .unwrap();
    assert!(!checked.status.success());
    let problems = String::from_utf8_lossy(&checked.stderr);
    assert!(
        problems.contains("secret_sha256") && problems.contains("unknown role"),
        "{problems}"
    );
    server.logged("access list not reloaded").await;
    assert!(server.log().contains("unknown role"), "{}", server.log());
    assert_eq!(
        code(client.get_account(get(keys.key("oncall"))).await),
        accepted
    );
    assert_eq!(
        code(client.get_account(get(keys.key("admin"))).await),
        Code::Unauthenticated
    );
}

/// `payvisor serve` with `args` in a fresh directory: its exit status and
/// stderr, or `None` if it started listening (then it is stopped).
fn serve_outcome(args: &[&str]) -> Option<(bool, String)> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut process = Command::new(BINARY)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("payvisor listening on"));
    if listening {
        let _ = process.kill();
        let _ = process.wait();
        return None;
    }
    let output = process.wait_with_output().unwrap();
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn without_an_access_list_the_server_listens_on_loopback_only() {
    let (succeeded, stderr) = serve_outcome(&["--listen", "0.0.0.0:0"]).expect("refused");
    assert!(!succeeded);
    assert!(
        stderr.contains("without authentication") && stderr.contains("--auth FILE"),
        "{stderr}"
    );
    assert_eq!(serve_outcome(&["--listen", "127.0.0.1:0"]), None);
    assert_eq!(
        serve_outcome(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]),
        None
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"keys": [{"id": "a", "roles": []}]}"#).unwrap();
    let (succeeded, stderr) =
        serve_outcome(&["--listen", "0.0.0.0:0", "--auth", bad.to_str().unwrap()])
            .expect("refused");
    assert!(!succeeded);
    assert!(
        stderr.contains("access list") && stderr.contains("secret_sha256"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_presents_its_key_and_keeps_it_off_plaintext_networks() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let server = Server::start(&["--auth", keys.file.to_str().unwrap()]);
    let url = format!("http://{}", server.address);
    let run = |args: &[&str], key: Option<&str>| {
        let mut command = Command::new(BINARY);
        command.args(args).env_remove("PAYVISOR_API_KEY");
        if let Some(key) = key {
            command.env("PAYVISOR_API_KEY", key);
        }
        command.output().unwrap()
    };
    let created = run(
        &[
            "payments",
            "create",
            "--account",
            "acme",
            "--amount",
            "1.00",
            "--currency",
            "USD",
            "--server",
            &url,
        ],
        Some(keys.key("gateway")),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let unauthenticated = run(&["accounts", "get", "acme", "--server", &url], None);
    assert!(!unauthenticated.status.success());
    let said = String::from_utf8_lossy(&unauthenticated.stderr);
    assert!(
        said.contains("UNAUTHENTICATED") || said.contains("Unauthenticated"),
        "{said}"
    );
    // From the environment, and a server without a scheme.
    let read = run(
        &[
            "accounts",
            "get",
            "acme",
            "--json",
            "--server",
            &server.address,
        ],
        Some(keys.key("gateway")),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let flag = run(
        &[
            "accounts",
            "get",
            "acme",
            "--server",
            &url,
            "--api-key",
            keys.key("support"),
        ],
        None,
    );
    assert!(
        flag.status.success(),
        "{}",
        String::from_utf8_lossy(&flag.stderr)
    );
    // Beyond loopback in plaintext: refused before anything is sent.
    let refused = run(
        &[
            "accounts",
            "get",
            "acme",
            "--server",
            "http://192.0.2.1:50051",
        ],
        Some(keys.key("admin")),
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("refusing to send the API key in plaintext"),
        "{said}"
    );
    assert!(!said.contains(keys.key("admin")));
}

/// A gRPC channel to `address` over TLS, trusting `ca`, presenting
/// `identity` if given.
async fn tls_channel(
    address: &str,
    ca: &Path,
    identity: Option<&crate::common::certs::Issued>,
) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&issued.cert).unwrap(),
            std::fs::read(&issued.key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// A call that broke in the transport (no answer of payvisor's: with the
/// admin's key, payvisor answers NOT_FOUND).
fn broken(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

async fn account_code(channel: Channel, key: Option<&str>) -> Code {
    let mut request = Request::new(pb::GetAccountRequest {
        name: "accounts/acme".into(),
    });
    if let Some(key) = key {
        present(&mut request, key);
    }
    match PaymentServiceClient::new(channel)
        .get_account(request)
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_and_mutual_tls_only_trusted_clients_get_in() {
    use crate::common::certs::Authority;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let ours = Authority::new(dir.path(), "payvisor-test");
    let strangers = Authority::new(dir.path(), "someone-else");
    let server_cert = ours.server("payvisor-1");
    let tool = ours.client("support-tool", "Acme");
    let impostor = strangers.client("support-tool", "Acme");
    // The certificate names a support tool; the admin key stays in the list.
    let admin_entry = keys
        .entries
        .iter()
        .find(|entry| entry["id"] == "admin")
        .unwrap()
        .clone();
    let list = serde_json::json!({
        "keys": [admin_entry],
        "certificates": [{"subject": "CN=support-tool,O=Acme", "roles": ["support"]}],
    });
    std::fs::write(&keys.file, list.to_string()).unwrap();
    let server = Server::start(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--tls-cert",
        server_cert.cert.to_str().unwrap(),
        "--tls-key",
        server_cert.key.to_str().unwrap(),
        "--tls-client-ca",
        ours.cert.to_str().unwrap(),
    ]);
    let admin = keys.key("admin");

    // Plaintext on the TLS port gets nowhere.
    let plaintext = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let code = account_code(channel, Some(admin)).await;
        assert!(broken(code), "plaintext answered {code:?}");
    }
    // No client certificate, or one from another CA: the handshake fails.
    for identity in [None, Some(&impostor)] {
        match tls_channel(&server.address, &ours.cert, identity).await {
            Err(_) => {}
            Ok(channel) => {
                // TLS 1.3: the server refuses the certificate after the
                // client thinks the handshake done; the call breaks.
                let code = account_code(channel, Some(admin)).await;
                assert!(broken(code), "an untrusted client got {code:?}");
            }
        }
    }
    // A server certificate from an unknown CA is refused by the client.
    if let Ok(channel) = tls_channel(&server.address, &strangers.cert, Some(&tool)).await {
        let code = account_code(channel, Some(admin)).await;
        assert!(broken(code), "a server of an unknown CA answered {code:?}");
    }
    // The support tool's certificate is its identity: it reads (NOT_FOUND:
    // no payments yet), and may not create.
    let trusted = tls_channel(&server.address, &ours.cert, Some(&tool))
        .await
        .expect("a trusted client connects");
    assert_eq!(account_code(trusted.clone(), None).await, Code::NotFound);
    let created = PaymentServiceClient::new(trusted.clone())
        .create_payment(create_request("acme", "tls-1", 100))
        .await
        .unwrap_err();
    assert_eq!(created.code(), Code::PermissionDenied);
    // A key on the same connection speaks for the key's holder.
    PaymentServiceClient::new(trusted)
        .create_payment(with_key(create_request("acme", "tls-2", 100), admin))
        .await
        .expect("the admin's create over mutual TLS");

    // The command line over https, with the CA, the client certificate
    // and a key.
    let output = Command::new(BINARY)
        .args(["payments", "list", "--account", "acme", "--json"])
        .args(["--server", &format!("https://{}", server.address)])
        .arg("--tls-ca")
        .arg(&ours.cert)
        .arg("--tls-client-cert")
        .arg(&tool.cert)
        .arg("--tls-client-key")
        .arg(&tool.key)
        .env("PAYVISOR_API_KEY", admin)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        listed["payments"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_key_travels_encrypted_and_the_command_line_sends_it() {
    use crate::common::certs::Authority;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let ours = Authority::new(dir.path(), "payvisor-test");
    let server_cert = ours.server("payvisor-1");
    let server = Server::start(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--tls-cert",
        server_cert.cert.to_str().unwrap(),
        "--tls-key",
        server_cert.key.to_str().unwrap(),
    ]);
    let channel = tls_channel(&server.address, &ours.cert, None)
        .await
        .expect("TLS without a client certificate");
    assert_eq!(
        account_code(channel.clone(), None).await,
        Code::Unauthenticated
    );
    assert_eq!(
        account_code(channel, Some(keys.key("gateway"))).await,
        Code::NotFound
    );
    // The CLI to a non-loopback name over https may send its key; here
    // `localhost` over https with the test CA.
    let port = server.address.rsplit_once(':').unwrap().1;
    let output = Command::new(BINARY)
        .args(["accounts", "get", "acme"])
        .args(["--server", &format!("https://localhost:{port}")])
        .arg("--tls-ca")
        .arg(&ours.cert)
        .args(["--api-key", keys.key("gateway")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("NOT_FOUND"), "{said}");
    // Without the CA the system's roots do not know the server.
    let output = Command::new(BINARY)
        .args(["accounts", "get", "acme"])
        .args(["--server", &format!("https://localhost:{port}")])
        .args(["--api-key", keys.key("gateway")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("NOT_FOUND"));

    // A renewed certificate (here from a new CA) is served without a
    // restart, within the reload period (5 s; the bound is generous).
    let renewed_ca = Authority::new(dir.path(), "renewed");
    let renewed = renewed_ca.server("payvisor-1");
    std::fs::copy(&renewed.key, &server_cert.key).unwrap();
    std::fs::copy(&renewed.cert, &server_cert.cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tls_channel(&server.address, &renewed_ca.cert, None).await {
            if account_code(channel, Some(keys.key("gateway"))).await == Code::NotFound {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One HTTP/1.1 exchange over TLS with `address`, trusting `ca`: the whole
/// answer, or the error.
async fn https_exchange(address: &str, ca: &Path, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in payvisor::tls::certificates(ca, &std::fs::read(ca)?).unwrap() {
        roots.add(certificate).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_callbacks_and_metrics_are_served_over_tls_where_configured() {
    use crate::common::certs::Authority;
    let dir = tempfile::tempdir().unwrap();
    let public = Authority::new(dir.path(), "public-ca");
    let internal = Authority::new(dir.path(), "internal-ca");
    let callbacks_cert = public.server("callbacks");
    let metrics_cert = internal.server("metrics");
    let callbacks = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let secret = "0123456789abcdef0123";
    let _server = Server::start(&[
        "--bank-url",
        "http://127.0.0.1:9",
        "--bank-secret",
        secret,
        "--bank-callback-listen",
        &callbacks,
        "--bank-callback-tls-cert",
        callbacks_cert.cert.to_str().unwrap(),
        "--bank-callback-tls-key",
        callbacks_cert.key.to_str().unwrap(),
        "--metrics-listen",
        &metrics,
        "--metrics-tls-cert",
        metrics_cert.cert.to_str().unwrap(),
        "--metrics-tls-key",
        metrics_cert.key.to_str().unwrap(),
    ]);
    // A signed callback over TLS is read and answered (for a payment
    // payvisor never sent, it is refused: but answered).
    let body = r#"{"message_id":"m-1","bank":"bank","type":"payment.processed","payment_id":"accounts/acme/payments/none"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = payvisor::signature::sign(secret.as_bytes(), now, body.as_bytes());
    let request = format!(
        "POST /v1/callbacks/bank HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nbank-signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = https_exchange(&callbacks, &public.cert, &request)
        .await
        .expect("a TLS exchange");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Plaintext on the callback port gets no HTTP answer.
    let plain = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&callbacks).unwrap();
        let _ = stream.write_all(b"GET /v1/callbacks/bank HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(!plain.starts_with("HTTP/1.1"), "{plain}");
    // The metrics port speaks TLS with its own certificate.
    let scrape = https_exchange(
        &metrics,
        &internal.cert,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("a TLS scrape");
    assert!(scrape.contains("payvisor_auth_failures_total"), "{scrape}");
    // The wrong CA: refused by the client.
    assert!(
        https_exchange(&metrics, &public.cert, "GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_is_told_when_to_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    // The gateway key may make 2 calls at once, then 1 a second.
    let mut entries = keys.entries.clone();
    for entry in &mut entries {
        if entry["id"] == "gateway" {
            entry["rate"] = serde_json::json!({"per_second": 1, "burst": 2});
        }
    }
    std::fs::write(
        &keys.file,
        serde_json::json!({ "keys": entries }).to_string(),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--metrics-listen",
        &metrics,
    ]);
    let mut client = server.client().await;
    let get = |key: &str| {
        with_key(
            pb::GetAccountRequest {
                name: "accounts/acme".into(),
            },
            key,
        )
    };
    for _ in 0..2 {
        let answer = client.get_account(get(keys.key("gateway"))).await;
        assert_eq!(answer.unwrap_err().code(), Code::NotFound);
    }
    let limited = client
        .get_account(get(keys.key("gateway")))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(crate::common::reason(&limited), "RATE_LIMITED");
    use tonic_types::StatusExt;
    let retry = limited
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another key is not held back by it.
    let other = client.get_account(get(keys.key("support"))).await;
    assert_eq!(other.unwrap_err().code(), Code::NotFound);
    // After the delay it asked for, the key is served again.
    tokio::time::sleep(retry).await;
    let again = client.get_account(get(keys.key("gateway"))).await;
    assert_eq!(again.unwrap_err().code(), Code::NotFound);
    assert_eq!(metric(&metrics, "payvisor_rate_limited_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_configured_or_presented_reaches_the_log_or_the_metrics() {
    use crate::common::bank_sim::{BankSim, BANK_SIM_SECRET};
    use crate::common::pager::PagerReceiver;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let routing_key = "R0UT1NG-KEY-5ecret-0123456789";
    let webhook_secret = "whsec-5ecret-0123456789abcdef";
    let pager = PagerReceiver::start(routing_key).await;
    let bank = BankSim::start(dir.path(), free_port(), &["--outcome-delay-ms", "1..5"]);
    let hooks = dir.path().join("hooks.json");
    std::fs::write(
        &hooks,
        serde_json::json!({"endpoints": [{"name": "shop", "url": "http://127.0.0.1:9/hooks", "secret": webhook_secret}]})
            .to_string(),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let callbacks = format!("127.0.0.1:{}", free_port());
    let bank_url = format!("http://{}", bank.address);
    let pager_url = pager.url();
    let server = Server::start_logged(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--bank-url",
        &bank_url,
        "--bank-name",
        "bank-a",
        "--bank-secret",
        BANK_SIM_SECRET,
        "--bank-callback-listen",
        &callbacks,
        "--webhooks",
        hooks.to_str().unwrap(),
        "--pagerduty-routing-key",
        routing_key,
        "--pagerduty-url",
        &pager_url,
        "--stall-deadline",
        "sent=1s",
        "--redrive-max",
        "0",
        "--metrics-listen",
        &metrics,
    ]);
    let mut client = server.client().await;
    let admin = keys.key("admin");
    // Money moves: a payment processed and refunded, signed callbacks,
    // webhooks signed (and failing), one payment paged.
    let paid = processed(&mut client, admin, "acme", "leak-1", 1_000).await;
    client
        .refund_payment(with_key(
            refund_request(&paid.name, "leak-refund", None),
            keys.key("support"),
        ))
        .await
        .expect("refund");
    let mut hung = create_request("acme", "leak-2", 500);
    hung.payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), "hang".into());
    client
        .create_payment(with_key(hung, admin))
        .await
        .expect("create");
    // Refused credentials of every kind.
    for key in [
        "pvk_nonsense_zzzz",
        &keys.key("admin").replace("pvk_admin_", "pvk_admin_f"),
    ] {
        let _ = client
            .get_account(with_key(
                pb::GetAccountRequest {
                    name: "accounts/acme".into(),
                },
                key,
            ))
            .await;
    }
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    // A page (the watchdog's resolve at start is not one).
    while !pager
        .events()
        .iter()
        .any(|event| event["event_action"] == "trigger")
    {
        assert!(tokio::time::Instant::now() < deadline, "never paged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = crate::common::bank_sim::http_get(&metrics, "/metrics");
    let log = server.log();
    assert!(log.contains("DEBUG"), "the log was read at debug level");
    let mut secrets: Vec<(&str, String)> = vec![
        ("bank secret", BANK_SIM_SECRET.to_owned()),
        ("webhook secret", webhook_secret.to_owned()),
        ("PagerDuty routing key", routing_key.to_owned()),
    ];
    for (name, key) in &keys.keys {
        secrets.push((name, key.rsplit_once('_').unwrap().1.to_owned()));
    }
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "the {what} reached the log");
        assert!(!page.contains(&secret), "the {what} reached the metrics");
    }
    // Nor `--help`, with every secret in the environment.
    for args in [
        &["serve", "--help"][..],
        &["payments", "list", "--help"][..],
    ] {
        let help = Command::new(BINARY)
            .args(args)
            .env("PAYVISOR_BANK_SECRET", BANK_SIM_SECRET)
            .env("PAYVISOR_PAGERDUTY_ROUTING_KEY", routing_key)
            .env("PAYVISOR_NODE_KEY", keys.key("node"))
            .env("PAYVISOR_API_KEY", admin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("--"), "{text}");
        for secret in [BANK_SIM_SECRET, routing_key, keys.key("node"), admin] {
            assert!(!text.contains(secret), "{args:?} shows a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_refunded_reviewed_or_failed_a_payment_is_recorded_with_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        serde_json::json!({
            "version": "v1",
            "rules": [{"name": "big", "kind": "amount_above", "currency": "USD", "minor_units": 10_000, "action": "review"}]
        })
        .to_string(),
    )
    .unwrap();
    // An endpoint that never answers: its deliveries are there to re-send.
    let webhooks = dir.path().join("webhooks.json");
    std::fs::write(
        &webhooks,
        serde_json::json!({"endpoints": [{"name": "shop", "url": "http://127.0.0.1:9/hooks", "secret": "whsec-0123456789abcdef"}]})
            .to_string(),
    )
    .unwrap();
    let server = Server::start(&[
        "--auth",
        keys.file.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--webhooks",
        webhooks.to_str().unwrap(),
    ]);
    let mut client = server.client().await;
    let gateway = keys.key("gateway");
    // Refunded by support.
    let paid = processed(&mut client, gateway, "acme", "who-1", 1_000).await;
    client
        .refund_payment(with_key(
            refund_request(&paid.name, "who-r", Some(300)),
            keys.key("support"),
        ))
        .await
        .expect("refund");
    // Approved by a reviewer.
    let big = client
        .create_payment(with_key(create_request("acme", "who-2", 50_000), gateway))
        .await
        .unwrap()
        .into_inner();
    client
        .approve_payment(with_key(
            pb::ApprovePaymentRequest {
                name: big.name.clone(),
                reason: "known customer".into(),
                request_id: "who-approve".into(),
            },
            keys.key("reviewer"),
        ))
        .await
        .expect("approve");
    // Failed by on-call.
    let mut hung = create_request("acme", "who-3", 700);
    hung.payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), "hang".into());
    let hung = client
        .create_payment(with_key(hung, gateway))
        .await
        .unwrap()
        .into_inner();
    client
        .fail_payment(with_key(
            pb::FailPaymentRequest {
                name: hung.name.clone(),
                reason: "bank lost it".into(),
                request_id: "who-fail".into(),
            },
            keys.key("oncall"),
        ))
        .await
        .expect("fail");

    for (name, actor) in [
        (&paid.name, "support"),
        (&big.name, "reviewer"),
        (&hung.name, "oncall"),
    ] {
        let payment = client
            .get_payment(with_key(
                pb::GetPaymentRequest { name: name.clone() },
                keys.key("admin"),
            ))
            .await
            .unwrap()
            .into_inner();
        let attributed: Vec<&str> = payment
            .history
            .iter()
            .filter(|entry| !entry.actor.is_empty())
            .map(|entry| entry.actor.as_str())
            .collect();
        assert!(
            !attributed.is_empty() && attributed.iter().all(|who| *who == actor),
            "{name}: {:?}",
            payment.history
        );
        // Creation and the bank's answers are no one's.
        assert_eq!(payment.history[0].actor, "");
        let events = client
            .list_payment_events(with_key(
                pb::ListPaymentEventsRequest {
                    parent: name.clone(),
                    ..Default::default()
                },
                keys.key("admin"),
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(
            events.iter().any(|event| event.actor == actor),
            "{name}: {events:?}"
        );
        assert!(events.iter().any(|event| event.actor.is_empty()));
    }
    // The command line shows who.
    let output = Command::new(BINARY)
        .args(["events", "list", &hung.name, "--server", &server.address])
        .env("PAYVISOR_API_KEY", keys.key("admin"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(" BY ") && text.contains("oncall"), "{text}");

    // The audit query: the account's privileged actions, oldest first.
    let audit = |start: Option<prost_types::Timestamp>, page_token: &str, page_size: i32| {
        with_key(
            pb::ListAuditRecordsRequest {
                parent: "accounts/acme".into(),
                start_time: start,
                end_time: None,
                page_size,
                page_token: page_token.into(),
            },
            keys.key("oncall"),
        )
    };
    let records = client
        .list_audit_records(audit(None, "", 0))
        .await
        .unwrap()
        .into_inner()
        .records;
    let seen: Vec<(&str, &str)> = records
        .iter()
        .map(|record| (record.actor.as_str(), record.payment.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("support", paid.name.as_str()),
            ("reviewer", big.name.as_str()),
            ("oncall", hung.name.as_str())
        ]
    );
    assert_eq!(records[0].causes, ["refund_r1_requested"]);
    assert_eq!(records[2].causes, ["operator_failed"]);
    // Paged one at a time, the same three.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = client
            .list_audit_records(audit(None, &token, 1))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.records);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, records);
    // From the reviewer's action on.
    let since = client
        .list_audit_records(audit(records[1].time, "", 0))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(since, records[1..]);
    // Not the gateway's to read; and from the command line.
    let refused = client
        .list_audit_records(with_key(
            pb::ListAuditRecordsRequest {
                parent: "accounts/acme".into(),
                ..Default::default()
            },
            gateway,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let output = Command::new(BINARY)
        .args([
            "audit",
            "list",
            "--account",
            "acme",
            "--server",
            &server.address,
        ])
        .env("PAYVISOR_API_KEY", keys.key("admin"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("operator_fail") && text.contains("reviewer"),
        "{text}"
    );

    // Re-sending an event: the delivery names who asked, and the audit
    // query lists it, with the event.
    let event = format!("{}/events/1", paid.name);
    let resent = client
        .resend_payment_event(with_key(
            pb::ResendPaymentEventRequest {
                name: event.clone(),
                endpoint: "shop".into(),
                ..Default::default()
            },
            keys.key("oncall"),
        ))
        .await
        .expect("resend")
        .into_inner();
    let delivery = resent
        .deliveries
        .iter()
        .find(|delivery| delivery.endpoint == "shop")
        .expect("the shop's delivery");
    assert_eq!(delivery.resent_by, "oncall", "{resent:?}");
    let records = client
        .list_audit_records(audit(None, "", 0))
        .await
        .unwrap()
        .into_inner()
        .records;
    let last = records.last().unwrap();
    assert_eq!(records.len(), 4, "{records:?}");
    assert_eq!(
        (
            last.actor.as_str(),
            last.payment.as_str(),
            last.event.as_str()
        ),
        ("oncall", paid.name.as_str(), event.as_str())
    );
    assert_eq!(last.causes, ["event_resent"]);
}
