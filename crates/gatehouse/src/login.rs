//! `gatehouse login` (on the user's laptop) and the bastion's side of its proof.
//!
//! The client proves the AWS identity the SDK finds (an SSO profile, the environment, an
//! assumed role) to the bastion with a signed `sts:GetCallerIdentity` request bound to the
//! bastion's host key and to the user's public key (gatehouse-aws's `sts_proof`), over the
//! SSH port (keyboard-interactive, see gatehouse-ssh's `issuer`), and writes the certificate it
//! gets where OpenSSH picks it up: next to the key, as `<key>-cert.pub`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use gatehouse_aws::sts_proof::{self, Binding};
use gatehouse_ssh::issuer::{
    self, Issued, LoginRequest, ProofVerifier, VerifiedCaller, VerifyFuture,
};
use russh::keys::{PublicKey, PublicKeyOrCertificate};

/// How long the bastion waits for STS to answer a replayed proof.
const STS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `gatehouse login` waits for the whole exchange.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The login name a `gatehouse login` connection asks for (the bastion ignores it: the
/// login comes from the caller).
const LOGIN_USER: &str = "gatehouse-login";
/// The keys `gatehouse login` looks for, in OpenSSH's order of preference.
const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

/// Most proofs remembered as used (each for [`sts_proof::MAX_AGE`]): more logins than this in
/// five minutes are refused until older ones age out.
const MAX_USED_PROOFS: usize = 100_000;

/// The bastion's side: checks a proof and replays it to STS with nothing of the bastion's
/// own (no credential). `endpoint_override` is `aws.endpoint_url`, the one non-STS URL a
/// proof may name (a test rig's moto). A proof is used once on this bastion: its signature
/// is remembered until it is too old to be accepted anyway.
pub struct StsVerifier {
    endpoint_override: Option<String>,
    used: Arc<Mutex<HashMap<String, Instant>>>,
}

impl StsVerifier {
    pub fn new(endpoint_override: Option<String>) -> Self {
        StsVerifier {
            endpoint_override,
            used: Arc::default(),
        }
    }
}

/// Marks `signature` used; `Err` if it already was (within [`sts_proof::MAX_AGE`]) or too
/// many are.
fn use_once(used: &Mutex<HashMap<String, Instant>>, signature: &str) -> Result<(), String> {
    let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if used.len() >= MAX_USED_PROOFS {
        used.retain(|_, at| now.duration_since(*at) < sts_proof::MAX_AGE + sts_proof::MAX_SKEW);
    }
    match used.get(signature) {
        Some(at) if now.duration_since(*at) < sts_proof::MAX_AGE + sts_proof::MAX_SKEW => {
            return Err("the proof was already used: run gatehouse login again".to_owned())
        }
        _ => {}
    }
    if used.len() >= MAX_USED_PROOFS {
        return Err("too many logins in the last five minutes; try again shortly".to_owned());
    }
    used.insert(signature.to_owned(), now);
    Ok(())
}

impl ProofVerifier for StsVerifier {
    fn verify(&self, proof: String, bastion: String, key: String) -> VerifyFuture {
        let endpoint_override = self.endpoint_override.clone();
        let used = self.used.clone();
        Box::pin(async move {
            let proof = sts_proof::parse(&proof).map_err(|e| e.to_string())?;
            let checked = sts_proof::check(
                &proof,
                &Binding { bastion, key },
                endpoint_override.as_deref(),
                SystemTime::now(),
            )
            .map_err(|e| e.to_string())?;
            let signature = checked
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            use_once(&used, &signature)?;
            let identity = sts_proof::replay(&checked, STS_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let (account, caller) = sts_proof::caller(&identity.arn)?;
            if account != identity.account {
                return Err(format!(
                    "STS named account {} for caller {}",
                    identity.account, identity.arn
                ));
            }
            Ok(VerifiedCaller {
                arn: identity.arn,
                account,
                caller,
            })
        })
    }
}

/// What `gatehouse login` was asked to do.
pub struct Options {
    /// `HOST` or `HOST:PORT` (default port 22).
    pub bastion: String,
    /// The private key whose public half (`<key>.pub`) to certify; default the first of
    /// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` that has a `.pub`.
    pub key: Option<PathBuf>,
    /// Where to write the certificate; default `<key>-cert.pub`.
    pub out: Option<PathBuf>,
    /// The known_hosts file to check the bastion's host key against; default
    /// `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
}

/// Runs `gatehouse login`.
pub async fn run(options: &Options) -> anyhow::Result<()> {
    let (host, port) = split_host_port(&options.bastion)?;
    let key_path = match &options.key {
        Some(path) => path.clone(),
        None => default_key()?,
    };
    let public_path = PathBuf::from(format!("{}.pub", key_path.display()));
    let line = std::fs::read_to_string(&public_path)
        .with_context(|| format!("cannot read the public key {}", public_path.display()))?;
    let public_key = gatehouse_config::parse_public_key(line.trim())
        .map_err(|e| anyhow::anyhow!("{}: {e}", public_path.display()))?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-cert.pub", key_path.display())));
    let issued = tokio::time::timeout(
        LOGIN_TIMEOUT,
        exchange(&host, port, &public_key, options.known_hosts.as_deref()),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the bastion did not answer within {} s",
            LOGIN_TIMEOUT.as_secs()
        )
    })??;
    let cert = russh::keys::Certificate::from_openssh(&issued.certificate)
        .context("the bastion's certificate does not parse")?;
    if cert.public_key() != public_key.key_data()
        || cert.valid_principals() != [issued.login.clone()]
    {
        bail!(
            "the bastion's certificate is not for {} as {}",
            public_path.display(),
            issued.login
        );
    }
    std::fs::write(&out, format!("{}\n", issued.certificate))
        .with_context(|| format!("cannot write the certificate to {}", out.display()))?;
    let bastion = &options.bastion;
    let login = &issued.login;
    println!(
        "gatehouse: certificate for {login} ({}), valid until {}",
        issued.caller, issued.valid_before
    );
    println!("gatehouse: written to {}", out.display());
    let picked_up = out == Path::new(&format!("{}-cert.pub", key_path.display()));
    if !picked_up {
        println!(
            "gatehouse: ssh uses it with `CertificateFile {}` next to the key's IdentityFile",
            out.display()
        );
    }
    println!();
    println!("  ssh -J {login}@{bastion} <host>");
    println!();
    println!("or in ~/.ssh/config:");
    println!();
    println!("  Host {host}");
    println!("      User {login}");
    if port != 22 {
        println!("      Port {port}");
    }
    if options.key.is_some() {
        println!("      IdentityFile {}", key_path.display());
    }
    if !picked_up {
        println!("      CertificateFile {}", out.display());
    }
    Ok(())
}

/// Connects, proves the identity and reads the certificate (or the refusal).
async fn exchange(
    host: &str,
    port: u16,
    public_key: &PublicKey,
    known_hosts: Option<&Path>,
) -> anyhow::Result<Issued> {
    let seen = Arc::new(Mutex::new(None));
    let client = Client {
        host: host.to_owned(),
        port,
        known_hosts: known_hosts.map(Path::to_path_buf),
        seen: seen.clone(),
    };
    let config = Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect(config, (host, port), client)
        .await
        .with_context(|| format!("cannot connect to the bastion {host}:{port}"))?;
    let host_key = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .context("the bastion showed no host key")?;
    let binding = Binding {
        bastion: gatehouse_directory::fingerprint(&host_key),
        key: gatehouse_directory::fingerprint(public_key),
    };
    let (proof, _region) = sts_proof::sign_from_environment(&binding, SystemTime::now()).await?;
    use russh::client::KeyboardInteractiveAuthResponse as Answer;
    let first = handle
        .authenticate_keyboard_interactive_start(LOGIN_USER, Some(issuer::SUBMETHOD.to_owned()))
        .await?;
    match first {
        Answer::InfoRequest { name, prompts, .. } if name == issuer::ASK && prompts.len() == 1 => {}
        _ => bail!("{host}:{port} does not issue certificates (a gatehouse bastion without [sso], or not a gatehouse)"),
    }
    let request = LoginRequest {
        public_key: public_key.to_openssh()?,
        proof: serde_json::to_value(&proof)?,
    };
    let answer = handle
        .authenticate_keyboard_interactive_respond(vec![serde_json::to_string(&request)?])
        .await?;
    let result = match answer {
        Answer::InfoRequest {
            name, instructions, ..
        } if name == issuer::ISSUED => serde_json::from_str::<Issued>(&instructions)
            .context("the bastion's answer does not parse"),
        Answer::InfoRequest {
            name, instructions, ..
        } if name == issuer::REFUSED => Err(anyhow::anyhow!("the bastion refused: {instructions}")),
        _ => Err(anyhow::anyhow!(
            "the bastion ended the exchange without an answer"
        )),
    };
    // The exchange ends without a login either way.
    let _ = handle
        .authenticate_keyboard_interactive_respond(Vec::new())
        .await;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    result
}

/// The russh client: remembers the bastion's host key, refusing one that contradicts
/// known_hosts. An unknown bastion is accepted: the proof is bound to the key it showed, so a
/// man in the middle gets a proof no bastion accepts, and a certificate from it is worthless.
struct Client {
    host: String,
    port: u16,
    known_hosts: Option<PathBuf>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for Client {
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            bail!("the bastion showed a host certificate; gatehouse bastions show a plain key");
        };
        let known = match &self.known_hosts {
            Some(path) => russh::keys::check_known_hosts_path(&self.host, self.port, key, path),
            None => russh::keys::check_known_hosts(&self.host, self.port, key),
        };
        if let Err(russh::keys::Error::KeyChanged { line }) = known {
            bail!(
                "the bastion's host key {} is not the one known_hosts line {line} records for {}: \
                 refusing to send it a proof",
                gatehouse_directory::fingerprint(key),
                self.host
            );
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
        Ok(true)
    }
}

/// `HOST[:PORT]` (an IPv6 literal in brackets).
fn split_host_port(text: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
            h,
            p.parse()
                .with_context(|| format!("`{text}`: the port is not a number"))?,
        ),
        _ => (text, 22),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("`{text}`: no host");
    }
    Ok((host.to_owned(), port))
}

/// The first of `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` with a public half.
fn default_key() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; give --key")?;
    let ssh = Path::new(&home).join(".ssh");
    DEFAULT_KEYS
        .iter()
        .map(|name| ssh.join(name))
        .find(|path| Path::new(&format!("{}.pub", path.display())).exists())
        .with_context(|| {
            format!(
                "no key in {} (id_ed25519, id_ecdsa, id_rsa); make one with ssh-keygen -t ed25519, or give --key",
                ssh.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bastion_addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("bastion.example.org").unwrap(),
            ("bastion.example.org".into(), 22)
        );
        assert_eq!(
            split_host_port("10.0.0.5:2222").unwrap(),
            ("10.0.0.5".into(), 2222)
        );
        assert_eq!(split_host_port("[::1]:2222").unwrap(), ("::1".into(), 2222));
        assert_eq!(split_host_port("::1").unwrap(), ("::1".into(), 22));
        assert!(split_host_port("host:http").is_err());
        assert!(split_host_port(":22").is_err());
    }

    #[test]
    fn a_proof_is_used_once() {
        let used = Mutex::new(HashMap::new());
        assert!(use_once(&used, "AWS4-HMAC-SHA256 ... Signature=aa").is_ok());
        assert!(use_once(&used, "AWS4-HMAC-SHA256 ... Signature=bb").is_ok());
        let again = use_once(&used, "AWS4-HMAC-SHA256 ... Signature=aa").unwrap_err();
        assert!(again.contains("already used"), "{again}");
    }
}
