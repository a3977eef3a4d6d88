//! HAProxy as the tests' TCP load balancer, standing in for AWS's Network Load Balancer:
//! `mode tcp`, round robin, a PROXY protocol v2 header to every server, HTTP health checks on
//! a port of the server's own. It runs in the foreground (`haproxy -db`) in a namespace, with
//! its config and its runtime API socket (the stats socket, admin level) in the scratch dir,
//! and is killed by its pid on drop like every [`Daemon`].
//!
//! The runtime API is how a test watches what the balancer decided (`show stat`: each
//! server's status, check result and session counts) and changes it (`set server ... state
//! ready | drain | maint`: registering and deregistering a target). HAProxy's own log (every
//! connection with its server and retries, every health state change) goes to its stderr.
//!
//! Debian 12 ships HAProxy 2.6 (`tests/run` installs it).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::process::Daemon;
use super::scratch::Scratch;

/// The backend's name in the config and in runtime API commands.
pub const BACKEND: &str = "servers";
/// How long HAProxy may take to answer on its runtime API after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one runtime API exchange.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How often status waits poll the runtime API.
const POLL: Duration = Duration::from_millis(10);

/// One server of the backend.
#[derive(Clone, Debug)]
pub struct BackendServer {
    /// Its name in the config, the stats and the log (`r1`, ...).
    pub name: String,
    /// Where client connections go (with a PROXY v2 header when the balancer sends one).
    pub addr: SocketAddr,
    /// The port of the same address that answers the HTTP health checks.
    pub check_port: u16,
    /// `false`: declared in maintenance (`disabled`), a slot a test enables later with
    /// [`Haproxy::set_state`] (`ready`).
    pub enabled: bool,
}

/// What the balancer does; [`BalancerConfig::render`] turns it into an `haproxy.cfg`.
#[derive(Clone, Debug)]
pub struct BalancerConfig {
    /// The frontend's address (what clients connect to).
    pub bind: SocketAddr,
    pub servers: Vec<BackendServer>,
    /// Send a PROXY protocol v2 header on every connection to a server (`send-proxy-v2`).
    /// Health checks go to `check_port` and carry no header.
    pub send_proxy_v2: bool,
    /// The source address of connections and checks to the servers (`source`).
    pub source: Option<IpAddr>,
    /// The health check's request path (`option httpchk GET <path>`); a server is healthy
    /// while it answers 200.
    pub check_path: String,
    /// Time between two checks of a server, in every state (`inter`, `fastinter`,
    /// `downinter`).
    pub check_interval: Duration,
    /// Consecutive failed checks that mark a server down (`fall`).
    pub fall: u32,
    /// Consecutive good checks that mark a down server up again (`rise`).
    pub rise: u32,
    /// Connection attempts after a failed one (`retries`).
    pub retries: u32,
    /// Retry on another server (`option redispatch 1`: on every retry, not only the last).
    pub redispatch: bool,
    /// `timeout connect`; also HAProxy's wait before retrying the same server.
    pub timeout_connect: Duration,
    /// `timeout client` and `timeout server`: how long an established connection may be idle.
    pub timeout_idle: Duration,
    /// `timeout check`: how long a health check may take once connected.
    pub timeout_check: Duration,
}

impl BalancerConfig {
    /// An NLB's behaviour, scaled down for tests: PROXY v2 from `source`, `GET /health`
    /// every 100 ms, down after 2 failures and up after 2 successes, no retry or redispatch
    /// (an NLB does neither), 1 s to connect or to answer a check, a minute idle.
    pub fn like_an_nlb(bind: SocketAddr, servers: Vec<BackendServer>, source: IpAddr) -> Self {
        BalancerConfig {
            bind,
            servers,
            send_proxy_v2: true,
            source: Some(source),
            check_path: "/health".into(),
            check_interval: Duration::from_millis(100),
            fall: 2,
            rise: 2,
            retries: 0,
            redispatch: false,
            timeout_connect: Duration::from_secs(1),
            timeout_idle: Duration::from_secs(60),
            timeout_check: Duration::from_secs(1),
        }
    }

    /// The `haproxy.cfg` text, with the runtime API socket at `api_socket`.
    pub fn render(&self, api_socket: &Path) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut text = String::new();
        let _ = write!(
            text,
            "global\n\
             \x20   log stderr format raw local0 info\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             \x20   stats timeout 10s\n\
             \x20   maxconn 4096\n\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   log global\n\
             \x20   option tcplog\n\
             \x20   option log-health-checks\n\
             \x20   timeout connect {connect}\n\
             \x20   timeout client {idle}\n\
             \x20   timeout server {idle}\n\
             \x20   timeout check {check}\n\
             \x20   retries {retries}\n\
             {redispatch}\
             \n\
             frontend balancer\n\
             \x20   bind {bind}\n\
             \x20   default_backend {BACKEND}\n\
             \n\
             backend {BACKEND}\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET {path}\n\
             \x20   http-check expect status 200\n",
            socket = api_socket.display(),
            connect = ms(self.timeout_connect),
            idle = ms(self.timeout_idle),
            check = ms(self.timeout_check),
            retries = self.retries,
            redispatch = if self.redispatch {
                "    option redispatch 1\n"
            } else {
                ""
            },
            bind = self.bind,
            path = self.check_path,
        );
        for server in &self.servers {
            let _ = write!(
                text,
                "    server {name} {addr} check port {port} inter {inter} fastinter {inter} \
                 downinter {inter} fall {fall} rise {rise}",
                name = server.name,
                addr = server.addr,
                port = server.check_port,
                inter = ms(self.check_interval),
                fall = self.fall,
                rise = self.rise,
            );
            if self.send_proxy_v2 {
                text.push_str(" send-proxy-v2");
            }
            if let Some(source) = self.source {
                let _ = write!(text, " source {source}");
            }
            if !server.enabled {
                text.push_str(" disabled");
            }
            text.push('\n');
        }
        text
    }
}

/// One server's line of `show stat`.
#[derive(Clone, Debug)]
pub struct ServerStat {
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, or a transition such as `UP 1/2` (up, one check failed).
    pub status: String,
    /// The last check's result: `L7OK`, `L7STS` (wrong status), `L4CON` (refused), ...
    pub check_status: String,
    /// The HTTP status of the last check's answer, if it got one (`200`, `503`); HAProxy
    /// resets it to `0` while the next check runs.
    pub check_code: String,
    /// A check is running now (HAProxy marks `check_status` with `* `).
    pub check_in_progress: bool,
    /// Sessions open now (`scur`) and since the start (`stot`).
    pub current: u64,
    pub total: u64,
    /// Failed checks since the start (`chkfail`).
    pub check_failures: u64,
    /// Failed connection attempts (`econ`), retries on it (`wretr`) and redispatches away
    /// from it (`wredis`).
    pub connect_errors: u64,
    pub retries: u64,
    pub redispatches: u64,
}

impl ServerStat {
    /// Up and taking new connections (`UP`, or `UP 1/2` while a failed check is not yet a fall).
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status.starts_with("UP ")
    }

    /// Marked down by its checks (`DOWN`, or `DOWN 1/2` while rising).
    pub fn is_down(&self) -> bool {
        self.status == "DOWN" || self.status.starts_with("DOWN ")
    }
}

/// A running HAProxy; killed on drop.
pub struct Haproxy {
    daemon: Daemon,
    api_socket: PathBuf,
    config_path: PathBuf,
    started: Instant,
}

impl Haproxy {
    /// Writes `<scratch>/<name>.cfg`, starts `haproxy -db -f` it in `ns`, and waits (bounded)
    /// until its runtime API answers, by which time its frontend is bound. Does not connect
    /// to the frontend: a probe through it would be a connection to a server.
    pub fn start(ns: &Netns, scratch: &Scratch, name: &str, config: &BalancerConfig) -> Haproxy {
        let api_socket = scratch.join(format!("{name}.sock"));
        let config_path = scratch.write(format!("{name}.cfg"), config.render(&api_socket));
        let mut cmd = ns.command("haproxy");
        cmd.arg("-db").arg("-f").arg(&config_path);
        let started = Instant::now();
        let mut daemon = Daemon::spawn(name, cmd, scratch);
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "{name} exited ({status}) at start (is haproxy installed? tests/run \
                     installs it)\n{}",
                    daemon.logs()
                );
            }
            if try_api(&api_socket, "show info").is_ok_and(|a| a.contains("Name: HAProxy")) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name}: runtime API not answering within {START_TIMEOUT:?}\n{}",
                    daemon.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            daemon,
            api_socket,
            config_path,
            started,
        }
    }

    /// When the process was started (its checks began about then).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process guard (pid, logs).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// HAProxy's log so far: connections (`option tcplog`), check results and state changes.
    pub fn log(&self) -> String {
        self.daemon.stderr()
    }

    /// Sends one runtime API command and returns the answer; panics if the API is unreachable.
    #[track_caller]
    pub fn api(&self, command: &str) -> String {
        try_api(&self.api_socket, command).unwrap_or_else(|e| {
            panic!(
                "haproxy runtime API `{command}`: {e}\n{}",
                self.daemon.logs()
            )
        })
    }

    /// Every server's line of `show stat`.
    #[track_caller]
    pub fn servers(&self) -> Vec<ServerStat> {
        parse_stat(&self.api("show stat"))
    }

    /// The `show stat` line of server `name`.
    #[track_caller]
    pub fn server(&self, name: &str) -> ServerStat {
        self.servers()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in haproxy's stats"))
    }

    /// Sets the administrative state of server `name` (`ready`, `drain` or `maint`), as
    /// registering or deregistering a target does; panics if HAProxy answers an error.
    #[track_caller]
    pub fn set_state(&self, name: &str, state: &str) {
        let answer = self.api(&format!("set server {BACKEND}/{name} state {state}"));
        assert!(
            answer.trim().is_empty(),
            "set server {name} state {state}: {answer}"
        );
    }

    /// Polls (every 10 ms) until server `name`'s stats satisfy `done`; returns how long that
    /// took. Panics, quoting HAProxy's log, after `timeout`.
    #[track_caller]
    pub fn wait_server(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ServerStat) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let stat = self.server(name);
            if done(&stat) {
                return started.elapsed();
            }
            if started.elapsed() >= timeout {
                panic!(
                    "haproxy: server {name} not {what} within {timeout:?}: {stat:?}\n{}",
                    self.daemon.logs()
                );
            }
            thread::sleep(POLL);
        }
    }
}

/// One exchange on the runtime API: the command, then everything HAProxy writes until it
/// closes (the non-interactive mode answers one command and closes).
fn try_api(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(API_TIMEOUT))?;
    stream.set_write_timeout(Some(API_TIMEOUT))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The server lines (not FRONTEND/BACKEND) of `show stat`'s CSV, by its header's names.
fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        panic!("haproxy `show stat` has no header: {csv:?}");
    };
    let columns: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("no column {name} in haproxy's stats: {header}"))
    };
    let (pxname, svname, status) = (col("pxname"), col("svname"), col("status"));
    let (check, check_code) = (col("check_status"), col("check_code"));
    let (scur, stot, chkfail) = (col("scur"), col("stot"), col("chkfail"));
    let (econ, wretr, wredis) = (col("econ"), col("wretr"), col("wredis"));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| {
            f.get(pxname) == Some(&BACKEND)
                && !matches!(f.get(svname), Some(&"BACKEND") | Some(&"FRONTEND"))
        })
        .map(|f| {
            let text = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            let number = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            ServerStat {
                name: text(svname),
                status: text(status),
                check_status: text(check).trim_start_matches("* ").to_string(),
                check_code: text(check_code),
                check_in_progress: text(check).starts_with("* "),
                current: number(scur),
                total: number(stot),
                check_failures: number(chkfail),
                connect_errors: number(econ),
                retries: number(wretr),
                redispatches: number(wredis),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_lines_of_show_stat_by_column_name() {
        let csv = "# pxname,svname,scur,stot,status,chkfail,econ,wretr,wredis,check_status,\
                   check_code,\n\
                   balancer,FRONTEND,0,9,OPEN,,,,,,,\n\
                   servers,r1,1,5,UP,0,0,0,0,* L7OK,0,\n\
                   servers,r2,0,4,DOWN 1/2,3,2,1,1,L4CON,,\n\
                   servers,BACKEND,1,9,UP,,0,1,1,,,\n";
        let stats = parse_stat(csv);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].name, "r1");
        assert_eq!(stats[0].check_status, "L7OK");
        assert!(stats[0].check_in_progress && !stats[1].check_in_progress);
        assert!(stats[0].is_up());
        assert_eq!((stats[0].current, stats[0].total), (1, 5));
        assert!(stats[1].is_down());
        assert_eq!(stats[1].check_status, "L4CON");
        assert_eq!(
            (
                stats[1].connect_errors,
                stats[1].retries,
                stats[1].redispatches
            ),
            (2, 1, 1)
        );
    }
}
