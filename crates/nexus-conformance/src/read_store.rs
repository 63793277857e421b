//! Read store cases.

use std::sync::Arc;

use nexus_core::ports::{Filter, ListQuery, SortOrder};
use nexus_core::{ReadDocument, ReadStore};
use serde_json::json;

fn doc(id: &str, version: u64, status: &str, total: f64, tags: &[&str]) -> ReadDocument {
    let mut doc = ReadDocument::empty(id, id);
    doc.version = version;
    doc.last_updated = "2026-01-01T00:00:00.000Z".into();
    doc.status = status.into();
    doc.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    doc.set("total", total);
    doc.set("customerId", json!(format!("c-{}", version % 2)));
    doc
}

pub async fn commit_writes_documents_and_checkpoint(store: Arc<dyn ReadStore>) {
    assert_eq!(store.checkpoint("p").await.unwrap(), 0, "a new projection starts at 0");
    store.commit("p", "things", vec![doc("a", 1, "NEW", 1.0, &[])], 7).await.unwrap();
    assert_eq!(store.checkpoint("p").await.unwrap(), 7);
    assert_eq!(store.checkpoint("other").await.unwrap(), 0, "checkpoints are per projection");
    let found = store.get("things", "a").await.unwrap().expect("document stored");
    assert_eq!(found, doc("a", 1, "NEW", 1.0, &[]), "read back exactly what was written");
    assert_eq!(store.get("others", "a").await.unwrap(), None, "resources are separate");
    store.commit("p", "things", Vec::new(), 9).await.unwrap();
    assert_eq!(store.checkpoint("p").await.unwrap(), 9, "an empty batch still moves the checkpoint");
    store.commit("p", "things", Vec::new(), 8).await.unwrap();
    assert_eq!(store.checkpoint("p").await.unwrap(), 9, "a checkpoint never moves back");
    store.ping().await.unwrap();
}

pub async fn older_versions_never_overwrite_newer(store: Arc<dyn ReadStore>) {
    store.commit("p", "things", vec![doc("a", 2, "NEWER", 1.0, &[])], 2).await.unwrap();
    store.commit("p", "things", vec![doc("a", 1, "OLDER", 1.0, &[])], 3).await.unwrap();
    assert_eq!(store.get("things", "a").await.unwrap().unwrap().status, "NEWER");
    store.commit("p", "things", vec![doc("a", 3, "NEWEST", 1.0, &[])], 4).await.unwrap();
    assert_eq!(store.get("things", "a").await.unwrap().unwrap().version, 3);
}

pub async fn replace_overwrites_the_same_version_only(store: Arc<dyn ReadStore>) {
    store.commit("p", "things", vec![doc("a", 2, "FIRST", 1.0, &[])], 2).await.unwrap();
    store.commit("p", "things", vec![doc("a", 2, "IGNORED", 1.0, &[])], 3).await.unwrap();
    assert_eq!(
        store.get("things", "a").await.unwrap().unwrap().status,
        "FIRST",
        "commit needs a newer version"
    );
    store.replace("p~late", "things", vec![doc("a", 2, "REPLACED", 1.0, &[])], 7).await.unwrap();
    let stored = store.get("things", "a").await.unwrap().unwrap();
    assert_eq!((stored.status.as_str(), stored.version), ("REPLACED", 2));
    assert_eq!(store.checkpoint("p~late").await.unwrap(), 7, "the checkpoint commits with it");
    store.replace("p~late", "things", vec![doc("a", 1, "OLDER", 1.0, &[])], 8).await.unwrap();
    assert_eq!(store.get("things", "a").await.unwrap().unwrap().status, "REPLACED", "older never wins");
    let listed = store
        .list("things", &ListQuery { filters: Vec::new(), sort: None, limit: 10, offset: 0 })
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.items[0].status, "REPLACED");
}

pub async fn list_filters_sorts_and_pages(store: Arc<dyn ReadStore>) {
    let docs = vec![
        doc("a", 1, "PLACED", 30.0, &["high-value"]),
        doc("b", 2, "PLACED", 10.0, &[]),
        doc("c", 3, "SHIPPED", 20.0, &["high-value"]),
        doc("d", 4, "PLACED", 40.0, &[]),
    ];
    store.commit("p", "orders", docs, 4).await.unwrap();
    store.commit("q", "other", vec![doc("z", 1, "PLACED", 99.0, &[])], 1).await.unwrap();
    let query = |filters: Vec<(&str, &str)>, sort: Option<(&str, SortOrder)>, limit, offset| ListQuery {
        filters: filters.into_iter().map(|(f, v)| Filter { field: f.into(), value: v.into() }).collect(),
        sort: sort.map(|(f, o)| (f.to_owned(), o)),
        limit,
        offset,
    };
    let ids = |page: &nexus_core::ports::Page| page.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>();

    let placed = store.list("orders", &query(vec![("status", "PLACED")], None, 10, 0)).await.unwrap();
    assert_eq!((ids(&placed), placed.total), (vec!["a".into(), "b".into(), "d".into()], 3));

    let by_total =
        store.list("orders", &query(vec![], Some(("total", SortOrder::Desc)), 2, 0)).await.unwrap();
    assert_eq!((ids(&by_total), by_total.total), (vec!["d".into(), "a".into()], 4));
    let next = store.list("orders", &query(vec![], Some(("total", SortOrder::Desc)), 2, 2)).await.unwrap();
    assert_eq!(ids(&next), ["c", "b"]);

    let tagged = store.list("orders", &query(vec![("tags", "high-value")], None, 10, 0)).await.unwrap();
    assert_eq!(ids(&tagged), ["a", "c"], "array fields match by membership");
    let numeric = store.list("orders", &query(vec![("total", "20")], None, 10, 0)).await.unwrap();
    assert_eq!(ids(&numeric), ["c"], "numbers match their text form");
    let both = store
        .list("orders", &query(vec![("status", "PLACED"), ("customerId", "c-0")], None, 10, 0))
        .await
        .unwrap();
    assert_eq!(ids(&both), ["b", "d"], "filters combine with AND");
    assert!(store.list("orders", &query(vec![("bad field!", "x")], None, 10, 0)).await.is_err());
}

pub async fn load_returns_existing_documents_only(store: Arc<dyn ReadStore>) {
    store
        .commit("p", "things", vec![doc("a", 1, "X", 1.0, &[]), doc("b", 1, "Y", 1.0, &[])], 2)
        .await
        .unwrap();
    let mut loaded = store.load("things", &["a".into(), "missing".into(), "b".into()]).await.unwrap();
    loaded.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(loaded.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

pub async fn search_ranks_filters_and_counts_facets(store: Arc<dyn ReadStore>) {
    use nexus_core::SearchQuery;
    let mut docs = vec![
        doc("o1", 1, "PLACED", 10.0, &["gift"]),
        doc("o2", 1, "SHIPPED", 20.0, &["gift", "express"]),
        doc("o3", 1, "PLACED", 30.0, &[]),
        doc("o4", 1, "PLACED", 40.0, &["express"]),
    ];
    docs[0].searchable_text = "red widget red widget for alice".into();
    docs[1].searchable_text = "red widget for bob".into();
    docs[2].searchable_text = "blue gadget for alice".into();
    docs[3].searchable_text = "green widget for carol".into();
    store.commit("p", "orders", docs, 4).await.unwrap();
    store.commit("q", "other", vec![doc("z", 1, "PLACED", 1.0, &[])], 1).await.unwrap();
    let search = |text: &str, filters: Vec<(&str, &str)>| SearchQuery {
        text: text.into(),
        filters: filters.into_iter().map(|(f, v)| Filter { field: f.into(), value: v.into() }).collect(),
        facets: vec!["status".into(), "tags".into()],
        limit: 10,
        offset: 0,
    };
    let ids = |items: &[ReadDocument]| items.iter().map(|d| d.id.clone()).collect::<Vec<_>>();

    let red = store.search("orders", &search("red widget", vec![])).await.unwrap();
    assert_eq!(ids(&red.items), ["o1", "o2"], "every word must match; more occurrences rank first");
    assert_eq!(red.total, 2);
    let widget = store.search("orders", &search("WIDGET", vec![])).await.unwrap();
    assert_eq!(widget.total, 3, "case-insensitive");
    assert_eq!(widget.facets["status"], [("PLACED".to_owned(), 2), ("SHIPPED".to_owned(), 1)].into());
    assert_eq!(widget.facets["tags"], [("express".to_owned(), 2), ("gift".to_owned(), 2)].into());

    let filtered = store.search("orders", &search("alice", vec![("status", "PLACED")])).await.unwrap();
    let mut found = ids(&filtered.items);
    found.sort();
    assert_eq!(found, ["o1", "o3"], "text and field filters combine");
    assert_eq!(filtered.total, 2);
    let everything = store.search("orders", &search("", vec![("tags", "express")])).await.unwrap();
    assert_eq!(everything.total, 2, "no words: filters alone");
    assert!(store.search("orders", &search("nothing-matches", vec![])).await.unwrap().items.is_empty());
    assert_eq!(store.search("orders", &search("!!!", vec![])).await.unwrap().total, 0, "no word in the text");
    assert!(
        matches!(
            store.search("orders", &search("!!!", vec![("bad field", "x")])).await,
            Err(nexus_core::StoreError::InvalidRequest(_))
        ),
        "a bad filter is refused whatever the text"
    );
    assert_eq!(
        store.search("other", &search("widget", vec![])).await.unwrap().total,
        0,
        "resources are separate"
    );
    // As often in a shorter text ranks first: "n1" first on its id alone.
    let mut notes = vec![doc("n1", 1, "NEW", 1.0, &[]), doc("n2", 1, "NEW", 1.0, &[])];
    notes[0].searchable_text = "widget order for alice from the north warehouse".into();
    notes[1].searchable_text = "widget order".into();
    store.commit("n", "notes", notes, 1).await.unwrap();
    let notes = store.search("notes", &search("widget", vec![])).await.unwrap();
    assert_eq!(ids(&notes.items), ["n2", "n1"], "a shorter document ranks first");

    // An updated document is found by its new text only.
    let mut moved = doc("o3", 2, "PLACED", 30.0, &[]);
    moved.searchable_text = "yellow gizmo".into();
    store.commit("p", "orders", vec![moved], 5).await.unwrap();
    assert_eq!(store.search("orders", &search("gadget", vec![])).await.unwrap().total, 0);
    assert_eq!(ids(&store.search("orders", &search("gizmo", vec![])).await.unwrap().items), ["o3"]);
}

pub async fn search_filters_match_like_list_filters(store: Arc<dyn ReadStore>) {
    use nexus_core::SearchQuery;
    let long = "x".repeat(100);
    let mut docs = Vec::new();
    for (n, total) in [json!(20), json!(20.0), json!(20.5), json!("20")].into_iter().enumerate() {
        let mut d =
            doc(&format!("d{n}"), n as u64 + 1, if n % 2 == 0 { "PLACED" } else { "SHIPPED" }, 0.0, &[]);
        d.searchable_text = format!("common word{n}");
        d.set("total", total);
        d.set("gift", n % 2 == 0);
        d.set("customer", json!({"name": format!("name-{}", n % 2)}));
        d.set("note", if n == 3 { long.clone() } else { format!("short-{n}") });
        d.set("codes", json!([n, format!("c{n}")]));
        docs.push(d);
    }
    store.commit("p", "things", docs, 4).await.unwrap();
    let ids = |items: &[ReadDocument]| {
        let mut ids: Vec<String> = items.iter().map(|d| d.id.clone()).collect();
        ids.sort();
        ids
    };
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("total", "20")],
        vec![("total", "20.0")],
        vec![("total", "20.5")],
        vec![("gift", "true")],
        vec![("gift", "false")],
        vec![("customer.name", "name-1")],
        vec![("note", long.as_str())],
        vec![("note", "short-1")],
        vec![("codes", "2")],
        vec![("codes", "c3")],
        vec![("status", "SHIPPED"), ("total", "20")],
        vec![("missing", "x")],
        vec![("id", "d2")],
        vec![("version", "2")],
    ];
    for filters in cases {
        let filters: Vec<Filter> =
            filters.iter().map(|(f, v)| Filter { field: (*f).into(), value: (*v).into() }).collect();
        let listed = store
            .list("things", &ListQuery { filters: filters.clone(), sort: None, limit: 10, offset: 0 })
            .await
            .unwrap();
        for text in ["", "common"] {
            let query = SearchQuery {
                text: text.into(),
                filters: filters.clone(),
                facets: vec!["status".into(), "customer.name".into()],
                limit: 10,
                offset: 0,
            };
            let found = store.search("things", &query).await.unwrap();
            assert_eq!(ids(&found.items), ids(&listed.items), "search '{text}' with {filters:?}");
            assert_eq!(found.total, listed.total, "total of '{text}' with {filters:?}");
            let placed = listed.items.iter().filter(|d| d.status == "PLACED").count() as u64;
            assert_eq!(found.facets["status"].get("PLACED").copied().unwrap_or(0), placed, "{filters:?}");
            let named =
                listed.items.iter().filter(|d| d.fields["customer"]["name"] == "name-1").count() as u64;
            assert_eq!(
                found.facets["customer.name"].get("name-1").copied().unwrap_or(0),
                named,
                "{filters:?}"
            );
        }
    }

    // Pages of a ranked search: the same order as one big page.
    let query =
        |limit, offset| SearchQuery { text: "common".into(), filters: vec![], facets: vec![], limit, offset };
    let all = store.search("things", &query(10, 0)).await.unwrap().items;
    let first = store.search("things", &query(2, 0)).await.unwrap().items;
    let second = store.search("things", &query(2, 2)).await.unwrap();
    assert_eq!([first, second.items].concat(), all);
    assert_eq!(second.total, 4);
}

/// One word ranks by BM25: more occurrences and a shorter text rank higher, equal scores go to
/// the lower id, and pages of any size follow one order (a backend may read a page from the
/// best of each frequency, so several frequencies, lengths and a tie are here).
pub async fn one_word_ranks_by_frequency_and_length_in_pages(store: Arc<dyn ReadStore>) {
    use nexus_core::SearchQuery;
    // BM25 (k1 1.2, b 0.75, average length 3.5 words) before the word's IDF: d 1.62, c and g
    // 1.41, f 1.32, e 1.21, b 1.01, a 0.66; "h" has no "w".
    let texts = [
        ("a", "w x x x x x x x"),
        ("b", "w w x x x x x x"),
        ("c", "w"),
        ("d", "w w w"),
        ("e", "w x"),
        ("f", "w w x x"),
        ("g", "w"),
        ("h", "x"),
    ];
    let docs = texts
        .iter()
        .map(|(id, text)| {
            let mut d = doc(id, 1, "NEW", 1.0, &[]);
            d.searchable_text = (*text).into();
            d
        })
        .collect();
    store.commit("p", "words", docs, 1).await.unwrap();
    let query =
        |limit, offset| SearchQuery { text: "w".into(), filters: vec![], facets: vec![], limit, offset };
    let ids = |items: Vec<ReadDocument>| items.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let all = store.search("words", &query(10, 0)).await.unwrap();
    assert_eq!(all.total, 7);
    assert_eq!(ids(all.items), ["d", "c", "g", "f", "e", "b", "a"]);
    for size in [1, 2, 3] {
        let mut paged = Vec::new();
        for offset in (0..7).step_by(size) {
            paged.extend(ids(store.search("words", &query(size, offset)).await.unwrap().items));
        }
        assert_eq!(paged, ["d", "c", "g", "f", "e", "b", "a"], "pages of {size}");
    }
}

pub async fn a_shadow_swaps_in_atomically(store: Arc<dyn ReadStore>) {
    use nexus_core::SearchQuery;
    let mut old = doc("a", 5, "OLD", 1.0, &[]);
    old.searchable_text = "stale words".into();
    store.commit("orders", "orders", vec![old, doc("gone", 1, "OLD", 1.0, &[])], 50).await.unwrap();
    store
        .commit("orders~rebuild", "orders~rebuild", vec![doc("leftover", 1, "X", 1.0, &[])], 3)
        .await
        .unwrap();
    store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
    assert_eq!(store.checkpoint("orders~rebuild").await.unwrap(), 0, "cleared");
    let mut new = doc("a", 5, "NEW", 1.0, &[]);
    new.searchable_text = "fresh words".into();
    store.commit("orders~rebuild", "orders~rebuild", vec![new], 40).await.unwrap();
    assert_eq!(
        store.get("orders", "a").await.unwrap().unwrap().status,
        "OLD",
        "live untouched until the swap"
    );

    store.swap("orders", "orders~rebuild").await.unwrap();
    assert_eq!(store.get("orders", "a").await.unwrap().unwrap().status, "NEW");
    assert_eq!(store.get("orders", "gone").await.unwrap(), None, "the old model is gone");
    assert_eq!(store.get("orders", "leftover").await.unwrap(), None, "cleared before the rebuild");
    assert_eq!(store.checkpoint("orders").await.unwrap(), 40, "the rebuilt model's checkpoint");
    assert_eq!(store.checkpoint("orders~rebuild").await.unwrap(), 0);
    assert_eq!(store.get("orders~rebuild", "a").await.unwrap(), None);
    let search =
        |text: &str| SearchQuery { text: text.into(), filters: vec![], facets: vec![], limit: 10, offset: 0 };
    assert_eq!(
        store.search("orders", &search("fresh")).await.unwrap().total,
        1,
        "the index follows the swap"
    );
    assert_eq!(store.search("orders", &search("stale")).await.unwrap().total, 0);

    // And again: the next rebuild's shadow starts empty and never touches the live model.
    store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
    assert_eq!(store.get("orders~rebuild", "a").await.unwrap(), None);
    let mut newer = doc("b", 6, "NEWER", 1.0, &[]);
    newer.searchable_text = "newer words".into();
    store.commit("orders~rebuild", "orders~rebuild", vec![newer], 60).await.unwrap();
    assert_eq!(store.get("orders", "a").await.unwrap().unwrap().status, "NEW", "live untouched");
    assert_eq!(store.get("orders", "b").await.unwrap(), None);
    store.swap("orders", "orders~rebuild").await.unwrap();
    assert_eq!(store.get("orders", "a").await.unwrap(), None);
    assert_eq!(store.get("orders", "b").await.unwrap().unwrap().status, "NEWER");
    assert_eq!(store.checkpoint("orders").await.unwrap(), 60);
    assert_eq!(store.search("orders", &search("words")).await.unwrap().total, 1);
    let listed =
        store.list("orders", &ListQuery { filters: vec![], sort: None, limit: 10, offset: 0 }).await.unwrap();
    assert_eq!(listed.total, 1);
}

/// A list query from `(field, value)` filters.
fn list_query(
    filters: &[(&str, &str)],
    sort: Option<(&str, SortOrder)>,
    limit: usize,
    offset: usize,
) -> ListQuery {
    ListQuery {
        filters: filters.iter().map(|(f, v)| Filter { field: (*f).into(), value: (*v).into() }).collect(),
        sort: sort.map(|(f, o)| (f.to_owned(), o)),
        limit,
        offset,
    }
}

/// Lists `resource` with `filters` in one page and checks both the ids (in id order) and that
/// the total is exactly how many there are.
async fn assert_listed(
    store: &Arc<dyn ReadStore>,
    resource: &str,
    filters: &[(&str, &str)],
    expected: &[&str],
) {
    let page = store.list(resource, &list_query(filters, None, 100, 0)).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, expected, "{resource} with {filters:?}");
    assert_eq!(page.total, expected.len() as u64, "total of {resource} with {filters:?}");
}

/// A list's total is exact however it is answered (a backend may keep counts per status rather
/// than count): with no filter, with `status` alone, with `status` and another filter, as
/// documents move from one status to another, when a stale version is refused, and after a
/// rebuild's clear and swap.
pub async fn list_totals_stay_exact_as_documents_change(store: Arc<dyn ReadStore>) {
    store.index_fields("orders", &["total", "customerId"]).await.unwrap();
    store.index_fields("orders", &["total", "customerId"]).await.unwrap();
    assert!(
        matches!(
            store.index_fields("orders", &["bad field!"]).await,
            Err(nexus_core::StoreError::InvalidRequest(_))
        ),
        "field names are checked"
    );
    let docs = vec![
        doc("a", 1, "PLACED", 10.0, &[]),
        doc("b", 2, "PLACED", 20.0, &[]),
        doc("c", 3, "SHIPPED", 30.0, &[]),
        doc("d", 4, "PLACED", 40.0, &[]),
        doc("e", 5, "CANCELLED", 50.0, &[]),
    ];
    store.commit("p", "orders", docs, 5).await.unwrap();
    store.commit("q", "other", vec![doc("z", 1, "PLACED", 1.0, &[])], 1).await.unwrap();
    assert_listed(&store, "orders", &[], &["a", "b", "c", "d", "e"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED")], &["a", "b", "d"]).await;
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &["c"]).await;
    assert_listed(&store, "orders", &[("status", "placed")], &[]).await;
    assert_listed(&store, "orders", &[("status", "")], &[]).await;
    assert_listed(&store, "orders", &[("status", "PLACED"), ("customerId", "c-0")], &["b", "d"]).await;
    assert_listed(&store, "orders", &[("customerId", "c-1")], &["a", "c", "e"]).await;
    assert_listed(&store, "nothing", &[], &[]).await;
    assert_listed(&store, "nothing", &[("status", "PLACED")], &[]).await;
    let page = store.list("orders", &list_query(&[("status", "PLACED")], None, 1, 1)).await.unwrap();
    assert_eq!((page.items[0].id.as_str(), page.total), ("b", 3), "a page's total is every match's");
    let page = store.list("orders", &list_query(&[("status", "PLACED")], None, 2, 5)).await.unwrap();
    assert_eq!((page.items.len(), page.total), (0, 3), "past the end");

    // PLACED → SHIPPED, an update that keeps its status, a stale version (refused), a new one.
    store.commit("p", "orders", vec![doc("a", 2, "SHIPPED", 10.0, &[])], 6).await.unwrap();
    store.commit("p", "orders", vec![doc("b", 3, "PLACED", 25.0, &[])], 7).await.unwrap();
    store.commit("p", "orders", vec![doc("d", 1, "CANCELLED", 40.0, &[])], 8).await.unwrap();
    store.commit("p", "orders", vec![doc("f", 1, "PLACED", 60.0, &[])], 9).await.unwrap();
    assert_listed(&store, "orders", &[], &["a", "b", "c", "d", "e", "f"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED")], &["b", "d", "f"]).await;
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &["a", "c"]).await;
    assert_listed(&store, "orders", &[("status", "CANCELLED")], &["e"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED"), ("customerId", "c-1")], &["b", "f"]).await;
    // One batch moving a document twice, and one moving several at once.
    store
        .commit(
            "p",
            "orders",
            vec![
                doc("c", 4, "CANCELLED", 30.0, &[]),
                doc("c", 5, "PLACED", 30.0, &[]),
                doc("e", 6, "SHIPPED", 50.0, &[]),
            ],
            10,
        )
        .await
        .unwrap();
    assert_listed(&store, "orders", &[("status", "PLACED")], &["b", "c", "d", "f"]).await;
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &["a", "e"]).await;
    assert_listed(&store, "orders", &[("status", "CANCELLED")], &[]).await;
    assert_listed(&store, "other", &[("status", "PLACED")], &["z"]).await;

    // A rebuild: the shadow's totals are its own, the live model's stay until the swap.
    store.commit("orders~rebuild", "orders~rebuild", vec![doc("x", 1, "PLACED", 1.0, &[])], 1).await.unwrap();
    store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
    assert_listed(&store, "orders~rebuild", &[], &[]).await;
    let shadow = vec![
        doc("a", 2, "SHIPPED", 10.0, &[]),
        doc("g", 1, "PLACED", 70.0, &[]),
        doc("h", 1, "NEW", 80.0, &[]),
    ];
    store.commit("orders~rebuild", "orders~rebuild", shadow, 20).await.unwrap();
    assert_listed(&store, "orders~rebuild", &[("status", "PLACED")], &["g"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED")], &["b", "c", "d", "f"]).await;
    store.swap("orders", "orders~rebuild").await.unwrap();
    assert_listed(&store, "orders", &[], &["a", "g", "h"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED")], &["g"]).await;
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &["a"]).await;
    assert_listed(&store, "orders", &[("status", "NEW"), ("customerId", "c-1")], &["h"]).await;
    assert_listed(&store, "orders~rebuild", &[], &[]).await;
    store.commit("orders", "orders", vec![doc("g", 2, "SHIPPED", 70.0, &[])], 21).await.unwrap();
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &["a", "g"]).await;
    assert_listed(&store, "orders", &[("status", "PLACED")], &[]).await;
    // Cleared and swapped in empty: nothing left to count.
    store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
    store.swap("orders", "orders~rebuild").await.unwrap();
    assert_listed(&store, "orders", &[], &[]).await;
    assert_listed(&store, "orders", &[("status", "SHIPPED")], &[]).await;
}

/// A sort on an indexed field orders exactly as a sort on any field: missing and null first,
/// then numbers and booleans (as 0/1) by value, then text bytewise, ties by id; descending is
/// exactly ascending reversed (ties too, so one index serves both); pages of any size follow one
/// order; filters combine; a rebuild keeps it.
pub async fn list_sorts_on_indexed_fields_in_pages(store: Arc<dyn ReadStore>) {
    store.index_fields("orders", &["total", "shipping.city"]).await.unwrap();
    let values = [
        ("m1", None),
        ("n1", Some(json!(null))),
        ("t1", Some(json!(true))),
        ("f1", Some(json!(false))),
        ("a", Some(json!(10))),
        ("b", Some(json!(10.0))),
        ("c", Some(json!(2.5))),
        ("d", Some(json!(-3))),
        ("e", Some(json!(1))),
        ("s1", Some(json!("20"))),
        ("s2", Some(json!("Zeta"))),
        ("s3", Some(json!("alpha"))),
        ("s4", Some(json!("alpha"))),
        ("s5", Some(json!("é"))),
        ("s6", Some(json!(""))),
    ];
    let mut docs = Vec::new();
    for (n, (id, value)) in values.iter().enumerate() {
        let mut d = doc(id, 1, if n % 3 == 0 { "SHIPPED" } else { "PLACED" }, 0.0, &[]);
        d.fields.remove("total");
        if let Some(value) = value {
            // The same value in an indexed field and in one that is not.
            d.set("total", value.clone());
            d.set("amount", value.clone());
        }
        if let Some(city) = [Some("Oslo"), Some("Bergen"), None][n % 3] {
            d.set("shipping", json!({ "city": city }));
        }
        docs.push(d);
    }
    store.commit("p", "orders", docs.clone(), 1).await.unwrap();
    // A filter on an indexed field matches as on any other: numbers by value, booleans by name,
    // text exactly.
    for (value, wanted) in
        [("10", &["a", "b"][..]), ("true", &["t1"]), ("alpha", &["s3", "s4"]), ("20", &["s1"])]
    {
        for field in ["total", "amount"] {
            assert_listed(&store, "orders", &[(field, value)], wanted).await;
        }
    }
    // And arrays by a member, whichever else the field holds.
    store.index_fields("labelled", &["labels"]).await.unwrap();
    let labelled =
        [("l1", json!(["red", "blue"])), ("l2", json!("red")), ("l3", json!(["green", 7])), ("l4", json!(7))];
    let labelled: Vec<ReadDocument> = labelled
        .into_iter()
        .map(|(id, labels)| {
            let mut d = doc(id, 1, "PLACED", 0.0, &[]);
            d.set("labels", labels);
            d
        })
        .collect();
    store.commit("labelled", "labelled", labelled, 1).await.unwrap();
    assert_listed(&store, "labelled", &[("labels", "red")], &["l1", "l2"]).await;
    assert_listed(&store, "labelled", &[("labels", "7")], &["l3", "l4"]).await;
    assert_listed(&store, "labelled", &[("labels", "blue"), ("status", "PLACED")], &["l1"]).await;
    let ascending = ["m1", "n1", "d", "f1", "e", "t1", "c", "a", "b", "s6", "s1", "s2", "s3", "s4", "s5"];
    let descending: Vec<&str> = ascending.iter().rev().copied().collect();
    let descending: [&str; 15] = descending.try_into().unwrap();
    let ids = |page: &nexus_core::ports::Page| page.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    let shipped: Vec<&str> =
        values.iter().enumerate().filter(|(n, _)| n % 3 == 0).map(|(_, (id, _))| *id).collect();

    for resource in ["orders", "orders~rebuild"] {
        for (order, expected) in [(SortOrder::Asc, ascending), (SortOrder::Desc, descending)] {
            for field in ["total", "amount"] {
                let all = store.list(resource, &list_query(&[], Some((field, order)), 100, 0)).await.unwrap();
                assert_eq!(ids(&all), expected, "{resource} by {field} {order:?}");
                assert_eq!(all.total, 15);
                for size in [1, 2, 4] {
                    let mut paged = Vec::new();
                    for offset in (0..16).step_by(size) {
                        let page = store
                            .list(resource, &list_query(&[], Some((field, order)), size, offset))
                            .await
                            .unwrap();
                        assert_eq!(page.total, 15, "total of a page");
                        paged.extend(ids(&page));
                    }
                    assert_eq!(paged, expected, "{resource} by {field} {order:?} in pages of {size}");
                }
                let filtered = store
                    .list(resource, &list_query(&[("status", "SHIPPED")], Some((field, order)), 100, 0))
                    .await
                    .unwrap();
                let wanted: Vec<&str> = expected.iter().copied().filter(|id| shipped.contains(id)).collect();
                assert_eq!(ids(&filtered), wanted, "{resource} SHIPPED by {field} {order:?}");
                assert_eq!(filtered.total, wanted.len() as u64);
                let page = store
                    .list(resource, &list_query(&[("status", "SHIPPED")], Some((field, order)), 2, 1))
                    .await
                    .unwrap();
                assert_eq!(
                    (ids(&page), page.total),
                    (wanted[1..3].iter().map(|s| (*s).to_owned()).collect(), 5)
                );
            }
        }
        let by_city = store
            .list(resource, &list_query(&[], Some(("shipping.city", SortOrder::Asc)), 100, 0))
            .await
            .unwrap();
        let cities: Vec<String> = ids(&by_city);
        // Without a city (n % 3 == 2) first, by id; then Bergen (n % 3 == 1), then Oslo (n % 3 == 0).
        let mut expected: Vec<(usize, &str)> =
            values.iter().enumerate().map(|(n, (id, _))| ([2, 1, 0][n % 3], *id)).collect();
        expected.sort();
        assert_eq!(
            cities,
            expected.iter().map(|(_, id)| (*id).to_owned()).collect::<Vec<_>>(),
            "{resource} by a nested field"
        );

        // The same documents rebuilt into a shadow and swapped in sort the same.
        if resource == "orders" {
            store.clear("orders~rebuild", "orders~rebuild").await.unwrap();
            store.commit("orders~rebuild", "orders~rebuild", docs.clone(), 1).await.unwrap();
        } else {
            store.swap("orders", "orders~rebuild").await.unwrap();
        }
    }
    for (order, expected) in [(SortOrder::Asc, ascending), (SortOrder::Desc, descending)] {
        let all = store.list("orders", &list_query(&[], Some(("total", order)), 100, 0)).await.unwrap();
        assert_eq!(ids(&all), expected, "swapped in, by total {order:?}");
    }
}
