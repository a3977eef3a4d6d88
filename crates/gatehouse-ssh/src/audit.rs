//! The audit log: one JSON object per line, for every authentication result, tunnel open,
//! refusal and close. Written to a file (append) or to stdout; each line is written whole and
//! flushed, so a crash loses at most the event being written.
//!
//! When a line cannot be written (a full disk, an I/O error), the sink is *unwritable*: that
//! line and the ones after it wait in memory, in order (at most [`MAX_PENDING`]; past that the
//! oldest are dropped and counted), and [`Audit::retry_pending`] writes them as soon as the
//! file takes them again. With `audit.on_failure = "refuse"` (the default), [`Audit::refusal`]
//! then says why new logins and tunnels are refused: nothing happens that the audit log cannot
//! hold. Each change of state is logged once, and the gauge `gatehouse_audit_unwritable` is
//! 1 while it lasts.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A source and how many refusals it had, in a summary.
#[derive(Debug, Serialize)]
pub struct SourceCount<'a> {
    pub source: &'a str,
    pub count: u64,
}

/// The certificate of a certificate login, in its audit lines.
#[derive(Debug, Serialize)]
pub struct CertAudit<'a> {
    /// The trusted CA's name (`trusted_user_ca[].name`); absent for an untrusted CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<&'a str>,
    /// The signing CA key's SHA-256 fingerprint.
    pub ca_key: &'a str,
    /// The certificate's key id (printable, at most 128 characters).
    pub key_id: &'a str,
    pub serial: u64,
    /// The principal that mapped to the login (successes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    /// When the certificate expires, RFC 3339 (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<String>,
}

/// One audit event. The `event` field of the JSON line is the variant's name.
#[derive(Debug, Serialize)]
#[serde(tag = "event")]
pub enum Event<'a> {
    /// A user authenticated.
    #[serde(rename = "auth.success")]
    AuthSuccess {
        session: &'a str,
        user: &'a str,
        key: &'a str,
        source: SocketAddr,
    },
    /// A user authenticated with a certificate of a trusted CA (`[[trusted_user_ca]]`): the
    /// fields of `auth.success`, `key` being the certificate key's fingerprint, plus the
    /// certificate's.
    #[serde(rename = "auth.success")]
    CertAuthSuccess {
        session: &'a str,
        user: &'a str,
        key: &'a str,
        source: SocketAddr,
        certificate: CertAudit<'a>,
    },
    /// A certificate login was refused: the fields of `auth.failure`, plus the
    /// certificate's and a stable `reason_code`.
    #[serde(rename = "auth.failure")]
    CertAuthFailure {
        session: &'a str,
        user: &'a str,
        method: &'a str,
        key: &'a str,
        source: SocketAddr,
        reason_code: &'a str,
        reason: &'a str,
        certificate: CertAudit<'a>,
    },
    /// `gatehouse login`: a certificate was issued to a caller STS named.
    #[serde(rename = "certificate.issued")]
    CertificateIssued {
        session: &'a str,
        source: SocketAddr,
        /// The caller's ARN (also the certificate's key id).
        caller: &'a str,
        /// The login it is for.
        user: &'a str,
        /// The `[sso]` entry it came through (`permission-set:Research`, ...).
        via: &'a str,
        /// The certified key.
        key: &'a str,
        serial: u64,
        valid_before: &'a str,
    },
    /// `gatehouse login`: no certificate, and why (the reason the user saw).
    #[serde(rename = "certificate.refused")]
    CertificateRefused {
        session: &'a str,
        source: SocketAddr,
        /// The caller's ARN, when STS named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        caller: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        reason: &'a str,
    },
    /// An authentication attempt was refused.
    #[serde(rename = "auth.failure")]
    AuthFailure {
        session: &'a str,
        user: &'a str,
        method: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        source: SocketAddr,
        reason: &'a str,
    },
    /// A tunnel was opened.
    #[serde(rename = "tunnel.open")]
    TunnelOpen {
        session: &'a str,
        tunnel: u64,
        user: &'a str,
        target: &'a str,
        port: u32,
        host: &'a str,
        dial: SocketAddr,
    },
    /// The user's key was given to the target host for its OS users (EC2 Instance Connect),
    /// before the tunnel to its SSH port opened.
    #[serde(rename = "target.key_pushed")]
    KeyPushed {
        session: &'a str,
        user: &'a str,
        host: &'a str,
        os_users: &'a [String],
        /// The key's SHA-256 fingerprint.
        key: &'a str,
        /// How long the pushes took (they run at once, and with the dial).
        duration_ms: u64,
    },
    /// A tunnel request was refused (policy, or the target could not be reached).
    #[serde(rename = "tunnel.deny")]
    TunnelDeny {
        session: &'a str,
        user: &'a str,
        target: &'a str,
        port: u32,
        reason_code: &'a str,
        reason: &'a str,
    },
    /// A tunnel closed.
    #[serde(rename = "tunnel.close")]
    TunnelClose {
        session: &'a str,
        tunnel: u64,
        user: &'a str,
        host: &'a str,
        dial: SocketAddr,
        /// Bytes from the client to the target.
        bytes_up: u64,
        /// Bytes from the target to the client.
        bytes_down: u64,
        duration_ms: u64,
        reason: &'a str,
    },
    /// A request other than a tunnel (shell, exec, -R, agent, X11, ...) was refused.
    #[serde(rename = "request.deny")]
    RequestDeny {
        session: &'a str,
        user: &'a str,
        request: &'a str,
        reason: &'a str,
    },
    /// A connection was refused or cut before it authenticated.
    #[serde(rename = "connection.refused")]
    ConnectionRefused {
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a str>,
        source: SocketAddr,
        /// Stable label: `too_many_unauthenticated`, `evicted`, `too_many_from_source`,
        /// `too_many_from_prefix`, `penalized`, `version_grace`, `kex_grace`, `login_grace`,
        /// `untrusted_proxy`, `bad_proxy_header`, `shutting_down`, `internal`.
        reason_code: &'a str,
        reason: &'a str,
    },
    /// The refusals of one reason in the last interval that had no `connection.refused` line
    /// of their own (past the first few, see `refusals`): `count` is all of the interval's,
    /// `itemized` of them had a line.
    #[serde(rename = "connection.refused.summary")]
    ConnectionRefusedSummary {
        reason_code: &'a str,
        count: u64,
        itemized: u64,
        /// `count - itemized`: the refusals this line stands for alone, so that summing
        /// `summarized` over summaries plus one per `connection.refused` line counts every
        /// refusal once (what the stack's CloudWatch metric filter does).
        summarized: u64,
        interval_s: u64,
        /// Distinct sources of the summarized refusals (at most 1024 counted).
        sources: usize,
        /// The busiest of them, busiest first: `{source, count}`.
        top_sources: Vec<SourceCount<'a>>,
    },
    /// A source's penalty account went over the threshold: its new connections are refused
    /// for `seconds` (less the threshold), and longer if it keeps offending.
    #[serde(rename = "source.penalized")]
    SourcePenalized {
        /// IPv4 address or IPv6 /64.
        source: &'a str,
        seconds: u64,
        offence: &'a str,
    },
    /// An open session's key is no longer valid for its user (key deactivated or deleted,
    /// user removed): the session is closed.
    #[serde(rename = "session.revoked")]
    SessionRevoked {
        session: &'a str,
        user: &'a str,
        key: &'a str,
        reason: &'a str,
    },
    /// An open session's access ended by itself at its time (the user's or key's expiry, the
    /// certificate's `valid_before`): the session and its tunnels are closed.
    #[serde(rename = "session.expired")]
    SessionExpired {
        session: &'a str,
        user: &'a str,
        key: &'a str,
        /// The instant access ended, RFC 3339.
        expired_at: &'a str,
        reason: &'a str,
    },
    /// An open tunnel is no longer allowed (group removed, host gone, port closed, host
    /// moved): the tunnel is closed.
    #[serde(rename = "tunnel.revoked")]
    TunnelRevoked {
        session: &'a str,
        tunnel: u64,
        user: &'a str,
        host: &'a str,
        reason: &'a str,
    },
    /// A configuration reload was applied or refused (the running config stays).
    #[serde(rename = "config.reload")]
    ConfigReload {
        /// "applied" or "refused".
        result: &'a str,
        detail: &'a str,
    },
    /// The directory is stale: no successful listing from its source within
    /// `max_staleness`, so new logins are refused (open sessions stay). Written when it
    /// happens and again every [`STALE_REPEAT`] while it lasts, so an alarm on these lines
    /// stays raised for as long as the bastion refuses logins.
    #[serde(rename = "directory.stale")]
    DirectoryStale {
        /// Seconds since the last successful listing.
        age_s: u64,
    },
    /// The directory is fresh again after being stale: new logins are admitted.
    #[serde(rename = "directory.fresh")]
    DirectoryFresh {
        /// How long it was stale, in seconds.
        stale_s: u64,
    },
    /// An authenticated session ended.
    #[serde(rename = "session.close")]
    SessionClose {
        session: &'a str,
        user: &'a str,
        duration_ms: u64,
        reason: &'a str,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// How often a `directory.stale` line is written again while the directory stays stale.
pub const STALE_REPEAT: Duration = Duration::from_secs(60);

/// Lines kept while the audit log cannot be written, at most.
pub const MAX_PENDING: usize = 10_000;
/// How often lines that wait are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Why a login or tunnel is refused while the audit log cannot be written (and
/// `audit.on_failure` is `"refuse"`).
pub const UNWRITABLE: &str =
    "the bastion cannot write its audit log; new logins and tunnels wait until it can";

/// The writer and the lines that wait for it.
struct Sink {
    writer: Box<dyn Write + Send>,
    /// Lines not written yet, oldest first (only while the writer fails).
    pending: VecDeque<String>,
    /// Lines dropped from `pending` (full) since the writer last failed.
    dropped: u64,
    /// A failed write may have left part of a line: the next write starts a new line.
    torn: bool,
}

impl Sink {
    /// Writes `line` (newline-terminated) whole, after ending a torn one.
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        if self.torn {
            self.writer.write_all(b"\n")?;
            self.torn = false;
        }
        let written = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush());
        self.torn = written.is_err();
        written
    }

    fn keep(&mut self, line: String) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(line);
    }
}

/// Where audit lines go. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Audit {
    sink: Arc<Mutex<Sink>>,
    /// Lines wait: the writer failed and has not taken them since.
    unwritable: Arc<AtomicBool>,
    /// `audit.on_failure = "refuse"`.
    refuse: bool,
}

impl Audit {
    /// Audit lines on standard output.
    pub fn stdout() -> Self {
        Self::to_writer(io::stdout())
    }

    /// Audit lines appended to `path` (created 0640 if absent).
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Ok(Self::to_writer(file))
    }

    /// Audit lines to any writer (tests).
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        Audit {
            sink: Arc::new(Mutex::new(Sink {
                writer: Box::new(w),
                pending: VecDeque::new(),
                dropped: 0,
                torn: false,
            })),
            unwritable: Arc::new(AtomicBool::new(false)),
            refuse: true,
        }
    }

    /// This sink, refusing new logins and tunnels while it cannot write (`refuse`, the
    /// default) or not (`audit.on_failure = "continue"`).
    pub fn refusing_when_unwritable(mut self, refuse: bool) -> Self {
        self.refuse = refuse;
        self
    }

    /// Whether lines wait because the audit log cannot be written.
    pub fn unwritable(&self) -> bool {
        self.unwritable.load(Ordering::Relaxed)
    }

    /// Why new logins and tunnels are refused now, if they are: the audit log cannot be
    /// written and `audit.on_failure` is `"refuse"`.
    pub fn refusal(&self) -> Option<&'static str> {
        (self.refuse && self.unwritable()).then_some(UNWRITABLE)
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, Sink> {
        match self.sink.lock() {
            Ok(sink) => sink,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Writes `event` if the audit log takes it now: with `audit.on_failure = "refuse"`, an
    /// event that cannot be written did not happen (`Err` says why; nothing is kept). For what
    /// must not happen unaudited: a login's success. With `"continue"`, as [`Audit::record`].
    ///
    /// # Errors
    /// The audit log cannot be written and unwritable means refuse.
    pub fn record_or_refuse(&self, event: Event<'_>) -> Result<(), &'static str> {
        if !self.refuse {
            self.record(event);
            return Ok(());
        }
        let Some(text) = self.line(&event) else {
            return Err(UNWRITABLE);
        };
        let mut sink = self.sink();
        if !sink.pending.is_empty() {
            return Err(UNWRITABLE);
        }
        if let Err(e) = sink.write_line(&text) {
            drop(sink);
            self.became_unwritable(&e);
            return Err(UNWRITABLE);
        }
        crate::telemetry::observe(&event);
        Ok(())
    }

    /// `event` as a line, newline-terminated.
    fn line(&self, event: &Event<'_>) -> Option<String> {
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
        };
        match serde_json::to_string(&line) {
            Ok(mut text) => {
                text.push('\n');
                Some(text)
            }
            Err(e) => {
                tracing::error!("cannot encode audit event {event:?}: {e}");
                None
            }
        }
    }

    fn became_unwritable(&self, e: &io::Error) {
        if self.unwritable.swap(true, Ordering::Relaxed) {
            return;
        }
        metrics::gauge!("gatehouse_audit_unwritable").set(1.0);
        tracing::error!(
            "cannot write the audit log: {e}; its lines wait in memory (at most \
             {MAX_PENDING}) until it can be written{}",
            if self.refuse {
                "; new logins and tunnels are refused meanwhile (audit.on_failure = refuse)"
            } else {
                "; logins and tunnels are admitted meanwhile, unaudited until then \
                 (audit.on_failure = continue)"
            }
        );
    }

    /// Tries the lines that wait every second, for ever: the sink is writable again once they
    /// are all written.
    pub async fn retry_pending(self) {
        let mut tick = tokio::time::interval(RETRY_EVERY);
        loop {
            tick.tick().await;
            if self.unwritable() {
                self.flush_pending();
            }
        }
    }

    /// Writes the lines that wait, oldest first, until one fails.
    fn flush_pending(&self) {
        let mut sink = self.sink();
        let mut written = 0u64;
        while let Some(line) = sink.pending.pop_front() {
            if sink.write_line(&line).is_err() {
                sink.pending.push_front(line);
                return;
            }
            written += 1;
        }
        let dropped = std::mem::take(&mut sink.dropped);
        self.unwritable.store(false, Ordering::Relaxed);
        metrics::gauge!("gatehouse_audit_unwritable").set(0.0);
        tracing::warn!(
            written,
            dropped,
            "the audit log takes lines again: the ones that waited are written{}",
            if self.refuse {
                "; new logins and tunnels are admitted again"
            } else {
                ""
            }
        );
    }

    /// Writes one event (and counts it in the metrics). A failing audit sink is logged,
    /// never fatal to the connection.
    pub fn record(&self, event: Event<'_>) {
        crate::telemetry::observe(&event);
        let Some(text) = self.line(&event) else {
            return;
        };
        let mut sink = self.sink();
        // Lines wait already: this one waits behind them, in order.
        if !sink.pending.is_empty() {
            sink.keep(text);
            return;
        }
        if let Err(e) = sink.write_line(&text) {
            sink.keep(text);
            drop(sink);
            self.became_unwritable(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_json_object_per_line_with_event_and_timestamp() {
        let buf = Buf::default();
        let audit = Audit::to_writer(buf.clone());
        audit.record(Event::TunnelDeny {
            session: "s1",
            user: "alice",
            target: "evil\n{\"event\":\"x\"}",
            port: 22,
            reason_code: "unknown_target",
            reason: "nope",
        });
        audit.record(Event::ConnectionRefused {
            session: None,
            source: "10.0.0.1:5".parse().unwrap(),
            reason_code: "too_many_unauthenticated",
            reason: "too many",
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["event"], "tunnel.deny");
        assert_eq!(first["target"], "evil\n{\"event\":\"x\"}");
        assert!(first["ts"].as_str().unwrap().ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["event"], "connection.refused");
        assert!(second.get("session").is_none());
    }
}
