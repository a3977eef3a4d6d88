//! `gatehouse login` against moto. First the proof alone (`gatehouse_aws::sts_proof`): the
//! credentials of an SSO-style session (a role named like IAM Identity Center's, assumed with
//! the user's email as the session name) sign a proof bound to a bastion and a key; checked
//! and replayed, STS names that session. Then end to end: the real `gatehouse login` in the
//! client namespace gets a certificate from the real daemon (AWS mode, moto behind the
//! fault proxy), and stock `ssh -J`, `-W` and a Jupyter tunnel work with it; every bad proof,
//! unmapped caller and bad certificate is refused with the reason the user sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_aws::sts_proof::{self, Binding, Caller};
use serde_json::{json, Value};

use crate::aws::{
    addr, dash_w, fixture as ns_fixture, read_audit, standard_world, start_gatehouse,
    wait_for_refreshes, write_config, Proxy, Settings, CMD_TIMEOUT, ECHO_PORT, SSH_PORT,
};
use crate::harness::moto::Moto;
use crate::harness::moto_ns::NsMoto;
use crate::harness::{
    gatehouse_bin, jupyter_check, run_with_timeout, CmdOutput, Jupyter, KeyPair, Netns, Scratch,
    SshClient, SshdConfig, Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR, TEST_USER,
};

/// `tests/py/aws_fixture.py` against `moto` (root namespace loopback): its answers.
fn fixture(moto: &Moto, ops: serde_json::Value) -> serde_json::Value {
    let python = crate::harness::jupyter::venv_python();
    let script = crate::harness::jupyter::py_script("aws_fixture.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(moto.url()).arg(ops.to_string());
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(out.success(), "aws_fixture.py: {out}");
    serde_json::from_str(&out.stdout_str()).expect("aws_fixture.py prints JSON")
}

#[test]
fn a_proof_signed_by_an_sso_session_is_replayed_to_sts_and_names_that_session() {
    let moto = Moto::start();
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                       "Action": "sts:AssumeRole"}]
    });
    let answers = fixture(
        &moto,
        serde_json::json!([
            {"op": "call", "service": "iam", "method": "create_role", "args": {
                "RoleName": "AWSReservedSSO_Research_0123abcd",
                "Path": "/aws-reserved/sso.amazonaws.com/",
                "AssumeRolePolicyDocument": trust.to_string()}},
            {"op": "call", "service": "sts", "method": "assume_role", "args": {
                "RoleArn": "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Research_0123abcd",
                "RoleSessionName": "alice@example.org"}},
        ]),
    );
    let c = &answers[1]["Credentials"];
    let field = |k: &str| {
        c[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {c}"))
            .to_owned()
    };
    let credentials = aws_credential_types::Credentials::new(
        field("AccessKeyId"),
        field("SecretAccessKey"),
        Some(field("SessionToken")),
        None,
        "sso",
    );
    let binding = Binding {
        bastion: "SHA256:thebastionshostkeyfingerprint".into(),
        key: "SHA256:alicesownpublickeyfingerprint".into(),
    };
    let now = SystemTime::now();
    let proof =
        sts_proof::sign(&credentials, "us-east-1", &moto.url(), &binding, now).expect("signed");
    // As it travels: JSON, read back on the bastion.
    let text = serde_json::to_string(&proof).expect("json");
    let proof = sts_proof::parse(&text).expect("parsed");
    let checked =
        sts_proof::check(&proof, &binding, Some(&moto.url()), SystemTime::now()).expect("checked");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let identity = runtime
        .block_on(sts_proof::replay(&checked, Duration::from_secs(10)))
        .expect("STS names the caller");
    assert_eq!(
        identity.arn,
        "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Research_0123abcd/alice@example.org"
    );
    assert_eq!(identity.account, "123456789012");
    assert_eq!(
        sts_proof::caller(&identity.arn),
        Ok((
            "123456789012".to_owned(),
            Caller::Sso {
                permission_set: "Research".into(),
                role: "AWSReservedSSO_Research_0123abcd".into(),
                session: "alice@example.org".into(),
            }
        ))
    );

    // The same proof, for another bastion or pointed elsewhere, never leaves the bastion.
    let other = Binding {
        bastion: "SHA256:anotherbastion".into(),
        ..binding.clone()
    };
    assert!(matches!(
        sts_proof::check(&proof, &other, Some(&moto.url()), SystemTime::now()),
        Err(sts_proof::ProofError::Binding {
            what: "bastion",
            ..
        })
    ));
    let mut elsewhere = proof.clone();
    elsewhere.url = "http://127.0.0.1:9/".into();
    assert!(matches!(
        sts_proof::check(&elsewhere, &binding, Some(&moto.url()), SystemTime::now()),
        Err(sts_proof::ProofError::NotSts(_))
    ));
}

/// The account moto answers for.
const ACCOUNT: &str = "123456789012";
/// The account's root, trusted by the roles of the tests without enforced policies.
const ROOT: &str = "arn:aws:iam::123456789012:root";
/// The path IAM Identity Center gives the roles it makes.
pub(crate) const SSO_PATH: &str = "/aws-reserved/sso.amazonaws.com/";

/// Temporary credentials from STS.
#[derive(Clone)]
pub(crate) struct Creds {
    key: String,
    secret: String,
    token: String,
}

impl Creds {
    fn sdk(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.key.clone(),
            self.secret.clone(),
            Some(self.token.clone()),
            None,
            "test",
        )
    }
}

/// Makes role `name` (at `path`) with `admin`'s boto3 calls and assumes it with session
/// name `session` with `signer`'s (who IAM Identity Center would be: someone allowed to),
/// whose ARN is `signer_arn` (the account's root where no policy is enforced).
pub(crate) fn assume(
    admin: impl Fn(Value) -> Vec<Value>,
    (signer, signer_arn): (impl Fn(Value) -> Vec<Value>, &str),
    path: &str,
    name: &str,
    session: &str,
) -> Creds {
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": signer_arn},
                       "Action": "sts:AssumeRole"}]
    });
    admin(json!([
        {"op": "call", "service": "iam", "method": "create_role", "args": {
            "RoleName": name, "Path": path, "AssumeRolePolicyDocument": trust.to_string()}},
    ]));
    let r = signer(json!([
        {"op": "call", "service": "sts", "method": "assume_role", "args": {
            "RoleArn": format!("arn:aws:iam::{ACCOUNT}:role{path}{name}"),
            "RoleSessionName": session}},
    ]));
    let c = &r[0]["Credentials"];
    let field = |k: &str| {
        c[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {c}"))
            .to_owned()
    };
    Creds {
        key: field("AccessKeyId"),
        secret: field("SecretAccessKey"),
        token: field("SessionToken"),
    }
}

/// `gatehouse login --bastion <bastion>` in `ns` (the laptop) for `key`, with `creds` in the
/// environment and nothing else of AWS: it signs for `AWS_ENDPOINT_URL` = `endpoint` (the
/// URL the bastion's `aws.endpoint_url` names) and never connects there itself.
pub(crate) fn login_as(
    ns: &Netns,
    bastion: SocketAddr,
    endpoint: &str,
    creds: &Creds,
    key: &KeyPair,
    known_hosts: &Path,
) -> CmdOutput {
    let mut cmd = ns.command(gatehouse_bin());
    cmd.arg("login")
        .arg("--bastion")
        .arg(bastion.to_string())
        .arg("--key")
        .arg(&key.private)
        .arg("--known-hosts")
        .arg(known_hosts);
    for var in ["AWS_PROFILE", "AWS_DEFAULT_REGION"] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ACCESS_KEY_ID", &creds.key)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_SESSION_TOKEN", &creds.token)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        );
    run_with_timeout(cmd, CMD_TIMEOUT)
}

impl SsoRig {
    /// Stock OpenSSH from the client namespace as `login` with `key` (and its certificate
    /// beside it), with `jupyter-host` (the private sshd, through the bastion) configured.
    fn client(&self, login: &str, key: &KeyPair) -> SshClient {
        let mut client = SshClient::new(
            &self.topology.client,
            &self.scratch,
            self.bastion,
            login,
            &key.private,
        );
        client.add_target("jupyter-host", "jupyter", SSH_PORT, TEST_USER, None);
        client
    }

    /// [`assume`] in this rig's moto, where nothing is enforced.
    fn assume(&self, path: &str, name: &str, session: &str) -> Creds {
        let fixture = |ops| ns_fixture(&self.topology, &self.moto, ops);
        assume(fixture, (fixture, ROOT), path, name, session)
    }
}

/// [`login_as`] from the client namespace to `rig`'s bastion.
fn login(rig: &SsoRig, creds: &Creds, key: &KeyPair) -> CmdOutput {
    login_as(
        &rig.topology.client,
        rig.bastion,
        &rig.proxy.url(),
        creds,
        key,
        &rig.known_hosts,
    )
}

/// Fields drop in order: processes first, the namespaces last.
struct SsoRig {
    gatehouse: crate::harness::Daemon,
    _sshd: crate::harness::Sshd,
    jupyter: Jupyter,
    proxy: Proxy,
    moto: NsMoto,
    bastion: SocketAddr,
    known_hosts: PathBuf,
    ca_key: PathBuf,
    audit: PathBuf,
    config: PathBuf,
    scratch: Scratch,
    topology: Topology,
}

/// The AWS rig (moto behind the proxy, alice and `jupyter` of the standard world) with
/// `[sso]`: accounts = moto's, permission set `Research` -> group research, role
/// `ci-runner` -> research. The private host's sshd authorizes `sso_key`; Jupyter listens
/// on the host's second allowed port. `extra` is appended to the config.
fn sso_rig(sso_key: &KeyPair, scratch: Scratch, extra: &str) -> SsoRig {
    let topology = Topology::new();
    let moto = NsMoto::start_in(&topology.bastion);
    let proxy = Proxy::start(&topology, &scratch, moto.addr().port());
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let world = standard_world(&topology, &moto, &alice_key);
    let config = write_config(
        &scratch,
        "gatehouse",
        &proxy.url(),
        &Settings {
            max_staleness: "1m",
            vpc_ids: vec![world.vpc_id.clone()],
            listen_port: SSH_PORT,
        },
    );
    let ca_key = scratch.join("user_ca_key");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[sso]\naccounts = [\"{ACCOUNT}\"]\nca_key = \"{}\"\n\
         permission_sets = {{ Research = [\"research\"] }}\nroles = {{ \"ci-runner\" = [\"research\"] }}\n{extra}",
        ca_key.display()
    ));
    std::fs::write(&config, text).expect("config");
    let gatehouse = start_gatehouse(&topology, &scratch, &config, "gatehouse");
    let sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
        .authorize(&sso_key.public_line)
        .start(&topology.private, &scratch, "private_sshd");
    let jupyter = Jupyter::start(&topology.private, &scratch, addr(PRIVATE_ADDR, ECHO_PORT));
    let known_hosts = scratch.write("known_hosts_empty", b"");
    SsoRig {
        gatehouse,
        _sshd: sshd,
        jupyter,
        proxy,
        moto,
        bastion: addr(BASTION_CLIENT_ADDR, SSH_PORT),
        known_hosts,
        ca_key,
        audit: scratch.join("gatehouse.audit.jsonl"),
        config,
        scratch,
        topology,
    }
}

/// The client side of a `gatehouse login` exchange written by hand, to send what the real
/// client never would: `make` builds the answer to the prompt from the bastion's host key
/// fingerprint. Returns the bastion's answer: the info request's name and instructions.
fn exchange(
    ns: &Netns,
    bastion: SocketAddr,
    make: impl FnOnce(&str) -> String,
) -> (String, String) {
    use gatehouse_ssh::issuer::{ASK, SUBMETHOD};
    use russh::client::KeyboardInteractiveAuthResponse as Answer;
    use russh::keys::PublicKeyOrCertificate;

    struct Seen(Arc<Mutex<Option<String>>>);
    impl russh::client::Handler for Seen {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            key: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            if let PublicKeyOrCertificate::PublicKey { key, .. } = key {
                *self.0.lock().unwrap() = Some(gatehouse_directory::fingerprint(key));
            }
            Ok(true)
        }
    }

    let stream = ns
        .connect(bastion, Duration::from_secs(5))
        .expect("connect to the bastion");
    stream.set_nonblocking(true).expect("nonblocking");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let seen = Arc::new(Mutex::new(None));
        let stream = tokio::net::TcpStream::from_std(stream).expect("tokio stream");
        let config = Arc::new(russh::client::Config::default());
        let mut handle = tokio::time::timeout(
            CMD_TIMEOUT,
            russh::client::connect_stream(config, stream, Seen(seen.clone())),
        )
        .await
        .expect("ssh handshake in time")
        .expect("ssh handshake");
        let fp = seen.lock().unwrap().clone().expect("host key seen");
        let first = handle
            .authenticate_keyboard_interactive_start("gatehouse-login", Some(SUBMETHOD.to_owned()))
            .await
            .expect("keyboard-interactive");
        assert!(
            matches!(&first, Answer::InfoRequest { name, .. } if name == ASK),
            "the bastion asks for the request"
        );
        let answer = tokio::time::timeout(
            CMD_TIMEOUT,
            handle.authenticate_keyboard_interactive_respond(vec![make(&fp)]),
        )
        .await
        .expect("an answer in time")
        .expect("an answer");
        let Answer::InfoRequest {
            name, instructions, ..
        } = answer
        else {
            panic!("the bastion answered without an info request");
        };
        let end = handle
            .authenticate_keyboard_interactive_respond(Vec::new())
            .await
            .expect("the end of the exchange");
        assert!(
            matches!(end, Answer::Failure { .. }),
            "the exchange never logs the connection in"
        );
        (name, instructions)
    })
}

/// Builds a login request from the bastion's host key fingerprint.
type MakeRequest<'a> = Box<dyn Fn(&str) -> String + 'a>;

/// A proof for `key` signed with `creds`, bound to `bastion`, as a login request's JSON.
fn request(
    proxy_url: &str,
    creds: &Creds,
    bastion: &str,
    key: &KeyPair,
    tweak: impl FnOnce(&mut Value),
) -> String {
    let public = gatehouse_config::parse_public_key(&key.public_line).expect("public key");
    let binding = Binding {
        bastion: bastion.to_owned(),
        key: gatehouse_directory::fingerprint(&public),
    };
    let proof = sts_proof::sign(
        &creds.sdk(),
        "us-east-1",
        proxy_url,
        &binding,
        SystemTime::now(),
    )
    .expect("signed");
    let mut request = json!({"public_key": key.public_line, "proof": proof});
    tweak(&mut request);
    request.to_string()
}

/// `ssh-keygen -s ca` on `key` with the bastion's own extension, writing `<key>-cert.pub`.
fn sign_with(ca: &Path, key: &KeyPair, principal: &str, validity: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-s"]).arg(ca);
    cmd.args(["-I", "test", "-n", principal, "-V", validity]);
    cmd.args(["-O", "clear", "-O", "permit-port-forwarding"]);
    cmd.args([
        "-O",
        "extension:gatehouse-via@gatehouse=permission-set:Research",
    ]);
    cmd.arg(&key.public);
    run_with_timeout(cmd, Duration::from_secs(30)).expect_success("ssh-keygen -s");
}

#[test]
fn sso_login_certifies_the_laptops_key_and_stock_ssh_jumps_with_it() {
    let scratch = Scratch::new();
    let sso_key = KeyPair::ed25519(&scratch, "sso_key");
    let rig = sso_rig(&sso_key, scratch, "");
    let alice = rig.assume(
        SSO_PATH,
        "AWSReservedSSO_Research_0123abcd",
        "alice@example.org",
    );
    let login_name = "alice~40example.org";

    let out = login(&rig, &alice, &sso_key);
    out.expect_success("gatehouse login");
    let said = out.stdout_str();
    assert!(said.contains(&format!("certificate for {login_name} (arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_Research_0123abcd/alice@example.org)")), "{out}");
    assert!(
        said.contains(&format!("ssh -J {login_name}@{}", rig.bastion)),
        "{out}"
    );
    assert!(said.contains(&format!("User {login_name}")), "{out}");
    let cert_path = PathBuf::from(format!("{}-cert.pub", sso_key.private.display()));
    let cert = std::fs::read_to_string(&cert_path).expect("the certificate next to the key");
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    // What OpenSSH reads in it: our principal, the forwarding extension, a day's validity.
    let mut show = Command::new("ssh-keygen");
    show.arg("-Lf").arg(&cert_path);
    let shown = run_with_timeout(show, Duration::from_secs(10));
    shown.expect_success("ssh-keygen -L");
    let shown = shown.stdout_str();
    for needle in [
        "Type: ssh-ed25519-cert-v01@openssh.com user certificate",
        login_name,
        "permit-port-forwarding",
        "gatehouse-via@gatehouse",
    ] {
        assert!(shown.contains(needle), "{needle} in {shown}");
    }
    assert!(!shown.contains("permit-pty"), "{shown}");

    // Stock OpenSSH with nothing but the key (the certificate is picked up beside it).
    let client = rig.client(login_name, &sso_key);
    let out = dash_w(&client, &format!("jupyter:{SSH_PORT}"));
    assert!(
        out.stdout_str().starts_with("SSH-2.0-"),
        "ssh -W through the bastion: {out}"
    );
    let mut jump = client.ssh();
    jump.args(["jupyter-host", "echo", "hello-from-the-host"]);
    let out = run_with_timeout(jump, CMD_TIMEOUT);
    out.expect_success("ssh -J with the certificate");
    assert!(out.stdout_str().contains("hello-from-the-host"), "{out}");
    let _tunnel = client.local_forward(
        &rig.scratch,
        "jupyter_tunnel",
        18888,
        "jupyter",
        ECHO_PORT,
        "bastion",
    );
    let out = jupyter_check(
        &rig.topology.client,
        "http://127.0.0.1:18888",
        rig.jupyter.token(),
        Duration::from_secs(90),
    );
    out.expect_success("jupyter_check.py through ssh -L with the certificate");

    // Measured, not asserted (timing belongs to benchmarks): `gatehouse login` end to end
    // (handshake, signing, the bastion's replay to STS, the certificate written) next to a
    // login with the certificate it wrote (`ssh -W`), 5 of each, alternating.
    let (mut logins, mut jumps) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = std::time::Instant::now();
        login(&rig, &alice, &sso_key).expect_success("gatehouse login, again");
        logins.push(started.elapsed().as_secs_f64() * 1e3);
        let started = std::time::Instant::now();
        let out = dash_w(&client, &format!("jupyter:{SSH_PORT}"));
        assert!(out.stdout_str().starts_with("SSH-2.0-"), "{out}");
        jumps.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "measured: gatehouse login end to end, median of 5: {:.0} ms; ssh -W with its \
         certificate, median of 5: {:.0} ms",
        median(&mut logins),
        median(&mut jumps)
    );

    let audit = read_audit(&rig.audit);
    let issued: Vec<&Value> = audit
        .iter()
        .filter(|e| e["event"] == "certificate.issued")
        .collect();
    assert_eq!(issued.len(), 6, "{audit:?}");
    assert_eq!(issued[0]["user"], login_name);
    assert_eq!(issued[0]["via"], "permission-set:Research");
    assert_eq!(issued[0]["key"], sso_key.fingerprint());
    let logins: Vec<&Value> = audit
        .iter()
        .filter(|e| e["event"] == "auth.success" && e["user"] == login_name)
        .collect();
    assert!(!logins.is_empty(), "{audit:?}");
    assert!(
        logins.iter().all(|e| e["certificate"]["ca"] == "gatehouse"),
        "{logins:?}"
    );
    rig.gatehouse.assert_no_panic();
}

#[test]
fn sso_login_refuses_bad_proofs_unmapped_callers_and_bad_certificates_with_a_reason() {
    let scratch = Scratch::new();
    let sso_key = KeyPair::ed25519(&scratch, "sso_key");
    // Every refusal here counts against the client's address: no penalty, to try them all.
    let rig = sso_rig(&sso_key, scratch, "[penalties]\nenabled = false\n");
    let url = rig.proxy.url();
    let alice = rig.assume(
        SSO_PATH,
        "AWSReservedSSO_Research_0123abcd",
        "alice@example.org",
    );

    // Unmapped callers, through the real client: the reason is what the user reads.
    let admin = rig.assume(SSO_PATH, "AWSReservedSSO_Admin_4567ef01", "bob@example.org");
    let deploy = rig.assume("/", "deploy", "build-42");
    for (creds, reason) in [
        (&admin, "permission set Admin is not mapped to any group"),
        (&deploy, "role deploy is not mapped to any group"),
    ] {
        let out = login(&rig, creds, &sso_key);
        out.expect_failure("gatehouse login by an unmapped caller");
        assert!(
            out.stderr_str()
                .contains(&format!("the bastion refused: {reason}")),
            "{out}"
        );
    }

    // Proofs the real client would never send, by hand.
    let ask =
        |make: &dyn Fn(&str) -> String| exchange(&rig.topology.client, rig.bastion, |fp| make(fp));
    let proof = std::cell::RefCell::new(String::new());
    let (name, issued) = ask(&|fp| {
        let r = request(&url, &alice, fp, &sso_key, |_| {});
        *proof.borrow_mut() = r.clone();
        r
    });
    assert_eq!(name, gatehouse_ssh::issuer::ISSUED, "{issued}");
    let replayed = proof.borrow().clone();
    let cases: Vec<(&str, MakeRequest)> = vec![
        (
            "the proof was already used",
            Box::new(move |_| replayed.clone()),
        ),
        (
            "the proof was made for bastion SHA256:another",
            Box::new(|_| request(&url, &alice, "SHA256:another", &sso_key, |_| {})),
        ),
        (
            "is not an STS endpoint",
            Box::new(|fp| {
                request(&url, &alice, fp, &sso_key, |r| {
                    r["proof"]["url"] = json!("http://127.0.0.1:9/")
                })
            }),
        ),
        (
            "the proof was made for key",
            Box::new(|fp| {
                let other = KeyPair::ed25519(&rig.scratch, "other_key");
                request(&url, &alice, fp, &sso_key, |r| {
                    r["public_key"] = json!(other.public_line)
                })
            }),
        ),
        (
            "the request is not a gatehouse login request",
            Box::new(|_| "{\"junk\": 1}".to_owned()),
        ),
    ];
    for (reason, make) in &cases {
        let (name, said) = ask(make.as_ref());
        assert_eq!(name, gatehouse_ssh::issuer::REFUSED, "{reason}: {said}");
        assert!(said.contains(reason), "expected {reason:?}, got {said:?}");
    }
    let audit = read_audit(&rig.audit);
    let refused = audit
        .iter()
        .filter(|e| e["event"] == "certificate.refused")
        .count();
    assert_eq!(refused, 2 + cases.len(), "{audit:?}");

    // Certificates the bastion did not issue as they are: an expired one of its own CA, and
    // a valid one of another CA.
    let login_name = "alice~40example.org";
    let expired_key = KeyPair::ed25519(&rig.scratch, "expired_key");
    sign_with(&rig.ca_key, &expired_key, login_name, "20200101:20200102");
    let other_ca = KeyPair::ed25519(&rig.scratch, "other_ca");
    let foreign_key = KeyPair::ed25519(&rig.scratch, "foreign_key");
    sign_with(&other_ca.private, &foreign_key, login_name, "-5m:+1h");
    for key in [&expired_key, &foreign_key] {
        let client = SshClient::new(
            &rig.topology.client,
            &rig.scratch,
            rig.bastion,
            login_name,
            &key.private,
        );
        let out = dash_w(&client, &format!("jupyter:{SSH_PORT}"));
        assert!(!out.stdout_str().starts_with("SSH-2.0-"), "{out}");
        assert!(out.stderr_str().contains("Permission denied"), "{out}");
    }
    let audit = read_audit(&rig.audit);
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "auth.failure" && e["reason_code"] == "untrusted_ca"),
        "{audit:?}"
    );
    rig.gatehouse.assert_no_panic();
}

/// An ordinary IAM role maps by its `gatehouse:groups` tag, read from IAM with the users, and
/// losing the tag is a revocation: the open tunnel closes, and new logins (with the
/// certificate, or `gatehouse login`) are refused with the reason. Then a permission set
/// removed from the config (SIGHUP, in AWS mode) does the same to its caller.
#[test]
fn sso_a_role_maps_by_its_iam_groups_tag_and_losing_it_closes_its_tunnels() {
    let scratch = Scratch::new();
    let sso_key = KeyPair::ed25519(&scratch, "sso_key");
    let rig = sso_rig(&sso_key, scratch, "");
    let iam = |ops| ns_fixture(&rig.topology, &rig.moto, ops);
    // The session name is an SSO user's name: whoever may assume a role chooses it, so the
    // login names the role and is never that user's (`alice~40example.org`).
    let deploy = rig.assume("/", "deploy", "alice@example.org");
    let out = login(&rig, &deploy, &sso_key);
    out.expect_failure("gatehouse login by an untagged role");
    assert!(
        out.stderr_str()
            .contains("the bastion refused: role deploy is not mapped to any group"),
        "{out}"
    );

    iam(
        json!([{"op": "call", "service": "iam", "method": "tag_role", "args": {
        "RoleName": "deploy",
        "Tags": [{"Key": "gatehouse:groups", "Value": "research"}]}}]),
    );
    wait_for_refreshes(&rig.gatehouse);
    let out = login(&rig, &deploy, &sso_key);
    out.expect_success("gatehouse login by a tagged role");
    let login_name = "deploy/alice~40example.org";
    assert!(
        out.stdout_str()
            .contains(&format!("ssh -J {login_name}@{}", rig.bastion)),
        "{out}"
    );
    let client = rig.client(login_name, &sso_key);
    let mut jump = client.ssh();
    jump.args(["jupyter-host", "echo", "hello-from-the-host"]);
    let out = run_with_timeout(jump, CMD_TIMEOUT);
    out.expect_success("ssh -J with the tagged role's certificate");
    assert!(out.stdout_str().contains("hello-from-the-host"), "{out}");

    // A tunnel to the host's sshd, open while the tag goes.
    let (_tunnel, stream) = open_tunnel(&rig, &client, 18022);
    iam(
        json!([{"op": "call", "service": "iam", "method": "untag_role", "args": {
        "RoleName": "deploy", "TagKeys": ["gatehouse:groups"]}}]),
    );
    closes(stream, "the tag was removed");
    revoked(
        &rig,
        login_name,
        "role deploy (by its groups tag) is no longer mapped",
    );

    // The certificate no longer logs in, and no new one is issued.
    let out = dash_w(&client, &format!("jupyter:{SSH_PORT}"));
    assert!(!out.stdout_str().starts_with("SSH-2.0-"), "{out}");
    let audit = read_audit(&rig.audit);
    assert!(
        audit.iter().any(|e| e["event"] == "auth.failure"
            && e["user"] == login_name
            && e["reason_code"] == "caller_not_mapped"),
        "{audit:?}"
    );
    let out = login(&rig, &deploy, &sso_key);
    out.expect_failure("gatehouse login after the tag is gone");
    assert!(
        out.stderr_str()
            .contains("the bastion refused: role deploy is not mapped to any group"),
        "{out}"
    );

    // With [aws], the config's mapping applies on SIGHUP too (users and hosts still come
    // from AWS): removing the permission set closes its caller's open tunnel.
    let alice_key = KeyPair::ed25519(&rig.scratch, "alice_sso_key");
    let alice = rig.assume(
        SSO_PATH,
        "AWSReservedSSO_Research_0123abcd",
        "alice@example.org",
    );
    login(&rig, &alice, &alice_key).expect_success("gatehouse login through Research");
    let alice_login = "alice~40example.org";
    let alice_client = rig.client(alice_login, &alice_key);
    let (_tunnel, stream) = open_tunnel(&rig, &alice_client, 18023);
    let text = std::fs::read_to_string(&rig.config).expect("config");
    let edited = text.replace(
        "permission_sets = { Research = [\"research\"] }",
        "permission_sets = { Other = [\"research\"] }",
    );
    assert_ne!(edited, text);
    std::fs::write(&rig.config, edited).expect("config");
    rig.gatehouse.signal(nix::sys::signal::Signal::SIGHUP);
    closes(stream, "Research was removed from the config (SIGHUP)");
    revoked(
        &rig,
        alice_login,
        "permission set Research is no longer mapped",
    );
    let audit = read_audit(&rig.audit);
    assert!(
        audit.iter().any(|e| e["event"] == "config.reload"
            && e["result"] == "applied"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("[sso] accounts and mapping"))),
        "{audit:?}"
    );
    let out = login(&rig, &alice, &alice_key);
    out.expect_failure("gatehouse login through a removed permission set");
    assert!(
        out.stderr_str()
            .contains("the bastion refused: permission set Research is not mapped"),
        "{out}"
    );
    rig.gatehouse.assert_no_panic();
}

/// A tunnel (`ssh -N -L <port>:jupyter:22` through `client`) and a connection through it
/// that has read the host's banner.
fn open_tunnel(
    rig: &SsoRig,
    client: &SshClient,
    port: u16,
) -> (crate::harness::Daemon, std::net::TcpStream) {
    use std::io::Read as _;
    let tunnel = client.local_forward(
        &rig.scratch,
        &format!("tunnel_{port}"),
        port,
        "jupyter",
        SSH_PORT,
        "bastion",
    );
    let mut stream = rig
        .topology
        .client
        .connect(
            addr(std::net::Ipv4Addr::LOCALHOST, port),
            Duration::from_secs(5),
        )
        .expect("connect to the forwarded port");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).expect("the host's banner");
    assert_eq!(&banner, b"SSH-2.0-");
    (tunnel, stream)
}

/// Asserts that `stream` ends (within its 20 s read timeout) after `what`; prints how long
/// that took.
#[track_caller]
fn closes(mut stream: std::net::TcpStream, what: &str) {
    use std::io::Read as _;
    let since = std::time::Instant::now();
    let mut rest = Vec::new();
    let end = stream.read_to_end(&mut rest);
    let timed_out = matches!(&end, Err(e) if matches!(e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(!timed_out, "the tunnel stayed open 20 s after {what}");
    eprintln!(
        "measured: the tunnel closed {:?} after {what}",
        since.elapsed()
    );
}

/// Asserts a `session.revoked` audit line for `login` whose reason contains `why`.
#[track_caller]
fn revoked(rig: &SsoRig, login: &str, why: &str) {
    let audit = read_audit(&rig.audit);
    let line = audit
        .iter()
        .find(|e| e["event"] == "session.revoked" && e["user"] == login)
        .unwrap_or_else(|| panic!("no session.revoked for {login}: {audit:?}"));
    assert!(
        line["reason"].as_str().is_some_and(|r| r.contains(why)),
        "{line}"
    );
}

/// A replica of the SSO fleet: AWS mode behind the balancer, the host key and the CA key in
/// SSM (`aws.host_key_ssm_parameter`, `aws.user_ca_ssm_parameter`), as gatehouse-vpc
/// configures a scaled-out stack. Replica `slot` listens for PROXY v2 on 127.0.0.(10+slot):22
/// of the bastion namespace, health on :8080; its audit goes to `r<slot>.audit.jsonl`.
fn replica_config(scratch: &Scratch, slot: u8, endpoint: &str, vpc_id: &str) -> PathBuf {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 10 + slot);
    let text = format!(
        r#"
[server]
listen = []
proxy_listen = ["{ip}:22"]
trusted_proxies = ["127.0.0.1/32"]
health_listen = "{ip}:8080"
host_key = "{dir}/r{slot}_host_key"
connect_timeout = "3s"
shutdown_grace = "1s"

[audit]
file = "{dir}/r{slot}.audit.jsonl"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
vpc_ids = ["{vpc_id}"]
refresh_interval = "1s"
iam_group_prefix = "gatehouse-"
host_key_ssm_parameter = "/gatehouse/sso/host_ed25519"
user_ca_ssm_parameter = "/gatehouse/sso/user_ca_ed25519"
host_key_tags = {{ "gatehouse:stack" = "sso" }}

[sso]
accounts = ["{ACCOUNT}"]
ca_key = "{dir}/r{slot}_user_ca"
permission_sets = {{ Research = ["research"] }}
"#,
        dir = scratch.path().display(),
    );
    scratch.write(format!("r{slot}.toml"), text.as_bytes())
}

#[test]
fn sso_two_replicas_behind_the_balancer_accept_a_certificate_either_issued() {
    use crate::harness::haproxy::{BackendServer, BalancerConfig, Haproxy};
    let topology = Topology::new();
    let scratch = Scratch::new();
    let moto = NsMoto::start_in(&topology.bastion);
    let proxy = Proxy::start(&topology, &scratch, moto.addr().port());
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let world = standard_world(&topology, &moto, &alice_key);
    let sso_key = KeyPair::ed25519(&scratch, "sso_key");
    let mut replicas = Vec::new();
    for slot in [1u8, 2] {
        let config = replica_config(&scratch, slot, &proxy.url(), &world.vpc_id);
        let mut cmd = crate::aws::gatehouse_cmd(&topology);
        cmd.arg("serve").arg("--config").arg(&config);
        replicas.push(crate::harness::Daemon::spawn(
            &format!("r{slot}"),
            cmd,
            &scratch,
        ));
    }
    for replica in &mut replicas {
        replica.wait_for_stderr("gatehouse listening", CMD_TIMEOUT);
    }
    let ca_lines: Vec<String> = replicas
        .iter()
        .map(|r| {
            let log = r.stderr();
            let line = log
                .lines()
                .find(|l| l.contains("gatehouse login: certificates for"))
                .unwrap_or_else(|| panic!("no CA line\n{log}"))
                .to_owned();
            line[line.find("ca_key=").expect("ca_key=")..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(ca_lines[0], ca_lines[1], "one CA for the fleet");
    let stored = ns_fixture(
        &topology,
        &moto,
        json!([{"op": "call", "service": "ssm", "method": "list_tags_for_resource", "args": {
            "ResourceType": "Parameter", "ResourceId": "/gatehouse/sso/user_ca_ed25519"}}]),
    );
    assert_eq!(
        stored[0]["TagList"],
        json!([{"Key": "gatehouse:stack", "Value": "sso"}]),
        "the CA parameter is tagged with the stack, so destroy finds it"
    );
    let _sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
        .authorize(&sso_key.public_line)
        .start(&topology.private, &scratch, "private_sshd");
    let frontend = addr(BASTION_CLIENT_ADDR, SSH_PORT);
    let servers = [1u8, 2]
        .iter()
        .map(|slot| BackendServer {
            name: format!("r{slot}"),
            addr: SocketAddr::from(([127, 0, 0, 10 + slot], 22)),
            check_port: 8080,
            enabled: true,
        })
        .collect();
    let haproxy = Haproxy::start(
        &topology.bastion,
        &scratch,
        "haproxy",
        &BalancerConfig::like_an_nlb(
            frontend,
            servers,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ),
    );
    let only = |slot: u8| {
        let (on, off) = (format!("r{slot}"), format!("r{}", 3 - slot));
        haproxy.set_state(&off, "maint");
        haproxy.set_state(&on, "ready");
        haproxy.wait_server(&on, "up", Duration::from_secs(10), |s| s.is_up());
    };
    let known_hosts = scratch.write("known_hosts_empty", b"");
    let alice = assume(
        |ops| ns_fixture(&topology, &moto, ops),
        (|ops| ns_fixture(&topology, &moto, ops), ROOT),
        SSO_PATH,
        "AWSReservedSSO_Research_0123abcd",
        "alice@example.org",
    );
    let login_name = "alice~40example.org";
    let audit = |slot: u8| read_audit(&scratch.join(format!("r{slot}.audit.jsonl")));
    for (issuer, checker) in [(1u8, 2u8), (2, 1)] {
        only(issuer);
        let out = login_as(
            &topology.client,
            frontend,
            &proxy.url(),
            &alice,
            &sso_key,
            &known_hosts,
        );
        out.expect_success(&format!("gatehouse login at r{issuer}"));
        let cert = std::fs::read_to_string(format!("{}-cert.pub", sso_key.private.display()))
            .expect("certificate");
        let serial = russh::keys::Certificate::from_openssh(cert.trim())
            .expect("certificate parses")
            .serial();
        assert!(
            audit(issuer)
                .iter()
                .any(|e| e["event"] == "certificate.issued" && e["serial"] == serial),
            "r{issuer} issued serial {serial}"
        );
        only(checker);
        let client = SshClient::new(
            &topology.client,
            &scratch,
            frontend,
            login_name,
            &sso_key.private,
        );
        let out = dash_w(&client, &format!("jupyter:{SSH_PORT}"));
        assert!(
            out.stdout_str().starts_with("SSH-2.0-"),
            "r{checker} takes r{issuer}'s certificate: {out}"
        );
        assert!(
            audit(checker).iter().any(|e| e["event"] == "auth.success"
                && e["user"] == login_name
                && e["certificate"]["serial"] == serial
                && e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("10.240.0.2:"))),
            "r{checker} admitted serial {serial} from the client's own address: {:?}",
            audit(checker)
        );
    }
    for replica in &replicas {
        assert!(!replica.stderr().contains("panicked"), "{}", replica.logs());
    }
}
