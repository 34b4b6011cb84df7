//! The body of a bank's reconciliation incidents.

use serde::{Deserialize, Serialize};

use super::{invalid, millis, time, Invalid, Stored};
use crate::domain::incidents::{Incidents, OpenPeriod, Period, LINES_KEPT, OPEN_PERIODS_MAX};

impl Stored for Incidents {
    type Body = IncidentsBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct IncidentsBody {
    open: Vec<OpenPeriodBody>,
    resolves_owed: Vec<PeriodBody>,
}

#[derive(Serialize, Deserialize)]
struct PeriodBody {
    from: i64,
    to: i64,
}

#[derive(Serialize, Deserialize)]
struct OpenPeriodBody {
    from: i64,
    to: i64,
    mismatches: u64,
    lines: Vec<String>,
    paged: bool,
}

impl From<&Incidents> for IncidentsBody {
    fn from(incidents: &Incidents) -> IncidentsBody {
        IncidentsBody {
            open: (incidents.open.iter())
                .map(|open| OpenPeriodBody {
                    from: millis(open.period.from),
                    to: millis(open.period.to),
                    mismatches: open.mismatches,
                    lines: open.lines.clone(),
                    paged: open.paged,
                })
                .collect(),
            resolves_owed: (incidents.resolves_owed.iter())
                .map(|period| PeriodBody {
                    from: millis(period.from),
                    to: millis(period.to),
                })
                .collect(),
        }
    }
}

fn period(from: i64, to: i64) -> Result<Period, Invalid> {
    if from >= to {
        return Err(invalid(format!(
            "a period that ends ({to}) before it starts ({from})"
        )));
    }
    Ok(Period {
        from: time(from),
        to: time(to),
    })
}

impl TryFrom<IncidentsBody> for Incidents {
    type Error = Invalid;
    /// Refuses an empty period, and more lines than are ever kept.
    fn try_from(body: IncidentsBody) -> Result<Incidents, Invalid> {
        if body.open.len() > OPEN_PERIODS_MAX {
            return Err(invalid("more open periods than are kept"));
        }
        let open = (body.open.into_iter())
            .map(|open| {
                if open.lines.len() > LINES_KEPT {
                    return Err(invalid("more mismatch lines than are kept"));
                }
                Ok(OpenPeriod {
                    period: period(open.from, open.to)?,
                    mismatches: open.mismatches,
                    lines: open.lines,
                    paged: open.paged,
                })
            })
            .collect::<Result<_, _>>()?;
        let resolves_owed = (body.resolves_owed.into_iter())
            .map(|owed| period(owed.from, owed.to))
            .collect::<Result<_, _>>()?;
        Ok(Incidents {
            open,
            resolves_owed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::incidents::Incidents;

    const GOLDEN: &str = r#"{"format":1,"open":[{"from":1767225600000,"to":1767229200000,"mismatches":3,"lines":["amount_differs pay_1 bank 5.00 USD, payvisor 12.50 USD"],"paged":true}],"resolves_owed":[{"from":1767222000000,"to":1767225600000}]}"#;

    #[test]
    fn incidents_keep_their_stored_format() {
        check(&fixtures::incidents(), GOLDEN);
        refused::<Incidents>(&GOLDEN.replacen(r#""to":1767229200000"#, r#""to":1767225600000"#, 1));
    }
}
