//! The embedded read store: JSON documents per resource type, and projection checkpoints.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use nexus_core::{
    Filter, ListQuery, Page, ReadDocument, ReadStore, SearchQuery, SearchResults, SortOrder, StoreError,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;

use crate::doc_values::{DocValues, Update, Values};
use crate::pool::ReaderPool;
use crate::{Checkpointer, LogReset, corrupt, migrate, unavailable};

/// The writer connection's page cache, in KiB (as `PRAGMA cache_size` takes a negative number).
const WRITER_CACHE_KIB: i64 = -64 * 1024;

/// Values longer than this many bytes get no key: a filter on one reads the documents instead.
const MAX_KEYED_VALUE: usize = 64;

/// Fields without keys: the words, and the envelope every document has, whose values are mostly
/// unique (a key each would double the index for filters nobody runs; they read the JSON).
const UNKEYED_FIELDS: [&str; 5] = ["searchableText", "id", "aggregateId", "version", "lastUpdated"];

/// The `keys` column of `search_index` for a document: one token per (field, value) a filter can
/// find through the index, space-separated. A token is the hex of `field` U+001F `value`, for
/// every top-level field a filter can name (letters, digits, `_`; not [`UNKEYED_FIELDS`]): a
/// string by itself, a boolean as `true`/`false`, an array by each member (booleans
/// as `1`/`0`, as the filters compare members), a number by [`number_form`]; objects and values
/// over [`MAX_KEYED_VALUE`] bytes get none. Strings and booleans are exact; numbers only find
/// candidates, which the filters then check on the JSON (20 = 20.0).
fn search_keys(doc: &serde_json::Map<String, Value>) -> String {
    let mut tokens = String::new();
    for (field, value) in doc {
        push_value_keys(&mut tokens, field, value);
    }
    tokens
}

/// [`search_keys`] of a document as its JSON would have them, without building the JSON.
fn document_keys(doc: &ReadDocument) -> String {
    let mut tokens = String::new();
    push_key(&mut tokens, "status", &doc.status);
    for tag in &doc.tags {
        push_key(&mut tokens, "tags", tag);
    }
    // `metadata` is an object: no keys.
    for (field, value) in &doc.fields {
        push_value_keys(&mut tokens, field, value);
    }
    tokens
}

fn push_key(tokens: &mut String, field: &str, form: &str) {
    if form.len() <= MAX_KEYED_VALUE {
        if !tokens.is_empty() {
            tokens.push(' ');
        }
        push_key_token(tokens, field, form);
    }
}

/// The keys of one top-level field of a document (see [`search_keys`]).
fn push_value_keys(tokens: &mut String, field: &str, value: &Value) {
    if UNKEYED_FIELDS.contains(&field) || !is_field_name(field) {
        return;
    }
    match value {
        Value::Array(members) => {
            for form in members.iter().filter_map(|member| scalar_form(member, ("1", "0"))) {
                push_key(tokens, field, &form);
            }
        }
        scalar => {
            if let Some(form) = scalar_form(scalar, ("true", "false")) {
                push_key(tokens, field, &form);
            }
        }
    }
}

/// The key form of a string, number or boolean (`yes` or `no`: booleans are spelled one way
/// alone and another as array members); `None` for anything else.
fn scalar_form<'v>(value: &'v Value, (yes, no): (&'v str, &'v str)) -> Option<std::borrow::Cow<'v, str>> {
    match value {
        Value::String(text) => Some(text.as_str().into()),
        Value::Bool(flag) => Some(if *flag { yes } else { no }.into()),
        Value::Number(number) => number.as_f64().map(|number| number_form(number).into()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The key form of a number: its shortest round-trip text (20 and 20.0 are both `20`).
fn number_form(number: f64) -> String {
    number.to_string()
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Appends the `search_index` token of `field` = `value`.
fn push_key_token(tokens: &mut String, field: &str, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in field.bytes().chain([0x1f]).chain(value.bytes()) {
        tokens.push(char::from(HEX[usize::from(byte >> 4)]));
        tokens.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

fn key_token(field: &str, value: &str) -> String {
    let mut token = String::with_capacity(2 * (field.len() + 1 + value.len()));
    push_key_token(&mut token, field, value);
    token
}

/// `nexus_search_keys(doc)`: [`search_keys`] of a document's JSON text, and
/// `nexus_word_count(text)`, for the migrations that index the documents already there.
fn register_search_keys(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "nexus_search_keys",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let doc: serde_json::Map<String, Value> = serde_json::from_str(&ctx.get::<String>(0)?)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
            Ok(search_keys(&doc))
        },
    )?;
    conn.create_scalar_function(
        "nexus_word_count",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(crate::rank::word_count(&ctx.get::<String>(0)?)),
    )
}

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
    // Search without parsing documents: beside each search key, `status` and `tags` for facet
    // counts and `lastUpdated` for ordering, in a table narrow enough that looking up 80,000
    // matches stays cheap; and a second column of (field, value) keys in the index, so filters
    // are answered by it. FTS5 cannot add a column: the index is built again. `models` says
    // where a resource's documents are stored: under its own name unless a row there says
    // otherwise. A rebuild's shadow is written under a fresh name and the swap points the live
    // resource at it, so a swap deletes the old documents but rewrites none.
    r#"
ALTER TABLE search_keys ADD COLUMN last_updated TEXT;
ALTER TABLE search_keys ADD COLUMN status TEXT;
ALTER TABLE search_keys ADD COLUMN tags TEXT;
INSERT INTO search_keys (resource, id) SELECT resource, id FROM documents d
    WHERE NOT EXISTS (SELECT 1 FROM search_keys k WHERE k.resource = d.resource AND k.id = d.id);
UPDATE search_keys SET (last_updated, status, tags) = (
    SELECT json_extract(d.doc, '$.lastUpdated'), json_extract(d.doc, '$.status'),
           NULLIF(json_extract(d.doc, '$.tags'), '[]')
    FROM documents d WHERE d.resource = search_keys.resource AND d.id = search_keys.id);
DROP TABLE search_index;
CREATE VIRTUAL TABLE search_index USING fts5(text, keys, content = '', contentless_delete = 1);
INSERT INTO search_index (rowid, text, keys)
    SELECT k.docid, COALESCE(json_extract(d.doc, '$.searchableText'), ''), nexus_search_keys(d.doc)
    FROM search_keys k JOIN documents d ON d.resource = k.resource AND d.id = k.id;
CREATE TABLE models (
    name       TEXT PRIMARY KEY,
    stored     TEXT NOT NULL,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // Storage names a swap or a clear let go of. Their documents are deleted in the background,
    // a chunk at a time (see `sweep_loop`): deleting a million documents with their index
    // entries in the swap held the writer, and every projection, for six seconds. Generations
    // get full-text indexes of their own (see `Storage`), made when the store opens.
    r#"
CREATE TABLE retired (stored TEXT PRIMARY KEY, retired_at INTEGER NOT NULL) WITHOUT ROWID;
"#,
    // Each document's length in words, which ranking reads beside its status rather than from
    // the index's own `%_docsize` (see `crate::rank`).
    r#"
ALTER TABLE search_keys ADD COLUMN words INTEGER;
UPDATE search_keys SET words = (
    SELECT nexus_word_count(COALESCE(json_extract(d.doc, '$.searchableText'), ''))
    FROM documents d WHERE d.resource = search_keys.resource AND d.id = search_keys.id);
"#,
    // One table for a document and its search key: the JSON beside the docid and the columns
    // searches read. Writing a document was three B-trees (the documents, the search keys and
    // their (resource, id) index) and is now two; a new document's row goes at the end of the
    // table, in docid order, instead of among the others by id. Docids are kept, so the
    // full-text indexes stay as they are. A document without a search key (there should be
    // none) gets a new docid and, as before, no index entry.
    r#"
ALTER TABLE documents RENAME TO documents_without_keys;
CREATE TABLE documents (
    docid        INTEGER PRIMARY KEY,
    resource     TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    doc          TEXT    NOT NULL,
    last_updated TEXT,
    status       TEXT,
    tags         TEXT,
    words        INTEGER,
    UNIQUE (resource, id)
);
INSERT INTO documents (docid, resource, id, version, doc, last_updated, status, tags, words)
    SELECT k.docid, d.resource, d.id, d.version, d.doc, k.last_updated, k.status, k.tags, k.words
    FROM documents_without_keys d LEFT JOIN search_keys k ON k.resource = d.resource AND k.id = d.id
    ORDER BY k.docid IS NULL, k.docid;
DROP TABLE documents_without_keys;
DROP TABLE search_keys;
"#,
    // Lists by status read a page from an index, in id order, and take their total from a count
    // kept per storage and status, instead of counting every match (see `ReadStore::list`).
    // Commits add what they insert; a trigger moves a document whose status changes; a storage's
    // counts go when the sweep has deleted its documents. (A document migration 6 kept without
    // a search key gets its status from the JSON first.)
    r#"
UPDATE documents SET status = COALESCE(json_extract(doc, '$.status'), '') WHERE status IS NULL;
CREATE INDEX documents_by_status ON documents (resource, status, id);
CREATE TABLE list_counts (
    resource  TEXT    NOT NULL,
    status    TEXT    NOT NULL,
    documents INTEGER NOT NULL,
    PRIMARY KEY (resource, status)
) WITHOUT ROWID;
INSERT INTO list_counts (resource, status, documents)
    SELECT resource, status, COUNT(*) FROM documents GROUP BY resource, status;
CREATE TRIGGER documents_status_moves AFTER UPDATE OF status ON documents
WHEN old.status IS NOT new.status OR old.resource IS NOT new.resource
BEGIN
    UPDATE list_counts SET documents = documents - 1 WHERE resource = old.resource AND status = old.status;
    INSERT INTO list_counts (resource, status, documents) VALUES (new.resource, new.status, 1)
        ON CONFLICT (resource, status) DO UPDATE SET documents = documents + 1;
END;
"#,
];

/// SQLite read store. Written only by projection runners; one write connection, many readers.
pub struct SqliteReadStore {
    // Projections commit in turns; a std mutex, held only inside a blocking task.
    writer: Arc<Mutex<Connection>>,
    /// Run by whoever holds the writer, before its transaction.
    log: Arc<LogReset>,
    /// Fields `index_fields` indexed, per model: a filter on one reads its candidates from the
    /// model's index.
    indexed_fields: RwLock<HashMap<String, HashSet<String>>>,
    readers: Arc<ReaderPool>,
    /// What searches read of each match, in memory (see [`DocValues`]).
    doc_values: Arc<DocValues>,
    /// How many parts a search scans its matches in, in parallel: one per core, up to 4.
    search_parts: usize,
    /// Declared last: on drop it empties the log once the writer and readers are closed.
    _checkpointer: Checkpointer,
}

impl SqliteReadStore {
    /// Opens (creating if needed) `read.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("read.db");
        let mut conn = Connection::open(&path).map_err(unavailable)?;
        // Checkpoints run on a thread of their own (see `Checkpointer`): inline, in the commit of
        // whichever projection crossed the threshold, they were a tenth of the server's CPU.
        crate::tune_writer(&conn).map_err(unavailable)?;
        // NORMAL is enough: documents and checkpoint commit together, so a lost tail of commits
        // after a power cut is replayed from the event store; WAL never corrupts.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        // The writer's page cache holds a commit's dirty pages and the index pages it walks:
        // with SQLite's default 2 MB, a batch of 5,000 documents into a million spilled pages
        // to the WAL mid-transaction and read the B-tree interiors again per document.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB).map_err(unavailable)?;
        register_search_keys(&conn).map_err(unavailable)?;
        migrate(&mut conn, MIGRATIONS).map_err(unavailable)?;
        split_shared_index(&mut conn).map_err(unavailable)?;
        drop_indexes_of_every_model(&conn).map_err(unavailable)?;
        let checkpointer = Checkpointer::start(&path, "read")?;
        let search_parts = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let log = Arc::new(LogReset::new(&conn, "read"));
        let writer = Arc::new(Mutex::new(conn));
        let doc_values = Arc::new(DocValues::default());
        let sweeper = (Arc::downgrade(&writer), doc_values.clone());
        std::thread::Builder::new()
            .name("nexus-read-sweep".into())
            .spawn(move || sweep_loop(sweeper.0, &sweeper.1))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self {
            writer,
            log,
            indexed_fields: RwLock::default(),
            readers: ReaderPool::with_setup(path, crate::rank::register),
            doc_values,
            search_parts,
            _checkpointer: checkpointer,
        })
    }
}

impl SqliteReadStore {
    /// Writes prepared rows and the checkpoint in one transaction, on the writer's thread.
    async fn commit_rows(
        &self,
        projection: &str,
        resource: &str,
        mut rows: Vec<Row>,
        position: u64,
        guard: Guard,
    ) -> Result<(), StoreError> {
        let (projection, resource) = (projection.to_owned(), resource.to_owned());
        let (writer, log, doc_values) = (self.writer.clone(), self.log.clone(), self.doc_values.clone());
        // In key order (and so docid order): a rebuild ran at 94–96k events/s with it, 85k without.
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("read store writer poisoned");
            log.run(&conn);
            let (resource, written) =
                crate::retry_busy(|| write_rows(&mut conn, &projection, &resource, &rows, position, guard))
                    .map_err(unavailable)?;
            // After the commit, still holding the writer: see `DocValues`.
            doc_values.apply(&resource, || {
                written
                    .into_iter()
                    .map(|(docid, row)| {
                        let row = &rows[row];
                        Update {
                            docid,
                            id: row.id.clone(),
                            status: Some(row.status.clone()),
                            tags: row.tags.clone(),
                            words: row.words,
                        }
                    })
                    .collect()
            });
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }

    /// How many swapped-out models are still to be deleted in the background (each is kept 5 s,
    /// then deleted a chunk at a time, taking turns with projection commits).
    pub async fn retired_models(&self) -> Result<u64, StoreError> {
        self.readers
            .run(|conn| {
                conn.query_row("SELECT COUNT(*) FROM retired", [], |row| row.get(0)).map_err(unavailable)
            })
            .await
    }

    /// Runs `f` in one write transaction on the blocking pool (again, from the start, if the lock
    /// stays busy: see `retry_busy`).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (writer, log) = (self.writer.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("read store writer poisoned");
            log.run(&conn);
            crate::retry_busy(|| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            })
            .map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }
}

/// Which stored documents a commit's documents replace.
#[derive(Clone, Copy)]
enum Guard {
    /// Only older ones ([`ReadStore::commit`]).
    Newer,
    /// Older ones and those at the same version ([`ReadStore::replace`]).
    SameOrNewer,
}

/// Writes `rows` into `resource` and moves `projection`'s checkpoint, in one transaction that
/// takes the write lock up front. Answers the storage written and `(docid, index in rows)` of
/// each document written.
fn write_rows(
    conn: &mut Connection,
    projection: &str,
    resource: &str,
    rows: &[Row],
    position: u64,
    guard: Guard,
) -> rusqlite::Result<(String, Vec<(i64, usize)>)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let Storage { name: resource, index } = storage_for_commit(&tx, resource)?;
    let mut written = Vec::new();
    {
        // A new document is inserted and takes the next docid; one already stored is updated
        // only by a newer version: the version guard lives in the database too, so an older
        // document never overwrites a newer one, whoever writes it. Not one upsert: it cannot
        // say which it did without `RETURNING` (a trigger in SQLite), and an upsert with it, on
        // a table with a second index, opens a statement journal for every document, which made
        // a rebuild's writes take 1.7 times as long (measured). Here only the update of a stored
        // document returns its docid.
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO documents (resource, id, version, doc, last_updated, status, tags, words) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut update = tx.prepare_cached(match guard {
            Guard::Newer => {
                "UPDATE documents SET version = ?3, doc = ?4, last_updated = ?5, status = ?6, tags = ?7, \
                 words = ?8 WHERE resource = ?1 AND id = ?2 AND version < ?3 RETURNING docid"
            }
            Guard::SameOrNewer => {
                "UPDATE documents SET version = ?3, doc = ?4, last_updated = ?5, status = ?6, tags = ?7, \
                 words = ?8 WHERE resource = ?1 AND id = ?2 AND version <= ?3 RETURNING docid"
            }
        })?;
        // The same update for a document whose status stays (most updates): with `status` out of
        // the `SET`, SQLite leaves the index on it and the trigger on it alone.
        let mut update_in_status = tx.prepare_cached(match guard {
            Guard::Newer => {
                "UPDATE documents SET version = ?3, doc = ?4, last_updated = ?5, tags = ?7, words = ?8 \
                 WHERE resource = ?1 AND id = ?2 AND version < ?3 AND status = ?6 RETURNING docid"
            }
            Guard::SameOrNewer => {
                "UPDATE documents SET version = ?3, doc = ?4, last_updated = ?5, tags = ?7, words = ?8 \
                 WHERE resource = ?1 AND id = ?2 AND version <= ?3 AND status = ?6 RETURNING docid"
            }
        })?;
        // A docid above the highest before this commit is new (docids count up), so it has no
        // index entry to take out.
        let highest: i64 =
            tx.query_row("SELECT COALESCE(MAX(docid), 0) FROM documents", [], |row| row.get(0))?;
        // The index follows the documents in the same transaction. FTS5 writes its pending terms
        // to disk whenever a statement savepoint opens (an upsert opens one), when a rowid comes
        // lower than the last one, and when a rowid is deleted and inserted again (`INSERT OR
        // REPLACE`): written per document, that is most of a commit's time (measured). So the
        // index comes last, old entries out first, then new ones by ascending docid: it flushes
        // once.
        let mut indexed: BTreeMap<i64, (bool, &str, &str)> = BTreeMap::new();
        // New documents per status, for `list_counts` (updates move theirs by trigger).
        let mut inserted: HashMap<&str, i64> = HashMap::new();
        for (at, row) in rows.iter().enumerate() {
            let values = params![
                resource,
                row.id,
                row.version,
                row.json,
                row.last_updated,
                row.status,
                row.tags,
                row.words
            ];
            let docid: i64 = if insert.execute(values)? == 1 {
                *inserted.entry(row.status.as_str()).or_default() += 1;
                tx.last_insert_rowid()
            } else if let Some(docid) = update_in_status.query_row(values, |r| r.get(0)).optional()? {
                docid
            } else {
                match update.query_row(values, |r| r.get(0)).optional()? {
                    Some(docid) => docid,
                    None => continue, // this version or a newer one is stored
                }
            };
            written.push((docid, at));
            // A document twice in one batch: its last version is indexed, once.
            let indexed_before = indexed.get(&docid).map_or(docid <= highest, |(before, ..)| *before);
            indexed.insert(docid, (indexed_before, &row.searchable_text, &row.keys));
        }
        let mut count = tx.prepare_cached(
            "INSERT INTO list_counts (resource, status, documents) VALUES (?1, ?2, ?3) \
             ON CONFLICT (resource, status) DO UPDATE SET documents = documents + excluded.documents",
        )?;
        for (status, documents) in inserted {
            count.execute(params![resource, status, documents])?;
        }
        let search_index = &index;
        let mut unindex = tx.prepare_cached(&format!("DELETE FROM {search_index} WHERE rowid = ?1"))?;
        for (docid, _) in indexed.iter().filter(|(_, (before, ..))| *before) {
            unindex.execute([docid])?;
        }
        let mut index = tx
            .prepare_cached(&format!("INSERT INTO {search_index} (rowid, text, keys) VALUES (?1, ?2, ?3)"))?;
        for (docid, (_, text, keys)) in indexed {
            index.execute(params![docid, text, keys])?;
        }
        // Checkpoints only move forward: with several query processes running the same
        // projection, a slower one never drags the shared checkpoint back.
        tx.execute(
            "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
             WHERE excluded.position > checkpoints.position",
            params![projection, position],
        )?;
    }
    tx.commit()?;
    Ok((resource, written))
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

/// A field's value in a document, as SQL; the same text in a list's `ORDER BY` and in the index
/// [`ReadStore::index_fields`] makes, so the planner reads one for the other.
fn field_expression(field: &str) -> Result<String, StoreError> {
    // `json_path` admits letters, digits, `_` and `.`: nothing to escape inside the quotes.
    Ok(format!("json_extract(doc, '{}')", json_path(field)?))
}

/// The documents of model `resource` wherever they are stored: under its own name (from before
/// generations), `{resource}#{n}`, or a rebuild's `{resource}~rebuild#{n}`. The `WHERE` of the
/// indexes [`ReadStore::index_fields`] makes for the model, and a term of each of its lists: the
/// planner reads a partial index only for a query whose `WHERE` holds the index's own term.
/// Model names are letters, digits, `_` and `-`, so the text needs no escaping.
fn model_term(resource: &str) -> Result<String, StoreError> {
    let valid =
        !resource.is_empty() && resource.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(StoreError::InvalidRequest(format!(
            "'{resource}' cannot have declared fields: a model's name is letters, digits, '_' and '-'"
        )));
    }
    Ok(format!("(resource = '{resource}' OR resource GLOB '{resource}[#~]*')"))
}

/// Drops the indexes on declared fields that covered every model's documents (before each model
/// got its own, see [`ReadStore::index_fields`]); the server makes the new ones as it starts.
fn drop_indexes_of_every_model(conn: &Connection) -> rusqlite::Result<()> {
    let old: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'documents' \
             AND name GLOB 'documents_by_*' AND name <> 'documents_by_status' AND instr(name, '/') = 0",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for name in old {
        conn.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
    }
    Ok(())
}

/// `WHERE` clause and parameters for a list query (parameter 1 is the resource), with `model`'s
/// term (see [`model_term`]) when the model has declared fields. A filter on `status` reads the
/// column (and its index): it holds the document's `status`, always a string, so the two agree
/// on every value.
fn where_clause(
    resource: &str,
    model: Option<&str>,
    filters: &[Filter],
) -> Result<(String, Vec<SqlValue>), StoreError> {
    let mut values = vec![SqlValue::Text(resource.to_owned())];
    let (status, others): (Vec<&Filter>, Vec<&Filter>) = filters.iter().partition(|f| f.field == "status");
    let mut sql = "resource = ?1".to_owned();
    if let Some(model) = model {
        sql.push_str(" AND ");
        sql.push_str(model);
    }
    for filter in status {
        values.push(SqlValue::Text(filter.value.clone()));
        sql.push_str(&format!(" AND status = ?{}", values.len()));
    }
    let others: Vec<Filter> = others.into_iter().cloned().collect();
    sql.push_str(&filter_predicates(&others, &mut values)?);
    Ok((sql, values))
}

/// Where the index on [`field_expression`] finds what a filter on an indexed field can match,
/// one predicate per place, for [`filter_predicates`] to decide on. `json_extract` gives a string
/// as its text, a number as itself, a boolean as 1 or 0, an array or object as its JSON text; a
/// filter matches a string by text, a number by value, a boolean by `true`/`false`, an array by
/// a member. So the places are the value's text form, its number and boolean forms when it has
/// them, and every array (JSON text from `[` up to `\`: an empty range unless the field holds
/// arrays). A value is in one place at most, so the matches of the places add up. One equality
/// each, not an `IN` or an `OR`: SQLite reads each from the index in id order, and merges them.
fn indexed_places(filter: &Filter, values: &mut Vec<SqlValue>) -> Result<Vec<String>, StoreError> {
    let expression = field_expression(&filter.field)?;
    values.push(SqlValue::Text(filter.value.clone()));
    let mut places = vec![format!("{expression} = ?{}", values.len())];
    if let Ok(number) = filter.value.parse::<f64>() {
        values.push(SqlValue::Real(number));
        places.push(format!("{expression} = ?{}", values.len()));
    }
    if let Some(boolean) = [("false", 0), ("true", 1)].iter().find(|(name, _)| *name == filter.value) {
        values.push(SqlValue::Integer(boolean.1));
        places.push(format!("{expression} = ?{}", values.len()));
    }
    places.push(format!("{expression} >= '[' AND {expression} < '\\'"));
    Ok(places)
}

/// ` AND ...` for each filter, on the JSON column `doc`, numbering parameters after `values`.
fn filter_predicates(filters: &[Filter], values: &mut Vec<SqlValue>) -> Result<String, StoreError> {
    let mut sql = String::new();
    for filter in filters {
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
    Ok(sql)
}

/// The statements of a list: its total, its page, and their parameters (the first is the
/// resource, which the caller replaces with where the resource is stored).
struct ListStatements {
    count: String,
    page: String,
    values: Vec<SqlValue>,
}

/// [`ListStatements`] of `query` over `resource`, whose declared fields are `indexed`.
fn list_statements(
    resource: &str,
    indexed: Option<&HashSet<String>>,
    query: &ListQuery,
) -> Result<ListStatements, StoreError> {
    // The model's term only where it has indexes to read: it costs a check per row.
    let model = indexed.map(|_| model_term(resource)).transpose()?;
    let (clause, mut values) = where_clause(resource, model.as_deref(), &query.filters)?;
    // A filter on an indexed field: the matches are read from the index, place by place.
    let lookup = indexed
        .and_then(|indexed| query.filters.iter().find(|f| f.field != "status" && indexed.contains(&f.field)));
    let branches: Vec<String> = match lookup {
        Some(filter) => {
            indexed_places(filter, &mut values)?.iter().map(|place| format!("{clause} AND {place}")).collect()
        }
        None => vec![clause],
    };
    // The path inline, not bound: the index on a declared field (`index_fields`) is on this
    // very expression, so the page is read from it in order.
    let (key, order) = match &query.sort {
        Some((field, order)) => {
            let direction = if *order == SortOrder::Asc { "ASC" } else { "DESC" };
            (field_expression(field)?, format!("sort_key {direction}, id {direction}"))
        }
        None => ("NULL".to_owned(), "id ASC".to_owned()),
    };
    // The total of a list with no filter, or by status alone, is kept; others are counted.
    let count = match query.filters.as_slice() {
        [] => "SELECT COALESCE(SUM(documents), 0) FROM list_counts WHERE resource = ?1".to_owned(),
        [Filter { field, .. }] if field == "status" => {
            "SELECT COALESCE(SUM(documents), 0) FROM list_counts WHERE resource = ?1 AND status = ?2"
                .to_owned()
        }
        _ => {
            let counts: Vec<String> =
                branches.iter().map(|b| format!("(SELECT COUNT(*) FROM documents WHERE {b})")).collect();
            format!("SELECT {}", counts.join(" + "))
        }
    };
    let selects: Vec<String> = branches
        .iter()
        .map(|b| format!("SELECT doc, id, {key} AS sort_key FROM documents WHERE {b}"))
        .collect();
    let page = format!(
        "{} ORDER BY {order} LIMIT {} OFFSET {}",
        selects.join(" UNION ALL "),
        query.limit as i64,
        query.offset as i64
    );
    Ok(ListStatements { count, page, values })
}

/// How a search finds its documents: an FTS5 query over words and keys, the filters the keys
/// cannot decide alone (checked on the documents' JSON), and how matches are ranked.
struct SearchPlan {
    /// `None` when there is nothing to look up in the index: every document of the resource.
    matching: Option<String>,
    checked: Vec<Filter>,
    /// The query's words, quoted: the first phrases of `matching`, which rank the matches.
    words: Vec<String>,
}

impl SearchPlan {
    fn new(query: &SearchQuery) -> Result<Self, StoreError> {
        // Every word must match; each is quoted, so FTS5 operators in user input are just text.
        let words: Vec<String> =
            query.text.split_whitespace().map(|word| format!("\"{}\"", word.replace('"', "\"\""))).collect();
        let mut terms = Vec::new();
        if !words.is_empty() {
            terms.push(format!("text : ({})", words.join(" ")));
        }
        let mut checked = Vec::new();
        for filter in &query.filters {
            json_path(&filter.field)?;
            let value = filter.value.as_str();
            let number = value.parse::<f64>().ok().map(number_form);
            // A filter on a nested field, an object or a long value has no key: the JSON decides.
            let keyed = is_field_name(&filter.field)
                && !UNKEYED_FIELDS.contains(&filter.field.as_str())
                && value.len() <= MAX_KEYED_VALUE
                && !value.starts_with(['{', '['])
                && number.as_ref().is_none_or(|form| form.len() <= MAX_KEYED_VALUE);
            if !keyed {
                checked.push(filter.clone());
                continue;
            }
            let mut tokens = vec![key_token(&filter.field, value)];
            // A number matches by value, which the key form only approximates (20 = 20.0, and
            // members compare as text): the keys find candidates, the JSON decides.
            if let Some(form) = number {
                tokens.push(key_token(&filter.field, &form));
                checked.push(filter.clone());
            }
            tokens.sort();
            tokens.dedup();
            terms.push(format!("keys : ({})", tokens.join(" OR ")));
        }
        let matching = (!terms.is_empty()).then(|| terms.join(" AND "));
        Ok(Self { matching, checked, words })
    }

    /// The `FROM` and `WHERE` of the matches (`k` their documents) and their parameters; only
    /// those whose docid is in `docids` when given.
    fn clauses(
        &self,
        storage: &Storage,
        docids: Option<std::ops::Range<i64>>,
    ) -> Result<(String, String, Vec<SqlValue>), StoreError> {
        let search_index = &storage.index;
        let mut values = vec![SqlValue::Text(storage.name.clone())];
        let from = match &self.matching {
            Some(_) => format!("{search_index} JOIN documents k ON k.docid = {search_index}.rowid"),
            None => "documents k".to_owned(),
        };
        let mut clause = "k.resource = ?1".to_owned();
        if let Some(matching) = &self.matching {
            values.push(SqlValue::Text(matching.clone()));
            clause.push_str(&format!(" AND {search_index} MATCH ?2"));
        }
        if let Some(docids) = docids {
            // On the index's rowid when there is a match, so FTS5 reads only that part of it.
            let docid =
                if self.matching.is_some() { format!("{search_index}.rowid") } else { "k.docid".to_owned() };
            values.extend([SqlValue::Integer(docids.start), SqlValue::Integer(docids.end)]);
            clause.push_str(&format!(
                " AND {docid} >= ?{} AND {docid} < ?{}",
                values.len() - 1,
                values.len()
            ));
        }
        clause.push_str(&filter_predicates(&self.checked, &mut values)?);
        Ok((from, clause, values))
    }
}

/// Where a match ranks: by BM25 score, negated as SQLite's `bm25()` is (lower is better; see
/// [`crate::rank`]) when there are words, else newest first
/// (documents without a time last, as SQLite orders NULL in `DESC`). Ties go to the lower id.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Score(Score),
    Newest(Reverse<Option<String>>),
}

/// A negated BM25 score, ordered like SQLite orders reals.
#[derive(PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The best `keep` matches seen so far, by rank then id.
struct TopK {
    keep: usize,
    heap: BinaryHeap<(Rank, String)>,
}

impl TopK {
    fn new(keep: usize) -> Self {
        Self { keep, heap: BinaryHeap::with_capacity(keep.min(1024) + 1) }
    }

    fn offer(&mut self, rank: Rank, id: &str) {
        if self.heap.len() < self.keep {
            self.heap.push((rank, id.to_owned()));
        } else if let Some(worst) = self.heap.peek()
            && (&rank, id) < (&worst.0, worst.1.as_str())
        {
            self.heap.pop();
            self.heap.push((rank, id.to_owned()));
        }
    }

    /// Ids, best first.
    fn into_ids(self) -> Vec<String> {
        self.heap.into_sorted_vec().into_iter().map(|(_, id)| id).collect()
    }
}

/// Counts of one keyword field's values.
#[derive(Default)]
struct Tally(HashMap<String, u64>);

impl Tally {
    fn add(&mut self, value: &str, count: u64) {
        match self.0.get_mut(value) {
            Some(n) => *n += count,
            None => {
                self.0.insert(value.to_owned(), count);
            }
        }
    }

    fn into_counts(self) -> BTreeMap<String, u64> {
        self.0.into_iter().collect()
    }
}

/// One pass over (part of) the matches: the total, the counts of `status` and `tags`, and the
/// best `keep` matches, without reading a document.
struct Pass {
    total: u64,
    status: Tally,
    tags: Tally,
    top: TopK,
}

impl Pass {
    /// Counts one match's `status` and `tags` (a JSON array) as its search columns have them.
    fn count_facets(&mut self, status: Option<&str>, tags: Option<&str>) -> Result<(), StoreError> {
        if let Some(value) = status {
            self.status.add(value, 1);
        }
        if let Some(list) = tags {
            let list: Vec<String> = serde_json::from_str(list).map_err(|e| corrupt("search key tags", e))?;
            list.iter().for_each(|tag| self.tags.add(tag, 1));
        }
        Ok(())
    }

    fn merge(mut self, other: Pass) -> Pass {
        self.total += other.total;
        other.status.0.iter().for_each(|(value, n)| self.status.add(value, *n));
        other.tags.0.iter().for_each(|(value, n)| self.tags.add(value, *n));
        other.top.heap.into_iter().for_each(|(rank, id)| self.top.offer(rank, &id));
        self
    }
}

/// The docids the matches lie between (first to last + 1), for splitting them into parts: read
/// from the ends of the index's match, or of the documents when there is no match to look up.
fn docid_span(
    conn: &Connection,
    plan: &SearchPlan,
    storage: &Storage,
) -> Result<std::ops::Range<i64>, StoreError> {
    let search_index = &storage.index;
    let (first, last): (Option<i64>, Option<i64>) = match &plan.matching {
        Some(matching) => {
            let end = |direction: &str| -> Result<Option<i64>, StoreError> {
                conn.prepare_cached(&format!(
                    "SELECT rowid FROM {search_index} WHERE {search_index} MATCH ?1 ORDER BY rowid {direction} LIMIT 1"
                ))
                .and_then(|mut stmt| stmt.query_row([matching], |row| row.get(0)).optional())
                .map_err(unavailable)
            };
            (end("ASC")?, end("DESC")?)
        }
        None => conn
            .query_row("SELECT min(docid), max(docid) FROM documents", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(unavailable)?,
    };
    Ok(match (first, last) {
        (Some(first), Some(last)) => first..last + 1,
        _ => 0..0,
    })
}

/// Column `column` of `row` as text, without a copy.
fn text<'r>(row: &'r rusqlite::Row<'_>, column: usize) -> Result<Option<&'r str>, StoreError> {
    row.get_ref(column).and_then(|value| Ok(value.as_str_or_null()?)).map_err(unavailable)
}

/// Scans the matches whose docid is in `docids`, reading each one's search columns; ranked by
/// `scoring` when the query has words.
fn scan(
    conn: &Connection,
    plan: &SearchPlan,
    storage: &Storage,
    docids: std::ops::Range<i64>,
    keep: usize,
    scoring: Option<&Scoring>,
) -> Result<Pass, StoreError> {
    let (from, clause, values) = plan.clauses(storage, Some(docids))?;
    let rank = match scoring {
        Some(_) => format!("nexus_frequencies({}, {})", storage.index, plan.words.len()),
        None => "k.last_updated".to_owned(),
    };
    let mut stmt = conn
        .prepare_cached(&format!("SELECT k.id, {rank}, k.status, k.tags, k.words FROM {from} WHERE {clause}"))
        .map_err(unavailable)?;
    let mut rows = stmt.query(params_from_iter(values.iter())).map_err(unavailable)?;
    let mut pass = Pass { total: 0, status: Tally::default(), tags: Tally::default(), top: TopK::new(keep) };
    let mut frequency = Vec::with_capacity(plan.words.len());
    while let Some(row) = rows.next().map_err(unavailable)? {
        pass.total += 1;
        let rank = match scoring {
            Some(scoring) => {
                frequency.clear();
                frequencies(row.get_ref(1).map_err(unavailable)?, &mut frequency)?;
                let words = row.get::<_, Option<i64>>(4).map_err(unavailable)?.unwrap_or(0) as f64;
                scoring.rank(&frequency, words)
            }
            None => Rank::Newest(Reverse(text(row, 1)?.map(str::to_owned))),
        };
        pass.top.offer(rank, text(row, 0)?.unwrap_or_default());
        pass.count_facets(text(row, 2)?, text(row, 3)?)?;
    }
    Ok(pass)
}

/// Reads what `nexus_frequencies` returned for one match onto `out`.
fn frequencies(value: rusqlite::types::ValueRef<'_>, out: &mut Vec<f64>) -> Result<(), StoreError> {
    crate::rank::push_frequencies(value, out).map_err(|kind| corrupt("word frequencies", kind))
}

/// How a ranked search scores (BM25, see [`crate::rank`]): the storage's statistics, from its
/// doc values, and each word's IDF.
struct Scoring {
    idf: Vec<f64>,
    average_length: f64,
}

impl Scoring {
    /// Reads the statistics from `values` and counts each word's matches in the index (not
    /// needed for one word, whose IDF changes no order; in an index shared with other
    /// resources, only this storage's matches).
    fn new(
        conn: &Connection,
        plan: &SearchPlan,
        storage: &Storage,
        values: &RwLock<Values>,
    ) -> Result<Self, StoreError> {
        let (documents, average_length) = values.read().expect("doc values poisoned").statistics();
        let mut idf = vec![1.0];
        if plan.words.len() > 1 {
            let index = &storage.index;
            let (sql, scope) = if storage.shares_index() {
                let sql = format!(
                    "SELECT COUNT(*) FROM {index} JOIN documents k ON k.docid = {index}.rowid \
                     WHERE {index} MATCH ?1 AND k.resource = ?2"
                );
                (sql, Some(&storage.name))
            } else {
                (format!("SELECT COUNT(*) FROM {index} WHERE {index} MATCH ?1"), None)
            };
            let mut count = conn.prepare_cached(&sql).map_err(unavailable)?;
            idf = plan
                .words
                .iter()
                .map(|word| {
                    let word = format!("text : {word}");
                    let hits: i64 = match scope {
                        Some(name) => count.query_row(params![word, name], |row| row.get(0)),
                        None => count.query_row([word], |row| row.get(0)),
                    }
                    .map_err(unavailable)?;
                    Ok(crate::rank::idf(documents, hits as f64))
                })
                .collect::<Result<_, StoreError>>()?;
        }
        Ok(Self { idf, average_length })
    }

    /// Where a match ranks with `frequency[p]` occurrences of word `p` in `words` words.
    fn rank(&self, frequency: &[f64], words: f64) -> Rank {
        Rank::Score(Score(-crate::rank::bm25(&self.idf, frequency, words, self.average_length)))
    }
}

/// [`scan`] over doc values: the index yields the matches whose docid is in `docids` and how
/// often each word occurs in them; ids, statuses, tags and lengths come from `values`.
fn scan_values(
    conn: &Connection,
    plan: &SearchPlan,
    storage: &Storage,
    docids: std::ops::Range<i64>,
    keep: usize,
    values: &RwLock<Values>,
    scoring: &Scoring,
) -> Result<Pass, StoreError> {
    let index = &storage.index;
    let words = plan.words.len();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT rowid, nexus_frequencies({index}, ?2) FROM {index} \
             WHERE {index} MATCH ?1 AND rowid >= ?3 AND rowid < ?4"
        ))
        .map_err(unavailable)?;
    let matching = plan.matching.as_deref().unwrap_or_default();
    let mut rows =
        stmt.query(params![matching, words as i64, docids.start, docids.end]).map_err(unavailable)?;
    // The matches first, and the values read after, so the writer never waits on the index.
    let (mut matches, mut frequencies) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next().map_err(unavailable)? {
        matches.push(row.get::<_, i64>(0).map_err(unavailable)?);
        self::frequencies(row.get_ref(1).map_err(unavailable)?, &mut frequencies)?;
    }
    drop(rows);
    if frequencies.len() != matches.len() * words {
        return Err(corrupt("word frequencies", "one per word and match"));
    }
    let mut pass = Pass { total: 0, status: Tally::default(), tags: Tally::default(), top: TopK::new(keep) };
    let mut missing = Vec::new();
    {
        let values = values.read().expect("doc values poisoned");
        let entries = values.entries();
        let (mut statuses, mut tag_sets) = (HashMap::<u32, u64>::new(), HashMap::<u32, u64>::new());
        let mut cursor = 0;
        for (docid, frequency) in matches.iter().zip(frequencies.chunks_exact(words)) {
            cursor = values.position(cursor, *docid);
            let Some(entry) = entries.get(cursor).filter(|entry| entry.docid == *docid) else {
                missing.push((*docid, frequency));
                continue;
            };
            pass.total += 1;
            pass.top.offer(scoring.rank(frequency, f64::from(entry.words)), &entry.id);
            *statuses.entry(entry.status).or_default() += 1;
            if entry.tags != 0 {
                *tag_sets.entry(entry.tags).or_default() += 1;
            }
        }
        for (code, n) in statuses {
            if let Some(status) = values.status(code) {
                pass.status.add(status, n);
            }
        }
        for (code, n) in tag_sets {
            values.tags(code).iter().for_each(|tag| pass.tags.add(tag, n));
        }
    }
    // Committed since the values were last applied: read from the documents table.
    let mut key = conn
        .prepare_cached("SELECT id, status, tags, words FROM documents WHERE docid = ?1")
        .map_err(unavailable)?;
    for (docid, frequency) in missing {
        let mut rows = key.query([docid]).map_err(unavailable)?;
        let Some(row) = rows.next().map_err(unavailable)? else { continue };
        pass.total += 1;
        let words = row.get::<_, Option<i64>>(3).map_err(unavailable)?.unwrap_or(0) as f64;
        pass.top.offer(scoring.rank(frequency, words), text(row, 0)?.unwrap_or_default());
        pass.count_facets(text(row, 1)?, text(row, 2)?)?;
    }
    Ok(pass)
}

/// The documents of `ids` in that order (one missing since is left out).
fn load_in_order(conn: &Connection, resource: &str, ids: &[String]) -> Result<Vec<ReadDocument>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(ids).map_err(|e| corrupt("ids", e))?;
    let mut found: HashMap<String, String> = conn
        .prepare_cached(
            "SELECT id, doc FROM documents WHERE resource = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![resource, list], |row| Ok((row.get(0)?, row.get(1)?)))?.collect()
        })
        .map_err(unavailable)?;
    ids.iter().filter_map(|id| found.remove(id)).map(|text| parse_doc(&text)).collect()
}

/// Counts of a field other than `status` and `tags` among the matches, read from the JSON:
/// `json_each` yields a scalar itself and each member of an array.
fn facet_from_documents(
    conn: &Connection,
    plan: &SearchPlan,
    storage: &Storage,
    field: &str,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let path = json_path(field)?;
    let (from, clause, mut values) = plan.clauses(storage, None)?;
    values.push(SqlValue::Text(path));
    let sql = format!(
        "SELECT CAST(j.value AS TEXT), COUNT(*) FROM {from}, json_each(k.doc, ?{}) j \
         WHERE {clause} GROUP BY 1",
        values.len()
    );
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_map(params_from_iter(values.iter()), |row| Ok((row.get(0)?, row.get(1)?)))?.collect()
        })
        .map_err(unavailable)
}

/// A document as a commit writes it: the columns, not the document.
struct Row {
    id: String,
    version: u64,
    last_updated: String,
    status: String,
    searchable_text: String,
    /// `searchable_text`'s length in words, for ranking.
    words: i64,
    json: String,
    /// `tags` as a JSON array, `None` when there are none.
    tags: Option<String>,
    /// The document's keys in the index (see [`search_keys`]).
    keys: String,
}

impl Row {
    /// The row of `doc`, which is dropped here rather than on the writer's thread.
    fn of(doc: ReadDocument) -> Result<Self, StoreError> {
        let (json, tags, keys) = Self::encode(&doc)?;
        let ReadDocument { id, version, last_updated, status, searchable_text, .. } = doc;
        let words = crate::rank::word_count(&searchable_text);
        Ok(Self { id, version, last_updated, status, searchable_text, words, json, tags, keys })
    }

    /// The row of a document the caller keeps.
    fn of_shared(doc: &ReadDocument) -> Result<Self, StoreError> {
        let (json, tags, keys) = Self::encode(doc)?;
        Ok(Self {
            id: doc.id.clone(),
            version: doc.version,
            last_updated: doc.last_updated.clone(),
            status: doc.status.clone(),
            searchable_text: doc.searchable_text.clone(),
            words: crate::rank::word_count(&doc.searchable_text),
            json,
            tags,
            keys,
        })
    }

    /// The document's JSON, its tags as JSON, and its search keys.
    fn encode(doc: &ReadDocument) -> Result<(String, Option<String>, String), StoreError> {
        let json = serde_json::to_string(doc).map_err(|e| corrupt("read-model document", e))?;
        let tags = if doc.tags.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&doc.tags).map_err(|e| corrupt("tags", e))?)
        };
        Ok((json, tags, document_keys(doc)))
    }
}

/// Where a resource's documents are: the name they are stored under (see the `models` table)
/// and the full-text index of that storage.
struct Storage {
    name: String,
    /// A generation's own FTS5 table (`search_<n>`): a search reads only its resource's entries,
    /// and retiring the generation drops the table. Storage from before generations (documents
    /// under the resource's own name) shares `search_index`.
    index: String,
}

impl Storage {
    fn named(name: String) -> Self {
        let index = generation_of(&name).map_or_else(|| SHARED_INDEX.to_owned(), |n| format!("search_{n}"));
        Self { name, index }
    }

    /// Whether this storage's entries are in the shared index (storage from before generations).
    fn shares_index(&self) -> bool {
        self.index == SHARED_INDEX
    }
}

/// The FTS5 table of storage from before generations.
const SHARED_INDEX: &str = "search_index";

/// The generation of a storage name `{resource}#{n}`.
fn generation_of(stored: &str) -> Option<i64> {
    stored.rsplit_once('#').and_then(|(_, n)| n.parse().ok())
}

/// Where `resource`'s documents are stored.
fn storage(conn: &Connection, resource: &str) -> rusqlite::Result<Storage> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT stored FROM models WHERE name = ?1")?
        .query_row([resource], |row| row.get(0))
        .optional()?;
    Ok(Storage::named(stored.unwrap_or_else(|| resource.to_owned())))
}

/// Where a commit writes `resource`: a resource written for the first time gets a generation of
/// its own (and so its own index); one stored under its own name, from before generations,
/// stays there until a rebuild moves it.
fn storage_for_commit(tx: &rusqlite::Transaction<'_>, resource: &str) -> rusqlite::Result<Storage> {
    let found = storage(tx, resource)?;
    if !found.shares_index() {
        return Ok(found);
    }
    let legacy: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM documents WHERE resource = ?1)")?
        .query_row([resource], |row| row.get(0))?;
    if legacy {
        return Ok(found);
    }
    new_generation(tx, resource)?;
    storage(tx, resource)
}

/// The FTS5 table of one generation's documents.
fn create_index(conn: &Connection, index: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE IF NOT EXISTS {index} USING fts5(text, keys, content = '', contentless_delete = 1)"
    ))
}

/// Points `resource` at a fresh, empty storage name (`{resource}#{generation}`) with its index.
fn new_generation(tx: &rusqlite::Transaction<'_>, resource: &str) -> rusqlite::Result<()> {
    let generation: i64 =
        tx.query_row("SELECT COALESCE(MAX(generation), 0) + 1 FROM models", [], |row| row.get(0))?;
    tx.execute(
        "INSERT INTO models (name, stored, generation) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET stored = excluded.stored, generation = excluded.generation",
        params![resource, format!("{resource}#{generation}"), generation],
    )?;
    create_index(tx, &format!("search_{generation}"))
}

/// Gives every generation written before generations had indexes of their own its index: built
/// from its documents, its entries taken out of the shared one. Runs when the store opens.
fn split_shared_index(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stored: Vec<String> = tx
        .prepare("SELECT stored FROM models UNION SELECT stored FROM retired")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for stored in stored {
        let storage = Storage::named(stored);
        if storage.shares_index() {
            continue;
        }
        let Storage { name, index: search_index } = storage;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = ?1)",
            [&search_index],
            |row| row.get(0),
        )?;
        if exists {
            continue;
        }
        create_index(&tx, &search_index)?;
        tx.execute(
            &format!(
                "INSERT INTO {search_index} (rowid, text, keys) \
                 SELECT docid, COALESCE(json_extract(doc, '$.searchableText'), ''), nexus_search_keys(doc) \
                 FROM documents WHERE resource = ?1 ORDER BY docid"
            ),
            [&name],
        )?;
        tx.execute(
            "DELETE FROM search_index WHERE rowid IN (SELECT docid FROM documents WHERE resource = ?1)",
            [&name],
        )?;
    }
    tx.commit()
}

/// Retires the storage `stored` (its documents and index entries are deleted in the
/// background) unless a resource other than `owner` is stored there. The caller points `owner`
/// elsewhere in the same transaction, so nothing reads or writes a retired name again.
fn retire_stored(tx: &rusqlite::Transaction<'_>, stored: &str, owner: &str) -> rusqlite::Result<()> {
    let shared: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM models WHERE stored = ?1 AND name <> ?2)",
        [stored, owner],
        |row| row.get(0),
    )?;
    // A name never written (a first rebuild's shadow) has nothing to delete.
    let written: bool = generation_of(stored).is_some()
        || tx.query_row("SELECT EXISTS (SELECT 1 FROM documents WHERE resource = ?1)", [stored], |row| {
            row.get(0)
        })?;
    if !shared && written {
        tx.execute("INSERT OR IGNORE INTO retired (stored, retired_at) VALUES (?1, unixepoch())", [stored])?;
    }
    Ok(())
}

/// How long a retired storage is kept before the sweep starts on it.
const SWEEP_GRACE_SECONDS: i64 = 5;

/// Documents a sweep deletes per transaction, so projection commits wait little behind it.
const SWEEP_CHUNK: i64 = 2000;

/// Deletes retired storage (see [`retire_stored`]) one chunk per transaction, between projection
/// commits, until the store is dropped.
fn sweep_loop(writer: std::sync::Weak<Mutex<Connection>>, doc_values: &DocValues) {
    loop {
        let swept = match writer.upgrade() {
            Some(writer) => sweep_chunk(&mut writer.lock().expect("read store writer poisoned"), doc_values),
            None => return,
        };
        let pause = match swept {
            Ok(true) => std::time::Duration::from_millis(2),
            Ok(false) => std::time::Duration::from_millis(250),
            Err(error) => {
                tracing::warn!(%error, "sweeping a retired read model failed; will retry");
                std::time::Duration::from_secs(1)
            }
        };
        std::thread::sleep(pause);
    }
}

/// Deletes up to [`SWEEP_CHUNK`] documents of one retired storage; `false` when none is left.
fn sweep_chunk(conn: &mut Connection, doc_values: &DocValues) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Queries that looked the storage up before it was retired get a few seconds to finish.
    let stored: Option<String> = tx
        .query_row(
            "SELECT stored FROM retired WHERE retired_at <= unixepoch() - ?1 LIMIT 1",
            [SWEEP_GRACE_SECONDS],
            |row| row.get(0),
        )
        .optional()?;
    let Some(stored) = stored else { return Ok(false) };
    let retired = Storage::named(stored);
    let stored = &retired.name;
    // Through the (resource, id) index, then in docid order.
    let mut docids: Vec<i64> = tx
        .prepare_cached("SELECT docid FROM documents WHERE resource = ?1 LIMIT ?2")?
        .query_map(params![stored, SWEEP_CHUNK], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    docids.sort_unstable();
    if docids.is_empty() {
        // A generation's index goes last: a search that looked the storage up before the swap
        // may still be reading it.
        if !retired.shares_index() {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", retired.index))?;
        }
        tx.execute("DELETE FROM retired WHERE stored = ?1", [&stored])?;
        tx.execute("DELETE FROM list_counts WHERE resource = ?1", [&stored])?;
        doc_values.forget(stored);
    } else {
        if retired.shares_index() {
            // The shared index, by ascending docid, so FTS5 flushes its deletions once.
            let mut unindex = tx.prepare_cached("DELETE FROM search_index WHERE rowid = ?1")?;
            for docid in &docids {
                unindex.execute([docid])?;
            }
        }
        let mut delete = tx.prepare_cached("DELETE FROM documents WHERE docid = ?1")?;
        for docid in &docids {
            delete.execute([docid])?;
        }
    }
    tx.commit()?;
    Ok(true)
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
                let tx = conn.unchecked_transaction().map_err(unavailable)?;
                let resource = storage(&tx, &resource).map_err(unavailable)?.name;
                // One query for the whole batch: the ids travel as a JSON array.
                let ids = serde_json::to_string(&ids).map_err(|e| corrupt("ids", e))?;
                let mut stmt = tx
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
        // Everything but the SQL is done here, before the writer's turn: the writer is the one
        // thread a rebuild cannot add to.
        let rows = docs.into_iter().map(Row::of).collect::<Result<Vec<_>, _>>()?;
        self.commit_rows(projection, resource, rows, position, Guard::Newer).await
    }

    async fn replace(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError> {
        let rows = docs.into_iter().map(Row::of).collect::<Result<Vec<_>, _>>()?;
        self.commit_rows(projection, resource, rows, position, Guard::SameOrNewer).await
    }

    async fn commit_shared(
        &self,
        projection: &str,
        resource: &str,
        docs: Arc<[ReadDocument]>,
        position: u64,
    ) -> Result<(), StoreError> {
        let rows = docs.iter().map(Row::of_shared).collect::<Result<Vec<_>, _>>()?;
        self.commit_rows(projection, resource, rows, position, Guard::Newer).await
    }

    async fn get(&self, resource: &str, id: &str) -> Result<Option<ReadDocument>, StoreError> {
        let (resource, id) = (resource.to_owned(), id.to_owned());
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(unavailable)?;
                let resource = storage(&tx, &resource).map_err(unavailable)?.name;
                let text: Option<String> = tx
                    .prepare_cached("SELECT doc FROM documents WHERE resource = ?1 AND id = ?2")
                    .and_then(|mut stmt| stmt.query_row(params![resource, id], |row| row.get(0)).optional())
                    .map_err(unavailable)?;
                text.as_deref().map(parse_doc).transpose()
            })
            .await
    }

    async fn list(&self, resource: &str, query: &ListQuery) -> Result<Page, StoreError> {
        let ListStatements { count, page, mut values } = {
            let indexed = self.indexed_fields.read().expect("indexed fields poisoned");
            list_statements(resource, indexed.get(resource), query)?
        };
        let resource = resource.to_owned();
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(unavailable)?;
                let conn = &*tx;
                values[0] = SqlValue::Text(storage(conn, &resource).map_err(unavailable)?.name);
                let total: u64 = conn
                    .prepare_cached(&count)
                    .and_then(|mut stmt| {
                        let used = stmt.parameter_count();
                        stmt.query_row(params_from_iter(values[..used].iter()), |row| row.get(0))
                    })
                    .map_err(unavailable)?;
                let mut stmt = conn.prepare_cached(&page).map_err(unavailable)?;
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

    async fn index_fields(&self, resource: &str, fields: &[&str]) -> Result<(), StoreError> {
        // One partial index per field over the model's documents in every storage it may have
        // (see `model_term`), so a rebuild's new generation is covered from its first document,
        // and the documents of other models are not in it: an index over every document cost
        // each commit of every model a B-tree write per declared field, of all models. Read
        // forward or backward, it gives a sorted list's page in order (ties by id, reversed in a
        // descending list), and it finds the candidates of a filter on the field (see
        // `indexed_places`).
        let model = model_term(resource)?;
        let fields: Vec<String> =
            fields.iter().filter(|field| **field != "status").map(|field| (*field).to_owned()).collect();
        let statements = fields
            .iter()
            .map(|field| {
                Ok(format!(
                    "CREATE INDEX IF NOT EXISTS \"documents_by_{resource}/{field}\" ON documents (resource, {}, id) \
                     WHERE {model}",
                    field_expression(field)?
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(move |tx| {
            for statement in &statements {
                tx.execute_batch(statement)?;
            }
            Ok(())
        })
        .await?;
        self.indexed_fields
            .write()
            .expect("indexed fields poisoned")
            .entry(resource.to_owned())
            .or_default()
            .extend(fields);
        Ok(())
    }

    async fn clear(&self, resource: &str, projection: &str) -> Result<(), StoreError> {
        let (resource, projection) = (resource.to_owned(), projection.to_owned());
        self.write(move |tx| {
            let stored = storage(tx, &resource)?.name;
            retire_stored(tx, &stored, &resource)?;
            new_generation(tx, &resource)?;
            tx.execute("DELETE FROM checkpoints WHERE projection = ?1", [&projection])?;
            Ok(())
        })
        .await
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), StoreError> {
        let (live, shadow) = (live.to_owned(), shadow.to_owned());
        let (old, new) = self
            .write(move |tx| {
                let (old, new) = (storage(tx, &live)?.name, storage(tx, &shadow)?.name);
                if old != new {
                    retire_stored(tx, &old, &live)?;
                }
                // The shadow moves to a fresh storage, so the next rebuild cannot write into live.
                new_generation(tx, &shadow)?;
                tx.execute(
                    "INSERT INTO models (name, stored, generation) \
                 VALUES (?1, ?2, (SELECT MAX(generation) FROM models)) \
                 ON CONFLICT (name) DO UPDATE SET stored = excluded.stored",
                    [&live, &new],
                )?;
                // The one place a checkpoint moves back: the rebuilt model comes with its own.
                tx.execute(
                    "INSERT INTO checkpoints (projection, position) \
                 SELECT ?1, position FROM checkpoints WHERE projection = ?2 \
                 ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
                    [&live, &shadow],
                )?;
                tx.execute("DELETE FROM checkpoints WHERE projection = ?1", [&shadow])?;
                Ok((old, new))
            })
            .await?;
        // A model that was searched gets its rebuilt generation's doc values loaded now, in the
        // background, rather than by the next search.
        if old != new && self.doc_values.registered(&old) {
            let doc_values = self.doc_values.clone();
            // Runs on the blocking pool whether or not its result is awaited.
            drop(self.readers.spawn(move |conn| {
                if let Err(error) = doc_values.get(conn, &new) {
                    tracing::warn!(%error, storage = %new, "loading a swapped-in model's doc values failed");
                }
                Ok(())
            }));
        }
        Ok(())
    }

    async fn search(&self, resource: &str, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let plan = Arc::new(SearchPlan::new(query)?);
        let query = Arc::new(query.clone());
        let resource = resource.to_owned();
        let (storage, docids, ranked) = {
            let (plan, doc_values) = (plan.clone(), self.doc_values.clone());
            self.readers
                .run(move |conn| {
                    let tx = conn.unchecked_transaction().map_err(unavailable)?;
                    let storage = storage(&tx, &resource).map_err(unavailable)?;
                    let docids = docid_span(&tx, &plan, &storage)?;
                    drop(tx);
                    // A ranked search scores with the doc values' statistics, and reads its
                    // matches from them unless a filter needs the documents' JSON or the index
                    // is shared with other resources (storage from before generations).
                    let ranked = if plan.words.is_empty() {
                        None
                    } else {
                        let values = doc_values.get(conn, &storage.name)?;
                        let scoring = Scoring::new(conn, &plan, &storage, &values)?;
                        let read_values = plan.checked.is_empty() && !storage.shares_index();
                        Some((read_values.then_some(values), Arc::new(scoring)))
                    };
                    Ok((Arc::new(storage), docids, ranked))
                })
                .await?
        };
        // The matches are scanned in parts by docid, in parallel: ranking and counting 80,000
        // matches is CPU work (a BM25 score and a key lookup each). Each part reads its
        // own snapshot, so a commit landing between their starts shows in one part and not the
        // other; every document is still counted at most once.
        let keep = query.offset.saturating_add(query.limit);
        let width = (docids.end - docids.start) / self.search_parts as i64 + 1;
        let parts: Vec<_> = (0..self.search_parts as i64)
            .map(|part| {
                let (plan, storage) = (plan.clone(), storage.clone());
                let start = docids.start + part * width;
                let docids = start..(start + width).min(docids.end);
                let ranked = ranked.clone();
                self.readers.spawn(move |conn| match ranked {
                    Some((Some(values), scoring)) => {
                        scan_values(conn, &plan, &storage, docids, keep, &values, &scoring)
                    }
                    Some((None, scoring)) => scan(conn, &plan, &storage, docids, keep, Some(&scoring)),
                    None => scan(conn, &plan, &storage, docids, keep, None),
                })
            })
            .collect();
        let mut pass: Option<Pass> = None;
        for part in parts {
            let part = part.await?;
            pass = Some(match pass {
                Some(pass) => pass.merge(part),
                None => part,
            });
        }
        let pass = pass.expect("at least one part");
        let total = pass.total;
        self.readers
            .run(move |conn| {
                let page: Vec<String> = pass.top.into_ids().into_iter().skip(query.offset).collect();
                let items = load_in_order(conn, &storage.name, &page)?;
                let (mut status, mut tags) = (Some(pass.status), Some(pass.tags));
                let mut facets = BTreeMap::new();
                for field in &query.facets {
                    let counts = match field.as_str() {
                        "status" => status.take().map(Tally::into_counts),
                        "tags" => tags.take().map(Tally::into_counts),
                        _ => None,
                    };
                    let counts = match counts {
                        Some(counts) => counts,
                        None => facet_from_documents(conn, &plan, &storage, field)?,
                    };
                    facets.insert(field.clone(), counts);
                }
                Ok(SearchResults { items, total, facets })
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.readers.run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::ReadStore;

    /// A document at `version` with `status`, found by `text`.
    fn document(id: &str, version: u64, status: &str, text: &str) -> ReadDocument {
        let mut doc = ReadDocument::empty(id, id);
        doc.version = version;
        doc.status = status.into();
        doc.searchable_text = text.into();
        doc
    }

    /// The first ten matches of `text`, with counts of `facets`.
    fn search_for(text: &str, facets: &[&str]) -> SearchQuery {
        let facets = facets.iter().map(|facet| (*facet).to_owned()).collect();
        SearchQuery { text: text.into(), filters: vec![], facets, limit: 10, offset: 0 }
    }

    /// The ids found, best first.
    fn ids(found: &SearchResults) -> Vec<&str> {
        found.items.iter().map(|d| d.id.as_str()).collect()
    }

    /// The plan SQLite makes for `sql` (bound to `values`), one line per step.
    fn plan(conn: &Connection, sql: &str, values: &[SqlValue]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(params_from_iter(values), |row| row.get::<_, String>(3)).unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("\n")
    }

    /// A declared field's index holds its model's documents alone, in every storage the model
    /// gets (a rebuild's too), and the model's lists, sorted or filtered on the field, read it.
    #[tokio::test]
    async fn a_declared_field_is_indexed_for_its_model_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path()).unwrap();
        store.index_fields("orders", &["total"]).await.unwrap();
        let with_total = |id: &str, total: i64| {
            let mut doc = document(id, 1, "PLACED", "");
            doc.set("total", total);
            doc
        };
        store.commit("orders", "orders", vec![with_total("o-1", 20), with_total("o-2", 5)], 2).await.unwrap();
        store.commit("customers", "customers", vec![with_total("c-1", 7)], 2).await.unwrap();
        store.commit("orders~rebuild", "orders~rebuild", vec![with_total("o-3", 9)], 3).await.unwrap();
        let conn = Connection::open(dir.path().join("read.db")).unwrap();
        // Partial: its `WHERE` is the model's term, which the orders of both storages meet.
        let sql: String = conn
            .query_row("SELECT sql FROM sqlite_schema WHERE name = 'documents_by_orders/total'", [], |row| {
                row.get(0)
            })
            .unwrap();
        let term = model_term("orders").unwrap();
        assert!(sql.ends_with(&format!("WHERE {term}")), "{sql}");
        let in_index: Vec<String> = conn
            .prepare(&format!(
                "SELECT id FROM documents INDEXED BY \"documents_by_orders/total\" WHERE {term} ORDER BY id"
            ))
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(in_index, ["o-1", "o-2", "o-3"]);

        let indexed: HashSet<String> = ["total".to_owned()].into();
        let sorted = ListQuery {
            filters: vec![],
            sort: Some(("total".into(), SortOrder::Desc)),
            limit: 10,
            offset: 0,
        };
        let filtered = ListQuery {
            filters: vec![Filter { field: "total".into(), value: "20".into() }],
            sort: None,
            limit: 10,
            offset: 0,
        };
        for query in [sorted, filtered] {
            let ListStatements { page, mut values, .. } =
                list_statements("orders", Some(&indexed), &query).unwrap();
            values[0] = SqlValue::Text(storage(&conn, "orders").unwrap().name);
            let plan = plan(&conn, &page, &values);
            assert!(plan.contains("documents_by_orders/total"), "{query:?}: {plan}");
        }
        let found = store
            .list(
                "orders",
                &ListQuery {
                    filters: vec![],
                    sort: Some(("total".into(), SortOrder::Asc)),
                    limit: 10,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(found.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["o-2", "o-1"]);
        assert!(matches!(
            store.index_fields("bad name", &["total"]).await,
            Err(StoreError::InvalidRequest(_))
        ));
    }

    /// An index on a declared field over every model's documents, which a store made before
    /// each model had its own, is dropped when the store opens.
    #[tokio::test]
    async fn an_index_over_every_model_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteReadStore::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("read.db")).unwrap();
        conn.execute_batch(
            "CREATE INDEX \"documents_by_total\" ON documents (resource, json_extract(doc, '$.total'), id)",
        )
        .unwrap();
        drop(conn);
        let store = SqliteReadStore::open(dir.path()).unwrap();
        store.index_fields("orders", &["total"]).await.unwrap();
        let conn = Connection::open(dir.path().join("read.db")).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND name GLOB 'documents_by_*' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["documents_by_orders/total", "documents_by_status"]);
    }

    /// A `read.db` written before the search keys existed still answers searches, filters and
    /// facets once opened: migration 3 backfills them.
    #[tokio::test]
    async fn an_older_read_db_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let mut doc = ReadDocument::empty("o-1", "o-1");
        doc.version = 1;
        doc.last_updated = "2026-01-01T00:00:00.000Z".into();
        doc.status = "PLACED".into();
        doc.tags = vec!["gift".into()];
        doc.searchable_text = "red widget".into();
        doc.set("total", 20);
        {
            let mut conn = Connection::open(dir.path().join("read.db")).unwrap();
            migrate(&mut conn, &MIGRATIONS[..2]).unwrap();
            // What the commit of that version wrote.
            conn.execute(
                "INSERT INTO documents (resource, id, version, doc) VALUES ('orders', 'o-1', 1, ?1)",
                [serde_json::to_string(&doc).unwrap()],
            )
            .unwrap();
            conn.execute("INSERT INTO search_keys (resource, id) VALUES ('orders', 'o-1')", []).unwrap();
            conn.execute("INSERT INTO search_index (rowid, text) VALUES (1, 'red widget')", []).unwrap();
        }
        let store = SqliteReadStore::open(dir.path()).unwrap();
        let query = SearchQuery {
            text: "widget".into(),
            filters: vec![Filter { field: "total".into(), value: "20".into() }],
            facets: vec!["status".into(), "tags".into()],
            limit: 10,
            offset: 0,
        };
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(found.items, [doc]);
        assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1)].into());
        assert_eq!(found.facets["tags"], [("gift".to_owned(), 1)].into());
        // Migration 5 gave it its length in words, which ranking reads.
        let words: i64 = Connection::open(dir.path().join("read.db"))
            .unwrap()
            .query_row("SELECT words FROM documents WHERE id = 'o-1'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(words, 2);
    }

    /// Migration 6 moves the search keys into `documents`: a document keeps its docid, so its
    /// index entry still finds it, and a document that had no search key is kept, with a new one.
    #[tokio::test]
    async fn merging_the_search_keys_keeps_docids_and_every_document() {
        let dir = tempfile::tempdir().unwrap();
        let (keyed, unkeyed) = (document("o-1", 1, "PLACED", "red widget"), document("o-2", 1, "", "blue"));
        {
            let mut conn = Connection::open(dir.path().join("read.db")).unwrap();
            register_search_keys(&conn).unwrap();
            migrate(&mut conn, &MIGRATIONS[..5]).unwrap();
            conn.execute_batch(
                "INSERT INTO search_keys (docid, resource, id, status, words) VALUES (7, 'orders', 'o-1', 'PLACED', 2);
                 INSERT INTO search_index (rowid, text, keys) VALUES (7, 'red widget', '');",
            )
            .unwrap();
            for doc in [&keyed, &unkeyed] {
                conn.execute(
                    "INSERT INTO documents (resource, id, version, doc) VALUES ('orders', ?1, 1, ?2)",
                    params![doc.id, serde_json::to_string(doc).unwrap()],
                )
                .unwrap();
            }
        }
        let store = SqliteReadStore::open(dir.path()).unwrap();
        let found = store.search("orders", &search_for("widget", &["status"])).await.unwrap();
        assert_eq!(found.items, [keyed]);
        assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1)].into());
        assert_eq!(store.get("orders", "o-2").await.unwrap(), Some(unkeyed));
        let conn = Connection::open(dir.path().join("read.db")).unwrap();
        let docids: Vec<(String, i64)> = conn
            .prepare("SELECT id, docid FROM documents ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(docids, [("o-1".to_owned(), 7), ("o-2".to_owned(), 8)]);
        let search_keys: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'search_keys'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(search_keys, 0);
    }

    /// A search's doc values follow later commits, and a match committed behind their back is
    /// read from the documents table: totals, facets and ranking are the same either way.
    #[tokio::test]
    async fn doc_values_follow_commits_and_what_they_lack_is_read_from_the_documents() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path()).unwrap();
        // A generation of its own, as every model gets once cleared or rebuilt.
        store.clear("orders", "p").await.unwrap();
        let docs =
            vec![document("a", 1, "PLACED", "widget one"), document("b", 1, "PLACED", "widget widget two")];
        store.commit("p", "orders", docs, 1).await.unwrap();
        let query = search_for("widget", &["status"]);
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(ids(&found), ["b", "a"]);
        store
            .commit("p", "orders", vec![document("a", 2, "SHIPPED", "widget widget widget")], 2)
            .await
            .unwrap();
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(ids(&found), ["a", "b"]);
        assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1), ("SHIPPED".to_owned(), 1)].into());

        // A document the doc values never heard of (here, written through a second store; in
        // one store, committed and not yet applied): the documents table answers for it.
        let other = SqliteReadStore::open(dir.path()).unwrap();
        other.commit("p", "orders", vec![document("c", 1, "CANCELLED", "widget")], 3).await.unwrap();
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(found.total, 3);
        assert_eq!(ids(&found), ["a", "b", "c"]);
        assert_eq!(
            found.facets["status"],
            [("CANCELLED".to_owned(), 1), ("PLACED".to_owned(), 1), ("SHIPPED".to_owned(), 1)].into()
        );

        // A rebuilt model swapped in for a searched one has its doc values loaded at once.
        store
            .commit("orders~rebuild", "orders~rebuild", vec![document("d", 1, "PLACED", "widget")], 4)
            .await
            .unwrap();
        store.swap("orders", "orders~rebuild").await.unwrap();
        let live = store.readers.run(|conn| storage(conn, "orders").map_err(unavailable)).await.unwrap().name;
        let started = std::time::Instant::now();
        while !store.doc_values.registered(&live) {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{live} never loaded");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(ids(&found), ["d"]);
    }

    /// Searches while the writer commits new documents and changes others' status: each search
    /// counts every match once (its status counts add up to its total), and never fewer than the
    /// one before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn searches_during_commits_count_every_match_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
        let order = |n: u64, version: u64| {
            let status = if version % 2 == 1 { "PLACED" } else { "SHIPPED" };
            document(&format!("o-{n}"), version, status, &format!("widget o {n}"))
        };
        store.commit("p", "orders", (0..500).map(|n| order(n, 1)).collect(), 1).await.unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..40u64 {
                    // 25 new documents, and 100 old ones change status.
                    let mut docs: Vec<_> = (0..25).map(|n| order(500 + round * 25 + n, 1)).collect();
                    docs.extend((0..100).map(|n| order((round * 100 + n) % 500, 2 + round)));
                    store.commit("p", "orders", docs, 2 + round).await.unwrap();
                }
            })
        };
        let query = SearchQuery { limit: 5, ..search_for("widget", &["status"]) };
        let mut last = 0;
        while !writer.is_finished() {
            let found = store.search("orders", &query).await.unwrap();
            assert_eq!(found.facets["status"].values().sum::<u64>(), found.total);
            assert!(found.total >= last.max(500), "{} after {last}", found.total);
            last = found.total;
        }
        writer.await.unwrap();
        let found = store.search("orders", &query).await.unwrap();
        assert_eq!(found.total, 1500);
        assert_eq!(found.facets["status"].values().sum::<u64>(), 1500);
    }

    /// Of two words, the rarer one weighs more: "b" has it twice and the common word once, "a"
    /// the other way round, both as long; equal weights would tie them, and "a" would come first
    /// on its id. (A word in half the documents or more weighs next to nothing, as in `bm25()`.)
    #[tokio::test]
    async fn a_rarer_word_weighs_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path()).unwrap();
        let fillers = ["c", "d", "e", "f", "g"].map(|id| (id, "common x y"));
        let docs = [("a", "rare common common"), ("b", "rare rare common")]
            .into_iter()
            .chain(fillers)
            .map(|(id, text)| document(id, 1, "", text))
            .collect();
        store.commit("p", "notes", docs, 1).await.unwrap();
        let found = store.search("notes", &search_for("common rare", &[])).await.unwrap();
        assert_eq!(ids(&found), ["b", "a"]);
    }

    /// A swap answers from the rebuilt model at once and leaves the old one retired; the sweeper
    /// then deletes it, with its index entries, over several chunks, while the
    /// live model keeps answering.
    #[tokio::test]
    async fn a_swapped_out_model_is_swept_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path()).unwrap();
        let docs = |word: &str| -> Vec<ReadDocument> {
            (0..2 * SWEEP_CHUNK + 5)
                .map(|n| document(&format!("o-{n}"), 1, "", &format!("{word} o-{n}")))
                .collect()
        };
        store.commit("orders", "orders", docs("old"), 10).await.unwrap();
        store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
        store.commit("orders~rebuild", "orders~rebuild", docs("new"), 10).await.unwrap();
        store.swap("orders", "orders~rebuild").await.unwrap();
        let search = |text: &str| SearchQuery { limit: 1, ..search_for(text, &[]) };
        assert_eq!(store.search("orders", &search("new")).await.unwrap().total, 2 * SWEEP_CHUNK as u64 + 5);
        assert_eq!(store.search("orders", &search("old")).await.unwrap().total, 0);
        let reader = Connection::open(dir.path().join("read.db")).unwrap();
        let count = |sql: &str| -> i64 { reader.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM retired"), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while count("SELECT COUNT(*) FROM retired") > 0 {
            assert!(std::time::Instant::now() < deadline, "the retired model was not swept");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let live = 2 * SWEEP_CHUNK + 5;
        assert_eq!(count("SELECT COUNT(*) FROM documents"), live);
        // Generation 1 (the first commit) is gone with its index; 2 is live, 3 the next shadow.
        let exists =
            |table: &str| count(&format!("SELECT COUNT(*) FROM sqlite_schema WHERE name = '{table}'")) == 1;
        assert!(!exists("search_1") && exists("search_2") && exists("search_3"));
        assert_eq!(count("SELECT COUNT(*) FROM search_2 WHERE search_2 MATCH 'new'"), live);
        assert_eq!(count("SELECT COUNT(*) FROM search_index"), 0);
        assert_eq!(store.get("orders", "o-3").await.unwrap().unwrap().searchable_text, "new o-3");
    }

    /// A generation written when all generations shared `search_index` gets an index of its own
    /// when the store opens, and its entries leave the shared one.
    #[tokio::test]
    async fn a_shared_index_is_split_by_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut doc = ReadDocument::empty("o-1", "o-1");
        doc.version = 1;
        doc.status = "PLACED".into();
        doc.searchable_text = "red widget".into();
        {
            let mut conn = Connection::open(dir.path().join("read.db")).unwrap();
            register_search_keys(&conn).unwrap();
            migrate(&mut conn, &MIGRATIONS[..3]).unwrap();
            // What a commit after a rebuild's swap wrote before this version.
            conn.execute_batch(
                "INSERT INTO models (name, stored, generation) VALUES ('orders', 'orders~rebuild#1', 1);
                 INSERT INTO search_keys (docid, resource, id, status) VALUES (7, 'orders~rebuild#1', 'o-1', 'PLACED');
                 INSERT INTO search_index (rowid, text, keys) VALUES (7, 'red widget', '');",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO documents (resource, id, version, doc) VALUES ('orders~rebuild#1', 'o-1', 1, ?1)",
                [serde_json::to_string(&doc).unwrap()],
            )
            .unwrap();
        }
        let store = SqliteReadStore::open(dir.path()).unwrap();
        let found = store.search("orders", &search_for("widget", &["status"])).await.unwrap();
        assert_eq!(found.items, [doc]);
        assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1)].into());
        let conn = Connection::open(dir.path().join("read.db")).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM search_index"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM search_1 WHERE search_1 MATCH 'widget'"), 1);
    }

    /// The keys a commit writes from the document are those of its JSON.
    #[test]
    fn document_keys_are_the_keys_of_its_json() {
        let mut doc = ReadDocument::empty("o-1", "o-1");
        doc.version = 3;
        doc.status = "PLACED".into();
        doc.tags = vec!["gift".into(), "x".repeat(65)];
        doc.searchable_text = "red widget".into();
        doc.metadata.insert("by".into(), "u-1".into());
        doc.set("total", 20.0);
        doc.set("customerId", "c-9");
        doc.set("items", serde_json::json!([{"sku": "a"}, "loose", 2]));
        let json = serde_json::to_value(&doc).unwrap();
        let sorted = |keys: String| {
            let mut tokens: Vec<String> = keys.split(' ').map(str::to_owned).collect();
            tokens.sort();
            tokens
        };
        assert_eq!(sorted(document_keys(&doc)), sorted(search_keys(json.as_object().unwrap())));
        assert_eq!(sorted(document_keys(&doc)).len(), 6);
    }

    #[test]
    fn key_tokens_are_the_hex_of_field_and_value() {
        assert_eq!(key_token("a", "b"), "611F62");
        let doc = serde_json::json!({"a": "b", "n": 20.0, "t": true, "l": ["b", 2, false, {"x": 1}], "id": "x",
            "o": {"a": "b"}, "searchableText": "words", "odd key": "v", "z": null, "long": "x".repeat(65)});
        let keys = search_keys(doc.as_object().unwrap());
        let expected = [("a", "b"), ("l", "b"), ("l", "2"), ("l", "0"), ("n", "20"), ("t", "true")];
        let mut expected: Vec<String> = expected.iter().map(|(f, v)| key_token(f, v)).collect();
        let mut found: Vec<&str> = keys.split(' ').collect();
        expected.sort();
        found.sort();
        assert_eq!(found, expected);
    }
}
