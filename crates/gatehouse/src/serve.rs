//! Wiring of the daemon: host key, audit sink, listeners, directory, signals, reload.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gatehouse_config::Config;
use gatehouse_directory::{Directory, Snapshot};
use gatehouse_ssh::audit::{Audit, Event, STALE_REPEAT};
use gatehouse_ssh::{hostkey, russh_config, serve, Bastion, Listener};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Logs to stderr, `info` by default, `RUST_LOG` to change. Colors only on a terminal: under
/// systemd, stderr is the journal, which would keep the escape codes.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// How much longer systemd should wait for READY, from each extension (60 s).
const START_EXTENSION_USEC: u32 = 60_000_000;
/// How often the extension is renewed while the first AWS listing runs.
const START_EXTENSION_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs the daemon until SIGTERM or SIGINT, then drains. `hint` is printed once listening.
/// With `reload_from`, SIGHUP re-reads that file and applies its users and hosts; with
/// `[aws]`, SIGHUP asks for an immediate AWS refresh instead (the file's users and hosts are
/// empty by construction, so reloading them would revoke everyone), and applies the file's
/// `[sso]` accounts and mapping.
pub async fn run(
    config: Config,
    hint: Option<String>,
    reload_from: Option<PathBuf>,
) -> anyhow::Result<()> {
    let aws = match &config.aws {
        Some(settings) => {
            // Under systemd (Type=notify), the first AWS listing may take longer than the
            // start timeout (90 s by default) in a large directory at a paced rate: extend it
            // while the listing runs (it gives up by itself after max_staleness), so systemd
            // does not kill it and start over, in a loop.
            let extend = tokio::spawn(async {
                loop {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(
                        START_EXTENSION_USEC,
                    )]);
                    tokio::time::sleep(START_EXTENSION_EVERY).await;
                }
            });
            let started = crate::aws::Started::new(
                settings,
                &config.server.host_key,
                config.sso.as_ref().map(|sso| sso.ca_key.as_path()),
                config.audit.file.as_deref(),
            )
            .await;
            extend.abort();
            Some(started?)
        }
        None => None,
    };
    let host_key = match &aws {
        Some(aws) => aws.host_key.clone(),
        None => hostkey::load_or_create(&config.server.host_key)?,
    };
    let audit = match &config.audit.file {
        Some(path) => Audit::file(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?,
        None => Audit::stdout(),
    }
    .refusing_when_unwritable(config.audit.on_failure == gatehouse_config::AuditOnFailure::Refuse);
    let listeners = listeners(&config).await?;
    let health = match config.server.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for health checks on {addr}"))?,
        ),
        None => None,
    };
    let control = match control_socket(&config) {
        Some(path) => Some(
            gatehouse_ssh::control::bind(&path)
                .with_context(|| format!("cannot create the control socket {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(addr) = config.metrics.listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let shutdown = shutdown_signal()?;
    let directory = match &aws {
        Some(aws) => aws.directory(),
        None => Arc::new(Directory::new(Snapshot::from_config(&config))),
    };
    if let Some(aws) = &aws {
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(crate::aws::refresh_on_hangup(hangup, aws.wakeup()));
    }
    if let Some(path) = reload_from {
        // Each SIGHUP reaches every stream registered for it: this one re-reads the file.
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let target = directory.clone();
        let from_aws = aws.is_some();
        let apply = move |config: &Config| {
            target.set_callers(gatehouse_directory::callers::Callers::from_config(
                config.sso.as_ref(),
            ));
            if from_aws {
                return "[sso] accounts and mapping; users and hosts come from AWS, and every \
                        other change applies at restart"
                    .to_owned();
            }
            target.publish(Snapshot::from_config(config));
            format!(
                "{} users, {} hosts; [server] and [audit] changes apply at restart",
                config.users.len(),
                config.hosts.len(),
            )
        };
        tokio::spawn(reload_on_hangup(hangup, path, audit.clone(), apply));
    }
    directory.set_callers(gatehouse_directory::callers::Callers::from_config(
        config.sso.as_ref(),
    ));
    let issuer = match &config.sso {
        Some(sso) => {
            let ca = match aws.as_ref().and_then(|aws| aws.user_ca.clone()) {
                Some(ca) => ca,
                None => hostkey::load_or_create(&sso.ca_key).with_context(|| {
                    format!(
                        "cannot use the SSO CA key {} (sso.ca_key)",
                        sso.ca_key.display()
                    )
                })?,
            };
            tracing::info!(
                ca_key = %gatehouse_directory::fingerprint(ca.public_key()),
                "gatehouse login: certificates for {}",
                humantime::format_duration(sso.validity)
            );
            Some(Arc::new(gatehouse_ssh::issuer::Issuer::new(
                ca,
                sso.validity,
                crate::aws::proof_verifier(&config)?,
            )))
        }
        None => None,
    };
    let mut trusted_cas =
        gatehouse_directory::certificate::TrustedCas::from_config(&config.trusted_user_ca);
    if let Some(issuer) = &issuer {
        trusted_cas =
            trusted_cas.with_own(issuer.public_key().key_data().clone(), issuer.validity());
    }
    let fingerprint = gatehouse_directory::fingerprint(host_key.public_key());
    let bound: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.socket.local_addr().ok())
        .collect();
    tracing::info!(
        listen = ?bound,
        host_key = %fingerprint,
        users = directory.current().identities().len(),
        hosts = directory.current().inventory().hosts().len(),
        "gatehouse listening"
    );
    if let Some(hint) = hint {
        eprintln!("{hint}");
    }
    // Under systemd (Type=notify): ready once every socket is bound. Without NOTIFY_SOCKET
    // this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tokio::spawn(watch_directory(directory.clone(), audit.clone()));
    let bastion = Bastion {
        russh: russh_config(&config.server, host_key),
        settings: config.server.clone(),
        limits: config.limits.clone(),
        penalties: config.penalties.clone(),
        directory: directory.subscribe(),
        trusted_cas,
        issuer,
        audit,
        key_push: aws.as_ref().and_then(|aws| aws.key_push()),
        health,
        control,
        watchdog: watchdog(),
    };
    if let Some(aws) = aws {
        aws.spawn_refresh();
    }
    serve(bastion, listeners, shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// On each SIGHUP, re-reads the config file and `apply`s it, which says what it applied: in
/// static mode its users, hosts and `[sso]` mapping, with `[aws]` only the `[sso]` mapping.
/// Open sessions and tunnels are re-checked against them (the SSH layer closes what is no
/// longer allowed). An invalid file is refused and the running config stays. `[server]` and
/// `[audit]` settings apply at the next restart, and so do `[[trusted_user_ca]]` and `[sso]`'s
/// CA key and validity (its accounts and mapping apply at once).
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    path: PathBuf,
    audit: Audit,
    apply: impl Fn(&Config) -> String,
) {
    while hangup.recv().await.is_some() {
        match gatehouse_config::load(&path) {
            Ok(config) => {
                let detail = format!("{} from {}", apply(&config), path.display());
                tracing::info!("SIGHUP: reloaded {detail}");
                audit.record(Event::ConfigReload {
                    result: "applied",
                    detail: &detail,
                });
            }
            Err(e) => {
                let detail = e.to_string();
                tracing::error!("SIGHUP: config refused, the running config stays:\n{detail}");
                audit.record(Event::ConfigReload {
                    result: "refused",
                    detail: &detail,
                });
            }
        }
    }
}

/// The sockets to serve: those systemd passed (socket activation; a socket whose
/// `FileDescriptorName=` is `proxy` expects PROXY v2 headers), else the configured
/// `listen` and `proxy_listen` addresses, bound here.
async fn listeners(config: &Config) -> anyhow::Result<Vec<Listener>> {
    let mut inherited = listenfd::ListenFd::from_env();
    if inherited.len() > 0 {
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let names: Vec<&str> = names.split(':').collect();
        let mut out = Vec::new();
        for i in 0..inherited.len() {
            let Some(std_listener) = inherited
                .take_tcp_listener(i)
                .with_context(|| format!("inherited socket {i} is not a TCP listener"))?
            else {
                continue;
            };
            std_listener.set_nonblocking(true)?;
            let socket = TcpListener::from_std(std_listener)?;
            let proxy = names.get(i) == Some(&"proxy");
            tracing::info!(
                "using socket {} from systemd{}; [server] listen addresses are not bound",
                socket.local_addr()?,
                if proxy { " (PROXY protocol)" } else { "" }
            );
            out.push(Listener { socket, proxy });
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    let plain = config.server.listen.iter().map(|a| (a, false));
    let proxied = config.server.proxy_listen.iter().map(|a| (a, true));
    for (addr, proxy) in plain.chain(proxied) {
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        out.push(Listener { socket, proxy });
    }
    Ok(out)
}

/// Under systemd with `WatchdogSec=` (`WATCHDOG_USEC` set for this process): `WATCHDOG=1`
/// twice per period, while every connection worker answers; systemd restarts a daemon that
/// stops (a wedged worker, a hung runtime). Without it, none.
fn watchdog() -> Option<gatehouse_ssh::liveness::Watchdog> {
    let period = sd_notify::watchdog_enabled()?;
    tracing::info!(
        "systemd watchdog: telling it every {} that every connection worker answers",
        humantime::format_duration(period / 2)
    );
    Some(gatehouse_ssh::liveness::Watchdog {
        every: period / 2,
        alive: Arc::new(|| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }),
    })
}

/// Keeps the `gatehouse_directory_age_seconds` gauge current, and audits the directory going
/// stale (`directory.stale`, again every [`STALE_REPEAT`] while it lasts, so the stack's alarm
/// stays raised) and fresh again (`directory.fresh`). Checked every [`DIRECTORY_CHECK`]: a
/// line is at most that late.
async fn watch_directory(directory: Arc<Directory>, audit: Audit) {
    let mut tick = tokio::time::interval(DIRECTORY_CHECK);
    let mut stale = StaleWatch::default();
    loop {
        tick.tick().await;
        let snapshot = directory.current();
        let age = snapshot.age();
        metrics::gauge!("gatehouse_directory_age_seconds").set(age.as_secs_f64());
        let now = std::time::Instant::now();
        if let Some(event) = stale.observe(snapshot.is_stale(now), age, now) {
            if matches!(event, Event::DirectoryStale { .. }) {
                tracing::warn!(
                    age_s = age.as_secs(),
                    "directory stale: new logins are refused"
                );
            } else {
                tracing::info!("directory fresh again: new logins are admitted");
            }
            audit.record(event);
        }
    }
}

/// How often the directory's age and staleness are looked at.
const DIRECTORY_CHECK: Duration = Duration::from_secs(5);

/// When the directory went stale and when that was last audited.
#[derive(Default)]
struct StaleWatch {
    since: Option<(Instant, Instant)>,
}

impl StaleWatch {
    /// The audit event due now, if any, for a directory that is (or is not) `stale` at `now`.
    fn observe(&mut self, stale: bool, age: Duration, now: Instant) -> Option<Event<'static>> {
        match (stale, self.since) {
            (true, None) => {
                self.since = Some((now, now));
                Some(Event::DirectoryStale {
                    age_s: age.as_secs(),
                })
            }
            (true, Some((start, last))) if now.duration_since(last) >= STALE_REPEAT => {
                self.since = Some((start, now));
                Some(Event::DirectoryStale {
                    age_s: age.as_secs(),
                })
            }
            (false, Some((start, _))) => {
                self.since = None;
                Some(Event::DirectoryFresh {
                    stale_s: now.duration_since(start).as_secs(),
                })
            }
            _ => None,
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Where `gatehouse sessions` reads the live sessions: `server.control_socket`, or else, under
/// systemd with a `RuntimeDirectory` (the shipped unit), `control.sock` in it.
fn control_socket(config: &gatehouse_config::Config) -> Option<std::path::PathBuf> {
    config.server.control_socket.clone().or_else(|| {
        let dirs = std::env::var("RUNTIME_DIRECTORY").ok()?;
        let first = dirs.split(':').next().filter(|d| !d.is_empty())?;
        Some(std::path::Path::new(first).join("control.sock"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind of a due event and its number.
    fn due(e: Option<Event<'static>>) -> Option<(&'static str, u64)> {
        e.map(|e| match e {
            Event::DirectoryStale { age_s } => ("stale", age_s),
            Event::DirectoryFresh { stale_s } => ("fresh", stale_s),
            _ => ("other", 0),
        })
    }

    #[test]
    fn a_stale_directory_is_audited_at_once_then_every_minute_and_its_end_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let age = Duration::from_secs(400);
        let mut w = StaleWatch::default();
        assert_eq!(due(w.observe(false, age, at(0))), None);
        assert_eq!(due(w.observe(true, age, at(5))), Some(("stale", 400)));
        assert_eq!(due(w.observe(true, age, at(10))), None);
        assert_eq!(due(w.observe(true, age, at(64))), None);
        assert_eq!(due(w.observe(true, age, at(65))), Some(("stale", 400)));
        assert_eq!(due(w.observe(true, age, at(70))), None);
        assert_eq!(due(w.observe(false, age, at(95))), Some(("fresh", 90)));
        assert_eq!(due(w.observe(false, age, at(100))), None);
    }
}
