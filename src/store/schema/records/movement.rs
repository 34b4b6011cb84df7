//! A ledger movement's body: its kind, payment, refund and postings.

use serde::{Deserialize, Serialize};

use super::{id, invalid, stored_enum, Invalid, MoneyBody, Stored};
use crate::domain::ledger::{BookAccount, Movement, MovementKind, Posting};
use crate::domain::Money;

impl Stored for Movement {
    type Body = MovementBody;
    const FORMAT: u64 = 1;
}

stored_enum!(
    /// What caused a movement.
    MovementKindBody for MovementKind {
        PaymentSent = "payment_sent",
        PaymentProcessed = "payment_processed",
        PaymentFailed = "payment_failed",
        RefundRequested = "refund_requested",
        RefundSucceeded = "refund_succeeded",
        RefundFailed = "refund_failed",
    }
);

stored_enum!(
    /// A book account of the ledger.
    BookAccountBody for BookAccount {
        Pending = "pending",
        Available = "available",
        Refunding = "refunding",
        Fees = "fees",
        BankClearing = "bank_clearing",
    }
);

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct MovementBody {
    kind: MovementKindBody,
    payment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refund: Option<String>,
    postings: Vec<PostingBody>,
}

/// A signed amount on one book account (credit positive).
#[derive(Serialize, Deserialize)]
struct PostingBody {
    book: BookAccountBody,
    amount: MoneyBody,
}

impl From<&Movement> for MovementBody {
    fn from(movement: &Movement) -> MovementBody {
        MovementBody {
            kind: movement.kind.into(),
            payment: movement.payment.to_string(),
            refund: movement.refund.clone(),
            postings: movement
                .postings()
                .iter()
                .map(|posting| PostingBody {
                    book: posting.book.into(),
                    amount: posting.amount.into(),
                })
                .collect(),
        }
    }
}

impl TryFrom<MovementBody> for Movement {
    type Error = Invalid;
    /// Refuses a movement that does not balance.
    fn try_from(body: MovementBody) -> Result<Movement, Invalid> {
        let postings = body
            .postings
            .into_iter()
            .map(|posting| {
                Ok(Posting {
                    book: posting.book.into(),
                    amount: Money::try_from(posting.amount)?,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        Movement::new(body.kind.into(), id(body.payment)?, body.refund, postings)
            .map_err(|error| invalid(format!("movement: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::ledger::Movement;

    const GOLDEN: [&str; 4] = [
        r#"{"format":1,"kind":"payment_sent","payment":"pay_1","postings":[{"book":"bank_clearing","amount":{"currency":"USD","amount":"-12.50"}},{"book":"pending","amount":{"currency":"USD","amount":"12.50"}}]}"#,
        r#"{"format":1,"kind":"payment_processed","payment":"pay_1","postings":[{"book":"pending","amount":{"currency":"USD","amount":"-12.50"}},{"book":"available","amount":{"currency":"USD","amount":"12.20"}},{"book":"fees","amount":{"currency":"USD","amount":"0.30"}}]}"#,
        r#"{"format":1,"kind":"refund_requested","payment":"pay_1","refund":"r1","postings":[{"book":"available","amount":{"currency":"USD","amount":"-5.00"}},{"book":"refunding","amount":{"currency":"USD","amount":"5.00"}}]}"#,
        r#"{"format":1,"kind":"payment_sent","payment":"pay_2","postings":[{"book":"bank_clearing","amount":{"currency":"JPY","amount":"-700"}},{"book":"pending","amount":{"currency":"JPY","amount":"700"}}]}"#,
    ];

    #[test]
    fn movements_keep_their_stored_format() {
        for (movement, golden) in fixtures::movements().iter().zip(GOLDEN) {
            check(movement, golden);
        }
    }

    #[test]
    fn unbalanced_or_invalid_movements_are_refused() {
        refused::<Movement>(&GOLDEN[0].replacen(r#""amount":"12.50""#, r#""amount":"12.51""#, 1));
        refused::<Movement>(&GOLDEN[0].replacen(r#""pay_1""#, r#""pay#1""#, 1));
        refused::<Movement>(&GOLDEN[0].replacen(r#""kind":"payment_sent""#, r#""kind":"sent""#, 1));
    }
}
