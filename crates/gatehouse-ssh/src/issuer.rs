//! `gatehouse login`: the bastion's own certificate authority. A client proves its AWS
//! identity over the SSH port, in keyboard-interactive authentication with submethod
//! [`SUBMETHOD`] (no other listener): the bastion asks one prompt, the client answers with a
//! [`LoginRequest`] (its public key and a signed `sts:GetCallerIdentity` request bound to this
//! bastion's host key and that key), the bastion has the proof checked and replayed to STS
//! ([`ProofVerifier`]: gatehouse-aws's, wired by the binary, so this crate stays free of
//! AWS), maps the caller through `[sso]`, and answers with a second info request that has no
//! prompt: [`ISSUED`] with an [`Issued`] certificate as its instructions, or [`REFUSED`] with
//! the reason. That connection then fails authentication: it never opens a session, and the
//! certificate logs in on the next connection like any key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_directory::callers::{Caller, Mapped, VIA_EXTENSION};
use gatehouse_directory::certificate::{ISSUE_BACKDATE, PERMIT_PORT_FORWARDING};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

/// The keyboard-interactive submethod a `gatehouse login` client asks for.
pub const SUBMETHOD: &str = "gatehouse-login@gatehouse";
/// The name of the info request that asks for the [`LoginRequest`].
pub const ASK: &str = "gatehouse login";
/// The name of the info request whose instructions are the [`Issued`] JSON.
pub const ISSUED: &str = "gatehouse certificate";
/// The name of the info request whose instructions are the refusal's reason.
pub const REFUSED: &str = "gatehouse login refused";
/// The most bytes of a [`LoginRequest`] read.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What the client answers the prompt with (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The public key to certify, as an OpenSSH line.
    pub public_key: String,
    /// The signed request (gatehouse-aws's `sts_proof::Proof`, as JSON).
    pub proof: serde_json::Value,
}

/// What the bastion answers (JSON, in the instructions of the [`ISSUED`] info request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The OpenSSH certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA... <login>`).
    pub certificate: String,
    /// The login name to use (`User` in `~/.ssh/config`).
    pub login: String,
    /// When it stops working, RFC 3339.
    pub valid_before: String,
    /// The caller STS named.
    pub caller: String,
    /// The certificate's serial number.
    pub serial: u64,
    /// The `[sso]` entry it was issued through (its `gatehouse-via@gatehouse` extension).
    pub via: String,
}

/// The caller a proof was signed by, as STS named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    /// Its ARN.
    pub arn: String,
    /// Its account.
    pub account: String,
    /// Read from the ARN.
    pub caller: Caller,
}

/// The future [`ProofVerifier::verify`] returns: the caller, or the reason the user sees.
pub type VerifyFuture = Pin<Box<dyn Future<Output = Result<VerifiedCaller, String>> + Send>>;

/// Checks a proof (JSON) bound to this bastion (`bastion`: its host key's fingerprint) and to
/// the key to certify (`key`: its fingerprint), and asks STS who signed it. Bounded in time
/// by the implementation.
pub trait ProofVerifier: Send + Sync {
    /// See the trait.
    fn verify(&self, proof: String, bastion: String, key: String) -> VerifyFuture;
}

/// The bastion's own CA.
pub struct Issuer {
    ca: PrivateKey,
    validity: Duration,
    verifier: Arc<dyn ProofVerifier>,
}

impl Issuer {
    /// A CA that signs with `ca` certificates valid for `validity`, proofs checked by
    /// `verifier`.
    pub fn new(ca: PrivateKey, validity: Duration, verifier: Arc<dyn ProofVerifier>) -> Self {
        Issuer {
            ca,
            validity,
            verifier,
        }
    }

    /// The CA's public key (trusted for logins, see `TrustedCas::with_own`).
    pub fn public_key(&self) -> &PublicKey {
        self.ca.public_key()
    }

    /// How long its certificates are valid.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    pub(crate) fn verifier(&self) -> &Arc<dyn ProofVerifier> {
        &self.verifier
    }

    /// A user certificate for `key`, logging in as `mapped.login` through `mapped.via`, from
    /// a minute before `now` (clock skew) to `validity` after it; `caller` is its key id.
    /// Only port forwarding is permitted (no pty, agent or X11 forwarding: the bastion runs
    /// nothing).
    ///
    /// # Errors
    /// The certificate could not be built or signed.
    pub fn issue(
        &self,
        key: &PublicKey,
        mapped: &Mapped,
        caller: &str,
        now: SystemTime,
    ) -> Result<Issued, String> {
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .map_err(|_| "the clock is before 1970".to_owned())
        };
        let valid_before = now + self.validity;
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce);
        let mut builder = Builder::new(
            nonce.to_vec(),
            key.key_data().clone(),
            unix(now - ISSUE_BACKDATE)?,
            unix(valid_before)?,
        )
        .map_err(|e| e.to_string())?;
        let fail = |e: russh::keys::ssh_key::Error| format!("cannot build the certificate: {e}");
        let serial: u64 = rand::random();
        let via = mapped.via.encode();
        builder.serial(serial).map_err(fail)?;
        builder.cert_type(CertType::User).map_err(fail)?;
        builder.key_id(caller).map_err(fail)?;
        builder
            .valid_principal(mapped.login.clone())
            .map_err(fail)?;
        builder
            .extension(PERMIT_PORT_FORWARDING, "")
            .map_err(fail)?;
        builder
            .extension(VIA_EXTENSION, via.clone())
            .map_err(fail)?;
        builder.comment(mapped.login.clone()).map_err(fail)?;
        let cert = builder
            .sign(&self.ca)
            .map_err(|e| format!("cannot sign the certificate: {e}"))?;
        Ok(Issued {
            certificate: cert.to_openssh().map_err(|e| e.to_string())?,
            login: mapped.login.clone(),
            valid_before: gatehouse_config::show_time(valid_before),
            caller: caller.to_owned(),
            serial,
            via,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_directory::callers::Via;
    use gatehouse_directory::certificate::TrustedCas;
    use russh::keys::ssh_key::Algorithm;

    struct Never;
    impl ProofVerifier for Never {
        fn verify(&self, _: String, _: String, _: String) -> VerifyFuture {
            Box::pin(async { Err("unused".to_owned()) })
        }
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn an_issued_certificate_logs_in_through_its_mapping_and_only_as_its_login() {
        let ca = key();
        let issuer = Issuer::new(ca, Duration::from_secs(3600), Arc::new(Never));
        let user = key();
        let mapped = Mapped {
            login: "alice~40example.org".into(),
            via: Via::PermissionSet("Research".into()),
        };
        let now = SystemTime::now();
        let arn =
            "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Research_0a/alice@example.org";
        let issued = issuer.issue(user.public_key(), &mapped, arn, now).unwrap();
        assert_eq!(issued.login, mapped.login);
        let cert = russh::keys::Certificate::from_openssh(&issued.certificate).unwrap();
        assert_eq!(cert.public_key(), user.public_key().key_data());
        assert_eq!(cert.key_id(), arn);
        assert_eq!(cert.serial(), issued.serial);
        assert_eq!(issued.via, "permission-set:Research");
        let cas = TrustedCas::default()
            .with_own(issuer.public_key().key_data().clone(), issuer.validity());
        let client = "192.0.2.7".parse().unwrap();
        let login = cas
            .verify(&cert, "alice~40example.org", client, now)
            .unwrap();
        assert_eq!(login.via, Some(mapped.via.clone()));
        assert_eq!(login.facts.ca.as_deref(), Some("gatehouse"));
        let wrong = cas.verify(&cert, "alice", client, now).unwrap_err();
        assert_eq!(wrong.code, "principal_not_mapped");
        let later = now + Duration::from_secs(3601);
        assert_eq!(
            cas.verify(&cert, &mapped.login, client, later)
                .unwrap_err()
                .code,
            "expired"
        );
        // Another gatehouse's CA is not this one.
        let other = TrustedCas::default()
            .with_own(key().public_key().key_data().clone(), issuer.validity());
        assert_eq!(
            other
                .verify(&cert, &mapped.login, client, now)
                .unwrap_err()
                .code,
            "untrusted_ca"
        );
    }
}
