//! Disk full under the embedded store (scenario 6): the data directory on a 16 MiB tmpfs, most of
//! it taken by a filler file, then orders until the disk is full. Commands then get `503
//! UNAVAILABLE` with `Retry-After`, never a 500 nor a hang; once the filler is deleted, commands
//! are accepted again without a restart, the read models resume, and every acknowledged order is
//! there at its version; after a restart the store opens with all of it.
//!
//! The logs, not the data, fill such a disk: each SQLite `-wal` file may grow to 32 MiB before
//! its writer resets it (`WAL_RESET_BYTES` in nexus-sqlite), far more than the few hundred KiB of
//! documents and events here. Freed space can be taken again by the logs under a sustained load,
//! so the check after freeing sends a few commands, not a flood.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Nexus, free_port};
use crate::kills::{Load, Tally, check_fold, client, config_file, send};

/// A tmpfs of `size` mounted on a temporary directory (we run as root); unmounted and removed
/// when dropped, lazily if a process still holds a file in it.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("nexus-chaos-disk").tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Fills the file system of `path` with zeros, then gives back `leave` bytes: what is left free
/// is about `leave` (the next writes find the disk full soon, not at once).
fn fill(path: &Path, leave: u64) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let size = written.saturating_sub(leave);
    file.set_len(size).unwrap();
    file.sync_all().unwrap();
    size
}

/// `df` of the mount and the size of each file in it, for the printed counts.
fn usage(disk: &Tmpfs) -> String {
    let df = Command::new("df").args(["-k", "--output=used,avail"]).arg(disk.path()).output().unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![disk.path().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                let name = entry.path().strip_prefix(disk.path()).unwrap().display().to_string();
                files.push(format!("{name} {} KiB", meta.len() / 1024));
            }
        }
    }
    let df = String::from_utf8_lossy(&df.stdout).split_whitespace().skip(2).collect::<Vec<_>>().join("/");
    format!("used/avail KiB {df}; files {files:?}")
}

fn projections_state(projections: &Value) -> Vec<String> {
    projections["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| matches!(p["name"].as_str(), Some("orders" | "customers")))
                .map(|p| {
                    format!("{} {} lag {} lastError {}", p["name"], p["state"], p["lag"], p["lastError"])
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_damages_nothing_acknowledged() {
    let started = Instant::now();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_file(config_dir.path());
    // Declared before the server: dropped after it, so nothing holds the mount.
    let disk = Tmpfs::mount("16m");
    let data_dir: PathBuf = disk.path().join("data");
    let port = free_port();
    let serve = || {
        Nexus::serve_on(port, |command| {
            command.arg("--data-dir").arg(&data_dir).arg("--config").arg(&config);
        })
    };
    let server = serve().await;
    let http = client();

    // Some orders on a roomy disk, then the disk nearly full, then orders until it is full.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load = Load::start(&server.base, "before", 4, &tally);
    while tally.lock().unwrap().accepted < 100 {
        assert!(started.elapsed() < Duration::from_secs(30), "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.stop().await;
    eprintln!("disk full: before filling {}", usage(&disk));
    let filler = disk.path().join("filler");
    let filled = fill(&filler, 512 * 1024);
    eprintln!("disk full: filler of {filled} bytes, about 512 KiB left; {}", tally.lock().unwrap().summary());
    let load = Load::start(&server.base, "filling", 4, &tally);
    let unavailable = || tally.lock().unwrap().other.get("503").copied().unwrap_or(0);
    let filling = Instant::now();
    while unavailable() < 20 && filling.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop().await;
    let while_full: Value = http
        .get(server.url("/api/admin/projections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    {
        let unavailable = unavailable();
        let tally = tally.lock().unwrap();
        eprintln!(
            "disk full: {}; samples {:?}; projections while full {:?}; {}",
            tally.summary(),
            tally.samples,
            projections_state(&while_full),
            usage(&disk)
        );
        assert!(unavailable >= 20, "the disk never filled up in 30 s: {}", tally.summary());
        let others: Vec<_> = tally.other.keys().filter(|status| *status != "503").collect();
        assert!(
            others.is_empty(),
            "a full disk is 503 and nothing else (no 500, no hang): {:?}",
            tally.samples
        );
        assert!(tally.off_contract.is_empty(), "error answers off the contract: {:?}", tally.off_contract);
    }

    // Space again: commands are accepted without a restart, the read models resume.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    for attempt in 0.. {
        let id = format!("after-free-{attempt}");
        tally.lock().unwrap().attempted.insert(id.clone());
        let body = json!({"aggregateId": id, "customerId": "cust-0",
                          "items": [{"productId": "p", "quantity": 1, "unitPrice": 2}]});
        if send(&http, &server.base, "PlaceOrder", body, &tally).await {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "no 202 within 15 s of freeing space: {:?}",
            tally.lock().unwrap().samples
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "disk full: a command accepted {:?} after the space came back; {}",
        freed.elapsed(),
        usage(&disk)
    );
    // A few more, not a flood: the space given back is what the first filling left to the
    // filler, and the logs of a loaded store may take all of it again (see the module doc).
    for n in 0..20 {
        let id = format!("after-{n}");
        tally.lock().unwrap().attempted.insert(id.clone());
        let body = json!({"aggregateId": id, "customerId": format!("cust-{}", n % 7),
                          "items": [{"productId": "p", "quantity": 1, "unitPrice": 2}]});
        assert!(
            send(&http, &server.base, "PlaceOrder", body, &tally).await,
            "{:?}",
            tally.lock().unwrap().samples
        );
    }
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    eprintln!("disk full: after the space came back {}; {}", tally.summary(), usage(&disk));
    let folded = check_fold(&server.base, &tally, Duration::from_secs(30)).await;
    let resumed: Value = http
        .get(server.url("/api/admin/projections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    eprintln!("disk full: {folded:?}; projections after {:?}", projections_state(&resumed));

    // The store opens again after a crash, with everything in it.
    server.kill();
    let server = serve().await;
    let reopened = check_fold(&server.base, &tally, Duration::from_secs(30)).await;
    assert_eq!(reopened.events, folded.events, "the restarted store holds the same events");
    eprintln!("disk full: after a restart {reopened:?}; took {:?}", started.elapsed());
    drop(server);
}
