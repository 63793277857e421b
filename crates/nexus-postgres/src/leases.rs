//! Leases as PostgreSQL session advisory locks: one per name, taken on a connection of this
//! process's own. PostgreSQL drops them with the connection, so a process that dies gives its
//! leases back by itself.
//!
//! Key: (`LEASE_LOCK_CLASS`, `hashtext(schema || ':' || name)`): deployments in other schemas of
//! the same database do not contend. Two names that hash alike only make one wait for the other.
//! Session locks are re-entrant per connection, so this process's own holders are tracked in
//! memory too.
//!
//! If the connection breaks, PostgreSQL has already let the leases go while their holders still
//! run: another process may then drive the same saga, which stays correct (expected-version
//! appends), only duplicated, until the holders finish. The next `try_lease` reconnects.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nexus_core::{Lease, Leases, StoreError};
use tokio_postgres::{Client, Config};

use crate::tls::MakeTls;
use crate::unavailable;

/// The first key of a lease's advisory lock.
pub(crate) const LEASE_LOCK_CLASS: i32 = 0x4E58_4C53; // "NXLS"

pub struct PostgresLeases {
    config: Config,
    tls: MakeTls,
    schema: String,
    session: tokio::sync::Mutex<Option<Arc<Client>>>,
    // A std mutex: held for a set insert or remove, never across an await.
    held: Arc<Mutex<HashSet<String>>>,
}

struct Release {
    client: Arc<Client>,
    key: String,
    name: String,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (shutdown): the lock goes with the connection, at exit.
            self.held.lock().expect("lease table poisoned").remove(&name);
            return;
        };
        let (client, key, held) = (self.client.clone(), std::mem::take(&mut self.key), self.held.clone());
        runtime.spawn(async move {
            let unlocked = client
                .query_one("SELECT pg_advisory_unlock($1, hashtext($2))", &[&LEASE_LOCK_CLASS, &key])
                .await;
            if let Err(error) = unlocked {
                // The connection is gone, and the lock with it.
                tracing::debug!(%error, key, "lease not unlocked");
            }
            // Only now: a new holder in this process must not find the old lock still taken.
            held.lock().expect("lease table poisoned").remove(&name);
        });
    }
}

impl PostgresLeases {
    /// Connects lazily, on the first lease.
    pub(crate) fn new(config: Config, tls: MakeTls, schema: String) -> Self {
        Self { config, tls, schema, session: tokio::sync::Mutex::new(None), held: Arc::default() }
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut session = self.session.lock().await;
        if let Some(client) = session.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the lease connection closed; its leases are released");
            }
        });
        let client = Arc::new(client);
        *session = Some(client.clone());
        Ok(client)
    }
}

#[async_trait]
impl Leases for PostgresLeases {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        if !self.held.lock().expect("lease table poisoned").insert(name.to_owned()) {
            return Ok(None);
        }
        let key = format!("{}:{name}", self.schema);
        let taken = match self.client().await {
            Ok(client) => client
                .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&LEASE_LOCK_CLASS, &key])
                .await
                .map_err(unavailable)
                .map(|row| (client, row.get::<_, bool>(0))),
            Err(error) => Err(error),
        };
        match taken {
            Ok((client, true)) => {
                let held = self.held.clone();
                Ok(Some(Lease::new(Release { client, key, name: name.to_owned(), held })))
            }
            outcome => {
                self.held.lock().expect("lease table poisoned").remove(name);
                outcome.map(|_| None)
            }
        }
    }
}
