//! moto inside a test's network namespace: for a bastion that must reach the AWS API on its
//! own loopback (the bastion namespace has no route to the root namespace, where
//! [`super::moto::Moto`] runs). Same life cycle: started on a free port, waited for
//! (bounded), killed on drop; plus [`NsMoto::stop`] to simulate an outage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::moto::moto_server_path;
use super::netns::Netns;

/// How long moto may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A moto server on 127.0.0.1 of a namespace.
pub struct NsMoto {
    child: Child,
    addr: SocketAddr,
    ns: Netns,
}

impl NsMoto {
    /// Starts a fresh moto server in `ns` at a free port of its loopback.
    pub fn start_in(ns: &Netns) -> NsMoto {
        let port = ns
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .and_then(|l| l.local_addr())
            .expect("a free port in the namespace")
            .port();
        let bin = moto_server_path();
        assert!(
            bin.exists(),
            "{} missing: python3 -m venv tests/.venv && tests/.venv/bin/pip install -r tests/py/requirements.txt",
            bin.display()
        );
        let child = ns
            .command(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = NsMoto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ns: ns.clone(),
        };
        let start = Instant::now();
        loop {
            if let Ok(200) = moto.get_status("/moto-api/data.json") {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited early with {status}");
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "moto_server did not answer on {} in {} within {START_TIMEOUT:?}",
                moto.addr,
                ns.name()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:PORT` (valid inside the namespace only).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server now (its state is gone).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The status of one GET, from inside the namespace.
    fn get_status(&self, path: &'static str) -> std::io::Result<u16> {
        let addr = self.addr;
        self.ns.run_in(move || -> std::io::Result<u16> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0))
        })?
    }
}

impl Drop for NsMoto {
    fn drop(&mut self) {
        self.stop();
    }
}
