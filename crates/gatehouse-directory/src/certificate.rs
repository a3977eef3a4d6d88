//! OpenSSH user certificates from the CAs of `[[trusted_user_ca]]`, checked as OpenSSH's sshd
//! checks them with `TrustedUserCAKeys` (and `AuthorizedPrincipalsFile` when a CA maps
//! principals). Pure: the caller gives the time and the client's address.
//!
//! russh has already checked, before the handler sees a certificate, that its CA signature
//! verifies against the CA key the certificate itself names, that now is within its validity
//! window (certificates outside it never reach gatehouse), and that the client signed with
//! the certificate's key. Nothing of that says the CA is trusted: [`TrustedCas::verify`]
//! checks everything again, through `ssh-key`'s `Certificate::validate_at` (signature,
//! trusted CA fingerprint, validity window), and the rest sshd checks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::callers::{Via, VIA_EXTENSION};
use gatehouse_config::{show_time, TrustedUserCa};
use gatehouse_policy::printable;
use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, Fingerprint, HashAlg};

/// Most principals of a certificate gatehouse looks at; a certificate with more is refused.
pub const MAX_CERT_PRINCIPALS: usize = 256;
/// Most critical options or extensions a certificate may carry.
pub const MAX_CERT_OPTIONS: usize = 32;
/// Most addresses a `source-address` option may list.
pub const MAX_SOURCE_ADDRESSES: usize = 256;
/// Longest key id kept for audit lines, in characters.
const MAX_KEY_ID: usize = 128;
/// Principals shown in a refusal.
const SHOWN_PRINCIPALS: usize = 5;

/// How far before the moment of issue the bastion's own certificates start (clock skew
/// between the bastion replicas and laptops).
pub const ISSUE_BACKDATE: Duration = Duration::from_secs(60);

/// The extension without which sshd refuses port forwarding, all a jump host does.
pub const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// What identifies a certificate in audit lines, refused or accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The trusted CA that signed it (`trusted_user_ca[].name`); `None`: not a trusted CA.
    pub ca: Option<String>,
    /// Its key id, made printable and cut to 128 characters.
    pub key_id: String,
    /// Its serial number.
    pub serial: u64,
    /// The signing CA key's SHA-256 fingerprint.
    pub ca_key: String,
}

/// A certificate accepted for a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLogin {
    /// What identifies it.
    pub facts: CertFacts,
    /// The principal that mapped to the login.
    pub principal: String,
    /// When it expires (`None`: OpenSSH's "forever").
    pub valid_before: Option<SystemTime>,
    /// For a certificate of the bastion's own CA (`gatehouse login`): the `[sso]` mapping
    /// entry it was issued through, whose groups it gets at every login. `None`: another CA
    /// (the login's groups are the directory user's).
    pub via: Option<crate::callers::Via>,
}

/// Why a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRefusal {
    /// What identifies it.
    pub facts: CertFacts,
    /// Stable label for metrics: `untrusted_ca`, `sha1_ca_signature`, `not_yet_valid`,
    /// `expired`, `bad_signature`, `not_user_certificate`, `validity_too_long`,
    /// `no_principals`, `too_many_principals`, `principal_not_mapped`, `source_address`,
    /// `force_command`, `verify_required`, `unknown_critical_option`, `too_many_options`,
    /// `no_port_forwarding`, `no_mapping`.
    pub code: &'static str,
    /// The reason in words.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Ca {
    name: String,
    keys: Vec<KeyData>,
    principals: Option<BTreeMap<String, String>>,
    max_validity: Option<Duration>,
    /// The bastion's own CA (`[sso]`): its certificates carry a [`VIA_EXTENSION`].
    own: bool,
}

/// The name of the bastion's own CA in audit lines.
pub const OWN_CA: &str = "gatehouse";

/// The trusted user CAs of a config.
#[derive(Debug, Clone, Default)]
pub struct TrustedCas {
    cas: Vec<Ca>,
}

impl TrustedCas {
    /// From `[[trusted_user_ca]]`.
    pub fn from_config(cas: &[TrustedUserCa]) -> Self {
        TrustedCas {
            cas: cas
                .iter()
                .map(|c| Ca {
                    name: c.name.clone(),
                    keys: c.keys.iter().map(|k| k.key_data().clone()).collect(),
                    principals: c.principals.clone(),
                    max_validity: c.max_validity,
                    own: false,
                })
                .collect(),
        }
    }

    /// The same CAs and the bastion's own (`[sso]`, public key `key`), whose certificates
    /// are at most `validity` long and log in through the mapping entry they name.
    pub fn with_own(mut self, key: KeyData, validity: Duration) -> Self {
        self.cas.push(Ca {
            name: OWN_CA.to_owned(),
            keys: vec![key],
            principals: None,
            max_validity: Some(validity + ISSUE_BACKDATE),
            own: true,
        });
        self
    }

    /// Whether no CA is trusted (every certificate is refused).
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// Whether `cert` lets `login` in from `client` at `now`, as sshd would decide with
    /// these CAs as `TrustedUserCAKeys`, plus gatehouse's own rules: the
    /// `permit-port-forwarding` extension is required and `force-command` refused (a jump
    /// host can do nothing else, runs no command).
    pub fn verify(
        &self,
        cert: &Certificate,
        login: &str,
        client: IpAddr,
        now: SystemTime,
    ) -> Result<CertLogin, CertRefusal> {
        let ca_key = cert.signature_key().fingerprint(HashAlg::Sha256);
        let ca = self
            .cas
            .iter()
            .find(|ca| ca.keys.iter().any(|k| k == cert.signature_key()));
        let mut key_id = printable(cert.key_id());
        if key_id.chars().count() > MAX_KEY_ID {
            key_id = key_id.chars().take(MAX_KEY_ID).collect::<String>() + "...";
        }
        let facts = CertFacts {
            ca: ca.map(|c| c.name.clone()),
            key_id,
            serial: cert.serial(),
            ca_key: ca_key.to_string(),
        };
        let refuse = |code: &'static str, reason: String| CertRefusal {
            facts: facts.clone(),
            code,
            reason,
        };
        let Some(ca) = ca else {
            return Err(refuse(
                "untrusted_ca",
                format!("certificate signed by a CA that is not trusted ({ca_key})"),
            ));
        };
        if matches!(cert.signature().algorithm(), Algorithm::Rsa { hash: None }) {
            return Err(refuse(
                "sha1_ca_signature",
                "certificate signed with ssh-rsa (SHA-1), which is refused; the CA must sign \
                 with rsa-sha2-256 or rsa-sha2-512"
                    .into(),
            ));
        }
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now_s < cert.valid_after() {
            return Err(refuse(
                "not_yet_valid",
                format!(
                    "certificate not yet valid (valid from {})",
                    show_unix(cert.valid_after())
                ),
            ));
        }
        if now_s >= cert.valid_before() {
            return Err(refuse(
                "expired",
                format!("certificate expired at {}", show_unix(cert.valid_before())),
            ));
        }
        let trusted: [Fingerprint; 1] = [ca_key];
        if cert.validate_at(now_s, &trusted).is_err() {
            return Err(refuse(
                "bad_signature",
                "the CA signature of the certificate does not verify".into(),
            ));
        }
        if cert.cert_type() != CertType::User {
            return Err(refuse(
                "not_user_certificate",
                "a host certificate cannot log a user in".into(),
            ));
        }
        if let Some(max) = ca.max_validity {
            let span = cert.valid_before().saturating_sub(cert.valid_after());
            if span > max.as_secs() {
                return Err(refuse(
                    "validity_too_long",
                    format!(
                        "certificate valid for longer than the CA's max_validity ({})",
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        let principal = match_principal(ca, cert.valid_principals(), login)
            .map_err(|(code, reason)| refuse(code, reason))?;
        check_options(cert, client).map_err(|(code, reason)| refuse(code, reason))?;
        let via = if ca.own {
            let via = cert
                .extensions()
                .get(VIA_EXTENSION)
                .and_then(|v| Via::decode(v));
            if via.is_none() {
                return Err(refuse(
                    "no_mapping",
                    format!("certificate of the bastion's own CA without a valid {VIA_EXTENSION}"),
                ));
            }
            via
        } else {
            None
        };
        Ok(CertLogin {
            facts,
            principal,
            valid_before: cert.valid_before_time(),
            via,
        })
    }
}

/// The principal of `principals` that maps to `login` under the CA's mapping (without one:
/// the principal equal to the login, as sshd).
fn match_principal(
    ca: &Ca,
    principals: &[String],
    login: &str,
) -> Result<String, (&'static str, String)> {
    if principals.is_empty() {
        return Err((
            "no_principals",
            "certificate lists no principals (sshd refuses such a certificate too)".into(),
        ));
    }
    if principals.len() > MAX_CERT_PRINCIPALS {
        return Err((
            "too_many_principals",
            format!("certificate lists more than {MAX_CERT_PRINCIPALS} principals"),
        ));
    }
    let found = principals.iter().find(|p| match &ca.principals {
        Some(map) => map.get(p.as_str()).is_some_and(|l| l == login),
        None => p.as_str() == login,
    });
    match found {
        Some(p) => Ok(p.clone()),
        None => {
            let shown: Vec<String> = principals
                .iter()
                .take(SHOWN_PRINCIPALS)
                .map(|p| printable(p))
                .collect();
            let more = if principals.len() > SHOWN_PRINCIPALS {
                ", ..."
            } else {
                ""
            };
            let rule = if ca.principals.is_some() {
                "the CA's principals table"
            } else {
                "equal to the login name"
            };
            Err((
                "principal_not_mapped",
                format!(
                    "no principal of the certificate maps to login '{}' ({rule}); it lists: {}{more}",
                    printable(login),
                    shown.join(", ")
                ),
            ))
        }
    }
}

/// The critical options (each one known and satisfied, as sshd) and the extensions.
fn check_options(cert: &Certificate, client: IpAddr) -> Result<(), (&'static str, String)> {
    if cert.critical_options().len() > MAX_CERT_OPTIONS
        || cert.extensions().len() > MAX_CERT_OPTIONS
    {
        return Err((
            "too_many_options",
            format!("certificate carries more than {MAX_CERT_OPTIONS} options or extensions"),
        ));
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => source_address(value, client)?,
            "force-command" => {
                return Err((
                    "force_command",
                    "certificate has a force-command, but this bastion runs no command: it \
                     only forwards (ssh -J); ask the CA for a certificate without it"
                        .into(),
                ))
            }
            "verify-required" => {
                return Err((
                    "verify_required",
                    "certificate requires FIDO user verification (verify-required), which \
                     gatehouse does not check"
                        .into(),
                ))
            }
            other => {
                return Err((
                    "unknown_critical_option",
                    format!(
                        "certificate has an unknown critical option `{}`",
                        printable(other)
                    ),
                ))
            }
        }
    }
    if !cert.extensions().contains_key(PERMIT_PORT_FORWARDING) {
        return Err((
            "no_port_forwarding",
            format!(
                "certificate lacks the {PERMIT_PORT_FORWARDING} extension, and forwarding is \
                 all this bastion does"
            ),
        ));
    }
    Ok(())
}

/// sshd's `source-address`: a comma-separated list of addresses and CIDRs; the client's
/// address must be in one of them.
fn source_address(list: &str, client: IpAddr) -> Result<(), (&'static str, String)> {
    let client = client.to_canonical();
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.len() > MAX_SOURCE_ADDRESSES {
        return Err((
            "source_address",
            format!("certificate's source-address lists more than {MAX_SOURCE_ADDRESSES} entries"),
        ));
    }
    let mut matched = false;
    for entry in &entries {
        let net = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => matched |= net.contains(&client),
            Err(_) => {
                return Err((
                    "source_address",
                    format!(
                        "certificate's source-address has an invalid entry `{}`",
                        printable(entry)
                    ),
                ))
            }
        }
    }
    if matched {
        Ok(())
    } else {
        Err((
            "source_address",
            format!(
                "client address {client} is not in the certificate's source-address ({})",
                printable(list)
            ),
        ))
    }
}

fn show_unix(secs: u64) -> String {
    match i64::try_from(secs) {
        Ok(s) if s >= 0 => show_time(UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())),
        _ => "forever".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::certificate::Builder;
    use ssh_key::{PrivateKey, PublicKey};

    // Throwaway keys made with ssh-keygen for these tests only.
    const CA1: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBGr3MU/1UcTfqTZrTae8yAAIIrKCvL5rkSW07t6vdXHgAAAIi8Sb23vEm9
twAAAAtzc2gtZWQyNTUxOQAAACBGr3MU/1UcTfqTZrTae8yAAIIrKCvL5rkSW07t6vdXHg
AAAEASqksLuuqyV+ie+f2usb/OEqyy2k8/LULdBBhHWhd5hkavcxT/VRxN+pNmtNp7zIAA
gisoK8vmuRJbTu3q91ceAAAAA2NhMQEC
-----END OPENSSH PRIVATE KEY-----
";
    const CA2: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACByZdv/hYRXQQ2p40i66bs6I+7w6JeBb/pMYb4DFgK/fwAAAIiz3eNus93j
bgAAAAtzc2gtZWQyNTUxOQAAACByZdv/hYRXQQ2p40i66bs6I+7w6JeBb/pMYb4DFgK/fw
AAAEDmtUmak63R4zGEKBRmiXKEPI62gT38E9fW+O24mAsEV3Jl2/+FhFdBDanjSLrpuzoj
7vDol4Fv+kxhvgMWAr9/AAAAA2NhMgEC
-----END OPENSSH PRIVATE KEY-----
";
    const USER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHpmsl4AuK45sVhzXTttVxmM8DpAVZn0siMKx2Zph3Mh user";
    const NOW: u64 = 1_800_000_000;

    fn ca_key(text: &str) -> PrivateKey {
        PrivateKey::from_openssh(text).unwrap()
    }

    fn cas(principals: Option<&[(&str, &str)]>, max_validity: Option<Duration>) -> TrustedCas {
        TrustedCas::from_config(&[TrustedUserCa {
            name: "step-ca".into(),
            keys: vec![ca_key(CA1).public_key().clone()],
            principals: principals.map(|p| {
                p.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            }),
            max_validity,
        }])
    }

    /// A certificate for USER valid an hour around NOW, principal "alice", forwarding allowed;
    /// `edit` changes the builder before it is signed by `signer`.
    fn cert(signer: &str, edit: impl FnOnce(&mut Builder)) -> Certificate {
        let user = PublicKey::from_openssh(USER).unwrap();
        let mut b =
            Builder::new([7u8; 16], user.key_data().clone(), NOW - 600, NOW + 3000).unwrap();
        b.serial(42).unwrap();
        b.key_id("alice@laptop").unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("alice").unwrap();
        b.extension(PERMIT_PORT_FORWARDING, "").unwrap();
        edit(&mut b);
        b.sign(&ca_key(signer)).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn client() -> IpAddr {
        "10.1.2.3".parse().unwrap()
    }

    fn code(r: Result<CertLogin, CertRefusal>) -> &'static str {
        r.map(|_| "accepted").unwrap_or_else(|e| e.code)
    }

    #[test]
    fn a_valid_certificate_logs_in_its_principal() {
        let ok = cas(None, None)
            .verify(&cert(CA1, |_| {}), "alice", client(), at(NOW))
            .unwrap();
        assert_eq!(ok.principal, "alice");
        assert_eq!(ok.facts.ca.as_deref(), Some("step-ca"));
        assert_eq!(
            (ok.facts.key_id.as_str(), ok.facts.serial),
            ("alice@laptop", 42)
        );
        assert_eq!(ok.valid_before, Some(at(NOW + 3000)));
    }

    #[test]
    fn each_rule_refuses_with_its_code() {
        let cas = cas(None, Some(Duration::from_secs(3600)));
        let v = |c: &Certificate, login: &str, t: u64| code(cas.verify(c, login, client(), at(t)));
        assert_eq!(v(&cert(CA2, |_| {}), "alice", NOW), "untrusted_ca");
        assert_eq!(v(&cert(CA1, |_| {}), "alice", NOW - 601), "not_yet_valid");
        assert_eq!(v(&cert(CA1, |_| {}), "alice", NOW + 3000), "expired");
        assert_eq!(v(&cert(CA1, |_| {}), "alice", NOW + 2999), "accepted");
        assert_eq!(v(&cert(CA1, |_| {}), "bob", NOW), "principal_not_mapped");
        let host = {
            let user = PublicKey::from_openssh(USER).unwrap();
            let mut b =
                Builder::new([1u8; 16], user.key_data().clone(), NOW - 10, NOW + 60).unwrap();
            b.cert_type(CertType::Host).unwrap();
            b.valid_principal("alice").unwrap();
            b.extension(PERMIT_PORT_FORWARDING, "").unwrap();
            b.sign(&ca_key(CA1)).unwrap()
        };
        assert_eq!(v(&host, "alice", NOW), "not_user_certificate");
        let long = {
            let user = PublicKey::from_openssh(USER).unwrap();
            let mut b =
                Builder::new([1u8; 16], user.key_data().clone(), NOW - 10, NOW + 7200).unwrap();
            b.valid_principal("alice").unwrap();
            b.extension(PERMIT_PORT_FORWARDING, "").unwrap();
            b.sign(&ca_key(CA1)).unwrap()
        };
        assert_eq!(v(&long, "alice", NOW), "validity_too_long");
        let no_fwd = {
            let user = PublicKey::from_openssh(USER).unwrap();
            let mut b =
                Builder::new([1u8; 16], user.key_data().clone(), NOW - 10, NOW + 60).unwrap();
            b.valid_principal("alice").unwrap();
            b.sign(&ca_key(CA1)).unwrap()
        };
        assert_eq!(v(&no_fwd, "alice", NOW), "no_port_forwarding");
        let opt = |name: &'static str, value: &'static str| {
            cert(CA1, move |b| {
                b.critical_option(name, value).unwrap();
            })
        };
        assert_eq!(
            v(&opt("force-command", "/bin/sh"), "alice", NOW),
            "force_command"
        );
        assert_eq!(
            v(&opt("verify-required", ""), "alice", NOW),
            "verify_required"
        );
        assert_eq!(
            v(&opt("no-such-option", "x"), "alice", NOW),
            "unknown_critical_option"
        );
        assert_eq!(
            v(
                &opt("source-address", "10.1.0.0/16,192.0.2.1"),
                "alice",
                NOW
            ),
            "accepted"
        );
        assert_eq!(
            v(&opt("source-address", "192.0.2.0/24"), "alice", NOW),
            "source_address"
        );
        assert_eq!(
            v(&opt("source-address", "junk"), "alice", NOW),
            "source_address"
        );
        assert_eq!(
            v(&opt("source-address", "10.1.2.3"), "alice", NOW),
            "accepted"
        );
    }

    #[test]
    fn a_principals_table_maps_and_replaces_the_login_name_rule() {
        let cas = cas(Some(&[("alice@example.org", "alice")]), None);
        let c = cert(CA1, |b| {
            b.valid_principal("alice@example.org").unwrap();
        });
        let ok = cas.verify(&c, "alice", client(), at(NOW)).unwrap();
        assert_eq!(ok.principal, "alice@example.org");
        // "alice" itself is a principal of that certificate too, but not in the table.
        let plain = cert(CA1, |_| {});
        let refused = cas.verify(&plain, "alice", client(), at(NOW)).unwrap_err();
        assert_eq!(refused.code, "principal_not_mapped");
        assert!(
            refused.reason.contains("it lists: alice"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn source_address_matches_the_canonical_client_address() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(source_address("10.1.2.0/24", mapped).is_ok());
        assert!(source_address("2001:db8::/32", "2001:db8::1".parse().unwrap()).is_ok());
        let many = vec!["10.0.0.1"; MAX_SOURCE_ADDRESSES + 1].join(",");
        assert!(source_address(&many, client()).is_err());
    }
}
