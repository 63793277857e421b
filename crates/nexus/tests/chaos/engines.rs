//! Private engines a chaos test may break: a PostgreSQL cluster and a `nats-server` of its own,
//! each in a temporary directory on a free port of 127.0.0.1, removed when dropped. The machine's
//! shared services are never touched.
//!
//! The calls block (they wait for the engine with `std` sleeps): they are short, and a test's
//! multi-threaded runtime keeps its other worker for the load meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

/// How long an engine may take to accept connections before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Runs `command`, panicking with its output if it fails.
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SIGKILL to process `pid` (a process this module started, directly or through `pg_ctl`).
fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may hold spaces, so split after the `)`.
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                .is_some_and(|parent| parent == pid)
        })
        .collect()
}

/// A PostgreSQL cluster of its own: `initdb` into a temporary directory owned by `postgres` (the
/// server refuses to run as root), listening on 127.0.0.1 and a free port, with a socket in the
/// same directory. Lean (small shared buffers, few connections) but durable: `fsync` stays on.
/// Dropping it stops the server at once and removes the directory.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Initializes the cluster and starts it; returns once it accepts connections.
    pub fn start_new() -> Self {
        let dir = tempfile::Builder::new().prefix("nexus-chaos-pg").tempdir().unwrap();
        run(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()));
        let postgres = PrivatePostgres { dir, port: free_port() };
        run(postgres
            .as_postgres("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(postgres.data()));
        let mut conf =
            std::fs::OpenOptions::new().append(true).open(postgres.data().join("postgresql.conf")).unwrap();
        writeln!(
            conf,
            "listen_addresses = '127.0.0.1'\nshared_buffers = 16MB\nmax_connections = 60\n\
             fsync = on\nsynchronous_commit = on\nlogging_collector = off\n"
        )
        .unwrap();
        drop(conf);
        postgres.start();
        postgres
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server on its data (after `stop` or `kill`); returns once it accepts
    /// connections, after crash recovery if there was a crash.
    pub fn start(&self) {
        let started = Instant::now();
        // A killed postmaster is reparented to an init that may never reap it: its zombie still
        // answers `kill(pid, 0)`, and PostgreSQL would take it for a live server. Nothing of it
        // runs any more, so its lock files go.
        let pidfile = self.data().join("postmaster.pid");
        if pidfile.exists() && self.postmaster().is_none() {
            let socket = self.dir.path().join(format!(".s.PGSQL.{}", self.port));
            for stale in [pidfile, socket.with_extension(format!("{}.lock", self.port)), socket] {
                let _ = std::fs::remove_file(stale);
            }
        }
        let output = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!("-p {} -k {}", self.port, self.dir.path().display()))
            .args(["-w", "-t", &READY_WITHIN.as_secs().to_string(), "start"])
            .output()
            .expect("pg_ctl runs");
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            panic!("pg_ctl start failed ({}); server log:\n{log}", output.status);
        }
        // `pg_ctl -w` waits for the socket; a TCP connect proves the port too.
        wait_for_port(self.port, READY_WITHIN.saturating_sub(started.elapsed()));
    }

    /// A fast shutdown (clients disconnected, a checkpoint written); returns once it is down.
    pub fn stop(&self) {
        run(self.as_postgres("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]));
    }

    /// SIGKILL to the postmaster: a crash. Its backends notice the death of their parent and exit;
    /// the call returns once they are gone (any still there after 5 s get a SIGKILL too), so that
    /// `start` finds no old shared memory in use.
    pub fn kill(&self) {
        let Some(pid) = self.postmaster() else { return };
        let backends = children(pid);
        sigkill(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (alive(pid) || backends.iter().any(|&b| alive(b))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for backend in backends.into_iter().filter(|&b| alive(b)) {
            sigkill(backend);
        }
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    fn postmaster(&self) -> Option<u32> {
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok().filter(|&pid| alive(pid))
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]).current_dir(self.dir.path());
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.postmaster().is_some() {
            let _ = self
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.kill();
        }
        // The TempDir removes the directory (root may remove files `postgres` owns).
    }
}

/// A `nats-server -js` of its own on 127.0.0.1 and a free port, its JetStream store in a
/// temporary directory. `kill` is a crash (SIGKILL); `start` brings it back on the same port and
/// store. Dropping it kills it and removes the store.
pub struct PrivateNats {
    store: tempfile::TempDir,
    port: u16,
    monitor: u16,
    server: Option<Child>,
}

impl PrivateNats {
    /// Starts the server; returns once JetStream is ready.
    pub fn start_new() -> Self {
        let mut nats = PrivateNats {
            store: tempfile::Builder::new().prefix("nexus-chaos-nats").tempdir().unwrap(),
            port: free_port(),
            monitor: free_port(),
            server: None,
        };
        nats.start();
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (same port, same store) after `kill`; returns once JetStream is
    /// ready (`/healthz` of the monitoring port answers 200 only then).
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "nats-server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("nats.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string(), "-sd"])
            .arg(self.store_dir())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.server = Some(child);
        let started = Instant::now();
        while !healthy(self.monitor) {
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default();
                panic!("nats-server exited ({status}): {log}");
            }
            assert!(started.elapsed() < READY_WITHIN, "nats-server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL; returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the NATS monitoring endpoint on `port` answers `/healthz` with 200.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

fn wait_for_port(port: u16, within: Duration) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < within, "nothing accepts connections on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn private_engines_start_crash_and_restart_on_their_data() {
    let postgres = PrivatePostgres::start_new();
    let psql = |sql: &str| {
        let output = postgres.as_postgres("psql").args([&postgres.url(), "-tAc", sql]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)");
    postgres.kill();
    assert!(TcpStream::connect(("127.0.0.1", postgres.port())).is_err(), "killed");
    postgres.start();
    assert_eq!(psql("SELECT count(*) FROM kept"), "1", "a committed row survives a crash");
    postgres.stop();
    postgres.start();
    assert_eq!(psql("SELECT count(*) FROM kept"), "1");

    let mut nats = PrivateNats::start_new();
    assert!(nats.url().starts_with("nats://127.0.0.1:"));
    nats.kill();
    assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_err(), "killed");
    nats.start();
    assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_ok());
}
