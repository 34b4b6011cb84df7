//! Bank callbacks received (the inbox), keyed by the bank's message id.

use super::*;

pub const INBOX_SK_PREFIX: &str = "X#";

/// A bank callback as received (the inbox): written once, with the
/// decision it caused, keyed by the bank's message id, so a duplicate finds
/// it and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxRecord {
    pub bank: String,
    pub message_id: String,
    pub payment: PaymentName,
    /// What the message said (`payment.processed`, …).
    pub kind: String,
    pub received_at: Timestamp,
    /// Whether it changed the payment (false: late, duplicate in meaning, or
    /// out of order).
    pub applied: bool,
}

/// Bank names and message ids are checked by the callback endpoint: short,
/// without `#` or `/`.
pub fn inbox_key(payment: &PaymentName, bank: &str, message_id: &str) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!("{INBOX_SK_PREFIX}{bank}#{message_id}"),
    )
}

pub fn inbox_item(record: &InboxRecord) -> Item {
    Item {
        key: inbox_key(&record.payment, &record.bank, &record.message_id),
        version: 1,
        body: encode(record),
        index: None,
        expires_at: None,
    }
}

pub fn decode_inbox(item: &Item) -> Result<InboxRecord, StoreError> {
    decode(item)
}
