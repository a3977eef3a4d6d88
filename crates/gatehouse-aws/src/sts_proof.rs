//! Proving an AWS identity to the bastion without handing it credentials: the pattern of EKS's
//! aws-iam-authenticator and Vault's AWS auth method. The client signs an
//! `sts:GetCallerIdentity` POST with its own credentials (an SSO session, an assumed role, an
//! IAM user), with two headers signed in: the bastion it is meant for (its host key's
//! fingerprint) and the public key it asks a certificate for. It sends the signed request, not
//! the credentials. The bastion checks that the request is exactly that (an STS endpoint, that
//! one action, both headers signed and naming this bastion and the key being certified, made
//! in the last few minutes), sends it to STS itself and reads the caller from STS's answer.
//!
//! What this rules out: a proof made for another bastion (or another service, which would not
//! sign our header) is refused; a proof cannot be pointed anywhere but STS (no request to
//! another host, so no SSRF); a stolen proof certifies only the victim's own key, useless
//! without its private half, and only for [`MAX_AGE`]; the bastion's own credentials are
//! never used to replay it (STS answers for the signer).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use gatehouse_directory::callers::{caller, Caller};

/// The header that names the bastion a proof is for: its host key's SHA-256 fingerprint
/// (`SHA256:...`), the same for every replica.
pub const BASTION_HEADER: &str = "x-gatehouse-bastion";
/// The header that names the public key a certificate is asked for (its fingerprint).
pub const KEY_HEADER: &str = "x-gatehouse-key";
/// A random value per proof (128 bits, hex), so that two proofs made in the same second
/// (SigV4 dates have one-second resolution) differ and each can be used once.
pub const NONCE_HEADER: &str = "x-gatehouse-nonce";
/// The one request body accepted.
pub const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// A proof older than this (by its `x-amz-date`) is refused; STS itself allows 15 minutes.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// How far ahead of the bastion's clock a proof may be dated (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// The most bytes a proof may have as sent (a signed request with a session token is ~2 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// The most bytes of STS's answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The headers a proof may carry, each forwarded to STS as it is; anything else is refused.
const HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-security-token",
    BASTION_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
];
/// The headers that must be among those signed.
const SIGNED: &[&str] = &[
    "host",
    "x-amz-date",
    BASTION_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
];

/// What a proof binds to: this bastion and the key to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The bastion's host key fingerprint (`SHA256:...`).
    pub bastion: String,
    /// The fingerprint of the public key a certificate is asked for.
    pub key: String,
}

/// A signed `sts:GetCallerIdentity` request as it travels to the bastion (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// Where it is to be sent: an STS endpoint.
    pub url: String,
    /// Every header, as signed (names lowercase).
    pub headers: Vec<(String, String)>,
    /// [`BODY`].
    pub body: String,
}

/// Why a proof is refused (the reason the user sees).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Over [`MAX_PROOF_BYTES`].
    #[error("the proof is larger than {MAX_PROOF_BYTES} bytes")]
    TooLarge,
    /// Not JSON of a [`Proof`], or not a SigV4-signed request.
    #[error("the proof is not a signed request: {0}")]
    Malformed(String),
    /// Addressed to a host that is not STS.
    #[error("the proof is addressed to {0}, which is not an STS endpoint")]
    NotSts(String),
    /// Another action, or another body.
    #[error("the proof is not an sts:GetCallerIdentity request")]
    NotGetCallerIdentity,
    /// A header outside the known few.
    #[error("the proof carries header {0}, which a GetCallerIdentity proof has no use for")]
    Header(String),
    /// A header that must be signed is not.
    #[error("the proof does not sign the {0} header")]
    Unsigned(&'static str),
    /// Made for another bastion or another key.
    #[error("the proof was made for {what} {found}, not {expected}")]
    Binding {
        /// `bastion` or `key`.
        what: &'static str,
        /// What the proof names.
        found: String,
        /// What it had to name.
        expected: String,
    },
    /// Older than [`MAX_AGE`] (seconds).
    #[error("the proof was made {0} s ago (at most {max} s)", max = MAX_AGE.as_secs())]
    Stale(u64),
    /// Dated ahead by more than [`MAX_SKEW`] (seconds).
    #[error("the proof is dated {0} s in the future")]
    Future(u64),
    /// STS answered with an error (its code).
    #[error("STS refused the proof: {0}")]
    Refused(String),
    /// STS could not be reached in time.
    #[error("STS could not be asked: {0}")]
    Unreachable(String),
    /// STS's answer named no caller.
    #[error("STS answered without a caller: {0}")]
    Answer(String),
    /// The client found no AWS credentials to sign with.
    #[error("no AWS credentials to prove who you are ({0}); run `aws sso login` (or set AWS_PROFILE) first")]
    Credentials(String),
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The STS endpoint of `region`, as the client addresses its proof.
pub fn sts_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{suffix}/")
}

/// Whether `url` is an endpoint of STS: `https://sts.amazonaws.com/`, a regional
/// `https://sts.<region>.amazonaws.com[.cn]/` (or `sts-fips`), or exactly `override_url`
/// (the daemon's `aws.endpoint_url`, for a test rig). Returns the host.
fn sts_host<'a>(url: &'a str, override_url: Option<&str>) -> Option<&'a str> {
    fn trimmed(u: &str) -> &str {
        u.strip_suffix('/').unwrap_or(u)
    }
    if override_url.is_some_and(|o| trimmed(o) == trimmed(url)) {
        let rest = url.split_once("://")?.1;
        return Some(rest.split('/').next().unwrap_or(rest));
    }
    let host = url.strip_prefix("https://")?.strip_suffix('/')?;
    if host == "sts.amazonaws.com" {
        return Some(host);
    }
    let (name, region) = host.split_once('.')?;
    let region = region
        .strip_suffix(".amazonaws.com")
        .or_else(|| region.strip_suffix(".amazonaws.com.cn"))?;
    let region_ok = region.split('-').count() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ((name == "sts" || name == "sts-fips") && region_ok).then_some(host)
}

/// Sign a proof with `credentials` for `binding`, to STS at `endpoint` (see [`sts_endpoint`])
/// in `region`.
///
/// # Errors
/// The request could not be signed (a malformed endpoint).
pub fn sign(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    endpoint: &str,
    binding: &Binding,
    now: SystemTime,
) -> Result<Proof, ProofError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let host = endpoint
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ProofError::Malformed(format!("endpoint {endpoint:?}")))?
        .to_owned();
    let mut headers = vec![
        ("content-type".to_owned(), CONTENT_TYPE.to_owned()),
        ("host".to_owned(), host),
        (BASTION_HEADER.to_owned(), binding.bastion.clone()),
        (KEY_HEADER.to_owned(), binding.key.clone()),
        (NONCE_HEADER.to_owned(), nonce()),
    ];
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ProofError::Malformed(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        "POST",
        endpoint,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| ProofError::Malformed(e.to_string()))?
        .into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(Proof {
        url: endpoint.to_owned(),
        headers,
        body: BODY.to_owned(),
    })
}

/// Sign a proof for `binding` with the credentials the SDK finds on this machine (an SSO
/// profile after `aws sso login`, the environment, an assumed role), to STS in the region it
/// finds (default `us-east-1`), or to `AWS_ENDPOINT_URL` when that is set. Returns the proof
/// and the region. `gatehouse login` runs this on the user's laptop.
///
/// # Errors
/// No credentials could be found, or the request could not be signed.
pub async fn sign_from_environment(
    binding: &Binding,
    now: SystemTime,
) -> Result<(Proof, String), ProofError> {
    use aws_credential_types::provider::ProvideCredentials;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let region = sdk
        .region()
        .map_or_else(|| "us-east-1".to_owned(), ToString::to_string);
    let provider = sdk.credentials_provider().ok_or_else(|| {
        ProofError::Credentials("no AWS credentials provider is configured".into())
    })?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| ProofError::Credentials(format!("{e}: {}", error_chain(&e))))?;
    let endpoint = sdk
        .endpoint_url()
        .map_or_else(|| sts_endpoint(&region), ToOwned::to_owned);
    let proof = sign(&credentials, &region, &endpoint, binding, now)?;
    Ok((proof, region))
}

/// The sources of an error, joined (the SDK's credential errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

/// 128 random bits, hex.
fn nonce() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A proof that passed [`check`]: safe to send to STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The STS endpoint.
    pub url: String,
    /// The headers to send, exactly as signed.
    pub headers: Vec<(String, String)>,
    /// When the client made it.
    pub made: SystemTime,
}

/// Read a proof as it arrived (JSON, at most [`MAX_PROOF_BYTES`]).
///
/// # Errors
/// Too large, or not a proof.
pub fn parse(text: &str) -> Result<Proof, ProofError> {
    if text.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    serde_json::from_str(text).map_err(|e| ProofError::Malformed(e.to_string()))
}

/// Check a proof before anything is sent: an STS endpoint, the one action, only known
/// headers, the binding headers signed and naming `binding`, and dated within [`MAX_AGE`]
/// of `now`. `override_url` is the daemon's `aws.endpoint_url`, if any.
///
/// # Errors
/// The first rule the proof breaks.
pub fn check(
    proof: &Proof,
    binding: &Binding,
    override_url: Option<&str>,
    now: SystemTime,
) -> Result<Checked, ProofError> {
    let host =
        sts_host(&proof.url, override_url).ok_or_else(|| ProofError::NotSts(proof.url.clone()))?;
    if proof.body != BODY {
        return Err(ProofError::NotGetCallerIdentity);
    }
    for (name, _) in &proof.headers {
        if !HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return Err(ProofError::Header(name.clone()));
        }
    }
    let names: Vec<String> = proof
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
        return Err(ProofError::Malformed("a header given twice".into()));
    }
    if header(&proof.headers, "host") != Some(host) {
        return Err(ProofError::Malformed(format!(
            "its host header is not {host}"
        )));
    }
    let authorization = header(&proof.headers, "authorization")
        .ok_or_else(|| ProofError::Malformed("no authorization header".into()))?;
    let signed = signed_headers(authorization)?;
    for required in SIGNED {
        if !signed.iter().any(|s| s == required) {
            return Err(ProofError::Unsigned(required));
        }
    }
    for (what, name, expected) in [
        ("bastion", BASTION_HEADER, &binding.bastion),
        ("key", KEY_HEADER, &binding.key),
    ] {
        let found = header(&proof.headers, name).unwrap_or_default();
        if found != expected {
            return Err(ProofError::Binding {
                what,
                found: found.to_owned(),
                expected: expected.clone(),
            });
        }
    }
    let made = amz_date(header(&proof.headers, "x-amz-date").unwrap_or_default())?;
    match now.duration_since(made) {
        Ok(age) if age > MAX_AGE => return Err(ProofError::Stale(age.as_secs())),
        Ok(_) => {}
        Err(ahead) if ahead.duration() > MAX_SKEW => {
            return Err(ProofError::Future(ahead.duration().as_secs()))
        }
        Err(_) => {}
    }
    Ok(Checked {
        url: proof.url.clone(),
        headers: proof.headers.clone(),
        made,
    })
}

/// The `SignedHeaders` of a SigV4 `Authorization` header, lowercased.
fn signed_headers(authorization: &str) -> Result<Vec<String>, ProofError> {
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| ProofError::Malformed("not a SigV4 authorization".into()))?;
    let list = rest
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("SignedHeaders="))
        .ok_or_else(|| ProofError::Malformed("no SignedHeaders".into()))?;
    Ok(list.split(';').map(str::to_ascii_lowercase).collect())
}

/// SigV4's `x-amz-date` (`20261207T151500Z`).
fn amz_date(value: &str) -> Result<SystemTime, ProofError> {
    let bad = || ProofError::Malformed(format!("x-amz-date {value:?}"));
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, ProofError> {
        value[r].parse::<i64>().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Who STS says signed the proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The caller's ARN (read by [`caller`]).
    pub arn: String,
    /// Its account.
    pub account: String,
}

/// Send a checked proof to STS and read the caller. The bastion adds nothing of its own: no
/// credential, no header.
///
/// # Errors
/// STS refused it, could not be reached, or answered without a caller.
pub async fn replay(checked: &Checked, timeout: Duration) -> Result<CallerIdentity, ProofError> {
    use http_body_util::{BodyExt, Full, Limited};
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| ProofError::Unreachable(format!("TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<bytes::Bytes>>(connector);
    let mut request = http::Request::post(&checked.url);
    for (name, value) in &checked.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(bytes::Bytes::from_static(BODY.as_bytes())))
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let answer = tokio::time::timeout(timeout, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ProofError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ProofError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, ProofError>((status, body))
    })
    .await
    .map_err(|_| ProofError::Unreachable(format!("no answer in {} s", timeout.as_secs())))??;
    let (status, body) = answer;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let code = xml_text(&text, "Code").unwrap_or_else(|| status.to_string());
        return Err(ProofError::Refused(code));
    }
    let arn = xml_text(&text, "Arn").ok_or_else(|| ProofError::Answer("no Arn".into()))?;
    let account =
        xml_text(&text, "Account").ok_or_else(|| ProofError::Answer("no Account".into()))?;
    Ok(CallerIdentity { arn, account })
}

/// The text of the first element named `name` in an XML document (STS's answers are small
/// and flat); `None` if it has none or the document is not XML.
fn xml_text(doc: &str, name: &str) -> Option<String> {
    let mut doc = aws_smithy_xml::decode::Document::new(doc);
    while let Some(start) = doc.next_start_element() {
        if start.matches(name) {
            let mut scoped = doc.scoped_to(start);
            return aws_smithy_xml::decode::try_data(&mut scoped)
                .ok()
                .map(|s| s.trim().to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests;
