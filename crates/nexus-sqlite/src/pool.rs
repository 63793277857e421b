//! A small pool of read-only connections used from tokio's blocking pool.
//!
//! Hand-written because it is small: SQLite connections are cheap to keep, and each
//! read needs one for a few microseconds; checking one out must never block the runtime.
//!
//! The pool holds at most [`MAX_READERS`] connections; a read that finds none free waits for
//! one on its blocking thread. Unbounded, a loaded server opened one per blocking thread (43
//! on `read.db` after 45 s of the bench mix), each with its own page cache and, while
//! connections mapped the file, its own mapping of every page they touched.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use nexus_core::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::unavailable;

/// Connections a pool opens at most: more reads at once than this gain nothing on a few cores.
const MAX_READERS: usize = 8;

pub(crate) struct ReaderPool {
    path: PathBuf,
    /// Run on each connection the pool opens (SQL functions its queries call).
    setup: fn(&Connection) -> rusqlite::Result<()>,
    connections: Mutex<Connections>,
    /// Signalled when a connection is given back.
    returned: Condvar,
}

#[derive(Default)]
struct Connections {
    idle: Vec<Connection>,
    /// Open, idle or in use.
    open: usize,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Self::with_setup(path, |_| Ok(()))
    }

    pub(crate) fn with_setup(path: PathBuf, setup: fn(&Connection) -> rusqlite::Result<()>) -> Arc<Self> {
        Arc::new(Self { path, setup, connections: Mutex::default(), returned: Condvar::new() })
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

    /// An idle connection, a new one while fewer than [`MAX_READERS`] are open, else the next one
    /// given back. The lock guards the list only, never a query: a std mutex is right here.
    fn check_out(&self) -> Result<Connection, StoreError> {
        let mut connections = self.connections.lock().expect("reader pool poisoned");
        loop {
            if let Some(conn) = connections.idle.pop() {
                return Ok(conn);
            }
            if connections.open < MAX_READERS {
                connections.open += 1;
                drop(connections);
                let opened = self.open();
                if opened.is_err() {
                    self.connections.lock().expect("reader pool poisoned").open -= 1;
                }
                return opened;
            }
            connections = self.returned.wait(connections).expect("reader pool poisoned");
        }
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
            let conn = pool.check_out()?;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
            // Given back even when `f` panicked: a lost connection would shrink the pool for good.
            pool.connections.lock().expect("reader pool poisoned").idle.push(conn);
            pool.returned.notify_one();
            result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        async move { task.await.map_err(|e| StoreError::Unavailable(Box::new(e)))? }
    }
}
