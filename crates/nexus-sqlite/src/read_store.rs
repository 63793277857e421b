//! The embedded read store: JSON documents per resource type, and projection checkpoints.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nexus_core::{
    ListQuery, Page, ReadDocument, ReadStore, SearchQuery, SearchResults, SortOrder, StoreError,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::pool::ReaderPool;
use crate::{corrupt, migrate, unavailable};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE documents (
    resource TEXT    NOT NULL,
    id       TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    doc      TEXT    NOT NULL,
    PRIMARY KEY (resource, id)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    projection TEXT PRIMARY KEY,
    position   INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- Full-text search over `searchableText`: an FTS5 index keyed by a small integer per document.
CREATE TABLE search_keys (
    docid    INTEGER PRIMARY KEY,
    resource TEXT NOT NULL,
    id       TEXT NOT NULL,
    UNIQUE (resource, id)
);
CREATE VIRTUAL TABLE search_index USING fts5(text, content = '', contentless_delete = 1);
INSERT INTO search_keys (resource, id) SELECT resource, id FROM documents;
INSERT INTO search_index (rowid, text)
    SELECT k.docid, COALESCE(json_extract(d.doc, '$.searchableText'), '')
    FROM search_keys k JOIN documents d ON d.resource = k.resource AND d.id = k.id;
"#,
];

/// SQLite read store. Written only by projection runners; one write connection, many readers.
pub struct SqliteReadStore {
    // Projections commit in turns; a std mutex, held only inside a blocking task.
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReaderPool>,
}

impl SqliteReadStore {
    /// Opens (creating if needed) `read.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("read.db");
        let mut conn = Connection::open(&path).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        // NORMAL is enough: documents and checkpoint commit together, so a lost tail of commits
        // after a power cut is replayed from the event store; WAL never corrupts.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        crate::tune(&conn).map_err(unavailable)?;
        migrate(&mut conn, MIGRATIONS).map_err(unavailable)?;
        Ok(Self { writer: Arc::new(Mutex::new(conn)), readers: ReaderPool::new(path) })
    }
}

impl SqliteReadStore {
    /// Runs `f` in one write transaction on the blocking pool.
    async fn write<F>(&self, f: F) -> Result<(), StoreError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("read store writer poisoned");
            let tx = conn.transaction().map_err(unavailable)?;
            f(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }
}

fn parse_doc(text: &str) -> Result<ReadDocument, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("read-model document", e))
}

/// A field name usable in a JSON path: letters, digits, `_`, and `.` for nested fields.
fn json_path(field: &str) -> Result<String, StoreError> {
    let valid = !field.is_empty()
        && field
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if valid {
        Ok(format!("$.{field}"))
    } else {
        Err(StoreError::InvalidRequest(format!("'{field}' is not a valid field name")))
    }
}

/// Queries that carry field filters.
trait HasFilters {
    fn filters(&self) -> &[nexus_core::ports::Filter];
}

impl HasFilters for ListQuery {
    fn filters(&self) -> &[nexus_core::ports::Filter] {
        &self.filters
    }
}

impl HasFilters for SearchQuery {
    fn filters(&self) -> &[nexus_core::ports::Filter] {
        &self.filters
    }
}

/// `WHERE` clause and parameters for a list query (parameter 1 is the resource).
fn where_clause(resource: &str, query: &impl HasFilters) -> Result<(String, Vec<SqlValue>), StoreError> {
    let mut sql = String::from("resource = ?1");
    let mut values = vec![SqlValue::Text(resource.to_owned())];
    for filter in query.filters() {
        let path = values.len() + 1;
        let text = path + 1;
        let number = path + 2;
        // Arrays (tags) match by membership, numbers by value (`?total=20` matches 20.0), the
        // rest by their text form, so every filter can come from a query string.
        sql.push_str(&format!(
            " AND (CASE json_type(doc, ?{path}) \
               WHEN 'array' THEN EXISTS (SELECT 1 FROM json_each(doc, ?{path}) WHERE CAST(value AS TEXT) = ?{text}) \
               WHEN 'integer' THEN json_extract(doc, ?{path}) = ?{number} \
               WHEN 'real' THEN json_extract(doc, ?{path}) = ?{number} \
               WHEN 'true' THEN ?{text} = 'true' \
               WHEN 'false' THEN ?{text} = 'false' \
               ELSE CAST(json_extract(doc, ?{path}) AS TEXT) = ?{text} END)"
        ));
        values.push(SqlValue::Text(json_path(&filter.field)?));
        values.push(SqlValue::Text(filter.value.clone()));
        values.push(filter.value.parse::<f64>().map_or(SqlValue::Null, SqlValue::Real));
    }
    Ok((sql, values))
}

#[async_trait]
impl ReadStore for SqliteReadStore {
    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        let projection = projection.to_owned();
        self.readers
            .run(move |conn| {
                conn.query_row(
                    "SELECT position FROM checkpoints WHERE projection = ?1",
                    [projection],
                    |row| row.get(0),
                )
                .optional()
                .map(|position| position.unwrap_or(0))
                .map_err(unavailable)
            })
            .await
    }

    async fn load(&self, resource: &str, ids: &[String]) -> Result<Vec<ReadDocument>, StoreError> {
        let resource = resource.to_owned();
        let ids = ids.to_vec();
        self.readers
            .run(move |conn| {
                // One query for the whole batch: the ids travel as a JSON array.
                let ids = serde_json::to_string(&ids).map_err(|e| corrupt("ids", e))?;
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT doc FROM documents WHERE resource = ?1 AND id IN (SELECT value FROM json_each(?2))",
                    )
                    .map_err(unavailable)?;
                let texts = stmt
                    .query_map(params![resource, ids], |row| row.get::<_, String>(0))
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                let docs = texts.iter().map(|t| parse_doc(t)).collect::<Result<Vec<_>, _>>()?;
                Ok(docs)
            })
            .await
    }

    async fn commit(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError> {
        let (projection, resource) = (projection.to_owned(), resource.to_owned());
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("read store writer poisoned");
            let tx = conn.transaction().map_err(unavailable)?;
            {
                // The version guard lives in the database too: an older document never overwrites
                // a newer one, whoever writes it.
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO documents (resource, id, version, doc) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (resource, id) DO UPDATE SET version = excluded.version, doc = excluded.doc \
                         WHERE excluded.version > documents.version",
                    )
                    .map_err(unavailable)?;
                let mut key = tx
                    .prepare_cached(
                        "INSERT INTO search_keys (resource, id) VALUES (?1, ?2) \
                         ON CONFLICT (resource, id) DO UPDATE SET id = excluded.id RETURNING docid",
                    )
                    .map_err(unavailable)?;
                let mut index = tx
                    .prepare_cached("INSERT OR REPLACE INTO search_index (rowid, text) VALUES (?1, ?2)")
                    .map_err(unavailable)?;
                for doc in &docs {
                    let text = serde_json::to_string(doc).map_err(|e| corrupt("read-model document", e))?;
                    let changed = upsert.execute(params![resource, doc.id, doc.version, text]).map_err(unavailable)?;
                    if changed > 0 {
                        // The index follows the document in the same transaction.
                        let docid: i64 =
                            key.query_row(params![resource, doc.id], |row| row.get(0)).map_err(unavailable)?;
                        index.execute(params![docid, doc.searchable_text]).map_err(unavailable)?;
                    }
                }
                // Checkpoints only move forward: with several query processes running the same
                // projection, a slower one never drags the shared checkpoint back.
                tx.execute(
                    "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2) \
                     ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
                     WHERE excluded.position > checkpoints.position",
                    params![projection, position],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }

    async fn get(&self, resource: &str, id: &str) -> Result<Option<ReadDocument>, StoreError> {
        let (resource, id) = (resource.to_owned(), id.to_owned());
        self.readers
            .run(move |conn| {
                let text: Option<String> = conn
                    .prepare_cached("SELECT doc FROM documents WHERE resource = ?1 AND id = ?2")
                    .and_then(|mut stmt| stmt.query_row(params![resource, id], |row| row.get(0)).optional())
                    .map_err(unavailable)?;
                text.as_deref().map(parse_doc).transpose()
            })
            .await
    }

    async fn list(&self, resource: &str, query: &ListQuery) -> Result<Page, StoreError> {
        let (clause, mut values) = where_clause(resource, query)?;
        let order = match &query.sort {
            Some((field, order)) => {
                values.push(SqlValue::Text(json_path(field)?));
                let direction = if *order == SortOrder::Asc { "ASC" } else { "DESC" };
                format!("json_extract(doc, ?{}) {direction}, id ASC", values.len())
            }
            None => "id ASC".to_owned(),
        };
        let count_values = values.len() - usize::from(query.sort.is_some());
        let limit = query.limit as i64;
        let offset = query.offset as i64;
        self.readers
            .run(move |conn| {
                let total: u64 = conn
                    .prepare_cached(&format!("SELECT COUNT(*) FROM documents WHERE {clause}"))
                    .and_then(|mut stmt| {
                        stmt.query_row(params_from_iter(values[..count_values].iter()), |row| row.get(0))
                    })
                    .map_err(unavailable)?;
                let sql = format!(
                    "SELECT doc FROM documents WHERE {clause} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
                let texts = stmt
                    .query_map(params_from_iter(values.iter()), |row| row.get::<_, String>(0))
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                let items = texts.iter().map(|t| parse_doc(t)).collect::<Result<Vec<_>, _>>()?;
                Ok(Page { items, total })
            })
            .await
    }

    async fn clear(&self, resource: &str, projection: &str) -> Result<(), StoreError> {
        let (resource, projection) = (resource.to_owned(), projection.to_owned());
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM search_index WHERE rowid IN (SELECT docid FROM search_keys WHERE resource = ?1)",
                [&resource],
            )?;
            tx.execute("DELETE FROM search_keys WHERE resource = ?1", [&resource])?;
            tx.execute("DELETE FROM documents WHERE resource = ?1", [&resource])?;
            tx.execute("DELETE FROM checkpoints WHERE projection = ?1", [&projection])?;
            Ok(())
        })
        .await
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), StoreError> {
        let (live, shadow) = (live.to_owned(), shadow.to_owned());
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM search_index WHERE rowid IN (SELECT docid FROM search_keys WHERE resource = ?1)",
                [&live],
            )?;
            tx.execute("DELETE FROM search_keys WHERE resource = ?1", [&live])?;
            tx.execute("DELETE FROM documents WHERE resource = ?1", [&live])?;
            tx.execute("UPDATE documents SET resource = ?1 WHERE resource = ?2", [&live, &shadow])?;
            tx.execute("UPDATE search_keys SET resource = ?1 WHERE resource = ?2", [&live, &shadow])?;
            // The one place a checkpoint moves back: the rebuilt model comes with its own.
            tx.execute(
                "INSERT INTO checkpoints (projection, position) \
                 SELECT ?1, position FROM checkpoints WHERE projection = ?2 \
                 ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
                [&live, &shadow],
            )?;
            tx.execute("DELETE FROM checkpoints WHERE projection = ?1", [&shadow])?;
            Ok(())
        })
        .await
    }

    async fn search(&self, resource: &str, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let (clause, mut values) = where_clause(resource, query)?;
        // Every word must match; each is quoted, so FTS5 operators in user input are just text.
        let words: Vec<String> =
            query.text.split_whitespace().map(|word| format!("\"{}\"", word.replace('"', "\"\""))).collect();
        let (from, order) = if words.is_empty() {
            ("documents".to_owned(), "json_extract(doc, '$.lastUpdated') DESC, id".to_owned())
        } else {
            values.push(SqlValue::Text(words.join(" ")));
            let hits = format!(
                "documents JOIN (SELECT k.resource AS r, k.id AS i, bm25(search_index) AS score \
                 FROM search_index JOIN search_keys k ON k.docid = search_index.rowid \
                 WHERE search_index MATCH ?{}) hits ON hits.r = documents.resource AND hits.i = documents.id",
                values.len()
            );
            (hits, "hits.score, id".to_owned())
        };
        let mut facets = Vec::new();
        for field in &query.facets {
            facets.push((field.clone(), json_path(field)?));
        }
        let (limit, offset) = (query.limit as i64, query.offset as i64);
        self.readers
            .run(move |conn| {
                let params = || params_from_iter(values.iter());
                let total: u64 = conn
                    .prepare_cached(&format!("SELECT COUNT(*) FROM {from} WHERE {clause}"))
                    .and_then(|mut stmt| stmt.query_row(params(), |row| row.get(0)))
                    .map_err(unavailable)?;
                let texts = conn
                    .prepare_cached(&format!(
                        "SELECT doc FROM {from} WHERE {clause} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
                    ))
                    .and_then(|mut stmt| {
                        stmt.query_map(params(), |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(unavailable)?;
                let items = texts.iter().map(|t| parse_doc(t)).collect::<Result<Vec<_>, _>>()?;
                let mut counts = std::collections::BTreeMap::new();
                for (field, path) in facets {
                    // json_each yields the element itself for a scalar and each member of an array,
                    // so `status` and `tags` are counted the same way.
                    let sql = format!(
                        "SELECT CAST(j.value AS TEXT), COUNT(*) FROM {from}, json_each(documents.doc, '{path}') j \
                         WHERE {clause} GROUP BY 1"
                    );
                    let rows = conn
                        .prepare_cached(&sql)
                        .and_then(|mut stmt| {
                            stmt.query_map(params(), |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))?
                                .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
                        })
                        .map_err(unavailable)?;
                    counts.insert(field, rows);
                }
                Ok(SearchResults { items, total, facets: counts })
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.readers.run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable)).await
    }
}
