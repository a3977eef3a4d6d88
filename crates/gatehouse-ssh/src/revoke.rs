//! Revocation: every directory snapshot published after a session authenticated is checked
//! against its key and each of its tunnels (registered ones still dialing included).

use gatehouse_directory::{LoginRefusal, Snapshot};

use crate::audit::Event;
use crate::conn::{Conn, OpenTunnel};
use crate::shared::Shared;

/// Re-checks an open session against a new snapshot. Closes the tunnels that are no longer
/// allowed; returns a reason if the whole session must close (its key was revoked).
pub(crate) fn recheck(shared: &Shared, conn: &Conn, snapshot: &Snapshot) -> Option<String> {
    let login = conn.login.get()?;
    let principal = match login.recheck(snapshot) {
        Ok(principal) => principal,
        Err(LoginRefusal::Expired(at)) => return Some(expired(shared, conn, at)),
        Err(refusal) => {
            let reason = format!(
                "key {} is no longer valid for user '{}' ({})",
                login.fingerprint,
                login.user,
                // The code, or for a certificate's mapping gone, which entry and why.
                refusal.reason()
            );
            tracing::info!(session = %conn.id, user = %login.user, "session revoked: {reason}");
            shared.audit.record(Event::SessionRevoked {
                session: &conn.id,
                user: &login.user,
                key: &login.fingerprint,
                reason: &reason,
            });
            return Some(format!("revoked: {reason}"));
        }
    };
    for (id, tunnel) in conn.tunnels() {
        recheck_tunnel(shared, conn, &principal, id, &tunnel, snapshot);
    }
    None
}

/// Audits the end of a session whose access expired at `at`; returns the close reason.
pub(crate) fn expired(shared: &Shared, conn: &Conn, at: std::time::SystemTime) -> String {
    let user = conn.user();
    let key = conn
        .login
        .get()
        .map(|l| l.fingerprint.as_str())
        .unwrap_or("");
    let when = gatehouse_config::show_time(at);
    let reason = format!("access expired at {when}");
    tracing::info!(session = %conn.id, user, "session expired: {reason}");
    shared.audit.record(Event::SessionExpired {
        session: &conn.id,
        user,
        key,
        expired_at: &when,
        reason: &reason,
    });
    reason
}

/// Re-checks one tunnel (open, or registered and still dialing) of an authenticated session:
/// if `snapshot` no longer allows it, audits the revocation and cancels the tunnel. Returns
/// whether it was revoked.
pub(crate) fn recheck_tunnel(
    shared: &Shared,
    conn: &Conn,
    principal: &gatehouse_policy::Principal,
    id: u64,
    tunnel: &OpenTunnel,
    snapshot: &Snapshot,
) -> bool {
    let verdict = match snapshot
        .inventory()
        .authorize(principal, &tunnel.target, tunnel.port)
    {
        Ok(grant) if grant.dial == tunnel.dial => return false,
        Ok(grant) => format!(
            "host '{}' is now at {}, not {}",
            grant.host_id, grant.dial, tunnel.dial
        ),
        Err(refusal) => refusal.to_string(),
    };
    let user = conn.user();
    tracing::info!(session = %conn.id, user, tunnel = id, "tunnel revoked: {verdict}");
    shared.audit.record(Event::TunnelRevoked {
        session: &conn.id,
        tunnel: id,
        user,
        host: &tunnel.host,
        reason: &verdict,
    });
    tunnel.revoked.cancel();
    true
}
