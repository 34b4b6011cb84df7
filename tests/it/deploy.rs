//! What deploy/ ships agrees with the server it deploys: the task role
//! allows exactly the DynamoDB calls the server makes, and everything that
//! stops a node waits longer than the node's drain.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use payvisor::limits;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The DynamoDB client's methods called in `source` (`.client` then
/// `.method()`, across line breaks).
fn client_calls(source: &str) -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".client") {
        rest = &rest[at + ".client".len()..];
        let after = rest.trim_start();
        if let Some(call) = after.strip_prefix('.') {
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if call[name.len()..].starts_with("()") {
                calls.insert(name);
            }
        }
    }
    calls
}

#[test]
fn the_task_role_allows_exactly_the_dynamodb_calls_the_server_makes() {
    let source = read("src/store/dynamodb.rs");
    let calls = client_calls(&source);
    // The setup command's calls (`payvisor dynamodb create-table`) are the
    // operator's, in the template's SetupPolicy; every other call is the
    // server's. A call not listed here fails the test until it is placed.
    let setup = BTreeSet::from([
        "create_table".to_owned(),
        "describe_table".to_owned(),
        "update_continuous_backups".to_owned(),
        "describe_time_to_live".to_owned(),
        "update_time_to_live".to_owned(),
    ]);
    let mut needed = BTreeSet::new();
    for call in &calls {
        match call.as_str() {
            "get_item" => needed.insert("dynamodb:GetItem"),
            "query" => needed.insert("dynamodb:Query"),
            // IAM authorizes a transaction by the actions inside it.
            "transact_write_items" => {
                for (builder, action) in [
                    (".put(", "dynamodb:PutItem"),
                    (".delete(", "dynamodb:DeleteItem"),
                    (".condition_check(", "dynamodb:ConditionCheckItem"),
                    (".update(", "dynamodb:UpdateItem"),
                ] {
                    if source.contains(builder) {
                        needed.insert(action);
                    }
                }
                true
            }
            call if setup.contains(call) => true,
            other => panic!(
                "src/store/dynamodb.rs calls {other}: add its IAM action here and to the task role"
            ),
        };
    }
    assert!(needed.contains("dynamodb:PutItem"), "{calls:?}");

    let template = read("deploy/cloudformation/payvisor-ecs.yaml");
    let section = |from: &str, to: &str| {
        let start = template.find(from).unwrap_or_else(|| panic!("no {from}"));
        let end = start
            + template[start..]
                .find(to)
                .unwrap_or_else(|| panic!("no {to}"));
        template[start..end].to_owned()
    };
    let actions = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| {
                let line = line.trim().trim_start_matches("- ").trim();
                let line = line.strip_prefix("Action:").unwrap_or(line).trim();
                line.starts_with("dynamodb:").then(|| line.to_owned())
            })
            .collect()
    };
    let granted = actions(&section("  TaskRole:", "  SetupPolicy:"));
    let needed: BTreeSet<String> = needed.into_iter().map(str::to_owned).collect();
    assert_eq!(
        granted, needed,
        "the task role grants more or less than the server calls"
    );
    let setup_granted = actions(&section("  SetupPolicy:", "  TaskSecurityGroup:"));
    assert_eq!(
        setup_granted,
        BTreeSet::from([
            "dynamodb:CreateTable".to_owned(),
            "dynamodb:DescribeTable".to_owned(),
            "dynamodb:UpdateContinuousBackups".to_owned(),
            "dynamodb:DescribeTimeToLive".to_owned(),
            "dynamodb:UpdateTimeToLive".to_owned(),
        ])
    );
}

/// The first number after `key` in `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key}"))
}

#[test]
fn everything_that_stops_a_node_waits_longer_than_its_drain() {
    // Requests and tasks, then the actors' mailboxes, each bounded by
    // SHUTDOWN_GRACE, then handing the shards over, then the last spans.
    let drain = limits::SHUTDOWN_GRACE * 2 + limits::CLUSTER_LEAVE_MAX + limits::OTLP_FLUSH_MAX;
    let waits = [
        (
            "Kubernetes terminationGracePeriodSeconds",
            number_after(
                &read("deploy/kubernetes/payvisor.yaml"),
                "terminationGracePeriodSeconds:",
            ),
        ),
        (
            "ECS StopTimeout",
            number_after(
                &read("deploy/cloudformation/payvisor-ecs.yaml"),
                "StopTimeout:",
            ),
        ),
        (
            "NLB deregistration delay",
            number_after(
                &read("deploy/cloudformation/payvisor-ecs.yaml"),
                "deregistration_delay.timeout_seconds",
            ),
        ),
        (
            "systemd TimeoutStopSec",
            number_after(&read("deploy/systemd/payvisor.service"), "TimeoutStopSec="),
        ),
    ];
    for (what, seconds) in waits {
        assert!(
            Duration::from_secs(seconds) > drain,
            "{what} is {seconds} s, not more than the drain ({drain:?})"
        );
    }
}
