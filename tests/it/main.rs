//! payvisor's integration tests, in one test binary: each module was a test
//! binary of its own, and every one of them linked the whole stack (16 links
//! of the server, the AWS SDK and tonic on a 2-core machine). Run one group
//! with a filter, e.g. `cargo test --test it e2e::`.
//!
//! Layers (see ARCHITECTURE.md, "Tests"): in-process tests of one boundary
//! or component (`store_conformance`, `alert_sinks`, `http_connector`,
//! `actors`, `callbacks`, `watchdog`, `webhook_dispatch`, `properties`,
//! `shutdown`), and
//! tests of the real binaries over the wire (`e2e`, `crash`, `stalls`,
//! `reviews`, `webhooks`, `bank_over_http`, `bench_smoke`). `common` is the
//! harness: a server process per test, the DynamoDB-API test server, a
//! PagerDuty stand-in.

mod common;

mod actors;
mod alert_sinks;
mod bank_over_http;
mod bench_smoke;
mod callbacks;
mod cluster;
mod cluster_nodes;
mod crash;
mod deploy;
mod e2e;
mod hardening;
mod http_connector;
mod layout;
mod observability;
mod otlp;
mod parsers;
mod properties;
mod reviews;
mod security;
mod shutdown;
mod simulation;
mod stalls;
mod store_conformance;
mod watchdog;
mod webhook_dispatch;
mod webhooks;
