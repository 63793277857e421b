//! One process per data directory: a second event store on the same directory is refused with a
//! message naming the holder, and the directory is free again once the first store is gone.

use nexus_core::EventStore;
use nexus_sqlite::SqliteEventStore;

#[tokio::test]
async fn a_second_store_on_one_data_directory_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteEventStore::open(dir.path()).unwrap();
    assert_eq!(first.head().await.unwrap(), 0);

    // In-process stand-in for a second `nexus serve`: flock locks are per open file description,
    // so a second open in this process conflicts just as another process would.
    let Err(error) = SqliteEventStore::open(dir.path()) else { panic!("a second writer was let in") };
    let message = error.to_string();
    assert!(message.contains("in use by another nexus process"), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");

    drop(first);
    let again = SqliteEventStore::open(dir.path()).expect("free once the first store is dropped");
    assert_eq!(again.head().await.unwrap(), 0);
}
