//! What the embedded read store's work costs at scale, without the runner around it: commits of
//! N order-like documents (documents and FTS5 in batches of 5,000), then the parts of
//! a one-word search over them, timed as raw SQL, then the whole `search`.
//!
//! `cargo run --release -p nexus-sqlite --example read_store_costs -- [N]` (default 1,000,000).
//! These are the limits `BENCHMARKS.md` sets the read-side figures against.

use std::time::Instant;

use nexus_core::{ReadDocument, ReadStore, SearchQuery};
use serde_json::json;

const WORDS: [&str; 12] = [
    "widget", "gadget", "gizmo", "sprocket", "lever", "bolt", "crate", "valve", "pulley", "gear", "cog",
    "spring",
];

fn order(id: u64) -> ReadDocument {
    let word = WORDS[(id % 12) as usize];
    let mut doc = ReadDocument::empty(format!("order-{id}"), format!("order-{id}"));
    doc.version = 1;
    doc.last_updated = "2026-11-01T00:00:00.000Z".into();
    doc.status = "PLACED".into();
    doc.searchable_text = format!("order-{id} customer-{} {word}-{}", id % 5000, id % 97);
    if id % 5 == 4 {
        doc.tags = vec!["high-value".into()];
    }
    doc.set("customerId", format!("customer-{}", id % 5000));
    doc.set(
        "items",
        json!([{"productId": format!("{word}-{}", id % 97), "quantity": 1 + id % 5, "unitPrice": 10.0}]),
    );
    doc.set("total", (10 * (1 + id % 5)) as f64);
    doc
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::args().nth(1).map(|n| n.parse().expect("N")).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = nexus_sqlite::SqliteReadStore::open(dir.path()).unwrap();

    let started = Instant::now();
    for batch in 0..total.div_ceil(5000) {
        let docs = (batch * 5000..((batch + 1) * 5000).min(total)).map(order).collect();
        store.commit("orders", "orders", docs, batch + 1).await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("committed {total} documents in {seconds:.1} s ({:.0} documents/s)", total as f64 / seconds);

    // The parts of a one-word search, each the best of 3 runs, on a connection set up like the
    // store's readers (the file mapped).
    let conn = rusqlite::Connection::open(dir.path().join("read.db")).unwrap();
    conn.pragma_update(None, "mmap_size", 1i64 << 30).unwrap();
    let matching = "text : (\"widget\")";
    let parts = [
        ("the FTS5 match", "SELECT search_index.rowid FROM search_index WHERE search_index MATCH ?1"),
        ("match + bm25", "SELECT bm25(search_index, 1.0, 0.0) FROM search_index WHERE search_index MATCH ?1"),
        (
            "match + document lookups",
            "SELECT k.id, k.status, k.tags FROM search_index JOIN documents k ON k.docid = search_index.rowid \
             WHERE search_index MATCH ?1 AND k.resource = 'orders'",
        ),
        (
            "match + bm25 + document lookups",
            "SELECT k.id, bm25(search_index, 1.0, 0.0), k.status, k.tags \
             FROM search_index JOIN documents k ON k.docid = search_index.rowid \
             WHERE search_index MATCH ?1 AND k.resource = 'orders'",
        ),
    ];
    for (label, sql) in parts {
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let mut stmt = conn.prepare(sql).unwrap();
            rows = stmt.query_map([matching], |_| Ok(())).unwrap().count();
            best = best.min(started.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{label}: {rows} rows, {best:.1} ms");
    }

    let query = SearchQuery {
        text: "widget".into(),
        filters: vec![],
        facets: vec!["status".into(), "tags".into()],
        limit: 20,
        offset: 0,
    };
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        store.search("orders", &query).await.unwrap();
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!("search \"widget\" + facets status,tags (the whole ReadStore::search): best of 5 {best:.1} ms");
}
