//! Reconciliation incidents, one item per bank (see
//! `crate::domain::incidents`): the periods that disagreed and the pages
//! owed for them, written before any page goes out.

use super::*;
use crate::domain::incidents::Incidents;

const RECONCILE_PARTITION: &str = "RECONCILE";

fn incidents_key(bank: &str) -> Key {
    Key::new(RECONCILE_PARTITION, format!("INCIDENTS#{bank}"))
}

/// A bank's incidents as stored (`None`: never any).
pub async fn load_incidents(
    store: &dyn Store,
    bank: &str,
) -> Result<Option<Versioned<Incidents>>, StoreError> {
    match store.get(incidents_key(bank)).await? {
        Some(item) => versioned(item).map(Some),
        None => Ok(None),
    }
}

/// Writes `next` over what was read (`current`: its version, `None` if
/// there was nothing): refused if another writer came first.
pub async fn save_incidents(
    store: &dyn Store,
    bank: &str,
    current: Option<u64>,
    next: &Incidents,
) -> Result<u64, StoreError> {
    let version = current.map_or(1, |version| version + 1);
    let put = WriteOp::Put {
        item: Item {
            key: incidents_key(bank),
            version,
            body: encode(next),
            index: None,
            expires_at: None,
        },
        condition: match current {
            Some(version) => Condition::VersionIs(version),
            None => Condition::NotExists,
        },
    };
    store.transact(vec![put]).await?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incidents::Period;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn incidents_are_saved_over_the_version_read_and_refused_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(load_incidents(&store, "bank-a").await.unwrap(), None);
        let mut incidents = Incidents::default();
        let period = Period {
            from: Timestamp::from_unix_millis(0),
            to: Timestamp::from_unix_millis(1000),
        };
        incidents.record_run(period, 2, &["a".into(), "b".into()]);
        let version = save_incidents(&store, "bank-a", None, &incidents)
            .await
            .unwrap();
        let loaded = load_incidents(&store, "bank-a").await.unwrap().unwrap();
        assert_eq!((loaded.value, loaded.version), (incidents.clone(), version));
        let stale = save_incidents(&store, "bank-a", None, &incidents).await;
        assert!(
            matches!(stale, Err(StoreError::ConditionFailed { .. })),
            "{stale:?}"
        );
        save_incidents(&store, "bank-a", Some(version), &Incidents::default())
            .await
            .unwrap();
        assert_eq!(load_incidents(&store, "bank-b").await.unwrap(), None);
    }
}
