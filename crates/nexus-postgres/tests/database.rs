//! What the database itself guarantees, whoever connects to it: append-only events, the append
//! lock taken by every writer, migrations safe to run from several processes at once.

mod common;

use std::time::Duration;

use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
use nexus_core::{EventStore, StoreError};
use nexus_postgres::PostgresBackend;
use serde_json::json;

fn request(aggregate_id: &str, expected: u64, ids: &[&str]) -> AppendRequest {
    AppendRequest {
        aggregate_id: aggregate_id.into(),
        aggregate_type: "Test".into(),
        expected_version: expected,
        events: ids
            .iter()
            .map(|id| NewEvent {
                event_id: (*id).into(),
                event_type: "Happened".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                payload: json!({"id": id}).into(),
                metadata: Default::default(),
            })
            .collect(),
        command: None,
    }
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT COUNT(*) FROM events", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_update_delete_and_truncate_of_events() {
    let (backend, guard) = common::backend().await;
    backend.event_store().append(request("a", 0, &["e1", "e2"])).await.unwrap();
    let raw = common::raw_client(&guard).await;
    assert_eq!(count(&raw).await, 2);
    for sql in [
        "UPDATE events SET payload = '{}' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let error = raw.batch_execute(sql).await.expect_err(sql);
        let message =
            error.as_db_error().map(|db| db.message().to_owned()).unwrap_or_else(|| error.to_string());
        assert!(message.contains("append-only"), "{sql}: {message}");
    }
    assert_eq!(count(&raw).await, 2, "nothing changed");
    let payload: serde_json::Value =
        raw.query_one("SELECT payload FROM events WHERE position = 1", &[]).await.unwrap().get(0);
    assert_eq!(payload, json!({"id": "e1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_bypasses_the_store_still_takes_the_append_lock() {
    let (backend, guard) = common::backend().await;
    let store = backend.event_store();
    store.append(request("a", 0, &["e1"])).await.unwrap();
    // A hand-written insert, in a transaction left open.
    let raw = common::raw_client(&guard).await;
    raw.batch_execute(
        "BEGIN; INSERT INTO events (position, event_id, aggregate_id, aggregate_type, version, event_type, \
         timestamp, payload, metadata) VALUES (2, 'manual', 'b', 'Test', 1, 'Happened', \
         '2026-01-01T00:00:00.000Z', '{}', \
         '{\"correlationId\": \"\", \"causationId\": \"\", \"userId\": \"\", \"schemaVersion\": \"1\"}')",
    )
    .await
    .unwrap();
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.append(request("c", 0, &["e3"])).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the append waits for the hand-written transaction's lock");
    raw.batch_execute("COMMIT").await.unwrap();
    let AppendOutcome::Committed(events) = pending.await.unwrap().unwrap() else { panic!("committed") };
    assert_eq!(events[0].position, 3, "the position is drawn after the other writer committed");
    let positions: Vec<u64> = store.read_all(0, 10).await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let (first, guard) = common::backend().await;
    drop(first);
    // A fresh schema, created and migrated by four "processes" at once.
    let schema = common::fresh_schema();
    let guard2 = common::SchemaGuard { url: guard.url.clone(), schema: schema.clone() };
    let starts = (0..4).map(|_| {
        let (url, schema) = (guard.url.clone(), schema.clone());
        tokio::spawn(async move { PostgresBackend::connect(&url, &schema).await.map(|_| ()) })
    });
    for start in starts.collect::<Vec<_>>() {
        start.await.unwrap().unwrap();
    }
    let raw = common::raw_client(&guard2).await;
    let versions: Vec<i32> = raw
        .query("SELECT version FROM nexus_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(versions.len() >= 3, "{versions:?}");
    assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>(), "each migration applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 refuses connections on loopback.
    match PostgresBackend::connect("postgres://postgres@127.0.0.1:1/test", "nexus").await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(matches!(
        PostgresBackend::connect(&common::url(), "Bad-Name").await,
        Err(StoreError::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_append_in_a_batch_is_refused_alone() {
    let (backend, _guard) = common::backend().await;
    let store = backend.event_store();
    store.append(request("a", 0, &["taken"])).await.unwrap();
    // JSONB refuses a NUL character: an error raised inside the batch, not a refusal the append
    // function answers. Its batch-mates must still commit.
    let mut bad = request("bad", 0, &["nul"]);
    bad.events[0].payload = json!({"text": "nul \u{0000} here"}).into();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        let request = match n {
            7 => bad.clone(),
            13 => request("dup", 0, &["taken"]),
            _ => request(&format!("ok-{n}"), 0, &[&format!("ok-{n}")]),
        };
        tasks.push(tokio::spawn(async move { store.append(request).await }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        match n {
            7 | 13 => assert!(matches!(result, Err(StoreError::InvalidRequest(_))), "{n}: {result:?}"),
            _ => assert!(matches!(result, Ok(AppendOutcome::Committed(_))), "{n}: {result:?}"),
        }
    }
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all.len(), 19);
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1), "no gap left by the refused ones");
}

/// Search reads `search_entries` and `search_postings`, which the database keeps in step with
/// `documents` for any writer: hand-written inserts, updates, renames and deletes show in the
/// next search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_entries_follow_documents_whoever_writes() {
    use nexus_core::{ReadStore, SearchQuery};
    let (backend, guard) = common::backend().await;
    let read = backend.read_store();
    let raw = common::raw_client(&guard).await;
    let search = |text: &str| SearchQuery {
        text: text.into(),
        filters: vec![],
        facets: vec!["status".into(), "tags".into()],
        limit: 10,
        offset: 0,
    };
    let doc = |id: &str, status: &str, words: &str, tags: &str| {
        format!(
            "('orders', '{id}', 1, '{{\"id\": \"{id}\", \"aggregateId\": \"{id}\", \"version\": 1, \
             \"lastUpdated\": \"2026-01-01T00:00:00.000Z\", \"status\": \"{status}\", \
             \"searchableText\": \"{words}\", \"tags\": {tags}}}')"
        )
    };
    raw.batch_execute(&format!(
        "INSERT INTO documents (resource, id, version, doc) VALUES {}, {}",
        doc("o1", "PLACED", "red widget", "[\"gift\"]"),
        doc("o2", "SHIPPED", "blue widget", "[]")
    ))
    .await
    .unwrap();
    let found = read.search("orders", &search("widget")).await.unwrap();
    assert_eq!(found.total, 2);
    assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1), ("SHIPPED".to_owned(), 1)].into());
    assert_eq!(found.facets["tags"], [("gift".to_owned(), 1)].into());

    raw.batch_execute(
        "UPDATE documents SET doc = jsonb_set(doc, '{searchableText}', '\"green gadget\"') WHERE id = 'o1'",
    )
    .await
    .unwrap();
    assert_eq!(read.search("orders", &search("widget")).await.unwrap().total, 1);
    assert_eq!(read.search("orders", &search("gadget")).await.unwrap().items[0].id, "o1");

    raw.batch_execute("UPDATE documents SET resource = 'archive' WHERE id = 'o2'").await.unwrap();
    assert_eq!(read.search("orders", &search("widget")).await.unwrap().total, 0, "moved away");
    assert_eq!(read.search("archive", &search("widget")).await.unwrap().total, 1, "moved here");

    // The postings and the statistics BM25 reads followed every write.
    let statistics = "SELECT resource || ' ' || documents || ' ' || words FROM search_statistics \
                      WHERE documents <> 0 ORDER BY resource";
    let rows = raw.query(statistics, &[]).await.unwrap();
    let rows: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(rows, ["archive 1 2", "orders 1 2"]);
    let postings = raw
        .query("SELECT resource || '/' || id || '/' || word FROM search_postings ORDER BY 1", &[])
        .await
        .unwrap();
    let postings: Vec<String> = postings.iter().map(|row| row.get(0)).collect();
    assert_eq!(postings, ["archive/o2/blue", "archive/o2/widget", "orders/o1/gadget", "orders/o1/green"]);

    raw.batch_execute("DELETE FROM documents").await.unwrap();
    assert_eq!(read.search("orders", &search("gadget")).await.unwrap().total, 0);
    assert_eq!(read.search("archive", &search("")).await.unwrap().total, 0);
    assert!(raw.query(statistics, &[]).await.unwrap().is_empty());
    assert!(raw.query("SELECT 1 FROM search_postings", &[]).await.unwrap().is_empty());

    // A TRUNCATE (no row trigger fires) empties them too: the same documents can come back.
    let again = || async {
        raw.batch_execute(&format!(
            "INSERT INTO documents (resource, id, version, doc) VALUES {}",
            doc("o1", "PLACED", "red widget", "[\"gift\"]")
        ))
        .await
        .unwrap();
    };
    again().await;
    raw.batch_execute("TRUNCATE documents").await.unwrap();
    for table in ["search_entries", "search_postings", "search_statistics"] {
        let rows = raw.query(&format!("SELECT 1 FROM {table}"), &[]).await.unwrap();
        assert!(rows.is_empty(), "{table} emptied by the truncate");
    }
    again().await;
    let found = read.search("orders", &search("widget")).await.unwrap();
    assert_eq!((found.total, found.items[0].id.as_str()), (1, "o1"));
    assert_eq!(raw.query(statistics, &[]).await.unwrap().len(), 1);
}

/// A schema from before `search_entries` (migration 7) keeps answering searches after the
/// upgrade: the migration fills the entries from the documents already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_gets_its_search_entries() {
    use nexus_core::{ReadStore, SearchQuery};
    let (backend, guard) = common::backend().await;
    drop(backend);
    let raw = common::raw_client(&guard).await;
    // Back to the schema as migration 6 left it, with a document written then.
    raw.batch_execute(
        "DROP TABLE search_entries, models, retired_models, search_postings, search_facet_sets, search_statistics, list_counts;
         DROP INDEX documents_status;
         DROP FUNCTION nexus_facet_code(text[]);
         DROP FUNCTION nexus_word_count(tsvector);
         DROP SEQUENCE model_generations;
         DROP FUNCTION nexus_storage(text);
         DROP FUNCTION nexus_follow_documents() CASCADE;
         DROP FUNCTION nexus_truncate_search() CASCADE;
         DROP FUNCTION nexus_search_facets(jsonb);
         CREATE INDEX documents_search ON documents USING GIN (search);
         DELETE FROM nexus_migrations WHERE version >= 7;
         INSERT INTO documents (resource, id, version, doc) VALUES ('orders', 'o1', 1,
           '{\"id\": \"o1\", \"aggregateId\": \"o1\", \"version\": 1, \"lastUpdated\": \"2026-01-01T00:00:00.000Z\",
             \"status\": \"PLACED\", \"searchableText\": \"red widget\", \"tags\": [\"gift\"]}');",
    )
    .await
    .unwrap();
    let upgraded = PostgresBackend::connect(&guard.url, &guard.schema).await.unwrap();
    let query = SearchQuery {
        text: "widget".into(),
        filters: vec![],
        facets: vec!["status".into(), "tags".into()],
        limit: 10,
        offset: 0,
    };
    let found = upgraded.read_store().search("orders", &query).await.unwrap();
    assert_eq!(found.total, 1);
    assert_eq!(found.items[0].id, "o1");
    assert_eq!(found.facets["status"], [("PLACED".to_owned(), 1)].into());
    assert_eq!(found.facets["tags"], [("gift".to_owned(), 1)].into());
}

/// A swap repoints the model's name instead of rewriting its rows, and the generation it
/// retires (here the plain storage an older schema wrote) is deleted in the background, search
/// entries with it; until then it costs space, not answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_repoints_and_the_old_generation_is_swept() {
    use nexus_core::{ReadDocument, ReadStore, SearchQuery};
    let (backend, guard) = common::backend().await;
    let read = backend.read_store();
    let raw = common::raw_client(&guard).await;
    let doc = |id: &str, text: &str| {
        let mut doc = ReadDocument::empty(id, id);
        doc.version = 1;
        doc.searchable_text = text.into();
        doc
    };
    read.commit("orders", "orders", vec![doc("o1", "old widget"), doc("o2", "old"), doc("o3", "old")], 3)
        .await
        .unwrap();
    read.clear("orders~rebuild", "orders~rebuild").await.unwrap();
    read.commit("orders~rebuild", "orders~rebuild", vec![doc("o1", "new widget"), doc("o2", "new")], 5)
        .await
        .unwrap();
    let versions = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>() }
    };
    let shadow_rows = "SELECT resource || '/' || id || '@' || xmin::text FROM documents WHERE resource LIKE 'orders~rebuild#%' ORDER BY id";
    let before = versions(shadow_rows).await;
    assert_eq!(before.len(), 2);
    read.swap("orders", "orders~rebuild").await.unwrap();
    assert_eq!(versions(shadow_rows).await, before, "the swap rewrote no row");
    let search = SearchQuery { text: "widget".into(), filters: vec![], facets: vec![], limit: 10, offset: 0 };
    let found = read.search("orders", &search).await.unwrap();
    assert_eq!((found.total, found.items[0].searchable_text.as_str()), (1, "new widget"));
    assert!(read.get("orders", "o3").await.unwrap().is_none());
    assert_eq!(read.checkpoint("orders").await.unwrap(), 5);
    assert!(read.load("orders~rebuild", &["o1".into()]).await.unwrap().is_empty(), "the shadow starts empty");

    let started = std::time::Instant::now();
    while read.retired_models().await.unwrap() > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the old generation was not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = versions("SELECT resource || '/' || id FROM documents ORDER BY id").await;
    assert_eq!(left.len(), 2, "only the live generation is left: {left:?}");
    assert!(left.iter().all(|row| row.starts_with("orders~rebuild#")), "{left:?}");
    let entries = versions("SELECT resource || '/' || id FROM search_entries ORDER BY id").await;
    assert_eq!(entries, left, "search entries followed");
    assert_eq!(read.search("orders", &search).await.unwrap().total, 1);
}

/// A search for words cut into parts by ranges of ids (once the postings have statistics)
/// finds, ranks, pages and counts exactly what one statement does: every query below gives
/// the same results with one part and with three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_cut_into_parts_answers_like_one_statement() {
    use nexus_core::ports::Filter;
    use nexus_core::{ReadDocument, ReadStore, SearchQuery};
    let (backend, guard) = common::backend().await;
    let read = backend.read_store();
    let raw = common::raw_client(&guard).await;
    // 300 orders: "widget" in every other one, as often as 1 to 3 times, in texts of several
    // lengths (so scores differ and tie), "red" in every third, a customer in every seventh.
    let docs: Vec<ReadDocument> = (0..300)
        .map(|n| {
            let mut doc = ReadDocument::empty(format!("order-{n:03}"), format!("order-{n:03}"));
            doc.version = 1;
            doc.last_updated = "2026-01-01T00:00:00.000Z".into();
            doc.status = ["PLACED", "SHIPPED", "CANCELLED"][n % 3].into();
            doc.tags = if n % 4 == 0 { vec!["gift".into()] } else { vec![] };
            let widgets = if n % 2 == 0 { vec!["widget"; 1 + n % 3] } else { vec![] };
            let colour = if n % 3 == 0 { "red" } else { "blue" };
            doc.searchable_text = format!("{} {colour} {}", widgets.join(" "), "filler ".repeat(n % 5));
            doc.fields.insert("customerId".into(), format!("customer-{}", n % 7).into());
            doc
        })
        .collect();
    read.commit("orders", "orders", docs, 1).await.unwrap();
    raw.batch_execute("ANALYZE search_postings").await.unwrap();
    let bounds = raw
        .query(
            "SELECT 1 FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'search_postings' \
             AND attname = 'id' AND histogram_bounds IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(bounds.len(), 1, "the ids have a histogram to cut searches by");

    let query = |text: &str, filters: Vec<Filter>, limit: usize, offset: usize| SearchQuery {
        text: text.into(),
        filters,
        facets: vec!["status".into(), "tags".into(), "customerId".into()],
        limit,
        offset,
    };
    let customer = || vec![Filter { field: "customerId".into(), value: "customer-3".into() }];
    let queries = [
        query("widget", vec![], 10, 0),
        query("widget", vec![], 7, 60),
        query("widget red", vec![], 10, 0),
        query("widget red", vec![], 4, 12),
        query("red widget filler", vec![], 100, 0),
        query("widget", customer(), 5, 3),
        query("nothing", vec![], 10, 0),
        query("widget red", vec![], 10, 45),
        query("", vec![], 10, 0),
        query("widget red", vec![], 10, 2_000),
    ];
    read.set_search_parts(1);
    let mut whole = Vec::new();
    for query in &queries {
        whole.push(read.search("orders", query).await.unwrap());
    }
    assert_eq!(whole[0].total, 150);
    assert_eq!(whole[1].items.len(), 7);
    assert_eq!(whole[2].total, 50);
    assert!(whole[5].total > 0 && whole[6].total == 0);
    read.set_search_parts(3);
    assert_eq!(read.search_split_points().await.unwrap().len(), 2, "three parts");
    for (query, expected) in queries.iter().zip(&whole) {
        let parted = read.search("orders", query).await.unwrap();
        let ids = |results: &nexus_core::SearchResults| {
            results.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&parted), ids(expected), "page of {:?} at {}", query.text, query.offset);
        assert_eq!(
            (parted.total, &parted.facets),
            (expected.total, &expected.facets),
            "counts of {:?}",
            query.text
        );
    }
}
