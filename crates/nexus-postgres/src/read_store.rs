//! The read store on PostgreSQL: JSONB documents per resource type, and projection checkpoints.
//!
//! Query semantics mirror `nexus-sqlite` exactly (the conformance suite holds both to them):
//! filters match arrays by membership, numbers by value, everything else by its text form
//! (booleans as `true`/`false`); sorting puts missing and null values first, then numbers and
//! booleans (as 0/1), then text compared bytewise, with `id` breaking ties.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures_util::future::try_join_all;
use nexus_core::ports::{BM25_B, BM25_K1, Filter};
use nexus_core::{
    ListQuery, Page, ReadDocument, ReadStore, SearchQuery, SearchResults, SortOrder, StoreError,
};
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use crate::{bigint, corrupt, pool_unavailable, unavailable, unsigned};

/// PostgreSQL read store. Written only by projection runners, any number of processes.
///
/// A model's documents live under a storage name (`nexus_storage(name)`, migration 8; called as
/// `(SELECT nexus_storage($1))`, so a statement looks it up once, not once a row): clearing
/// a model or swapping a rebuilt one in repoints the name, and the generation it pointed to is
/// retired, then deleted in the background by [`sweep`] once no statement can still be reading
/// it.
pub struct PostgresReadStore {
    pool: Pool,
    /// Held by the sweep under way in this process.
    sweeping: Arc<tokio::sync::Mutex<()>>,
    /// How many parts a search for words is cut into, by ranges of ids, each run on a
    /// connection of its own at the same time (see [`PostgresReadStore::split_points`]).
    search_parts: AtomicUsize,
    /// The ids that cut searches into parts, when they were read, and for how many parts.
    split_points: std::sync::Mutex<Option<SplitPoints>>,
}

/// Split points (see [`PostgresReadStore::search_split_points`]): when they were read, for how
/// many parts, and the ids.
type SplitPoints = (Instant, usize, Arc<[String]>);

/// How long the ids that cut searches into parts are kept before they are read again (they
/// come from the planner's statistics, which only change when the postings are analyzed).
const SPLIT_POINTS_TTL: Duration = Duration::from_secs(60);

/// The deepest page a search is cut into parts for: each part gives its best `offset + limit`
/// matches, so past this one statement with SQL's own `OFFSET` sends back less.
const MAX_PARTED_OFFSET: usize = 1_000;

/// How long a retired generation stays before the sweep deletes it: statements that resolved
/// the model's name before it was repointed finish reading (and a late commit lands) meanwhile.
const SWEEP_GRACE_SECS: f64 = 5.0;

/// Documents deleted per sweep transaction.
const SWEEP_CHUNK: i64 = 5_000;

impl PostgresReadStore {
    /// The store on `pool`; sweeps what an earlier process retired and did not delete.
    pub(crate) fn new(pool: Pool) -> Self {
        // One part a core, up to 4, like the embedded store's scans: a search waits on the
        // longest part, and the parts of one search only gain while they have cores to run on.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let store = Self {
            pool,
            sweeping: Arc::default(),
            search_parts: AtomicUsize::new(parts),
            split_points: std::sync::Mutex::new(None),
        };
        store.sweep_later(Duration::ZERO);
        store
    }

    /// Generations retired and not yet deleted.
    pub async fn retired_models(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT COUNT(*) FROM retired_models", &[]).await?;
        unsigned(rows[0].try_get(0).map_err(|e| corrupt("count", e))?, "count")
    }

    /// Cuts each search for words into `parts` (at least 1) that run at the same time. The
    /// default is one a core of this machine, up to 4; 1 runs every search as one statement.
    pub fn set_search_parts(&self, parts: usize) {
        self.search_parts.store(parts.max(1), Ordering::Relaxed);
        *self.split_points.lock().expect("split points poisoned") = None;
    }

    /// The ids that cut a search for words into parts: part `i` holds the ids from point `i - 1`
    /// (inclusive) to point `i` (exclusive). They are quantiles of the postings' ids from the
    /// planner's statistics (`pg_stats`), so each part holds about as many postings of any
    /// word whose documents' ids are spread like the others'; none before the postings are
    /// analyzed (autovacuum does, once a table has grown), and then a search is one part.
    pub async fn search_split_points(&self) -> Result<Arc<[String]>, StoreError> {
        let parts = self.search_parts.load(Ordering::Relaxed);
        if parts == 1 {
            return Ok(Arc::from([]));
        }
        if let Some((read, cut, points)) = &*self.split_points.lock().expect("split points poisoned")
            && read.elapsed() < SPLIT_POINTS_TTL
            && *cut == parts
        {
            return Ok(points.clone());
        }
        let rows = self
            .query(
                "SELECT histogram_bounds::text::text[] FROM pg_stats \
                 WHERE schemaname = current_schema() AND tablename = 'search_postings' AND attname = 'id'",
                &[],
            )
            .await?;
        let bounds: Vec<String> = match rows.first() {
            Some(row) => row.try_get::<_, Option<Vec<String>>>(0).map_err(|e| corrupt("statistics", e))?,
            None => None,
        }
        .unwrap_or_default();
        let mut points: Vec<String> = Vec::new();
        if bounds.len() >= parts {
            for n in 1..parts {
                let point = &bounds[n * (bounds.len() - 1) / parts];
                if points.last() != Some(point) {
                    points.push(point.clone());
                }
            }
        }
        let points: Arc<[String]> = points.into();
        *self.split_points.lock().expect("split points poisoned") =
            Some((Instant::now(), parts, points.clone()));
        Ok(points)
    }

    /// Sweeps retired generations after `delay` (past their grace), one sweep at a time.
    fn sweep_later(&self, delay: Duration) {
        let (pool, sweeping) = (self.pool.clone(), self.sweeping.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _sweeping = sweeping.lock().await;
            if let Err(error) = sweep(&pool).await {
                tracing::warn!(%error, "retired read models not swept yet; the next clear, swap or start retries");
            }
        });
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let statement = client.prepare_cached(sql).await.map_err(unavailable)?;
        client.query(&statement, params).await.map_err(unavailable)
    }
}

fn decode_doc(row: &Row) -> Result<ReadDocument, StoreError> {
    let Json(doc) = row.try_get(0).map_err(|e| corrupt("read-model document", e))?;
    Ok(doc)
}

/// A `(value, count)` row of a search's counts.
fn facet_count(row: &Row) -> Result<(String, i64), StoreError> {
    Ok((row.try_get(0).map_err(|e| corrupt("search", e))?, row.try_get(1).map_err(|e| corrupt("search", e))?))
}

/// A field name as a JSONB path: letters, digits and `_`, with `.` between nested names.
fn json_path(field: &str) -> Result<Vec<String>, StoreError> {
    let parts: Vec<String> = field.split('.').map(str::to_owned).collect();
    let valid = parts
        .iter()
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if valid {
        Ok(parts)
    } else {
        Err(StoreError::InvalidRequest(format!("'{field}' is not a valid field name")))
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// `WHERE` clause and parameters for a search's filters (parameter 1 is the resource, matched on
/// `resource_column`; the filters read `doc`).
fn where_clause(
    resource_column: &str,
    resource: &str,
    filters: &[Filter],
) -> Result<(String, Vec<Param>), StoreError> {
    let mut sql = format!("{resource_column} = (SELECT nexus_storage($1))");
    let mut values: Vec<Param> = vec![Box::new(resource.to_owned())];
    for filter in filters {
        sql.push_str(&format!(" AND {}", filter_predicate(filter, &mut values)?));
    }
    Ok((sql, values))
}

/// `filter` as SQL over `doc`, its parameters added to `values`.
fn filter_predicate(filter: &Filter, values: &mut Vec<Param>) -> Result<String, StoreError> {
    let path = values.len() + 1;
    let text = path + 1;
    let number = path + 2;
    values.push(Box::new(json_path(&filter.field)?));
    values.push(Box::new(filter.value.clone()));
    values.push(Box::new(filter.value.parse::<f64>().ok()));
    // Arrays (tags) match by membership, numbers by value (`?total=20` matches 20.0), the
    // rest by their text form, so every filter can come from a query string.
    Ok(format!(
        "(CASE jsonb_typeof(doc #> ${path}) \
           WHEN 'array' THEN EXISTS (SELECT 1 FROM jsonb_array_elements(doc #> ${path}) AS e(v) \
                                     WHERE e.v #>> '{{}}' = ${text}) \
           WHEN 'number' THEN (doc #> ${path})::float8 = ${number} \
           ELSE (doc #>> ${path}) = ${text} END)"
    ))
}

/// `WHERE` clause and parameters for a list: parameter 1 is the storage itself (not a model's
/// name), so the planner knows it (the pool plans every statement with its parameters) and can
/// use a partial index of [`PostgresReadStore::index_fields`]. Each filter reads an index where
/// one answers it: `status` the `documents_status` index (a status is always a JSON string, so
/// its text form is what the filter compares), a top-level field the GIN index on `doc`.
fn list_clause(storage: &str, filters: &[Filter]) -> Result<(String, Vec<Param>), StoreError> {
    let mut sql = "resource = $1".to_owned();
    let mut values: Vec<Param> = vec![Box::new(storage.to_owned())];
    for filter in filters {
        if filter.field == "status" {
            values.push(Box::new(filter.value.clone()));
            sql.push_str(&format!(" AND {STATUS} = ${}", values.len()));
            continue;
        }
        sql.push_str(&format!(" AND {}", filter_predicate(filter, &mut values)?));
        let candidates = containment(filter);
        if !candidates.is_empty() {
            let mut alternatives = Vec::new();
            for candidate in candidates {
                values.push(Box::new(Json(candidate)));
                alternatives.push(format!("doc @> ${}", values.len()));
            }
            sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
        }
    }
    Ok((sql, values))
}

/// A document's status as `documents_status` (migration 10) indexes it.
const STATUS: &str = r#"(doc ->> 'status') COLLATE "C""#;

/// A JSON path as a SQL literal (`'{"shipping","city"}'`): [`json_path`] checked its names, so
/// they need no escaping; each is quoted, so a name like `null` stays a name.
fn path_literal(path: &[String]) -> String {
    let names: Vec<String> = path.iter().map(|name| format!("\"{name}\"")).collect();
    format!("'{{{}}}'::text[]", names.join(","))
}

/// The keys a sort on the JSON value at `path` (SQL: a parameter or a literal) orders by, ordered
/// like SQLite orders `json_extract`: NULL < numbers (booleans as 0/1) < text, text bytewise.
/// Then `id`, ascending whatever the direction.
fn sort_keys(path: &str) -> [String; 3] {
    [
        format!(
            "(CASE jsonb_typeof(doc #> {path}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 \
               WHEN 'string' THEN 2 WHEN 'array' THEN 2 WHEN 'object' THEN 2 ELSE 0 END)"
        ),
        format!(
            "(CASE jsonb_typeof(doc #> {path}) WHEN 'number' THEN (doc #> {path})::float8 \
               WHEN 'boolean' THEN CASE WHEN doc #> {path} = 'true'::jsonb THEN 1 ELSE 0 END END)"
        ),
        format!(
            "((CASE jsonb_typeof(doc #> {path}) WHEN 'string' THEN doc #>> {path} \
               WHEN 'array' THEN (doc #> {path})::text WHEN 'object' THEN (doc #> {path})::text END) COLLATE \"C\")"
        ),
    ]
}

fn direction(order: SortOrder) -> &'static str {
    if order == SortOrder::Asc { "ASC" } else { "DESC" }
}

/// `ORDER BY` keys for a sort on the JSON value at `path` (see [`sort_keys`]).
fn order_by(path: &str, order: SortOrder) -> String {
    let direction = direction(order);
    let keys: Vec<String> = sort_keys(path).iter().map(|key| format!("{key} {direction}")).collect();
    format!("{}, id {direction}", keys.join(", "))
}

/// The index [`PostgresReadStore::index_fields`] keeps for sorting `resource`'s documents on
/// `field`: its name and its `CREATE INDEX` statement. The keys are those of [`order_by`] with the
/// path as a literal, ascending, then `id`, so a list sorted on the field reads its page from the
/// index in order: forward for an ascending sort, backward for a descending one (which orders
/// ties by id descending too: a descending list is the ascending one reversed).
///
/// Partial, on the storages the model can be in: its own name, its generations (`{name}#{n}`)
/// and those of a rebuild's shadow (`{name}~…`, which a swap makes the model's); the planner
/// uses it for a statement naming one of them. The name ends in a hash of the definition, so a
/// changed definition is a new index, and the same one is found again.
fn sort_index(resource: &str, field: &str) -> Result<(String, String), StoreError> {
    let path = path_literal(&json_path(field)?);
    let direction = direction(SortOrder::Asc);
    let keys: Vec<String> = sort_keys(&path).iter().map(|key| format!("{key} {direction}")).collect();
    let name = resource.replace('\'', "''");
    let definition = format!(
        "ON documents (resource, {}, id) WHERE resource = '{name}' \
         OR (resource >= '{name}#' AND resource < '{name}$') \
         OR (resource >= '{name}~' AND resource < ('{name}' || chr(127)))",
        keys.join(", ")
    );
    let hash = definition.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut slug: String = format!("{resource}_{field}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    slug.truncate(36);
    let index = format!("list_{slug}_{}_{:012x}", direction.to_lowercase(), hash & 0xffff_ffff_ffff);
    Ok((index.clone(), format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} {definition}")))
}

/// Where a search's matches come from, as SQL over the search's parameters (`$1` the model).
struct Matches {
    /// `FROM` items.
    from: String,
    /// The same with the documents joined, for facets read from the JSON.
    with_documents: String,
    /// A match's id.
    id: &'static str,
    /// What ranks a match, highest first.
    score: String,
    /// `(value, count)` rows: `''` with the number of matches, then `status` U+001F value and
    /// `tags` U+001F value with theirs; `{from}` and `{clause}` stand for the matches.
    counts: String,
    source: Source,
    /// How many words' postings are joined (`p1`…), none for the entries.
    postings: usize,
    /// Whether the documents are joined too (as `d`, for filters).
    filtered: bool,
}

/// What a search's matches are read from.
enum Source {
    /// The entries: a search without words.
    Entries,
    /// The postings of one word, whose parameter this is, without filters: the page is read
    /// in (frequency, length, id) order (see [`Matches::page`]).
    OneWord(usize),
    /// Postings joined to each other or to the documents: several words, or filters.
    Joined,
}

/// The `(value, count)` rows of the facet sets of `grouped`, rows `(facets, n)`.
fn facet_set_counts(grouped: &str) -> String {
    format!(
        "SELECT f, SUM(g.n)::bigint FROM ({grouped}) AS g \
         JOIN search_facet_sets s ON s.code = g.facets, unnest(s.facets) AS f GROUP BY f"
    )
}

impl Matches {
    /// `(id, score)` of the matches from `offset` (parameter `$o`), `limit` (`$l`) of them, best
    /// first, ties to the lower id.
    fn page(&self, clause: &str, l: usize, o: usize) -> String {
        let Self { from, id, score, .. } = self;
        match self.source {
            // One word's score only grows with its frequency and shrinks with the length, so the
            // page is among the first `offset + limit` postings of each frequency in (length, id)
            // order: a few index probes (`search_postings_impact`), not a sort of every match.
            // The frequencies are found one index descent each (a loose index scan).
            Source::OneWord(w) => format!(
                "WITH RECURSIVE frequencies (frequency) AS ( \
                   SELECT min(frequency) FROM search_postings \
                   WHERE resource = (SELECT nexus_storage($1)) AND word = ${w} \
                   UNION ALL \
                   SELECT (SELECT min(frequency) FROM search_postings \
                           WHERE resource = (SELECT nexus_storage($1)) AND word = ${w} AND frequency > f.frequency) \
                   FROM frequencies f WHERE f.frequency IS NOT NULL) \
                 SELECT c.id, c.score FROM frequencies f, \
                   LATERAL (SELECT p1.id, {score} AS score FROM search_postings p1 \
                            WHERE p1.resource = (SELECT nexus_storage($1)) AND p1.word = ${w} \
                              AND p1.frequency = f.frequency \
                            ORDER BY p1.length, p1.id LIMIT ${l}::bigint + ${o}::bigint) AS c \
                 ORDER BY c.score DESC, c.id ASC LIMIT ${l} OFFSET ${o}"
            ),
            Source::Entries | Source::Joined => format!(
                "SELECT {id} AS id, {score} AS score FROM {from} WHERE {clause} \
                 ORDER BY score DESC NULLS LAST, {id} ASC LIMIT ${l} OFFSET ${o}"
            ),
        }
    }

    /// For matches that join postings (several words, or filters): one statement that joins
    /// them once, for both the `(value, count)` rows of [`Matches::counts`] and the page's
    /// `(NULL, NULL, id, score)` rows.
    fn counts_and_page(&self, clause: &str, l: usize, o: usize) -> String {
        let Self { from, id, score, .. } = self;
        let counts = facet_set_counts("SELECT facets, COUNT(*) AS n FROM m GROUP BY facets");
        format!(
            "WITH m AS MATERIALIZED (SELECT {id} AS id, {score} AS score, p1.facets FROM {from} WHERE {clause}), \
             page AS (SELECT id, score FROM m ORDER BY score DESC, id ASC LIMIT ${l} OFFSET ${o}) \
             SELECT NULL::text AS f, NULL::bigint AS n, id, score FROM page \
             UNION ALL \
             SELECT *, NULL, NULL FROM ({counts}) AS counts"
        )
    }

    /// `clause` narrowed to one part of the ids: from parameter `$from` (inclusive) up to `$to`
    /// (exclusive), on every word's postings and the documents, so that each index scan reads
    /// only its range (and the planner sees each side's share of the rows: told only of the
    /// postings' share, it hashed them rather than probe them for the few documents a filter
    /// keeps, 40 ms where probing took 1).
    fn part(&self, clause: &str, from: Option<usize>, to: Option<usize>) -> String {
        let mut clause = clause.to_owned();
        let documents = self.filtered.then(|| "d".to_owned());
        for table in (1..=self.postings).map(|n| format!("p{n}")).chain(documents) {
            if let Some(from) = from {
                clause.push_str(&format!(" AND {table}.id >= ${from}"));
            }
            if let Some(to) = to {
                clause.push_str(&format!(" AND {table}.id < ${to}"));
            }
        }
        clause
    }

    /// Searches without words: every entry the filters keep, newest first.
    fn entries(filtered: bool) -> Self {
        Self {
            // The documents are joined only when filters must read them (the GIN index on `doc`
            // narrows those first).
            from: if filtered {
                "search_entries JOIN documents USING (resource, id)"
            } else {
                "search_entries"
            }
            .to_owned(),
            with_documents: "search_entries JOIN documents USING (resource, id)".to_owned(),
            id: "id",
            score: "last_updated".to_owned(),
            counts: "SELECT f, COUNT(*) FROM {from}, unnest(facets) AS f WHERE {clause} GROUP BY f"
                .to_owned(),
            source: Source::Entries,
            postings: 0,
            filtered,
        }
    }

    /// Searches for `count` words, parameters `$first…` (the search's clause asks for the first
    /// in `p1`): the postings of the first word, joined on id to each other word's (every word
    /// must match), ranked by BM25 with each word weighted alike (an IDF would cost a count of
    /// each word's postings per search).
    fn postings(first: usize, count: usize, filtered: bool) -> Self {
        let mut from = String::from("search_postings p1");
        for n in 2..=count {
            from.push_str(&format!(
                " JOIN search_postings p{n} ON p{n}.resource = p1.resource AND p{n}.word = ${} AND p{n}.id = p1.id",
                first + n - 1
            ));
        }
        let with_documents = format!("{from} JOIN documents d ON d.resource = p1.resource AND d.id = p1.id");
        let average = "(SELECT coalesce(max(words::float8 / greatest(documents, 1)), 1) \
                       FROM search_statistics WHERE resource = (SELECT nexus_storage($1)))";
        let score = (1..=count)
            .map(|n| {
                format!(
                    "p{n}.frequency * {k1_plus_1}::float8 / (p{n}.frequency + {k1}::float8 * \
                     ({one_minus_b}::float8 + {b}::float8 * p{n}.length / {average}))",
                    k1_plus_1 = BM25_K1 + 1.0,
                    k1 = BM25_K1,
                    one_minus_b = 1.0 - BM25_B,
                    b = BM25_B,
                )
            })
            .collect::<Vec<_>>()
            .join(" + ");
        Self {
            from: if filtered { with_documents.clone() } else { from },
            with_documents,
            id: "p1.id",
            score,
            counts: facet_set_counts(
                "SELECT p1.facets, COUNT(*) AS n FROM {from} WHERE {clause} GROUP BY p1.facets",
            ),
            source: if count == 1 && !filtered { Source::OneWord(first) } else { Source::Joined },
            postings: count,
            filtered,
        }
    }
}

/// Documents `filter` can match must contain one of these (`doc @> …`), which the GIN index on
/// `doc` answers; the filter's own predicate still decides. Empty when the index cannot help: a
/// nested field, or a value that could only match an object or array as text.
fn containment(filter: &Filter) -> Vec<Value> {
    let (field, value) = (filter.field.as_str(), filter.value.as_str());
    if field.contains('.') || value.starts_with(['{', '[']) {
        return Vec::new();
    }
    let mut forms = vec![Value::String(value.to_owned())];
    if let Ok(number) = value.parse::<f64>()
        && let Some(number) = serde_json::Number::from_f64(number)
    {
        // Documents hold what serde wrote: the shortest text of an f64, or an exact integer.
        forms.push(Value::Number(number));
        if let Ok(Value::Number(literal)) = serde_json::from_str::<Value>(value) {
            forms.push(Value::Number(literal));
        }
    }
    if let Ok(flag) = value.parse::<bool>() {
        forms.push(Value::Bool(flag));
    }
    // A scalar equal to the value, or an array holding it.
    forms.into_iter().flat_map(|form| [json!({ field: form.clone() }), json!({ field: [form] })]).collect()
}

/// Deletes every retired generation past its grace, a chunk of documents per transaction (their
/// search entries and postings follow by trigger), then vacuums what it deleted. Several processes may sweep
/// at once: they delete the same rows at worst.
async fn sweep(pool: &Pool) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_unavailable)?;
    loop {
        // A generation a name points to again is never deleted.
        let due = client
            .query_opt(
                "SELECT storage FROM retired_models r \
                 WHERE retired_at < now() - make_interval(secs => $1) \
                   AND NOT EXISTS (SELECT 1 FROM models m WHERE m.storage = r.storage) \
                 ORDER BY retired_at LIMIT 1",
                &[&SWEEP_GRACE_SECS],
            )
            .await
            .map_err(unavailable)?;
        let Some(due) = due else { return Ok(()) };
        let storage: String = due.try_get(0).map_err(|e| corrupt("retired model", e))?;
        let started = Instant::now();
        let mut deleted = 0;
        loop {
            let chunk = client
                .execute(
                    "DELETE FROM documents WHERE resource = $1 AND id IN \
                     (SELECT id FROM documents WHERE resource = $1 LIMIT $2)",
                    &[&storage, &SWEEP_CHUNK],
                )
                .await
                .map_err(unavailable)?;
            if chunk == 0 {
                break;
            }
            deleted += chunk;
        }
        if deleted > 0 {
            // Dead rows a search would still visit, and statistics without them.
            client
                .batch_execute("VACUUM (ANALYZE) documents, search_entries, search_postings")
                .await
                .map_err(unavailable)?;
        }
        client
            .execute("DELETE FROM search_statistics WHERE resource = $1", &[&storage])
            .await
            .map_err(unavailable)?;
        client
            .execute("DELETE FROM list_counts WHERE resource = $1", &[&storage])
            .await
            .map_err(unavailable)?;
        client
            .execute("DELETE FROM retired_models WHERE storage = $1", &[&storage])
            .await
            .map_err(unavailable)?;
        tracing::info!(
            storage,
            deleted,
            seconds = started.elapsed().as_secs_f64(),
            "retired read model swept"
        );
    }
}

/// The first key of the session lock under which the indexes of
/// [`PostgresReadStore::index_fields`] are built; the second is `hashtext(schema)`.
const INDEX_LOCK_CLASS: i32 = 0x4E58_4958; // "NXIX"

/// How often a process waiting for another's index builds tries the lock again.
const INDEX_LOCK_RETRY: Duration = Duration::from_millis(250);

/// Builds each `(name, create)` index (`create` a `CREATE INDEX CONCURRENTLY IF NOT EXISTS`)
/// that is not there and valid, on `client`, which closes after (releasing the lock, whatever
/// happened).
///
/// Concurrently, so the projections of every process keep writing while it builds (a plain
/// `CREATE INDEX` would hold every document write of every model for as long as it takes, on a
/// million documents tens of seconds). Such a build cannot run in a transaction, so the
/// processes that start together take turns under a session lock of the schema instead: the
/// first builds, the others then find the indexes valid. A build that died (its process, or a
/// failed build) leaves an invalid index of its name, which `IF NOT EXISTS` would keep forever:
/// under the lock nobody else is building it, so it is dropped and built again.
///
/// The lock is tried, not waited for: a statement waiting for it holds a snapshot, and the build
/// of the process holding it waits for every older snapshot to end before it finishes. (Builds
/// of one table take turns anyway: each holds a lock on `documents` that excludes the others.)
async fn build_indexes(
    client: &tokio_postgres::Client,
    indexes: &[(String, String)],
) -> Result<(), StoreError> {
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))", &[&INDEX_LOCK_CLASS])
            .await
            .map_err(unavailable)?
            .try_get(0)
            .map_err(|e| corrupt("lock", e))?;
        if locked {
            break;
        }
        tokio::time::sleep(INDEX_LOCK_RETRY).await;
    }
    for (name, create) in indexes {
        let valid: Option<bool> = client
            .query_opt(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1",
                &[name],
            )
            .await
            .map_err(unavailable)?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(|e| corrupt("index", e))?;
        if valid == Some(true) {
            continue;
        }
        let started = Instant::now();
        if valid == Some(false) {
            tracing::warn!(index = name, "an earlier build of this index did not finish; building it again");
            client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                .await
                .map_err(unavailable)?;
        }
        client.batch_execute(create).await.map_err(unavailable)?;
        tracing::info!(index = name, seconds = started.elapsed().as_secs_f64(), "list index built");
    }
    Ok(())
}

/// Retires the generation `name` points to (its documents are deleted once no name points to it).
async fn retire(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO retired_models (storage) VALUES (nexus_storage($1)) ON CONFLICT DO NOTHING",
        &[&name],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Points `name` at a new, empty generation.
async fn point_to_new_generation(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO models (name, storage) VALUES ($1, $1 || '#' || nextval('model_generations')) \
         ON CONFLICT (name) DO UPDATE SET storage = excluded.storage",
        &[&name],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl ReadStore for PostgresReadStore {
    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        let rows =
            self.query("SELECT position FROM checkpoints WHERE projection = $1", &[&projection]).await?;
        match rows.first() {
            Some(row) => unsigned(row.try_get(0).map_err(|e| corrupt("checkpoint", e))?, "checkpoint"),
            None => Ok(0),
        }
    }

    async fn load(&self, resource: &str, ids: &[String]) -> Result<Vec<ReadDocument>, StoreError> {
        let rows = self
            .query(
                "SELECT doc FROM documents WHERE resource = (SELECT nexus_storage($1)) AND id = ANY ($2)",
                &[&resource, &ids],
            )
            .await?;
        rows.iter().map(decode_doc).collect()
    }

    async fn commit(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError> {
        self.upsert(projection, resource, docs, position, false).await
    }

    async fn replace(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError> {
        self.upsert(projection, resource, docs, position, true).await
    }

    async fn get(&self, resource: &str, id: &str) -> Result<Option<ReadDocument>, StoreError> {
        let rows = self
            .query(
                "SELECT doc FROM documents WHERE resource = (SELECT nexus_storage($1)) AND id = $2",
                &[&resource, &id],
            )
            .await?;
        rows.first().map(decode_doc).transpose()
    }

    async fn list(&self, resource: &str, query: &ListQuery) -> Result<Page, StoreError> {
        // The filters are checked before anything is read. The storage is looked up first, so the
        // page's statement names it (see `list_clause`); with no filter or `status` alone, the
        // total is a kept count (`list_counts`), read in the same statement.
        list_clause(resource, &query.filters)?;
        let kept = match query.filters.as_slice() {
            [] => Some(None),
            [Filter { field, value }] if field == "status" => Some(Some(value)),
            _ => None,
        };
        let rows = match kept {
            Some(None) => {
                self.query(
                    "SELECT s, (SELECT coalesce(sum(documents), 0)::bigint FROM list_counts WHERE resource = s) \
                     FROM nexus_storage($1) AS s",
                    &[&resource],
                )
                .await?
            }
            Some(Some(status)) => {
                self.query(
                    "SELECT s, (SELECT coalesce(sum(documents), 0)::bigint FROM list_counts \
                                WHERE resource = s AND status = $2) \
                     FROM nexus_storage($1) AS s",
                    &[&resource, status],
                )
                .await?
            }
            None => self.query("SELECT nexus_storage($1), NULL::bigint", &[&resource]).await?,
        };
        let storage: String = rows[0].try_get(0).map_err(|e| corrupt("storage", e))?;
        let kept_total: Option<i64> = rows[0].try_get(1).map_err(|e| corrupt("count", e))?;

        let (clause, values) = list_clause(&storage, &query.filters)?;
        let order = match &query.sort {
            // The path as a literal: an index of `index_fields` is used only for the very
            // expressions it was built on.
            Some((field, order)) => order_by(&path_literal(&json_path(field)?), *order),
            None => "id ASC".to_owned(),
        };
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        // Limit and offset as parameters: one prepared statement per query shape, not per page.
        let (limit, offset) = (bigint(query.limit as u64), bigint(query.offset as u64));
        let mut page_params = params.clone();
        page_params.extend([&limit as &(dyn ToSql + Sync), &offset]);
        let page_sql = format!(
            "SELECT doc FROM documents WHERE {clause} ORDER BY {order} LIMIT ${} OFFSET ${}",
            page_params.len() - 1,
            page_params.len()
        );
        let count_sql = format!("SELECT COUNT(*) FROM documents WHERE {clause}");
        let count = async {
            match kept_total {
                Some(total) => Ok(total),
                None => self.query(&count_sql, &params).await?[0].try_get(0).map_err(|e| corrupt("count", e)),
            }
        };
        let (total, rows) = tokio::try_join!(count, self.query(&page_sql, &page_params))?;
        let items = rows.iter().map(decode_doc).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total: unsigned(total, "count")? })
    }

    async fn index_fields(&self, resource: &str, fields: &[&str]) -> Result<(), StoreError> {
        let mut indexes = Vec::new();
        for field in fields {
            indexes.push(sort_index(resource, field)?);
        }
        if indexes.is_empty() {
            return Ok(());
        }
        // A connection of its own, closed after: it holds a session lock while it builds.
        let client = deadpool_postgres::Object::take(self.pool.get().await.map_err(pool_unavailable)?);
        build_indexes(&client, &indexes).await
    }

    async fn clear(&self, resource: &str, projection: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        retire(&tx, resource).await?;
        point_to_new_generation(&tx, resource).await?;
        tx.execute("DELETE FROM checkpoints WHERE projection = $1", &[&projection])
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.sweep_later(Duration::from_secs_f64(SWEEP_GRACE_SECS));
        Ok(())
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // The live name takes the shadow's generation; the shadow's name a new, empty one.
        retire(&tx, live).await?;
        tx.execute(
            "INSERT INTO models (name, storage) VALUES ($1, nexus_storage($2)) \
             ON CONFLICT (name) DO UPDATE SET storage = excluded.storage",
            &[&live, &shadow],
        )
        .await
        .map_err(unavailable)?;
        point_to_new_generation(&tx, shadow).await?;
        // The one place a checkpoint moves back: the rebuilt model comes with its own.
        tx.execute(
            "INSERT INTO checkpoints (projection, position) SELECT $1, position FROM checkpoints WHERE projection = $2 \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
            &[&live, &shadow],
        )
        .await
        .map_err(unavailable)?;
        tx.execute("DELETE FROM checkpoints WHERE projection = $1", &[&shadow]).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.sweep_later(Duration::from_secs_f64(SWEEP_GRACE_SECS));
        Ok(())
    }

    async fn search(&self, resource: &str, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let mut facets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
            query.facets.iter().map(|field| (field.clone(), Default::default())).collect();
        let others: Vec<(String, Vec<String>)> = query
            .facets
            .iter()
            .filter(|field| !matches!(field.as_str(), "status" | "tags"))
            .map(|field| Ok((field.clone(), json_path(field)?)))
            .collect::<Result<_, StoreError>>()?;
        // The words as the documents' words were made (`to_tsvector('simple', …)`), each once,
        // and where the model is stored, looked up once: every statement below then reads the
        // same generation (a storage name is no model's name, so `nexus_storage` of it is
        // itself), even when a swap repoints the model meanwhile.
        let rows = self
            .query(
                "SELECT tsvector_to_array(to_tsvector('simple', $1)), nexus_storage($2)",
                &[&query.text, &resource],
            )
            .await?;
        let words: Vec<String> = rows[0].try_get(0).map_err(|e| corrupt("search words", e))?;
        let storage: String = rows[0].try_get(1).map_err(|e| corrupt("storage", e))?;
        let resource = storage.as_str();
        if words.is_empty() && query.text.split_whitespace().next().is_some() {
            // Text without a word (punctuation only) matches nothing, once the filters are
            // known to be valid.
            where_clause("resource", resource, &query.filters)?;
            return Ok(SearchResults { items: Vec::new(), total: 0, facets });
        }
        let resource_column = if words.is_empty() { "resource" } else { "p1.resource" };
        // The filters' containment candidates (the GIN index on `doc`) come with the clause.
        let (mut clause, mut values) = where_clause(resource_column, resource, &query.filters)?;
        let matches = if words.is_empty() {
            Matches::entries(!query.filters.is_empty())
        } else {
            let first = values.len() + 1;
            values.extend(words.iter().map(|word| Box::new(word.clone()) as Param));
            clause.push_str(&format!(" AND p1.word = ${first}"));
            Matches::postings(first, words.len(), !query.filters.is_empty())
        };
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();

        // Statements on pooled connections, at once: the total and the status and tags counts in
        // one pass over the matches' facet values, the page, and any other facet. Matches that
        // need a join of postings are joined once, for the counts and the page together.
        //
        // A search for words is cut into parts by ranges of ids (see `search_split_points`), each
        // part a statement on a connection of its own, so the postings are read on several cores
        // at once. Every document is in exactly one part, so the counts add up; each part gives
        // its best `offset + limit` matches, among which are the page's. Not for a deep page
        // (each part would send back most of its matches), nor when the pool is short of idle
        // connections (the parts would queue, and the writers behind them).
        let (limit, offset) = (bigint(query.limit as u64), bigint(query.offset as u64));
        let pool = self.pool.status();
        let spare = pool.max_size.saturating_sub(pool.size) + pool.available;
        let points = if matches.postings > 0 && query.offset <= MAX_PARTED_OFFSET {
            self.search_split_points().await?
        } else {
            Arc::from([])
        };
        let points = if spare > points.len() + 2 { points } else { Arc::from([]) };
        let parted = !points.is_empty();
        let (part_limit, part_offset) = if parted {
            (bigint(query.limit.saturating_add(query.offset) as u64), 0)
        } else {
            (limit, offset)
        };
        let mut page_params = params.clone();
        page_params.extend([&limit as &(dyn ToSql + Sync), &offset]);
        let (l, o) = (params.len() + 1, params.len() + 2);
        // Each part's bounds and parameters: the search's, then its bounds.
        let parts: Vec<(Option<usize>, Option<usize>, Vec<&(dyn ToSql + Sync)>)> = (0..=points.len())
            .map(|n| {
                let mut part_params = params.clone();
                let mut bound = |n: Option<usize>| {
                    n.map(|n| {
                        part_params.push(&points[n] as &(dyn ToSql + Sync));
                        part_params.len()
                    })
                };
                let from = bound(n.checked_sub(1));
                let to = bound((n < points.len()).then_some(n));
                (from, to, part_params)
            })
            .collect();
        let counts_and_page = async {
            if let Source::Joined = matches.source {
                let statements = parts.iter().map(|(from, to, part_params)| {
                    let mut part_params = part_params.clone();
                    part_params.extend([&part_limit as &(dyn ToSql + Sync), &part_offset]);
                    let (l, o) = (part_params.len() - 1, part_params.len());
                    let sql = matches.counts_and_page(&matches.part(&clause, *from, *to), l, o);
                    async move { self.query(&sql, &part_params).await }
                });
                let (mut counts, mut page) = (Vec::new(), Vec::new());
                for row in try_join_all(statements).await?.iter().flatten() {
                    match row.try_get::<_, Option<String>>(2).map_err(|e| corrupt("search", e))? {
                        Some(id) => {
                            page.push((row.try_get::<_, f64>(3).map_err(|e| corrupt("search", e))?, id))
                        }
                        None => counts.push(facet_count(row)?),
                    }
                }
                // Best first, ties to the lower id (bytewise, as `COLLATE "C"` orders them).
                page.sort_by(|(a, a_id), (b, b_id)| b.total_cmp(a).then_with(|| a_id.cmp(b_id)));
                let ids: Vec<String> = page
                    .into_iter()
                    .skip(if parted { query.offset } else { 0 })
                    .take(query.limit)
                    .map(|(_, id)| id)
                    .collect();
                // Read after the counts, from the same generation: a document deleted meanwhile
                // is missing from the page (as from any later one).
                let mut docs: HashMap<String, ReadDocument> =
                    self.load(resource, &ids).await?.into_iter().map(|doc| (doc.id.clone(), doc)).collect();
                return Ok::<_, StoreError>((counts, ids.iter().filter_map(|id| docs.remove(id)).collect()));
            }
            let counts = parts.iter().map(|(from, to, part_params)| {
                let sql = matches
                    .counts
                    .replace("{from}", &matches.from)
                    .replace("{clause}", &matches.part(&clause, *from, *to));
                async move { self.query(&sql, part_params).await }
            });
            let page_sql = format!(
                "SELECT d.doc FROM ({}) AS page \
                 JOIN documents d ON d.resource = (SELECT nexus_storage($1)) AND d.id = page.id \
                 ORDER BY page.score DESC NULLS LAST, page.id ASC",
                matches.page(&clause, l, o)
            );
            let (counts, page) = tokio::try_join!(try_join_all(counts), self.query(&page_sql, &page_params))?;
            let counts = counts.iter().flatten().map(facet_count).collect::<Result<Vec<_>, _>>()?;
            Ok((counts, page.iter().map(decode_doc).collect::<Result<Vec<_>, _>>()?))
        };
        // A scalar counts once, an array (tags) once per member.
        let other_sql = format!(
            "SELECT e.v #>> '{{}}', COUNT(*) FROM {with_documents}, \
               LATERAL jsonb_array_elements(CASE jsonb_typeof(doc #> ${p}) WHEN 'array' THEN doc #> ${p} \
                 ELSE jsonb_build_array(doc #> ${p}) END) AS e(v) \
             WHERE {clause} AND e.v IS NOT NULL AND e.v <> 'null'::jsonb GROUP BY 1",
            with_documents = matches.with_documents,
            p = params.len() + 1
        );
        let other_counts = async {
            let mut counts = Vec::with_capacity(others.len());
            for (_, path) in &others {
                let mut other_params = params.clone();
                other_params.push(path as &(dyn ToSql + Sync));
                counts.push(self.query(&other_sql, &other_params).await?);
            }
            Ok::<_, StoreError>(counts)
        };
        let ((counts, items), other_counts) = tokio::try_join!(counts_and_page, other_counts)?;

        let mut total = 0;
        for (value, count) in counts {
            let count = unsigned(count, "count")?;
            match value.split_once('\u{1f}') {
                None => total += count,
                Some((field, value)) => {
                    if let Some(counts) = facets.get_mut(field) {
                        *counts.entry(value.to_owned()).or_default() += count;
                    }
                }
            }
        }
        for ((field, _), rows) in others.iter().zip(other_counts) {
            let counts = facets.get_mut(field).expect("facet listed");
            for row in rows {
                let value: String = row.try_get(0).map_err(|e| corrupt("facet", e))?;
                counts.insert(
                    value,
                    unsigned(row.try_get(1).map_err(|e| corrupt("facet", e))?, "facet count")?,
                );
            }
        }
        Ok(SearchResults { items, total, facets })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(|_| ())
    }
}

impl PostgresReadStore {
    /// Upserts `docs` over stored documents with an older version (and, with `same_too`, the
    /// same version) and moves the checkpoint forward, in one statement.
    async fn upsert(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
        same_too: bool,
    ) -> Result<(), StoreError> {
        // One row per id, the one a sequence of guarded upserts would leave: the first with the
        // highest version. (One statement cannot update a row twice.)
        let mut kept: Vec<ReadDocument> = Vec::with_capacity(docs.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(docs.len());
        for doc in docs {
            match index.get(&doc.id) {
                Some(&at) if doc.version > kept[at].version => kept[at] = doc,
                Some(_) => {}
                None => {
                    index.insert(doc.id.clone(), kept.len());
                    kept.push(doc);
                }
            }
        }
        let ids: Vec<&str> = kept.iter().map(|d| d.id.as_str()).collect();
        let versions: Vec<i64> = kept.iter().map(|d| bigint(d.version)).collect();
        let texts = kept
            .iter()
            .map(|d| serde_json::to_string(d).map_err(|e| corrupt("read-model document", e)))
            .collect::<Result<Vec<_>, _>>()?;
        // One statement, so one implicit transaction and one round trip: documents and
        // checkpoint commit together.
        // The version guard lives in the database, whoever writes, and a checkpoint only moves
        // forward (several query processes may run one projection).
        macro_rules! upsert {
            ($newer:literal) => {
                concat!(
                    "WITH upserted AS ( \
                        INSERT INTO documents (resource, id, version, doc) \
                        SELECT (SELECT nexus_storage($1)), u.id, u.version, u.doc::jsonb \
                        FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(id, version, doc) \
                        ON CONFLICT (resource, id) DO UPDATE SET version = excluded.version, doc = excluded.doc \
                        WHERE excluded.version ",
                    $newer,
                    " documents.version) \
                     INSERT INTO checkpoints (projection, position) VALUES ($5, $6) \
                     ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
                     WHERE excluded.position > checkpoints.position"
                )
            };
        }
        let statement = if same_too { upsert!(">=") } else { upsert!(">") };
        self.query(statement, &[&resource, &ids, &versions, &texts, &projection, &bigint(position)]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_checked() {
        assert_eq!(json_path("customer.name").unwrap(), ["customer", "name"]);
        for bad in ["", "a..b", ".a", "a b", "a'b", "a-b"] {
            assert!(matches!(json_path(bad), Err(StoreError::InvalidRequest(_))), "{bad}");
        }
    }
}
