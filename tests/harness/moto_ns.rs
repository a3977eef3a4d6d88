//! moto inside a test's network namespace: for a bastion that must reach the AWS API on its
//! own loopback (the bastion namespace has no route to the root namespace, where
//! [`super::moto::Moto`] runs). Same life cycle: started on a free port, waited for
//! (bounded), killed on drop; plus [`NsMoto::stop`] to simulate an outage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
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
        // moto_server with the fixes in tests/py/moto_fixes.py, as `Moto::start` runs it.
        let script = super::jupyter::py_script("moto_server.py");
        let child = ns
            .command(bin.with_file_name("python3"))
            .arg(&script)
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

    /// Starts `tests/py/moto_enforced.py` in `ns`: moto with IAM policies enforced (every
    /// request signed by a key moto issued and checked against its owner's policies), on a
    /// port the kernel picks. Returns the server and the admin key the script bootstrapped.
    pub fn start_enforced_in(ns: &Netns) -> (NsMoto, AccessKey) {
        let script = super::jupyter::py_script("moto_enforced.py");
        let mut child = ns
            .command(super::jupyter::venv_python())
            .arg(&script)
            .args(["127.0.0.1", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let mut moto = NsMoto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ns: ns.clone(),
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let hello: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("moto_enforced.py did not say where it listens within {START_TIMEOUT:?} ({e}): {line:?}")
        });
        let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let url = field(&hello["url"]);
        moto.addr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("moto_enforced.py url {url:?}: {e}"));
        let admin = AccessKey {
            access_key_id: field(&hello["admin"]["access_key_id"]),
            secret_access_key: field(&hello["admin"]["secret_access_key"]),
        };
        assert!(
            !admin.access_key_id.is_empty() && !admin.secret_access_key.is_empty(),
            "no admin key in {line:?}"
        );
        (moto, admin)
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

/// An access key moto issued (for [`NsMoto::start_enforced_in`]'s admin, or any IAM user).
#[derive(Clone, Debug)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl AccessKey {
    /// The key moto accepts from anyone while IAM is not enforced.
    pub fn moto_test() -> AccessKey {
        AccessKey {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        }
    }

    /// The key as environment for an AWS SDK (Rust or boto3) process.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ]
    }

    /// Gives `cmd` this key and nothing that could reach a real AWS endpoint, profile or the
    /// metadata service (the endpoint and region come from the command's own config).
    pub fn apply(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ] {
            cmd.env_remove(var);
        }
        for (var, value) in self.env() {
            cmd.env(var, value);
        }
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            );
    }
}

impl Drop for NsMoto {
    fn drop(&mut self) {
        self.stop();
    }
}
