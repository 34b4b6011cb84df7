//! The production store: one DynamoDB table through `aws-sdk-dynamodb`, with
//! the same contract as the embedded store (the conformance suite runs
//! against both).
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `pk`, `sk` | S | primary key (partition, sort) |
//! | `v` | N | version, compared by conditions |
//! | `b` | B | the record (JSON) |
//! | `ipk`, `isk` | S | sparse GSI `by-index` (only items that set them) |
//!
//! Conditions become condition expressions (`attribute_not_exists(pk)` or
//! `#v = :v`); an atomic write is one `TransactWriteItems` with a client
//! request token, so a retried call is applied at most once. Cancellation
//! reasons are inspected: a failed condition is reported with its action's
//! index, a transaction conflict is retried (bounded), throttling and
//! unavailability surface as `Unavailable`, validation errors as
//! `InvalidWrite`. Reads that decide anything are strongly consistent;
//! lists are `Query`s with bounded pages, never `Scan`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, PointInTimeRecoverySpecification, Projection, ProjectionType, Put,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;

use super::{
    validate_write, BoxFuture, Condition, IndexKey, IndexQuery, Item, Key, Page, Query, Store,
    StoreError, WriteOp,
};
use crate::limits;
use crate::random::{Random, SeededRandom};

/// Name of the sparse global secondary index.
pub const INDEX_NAME: &str = "by-index";
/// The attribute DynamoDB's time to live reads: an item's expiry, in Unix
/// seconds (`Item::expires_at`). DynamoDB deletes expired items itself,
/// within days of their expiry.
pub const TTL_ATTRIBUTE: &str = "ttl";

/// How to reach DynamoDB. Region, credentials and endpoint come the
/// standard AWS way (environment, profile, instance role;
/// `AWS_ENDPOINT_URL_DYNAMODB` for a local endpoint); the SDK sets no
/// operation timeout by default, so these are explicit.
#[derive(Clone, Debug)]
pub struct DynamoDbSettings {
    pub table: String,
    pub connect_timeout: Duration,
    /// Bound on one attempt of a call.
    pub attempt_timeout: Duration,
    /// Bound on a call including the SDK's retries.
    pub operation_timeout: Duration,
    /// Attempts per call (the SDK's standard retry policy with back-off).
    pub max_attempts: u32,
}

impl DynamoDbSettings {
    pub fn new(table: impl Into<String>) -> DynamoDbSettings {
        DynamoDbSettings {
            table: table.into(),
            connect_timeout: limits::DYNAMODB_CONNECT_TIMEOUT,
            attempt_timeout: limits::DYNAMODB_ATTEMPT_TIMEOUT,
            operation_timeout: limits::DYNAMODB_OPERATION_TIMEOUT,
            max_attempts: limits::DYNAMODB_ATTEMPTS_MAX,
        }
    }
}

pub struct DynamoDbStore {
    client: Client,
    table: String,
    /// Client request tokens: a per-process random prefix and a counter.
    token_prefix: u64,
    token_counter: AtomicU64,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Renders an SDK error with its service code and message, not just
/// "service error".
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: &SdkError<E, R>,
) -> String {
    match error.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("unknown"),
            service.message().unwrap_or("no message")
        ),
        None => format!("{error}: {:?}", std::error::Error::source(error)),
    }
}

impl DynamoDbStore {
    /// Connects (lazily: the first call opens the connection).
    pub async fn connect(settings: &DynamoDbSettings) -> DynamoDbStore {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .load()
            .await;
        DynamoDbStore {
            client: Client::new(&config),
            table: settings.table.clone(),
            // Unique per process, so two nodes never share a request token.
            token_prefix: SeededRandom::from_entropy().next_u64(),
            token_counter: AtomicU64::new(0),
        }
    }

    /// Creates the table and its index if they do not exist, and waits until
    /// the table is active. Safe to run again.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let string_attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(unavailable)
        };
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(unavailable)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(INDEX_NAME)
            .key_schema(key("ipk", KeyType::Hash)?)
            .key_schema(key("isk", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(unavailable)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_attribute("pk")?)
            .attribute_definitions(string_attribute("sk")?)
            .attribute_definitions(string_attribute("ipk")?)
            .attribute_definitions(string_attribute("isk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(index)
            // Payment records and the ledger: not deleted by a slip.
            .deletion_protection_enabled(true)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(error) => return Err(unavailable(describe(&error))),
        }
        for _ in 0..limits::DYNAMODB_TABLE_WAIT_POLLS_MAX {
            let table = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            let status = table
                .map_err(|error| unavailable(describe(&error)))?
                .table
                .and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                self.enable_time_to_live().await?;
                return self.enable_point_in_time_recovery().await;
            }
            tokio::time::sleep(limits::DYNAMODB_TABLE_WAIT_POLL).await;
        }
        Err(StoreError::Unavailable(format!(
            "table {} did not become active",
            self.table
        )))
    }

    /// Time to live on [`TTL_ATTRIBUTE`], as the CloudFormation template has
    /// it: expired idempotency records are deleted by DynamoDB. Already
    /// enabled (a second run) is fine.
    async fn enable_time_to_live(&self) -> Result<(), StoreError> {
        let described = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        let ttl = described.time_to_live_description();
        let status = ttl.and_then(|ttl| ttl.time_to_live_status());
        let on = matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if on && ttl.and_then(|ttl| ttl.attribute_name()) == Some(TTL_ATTRIBUTE) {
            return Ok(());
        }
        let specification = TimeToLiveSpecification::builder()
            .attribute_name(TTL_ATTRIBUTE)
            .enabled(true)
            .build()
            .map_err(unavailable)?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(specification)
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(())
    }

    /// Point-in-time recovery, as the CloudFormation template has it: the
    /// way back from damaged or deleted records (docs/runbooks). DynamoDB
    /// may refuse it for a moment after the table turns active (its backups
    /// are still being set up), so it is asked again, within the same bound
    /// as the wait for the table.
    async fn enable_point_in_time_recovery(&self) -> Result<(), StoreError> {
        let recovery = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(unavailable)?;
        let mut last_error = String::new();
        for _ in 0..limits::DYNAMODB_TABLE_WAIT_POLLS_MAX {
            let enabled = self
                .client
                .update_continuous_backups()
                .table_name(&self.table)
                .point_in_time_recovery_specification(recovery.clone())
                .send()
                .await;
            match enabled {
                Ok(_) => return Ok(()),
                Err(error) => last_error = describe(&error),
            }
            tokio::time::sleep(limits::DYNAMODB_TABLE_WAIT_POLL).await;
        }
        Err(StoreError::Unavailable(format!(
            "point-in-time recovery not enabled on {}: {last_error}",
            self.table
        )))
    }

    fn next_token(&self) -> String {
        let counter = self.token_counter.fetch_add(1, Ordering::Relaxed);
        // At most 36 characters, as DynamoDB requires.
        format!("{:016x}-{:016x}", self.token_prefix, counter)
    }

    fn key_attributes(key: &Key) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(key.pk.clone())),
            ("sk".to_owned(), AttributeValue::S(key.sk.clone())),
        ])
    }

    fn item_attributes(item: &Item) -> HashMap<String, AttributeValue> {
        let mut attributes = Self::key_attributes(&item.key);
        attributes.insert("v".into(), AttributeValue::N(item.version.to_string()));
        attributes.insert("b".into(), AttributeValue::B(Blob::new(item.body.clone())));
        if let Some(index) = &item.index {
            attributes.insert("ipk".into(), AttributeValue::S(index.pk.clone()));
            attributes.insert("isk".into(), AttributeValue::S(index.sk.clone()));
        }
        if let Some(expires_at) = item.expires_at {
            attributes.insert(
                TTL_ATTRIBUTE.into(),
                AttributeValue::N(expires_at.to_string()),
            );
        }
        attributes
    }

    fn transact_item(&self, op: &WriteOp) -> Result<TransactWriteItem, StoreError> {
        let invalid = |error: aws_sdk_dynamodb::error::BuildError| {
            StoreError::InvalidWrite(error.to_string())
        };
        let (expression, names, values) = condition_expression(match op {
            WriteOp::Put { condition, .. }
            | WriteOp::Delete { condition, .. }
            | WriteOp::Check { condition, .. } => condition,
        });
        let item = TransactWriteItem::builder();
        Ok(match op {
            WriteOp::Put { item: stored, .. } => item
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(Self::item_attributes(stored)))
                        .condition_expression(expression)
                        .set_expression_attribute_names(names)
                        .set_expression_attribute_values(values)
                        .build()
                        .map_err(invalid)?,
                )
                .build(),
            WriteOp::Delete { key, .. } => item
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(Self::key_attributes(key)))
                        .condition_expression(expression)
                        .set_expression_attribute_names(names)
                        .set_expression_attribute_values(values)
                        .build()
                        .map_err(invalid)?,
                )
                .build(),
            WriteOp::Check { key, .. } => item
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(Self::key_attributes(key)))
                        .condition_expression(expression)
                        .set_expression_attribute_names(names)
                        .set_expression_attribute_values(values)
                        .build()
                        .map_err(invalid)?,
                )
                .build(),
        })
    }

    fn decode(attributes: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
        let string = |name: &str| match attributes.get(name) {
            Some(AttributeValue::S(value)) => Ok(Some(value.clone())),
            None => Ok(None),
            Some(other) => Err(StoreError::Corrupt(format!(
                "attribute {name} is {other:?}"
            ))),
        };
        let required = |name: &str| {
            string(name)?.ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing")))
        };
        let version = match attributes.get("v") {
            Some(AttributeValue::N(number)) => number
                .parse::<u64>()
                .map_err(|e| StoreError::Corrupt(format!("version: {e}")))?,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "version attribute is {other:?}"
                )))
            }
        };
        let body = match attributes.get("b") {
            Some(AttributeValue::B(blob)) => blob.as_ref().to_vec(),
            other => return Err(StoreError::Corrupt(format!("body attribute is {other:?}"))),
        };
        let index = match (string("ipk")?, string("isk")?) {
            (Some(pk), Some(sk)) => Some(IndexKey { pk, sk }),
            _ => None,
        };
        let expires_at = match attributes.get(TTL_ATTRIBUTE) {
            None => None,
            Some(AttributeValue::N(number)) => Some(
                number
                    .parse::<i64>()
                    .map_err(|e| StoreError::Corrupt(format!("{TTL_ATTRIBUTE}: {e}")))?,
            ),
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "{TTL_ATTRIBUTE} attribute is {other:?}"
                )))
            }
        };
        Ok(Item {
            key: Key {
                pk: required("pk")?,
                sk: required("sk")?,
            },
            version,
            body,
            index,
            expires_at,
        })
    }

    /// Classifies a cancelled transaction. `None`: a conflict worth retrying.
    fn cancelled(
        ops: &[WriteOp],
        reasons: &[aws_sdk_dynamodb::types::CancellationReason],
    ) -> Option<StoreError> {
        let codes: Vec<&str> = reasons
            .iter()
            .map(|reason| reason.code().unwrap_or("None"))
            .collect();
        if let Some(index) = codes
            .iter()
            .position(|code| *code == "ConditionalCheckFailed")
        {
            return Some(StoreError::ConditionFailed {
                index,
                key: ops[index].key().clone(),
            });
        }
        if codes.contains(&"TransactionConflict") {
            return None;
        }
        if codes.contains(&"ValidationError") {
            return Some(StoreError::InvalidWrite(format!(
                "cancellation reasons {codes:?}"
            )));
        }
        // ThrottlingError, ProvisionedThroughputExceeded, anything else:
        // the write did not happen and may be retried by the caller.
        Some(StoreError::Unavailable(format!(
            "transaction cancelled: {codes:?}"
        )))
    }

    async fn query_pages(
        &self,
        build: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: usize,
        position: impl Fn(&Item) -> String,
    ) -> Result<Page, StoreError> {
        // Read one item more than asked for, to know whether a next page
        // exists; DynamoDB may return short pages (1 MB), so follow them.
        let wanted = limit.max(1) + 1;
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = build()
                .limit((wanted - items.len()) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            for attributes in page.items() {
                items.push(Self::decode(attributes)?);
            }
            match page.last_evaluated_key {
                Some(last) if items.len() < wanted => start = Some(last),
                _ => break,
            }
        }
        let more = items.len() > limit.max(1);
        items.truncate(limit.max(1));
        let next = if more {
            items.last().map(position)
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

type AttributeNames = Option<HashMap<String, String>>;
type AttributeValues = Option<HashMap<String, AttributeValue>>;

/// A condition as a DynamoDB condition expression with its placeholders.
fn condition_expression(condition: &Condition) -> (String, AttributeNames, AttributeValues) {
    match condition {
        Condition::NotExists => ("attribute_not_exists(pk)".to_owned(), None, None),
        Condition::VersionIs(version) => (
            "#v = :v".to_owned(),
            Some(HashMap::from([("#v".to_owned(), "v".to_owned())])),
            Some(HashMap::from([(
                ":v".to_owned(),
                AttributeValue::N(version.to_string()),
            )])),
        ),
    }
}

/// The smallest string greater than `value` among our keys (ASCII): keys
/// never contain control characters, so `value + "\u{1}"` is a lower bound
/// that excludes `value` itself.
fn just_after(value: &str) -> String {
    format!("{value}\u{1}")
}

impl Store for DynamoDbStore {
    /// DynamoDB's time to live deletes expired items: nothing to do here.
    fn expire(
        &self,
        _now_unix_seconds: i64,
        _limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            validate_write(&ops)?;
            let items = ops
                .iter()
                .map(|op| self.transact_item(op))
                .collect::<Result<Vec<_>, _>>()?;
            let token = self.next_token();
            let mut backoff = limits::DYNAMODB_CONFLICT_BACKOFF_INITIAL;
            for attempt in 1..=limits::DYNAMODB_CONFLICT_RETRIES_MAX {
                let result = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items.clone()))
                    .client_request_token(&token)
                    .send()
                    .await;
                let error = match result {
                    Ok(_) => return Ok(()),
                    Err(error) => error,
                };
                let description = describe(&error);
                match error.into_service_error() {
                    TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                        if let Some(error) = Self::cancelled(&ops, cancelled.cancellation_reasons())
                        {
                            return Err(error);
                        }
                        tracing::debug!(attempt, "transaction conflict; retrying");
                    }
                    TransactWriteItemsError::TransactionInProgressException(_) => {
                        // The same token is still being applied: wait and ask again.
                    }
                    other if other.code() == Some("ValidationException") => {
                        return Err(StoreError::InvalidWrite(description));
                    }
                    _ => return Err(StoreError::Unavailable(description)),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(limits::DYNAMODB_CONFLICT_BACKOFF_MAX);
            }
            Err(StoreError::Unavailable(
                "transaction kept conflicting".into(),
            ))
        })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(Self::key_attributes(&key)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            output.item.as_ref().map(Self::decode).transpose()
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            let lower = match &query.start_after {
                Some(after) if after.as_str() >= query.sk_prefix.as_str() => just_after(after),
                _ => query.sk_prefix.clone(),
            };
            let upper = format!("{}\u{10FFFF}", query.sk_prefix);
            let build = || {
                let builder = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .expression_attribute_values(":pk", AttributeValue::S(query.pk.clone()))
                    .expression_attribute_values(":upper", AttributeValue::S(upper.clone()));
                // DynamoDB refuses an empty string as a key value: the
                // whole partition (an empty prefix, from the start) is
                // everything up to the upper bound.
                if lower.is_empty() {
                    builder.key_condition_expression("pk = :pk AND sk <= :upper")
                } else {
                    builder
                        .key_condition_expression("pk = :pk AND sk BETWEEN :lower AND :upper")
                        .expression_attribute_values(":lower", AttributeValue::S(lower.clone()))
                }
            };
            self.query_pages(build, query.limit, |item| item.key.sk.clone())
                .await
        })
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            let build = || {
                let builder = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_NAME)
                    .expression_attribute_values(":ipk", AttributeValue::S(query.index_pk.clone()));
                match (&query.start_after, &query.end_at) {
                    (Some(after), None) => builder
                        .key_condition_expression("ipk = :ipk AND isk > :after")
                        .expression_attribute_values(":after", AttributeValue::S(after.clone())),
                    (None, None) => builder.key_condition_expression("ipk = :ipk"),
                    (None, Some(end)) => builder
                        .key_condition_expression("ipk = :ipk AND isk <= :end")
                        .expression_attribute_values(":end", AttributeValue::S(end.clone())),
                    // A key condition has one range operator: "strictly
                    // after" becomes "from after + U+0001" (index keys hold
                    // no control characters; see `validate_write`).
                    (Some(after), Some(end)) => builder
                        .key_condition_expression("ipk = :ipk AND isk BETWEEN :from AND :end")
                        .expression_attribute_values(
                            ":from",
                            AttributeValue::S(format!("{after}\u{1}")),
                        )
                        .expression_attribute_values(":end", AttributeValue::S(end.clone())),
                }
            };
            self.query_pages(build, query.limit, |item| {
                item.index
                    .as_ref()
                    .map(|index| index.sk.clone())
                    .unwrap_or_default()
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::types::CancellationReason;

    use super::*;

    fn ops() -> Vec<WriteOp> {
        (0..3)
            .map(|n| WriteOp::Check {
                key: Key::new("p", format!("s{n}")),
                condition: Condition::NotExists,
            })
            .collect()
    }

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|code| CancellationReason::builder().code(*code).build())
            .collect()
    }

    #[test]
    fn a_failed_condition_names_its_action() {
        let error = DynamoDbStore::cancelled(
            &ops(),
            &reasons(&["None", "ConditionalCheckFailed", "None"]),
        );
        assert_eq!(
            error,
            Some(StoreError::ConditionFailed {
                index: 1,
                key: Key::new("p", "s1")
            })
        );
    }

    #[test]
    fn a_conflict_is_retried_and_the_rest_is_classified() {
        assert_eq!(
            DynamoDbStore::cancelled(&ops(), &reasons(&["None", "TransactionConflict", "None"])),
            None
        );
        assert!(matches!(
            DynamoDbStore::cancelled(&ops(), &reasons(&["ValidationError", "None", "None"])),
            Some(StoreError::InvalidWrite(_))
        ));
        for throttled in ["ThrottlingError", "ProvisionedThroughputExceeded"] {
            assert!(matches!(
                DynamoDbStore::cancelled(&ops(), &reasons(&["None", throttled, "None"])),
                Some(StoreError::Unavailable(_))
            ));
        }
        // A condition failure wins over a conflict: the write can never apply.
        let error = DynamoDbStore::cancelled(
            &ops(),
            &reasons(&["TransactionConflict", "None", "ConditionalCheckFailed"]),
        );
        assert!(matches!(
            error,
            Some(StoreError::ConditionFailed { index: 2, .. })
        ));
    }
}
