//! `nexus_rank(index, words, phrases)`: the BM25 score of a full-text match, as FTS5's own
//! `bm25()` computes it, over the `text` column only and with the document's length in words
//! given by the caller.
//!
//! Why not `bm25()`: it reads each match's length from the index's `%_docsize` table, one SQL
//! lookup per match, which was two thirds of a one-word search over 83,000 matches (measured:
//! `ORDER BY rank LIMIT 20` 144 ms with the lookups, 49 ms without). A search already joins each
//! match's row of `search_keys`, so the length comes from there (`search_keys.words`) for free.
//! `bm25()` also counted the `keys` column in a document's length and computed an IDF for every
//! filter key (a pass over the postings of, say, every `PLACED` order); this scores the first
//! `phrases` phrases of the query, the words, in the `text` column, and nothing else.
//!
//! The only `unsafe` code of the workspace: FTS5 offers ranking functions through a C API that
//! `rusqlite` does not wrap. Every call below follows the contract of `fts5.h`: the extension API
//! and context pointers are valid for the duration of the call, `apVal` holds `nVal` values, and
//! auxiliary data lives until FTS5 calls its destructor.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};

use rusqlite::Connection;
use rusqlite::ffi;
use rusqlite::types::ToSqlOutput;

/// BM25's constants, as FTS5's `bm25()` has them.
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Registers `nexus_rank` and `nexus_frequencies` on `conn` (per connection, like every SQL
/// function).
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let mut api: *mut ffi::fts5_api = std::ptr::null_mut();
    // `SELECT fts5(?1)` with a pointer bound as "fts5_api_ptr" is how fts5.h says to find the API.
    let pointer =
        ToSqlOutput::Pointer(((&mut api as *mut *mut ffi::fts5_api).cast::<c_void>(), c"fts5_api_ptr", None));
    conn.query_row("SELECT fts5(?1)", [pointer], |_| Ok(()))?;
    let failed = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("nexus_rank".into()));
    // SAFETY: `api` is null or the connection's `fts5_api`, which lives as long as the
    // connection; `xCreateFunction` copies the name.
    let functions: [(&std::ffi::CStr, ffi::fts5_extension_function); 2] =
        [(c"nexus_rank", Some(nexus_rank)), (c"nexus_frequencies", Some(nexus_frequencies))];
    for (name, function) in functions {
        let code = unsafe {
            match api.as_ref().and_then(|api| api.xCreateFunction) {
                Some(create) => create(api, name.as_ptr(), std::ptr::null_mut(), function, None),
                None => ffi::SQLITE_ERROR,
            }
        };
        ok(code).map_err(failed)?;
    }
    Ok(())
}

/// `nexus_frequencies(index, phrases)`: how often each of the query's first `phrases` phrases
/// occurs in the match's `text` column: a real for one phrase, else a blob of `phrases`
/// little-endian doubles. For a search that ranks with lengths and statistics of its own (see
/// `crate::doc_values`).
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
        let phrases = args.first().map_or(1, |&value| ffi::sqlite3_value_int64(value).clamp(1, 64) as usize);
        let mut frequency = [0.0; 64];
        if let Err(code) = count_instances(&*api, fts, &mut frequency[..phrases]) {
            return ffi::sqlite3_result_error_code(ctx, code);
        }
        if phrases == 1 {
            ffi::sqlite3_result_double(ctx, frequency[0]);
        } else {
            let bytes: Vec<u8> = frequency[..phrases].iter().flat_map(|f| f.to_le_bytes()).collect();
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

/// What a query's scores share, computed at its first match and kept as FTS5 auxiliary data.
struct Statistics {
    /// The average length of `text` over the index, in tokens.
    average_length: f64,
    /// Per scored phrase, its inverse document frequency.
    idf: Vec<f64>,
    /// Per scored phrase, its occurrences in the current match (reused from match to match).
    frequency: Vec<f64>,
}

/// `extern "C"` entry point: computes the score, or reports the failing code to SQLite.
unsafe extern "C" fn nexus_rank(
    api: *const ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    ctx: *mut ffi::sqlite3_context,
    n_val: c_int,
    values: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: FTS5 passes a valid API, context and `n_val` values for the length of this call.
    unsafe {
        match score(&*api, fts, std::slice::from_raw_parts(values, n_val.max(0) as usize)) {
            Ok(score) => ffi::sqlite3_result_double(ctx, -score),
            Err(code) => ffi::sqlite3_result_error_code(ctx, code),
        }
    }
}

/// Turns an FTS5 return code into a `Result`.
fn ok(code: c_int) -> Result<(), c_int> {
    if code == ffi::SQLITE_OK { Ok(()) } else { Err(code) }
}

/// The BM25 score (higher is better) of the current match.
///
/// # Safety
/// `api` and `fts` must be the ones FTS5 passed to the current call.
unsafe fn score(
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    args: &[*mut ffi::sqlite3_value],
) -> Result<f64, c_int> {
    let (Some(get_aux), Some(column_size)) = (api.xGetAuxdata, api.xColumnSize) else {
        return Err(ffi::SQLITE_MISUSE);
    };
    // SAFETY (whole block): the callbacks are FTS5's, called with its own context; the auxiliary
    // data is a `Statistics` this function boxed, owned by FTS5 until its destructor runs.
    unsafe {
        let mut stats = get_aux(fts, 0).cast::<Statistics>();
        if stats.is_null() {
            let phrases = match args.get(1) {
                Some(&value) => ffi::sqlite3_value_int64(value).max(0) as usize,
                None => usize::MAX,
            };
            stats = statistics(api, fts, phrases)?;
        }
        let stats = &mut *stats;
        stats.frequency.iter_mut().for_each(|f| *f = 0.0);
        count_instances(api, fts, &mut stats.frequency)?;
        let length = match args.first() {
            Some(&value) if ffi::sqlite3_value_type(value) == ffi::SQLITE_INTEGER => {
                ffi::sqlite3_value_int64(value) as f64
            }
            // No length given (a row written before `words` existed): the index's own.
            _ => {
                let mut tokens = 0;
                ok(column_size(fts, 0, &mut tokens))?;
                f64::from(tokens)
            }
        };
        Ok(bm25(&stats.idf, &stats.frequency, length, stats.average_length))
    }
}

/// Computes the query's [`Statistics`] for its first `phrases` phrases and hands them to FTS5.
///
/// # Safety
/// As [`score`].
unsafe fn statistics(
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    phrases: usize,
) -> Result<*mut Statistics, c_int> {
    let (Some(phrase_count), Some(row_count), Some(total_size), Some(query_phrase), Some(set_aux)) =
        (api.xPhraseCount, api.xRowCount, api.xColumnTotalSize, api.xQueryPhrase, api.xSetAuxdata)
    else {
        return Err(ffi::SQLITE_MISUSE);
    };
    unsafe extern "C" fn count_row(
        _api: *const ffi::Fts5ExtensionApi,
        _fts: *mut ffi::Fts5Context,
        hits: *mut c_void,
    ) -> c_int {
        // SAFETY: `hits` is the `i64` passed to `xQueryPhrase` below, alive for its call.
        unsafe { *hits.cast::<i64>() += 1 };
        ffi::SQLITE_OK
    }
    unsafe extern "C" fn drop_statistics(stats: *mut c_void) {
        // SAFETY: FTS5 calls this once, with the pointer `Box::into_raw` gave it.
        drop(unsafe { Box::from_raw(stats.cast::<Statistics>()) });
    }
    // SAFETY: FTS5's callbacks with its own context; see `score`.
    unsafe {
        let phrases = (phrase_count(fts).max(0) as usize).min(phrases);
        let (mut rows, mut tokens) = (0, 0);
        ok(row_count(fts, &mut rows))?;
        ok(total_size(fts, 0, &mut tokens))?;
        let rows = rows.max(1) as f64;
        let mut idf = Vec::with_capacity(phrases);
        for phrase in 0..phrases {
            // With one phrase its IDF scales every score alike and changes no order: not
            // computed, which saves a pass over all its matches (as many again as the search's).
            if phrases == 1 {
                idf.push(1.0);
                break;
            }
            let mut hits: i64 = 0;
            ok(query_phrase(fts, phrase as c_int, (&mut hits as *mut i64).cast(), Some(count_row)))?;
            idf.push(self::idf(rows, hits as f64));
        }
        let stats = Box::new(Statistics {
            average_length: (tokens as f64 / rows).max(1.0),
            frequency: vec![0.0; phrases],
            idf,
        });
        let stats = Box::into_raw(stats);
        // On failure FTS5 has already called the destructor.
        ok(set_aux(fts, stats.cast(), Some(drop_statistics)))?;
        Ok(stats)
    }
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

/// A text's length as the index counts it: its runs of letters and digits (FTS5's `unicode61`
/// tokenizer splits on everything else).
pub(crate) fn word_count(text: &str) -> i64 {
    text.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()).count() as i64
}
