//! A small pool of read-only connections used from tokio's blocking pool.
//!
//! Hand-written because it is a dozen lines: SQLite connections are cheap to keep, and each
//! read needs one for a few microseconds; checking one out must never block the runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nexus_core::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::unavailable;

pub(crate) struct ReaderPool {
    path: PathBuf,
    /// Run on each connection the pool opens (SQL functions its queries call).
    setup: fn(&Connection) -> rusqlite::Result<()>,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Self::with_setup(path, |_| Ok(()))
    }

    pub(crate) fn with_setup(path: PathBuf, setup: fn(&Connection) -> rusqlite::Result<()>) -> Arc<Self> {
        Arc::new(Self { path, setup, idle: Mutex::new(Vec::new()) })
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(unavailable)?;
        crate::tune(&conn).map_err(unavailable)?;
        (self.setup)(&conn).map_err(unavailable)?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.spawn(f).await
    }

    /// Starts `f` on a pooled connection on the blocking pool now, so several can run at once.
    pub(crate) fn spawn<T, F>(
        self: &Arc<Self>,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            // The lock guards a Vec push/pop only, never a query: a std mutex is right here.
            let conn = pool.idle.lock().expect("reader pool poisoned").pop();
            let conn = match conn {
                Some(conn) => conn,
                None => pool.open()?,
            };
            let result = f(&conn);
            pool.idle.lock().expect("reader pool poisoned").push(conn);
            result
        });
        async move { task.await.map_err(|e| StoreError::Unavailable(Box::new(e)))? }
    }
}
