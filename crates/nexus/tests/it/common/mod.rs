//! What the binary's integration tests share: the real `nexus serve` in a child process, waited
//! on until ready and SIGKILLed when dropped, and fresh PostgreSQL schemas.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn postgres_url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn nats_url() -> String {
    std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `nexus serve`; dropping it SIGKILLs it (no clean shutdown).
pub struct Nexus {
    child: Child,
    pub base: String,
}

impl Nexus {
    /// `nexus serve --listen 127.0.0.1:<port>` with `configure` adding arguments and environment,
    /// once `/health/ready` answers 200 (the test fails after 30 s).
    pub async fn serve_on(port: u16, configure: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("NEXUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let nexus = Nexus {
            child: command.spawn().expect("the nexus binary starts"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(nexus.url("/health/ready")).send().await
                && response.status().is_success()
            {
                return nexus;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "nexus serve did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The same on a free port.
    pub async fn serve(configure: impl FnOnce(&mut Command)) -> Self {
        Self::serve_on(free_port(), configure).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Nexus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh PostgreSQL schema for this run, dropped when the test ends (pass or fail).
pub struct Schema(pub String);

impl Schema {
    pub fn fresh(prefix: &str) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        Schema(format!("{prefix}_{}_{nanos}", std::process::id()))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop runs inside the test's runtime: a thread of its own may block on another one.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}
