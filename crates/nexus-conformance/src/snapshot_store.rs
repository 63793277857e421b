//! Snapshot store cases.

use std::sync::Arc;

use nexus_core::ports::{AppendRequest, NewEvent};
use nexus_core::{EventMetadata, EventStore, Snapshot, SnapshotStore};
use serde_json::json;

fn snapshot(id: &str, version: u64, taken_at: &str) -> Snapshot {
    Snapshot {
        aggregate_id: id.to_owned(),
        aggregate_type: "Test".into(),
        version,
        schema_version: 1,
        state: json!({"version": version, "nested": {"list": [1, 2, 3]}}),
        taken_at: taken_at.to_owned(),
    }
}

async fn append(events: &Arc<dyn EventStore>, id: &str, from: u64, count: u64, at: &str) {
    let new = (0..count)
        .map(|n| NewEvent {
            event_id: format!("{id}-{}", from + n + 1),
            event_type: "Happened".into(),
            timestamp: at.to_owned(),
            payload: json!({}).into(),
            metadata: EventMetadata::default(),
        })
        .collect();
    let request = AppendRequest {
        aggregate_id: id.to_owned(),
        aggregate_type: "Test".into(),
        expected_version: from,
        events: new,
        command: None,
    };
    events.append(request).await.unwrap();
}

pub async fn latest_is_the_highest_version(_events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) {
    assert_eq!(snapshots.latest("a").await.unwrap(), None);
    snapshots.save(snapshot("a", 10, "2026-01-01T00:00:00.000Z")).await.unwrap();
    snapshots.save(snapshot("a", 20, "2026-01-02T00:00:00.000Z")).await.unwrap();
    snapshots.save(snapshot("a", 10, "2026-01-03T00:00:00.000Z")).await.unwrap();
    snapshots.save(snapshot("b", 5, "2026-01-01T00:00:00.000Z")).await.unwrap();
    let latest = snapshots.latest("a").await.unwrap().expect("saved");
    assert_eq!(latest, snapshot("a", 20, "2026-01-02T00:00:00.000Z"), "read back exactly, highest version");
    assert_eq!(snapshots.latest("b").await.unwrap().unwrap().version, 5);
    assert_eq!(snapshots.latest("c").await.unwrap(), None);

    let then = snapshots.latest_at_or_before("a", "2026-01-02T12:00:00.000Z").await.unwrap().unwrap();
    assert_eq!(then.version, 20, "the highest version taken by then");
    let earlier = snapshots.latest_at_or_before("a", "2026-01-01T12:00:00.000Z").await.unwrap().unwrap();
    assert_eq!(earlier.version, 10);
    assert_eq!(snapshots.latest_at_or_before("a", "2025-12-31T00:00:00.000Z").await.unwrap(), None);
}

pub async fn stale_lists_active_aggregates_with_old_snapshots(
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let old = "2026-01-01T00:00:00.000Z";
    let cutoff = "2026-01-02T00:00:00.000Z";
    let recent = "2026-01-03T00:00:00.000Z";
    // active, snapshot old: listed
    append(&events, "old-active", 0, 12, old).await;
    snapshots.save(snapshot("old-active", 2, old)).await.unwrap();
    // no events since its snapshot: not listed
    append(&events, "old-idle", 0, 12, old).await;
    snapshots.save(snapshot("old-idle", 12, old)).await.unwrap();
    // snapshot recent: not listed
    append(&events, "fresh", 0, 12, old).await;
    snapshots.save(snapshot("fresh", 2, recent)).await.unwrap();
    // no snapshot, first event old, enough events: listed
    append(&events, "never", 0, 12, old).await;
    // no snapshot but too few events: not listed
    append(&events, "small", 0, 3, old).await;
    // no snapshot, first event recent: not listed
    append(&events, "new", 0, 12, recent).await;

    let mut stale = snapshots.stale(cutoff, 5, 100).await.unwrap();
    stale.sort();
    assert_eq!(stale, ["never", "old-active"]);
    assert_eq!(snapshots.stale(cutoff, 5, 1).await.unwrap().len(), 1, "limit holds");
}
