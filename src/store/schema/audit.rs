//! Privileged actions (refunds, reviews, operators' retries and fails,
//! re-sent events) by account and time: what the audit query lists. One
//! item per attributed decision or re-send, written with it.

use super::*;

pub use crate::domain::account::AuditRecord;

pub const AUDIT_SK_PREFIX: &str = "U#";

/// In the payment's shard of the account, ordered by time: an account's
/// records over a period are one range read per shard.
pub fn audit_key(record: &AuditRecord) -> Key {
    Key::new(
        shard_partition(
            &record.payment.account,
            shard_of(record.payment.payment.as_str()),
        ),
        match record.event {
            None => format!(
                "{AUDIT_SK_PREFIX}{}#{}#{:010}",
                time_prefix(record.at),
                record.payment.payment,
                record.version
            ),
            // A re-send changes no payment version: the event tells it
            // apart from the decision that wrote that version.
            Some(seq) => format!(
                "{AUDIT_SK_PREFIX}{}#{}#{:010}#E{seq:010}",
                time_prefix(record.at),
                record.payment.payment,
                record.version
            ),
        },
    )
}

pub fn audit_item(record: &AuditRecord) -> Item {
    Item {
        key: audit_key(record),
        version: 1,
        body: encode(record),
        index: None,
        expires_at: None,
    }
}

/// Where a page of audit records ends (the last sort key read).
pub type AuditPosition = String;

/// An account's audit records at `from` or later and before `until`,
/// oldest first, at most `limit`, after `start_after`; and where the next
/// page starts, if there is one.
pub async fn audit_records(
    store: &dyn Store,
    account: &AccountId,
    from: Timestamp,
    until: Timestamp,
    start_after: Option<AuditPosition>,
    limit: usize,
) -> Result<(Vec<AuditRecord>, Option<AuditPosition>), StoreError> {
    // Every key at `from` sorts after this bare time prefix.
    let floor = format!("{AUDIT_SK_PREFIX}{}", time_prefix(from));
    let start_after = match start_after {
        Some(position) if position > floor => position,
        _ => floor,
    };
    let (items, more) =
        merged_page(store, account, AUDIT_SK_PREFIX, Some(start_after), limit).await?;
    let mut records = Vec::with_capacity(items.len());
    let mut last = None;
    for item in &items {
        let record: AuditRecord = decode(item)?;
        if record.at >= until {
            return Ok((records, None));
        }
        last = Some(item.key.sk.clone());
        records.push(record);
    }
    Ok((records, if more { last } else { None }))
}
