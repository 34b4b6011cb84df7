//! Pages of payments sized for the wire: at most `page_size` payments and
//! at most [`limits::RESPONSE_BYTES_MAX`] encoded, whatever the payments
//! hold (a page of 500 payments with full metadata was 9.5 MB, past the
//! 4 MB a default gRPC client accepts). A page cut short by bytes ends
//! with a token after its last payment, like any other. The store is read
//! [`limits::LIST_READ_CHUNK`] payments at a time, so a call holds about one
//! response's worth of payments, not `page_size` of them; and at most
//! [`limits::LIST_SCAN_MAX`] are read per call, so a filtered listing (a
//! scoped key over the review queue) cannot read an index whole in one call.

use std::future::Future;

use prost::Message;

use super::{convert, pb};
use crate::actors::CommandError;
use crate::domain::payment::Payment;
use crate::limits;

/// Bytes a payment adds to a response besides its own: the field's tag
/// and length.
const ENTRY_OVERHEAD: usize = 8;

/// Fills one page. `read(after, n)` reads up to `n` payments after a
/// position and says where the listing goes on (`None`: its end);
/// `shown` says which of them the caller sees; `position_of` is the
/// position just after a payment, where a page cut after it goes on.
pub async fn fill<P, Read, Fut>(
    start: Option<P>,
    page_size: usize,
    shown: impl Fn(&Payment) -> bool,
    position_of: impl Fn(&Payment) -> Option<P>,
    mut read: Read,
) -> Result<(Vec<pb::Payment>, Option<P>), CommandError>
where
    P: Clone,
    Read: FnMut(Option<P>, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<Payment>, Option<P>), CommandError>>,
{
    let mut page = Vec::new();
    let mut bytes_left = limits::RESPONSE_BYTES_MAX;
    let mut cursor = start;
    let mut scanned = 0;
    loop {
        let want = page_size
            .saturating_sub(page.len())
            .clamp(1, limits::LIST_READ_CHUNK);
        let (payments, next) = read(cursor.clone(), want).await?;
        scanned += payments.len();
        for payment in payments.iter().filter(|payment| shown(payment)) {
            let entry = convert::payment_to_pb(payment);
            let size = entry.encoded_len() + ENTRY_OVERHEAD;
            if size > bytes_left && !page.is_empty() {
                // Full by bytes: go on after the last payment sent.
                return Ok((page, cursor));
            }
            bytes_left = bytes_left.saturating_sub(size);
            page.push(entry);
            // Where to go on if the page ends here.
            cursor = position_of(payment).or(cursor);
        }
        // Fewer than asked for, yet more to come: the reader stopped at a
        // bound of its own (a state filter's scan bound), so does the page.
        let stopped_short = payments.len() < want;
        let Some(next) = next else {
            return Ok((page, None));
        };
        cursor = Some(next);
        if stopped_short || page.len() >= page_size || scanned >= limits::LIST_SCAN_MAX {
            return Ok((page, cursor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::{self, NewPayment, Policy};
    use crate::domain::{AccountId, Currency, Money, PaymentId, Timestamp};
    use std::collections::BTreeMap;

    /// `count` payments with full metadata (about 19 KB each).
    fn payments(count: usize) -> Vec<Payment> {
        (0..count)
            .map(|n| {
                let metadata = (0..limits::METADATA_ENTRIES_MAX)
                    .map(|key| {
                        (
                            format!("{key:0>width$}", width = limits::METADATA_KEY_BYTES_MAX),
                            "v".repeat(limits::METADATA_VALUE_BYTES_MAX),
                        )
                    })
                    .collect::<BTreeMap<_, _>>();
                let new = NewPayment {
                    account: AccountId::new("big").unwrap(),
                    id: PaymentId::new(format!("p{n:04}")).unwrap(),
                    amount: Money::from_minor(Currency::from_code("USD").unwrap(), 100),
                    metadata,
                    payer_id: None,
                    payer_country: None,
                };
                let at = Timestamp::from_unix_millis(1_000);
                payment::create(new, None, at, &Policy::default())
                    .unwrap()
                    .payment
            })
            .collect()
    }

    /// Pages of `all` as the store would give them, by index.
    async fn all_pages(
        all: &[Payment],
        page_size: usize,
        shown: impl Fn(&Payment) -> bool + Copy,
    ) -> Vec<Vec<pb::Payment>> {
        let mut pages = Vec::new();
        let mut token: Option<usize> = None;
        loop {
            let (page, next) = fill(
                token,
                page_size,
                shown,
                |payment| all.iter().position(|p| p.id == payment.id).map(|i| i + 1),
                |after: Option<usize>, n| {
                    let from = after.unwrap_or(0);
                    let to = (from + n).min(all.len());
                    let next = (to < all.len()).then_some(to);
                    std::future::ready(Ok((all[from..to].to_vec(), next)))
                },
            )
            .await
            .unwrap();
            pages.push(page);
            match next {
                Some(next) => token = Some(next),
                None => return pages,
            }
        }
    }

    /// A reader that stops at a bound of its own (a state filter that read
    /// its scan bound) ends the page there, with a token: a sparse filter
    /// over a large account answers in pages instead of reading it whole.
    #[tokio::test]
    async fn a_reader_that_stops_short_ends_the_page_with_a_token() {
        let all = payments(10);
        let mut reads = 0;
        let (page, next) = fill(
            None,
            50,
            |_| true,
            |payment| all.iter().position(|p| p.id == payment.id).map(|i| i + 1),
            |after: Option<usize>, _n| {
                reads += 1;
                // One match per read, and more to come.
                let from = after.unwrap_or(0);
                std::future::ready(Ok((all[from..from + 1].to_vec(), Some(from + 3))))
            },
        )
        .await
        .unwrap();
        assert_eq!((page.len(), next, reads), (1, Some(3), 1));
    }

    #[tokio::test]
    async fn pages_stay_under_the_byte_bound_and_lose_or_repeat_nothing() {
        let all = payments(500);
        let pages = all_pages(&all, 500, |_| true).await;
        assert!(
            pages.len() > 1,
            "500 payments of 19 KB do not fit one response"
        );
        for page in &pages {
            let bytes = pb::ListPaymentsResponse {
                payments: page.clone(),
                next_page_token: "v1.p0000".into(),
            }
            .encoded_len();
            assert!(bytes <= limits::RESPONSE_BYTES_MAX, "{bytes}");
            assert!(!page.is_empty());
        }
        let names: Vec<String> = pages.iter().flatten().map(|p| p.name.clone()).collect();
        let expected: Vec<String> = all.iter().map(|p| p.name().to_string()).collect();
        assert_eq!(names, expected);

        // Filtered: a caller who sees every third payment gets exactly
        // those, each once, over as many calls as the scan bound needs.
        let shown = |payment: &Payment| payment.id.as_str()[1..].parse::<usize>().unwrap() % 3 == 0;
        let names: Vec<String> = all_pages(&all, 10, shown)
            .await
            .iter()
            .flatten()
            .map(|p| p.name.clone())
            .collect();
        let expected: Vec<String> = all
            .iter()
            .filter(|p| shown(p))
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(names, expected);
    }
}
