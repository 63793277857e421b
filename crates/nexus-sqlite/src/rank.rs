//! Ranking: BM25, as FTS5's own `bm25()` computes it, over the `text` column only, scored in
//! Rust from `nexus_frequencies(index, phrases)`, an FTS5 auxiliary function that reports how
//! often each word occurs in a match, with each document's length in words from the search
//! keys or the doc values.
//!
//! Why not `bm25()`: it reads each match's length from the index's `%_docsize` table, one SQL
//! lookup per match, which was two thirds of a one-word search over 83,000 matches (measured:
//! `ORDER BY rank LIMIT 20` 144 ms with the lookups, 49 ms without). `bm25()` also counted the
//! `keys` column in a document's length and computed an IDF for every filter key (a pass over
//! the postings of, say, every `PLACED` order); here only the query's words count, in `text`.
//!
//! The only `unsafe` code of the workspace: FTS5 offers auxiliary functions through a C API that
//! `rusqlite` does not wrap. Every call below follows the contract of `fts5.h`: the extension API
//! and context pointers are valid for the duration of the call, and `apVal` holds `nVal` values.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};

use rusqlite::Connection;
use rusqlite::ffi;
use rusqlite::types::ToSqlOutput;

use nexus_core::ports::{BM25_B as B, BM25_K1 as K1};

/// Registers `nexus_frequencies` on `conn` (per connection, like every SQL function).
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let mut api: *mut ffi::fts5_api = std::ptr::null_mut();
    // `SELECT fts5(?1)` with a pointer bound as "fts5_api_ptr" is how fts5.h says to find the API.
    let pointer =
        ToSqlOutput::Pointer(((&mut api as *mut *mut ffi::fts5_api).cast::<c_void>(), c"fts5_api_ptr", None));
    conn.query_row("SELECT fts5(?1)", [pointer], |_| Ok(()))?;
    // SAFETY: `api` is null or the connection's `fts5_api`, which lives as long as the
    // connection; `xCreateFunction` copies the name.
    let code = unsafe {
        match api.as_ref().and_then(|api| api.xCreateFunction) {
            Some(create) => create(
                api,
                c"nexus_frequencies".as_ptr(),
                std::ptr::null_mut(),
                Some(nexus_frequencies),
                None,
            ),
            None => ffi::SQLITE_ERROR,
        }
    };
    ok(code).map_err(|code| {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("nexus_frequencies".into()))
    })
}

/// `nexus_frequencies(index, phrases)`: how often each of the query's first `phrases` phrases
/// occurs in the match's `text` column: a real for one phrase, else a blob of `phrases`
/// little-endian doubles.
unsafe extern "C" fn nexus_frequencies(
    api: *const ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    ctx: *mut ffi::sqlite3_context,
    n_val: c_int,
    values: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: FTS5 passes a valid API, context and `n_val` values for the length of this call;
    // SQLite copies a blob result (`SQLITE_TRANSIENT`) before `bytes` is dropped.
    unsafe {
        let args = std::slice::from_raw_parts(values, n_val.max(0) as usize);
        let phrases = args.first().map_or(1, |&value| ffi::sqlite3_value_int64(value).max(1) as usize);
        let mut frequency = vec![0.0; phrases];
        if let Err(code) = count_instances(&*api, fts, &mut frequency) {
            return ffi::sqlite3_result_error_code(ctx, code);
        }
        if phrases == 1 {
            ffi::sqlite3_result_double(ctx, frequency[0]);
        } else {
            let bytes: Vec<u8> = frequency.iter().flat_map(|f| f.to_le_bytes()).collect();
            ffi::sqlite3_result_blob(
                ctx,
                bytes.as_ptr().cast(),
                bytes.len() as c_int,
                ffi::SQLITE_TRANSIENT(),
            );
        }
    }
}

/// Adds to `frequency[p]` each occurrence of phrase `p` in the current match's `text` column.
///
/// # Safety
/// `api` and `fts` must be the ones FTS5 passed to the current call.
unsafe fn count_instances(
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    frequency: &mut [f64],
) -> Result<(), c_int> {
    let (Some(inst_count), Some(inst)) = (api.xInstCount, api.xInst) else {
        return Err(ffi::SQLITE_MISUSE);
    };
    // SAFETY: FTS5's callbacks with its own context.
    unsafe {
        let mut instances = 0;
        ok(inst_count(fts, &mut instances))?;
        for i in 0..instances {
            let (mut phrase, mut column, mut offset) = (0, 0, 0);
            ok(inst(fts, i, &mut phrase, &mut column, &mut offset))?;
            if column == 0
                && let Some(f) = frequency.get_mut(phrase as usize)
            {
                *f += 1.0;
            }
        }
    }
    Ok(())
}

/// Turns an FTS5 return code into a `Result`.
fn ok(code: c_int) -> Result<(), c_int> {
    if code == ffi::SQLITE_OK { Ok(()) } else { Err(code) }
}

/// BM25 of a match with `frequency[p]` occurrences of each phrase `p` (weighing `idf[p]`) in a
/// text of `length` words, where texts average `average_length` words.
pub(crate) fn bm25(idf: &[f64], frequency: &[f64], length: f64, average_length: f64) -> f64 {
    let norm = K1 * (1.0 - B + B * length / average_length);
    idf.iter().zip(frequency).map(|(idf, f)| idf * (f * (K1 + 1.0)) / (f + norm)).sum()
}

/// A phrase's inverse document frequency among `documents`, `hits` of which have it: as
/// `bm25()`, log((N - n + 0.5) / (n + 0.5)), at least 1e-6 for very common words.
pub(crate) fn idf(documents: f64, hits: f64) -> f64 {
    let value = ((documents - hits + 0.5) / (hits + 0.5)).ln();
    if value > 0.0 { value } else { 1e-6 }
}

/// Reads what `nexus_frequencies` returned for one match onto `out`.
pub(crate) fn push_frequencies(
    value: rusqlite::types::ValueRef<'_>,
    out: &mut Vec<f64>,
) -> Result<(), rusqlite::types::Type> {
    match value {
        rusqlite::types::ValueRef::Real(f) => out.push(f),
        rusqlite::types::ValueRef::Blob(bytes) => {
            out.extend(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))))
        }
        other => return Err(other.data_type()),
    }
    Ok(())
}

/// A text's length as the index counts it: its runs of letters and digits (FTS5's `unicode61`
/// tokenizer splits on everything else).
pub(crate) fn word_count(text: &str) -> i64 {
    text.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()).count() as i64
}
