//! The read store on PostgreSQL: JSONB documents per resource type, and projection checkpoints.
//!
//! Query semantics mirror `nexus-sqlite` exactly (the conformance suite holds both to them):
//! filters match arrays by membership, numbers by value, everything else by its text form
//! (booleans as `true`/`false`); sorting puts missing and null values first, then numbers and
//! booleans (as 0/1), then text compared bytewise, with `id` breaking ties.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use nexus_core::ports::Filter;
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
}

/// How long a retired generation stays before the sweep deletes it: statements that resolved
/// the model's name before it was repointed finish reading (and a late commit lands) meanwhile.
const SWEEP_GRACE_SECS: f64 = 5.0;

/// Documents deleted per sweep transaction.
const SWEEP_CHUNK: i64 = 5_000;

impl PostgresReadStore {
    /// The store on `pool`; sweeps what an earlier process retired and did not delete.
    pub(crate) fn new(pool: Pool) -> Self {
        let store = Self { pool, sweeping: Arc::default() };
        store.sweep_later(std::time::Duration::ZERO);
        store
    }

    /// Generations retired and not yet deleted.
    pub async fn retired_models(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT COUNT(*) FROM retired_models", &[]).await?;
        unsigned(rows[0].try_get(0).map_err(|e| corrupt("count", e))?, "count")
    }

    /// Sweeps retired generations after `delay` (past their grace), one sweep at a time.
    fn sweep_later(&self, delay: std::time::Duration) {
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

/// `WHERE` clause and parameters for a list query (parameter 1 is the resource).
fn where_clause(resource: &str, filters: &[Filter]) -> Result<(String, Vec<Param>), StoreError> {
    let mut sql = String::from("resource = (SELECT nexus_storage($1))");
    let mut values: Vec<Param> = vec![Box::new(resource.to_owned())];
    for filter in filters {
        let path = values.len() + 1;
        let text = path + 1;
        let number = path + 2;
        // Arrays (tags) match by membership, numbers by value (`?total=20` matches 20.0), the
        // rest by their text form, so every filter can come from a query string.
        sql.push_str(&format!(
            " AND (CASE jsonb_typeof(doc #> ${path}) \
               WHEN 'array' THEN EXISTS (SELECT 1 FROM jsonb_array_elements(doc #> ${path}) AS e(v) \
                                         WHERE e.v #>> '{{}}' = ${text}) \
               WHEN 'number' THEN (doc #> ${path})::float8 = ${number} \
               ELSE (doc #>> ${path}) = ${text} END)"
        ));
        values.push(Box::new(json_path(&filter.field)?));
        values.push(Box::new(filter.value.clone()));
        values.push(Box::new(filter.value.parse::<f64>().ok()));
    }
    Ok((sql, values))
}

/// `ORDER BY` keys for a sort on the JSON value at parameter `$p`, ordered like SQLite orders
/// `json_extract`: NULL < numbers (booleans as 0/1) < text, text bytewise.
fn order_by(p: usize, order: SortOrder) -> String {
    let direction = if order == SortOrder::Asc { "ASC" } else { "DESC" };
    format!(
        "CASE jsonb_typeof(doc #> ${p}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 \
           WHEN 'string' THEN 2 WHEN 'array' THEN 2 WHEN 'object' THEN 2 ELSE 0 END {direction}, \
         CASE jsonb_typeof(doc #> ${p}) WHEN 'number' THEN (doc #> ${p})::float8 \
           WHEN 'boolean' THEN CASE WHEN doc #> ${p} = 'true'::jsonb THEN 1 ELSE 0 END END {direction}, \
         (CASE jsonb_typeof(doc #> ${p}) WHEN 'string' THEN doc #>> ${p} \
           WHEN 'array' THEN (doc #> ${p})::text WHEN 'object' THEN (doc #> ${p})::text END) COLLATE \"C\" {direction}, \
         id ASC"
    )
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
/// search entries follow by trigger), then vacuums what it deleted. Several processes may sweep
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
        let started = std::time::Instant::now();
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
            client.batch_execute("VACUUM (ANALYZE) documents, search_entries").await.map_err(unavailable)?;
        }
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
        // checkpoint commit together. The version guard lives in the database, whoever writes,
        // and a checkpoint only moves forward (several query processes may run one projection).
        self.query(
            "WITH upserted AS ( \
                INSERT INTO documents (resource, id, version, doc) \
                SELECT (SELECT nexus_storage($1)), u.id, u.version, u.doc::jsonb \
                FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(id, version, doc) \
                ON CONFLICT (resource, id) DO UPDATE SET version = excluded.version, doc = excluded.doc \
                WHERE excluded.version > documents.version) \
             INSERT INTO checkpoints (projection, position) VALUES ($5, $6) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
             WHERE excluded.position > checkpoints.position",
            &[&resource, &ids, &versions, &texts, &projection, &bigint(position)],
        )
        .await?;
        Ok(())
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
        let (clause, mut values) = where_clause(resource, &query.filters)?;
        let count_values = values.len();
        let order = match &query.sort {
            Some((field, order)) => {
                values.push(Box::new(json_path(field)?));
                order_by(values.len(), *order)
            }
            None => "id ASC".to_owned(),
        };
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        let rows = self
            .query(&format!("SELECT COUNT(*) FROM documents WHERE {clause}"), &params[..count_values])
            .await?;
        let total: i64 = rows[0].try_get(0).map_err(|e| corrupt("count", e))?;
        // Limit and offset as parameters: one prepared statement per query shape, not per page.
        let (limit, offset) = (bigint(query.limit as u64), bigint(query.offset as u64));
        let mut params = params;
        params.extend([&limit as &(dyn ToSql + Sync), &offset]);
        let sql = format!(
            "SELECT doc FROM documents WHERE {clause} ORDER BY {order} LIMIT ${} OFFSET ${}",
            params.len() - 1,
            params.len()
        );
        let items = self.query(&sql, &params).await?.iter().map(decode_doc).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total: unsigned(total, "count")? })
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
        self.sweep_later(std::time::Duration::from_secs_f64(SWEEP_GRACE_SECS));
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
        self.sweep_later(std::time::Duration::from_secs_f64(SWEEP_GRACE_SECS));
        Ok(())
    }

    async fn search(&self, resource: &str, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let (mut clause, mut values) = where_clause(resource, &query.filters)?;
        for filter in &query.filters {
            let candidates = containment(filter);
            if !candidates.is_empty() {
                let mut alternatives = Vec::new();
                for candidate in candidates {
                    values.push(Box::new(Json(candidate)));
                    alternatives.push(format!("doc @> ${}", values.len()));
                }
                clause.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
            }
        }
        // The matches come from the narrow search entries; the documents are joined only when
        // filters must read them (the GIN index on `doc` narrows those first).
        let from = if query.filters.is_empty() {
            "search_entries"
        } else {
            "search_entries JOIN documents USING (resource, id)"
        };
        // Best first: the highest rank, or the newest when there are no words.
        let score = if query.text.split_whitespace().next().is_none() {
            "last_updated".to_owned()
        } else {
            // Every word must match (`plainto_tsquery` ANDs them and treats operators as text);
            // the GIN index on `terms` answers the match.
            values.push(Box::new(query.text.clone()));
            let q = values.len();
            clause.push_str(&format!(" AND terms @@ plainto_tsquery('simple', ${q})"));
            // Normalization 1: divided by 1 + log(length), so a shorter text ranks first, as
            // BM25 ranks it on the embedded store.
            format!("ts_rank(terms, plainto_tsquery('simple', ${q}), 1)")
        };
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();

        // Three statements on three connections, at once: the total and the status and tags
        // counts in one pass over the entries' facet values, the page, and any other facet.
        let counts_sql =
            format!("SELECT f, COUNT(*) FROM {from}, unnest(facets) AS f WHERE {clause} GROUP BY f");
        let counts = self.query(&counts_sql, &params);
        let (limit, offset) = (bigint(query.limit as u64), bigint(query.offset as u64));
        let mut page_params = params.clone();
        page_params.extend([&limit as &(dyn ToSql + Sync), &offset]);
        let page_sql = format!(
            "SELECT d.doc FROM ( \
               SELECT id, {score} AS score FROM {from} WHERE {clause} \
               ORDER BY score DESC NULLS LAST, id ASC LIMIT ${} OFFSET ${}) AS page \
             JOIN documents d ON d.resource = (SELECT nexus_storage($1)) AND d.id = page.id \
             ORDER BY page.score DESC NULLS LAST, page.id ASC",
            params.len() + 1,
            params.len() + 2
        );
        let page = self.query(&page_sql, &page_params);
        let others: Vec<(String, Vec<String>)> = query
            .facets
            .iter()
            .filter(|field| !matches!(field.as_str(), "status" | "tags"))
            .map(|field| Ok((field.clone(), json_path(field)?)))
            .collect::<Result<_, StoreError>>()?;
        // A scalar counts once, an array (tags) once per member.
        let other_sql = format!(
            "SELECT e.v #>> '{{}}', COUNT(*) FROM search_entries JOIN documents USING (resource, id), \
               LATERAL jsonb_array_elements(CASE jsonb_typeof(doc #> ${p}) WHEN 'array' THEN doc #> ${p} \
                 ELSE jsonb_build_array(doc #> ${p}) END) AS e(v) \
             WHERE {clause} AND e.v IS NOT NULL AND e.v <> 'null'::jsonb GROUP BY 1",
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
        let (counts, page, other_counts) = tokio::try_join!(counts, page, other_counts)?;

        let mut total = 0;
        let mut facets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
            query.facets.iter().map(|field| (field.clone(), Default::default())).collect();
        for row in counts {
            let value: String = row.try_get(0).map_err(|e| corrupt("search", e))?;
            let count = unsigned(row.try_get(1).map_err(|e| corrupt("search", e))?, "count")?;
            match value.split_once('\u{1f}') {
                None => total = count,
                Some((field, value)) => {
                    if let Some(counts) = facets.get_mut(field) {
                        counts.insert(value.to_owned(), count);
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
        let items = page.iter().map(decode_doc).collect::<Result<Vec<_>, _>>()?;
        Ok(SearchResults { items, total, facets })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(|_| ())
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
