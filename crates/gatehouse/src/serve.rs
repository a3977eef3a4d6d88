//! Wiring of the daemon: host key, audit sink, listeners, directory, signals.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_config::Config;
use gatehouse_directory::{Directory, Snapshot};
use gatehouse_ssh::audit::Audit;
use gatehouse_ssh::{hostkey, russh_config, serve, Bastion};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Logs to stderr, `info` by default, `RUST_LOG` to change.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs the daemon until SIGTERM or SIGINT, then drains. `hint` is printed once listening.
pub async fn run(config: Config, hint: Option<String>) -> anyhow::Result<()> {
    let aws = match &config.aws {
        Some(settings) => Some(crate::aws::Started::new(settings).await?),
        None => None,
    };
    let host_key = match aws.as_ref().and_then(|a| a.host_key.clone()) {
        Some(key) => key,
        None => hostkey::load_or_create(&config.server.host_key)?,
    };
    let audit = match &config.audit.file {
        Some(path) => Audit::file(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?,
        None => Audit::stdout(),
    };
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    let shutdown = shutdown_signal()?;
    let directory = match &aws {
        Some(aws) => aws.directory(),
        None => Arc::new(Directory::new(Snapshot::from_config(&config))),
    };
    let fingerprint = gatehouse_directory::fingerprint(host_key.public_key());
    tracing::info!(
        listen = ?config.server.listen,
        host_key = %fingerprint,
        users = directory.current().identities().len(),
        hosts = directory.current().inventory().hosts().len(),
        "gatehouse listening"
    );
    if let Some(hint) = hint {
        eprintln!("{hint}");
    }
    let bastion = Bastion {
        russh: russh_config(&config.server, host_key),
        settings: config.server.clone(),
        directory: directory.subscribe(),
        audit,
    };
    if let Some(aws) = aws {
        aws.spawn_refresh();
    }
    serve(bastion, listeners, shutdown).await;
    Ok(())
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
