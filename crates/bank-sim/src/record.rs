//! The bank's durable record: `{data-dir}/bank.db`, SQLite in WAL mode with
//! `synchronous=FULL`, so a commit is on disk before it returns.
//!
//! Three tables: `payments` (keyed by `payment_id`), `refunds` (keyed by
//! (`payment_id`, `refund_id`)) and `callbacks` (keyed by `message_id`).
//! An outcome and the callback message announcing it are written in one
//! transaction, so after a crash either both exist or neither.
//!
//! **Invariant:** a submission is committed before it is answered; every
//! function here that writes commits before returning.
//!
//! One connection behind a mutex: the simulator needs correctness, not
//! throughput, and one writer makes check-then-insert atomic for free.
//! Callers run these blocking functions off the async reactor.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::outcome::{PaymentStatus, RefundStatus};
use super::wire::{SettlementEntry, SettlementTotal};
use crate::limits;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_id     TEXT    NOT NULL PRIMARY KEY,
    currency       TEXT    NOT NULL,
    minor_units    INTEGER NOT NULL CHECK (minor_units > 0),
    metadata       TEXT    NOT NULL,
    callback_url   TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('pending', 'processed', 'failed')),
    reason         TEXT,
    received_at_ms INTEGER NOT NULL,
    -- When the outcome is due; NULL for a payment that hangs for ever.
    decide_at_ms   INTEGER,
    outcome_at_ms  INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_due ON payments (decide_at_ms)
    WHERE status = 'pending' AND decide_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_settled ON payments (outcome_at_ms)
    WHERE status = 'processed';

CREATE TABLE IF NOT EXISTS refunds (
    payment_id     TEXT    NOT NULL,
    refund_id      TEXT    NOT NULL,
    currency       TEXT    NOT NULL,
    minor_units    INTEGER NOT NULL CHECK (minor_units > 0),
    callback_url   TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason         TEXT,
    received_at_ms INTEGER NOT NULL,
    decide_at_ms   INTEGER,
    outcome_at_ms  INTEGER,
    PRIMARY KEY (payment_id, refund_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refunds_due ON refunds (decide_at_ms)
    WHERE status = 'pending' AND decide_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS refunds_settled ON refunds (outcome_at_ms)
    WHERE status = 'succeeded';

-- One row per message; `state` is the delivered flag, plus why an
-- undelivered message will not be sent.
CREATE TABLE IF NOT EXISTS callbacks (
    message_id   TEXT    NOT NULL PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    callback_url TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'dropped', 'abandoned')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS callbacks_pending ON callbacks (seq) WHERE state = 'pending';
";

/// Why the record could not be read or written. Answered as `500`: the
/// client cannot know whether the bank has its submission.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("bank record: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("bank record: {0}")]
    Unavailable(String),
    #[error("bank record holds an unexpected value: {0}")]
    Corrupt(String),
}

/// A payment as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub payment_id: String,
    pub currency: String,
    pub minor_units: i64,
    pub status: PaymentStatus,
    pub reason: Option<String>,
}

/// A refund as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    pub payment_id: String,
    pub refund_id: String,
    pub currency: String,
    pub minor_units: i64,
    pub status: RefundStatus,
    pub reason: Option<String>,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<T> {
    /// New, and now committed.
    Recorded(T),
    /// Submitted before with the same amount and currency: the record as it
    /// is now, nothing changed.
    Known(T),
    /// Submitted before with a different amount or currency: nothing changed.
    Conflict,
    /// A definite rejection (`422`): nothing recorded.
    Rejected(String),
}

/// A new payment to record.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    pub payment_id: &'a str,
    pub currency: &'a str,
    pub minor_units: i64,
    /// A JSON object.
    pub metadata: &'a str,
    pub callback_url: &'a str,
    pub received_at_ms: i64,
    /// `None`: never decided (a hung payment).
    pub decide_at_ms: Option<i64>,
    /// A definite rejection to give if the payment is new (an unsupported
    /// currency); a payment recorded before is answered as recorded.
    pub refusal_if_new: Option<String>,
}

/// A new refund to record.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub payment_id: &'a str,
    pub refund_id: &'a str,
    pub currency: &'a str,
    pub minor_units: i64,
    pub callback_url: &'a str,
    pub received_at_ms: i64,
    pub decide_at_ms: Option<i64>,
}

/// A payment whose outcome is due.
#[derive(Debug, Clone)]
pub struct DuePayment {
    pub payment_id: String,
    /// A JSON object.
    pub metadata: String,
    pub callback_url: String,
}

/// A refund whose outcome is due.
#[derive(Debug, Clone)]
pub struct DueRefund {
    pub payment_id: String,
    pub refund_id: String,
    pub callback_url: String,
}

/// A callback message not yet delivered.
#[derive(Debug, Clone)]
pub struct Message {
    pub message_id: String,
    pub callback_url: String,
    pub body: Vec<u8>,
    /// Attempts so far, across restarts.
    pub attempts: u32,
}

/// The durable record.
pub struct Record {
    /// The only connection; the mutex serialises every read and write.
    connection: Mutex<Connection>,
}

impl Record {
    /// Opens (creating if needed) `bank.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Record, RecordError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            RecordError::Unavailable(format!("{}: {error}", data_dir.display()))
        })?;
        let connection = Connection::open(data_dir.join("bank.db"))?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA foreign_keys = OFF;",
        )?;
        connection.execute_batch(SCHEMA)?;
        Ok(Record {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock left no transaction open (rusqlite
        // rolls back on drop), so the connection is still sound.
        self.connection
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Runs `work` in one immediate transaction and commits it if `work`
    /// succeeds (rolls back otherwise).
    pub fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, RecordError>,
    ) -> Result<T, RecordError> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = work(&transaction)?;
        transaction.commit()?;
        Ok(result)
    }

    /// Records a payment unless its id is known.
    pub fn submit_payment(
        &self,
        payment: &NewPayment<'_>,
    ) -> Result<Admission<PaymentRow>, RecordError> {
        self.write(|tx| {
            if let Some(known) = payment_row(tx, payment.payment_id)? {
                return Ok(
                    if known.currency == payment.currency
                        && known.minor_units == payment.minor_units
                    {
                        Admission::Known(known)
                    } else {
                        Admission::Conflict
                    },
                );
            }
            if let Some(why) = &payment.refusal_if_new {
                return Ok(Admission::Rejected(why.clone()));
            }
            tx.execute(
                "INSERT INTO payments (payment_id, currency, minor_units, metadata, callback_url,
                     status, received_at_ms, decide_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
                params![
                    payment.payment_id,
                    payment.currency,
                    payment.minor_units,
                    payment.metadata,
                    payment.callback_url,
                    payment.received_at_ms,
                    payment.decide_at_ms,
                ],
            )?;
            let recorded = payment_row(tx, payment.payment_id)?
                .ok_or_else(|| RecordError::Corrupt("a payment just written is missing".into()))?;
            debug_assert_eq!(recorded.status, PaymentStatus::Pending);
            Ok(Admission::Recorded(recorded))
        })
    }

    /// Records a refund unless its key is known; refuses one the payment
    /// cannot take (not processed, other currency, beyond what remains).
    pub fn submit_refund(
        &self,
        refund: &NewRefund<'_>,
    ) -> Result<Admission<RefundRow>, RecordError> {
        self.write(|tx| {
            if let Some(known) = refund_row(tx, refund.payment_id, refund.refund_id)? {
                return Ok(
                    if known.currency == refund.currency && known.minor_units == refund.minor_units
                    {
                        Admission::Known(known)
                    } else {
                        Admission::Conflict
                    },
                );
            }
            let Some(payment) = payment_row(tx, refund.payment_id)? else {
                return Ok(Admission::Rejected("unknown payment".into()));
            };
            if payment.status != PaymentStatus::Processed {
                return Ok(Admission::Rejected(format!(
                    "the payment is {}, not processed",
                    payment.status.as_str()
                )));
            }
            if payment.currency != refund.currency {
                return Ok(Admission::Rejected(format!(
                    "the payment is in {}, the refund in {}",
                    payment.currency, refund.currency
                )));
            }
            let (count, refunded): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(minor_units), 0) FROM refunds
                 WHERE payment_id = ?1 AND status != 'failed'",
                params![refund.payment_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            if count >= limits::REFUNDS_PER_PAYMENT_MAX as i64 {
                return Ok(Admission::Rejected(format!(
                    "at most {} refunds per payment",
                    limits::REFUNDS_PER_PAYMENT_MAX
                )));
            }
            let remaining = payment.minor_units - refunded;
            debug_assert!(remaining >= 0, "refunds exceed their payment");
            if refund.minor_units > remaining {
                return Ok(Admission::Rejected(format!(
                    "refund of {} minor units exceeds the {remaining} remaining",
                    refund.minor_units
                )));
            }
            tx.execute(
                "INSERT INTO refunds (payment_id, refund_id, currency, minor_units, callback_url,
                     status, received_at_ms, decide_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
                params![
                    refund.payment_id,
                    refund.refund_id,
                    refund.currency,
                    refund.minor_units,
                    refund.callback_url,
                    refund.received_at_ms,
                    refund.decide_at_ms,
                ],
            )?;
            let recorded = refund_row(tx, refund.payment_id, refund.refund_id)?
                .ok_or_else(|| RecordError::Corrupt("a refund just written is missing".into()))?;
            Ok(Admission::Recorded(recorded))
        })
    }

    /// A payment as recorded, if the bank ever received it.
    pub fn payment(&self, payment_id: &str) -> Result<Option<PaymentRow>, RecordError> {
        payment_row(&self.lock(), payment_id)
    }

    /// Payments ever received (distinct ids).
    pub fn payment_count(&self) -> Result<u64, RecordError> {
        let count: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM payments", [], |row| row.get(0))?;
        Ok(count as u64)
    }

    /// The earliest time an undecided outcome is due, if any.
    pub fn next_due_ms(&self) -> Result<Option<i64>, RecordError> {
        Ok(self.lock().query_row(
            "SELECT MIN(due) FROM (
                 SELECT MIN(decide_at_ms) AS due FROM payments
                     WHERE status = 'pending' AND decide_at_ms IS NOT NULL
                 UNION ALL
                 SELECT MIN(decide_at_ms) FROM refunds
                     WHERE status = 'pending' AND decide_at_ms IS NOT NULL)",
            [],
            |row| row.get(0),
        )?)
    }

    /// Undelivered callback messages, oldest first, at most `limit`.
    pub fn undelivered(&self, limit: usize) -> Result<Vec<Message>, RecordError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT message_id, callback_url, body, attempts FROM callbacks
             WHERE state = 'pending' ORDER BY seq LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit as i64], |row| {
            Ok(Message {
                message_id: row.get(0)?,
                callback_url: row.get(1)?,
                body: row.get(2)?,
                attempts: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A message was acknowledged after `attempts` attempts in all.
    pub fn mark_delivered(&self, message_id: &str, attempts: u32) -> Result<(), RecordError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE callbacks SET state = 'delivered', attempts = ?2
                 WHERE message_id = ?1 AND state = 'pending'",
                params![message_id, attempts],
            )?;
            debug_assert!(changed <= 1);
            Ok(())
        })
    }

    /// An attempt failed; with `give_up` the message is never tried again.
    pub fn mark_failed(
        &self,
        message_id: &str,
        attempts: u32,
        error: &str,
        give_up: bool,
    ) -> Result<(), RecordError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE callbacks SET attempts = ?2, last_error = ?3,
                     state = CASE WHEN ?4 THEN 'abandoned' ELSE state END
                 WHERE message_id = ?1 AND state = 'pending'",
                params![message_id, attempts, error, give_up],
            )?;
            Ok(())
        })
    }

    /// Settled payments and refunds with outcome time in `[from_ms, to_ms)`,
    /// by time; at most `limit` (`None` when there are more).
    pub fn settled(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<SettlementEntry>>, RecordError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT payment_id, NULL, 'payment', currency, minor_units, outcome_at_ms
                 FROM payments
                 WHERE status = 'processed' AND outcome_at_ms >= ?1 AND outcome_at_ms < ?2
             UNION ALL
             SELECT payment_id, refund_id, 'refund', currency, minor_units, outcome_at_ms
                 FROM refunds
                 WHERE status = 'succeeded' AND outcome_at_ms >= ?1 AND outcome_at_ms < ?2
             ORDER BY 6, 1, 2
             LIMIT ?3",
        )?;
        let rows = statement.query_map(params![from_ms, to_ms, limit as i64 + 1], |row| {
            let kind: String = row.get(2)?;
            Ok(SettlementEntry {
                payment_id: row.get(0)?,
                refund_id: row.get(1)?,
                kind: if kind == "refund" {
                    "refund"
                } else {
                    "payment"
                },
                currency_code: row.get(3)?,
                minor_units: row.get(4)?,
                settled_at_ms: row.get(5)?,
            })
        })?;
        let entries: Vec<SettlementEntry> = rows.collect::<Result<_, _>>()?;
        Ok((entries.len() <= limit).then_some(entries))
    }
}

/// Sums per currency, in currency order; `None` if a sum overflows.
pub fn totals(entries: &[SettlementEntry]) -> Option<Vec<SettlementTotal>> {
    let mut sums: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for entry in entries {
        let (payments, refunds) = sums.entry(&entry.currency_code).or_default();
        let sum = if entry.kind == "refund" {
            refunds
        } else {
            payments
        };
        *sum = sum.checked_add(entry.minor_units)?;
    }
    Some(
        sums.into_iter()
            .map(|(currency, (payments, refunds))| SettlementTotal {
                currency_code: currency.to_owned(),
                payments_minor_units: payments,
                refunds_minor_units: refunds,
            })
            .collect(),
    )
}

fn payment_row(
    connection: &Connection,
    payment_id: &str,
) -> Result<Option<PaymentRow>, RecordError> {
    let row = connection
        .prepare_cached(
            "SELECT currency, minor_units, status, reason FROM payments WHERE payment_id = ?1",
        )?
        .query_row(params![payment_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    row.map(|(currency, minor_units, status, reason)| {
        Ok(PaymentRow {
            payment_id: payment_id.to_owned(),
            currency,
            minor_units,
            status: PaymentStatus::parse(&status)
                .ok_or_else(|| RecordError::Corrupt(format!("payment status {status:?}")))?,
            reason,
        })
    })
    .transpose()
}

fn refund_row(
    connection: &Connection,
    payment_id: &str,
    refund_id: &str,
) -> Result<Option<RefundRow>, RecordError> {
    let row = connection
        .prepare_cached(
            "SELECT currency, minor_units, status, reason FROM refunds
             WHERE payment_id = ?1 AND refund_id = ?2",
        )?
        .query_row(params![payment_id, refund_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    row.map(|(currency, minor_units, status, reason)| {
        Ok(RefundRow {
            payment_id: payment_id.to_owned(),
            refund_id: refund_id.to_owned(),
            currency,
            minor_units,
            status: RefundStatus::parse(&status)
                .ok_or_else(|| RecordError::Corrupt(format!("refund status {status:?}")))?,
            reason,
        })
    })
    .transpose()
}

/// Payments whose outcome is due by `now_ms`, earliest first.
pub fn due_payments(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<DuePayment>, RecordError> {
    let mut statement = tx.prepare_cached(
        "SELECT payment_id, metadata, callback_url FROM payments
         WHERE status = 'pending' AND decide_at_ms IS NOT NULL AND decide_at_ms <= ?1
         ORDER BY decide_at_ms LIMIT ?2",
    )?;
    let rows = statement.query_map(params![now_ms, limit as i64], |row| {
        Ok(DuePayment {
            payment_id: row.get(0)?,
            metadata: row.get(1)?,
            callback_url: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Refunds whose outcome is due by `now_ms`, earliest first.
pub fn due_refunds(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<DueRefund>, RecordError> {
    let mut statement = tx.prepare_cached(
        "SELECT payment_id, refund_id, callback_url FROM refunds
         WHERE status = 'pending' AND decide_at_ms IS NOT NULL AND decide_at_ms <= ?1
         ORDER BY decide_at_ms LIMIT ?2",
    )?;
    let rows = statement.query_map(params![now_ms, limit as i64], |row| {
        Ok(DueRefund {
            payment_id: row.get(0)?,
            refund_id: row.get(1)?,
            callback_url: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Writes a pending payment's outcome.
pub fn settle_payment(
    tx: &Transaction<'_>,
    payment_id: &str,
    status: PaymentStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(), RecordError> {
    debug_assert!(status != PaymentStatus::Pending);
    let changed = tx.execute(
        "UPDATE payments SET status = ?2, reason = ?3, outcome_at_ms = ?4
         WHERE payment_id = ?1 AND status = 'pending'",
        params![payment_id, status.as_str(), reason, now_ms],
    )?;
    if changed != 1 {
        return Err(RecordError::Corrupt(format!(
            "payment {payment_id:?} was not pending when decided"
        )));
    }
    Ok(())
}

/// Writes a pending refund's outcome.
pub fn settle_refund(
    tx: &Transaction<'_>,
    payment_id: &str,
    refund_id: &str,
    status: RefundStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(), RecordError> {
    debug_assert!(status != RefundStatus::Pending);
    let changed = tx.execute(
        "UPDATE refunds SET status = ?3, reason = ?4, outcome_at_ms = ?5
         WHERE payment_id = ?1 AND refund_id = ?2 AND status = 'pending'",
        params![payment_id, refund_id, status.as_str(), reason, now_ms],
    )?;
    if changed != 1 {
        return Err(RecordError::Corrupt(format!(
            "refund {payment_id:?}/{refund_id:?} was not pending when decided"
        )));
    }
    Ok(())
}

/// Stores a callback message with the next sequence number; `body` builds
/// its bytes from its `message_id`. A message that will not be sent is
/// stored as `dropped` (so sequence numbers show the gap).
pub fn insert_message(
    tx: &Transaction<'_>,
    bank: &str,
    callback_url: &str,
    send: bool,
    body: impl FnOnce(&str) -> Vec<u8>,
) -> Result<String, RecordError> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM callbacks",
        [],
        |row| row.get(0),
    )?;
    let message_id = super::outcome::message_id(bank, seq);
    tx.execute(
        "INSERT INTO callbacks (message_id, seq, callback_url, body, state)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            message_id,
            seq,
            callback_url,
            body(&message_id),
            if send { "pending" } else { "dropped" },
        ],
    )?;
    Ok(message_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment<'a>(id: &'a str, minor_units: i64) -> NewPayment<'a> {
        NewPayment {
            payment_id: id,
            currency: "USD",
            minor_units,
            metadata: "{}",
            callback_url: "http://127.0.0.1:1/cb",
            received_at_ms: 1_000,
            decide_at_ms: Some(1_010),
            refusal_if_new: None,
        }
    }

    fn refund<'a>(id: &'a str, refund_id: &'a str, minor_units: i64) -> NewRefund<'a> {
        NewRefund {
            payment_id: id,
            refund_id,
            currency: "USD",
            minor_units,
            callback_url: "http://127.0.0.1:1/cb",
            received_at_ms: 2_000,
            decide_at_ms: Some(2_010),
        }
    }

    #[test]
    fn submissions_are_idempotent_by_key_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::open(dir.path()).unwrap();
        let first = record.submit_payment(&payment("p1", 100)).unwrap();
        assert!(
            matches!(first, Admission::Recorded(ref row) if row.status == PaymentStatus::Pending)
        );
        assert!(matches!(
            record.submit_payment(&payment("p1", 100)).unwrap(),
            Admission::Known(_)
        ));
        assert_eq!(
            record.submit_payment(&payment("p1", 101)).unwrap(),
            Admission::Conflict
        );
        drop(record);

        let record = Record::open(dir.path()).unwrap();
        assert_eq!(record.payment_count().unwrap(), 1);
        assert_eq!(record.next_due_ms().unwrap(), Some(1_010));
        // A refund before the outcome is refused.
        assert!(matches!(
            record.submit_refund(&refund("p1", "r1", 10)).unwrap(),
            Admission::Rejected(_)
        ));
        let decided = record
            .write(|tx| {
                let due = due_payments(tx, 1_010, 10)?;
                for payment in &due {
                    settle_payment(
                        tx,
                        &payment.payment_id,
                        PaymentStatus::Processed,
                        None,
                        1_010,
                    )?;
                    insert_message(tx, "bank-a", &payment.callback_url, true, |id| {
                        id.as_bytes().to_vec()
                    })?;
                }
                Ok(due.len())
            })
            .unwrap();
        assert_eq!(decided, 1);
        assert_eq!(record.next_due_ms().unwrap(), None);
        let undelivered = record.undelivered(10).unwrap();
        assert_eq!(undelivered.len(), 1);
        assert_eq!(undelivered[0].message_id, "bank-a-00000001");
        assert_eq!(undelivered[0].body, b"bank-a-00000001");

        assert!(matches!(
            record.submit_refund(&refund("p1", "r1", 60)).unwrap(),
            Admission::Recorded(_)
        ));
        assert!(matches!(
            record.submit_refund(&refund("p1", "r1", 60)).unwrap(),
            Admission::Known(_)
        ));
        assert_eq!(
            record.submit_refund(&refund("p1", "r1", 61)).unwrap(),
            Admission::Conflict
        );
        assert!(matches!(
            record.submit_refund(&refund("p1", "r2", 41)).unwrap(),
            Admission::Rejected(ref why) if why.contains("40 remaining")
        ));
        assert!(matches!(
            record.submit_refund(&refund("p1", "r2", 40)).unwrap(),
            Admission::Recorded(_)
        ));
        assert!(matches!(
            record.submit_refund(&refund("nope", "r1", 1)).unwrap(),
            Admission::Rejected(_)
        ));

        record
            .mark_failed("bank-a-00000001", 1, "500", false)
            .unwrap();
        assert_eq!(record.undelivered(10).unwrap()[0].attempts, 1);
        record.mark_delivered("bank-a-00000001", 2).unwrap();
        assert!(record.undelivered(10).unwrap().is_empty());

        let settled = record.settled(0, 2_000, 10).unwrap().unwrap();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].kind, "payment");
        assert_eq!(record.settled(0, 1_010, 10).unwrap().unwrap().len(), 0);
        assert!(
            record.settled(0, 2_000, 0).unwrap().is_none(),
            "over the limit"
        );
    }

    #[test]
    fn totals_sum_per_currency_and_kind() {
        let entry = |kind, currency: &str, minor_units| SettlementEntry {
            payment_id: "p".into(),
            refund_id: None,
            kind,
            currency_code: currency.into(),
            minor_units,
            settled_at_ms: 0,
        };
        let sums = totals(&[
            entry("payment", "USD", 10),
            entry("refund", "USD", 3),
            entry("payment", "EUR", 7),
            entry("payment", "USD", 5),
        ])
        .unwrap();
        assert_eq!(
            sums,
            vec![
                SettlementTotal {
                    currency_code: "EUR".into(),
                    payments_minor_units: 7,
                    refunds_minor_units: 0
                },
                SettlementTotal {
                    currency_code: "USD".into(),
                    payments_minor_units: 15,
                    refunds_minor_units: 3
                },
            ]
        );
        assert!(totals(&[
            entry("payment", "USD", i64::MAX),
            entry("payment", "USD", 1)
        ])
        .is_none());
    }
}
