//! The audit log: one JSON object per line, for every authentication result, tunnel open,
//! refusal and close. Written to a file (append) or to stdout; each line is written whole and
//! flushed, so a crash loses at most the event being written.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

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
        /// Stable label: `too_many_unauthenticated`, `too_many_from_source`, `penalized`,
        /// `login_grace`, `untrusted_proxy`, `bad_proxy_header`, `shutting_down`, `internal`.
        reason_code: &'a str,
        reason: &'a str,
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

/// Where audit lines go. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Audit {
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
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
            sink: Arc::new(Mutex::new(Box::new(w))),
        }
    }

    /// Writes one event (and counts it in the metrics). A failing audit sink is logged,
    /// never fatal to the connection.
    pub fn record(&self, event: Event<'_>) {
        crate::telemetry::observe(&event);
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event: &event,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!("cannot encode audit event {event:?}: {e}");
                return;
            }
        };
        text.push('\n');
        let mut sink = match self.sink.lock() {
            Ok(sink) => sink,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = sink.write_all(text.as_bytes()).and_then(|_| sink.flush()) {
            tracing::error!(
                "cannot write audit log: {e}; event was: {}",
                text.trim_end()
            );
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
