//! The schema registry's storage: `registry.db` beside the event store.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nexus_core::{RegisteredSchema, SchemaStore, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{migrate, unavailable};

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE schemas (
    id          INTEGER PRIMARY KEY,
    schema      TEXT NOT NULL UNIQUE,
    schema_type TEXT NOT NULL
);
CREATE TABLE subject_versions (
    subject   TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    PRIMARY KEY (subject, version)
) WITHOUT ROWID;
CREATE TABLE compatibility (
    subject TEXT PRIMARY KEY, -- '' is the global setting
    level   TEXT NOT NULL
) WITHOUT ROWID;
"#];

/// SQLite schema store. Registrations are rare: one connection behind a mutex, used from the
/// blocking pool.
pub struct SqliteSchemaStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteSchemaStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(dir.join("registry.db")).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(unavailable)?;
        crate::tune(&conn).map_err(unavailable)?;
        migrate(&mut conn, MIGRATIONS).map_err(unavailable)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("registry connection poisoned")))
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?
            .map_err(unavailable)
    }
}

const SELECT: &str = "SELECT s.id, v.subject, v.version, s.schema, s.schema_type \
                      FROM subject_versions v JOIN schemas s ON s.id = v.schema_id";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RegisteredSchema> {
    Ok(RegisteredSchema {
        id: row.get(0)?,
        subject: row.get(1)?,
        version: row.get(2)?,
        schema: row.get(3)?,
        schema_type: row.get(4)?,
    })
}

#[async_trait]
impl SchemaStore for SqliteSchemaStore {
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<RegisteredSchema, StoreError> {
        let (subject, schema, schema_type) = (subject.to_owned(), schema.to_owned(), schema_type.to_owned());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id: u32 = match tx
                .query_row("SELECT id FROM schemas WHERE schema = ?1", [&schema], |r| r.get(0))
                .optional()?
            {
                Some(id) => id,
                None => tx.query_row(
                    "INSERT INTO schemas (schema, schema_type) VALUES (?1, ?2) RETURNING id",
                    params![schema, schema_type],
                    |r| r.get(0),
                )?,
            };
            let existing = tx
                .query_row(
                    &format!("{SELECT} WHERE v.subject = ?1 AND v.schema_id = ?2"),
                    params![subject, id],
                    row,
                )
                .optional()?;
            let registered = match existing {
                Some(found) => found,
                None => {
                    let version: u32 = tx.query_row(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM subject_versions WHERE subject = ?1",
                        [&subject],
                        |r| r.get(0),
                    )?;
                    tx.execute(
                        "INSERT INTO subject_versions (subject, version, schema_id) VALUES (?1, ?2, ?3)",
                        params![subject, version, id],
                    )?;
                    RegisteredSchema { id, subject, version, schema, schema_type }
                }
            };
            tx.commit()?;
            Ok(registered)
        })
        .await
    }

    async fn subjects(&self) -> Result<Vec<String>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare("SELECT DISTINCT subject FROM subject_versions ORDER BY subject")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })
        .await
    }

    async fn versions(&self, subject: &str) -> Result<Vec<RegisteredSchema>, StoreError> {
        let subject = subject.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(&format!("{SELECT} WHERE v.subject = ?1 ORDER BY v.version"))?;
            stmt.query_map([subject], row)?.collect()
        })
        .await
    }

    async fn by_id(&self, id: u32) -> Result<Option<RegisteredSchema>, StoreError> {
        self.run(move |conn| {
            conn.query_row(
                &format!("{SELECT} WHERE s.id = ?1 ORDER BY v.subject, v.version LIMIT 1"),
                [id],
                row,
            )
            .optional()
        })
        .await
    }

    async fn compatibility(&self, subject: Option<&str>) -> Result<Option<String>, StoreError> {
        let subject = subject.unwrap_or("").to_owned();
        self.run(move |conn| {
            conn.query_row("SELECT level FROM compatibility WHERE subject = ?1", [subject], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<(), StoreError> {
        let (subject, level) = (subject.unwrap_or("").to_owned(), level.to_owned());
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO compatibility (subject, level) VALUES (?1, ?2) \
                 ON CONFLICT (subject) DO UPDATE SET level = excluded.level",
                params![subject, level],
            )
            .map(|_| ())
        })
        .await
    }
}
