//! Leases held in this process's memory: exact for a single process, which is what the embedded
//! store guarantees (it refuses a second process on its data directory).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nexus_core::{Lease, Leases, StoreError};

#[derive(Default)]
pub struct InProcessLeases {
    // A std mutex: held for a set insert or remove, never across an await.
    held: Arc<Mutex<HashSet<String>>>,
}

struct Release {
    held: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.held.lock().expect("lease table poisoned").remove(&self.name);
    }
}

#[async_trait]
impl Leases for InProcessLeases {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        if !self.held.lock().expect("lease table poisoned").insert(name.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Lease::new(Release { held: self.held.clone(), name: name.to_owned() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_name_until_dropped() {
        let leases = InProcessLeases::default();
        let a = leases.try_lease("saga:a").await.unwrap().expect("free");
        assert!(leases.try_lease("saga:a").await.unwrap().is_none(), "held");
        let b = leases.try_lease("saga:b").await.unwrap();
        assert!(b.is_some(), "names are independent");
        drop(a);
        assert!(leases.try_lease("saga:a").await.unwrap().is_some(), "released on drop");
    }
}
