//! Routing across banks: a payment goes to the cheapest healthy bank that
//! supports its currency (cost, then priority, then name), never to a bank
//! that refused it for good. A bank whose circuit breaker is open is tried
//! only when no healthy one can take the payment. The choice and its reason
//! are recorded on the payment by the account actor, in the write that
//! sends it (see `Payment::route_to`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::breaker::BreakerState;
use super::http::HttpBankConnector;
use super::Connector;
use crate::domain::account::BankChooser;
use crate::domain::Currency;

/// One bank as routing sees it.
pub struct RoutedBank {
    pub name: String,
    /// Lower is preferred among equal costs.
    pub priority: u32,
    /// What this bank charges, in basis points (lower is preferred).
    pub cost_bps: u32,
    /// `None`: every currency.
    pub currencies: Option<BTreeSet<Currency>>,
    pub connector: Arc<dyn Connector>,
    /// Its breaker's state says whether it is healthy (HTTP banks).
    pub http: Option<Arc<HttpBankConnector>>,
}

impl RoutedBank {
    fn healthy(&self) -> bool {
        self.http
            .as_ref()
            .is_none_or(|bank| bank.breaker().state() != BreakerState::Open)
    }

    fn supports(&self, currency: Currency) -> bool {
        self.currencies
            .as_ref()
            .is_none_or(|currencies| currencies.contains(&currency))
    }
}

/// The core decides routes through this view of the node's banks.
impl BankChooser for Router {
    fn choose(&self, currency: Currency, refused: &[&str]) -> Option<(String, String)> {
        Router::choose(self, currency, refused.iter().copied())
    }

    fn default_bank(&self) -> &str {
        Router::default_bank(self)
    }
}

/// The banks of a node.
pub struct Router {
    banks: Vec<RoutedBank>,
}

impl Router {
    /// At least one bank, names unique.
    pub fn new(banks: Vec<RoutedBank>) -> Result<Router, String> {
        if banks.is_empty() {
            return Err("no bank configured".into());
        }
        let mut names = BTreeSet::new();
        for bank in &banks {
            if !names.insert(bank.name.as_str()) {
                return Err(format!("bank {:?} appears twice", bank.name));
            }
        }
        Ok(Router { banks })
    }

    /// One bank that takes everything (the built-in simulator, tests).
    pub fn single(name: &str, connector: Arc<dyn Connector>) -> Router {
        Router {
            banks: vec![RoutedBank {
                name: name.to_owned(),
                priority: 0,
                cost_bps: 0,
                currencies: None,
                connector,
                http: None,
            }],
        }
    }

    pub fn banks(&self) -> &[RoutedBank] {
        &self.banks
    }

    pub fn connector(&self, bank: &str) -> Option<&Arc<dyn Connector>> {
        self.banks
            .iter()
            .find(|candidate| candidate.name == bank)
            .map(|candidate| &candidate.connector)
    }

    /// Where payments recorded before routing existed are (the first bank).
    pub fn default_bank(&self) -> &str {
        &self.banks[0].name
    }

    /// The bank for a payment in `currency` now, and why; `None` when no
    /// bank outside `refused` supports the currency.
    pub fn choose<'a>(
        &self,
        currency: Currency,
        refused: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<(String, String)> {
        let mut candidates: Vec<&RoutedBank> = self
            .banks
            .iter()
            .filter(|bank| bank.supports(currency))
            .filter(|bank| !refused.clone().any(|name| name == bank.name))
            .collect();
        candidates.sort_by_key(|bank| {
            (
                !bank.healthy(),
                bank.cost_bps,
                bank.priority,
                bank.name.clone(),
            )
        });
        let best = candidates.first()?;
        let why = if best.healthy() {
            format!(
                "cheapest healthy bank for {currency} (cost {} bps, priority {})",
                best.cost_bps, best.priority
            )
        } else {
            format!(
                "no healthy bank for {currency}; {} is the cheapest left",
                best.name
            )
        };
        Some((best.name.clone(), why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{BankStatus, ConnectorError, PaymentSubmission, RefundSubmission};
    use crate::domain::PaymentName;
    use crate::store::BoxFuture;

    struct Nowhere;
    impl Connector for Nowhere {
        fn submit_payment(
            &self,
            _: PaymentSubmission,
        ) -> BoxFuture<'_, Result<(), ConnectorError>> {
            Box::pin(async { Ok(()) })
        }
        fn submit_refund(&self, _: RefundSubmission) -> BoxFuture<'_, Result<(), ConnectorError>> {
            Box::pin(async { Ok(()) })
        }
        fn payment_status(
            &self,
            _: PaymentName,
        ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
            Box::pin(async { Ok(BankStatus::Unknown) })
        }
    }

    fn bank(name: &str, cost_bps: u32, priority: u32, currencies: &[&str]) -> RoutedBank {
        RoutedBank {
            name: name.into(),
            priority,
            cost_bps,
            currencies: Some(
                currencies
                    .iter()
                    .map(|code| Currency::from_code(code).unwrap())
                    .collect(),
            ),
            connector: Arc::new(Nowhere),
            http: None,
        }
    }

    #[test]
    fn the_cheapest_bank_for_the_currency_wins_and_refusals_are_skipped() {
        let router = Router::new(vec![
            bank("b", 20, 0, &["USD"]),
            bank("a", 10, 1, &["USD", "EUR"]),
            bank("c", 10, 0, &["EUR"]),
        ])
        .unwrap();
        let usd = Currency::from_code("USD").unwrap();
        let eur = Currency::from_code("EUR").unwrap();
        let gbp = Currency::from_code("GBP").unwrap();
        assert_eq!(router.choose(usd, [].into_iter()).unwrap().0, "a");
        // Equal cost: the lower priority number wins.
        assert_eq!(router.choose(eur, [].into_iter()).unwrap().0, "c");
        assert_eq!(router.choose(usd, ["a"].into_iter()).unwrap().0, "b");
        assert_eq!(router.choose(usd, ["a", "b"].into_iter()), None);
        assert_eq!(router.choose(gbp, [].into_iter()), None);
        assert!(Router::new(vec![bank("a", 1, 0, &[]), bank("a", 2, 0, &[])]).is_err());
        assert!(Router::new(Vec::new()).is_err());
    }
}
