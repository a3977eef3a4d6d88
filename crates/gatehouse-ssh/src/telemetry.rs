//! Prometheus metrics, derived from audit events so that every counted thing is also an
//! audited thing and no call site is forgotten. Recorded through the `metrics` facade: with no
//! exporter installed (the default) every call is a no-op.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `gatehouse_sessions` | gauge | |
//! | `gatehouse_tunnels` | gauge | |
//! | `gatehouse_auth_total` | counter | `result`, `method`, `reason` |
//! | `gatehouse_tunnel_refusals_total` | counter | `reason` (the `reason_code`) |
//! | `gatehouse_request_refusals_total` | counter | `request` (shell, exec, agent, ...) |
//! | `gatehouse_connection_refusals_total` | counter | `reason` (the `reason_code`; every refusal, also those only summarized) |
//! | `gatehouse_tunnel_bytes_total` | counter | `direction` (up: to the target, down) |
//! | `gatehouse_revocations_total` | counter | `kind` (session, tunnel) |
//! | `gatehouse_key_pushes_total` | counter | (keys given to hosts; failures are `tunnel_refusals` `key_push_failed`) |
//! | `gatehouse_penalties_total` | counter | `offence` |
//! | `gatehouse_penalized_sources` | gauge | |
//! | `gatehouse_unauthenticated` | gauge | (connections holding a pre-auth slot) |
//! | `gatehouse_buffered_bytes` | gauge | (client bytes held for slow targets, of the budget) |
//! | `gatehouse_directory_age_seconds` | gauge | (set by the binary) |

use crate::audit::Event;
use crate::sources::Offence;

/// Puts every metric with no open-ended label on `/metrics` from the start, at zero (gauges
/// keep any value already set), so a dashboard or an alarm sees 0 rather than no data before
/// the first event. `gatehouse_directory_age_seconds` is set by the binary.
pub(crate) fn init() {
    for gauge in [
        "gatehouse_sessions",
        "gatehouse_tunnels",
        "gatehouse_penalized_sources",
        "gatehouse_buffered_bytes",
        "gatehouse_unauthenticated",
        "gatehouse_audit_unwritable",
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
    metrics::counter!("gatehouse_key_pushes_total").increment(0);
    for kind in ["session", "tunnel"] {
        metrics::counter!("gatehouse_revocations_total", "kind" => kind).increment(0);
    }
    for offence in [
        Offence::AuthFailure,
        Offence::NoAuth,
        Offence::GraceExceeded,
    ] {
        metrics::counter!("gatehouse_penalties_total", "offence" => offence.label()).increment(0);
    }
    for direction in ["up", "down"] {
        tunnel_bytes(direction).increment(0);
    }
}

/// Counts one audit event.
pub(crate) fn observe(event: &Event<'_>) {
    match event {
        Event::AuthSuccess { .. } | Event::CertAuthSuccess { .. } => {
            metrics::gauge!("gatehouse_sessions").increment(1.0);
            metrics::counter!("gatehouse_auth_total", "result" => "success", "method" => "publickey", "reason" => "")
                .increment(1);
        }
        Event::AuthFailure { method, reason, .. } => {
            // An expiry's reason names its instant: one label for all of them.
            let reason = if reason.starts_with("access expired") {
                "access_expired".to_owned()
            } else {
                reason.to_string()
            };
            metrics::counter!(
                "gatehouse_auth_total",
                "result" => "failure",
                "method" => method.to_string(),
                "reason" => reason
            )
            .increment(1);
        }
        Event::CertAuthFailure { reason_code, .. } => {
            metrics::counter!(
                "gatehouse_auth_total",
                "result" => "failure",
                "method" => "publickey-cert",
                "reason" => reason_code.to_string()
            )
            .increment(1);
        }
        Event::CertificateIssued { .. } => {
            metrics::counter!("gatehouse_certificates_total", "result" => "issued").increment(1);
        }
        Event::CertificateRefused { .. } => {
            metrics::counter!("gatehouse_certificates_total", "result" => "refused").increment(1);
        }
        Event::SessionExpired { .. } => {
            metrics::counter!("gatehouse_revocations_total", "kind" => "expired").increment(1);
        }
        Event::SessionClose { .. } => metrics::gauge!("gatehouse_sessions").decrement(1.0),
        Event::TunnelOpen { .. } => metrics::gauge!("gatehouse_tunnels").increment(1.0),
        Event::TunnelClose { .. } => metrics::gauge!("gatehouse_tunnels").decrement(1.0),
        Event::TunnelDeny { reason_code, .. } => {
            metrics::counter!("gatehouse_tunnel_refusals_total", "reason" => reason_code.to_string())
                .increment(1);
        }
        Event::RequestDeny { request, .. } => {
            // The first word only ("remote forwarding 1.2.3.4:5" -> "remote"): bounded labels.
            let kind = request
                .split_whitespace()
                .next()
                .unwrap_or("other")
                .to_owned();
            metrics::counter!("gatehouse_request_refusals_total", "request" => kind).increment(1);
        }
        Event::SessionRevoked { .. } => {
            metrics::counter!("gatehouse_revocations_total", "kind" => "session").increment(1);
        }
        Event::TunnelRevoked { .. } => {
            metrics::counter!("gatehouse_revocations_total", "kind" => "tunnel").increment(1);
        }
        Event::KeyPushed { os_users, .. } => {
            metrics::counter!("gatehouse_key_pushes_total").increment(os_users.len() as u64);
        }
        // Counted where they happen (`connection_refused`): most have no line of their own.
        Event::ConnectionRefused { .. }
        | Event::ConnectionRefusedSummary { .. }
        | Event::SourcePenalized { .. }
        | Event::ConfigReload { .. }
        // The directory's state is the gauge `gatehouse_directory_age_seconds`.
        | Event::DirectoryStale { .. }
        | Event::DirectoryFresh { .. } => {}
    }
}

/// Counts one connection refused or cut before authentication, whether or not it gets an
/// audit line of its own (see `refusals`).
pub(crate) fn connection_refused(reason_code: &'static str) {
    metrics::counter!("gatehouse_connection_refusals_total", "reason" => reason_code).increment(1);
}

/// The counter of bytes moved through tunnels in `direction` ("up": to the target, "down"),
/// incremented as they move. Taken once per tunnel: the lookup stays off the per-packet path.
pub(crate) fn tunnel_bytes(direction: &'static str) -> metrics::Counter {
    metrics::counter!("gatehouse_tunnel_bytes_total", "direction" => direction)
}
