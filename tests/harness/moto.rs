//! A moto server (the AWS API, in memory) for tests: started on a free loopback port, waited
//! for (bounded), reset on demand, killed on drop. Self-contained: std only.
//!
//! Needs `tests/.venv/bin/moto_server` (see tests/py/requirements.txt).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to answer after start (it needs about a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Moto {
    child: Child,
    addr: SocketAddr,
}

/// The venv's `moto_server` (tests/.venv at the repository root).
pub fn moto_server_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // CARGO_MANIFEST_DIR is the crate that declares the test; walk up to the workspace root.
    let root = root
        .ancestors()
        .find(|p| p.join("tests").join("py").join("requirements.txt").exists())
        .map(PathBuf::from)
        .unwrap_or(root);
    root.join("tests")
        .join(".venv")
        .join("bin")
        .join("moto_server")
}

/// Reads moto's stderr until werkzeug names the port it bound (`-p 0`), then keeps draining it
/// so moto never blocks on a full pipe. Asking the kernel for the port inside moto (instead of
/// probing a free port first and passing it) means two tests started at once can never get the
/// same port and talk to each other's server.
fn port_from_log(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let (Some(tx), Ok(port)) = (tx.take(), digits.parse()) {
                    let _ = tx.send(port);
                }
            }
        }
    });
    rx
}

/// One HTTP/1.0 request to moto; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Moto {
    /// Start a fresh moto server; panics with a clear message if it cannot.
    pub fn start() -> Moto {
        let bin = moto_server_path();
        assert!(
            bin.exists(),
            "{} missing: python3 -m venv tests/.venv && tests/.venv/bin/pip install -r tests/py/requirements.txt",
            bin.display()
        );
        // moto_server with the fixes in tests/py/moto_fixes.py (the bucket policy).
        let python = bin.with_file_name("python3");
        let script = bin
            .ancestors()
            .nth(3)
            .map(|root| root.join("py").join("moto_server.py"))
            .expect("tests/.venv/bin/moto_server has a tests/ folder");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let ports = port_from_log(child.stderr.take().expect("piped stderr"));
        // Own the child before any assertion, so a failed start still kills it.
        let mut moto = Moto {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
        };
        let start = Instant::now();
        let port = match ports.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            Err(_) => panic!("moto_server did not report its port within {START_TIMEOUT:?}"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        moto.addr = addr;
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/moto-api/data.json") {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited early with {status}");
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "moto_server did not answer on {addr} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forget all state (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let (status, body) = http(self.addr, "POST", "/moto-api/reset").expect("reset moto");
        assert_eq!(status, 200, "moto reset failed: {body}");
    }

    /// Environment for a process that must talk to this moto and nothing else (also remove
    /// `AWS_PROFILE` from it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_SESSION_TOKEN", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials".into(),
            ),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
