//! Doc values: what a full-text search reads of each match (id, status, tags, length in words),
//! per storage, in memory, by docid.
//!
//! Why: reading them from the `documents` table is one B-tree seek per match, which was half of a
//! one-word search over 83,000 matches of a million documents (measured). Here they are an array
//! in docid order, read while the index yields matches in the same order.
//!
//! Invariants:
//! - A storage's values are loaded by the first search that needs them, from one read snapshot
//!   taken after they are registered (write-locked) in [`DocValues`]; the writer applies every
//!   commit to registered values after the commit. So each commit is either in the snapshot or
//!   applied after the load, and the values never miss one for long (a search that meets a
//!   docid the writer has committed but not yet applied reads that row from `documents`).
//! - Docids only grow within a storage (a new document takes the highest docid + 1, and only
//!   whole retired storages are deleted), so applying a commit appends, or overwrites in place.
//! - Values of a retired storage are dropped when the sweep has deleted it.
//! - Memory: about 60 bytes per document of each storage that has been searched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use nexus_core::StoreError;
use rusqlite::Connection;

use crate::unavailable;

/// The status code of a search key without a status.
const NO_STATUS: u32 = u32::MAX;

/// The doc values of every storage searched so far.
#[derive(Default)]
pub(crate) struct DocValues {
    storages: Mutex<HashMap<String, Arc<RwLock<Values>>>>,
}

/// One storage's doc values.
#[derive(Default)]
pub(crate) struct Values {
    /// False until loaded; a failed load leaves it false and the storage unregistered.
    loaded: bool,
    /// By ascending docid.
    entries: Vec<Entry>,
    /// Each distinct status, by code.
    statuses: Vec<String>,
    status_codes: HashMap<String, u32>,
    /// Each distinct set of tags (by its JSON text), parsed, by code; code 0 is no tags.
    tag_sets: Vec<Vec<String>>,
    tag_set_codes: HashMap<String, u32>,
    /// The sum of the entries' `words`, for the average length.
    words: u64,
}

/// One document's doc values.
pub(crate) struct Entry {
    pub(crate) docid: i64,
    pub(crate) id: Box<str>,
    pub(crate) status: u32,
    pub(crate) tags: u32,
    pub(crate) words: u32,
}

/// A search key as a commit wrote it: what the writer applies.
pub(crate) struct Update {
    pub(crate) docid: i64,
    pub(crate) id: String,
    pub(crate) status: Option<String>,
    /// The tags as a JSON array, `None` when there are none.
    pub(crate) tags: Option<String>,
    pub(crate) words: i64,
}

impl DocValues {
    /// The doc values of `storage`, loaded through `conn` if no search has loaded them yet.
    pub(crate) fn get(&self, conn: &Connection, storage: &str) -> Result<Arc<RwLock<Values>>, StoreError> {
        let values = Arc::new(RwLock::new(Values::default()));
        let mut loading = values.write().expect("doc values poisoned");
        {
            let mut storages = self.storages.lock().expect("doc values poisoned");
            if let Some(found) = storages.get(storage) {
                let found = found.clone();
                drop(storages);
                // Waits while another search loads them.
                if found.read().expect("doc values poisoned").loaded {
                    return Ok(found);
                }
                return Err(StoreError::Unavailable("loading the search's doc values failed".into()));
            }
            storages.insert(storage.to_owned(), values.clone());
        }
        // The snapshot is taken now, after the registration: see the invariants above.
        match loading.load(conn, storage) {
            Ok(()) => {
                drop(loading);
                Ok(values)
            }
            Err(error) => {
                self.storages.lock().expect("doc values poisoned").remove(storage);
                Err(error)
            }
        }
    }

    /// Applies a commit to `storage`'s values, if any search has registered them: after the
    /// commit (`updates` is only called then).
    pub(crate) fn apply(&self, storage: &str, updates: impl FnOnce() -> Vec<Update>) {
        let values = self.storages.lock().expect("doc values poisoned").get(storage).cloned();
        if let Some(values) = values {
            let mut values = values.write().expect("doc values poisoned");
            if values.loaded {
                updates().into_iter().for_each(|update| values.upsert(update));
            }
        }
    }

    /// Whether a search has registered `storage`'s values (loaded or loading).
    pub(crate) fn registered(&self, storage: &str) -> bool {
        self.storages.lock().expect("doc values poisoned").contains_key(storage)
    }

    /// Forgets `storage` (deleted by the sweep).
    pub(crate) fn forget(&self, storage: &str) {
        self.storages.lock().expect("doc values poisoned").remove(storage);
    }
}

impl Values {
    fn load(&mut self, conn: &Connection, storage: &str) -> Result<(), StoreError> {
        self.tag_sets.push(Vec::new());
        // A scan in docid order, not the (resource, id) index and a seek per row.
        let mut stmt = conn
            .prepare("SELECT docid, id, status, tags, words FROM documents NOT INDEXED WHERE resource = ?1")
            .map_err(unavailable)?;
        let mut rows = stmt.query([storage]).map_err(unavailable)?;
        while let Some(row) = rows.next().map_err(unavailable)? {
            let update = Update {
                docid: row.get(0).map_err(unavailable)?,
                id: row.get(1).map_err(unavailable)?,
                status: row.get(2).map_err(unavailable)?,
                tags: row.get(3).map_err(unavailable)?,
                words: row.get::<_, Option<i64>>(4).map_err(unavailable)?.unwrap_or(0),
            };
            self.upsert(update);
        }
        self.loaded = true;
        Ok(())
    }

    fn upsert(&mut self, update: Update) {
        let status = match update.status {
            None => NO_STATUS,
            Some(status) => match self.status_codes.get(&status) {
                Some(code) => *code,
                None => {
                    let code = self.statuses.len() as u32;
                    self.statuses.push(status.clone());
                    self.status_codes.insert(status, code);
                    code
                }
            },
        };
        let tags = match update.tags {
            None => 0,
            Some(json) => match self.tag_set_codes.get(&json) {
                Some(code) => *code,
                None => {
                    let code = self.tag_sets.len() as u32;
                    self.tag_sets.push(serde_json::from_str(&json).unwrap_or_default());
                    self.tag_set_codes.insert(json, code);
                    code
                }
            },
        };
        let words = update.words.clamp(0, i64::from(u32::MAX)) as u32;
        let entry = Entry { docid: update.docid, id: update.id.into_boxed_str(), status, tags, words };
        self.words += u64::from(words);
        match self.entries.last() {
            Some(last) if last.docid >= entry.docid => {
                match self.entries.binary_search_by_key(&entry.docid, |e| e.docid) {
                    Ok(at) => {
                        self.words -= u64::from(self.entries[at].words);
                        self.entries[at] = entry;
                    }
                    Err(at) => self.entries.insert(at, entry),
                }
            }
            _ => self.entries.push(entry),
        }
    }

    /// How many documents, and their average length in words (at least 1).
    pub(crate) fn statistics(&self) -> (f64, f64) {
        let documents = self.entries.len().max(1) as f64;
        (documents, (self.words as f64 / documents).max(1.0))
    }

    /// Where `docid` is or would be among the entries, looking from `from` on: a cursor for
    /// matches in ascending docid order. Gallops, so the next match a few entries on costs a few
    /// steps in cache rather than a binary search over all of them.
    pub(crate) fn position(&self, from: usize, docid: i64) -> usize {
        let entries = &self.entries;
        let mut step = 1;
        while from + step < entries.len() && entries[from + step].docid < docid {
            step *= 2;
        }
        let start = from + step / 2;
        let end = (from + step + 1).min(entries.len());
        if start >= end {
            return end;
        }
        start + entries[start..end].partition_point(|e| e.docid < docid)
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn status(&self, code: u32) -> Option<&str> {
        self.statuses.get(code as usize).map(String::as_str)
    }

    pub(crate) fn tags(&self, code: u32) -> &[String] {
        &self.tag_sets[code as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_finds_the_first_entry_at_or_after_a_docid() {
        let mut values = Values::default();
        let docids: Vec<i64> = (0..500).map(|n| n * 3 + n % 3).collect();
        for &docid in &docids {
            values.upsert(Update { docid, id: docid.to_string(), status: None, tags: None, words: 1 });
        }
        for from in [0, 1, 17, 250, 499, 500] {
            for docid in -1..1600 {
                let expected = from + docids[from..].partition_point(|d| *d < docid);
                assert_eq!(values.position(from, docid), expected, "from {from}, docid {docid}");
            }
        }
    }

    #[test]
    fn an_update_overwrites_in_place_and_keeps_the_total_length() {
        let mut values = Values::default();
        let update = |docid, status: &str, words| Update {
            docid,
            id: format!("d{docid}"),
            status: Some(status.into()),
            tags: Some(r#"["a","b"]"#.into()),
            words,
        };
        values.upsert(update(1, "NEW", 4));
        values.upsert(update(5, "NEW", 6));
        values.upsert(update(1, "DONE", 2));
        assert_eq!(values.entries().iter().map(|e| e.docid).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(values.status(values.entries()[0].status), Some("DONE"));
        assert_eq!(values.tags(values.entries()[1].tags), ["a", "b"]);
        assert_eq!(values.statistics(), (2.0, 4.0));
    }
}
