//! The schema registry's storage on PostgreSQL, in the same schema as the events.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use nexus_core::{RegisteredSchema, SchemaStore, StoreError};
use tokio_postgres::Row;

use crate::{corrupt, pool_unavailable, unavailable};

/// The registry's subjects, versions, ids and compatibility levels.
pub struct PostgresSchemaStore {
    pool: Pool,
}

impl PostgresSchemaStore {
    pub(crate) fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

const SELECT: &str = "SELECT s.id, v.subject, v.version, s.schema, s.schema_type \
                      FROM registry_subject_versions v JOIN registry_schemas s ON s.id = v.schema_id";

/// Two processes registering at once: one lock for the registry's writes (rare).
const REGISTRY_LOCK: i64 = 0x4E58_5245_4749; // "NXREGI"

fn decode(row: &Row) -> Result<RegisteredSchema, StoreError> {
    let bad = |e| corrupt("registered schema", e);
    let id: i32 = row.try_get(0).map_err(bad)?;
    let version: i32 = row.try_get(2).map_err(bad)?;
    Ok(RegisteredSchema {
        id: u32::try_from(id).map_err(|e| corrupt("schema id", e))?,
        subject: row.try_get(1).map_err(bad)?,
        version: u32::try_from(version).map_err(|e| corrupt("schema version", e))?,
        schema: row.try_get(3).map_err(bad)?,
        schema_type: row.try_get(4).map_err(bad)?,
    })
}

#[async_trait]
impl SchemaStore for PostgresSchemaStore {
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<RegisteredSchema, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRY_LOCK]).await.map_err(unavailable)?;
        let id: i32 = match tx
            .query_opt("SELECT id FROM registry_schemas WHERE schema = $1", &[&schema])
            .await
            .map_err(unavailable)?
        {
            Some(row) => row.get(0),
            None => tx
                .query_one(
                    "INSERT INTO registry_schemas (schema, schema_type) VALUES ($1, $2) RETURNING id",
                    &[&schema, &schema_type],
                )
                .await
                .map_err(unavailable)?
                .get(0),
        };
        let existing = tx
            .query_opt(&format!("{SELECT} WHERE v.subject = $1 AND v.schema_id = $2"), &[&subject, &id])
            .await
            .map_err(unavailable)?;
        let registered = match existing {
            Some(row) => decode(&row)?,
            None => {
                let version: i32 = tx
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM registry_subject_versions WHERE subject = $1",
                        &[&subject],
                    )
                    .await
                    .map_err(unavailable)?
                    .get(0);
                tx.execute(
                    "INSERT INTO registry_subject_versions (subject, version, schema_id) VALUES ($1, $2, $3)",
                    &[&subject, &version, &id],
                )
                .await
                .map_err(unavailable)?;
                RegisteredSchema {
                    id: id as u32,
                    subject: subject.to_owned(),
                    version: version as u32,
                    schema: schema.to_owned(),
                    schema_type: schema_type.to_owned(),
                }
            }
        };
        tx.commit().await.map_err(unavailable)?;
        Ok(registered)
    }

    async fn subjects(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let rows = client
            .query("SELECT DISTINCT subject FROM registry_subject_versions ORDER BY subject", &[])
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn versions(&self, subject: &str) -> Result<Vec<RegisteredSchema>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let rows = client
            .query(&format!("{SELECT} WHERE v.subject = $1 ORDER BY v.version"), &[&subject])
            .await
            .map_err(unavailable)?;
        rows.iter().map(decode).collect()
    }

    async fn by_id(&self, id: u32) -> Result<Option<RegisteredSchema>, StoreError> {
        let Ok(id) = i32::try_from(id) else { return Ok(None) };
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let row = client
            .query_opt(&format!("{SELECT} WHERE s.id = $1 ORDER BY v.subject, v.version LIMIT 1"), &[&id])
            .await
            .map_err(unavailable)?;
        row.as_ref().map(decode).transpose()
    }

    async fn compatibility(&self, subject: Option<&str>) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let row = client
            .query_opt(
                "SELECT level FROM registry_compatibility WHERE subject = $1",
                &[&subject.unwrap_or("")],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        client
            .execute(
                "INSERT INTO registry_compatibility (subject, level) VALUES ($1, $2) \
                 ON CONFLICT (subject) DO UPDATE SET level = excluded.level",
                &[&subject.unwrap_or(""), &level],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
