//! Schema store cases.

use std::sync::Arc;

use nexus_core::SchemaStore;

pub async fn versions_ids_and_idempotent_registration(store: Arc<dyn SchemaStore>) {
    assert!(store.subjects().await.unwrap().is_empty());
    let v1 = store.register("Thing", r#"{"type":"object"}"#, "JSON").await.unwrap();
    assert_eq!((v1.subject.as_str(), v1.version), ("Thing", 1));
    let again = store.register("Thing", r#"{"type":"object"}"#, "JSON").await.unwrap();
    assert_eq!(again, v1, "the same text under the same subject is the same version");
    let v2 = store.register("Thing", r#"{"type":"object","properties":{}}"#, "JSON").await.unwrap();
    assert_eq!(v2.version, 2);
    assert_ne!(v2.id, v1.id);
    let other = store.register("Other", r#"{"type":"object"}"#, "JSON").await.unwrap();
    assert_eq!((other.version, other.id), (1, v1.id), "identical text shares its global id");

    assert_eq!(store.subjects().await.unwrap(), ["Other", "Thing"]);
    let versions = store.versions("Thing").await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(versions[1].schema, r#"{"type":"object","properties":{}}"#);
    assert!(store.versions("Missing").await.unwrap().is_empty());
    assert_eq!(store.by_id(v2.id).await.unwrap().unwrap().schema, v2.schema);
    assert_eq!(store.by_id(9999).await.unwrap(), None);
}

pub async fn compatibility_settings_are_global_and_per_subject(store: Arc<dyn SchemaStore>) {
    assert_eq!(store.compatibility(None).await.unwrap(), None);
    store.set_compatibility(None, "FULL").await.unwrap();
    store.set_compatibility(Some("Thing"), "NONE").await.unwrap();
    store.set_compatibility(Some("Thing"), "FORWARD").await.unwrap();
    assert_eq!(store.compatibility(None).await.unwrap().as_deref(), Some("FULL"));
    assert_eq!(store.compatibility(Some("Thing")).await.unwrap().as_deref(), Some("FORWARD"));
    assert_eq!(store.compatibility(Some("Other")).await.unwrap(), None);
}
