//! A real Jupyter Server (from `tests/.venv`) in a namespace, and the `tests/py/jupyter_check.py`
//! probe that drives it end to end: REST API, a kernel, its websocket, `6*7 == 42`, cleanup.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::netns::Netns;
use super::process::{run_with_timeout, CmdOutput, Daemon};
use super::scratch::Scratch;

/// How long the server may take to listen (imports alone take a couple of seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv's python; panics with a pointer to `tests/run` if the venv is missing.
pub fn venv_python() -> PathBuf {
    let python = super::repo_root().join("tests/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with `sudo tests/run` (it creates the venv)",
        python.display()
    );
    python
}

/// A script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    super::repo_root().join("tests/py").join(name)
}

/// A running Jupyter Server with a random token; killed (with its kernels) on drop.
pub struct Jupyter {
    daemon: Daemon,
    addr: SocketAddr,
    token: String,
}

impl Jupyter {
    /// Starts `python -m jupyter_server` on `addr` inside `ns`, with its runtime, config and
    /// data directories in `<scratch>/jupyter/`, and waits (bounded) until it listens.
    pub fn start(ns: &Netns, scratch: &Scratch, addr: SocketAddr) -> Jupyter {
        let python = venv_python();
        let home = scratch.subdir("jupyter");
        let root = scratch.subdir("jupyter/root");
        let token = random_token();
        let venv_bin = python.parent().expect("venv bin dir").to_path_buf();
        let path = format!(
            "{}:{}",
            venv_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = ns.command(&python);
        cmd.args(["-m", "jupyter_server"])
            .arg(format!("--ServerApp.ip={}", addr.ip()))
            .arg(format!("--ServerApp.port={}", addr.port()))
            .arg("--ServerApp.port_retries=0")
            .arg(format!("--IdentityProvider.token={token}"))
            .arg("--ServerApp.open_browser=False")
            .arg(format!("--ServerApp.root_dir={}", root.display()))
            .arg("--allow-root")
            .env("PATH", path)
            .env("JUPYTER_RUNTIME_DIR", home.join("runtime"))
            .env("JUPYTER_CONFIG_DIR", home.join("config"))
            .env("JUPYTER_DATA_DIR", home.join("data"))
            .env("IPYTHONDIR", home.join("ipython"))
            .env("JUPYTER_PLATFORM_DIRS", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let mut daemon = Daemon::spawn("jupyter", cmd, scratch);
        daemon.wait_for_port(ns, addr, START_TIMEOUT);
        Jupyter {
            daemon,
            addr,
            token,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The process guard (logs, terminate).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// Runs `tests/py/jupyter_check.py` in `ns` against `base_url` (e.g. `http://127.0.0.1:18888`
/// at the local end of a tunnel). It succeeds only if the REST API, a kernel start, an
/// `execute_request` over the kernel's websocket (`6*7` -> `42`) and the kernel's deletion all
/// worked; stdout is a JSON summary. Bounded by `timeout` (the script also bounds itself).
pub fn jupyter_check(ns: &Netns, base_url: &str, token: &str, timeout: Duration) -> CmdOutput {
    let mut cmd: Command = ns.command(venv_python());
    cmd.arg(py_script("jupyter_check.py"))
        .args(["--url", base_url, "--token", token])
        .arg(format!(
            "--timeout={}",
            timeout.as_secs().saturating_sub(5).max(5)
        ));
    run_with_timeout(cmd, timeout)
}

/// 128 random bits from /dev/urandom, in hex.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
