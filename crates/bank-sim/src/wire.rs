//! The JSON shapes of `docs/bank-protocol.md`, version 1: what the bank reads
//! and writes on the wire. No behaviour lives here.

use serde::{Deserialize, Serialize};

/// An amount: integer minor units of an ISO 4217 currency, never a float.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Amount {
    pub currency_code: String,
    pub minor_units: i64,
}

/// `POST /v1/payments`.
#[derive(Debug, Deserialize)]
pub struct PaymentRequest {
    /// payvisor's payment name: the idempotency key.
    pub payment_id: String,
    pub amount: Amount,
    /// Free-form; `bank_sim` steers the outcome.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub callback_url: String,
}

/// `POST /v1/refunds`.
#[derive(Debug, Deserialize)]
pub struct RefundRequest {
    pub payment_id: String,
    /// Unique within the payment: (`payment_id`, `refund_id`) is the key.
    pub refund_id: String,
    pub amount: Amount,
    pub callback_url: String,
}

/// The answer to a submission (`202`) and to `GET /v1/payments/{id}`
/// (`200`): what the bank knows now.
#[derive(Debug, Serialize)]
pub struct StatusAnswer<'a> {
    pub payment_id: &'a str,
    /// Present on refund answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<&'a str>,
    /// `unknown`, `pending`, `processed`, `failed` (payments);
    /// `pending`, `succeeded`, `failed` (refunds).
    pub status: &'a str,
    pub reason: Option<&'a str>,
}

/// Every refusal: `{"error": "..."}`, a sentence for a person.
#[derive(Debug, Serialize)]
pub struct ErrorAnswer<'a> {
    pub error: &'a str,
}

/// One callback message. Its bytes are stored when the outcome is decided
/// and sent unchanged on every attempt, so a re-delivery is byte-identical
/// (only the signature's timestamp is fresh).
#[derive(Debug, Serialize)]
pub struct Callback<'a> {
    pub message_id: &'a str,
    pub bank: &'a str,
    /// `payment.processed`, `payment.failed`, `refund.succeeded`,
    /// `refund.failed`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub payment_id: &'a str,
    pub refund_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// When the message was written (the outcome's time), Unix ms.
    pub sent_at_ms: i64,
}

/// One line of a settlement report.
#[derive(Debug, Clone, Serialize)]
pub struct SettlementEntry {
    pub payment_id: String,
    pub refund_id: Option<String>,
    /// `payment` or `refund`.
    pub kind: &'static str,
    pub currency_code: String,
    pub minor_units: i64,
    pub settled_at_ms: i64,
}

/// Sums of one currency in a settlement report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettlementTotal {
    pub currency_code: String,
    pub payments_minor_units: i64,
    pub refunds_minor_units: i64,
}

/// `GET /v1/settlements?from_ms=A&to_ms=B`.
#[derive(Debug, Serialize)]
pub struct SettlementReport<'a> {
    pub bank: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub entries: Vec<SettlementEntry>,
    pub totals: Vec<SettlementTotal>,
}

/// `POST /admin/outage` (not part of the protocol).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSwitch {
    pub down: bool,
}
