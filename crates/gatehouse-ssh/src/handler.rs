//! The russh handler of one connection: thin translation of SSH events into directory look-ups,
//! policy decisions (made by `gatehouse-policy`, never here), refusals and tunnel tasks.

use std::sync::Arc;
use std::time::SystemTime;

use gatehouse_directory::certificate::{CertFacts, CertLogin};
use gatehouse_directory::{fingerprint, LoginRefusal};
use gatehouse_policy::{printable, Principal};
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::sync::oneshot;

use crate::admission::Phase;
use crate::algorithms::signature_allowed;
use crate::audit::{CertAudit, Event};
use crate::conn::{Conn, Login};
use crate::issuer;
use crate::shared::Shared;
use crate::tunnel::{self, prohibited};

pub(crate) struct Handler {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    /// Fired once authentication succeeds, so the connection task lifts the pre-auth limits.
    authenticated: Option<oneshot::Sender<()>>,
    /// Where a `gatehouse login` exchange is (keyboard-interactive with [`issuer::SUBMETHOD`]).
    login_flow: LoginFlow,
}

/// The steps of a `gatehouse login` exchange on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginFlow {
    /// No exchange (or one finished and refused: the next one starts afresh).
    Idle,
    /// The prompt for the [`issuer::LoginRequest`] was sent.
    Asked,
    /// The answer (certificate or refusal) was sent; the client's empty reply ends it.
    Answered,
}

/// How long a refused session request waits for the client to acknowledge the hint.
const HINT_PING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The reason given for any refused non-publickey method.
const ONLY_PUBLICKEY: &str = "only public key authentication is accepted";

impl Handler {
    pub fn new(shared: Arc<Shared>, conn: Arc<Conn>, authenticated: oneshot::Sender<()>) -> Self {
        Handler {
            shared,
            conn,
            authenticated: Some(authenticated),
            login_flow: LoginFlow::Idle,
        }
    }

    /// A `gatehouse login` request (see [`issuer`]): the certificate, or why none. Every
    /// outcome is audited; a refusal counts as a failed authentication.
    async fn issue(
        &self,
        issuer: &issuer::Issuer,
        answer: &[u8],
    ) -> Result<issuer::Issued, String> {
        let mut caller_arn: Option<String> = None;
        let mut key_fp: Option<String> = None;
        let outcome = async {
            if answer.len() > issuer::MAX_REQUEST_BYTES {
                return Err(format!(
                    "the request is larger than {} bytes",
                    issuer::MAX_REQUEST_BYTES
                ));
            }
            let request: issuer::LoginRequest = serde_json::from_slice(answer)
                .map_err(|e| format!("the request is not a gatehouse login request: {e}"))?;
            let key = gatehouse_config::parse_public_key(&request.public_key)
                .map_err(|e| format!("public_key: {e}"))?;
            let fp = fingerprint(&key);
            key_fp = Some(fp.clone());
            let bastion = fingerprint(
                self.shared
                    .russh
                    .keys
                    .first()
                    .map(|k| k.public_key())
                    .ok_or("the bastion has no host key")?,
            );
            let verified = issuer
                .verifier()
                .verify(request.proof.to_string(), bastion, fp)
                .await?;
            caller_arn = Some(verified.arn.clone());
            let snapshot = self.shared.directory.borrow().clone();
            let mapped = snapshot.map_caller(&verified.account, &verified.caller)?;
            issuer.issue(&key, &mapped, &verified.arn, SystemTime::now())
        }
        .await;
        match &outcome {
            Ok(issued) => {
                tracing::info!(session = %self.conn.id, peer = %self.conn.peer, caller = %issued.caller, user = %issued.login, serial = issued.serial, "certificate issued");
                self.shared.audit.record(Event::CertificateIssued {
                    session: &self.conn.id,
                    source: self.conn.peer,
                    caller: &issued.caller,
                    user: &issued.login,
                    via: &issued.via,
                    key: key_fp.as_deref().unwrap_or(""),
                    serial: issued.serial,
                    valid_before: &issued.valid_before,
                });
            }
            Err(reason) => {
                self.conn.note_auth_failure();
                tracing::info!(session = %self.conn.id, peer = %self.conn.peer, caller = caller_arn.as_deref().unwrap_or(""), reason, "certificate refused");
                self.shared.audit.record(Event::CertificateRefused {
                    session: &self.conn.id,
                    source: self.conn.peer,
                    caller: caller_arn.as_deref(),
                    key: key_fp.as_deref(),
                    reason,
                });
            }
        }
        outcome
    }

    /// Any authentication request: the key exchange is done (see `admission`).
    fn authenticating(&self) {
        self.conn.progress.advance(Phase::Authenticating);
    }

    fn reject() -> Auth {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    fn auth_failure(&self, user: &str, method: &str, key: Option<&str>, reason: &str) {
        self.conn.note_auth_failure();
        tracing::info!(session = %self.conn.id, peer = %self.conn.peer, user = %printable(user), method, reason, "authentication refused");
        self.shared.audit.record(Event::AuthFailure {
            session: &self.conn.id,
            user: &printable(user),
            method,
            key,
            source: self.conn.peer,
            reason,
        });
    }

    /// Audits a refused certificate login.
    fn cert_failure(&self, user: &str, key: &str, facts: &CertFacts, code: &str, reason: &str) {
        self.conn.note_auth_failure();
        tracing::info!(session = %self.conn.id, peer = %self.conn.peer, user = %printable(user), ca = facts.ca.as_deref().unwrap_or(""), key_id = %facts.key_id, serial = facts.serial, reason, "certificate refused");
        self.shared.audit.record(Event::CertAuthFailure {
            session: &self.conn.id,
            user: &printable(user),
            method: "publickey",
            key,
            source: self.conn.peer,
            reason_code: code,
            reason,
            certificate: cert_audit(facts, None, None),
        });
    }

    /// Admits a login whose key (or certificate) the directory accepted: the audit log and
    /// the per-user limit have the last word.
    fn admit(
        &self,
        user: &str,
        principal: Principal,
        key: &PublicKey,
        certificate: Option<CertLogin>,
    ) -> Auth {
        let fp = fingerprint(key);
        let refuse = |why: &str| {
            match &certificate {
                Some(cert) => self.cert_failure(user, &fp, &cert.facts, "refused", why),
                None => self.auth_failure(user, "publickey", Some(&fp), why),
            }
            Self::reject()
        };
        if let Some(why) = self.shared.audit.refusal() {
            return refuse(why);
        }
        if !self.shared.try_add_user_session(&principal.user) {
            return refuse("too many sessions for this user (limits.max_sessions_per_user)");
        }
        // A login the audit log cannot hold does not happen (audit.on_failure = refuse).
        let event = match &certificate {
            None => Event::AuthSuccess {
                session: &self.conn.id,
                user,
                key: &fp,
                source: self.conn.peer,
            },
            Some(cert) => Event::CertAuthSuccess {
                session: &self.conn.id,
                user,
                key: &fp,
                source: self.conn.peer,
                certificate: cert_audit(&cert.facts, Some(&cert.principal), cert.valid_before),
            },
        };
        if let Err(why) = self.shared.audit.record_or_refuse(event) {
            self.shared.remove_user_session(&principal.user);
            return refuse(why);
        }
        match &certificate {
            None => {
                tracing::info!(session = %self.conn.id, peer = %self.conn.peer, user, key = %fp, "authenticated")
            }
            Some(cert) => {
                tracing::info!(session = %self.conn.id, peer = %self.conn.peer, user, key = %fp, ca = cert.facts.ca.as_deref().unwrap_or(""), key_id = %cert.facts.key_id, serial = cert.facts.serial, "authenticated by certificate")
            }
        }
        // Authenticated: no longer one of the pre-auth slots, and never evicted.
        self.conn.progress.release();
        let _ = self.conn.login.set(Login {
            user: principal.user,
            key: key.clone(),
            fingerprint: fp,
            certificate,
        });
        Auth::Accept
    }

    /// Checks a user's key against the directory; audits a refusal.
    fn check_key(
        &self,
        user: &str,
        key: &PublicKey,
        algorithm: &russh::keys::Algorithm,
    ) -> Option<Principal> {
        let fp = fingerprint(key);
        if !signature_allowed(algorithm) {
            self.auth_failure(
                user,
                "publickey",
                Some(&fp),
                "ssh-rsa (SHA-1) signatures are refused; use rsa-sha2-256 or rsa-sha2-512",
            );
            return None;
        }
        let snapshot = self.shared.directory.borrow().clone();
        match snapshot.login(user, key) {
            Ok(principal) => Some(principal),
            Err(refusal) => {
                self.auth_failure(user, "publickey", Some(&fp), &refusal.reason());
                None
            }
        }
    }

    /// The authenticated principal as the *current* snapshot sees it: group changes apply to
    /// the next request at once, and a revoked key opens nothing more.
    fn principal(&self) -> Result<Principal, &'static str> {
        let login = self.conn.login.get().ok_or("not_authenticated")?;
        let snapshot = self.shared.directory.borrow().clone();
        login.recheck(&snapshot).map_err(|r| r.code())
    }

    fn deny_request(&self, request: &str, reason: &str) {
        tracing::info!(session = %self.conn.id, user = self.conn.user(), request, reason, "request refused");
        self.shared.audit.record(Event::RequestDeny {
            session: &self.conn.id,
            user: self.conn.user(),
            request,
            reason,
        });
    }

    /// Answers a shell/exec/subsystem request on a session channel: the hint on stderr, then
    /// a failure reply, exit status 1 and the channel closed.
    ///
    /// OpenSSH discards stderr data that it reads in the same batch as the failure reply, so
    /// the failure waits until the client has answered a ping sent after the hint: by then
    /// the client has processed (and printed) the hint.
    fn refuse_session(
        &self,
        channel: ChannelId,
        request: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.deny_request(request, "this bastion runs no shell or commands");
        session.extended_data(channel, 1, self.hint().into_bytes())?;
        let (pong_tx, pong) = oneshot::channel();
        session.send_ping(pong_tx)?;
        let handle = session.handle();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HINT_PING_WAIT, pong).await;
            let _ = handle.channel_failure(channel).await;
            let _ = handle.exit_status_request(channel, 1).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    /// The message a session channel gets: how to use the bastion, and where this user may go.
    fn hint(&self) -> String {
        let user = self.conn.user();
        let mut text = format!(
            "gatehouse: this is a jump host; it runs no shell or commands. \
             Use it with ssh -J {user}@<bastion> <host>, or ProxyJump in ~/.ssh/config.\r\n"
        );
        let snapshot = self.shared.directory.borrow().clone();
        if let Some(end) = self.conn.login.get().and_then(|l| l.access_ends(&snapshot)) {
            text.push_str(&format!(
                "gatehouse: your access ends at {}; this session closes then.\r\n",
                gatehouse_config::show_time(end)
            ));
        }
        if let Ok(principal) = self.principal() {
            let hosts = snapshot.inventory().reachable(&principal);
            if hosts.is_empty() {
                text.push_str("gatehouse: you may not reach any host.\r\n");
            } else {
                let list: Vec<String> = hosts
                    .iter()
                    .map(|h| {
                        let ports: Vec<String> = h.ports.iter().map(u16::to_string).collect();
                        format!("{} (ports {})", h.id, ports.join(", "))
                    })
                    .collect();
                text.push_str(&format!(
                    "gatehouse: you may reach: {}\r\n",
                    list.join("; ")
                ));
            }
        }
        text
    }
}

/// A certificate's audit fields.
fn cert_audit<'a>(
    facts: &'a CertFacts,
    principal: Option<&'a str>,
    valid_before: Option<SystemTime>,
) -> CertAudit<'a> {
    CertAudit {
        ca: facts.ca.as_deref(),
        ca_key: &facts.ca_key,
        key_id: &facts.key_id,
        serial: facts.serial,
        principal,
        valid_before: valid_before.map(gatehouse_config::show_time),
    }
}

/// A refusal for a limit reached: "resource shortage" with `reason`.
fn resource_shortage(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: ChannelOpenFailure::ResourceShortage.code(),
        reason,
    }
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        self.authenticating();
        // Every OpenSSH client probes with "none" first: not an attack, not audited.
        Ok(Self::reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.authenticating();
        self.auth_failure(user, "password", None, ONLY_PUBLICKEY);
        Ok(Self::reject())
    }

    /// Only `gatehouse login` (submethod [`issuer::SUBMETHOD`], with `[sso]`): one prompt for
    /// the request, then an info request without prompts carrying the certificate or the
    /// refusal, then a rejection. This never authenticates the connection.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        let issuer = match (&self.shared.issuer, submethods == issuer::SUBMETHOD) {
            (Some(issuer), true) => issuer.clone(),
            _ => {
                self.auth_failure(user, "keyboard-interactive", None, ONLY_PUBLICKEY);
                return Ok(Self::reject());
            }
        };
        let info = |name: &'static str, instructions: String| Auth::Partial {
            name: name.into(),
            instructions: instructions.into(),
            prompts: Vec::new().into(),
        };
        match (self.login_flow, response) {
            (_, None) => {
                self.login_flow = LoginFlow::Asked;
                Ok(Auth::Partial {
                    name: issuer::ASK.into(),
                    instructions: "".into(),
                    prompts: vec![("request: ".into(), false)].into(),
                })
            }
            (LoginFlow::Asked, Some(mut answers)) => {
                self.login_flow = LoginFlow::Answered;
                let answer = answers.next().unwrap_or_default();
                Ok(match self.issue(&issuer, &answer).await {
                    Ok(issued) => info(
                        issuer::ISSUED,
                        serde_json::to_string(&issued).unwrap_or_default(),
                    ),
                    Err(reason) => info(issuer::REFUSED, reason),
                })
            }
            (_, Some(_)) => {
                // The client read the answer: the exchange ends without a login.
                self.login_flow = LoginFlow::Idle;
                Ok(Self::reject())
            }
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        if !self.shared.trusted_cas.is_empty() && signature_allowed(offer.algorithm) {
            // russh shows an offered certificate as its bare key: a key the directory does
            // not know may be one. Let the client sign; the signed request is checked in
            // full (and a refusal audited) by `auth_publickey` or `auth_openssh_certificate`.
            let snapshot = self.shared.directory.borrow().clone();
            if let Err(LoginRefusal::UnknownKey | LoginRefusal::UnknownUser) =
                snapshot.login(user, offer.public_key)
            {
                return Ok(Auth::Accept);
            }
        }
        Ok(
            match self.check_key(user, offer.public_key, offer.algorithm) {
                Some(_) => Auth::Accept,
                None => Self::reject(),
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        let Some(principal) = self.check_key(user, key.public_key, key.algorithm) else {
            return Ok(Self::reject());
        };
        Ok(self.admit(user, principal, key.public_key, None))
    }

    /// Called once the client signed with the certificate's key (russh checked that
    /// signature, the certificate's own CA signature and its validity window). Whether the CA
    /// is trusted and the certificate lets this login in is decided by
    /// `TrustedCas::verify`; the user must then be in the directory, like any login.
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        let key = PublicKey::new(certificate.public_key().clone(), "");
        let fp = fingerprint(&key);
        if self.shared.trusted_cas.is_empty() {
            self.auth_failure(
                user,
                "publickey",
                Some(&fp),
                "certificates are not accepted: no trusted_user_ca is configured; use a plain key",
            );
            return Ok(Self::reject());
        }
        let verdict = self.shared.trusted_cas.verify(
            certificate,
            user,
            self.conn.peer.ip(),
            SystemTime::now(),
        );
        let login = match verdict {
            Ok(login) => login,
            Err(refusal) => {
                self.cert_failure(user, &fp, &refusal.facts, refusal.code, &refusal.reason);
                return Ok(Self::reject());
            }
        };
        let snapshot = self.shared.directory.borrow().clone();
        let verdict = match &login.via {
            Some(via) => snapshot.login_via(via, user),
            None => snapshot.login_user(user),
        };
        match verdict {
            Ok(principal) => Ok(self.admit(user, principal, &key, Some(login))),
            Err(refusal) => {
                let reason = match &refusal {
                    LoginRefusal::UnknownUser => format!(
                        "principal '{}' maps to login '{}', which is not a user of the directory",
                        printable(&login.principal),
                        printable(user)
                    ),
                    other => other.reason(),
                };
                self.cert_failure(user, &fp, &login.facts, refusal.code(), &reason);
                Ok(Self::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.conn.touch();
        if let Some(tx) = self.authenticated.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted only to explain ourselves: every request on it is refused. It counts
        // against max_channels_per_connection like a tunnel, until the client closes it.
        let slot = match self.shared.try_channel_slot(&self.conn) {
            Ok(slot) => slot,
            Err(reason) => {
                self.deny_request("session channel", &reason);
                reply.reject(resource_shortage(reason)).await;
                return Ok(());
            }
        };
        reply.accept().await;
        // Data sent to it is read and discarded (a channel nobody reads would stall the
        // connection); the slot is released when the channel closes or the connection ends.
        let closed = self.conn.closed.clone();
        self.shared.tasks.spawn(async move {
            let _slot = slot;
            let mut channel = channel;
            tokio::select! {
                _ = async { while channel.wait().await.is_some() {} } => {}
                _ = closed.cancelled() => {}
            }
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.conn.touch();
        let target = printable(host_to_connect);
        // `reason` is audited and logged; the user is shown `shown` (the same, except where
        // the truth would name hosts outside the user's groups: `Refusal::for_user`).
        let deny_showing = |code: &str, reason: String, shown: String| {
            tracing::info!(session = %self.conn.id, user = self.conn.user(), %target, port = port_to_connect, %reason, "tunnel refused");
            self.shared.audit.record(Event::TunnelDeny {
                session: &self.conn.id,
                user: self.conn.user(),
                target: &target,
                port: port_to_connect,
                reason_code: code,
                reason: &reason,
            });
            prohibited(shown)
        };
        let deny = |code: &str, reason: String| deny_showing(code, reason.clone(), reason);
        let principal = match self.principal() {
            Ok(principal) => principal,
            Err(code) => {
                let reason = format!("your login is no longer valid ({code})");
                reply.reject(deny(code, reason)).await;
                return Ok(());
            }
        };
        if self.shared.draining.is_cancelled() {
            reply
                .reject(deny("shutting_down", "the bastion is shutting down".into()))
                .await;
            return Ok(());
        }
        if let Some(why) = self.shared.audit.refusal() {
            reply.reject(deny("audit_unwritable", why.to_owned())).await;
            return Ok(());
        }
        let snapshot = self.shared.directory.borrow().clone();
        match snapshot
            .inventory()
            .authorize(&principal, host_to_connect, port_to_connect)
        {
            Err(refusal) => {
                reply
                    .reject(deny_showing(
                        refusal.code(),
                        refusal.to_string(),
                        refusal.for_user(),
                    ))
                    .await;
            }
            Ok(grant) => {
                let slot = match self.shared.try_tunnel_slot(&self.conn) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        deny("limit", reason.clone());
                        reply.reject(resource_shortage(reason)).await;
                        return Ok(());
                    }
                };
                let request = tunnel::Request {
                    raw_target: host_to_connect.to_owned(),
                    target,
                    port: port_to_connect,
                };
                let task = tunnel::run(
                    self.shared.clone(),
                    self.conn.clone(),
                    slot,
                    request,
                    grant,
                    channel,
                    reply,
                );
                self.shared.tasks.spawn(task);
            }
        }
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "forwarding to Unix sockets is not allowed";
        self.deny_request(
            &format!("direct-streamlocal {}", printable(socket_path)),
            reason,
        );
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "X11 forwarding is not allowed";
        self.deny_request("x11 channel", reason);
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "remote forwarding is not allowed";
        self.deny_request("forwarded-tcpip channel", reason);
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Not audited on its own: the shell request that follows is.
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.deny_request("x11", "X11 forwarding is not allowed");
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_session(channel, "shell", session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_session(channel, "exec", session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_session(channel, &format!("subsystem {}", printable(name)), session)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.deny_request("agent forwarding", "agent forwarding is not allowed");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.deny_request(
            &format!("remote forwarding {}:{port}", printable(address)),
            "remote forwarding (-R) is not allowed",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.deny_request(
            &format!("remote streamlocal forwarding {}", printable(socket_path)),
            "remote forwarding is not allowed",
        );
        Ok(false)
    }
}
