//! Snapshots on PostgreSQL, in the event store's schema (the time sweep reads both).

use async_trait::async_trait;
use deadpool_postgres::Pool;
use nexus_core::{Snapshot, SnapshotStore, StoreError};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::{bigint, corrupt, pool_unavailable, unavailable, unsigned};

/// PostgreSQL snapshot store. Snapshots are kept, not pruned; `latest` reads the highest version.
pub struct PostgresSnapshotStore {
    pool: Pool,
}

impl PostgresSnapshotStore {
    pub(crate) fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let statement = client.prepare_cached(sql).await.map_err(unavailable)?;
        client.query(&statement, params).await.map_err(unavailable)
    }
}

fn decode_snapshot(row: &Row) -> Result<Snapshot, StoreError> {
    let bad = |e| corrupt("snapshot", e);
    let version: i64 = row.try_get(1).map_err(bad)?;
    let schema_version: i64 = row.try_get(3).map_err(bad)?;
    let state: Value = row.try_get(4).map_err(bad)?;
    Ok(Snapshot {
        aggregate_id: row.try_get(0).map_err(bad)?,
        aggregate_type: row.try_get(2).map_err(bad)?,
        version: unsigned(version, "snapshot version")?,
        schema_version: u32::try_from(schema_version).map_err(|e| corrupt("snapshot schema version", e))?,
        state,
        taken_at: row.try_get(5).map_err(bad)?,
    })
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn latest(&self, aggregate_id: &str) -> Result<Option<Snapshot>, StoreError> {
        let rows = self
            .query(
                "SELECT aggregate_id, version, aggregate_type, schema_version, state, taken_at FROM snapshots \
                 WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1",
                &[&aggregate_id],
            )
            .await?;
        rows.first().map(decode_snapshot).transpose()
    }

    async fn latest_at_or_before(
        &self,
        aggregate_id: &str,
        taken_at: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let rows = self
            .query(
                "SELECT aggregate_id, version, aggregate_type, schema_version, state, taken_at FROM snapshots \
                 WHERE aggregate_id = $1 AND taken_at <= $2 ORDER BY version DESC LIMIT 1",
                &[&aggregate_id, &taken_at],
            )
            .await?;
        rows.first().map(decode_snapshot).transpose()
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_string(&snapshot.state).map_err(|e| corrupt("snapshot state", e))?;
        // A version already saved holds the same state: the first one stays.
        self.query(
            "INSERT INTO snapshots (aggregate_id, version, aggregate_type, schema_version, state, taken_at) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) ON CONFLICT (aggregate_id, version) DO NOTHING",
            &[
                &snapshot.aggregate_id,
                &bigint(snapshot.version),
                &snapshot.aggregate_type,
                &i64::from(snapshot.schema_version),
                &state,
                &snapshot.taken_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn stale(
        &self,
        taken_before: &str,
        min_events: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A scan of every aggregate's head: fine for a scheduled sweep, not for a request path.
        let rows = self
            .query(
                "WITH latest AS ( \
                    SELECT DISTINCT ON (aggregate_id) aggregate_id, version, taken_at FROM snapshots \
                    ORDER BY aggregate_id, version DESC), \
                 heads AS (SELECT aggregate_id, MAX(version) AS head FROM events GROUP BY aggregate_id) \
                 SELECT h.aggregate_id FROM heads h LEFT JOIN latest s ON s.aggregate_id = h.aggregate_id \
                 WHERE h.head - COALESCE(s.version, 0) >= $2 \
                   AND CASE WHEN s.aggregate_id IS NULL \
                       THEN (SELECT f.timestamp FROM events f WHERE f.aggregate_id = h.aggregate_id \
                             ORDER BY f.version LIMIT 1) < $1 \
                       ELSE s.taken_at < $1 END \
                 ORDER BY h.aggregate_id LIMIT $3",
                &[&taken_before, &bigint(min_events), &bigint(limit as u64)],
            )
            .await?;
        rows.iter().map(|row| row.try_get(0).map_err(|e| corrupt("aggregate id", e))).collect()
    }
}
