//! A TCP proxy to put between Nexus and a shared server (RabbitMQ) to cut it off without touching
//! the server: [`Proxy::cut`] drops every open connection and closes new ones as soon as they are
//! accepted (the client sees the peer go away, as when a broker dies); [`Proxy::restore`] lets
//! new connections through again. Dropping the proxy cuts everything and stops listening.
//!
//! Only tokio (`net`, `io-util`), so `nexus-rabbitmq`'s own outage test includes this file too.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    /// `true` while connections are let through; every piped connection watches it.
    up: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds a port");
        let addr = listener.local_addr().expect("the proxy's address");
        let (up, _) = watch::channel(true);
        let watched = up.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = watched.subscribe();
                if *state.borrow() {
                    tokio::spawn(pipe(client, upstream, state));
                }
                // Cut: `client` is dropped here, closing the connection just accepted.
            }
        });
        Proxy { addr, up, accepting }
    }

    /// A proxy in front of the server that `url` (`scheme://[user:password@]host[:port][/…]`)
    /// names, `default_port` when it names none, and `url` rewritten to go through the proxy.
    pub async fn in_front_of(url: &str, default_port: u16) -> (Proxy, String) {
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
        let start = url[after_scheme..end].rfind('@').map_or(after_scheme, |i| after_scheme + i + 1);
        let host_port = &url[start..end];
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:{default_port}")
        };
        let upstream = tokio::net::lookup_host(&host_port)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("{host_port} does not resolve"));
        let proxy = Proxy::start(upstream).await;
        let through = format!("{}{}{}", &url[..start], proxy.addr(), &url[end..]);
        (proxy, through)
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; new ones are closed on arrival until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets new connections through again (the ones cut stay closed; clients reconnect).
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either side
/// closes or the proxy is cut (or dropped); then both sockets are dropped.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = state.wait_for(|up| !up) => {}
    }
}
