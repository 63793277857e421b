//! Versioned schema migrations, applied at start-up.
//!
//! A released migration is never edited: a change is a new entry. All pending migrations apply in
//! one transaction that first takes the schema's migration lock, so processes starting together
//! wait for each other instead of racing on `CREATE`.

use deadpool_postgres::Pool;
use nexus_core::StoreError;

use crate::{MIGRATION_LOCK_CLASS, pool_unavailable, unavailable};

pub(crate) struct Migration {
    pub(crate) version: i32,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event store",
        sql: r#"
-- Text keys compare bytewise (COLLATE "C"), like SQLite's BINARY: ISO 8601 timestamps and ids
-- sort the same on every database, whatever its default collation.
CREATE TABLE events (
    position       BIGINT PRIMARY KEY,
    event_id       TEXT COLLATE "C" NOT NULL UNIQUE,
    aggregate_id   TEXT COLLATE "C" NOT NULL,
    aggregate_type TEXT NOT NULL,
    version        BIGINT NOT NULL,
    event_type     TEXT COLLATE "C" NOT NULL,
    timestamp      TEXT COLLATE "C" NOT NULL,
    payload        JSONB NOT NULL,
    metadata       JSONB NOT NULL,
    UNIQUE (aggregate_id, version)
);
CREATE INDEX events_by_type_and_time ON events (event_type, timestamp);

CREATE FUNCTION nexus_refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is refused', TG_OP;
END $$;
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION nexus_refuse_event_change();
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION nexus_refuse_event_change();
CREATE TRIGGER events_are_append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_refuse_event_change();

-- Every writer of events holds the append lock until it commits, so positions become visible in
-- commit order whoever writes them. Re-taking a lock the transaction holds costs a hash lookup.
CREATE FUNCTION nexus_take_append_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1314406736, hashtext(TG_TABLE_SCHEMA));
    RETURN NULL;
END $$;
CREATE TRIGGER events_writers_take_the_append_lock BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_take_append_lock();

CREATE TABLE commands (
    command_id   TEXT COLLATE "C" PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    result       JSONB NOT NULL
);

-- One append, called by the appender with the append lock held: the idempotency check, the
-- version check and the inserts in one round trip. Expected refusals are answers, not errors, so
-- a batch of appends runs without a savepoint each; an unexpected error aborts the batch and the
-- appender retries it with one savepoint per append.
CREATE FUNCTION nexus_append(
    p_aggregate_id TEXT, p_aggregate_type TEXT, p_expected BIGINT,
    p_event_ids TEXT[], p_event_types TEXT[], p_timestamps TEXT[], p_payloads TEXT[], p_metadata TEXT[],
    p_command_id TEXT, p_fingerprint TEXT, p_result TEXT,
    OUT outcome TEXT, OUT actual_version BIGINT, OUT first_position BIGINT,
    OUT found_fingerprint TEXT, OUT found_result JSONB, OUT clashing_event_id TEXT)
LANGUAGE plpgsql AS $$
BEGIN
    -- The appender took the lock already (re-taking it is a hash lookup); a caller that did not
    -- still draws its positions under it.
    PERFORM pg_advisory_xact_lock(1314406736, hashtext(current_schema()));
    IF p_command_id IS NOT NULL THEN
        SELECT c.fingerprint, c.result INTO found_fingerprint, found_result
        FROM commands c WHERE c.command_id = p_command_id;
        IF FOUND THEN
            outcome := 'duplicate';
            RETURN;
        END IF;
    END IF;
    SELECT COALESCE(MAX(e.version), 0) INTO actual_version FROM events e WHERE e.aggregate_id = p_aggregate_id;
    IF actual_version <> p_expected THEN
        outcome := 'conflict';
        RETURN;
    END IF;
    SELECT e.event_id INTO clashing_event_id FROM events e WHERE e.event_id = ANY (p_event_ids) LIMIT 1;
    IF FOUND THEN
        outcome := 'event_id_taken';
        RETURN;
    END IF;
    IF cardinality(p_event_ids) > 1 THEN
        SELECT u.id INTO clashing_event_id FROM unnest(p_event_ids) AS u(id)
        GROUP BY u.id HAVING COUNT(*) > 1 LIMIT 1;
        IF FOUND THEN
            outcome := 'event_id_taken';
            RETURN;
        END IF;
    END IF;
    -- Drawn under the append lock: every position below is committed or ours.
    SELECT COALESCE(MAX(e.position), 0) + 1 INTO first_position FROM events e;
    INSERT INTO events (position, event_id, aggregate_id, aggregate_type, version, event_type, timestamp,
                        payload, metadata)
    SELECT first_position + u.n - 1, u.id, p_aggregate_id, p_aggregate_type, p_expected + u.n, u.t, u.ts,
           u.p::jsonb, u.m::jsonb
    FROM unnest(p_event_ids, p_event_types, p_timestamps, p_payloads, p_metadata)
         WITH ORDINALITY AS u(id, t, ts, p, m, n);
    IF p_command_id IS NOT NULL THEN
        INSERT INTO commands (command_id, fingerprint, aggregate_id, result)
        VALUES (p_command_id, p_fingerprint, p_aggregate_id, p_result::jsonb);
    END IF;
    outcome := 'committed';
END $$;
"#,
    },
    Migration {
        version: 2,
        name: "read store",
        sql: r#"
CREATE TABLE documents (
    resource TEXT COLLATE "C" NOT NULL,
    id       TEXT COLLATE "C" NOT NULL,
    version  BIGINT NOT NULL,
    doc      JSONB NOT NULL,
    PRIMARY KEY (resource, id)
);
CREATE TABLE checkpoints (
    projection TEXT COLLATE "C" PRIMARY KEY,
    position   BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 3,
        name: "snapshots",
        sql: r#"
CREATE TABLE snapshots (
    aggregate_id   TEXT COLLATE "C" NOT NULL,
    version        BIGINT NOT NULL,
    aggregate_type TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    state          JSONB NOT NULL,
    taken_at       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (aggregate_id, version)
);
"#,
    },
    Migration {
        version: 4,
        name: "schema registry",
        sql: r#"
CREATE TABLE registry_schemas (
    id          SERIAL PRIMARY KEY,
    schema      TEXT NOT NULL UNIQUE,
    schema_type TEXT NOT NULL
);
CREATE TABLE registry_subject_versions (
    subject   TEXT COLLATE "C" NOT NULL,
    version   INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES registry_schemas (id),
    PRIMARY KEY (subject, version)
);
CREATE TABLE registry_compatibility (
    subject TEXT COLLATE "C" PRIMARY KEY, -- '' is the global setting
    level   TEXT NOT NULL
);
"#,
    },
    Migration {
        version: 5,
        name: "full-text search",
        sql: r#"
ALTER TABLE documents ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', coalesce(doc ->> 'searchableText', ''))) STORED;
CREATE INDEX documents_search ON documents USING GIN (search);
"#,
    },
    Migration {
        version: 6,
        name: "indexed search filters",
        sql: r#"
-- A search filter `field=value` also asks `doc @> {"field": value}` (and the array and number
-- forms), which this index answers: a selective filter reads its candidates, not every match.
CREATE INDEX documents_doc ON documents USING GIN (doc jsonb_path_ops);
"#,
    },
    Migration {
        version: 7,
        name: "narrow search entries",
        sql: r#"
-- A search reads `search_entries`, one narrow row per document: its words, the values its
-- status and tags facets count, and its time. Matching the documents themselves read a wide
-- row (the whole JSON) per match: 50,000 heap pages for a word in one order of twelve out of a
-- million. Kept by the database, whoever writes, one statement at a time.
CREATE TABLE search_entries (
    resource     TEXT COLLATE "C" NOT NULL,
    id           TEXT COLLATE "C" NOT NULL,
    terms        tsvector NOT NULL,
    -- '' once (so counting facet values counts the matches too), then 'status' U+001F value
    -- and 'tags' U+001F value, one per member of an array, as the facets count them.
    facets       TEXT[] NOT NULL,
    last_updated TEXT COLLATE "C",
    PRIMARY KEY (resource, id)
);
CREATE INDEX search_entries_terms ON search_entries USING GIN (terms);

CREATE FUNCTION nexus_search_facets(doc jsonb) RETURNS TEXT[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[''] || coalesce(array_agg(k.field || chr(31) || (e.v #>> '{}')), '{}')
    FROM (VALUES ('status'), ('tags')) AS k(field),
         LATERAL jsonb_array_elements(CASE jsonb_typeof(doc -> k.field) WHEN 'array' THEN doc -> k.field
                                      ELSE jsonb_build_array(doc -> k.field) END) AS e(v)
    WHERE e.v IS NOT NULL AND e.v <> 'null'::jsonb
$$;

-- One function for the three statement triggers: old entries out (an update may have moved a
-- row to another resource), new ones in. Each branch names only the transition
-- table its statements have; PL/pgSQL plans a statement when it first runs it. (No anti-join
-- between the two tables: they have no statistics, and the planner's nested loop over them
-- took minutes at a million rows.)
CREATE FUNCTION nexus_follow_documents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM search_entries s USING removed r WHERE s.resource = r.resource AND s.id = r.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO search_entries (resource, id, terms, facets, last_updated)
        SELECT resource, id, search, nexus_search_facets(doc), doc ->> 'lastUpdated' FROM added
        ON CONFLICT (resource, id) DO UPDATE
            SET terms = excluded.terms, facets = excluded.facets, last_updated = excluded.last_updated;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER documents_search_entries_insert AFTER INSERT ON documents
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION nexus_follow_documents();
CREATE TRIGGER documents_search_entries_update AFTER UPDATE ON documents
    REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION nexus_follow_documents();
CREATE TRIGGER documents_search_entries_delete AFTER DELETE ON documents
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION nexus_follow_documents();

INSERT INTO search_entries (resource, id, terms, facets, last_updated)
    SELECT resource, id, search, nexus_search_facets(doc), doc ->> 'lastUpdated' FROM documents;
-- Searches no longer match on the documents.
DROP INDEX documents_search;
"#,
    },
    Migration {
        version: 8,
        name: "read models by generation",
        sql: r#"
-- A read model's documents are stored under a storage name: the model's own name until it is
-- first cleared, then a generation `{name}#{n}`. Clearing a model or swapping a rebuilt one in
-- repoints the name and retires the old generation, which is deleted in the background: a swap
-- no longer rewrites every row (67 s a million, with the vacuum it needed).
CREATE TABLE models (
    name    TEXT COLLATE "C" PRIMARY KEY,
    storage TEXT COLLATE "C" NOT NULL
);
CREATE TABLE retired_models (
    storage    TEXT COLLATE "C" PRIMARY KEY,
    retired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE SEQUENCE model_generations;
-- Where a model's documents are, as of the statement that asks.
CREATE FUNCTION nexus_storage(model TEXT) RETURNS TEXT LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT m.storage FROM models m WHERE m.name = model), model)
$$;
"#,
    },
    Migration {
        version: 9,
        name: "search postings",
        sql: r#"
-- A text search reads postings: one row per word of a document, in the primary key's order
-- (resource, word, id), carrying what ranking and the status and tags facets need in the index
-- itself. A word is one index-only range scan, several words a merge join of such ranges on
-- `id`: a word in one order of twelve out of a million read 83,334 rows of a narrow index
-- (about 20 ms), where matching `search_entries` by its GIN index read every heap page of the
-- table (about 250 ms).
-- Writers wait until the postings are filled: none is missed.
LOCK TABLE documents IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE search_postings (
    resource  TEXT COLLATE "C" NOT NULL,
    word      TEXT COLLATE "C" NOT NULL,
    id        TEXT COLLATE "C" NOT NULL,
    -- How often the word occurs in the document, and the document's length in words.
    frequency INTEGER NOT NULL,
    length    INTEGER NOT NULL,
    -- The document's facet values, as the code of their set in `search_facet_sets`.
    facets    BIGINT NOT NULL,
    PRIMARY KEY (resource, word, id) INCLUDE (frequency, length, facets)
);
-- One word's page: its best postings are the first of each frequency in this order.
CREATE INDEX search_postings_impact ON search_postings (resource, word, frequency, length, id);
-- Each set of facet values postings name ('' then 'status' U+001F value and 'tags' U+001F value,
-- as `nexus_search_facets` makes them). The code is the set's 64-bit hash, so a writer never
-- reads back a code another wrote; sets are few (a status and a handful of tags each) and kept.
CREATE TABLE search_facet_sets (
    code   BIGINT PRIMARY KEY,
    facets TEXT[] NOT NULL
);
-- Per storage: documents and their words, for BM25's average length.
CREATE TABLE search_statistics (
    resource  TEXT COLLATE "C" PRIMARY KEY,
    documents BIGINT NOT NULL,
    words     BIGINT NOT NULL
);

CREATE FUNCTION nexus_facet_code(facets TEXT[]) RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(facets::text, 0)
$$;
CREATE FUNCTION nexus_word_count(terms tsvector) RETURNS INTEGER LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(sum(coalesce(cardinality(positions), 1)), 0)::integer FROM unnest(terms)
$$;

-- The entries lose their words (postings have them) and their GIN index.
DROP INDEX search_entries_terms;
ALTER TABLE search_entries DROP COLUMN terms;

CREATE OR REPLACE FUNCTION nexus_follow_documents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        WITH entries AS (DELETE FROM search_entries s USING removed r WHERE s.resource = r.resource AND s.id = r.id)
        DELETE FROM search_postings p USING removed r, unnest(r.search) u
            WHERE p.resource = r.resource AND p.word = u.lexeme AND p.id = r.id;
    END IF;
    -- The statistics change once per trigger, in resource order, so writers to several storages
    -- never wait for each other in a cycle.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- Each document's facet values and length worked out once, for all four tables.
        WITH a AS MATERIALIZED (
            SELECT *, nexus_facet_code(facets) AS code FROM (
                SELECT resource, id, search, nexus_search_facets(doc) AS facets,
                       doc ->> 'lastUpdated' AS last_updated, nexus_word_count(search) AS words
                FROM added) AS documents),
        entries AS (
            INSERT INTO search_entries (resource, id, facets, last_updated)
                SELECT resource, id, facets, last_updated FROM a
            ON CONFLICT (resource, id) DO UPDATE
                SET facets = excluded.facets, last_updated = excluded.last_updated),
        -- In code order, so two writers adding the same new sets never wait in a cycle.
        sets AS (
            INSERT INTO search_facet_sets (code, facets) SELECT DISTINCT code, facets FROM a ORDER BY code
            ON CONFLICT (code) DO NOTHING),
        postings AS (
            INSERT INTO search_postings (resource, word, id, frequency, length, facets)
                SELECT a.resource, u.lexeme, a.id, coalesce(cardinality(u.positions), 1), a.words, a.code
                FROM a, unnest(a.search) u
            -- In index order, so a commit's postings of one word land on the same pages. The
            -- old ones are out (and a TRUNCATE empties this table too), so none conflicts.
            ORDER BY a.resource, u.lexeme COLLATE "C", a.id)
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, count(*), sum(words) FROM a WHERE TG_OP = 'INSERT' GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, -count(*), -sum(nexus_word_count(search)) FROM removed GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, sum(documents), sum(words) FROM (
                SELECT resource, -1 AS documents, -nexus_word_count(search) AS words FROM removed
                UNION ALL
                SELECT resource, 1, nexus_word_count(search) FROM added
            ) AS changes GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
    END IF;
    RETURN NULL;
END $$;

-- A TRUNCATE of the documents empties what follows them (no row trigger fires for it).
CREATE FUNCTION nexus_truncate_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE search_entries, search_postings, search_statistics;
    RETURN NULL;
END $$;
CREATE TRIGGER documents_search_truncate AFTER TRUNCATE ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_truncate_search();

INSERT INTO search_facet_sets (code, facets)
    SELECT DISTINCT nexus_facet_code(f), f FROM (SELECT nexus_search_facets(doc) FROM documents) AS d(f);
INSERT INTO search_postings (resource, word, id, frequency, length, facets)
    SELECT d.resource, u.lexeme, d.id, coalesce(cardinality(u.positions), 1),
           nexus_word_count(d.search), nexus_facet_code(nexus_search_facets(d.doc))
    FROM documents d, unnest(d.search) u;
INSERT INTO search_statistics (resource, documents, words)
    SELECT resource, count(*), sum(nexus_word_count(search)) FROM documents GROUP BY resource;
"#,
    },
    Migration {
        version: 10,
        name: "list counts and status index",
        sql: r#"
-- A list's total was a COUNT(*) over every document of the model it matched (about 1 s a
-- million): `list_counts` keeps how many documents each storage has per status, so a list with
-- no filter, or with `status` alone, reads its total from a row or a few. A list by status reads
-- its page from `documents_status` in id order. A document's `status` is always a JSON string
-- (`ReadDocument` writes one), so `doc ->> 'status'` is what a `status` filter compares.
-- Writers wait until the counts are filled: none is missed.
LOCK TABLE documents IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE list_counts (
    resource  TEXT COLLATE "C" NOT NULL,
    status    TEXT COLLATE "C" NOT NULL,
    documents BIGINT NOT NULL,
    PRIMARY KEY (resource, status)
);
CREATE INDEX documents_status ON documents (resource, (doc ->> 'status') COLLATE "C", id);

-- Migration 9's function, and the counts after the statistics: every writer changes the rows of a
-- storage in the order statistics, then counts by status, so writers never wait in a cycle (and
-- two writers to one storage queue on its statistics row first). A status no document has any
-- more keeps its row at 0 until the storage is swept.
CREATE OR REPLACE FUNCTION nexus_follow_documents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        WITH entries AS (DELETE FROM search_entries s USING removed r WHERE s.resource = r.resource AND s.id = r.id)
        DELETE FROM search_postings p USING removed r, unnest(r.search) u
            WHERE p.resource = r.resource AND p.word = u.lexeme AND p.id = r.id;
    END IF;
    -- The statistics change once per trigger, in resource order, so writers to several storages
    -- never wait for each other in a cycle.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- Each document's facet values and length worked out once, for all four tables.
        WITH a AS MATERIALIZED (
            SELECT *, nexus_facet_code(facets) AS code FROM (
                SELECT resource, id, search, nexus_search_facets(doc) AS facets,
                       doc ->> 'lastUpdated' AS last_updated, nexus_word_count(search) AS words
                FROM added) AS documents),
        entries AS (
            INSERT INTO search_entries (resource, id, facets, last_updated)
                SELECT resource, id, facets, last_updated FROM a
            ON CONFLICT (resource, id) DO UPDATE
                SET facets = excluded.facets, last_updated = excluded.last_updated),
        -- In code order, so two writers adding the same new sets never wait in a cycle.
        sets AS (
            INSERT INTO search_facet_sets (code, facets) SELECT DISTINCT code, facets FROM a ORDER BY code
            ON CONFLICT (code) DO NOTHING),
        postings AS (
            INSERT INTO search_postings (resource, word, id, frequency, length, facets)
                SELECT a.resource, u.lexeme, a.id, coalesce(cardinality(u.positions), 1), a.words, a.code
                FROM a, unnest(a.search) u
            -- In index order, so a commit's postings of one word land on the same pages. The
            -- old ones are out (and a TRUNCATE empties this table too), so none conflicts.
            ORDER BY a.resource, u.lexeme COLLATE "C", a.id)
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, count(*), sum(words) FROM a WHERE TG_OP = 'INSERT' GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, -count(*), -sum(nexus_word_count(search)) FROM removed GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
        INSERT INTO list_counts AS c (resource, status, documents)
            SELECT resource, coalesce(doc ->> 'status', ''), -count(*) FROM removed
            GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (resource, status) DO UPDATE SET documents = c.documents + excluded.documents;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO search_statistics AS s (resource, documents, words)
            SELECT resource, sum(documents), sum(words) FROM (
                SELECT resource, -1 AS documents, -nexus_word_count(search) AS words FROM removed
                UNION ALL
                SELECT resource, 1, nexus_word_count(search) FROM added
            ) AS changes GROUP BY resource ORDER BY resource
        ON CONFLICT (resource) DO UPDATE
            SET documents = s.documents + excluded.documents, words = s.words + excluded.words;
        -- Only the statuses that changed: an update that keeps its status touches no count.
        INSERT INTO list_counts AS c (resource, status, documents)
            SELECT resource, status, sum(documents) FROM (
                SELECT resource, coalesce(doc ->> 'status', '') AS status, -1 AS documents FROM removed
                UNION ALL
                SELECT resource, coalesce(doc ->> 'status', ''), 1 FROM added
            ) AS changes GROUP BY 1, 2 HAVING sum(documents) <> 0 ORDER BY 1, 2
        ON CONFLICT (resource, status) DO UPDATE SET documents = c.documents + excluded.documents;
    ELSE -- INSERT
        INSERT INTO list_counts AS c (resource, status, documents)
            SELECT resource, coalesce(doc ->> 'status', ''), count(*) FROM added
            GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (resource, status) DO UPDATE SET documents = c.documents + excluded.documents;
    END IF;
    RETURN NULL;
END $$;

-- A TRUNCATE of the documents empties the counts too.
CREATE OR REPLACE FUNCTION nexus_truncate_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE search_entries, search_postings, search_statistics, list_counts;
    RETURN NULL;
END $$;

INSERT INTO list_counts (resource, status, documents)
    SELECT resource, coalesce(doc ->> 'status', ''), count(*) FROM documents GROUP BY 1, 2;
"#,
    },
    Migration {
        version: 11,
        name: "store identity",
        sql: r#"
-- The store's identity, made once with the store: what names it on engines several stores share
-- (its NATS stream, its RabbitMQ exchanges) and what every message it publishes carries.
CREATE TABLE IF NOT EXISTS store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''))
    ON CONFLICT (key) DO NOTHING;
"#,
    },
];

/// Creates `schema` if needed and applies the migrations it has not seen, atomically.
pub(crate) async fn apply(pool: &Pool, schema: &str) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_unavailable)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&MIGRATION_LOCK_CLASS, &schema])
        .await
        .map_err(unavailable)?;
    // `schema` is validated to need no quoting.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS nexus_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(unavailable)?;
    let applied: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM nexus_migrations", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if applied > known {
        tracing::warn!(schema, applied, known, "the schema was migrated by a newer Nexus; carrying on");
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tracing::info!(schema, version = migration.version, name = migration.name, "applying migration");
        tx.batch_execute(migration.sql).await.map_err(unavailable)?;
        tx.execute(
            "INSERT INTO nexus_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)
}
