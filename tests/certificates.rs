//! Certificates from a trusted CA, and access that ends by itself: the real `gatehouse` with
//! `[[trusted_user_ca]]`, certificates made by `ssh-keygen -s` from a CA key the test makes,
//! the stock OpenSSH client. A valid certificate jumps; each bad one is refused with its
//! reason in the audit log (or, for a certificate outside its validity window, which russh
//! refuses before gatehouse sees it, in the daemon's log); a static user's `expires` closes
//! the open tunnel at that instant; a key whose `expiry-time` passed is refused.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::bastion::{
    addr, dash_w, is, start_rig, write_config, Rig, ServerOptions, CMD_TIMEOUT, SSH_PORT,
};
use crate::harness::{
    run_with_timeout, KeyPair, KeyType, Scratch, SshClient, Topology, PRIVATE_ADDR, TEST_USER,
};

/// Longest a session may outlive its expiry (the timer fires at the instant; this is the
/// disconnect and the client noticing).
const EXPIRY_BOUND: Duration = Duration::from_secs(2);

/// Signs `key` with `ca` (`ssh-keygen -s`): key id `id`, serial `serial`, principals
/// `principals` (comma-separated), plus `extra` arguments (`-V`, `-O`). The certificate is
/// written to `<scratch>/certs/<id>-cert.pub`, out of OpenSSH's automatic `<key>-cert.pub`
/// path, so that only the one a client names is offered.
fn sign(
    scratch: &Scratch,
    ca: &KeyPair,
    key: &KeyPair,
    id: &str,
    serial: u64,
    principals: &str,
    extra: &[&str],
) -> PathBuf {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-s"]).arg(&ca.private);
    cmd.args(["-I", id, "-z", &serial.to_string(), "-n", principals]);
    cmd.args(extra);
    cmd.arg(&key.public);
    run_with_timeout(cmd, Duration::from_secs(30)).expect_success(&format!("ssh-keygen -s ({id})"));
    let made = PathBuf::from(format!("{}-cert.pub", key.private.display()));
    let dir = scratch.subdir("certs");
    let cert = dir.join(format!("{id}-cert.pub"));
    std::fs::rename(&made, &cert).unwrap_or_else(|e| panic!("move {}: {e}", made.display()));
    cert
}

/// The rig of `bastion.rs` plus user `carol` (group research, a key of her own that the
/// tests never use) and a trusted CA mapping `carol@example.org` to her. Certificates are
/// made for alice's key, which the private sshd authorizes, so a certificate that gets
/// through the bastion also reaches the host.
fn cert_rig() -> (Rig, KeyPair, KeyPair) {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::generate(&scratch, "bob_key", KeyType::Rsa);
    let carol_own = KeyPair::ed25519(&scratch, "carol_own");
    let ca = KeyPair::ed25519(&scratch, "test_ca");
    let other_ca = KeyPair::ed25519(&scratch, "other_ca");
    let extra = format!(
        "[penalties]\nenabled = false\n\n\
         [[users]]\nname = \"carol\"\nkeys = [\"{carol}\"]\ngroups = [\"research\"]\n\n\
         [[trusted_user_ca]]\nname = \"test-ca\"\nkeys = [\"{ca}\"]\n\
         principals = {{ \"carol@example.org\" = \"carol\" }}\nmax_validity = \"30d\"\n",
        carol = carol_own.public_line,
        ca = ca.public_line,
    );
    let opts = ServerOptions {
        extra,
        ..ServerOptions::default()
    };
    let config = write_config(&scratch, &alice_key, &bob_key, &opts);
    let rig = start_rig(topology, scratch, alice_key, bob_key, config);
    (rig, ca, other_ca)
}

/// A client logging in as `user` with alice's key and the certificate `cert`.
fn cert_client(rig: &Rig, user: &str, cert: &std::path::Path) -> SshClient {
    let mut client = rig.client(user, &rig.alice_key.private);
    client.option("CertificateFile", &cert.display().to_string());
    client
}

/// A refused certificate: serial, login, signing CA, principals, `ssh-keygen` arguments,
/// the expected `reason_code` and words of its reason.
type Case<'a> = (
    u64,
    &'a str,
    &'a KeyPair,
    &'a str,
    &'a [&'a str],
    &'a str,
    &'a str,
);

/// The `auth.failure` line of the certificate with serial `serial`.
fn refused(rig: &Rig, serial: u64) -> Value {
    rig.wait_audit(&format!("auth.failure of certificate {serial}"), |l| {
        is(l, "auth.failure") && l["certificate"]["serial"] == serial
    })
}

#[test]
fn a_trusted_certificate_jumps_and_each_bad_one_is_refused_with_its_reason() {
    let (rig, ca, other_ca) = cert_rig();
    let key = &rig.alice_key;
    let scratch = &rig.scratch;

    // A valid certificate: ssh -J reaches the private host, audited with the certificate.
    let good = sign(
        scratch,
        &ca,
        key,
        "carol-laptop",
        1,
        "carol@example.org",
        &["-V", "-5m:+1h"],
    );
    let carol = cert_client(&rig, "carol", &good);
    let mut ssh = carol.ssh();
    ssh.args(["-J", "bastion", &format!("{TEST_USER}@jupyter"), "id -un"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_success("ssh -J bastion with a certificate");
    assert_eq!(out.stdout_str().trim(), TEST_USER);
    let ok = rig.wait_audit("certificate auth.success", |l| {
        is(l, "auth.success") && l["user"] == "carol"
    });
    assert_eq!(ok["certificate"]["ca"], "test-ca", "{ok}");
    assert_eq!(ok["certificate"]["key_id"], "carol-laptop", "{ok}");
    assert_eq!(ok["certificate"]["serial"], 1, "{ok}");
    assert_eq!(ok["certificate"]["principal"], "carol@example.org", "{ok}");
    assert!(ok["certificate"]["valid_before"].is_string(), "{ok}");
    assert_eq!(ok["key"], key.fingerprint(), "{ok}");
    rig.wait_audit("carol's tunnel", |l| {
        is(l, "tunnel.open") && l["user"] == "carol" && l["host"] == "jupyter"
    });

    // Each bad certificate: refused, with its reason in the audit line.
    let cases: [Case; 7] = [
        (
            10,
            "carol",
            &other_ca,
            "carol@example.org",
            &[],
            "untrusted_ca",
            "not trusted",
        ),
        (
            11,
            "carol",
            &ca,
            "mallory@example.org",
            &[],
            "principal_not_mapped",
            "mallory@example.org",
        ),
        (
            12,
            "carol",
            &ca,
            "carol@example.org",
            &["-O", "clear"],
            "no_port_forwarding",
            "permit-port-forwarding",
        ),
        (
            13,
            "carol",
            &ca,
            "carol@example.org",
            &["-O", "source-address=192.0.2.0/24"],
            "source_address",
            "192.0.2.0/24",
        ),
        (
            14,
            "carol",
            &ca,
            "carol@example.org",
            &["-O", "force-command=/bin/true"],
            "force_command",
            "runs no command",
        ),
        (
            15,
            "carol",
            &ca,
            "carol@example.org",
            &["-O", "critical:frobnicate@example.com=yes"],
            "unknown_critical_option",
            "frobnicate@example.com",
        ),
        (
            16,
            "carol",
            &ca,
            "carol@example.org",
            &["-V", "-1h:+40d"],
            "validity_too_long",
            "max_validity",
        ),
    ];
    for (serial, user, signer, principals, extra, code, words) in cases {
        // Valid for an hour unless the case says otherwise.
        let mut args = vec!["-V", "-5m:+1h"];
        if extra.contains(&"-V") {
            args.clear();
        }
        args.extend_from_slice(extra);
        let cert = sign(
            scratch,
            signer,
            key,
            &format!("case-{serial}"),
            serial,
            principals,
            &args,
        );
        let out = dash_w(
            &cert_client(&rig, user, &cert),
            &format!("jupyter:{SSH_PORT}"),
        );
        out.expect_failure(&format!("certificate {serial} ({code})"));
        let line = refused(&rig, serial);
        assert_eq!(line["reason_code"], code, "{line}");
        assert!(
            line["reason"].as_str().unwrap_or("").contains(words),
            "{line}"
        );
        assert_eq!(
            line["certificate"]["key_id"],
            format!("case-{serial}"),
            "{line}"
        );
        assert_eq!(
            line["source"]
                .as_str()
                .map(|s| s.starts_with("10.240.0.2:")),
            Some(true),
            "{line}"
        );
    }
    // The matching source address is let in.
    let here = sign(
        scratch,
        &ca,
        key,
        "case-17",
        17,
        "carol@example.org",
        &["-V", "-5m:+1h", "-O", "source-address=10.240.0.0/24"],
    );
    dash_w(
        &cert_client(&rig, "carol", &here),
        &format!("{PRIVATE_ADDR}:{SSH_PORT}"),
    )
    .expect_success("a certificate whose source-address holds the client");

    // Outside the validity window: russh refuses these before gatehouse sees them; the
    // daemon's log says why, and nothing is admitted.
    for (serial, validity) in [(20, "20200101:20200102"), (21, "+1d:+2d")] {
        let cert = sign(
            scratch,
            &ca,
            key,
            &format!("case-{serial}"),
            serial,
            "carol@example.org",
            &["-V", validity],
        );
        dash_w(
            &cert_client(&rig, "carol", &cert),
            &format!("jupyter:{SSH_PORT}"),
        )
        .expect_failure(&format!("certificate valid {validity}"));
    }
    let log = rig.gatehouse.stderr();
    assert_eq!(
        log.matches("Certificate is expired or not yet valid")
            .count(),
        2,
        "daemon log:\n{log}"
    );
    let admitted: Vec<Value> = rig
        .audit()
        .into_iter()
        .filter(|l| is(l, "auth.success"))
        .collect();
    let serials: Vec<&Value> = admitted
        .iter()
        .map(|l| &l["certificate"]["serial"])
        .collect();
    assert_eq!(serials, [&Value::from(1), &Value::from(17)], "{admitted:?}");
}

#[test]
fn a_certificate_session_ends_when_the_certificate_expires() {
    let (rig, ca, _) = cert_rig();
    let cert = sign(
        &rig.scratch,
        &ca,
        &rig.alice_key,
        "short",
        30,
        "carol@example.org",
        &["-V", "-1m:+6s"],
    );
    let carol = cert_client(&rig, "carol", &cert);
    let mut forward = carol.local_forward(
        &rig.scratch,
        "carol_forward",
        18_091,
        "jupyter",
        SSH_PORT,
        "bastion",
    );
    let ok = rig.wait_audit("auth.success", |l| is(l, "auth.success"));
    let valid_before = ok["certificate"]["valid_before"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let valid_before = humantime::parse_rfc3339(&valid_before).expect("valid_before");
    let line = rig.wait_audit("session.expired", |l| is(l, "session.expired"));
    assert_eq!(line["user"], "carol", "{line}");
    assert_eq!(
        line["reason"],
        format!(
            "access expired at {}",
            humantime::format_rfc3339_seconds(valid_before)
        ),
        "{line}"
    );
    let at = humantime::parse_rfc3339(line["ts"].as_str().unwrap_or("")).expect("ts");
    let late = at
        .duration_since(valid_before)
        .unwrap_or_else(|e| panic!("expired {:?} before valid_before", e.duration()));
    assert!(
        late <= EXPIRY_BOUND,
        "session.expired {late:?} after valid_before"
    );
    // The client's forwarding session is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while forward.is_running() {
        assert!(
            Instant::now() < deadline,
            "ssh -L still running after the expiry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let close = rig.wait_audit("session.close", |l| is(l, "session.close"));
    assert!(
        close["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("access expired at"),
        "{close}"
    );
}

/// `expires` for alice `secs` seconds from now, as an RFC 3339 string, and that instant.
fn expiring_config(secs: u64) -> (Rig, SystemTime) {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::generate(&scratch, "bob_key", KeyType::Rsa);
    let config = write_config(&scratch, &alice_key, &bob_key, &ServerOptions::default());
    let at = SystemTime::now() + Duration::from_secs(secs);
    // Whole seconds: what the config can say.
    let text = humantime::format_rfc3339_seconds(at).to_string();
    let at = humantime::parse_rfc3339(&text).expect("rfc3339");
    let toml = std::fs::read_to_string(&config).expect("config");
    let toml = toml.replacen(
        "name = \"alice\"\n",
        &format!("name = \"alice\"\nexpires = \"{text}\"\n"),
        1,
    );
    std::fs::write(&config, toml).expect("write config");
    (start_rig(topology, scratch, alice_key, bob_key, config), at)
}

#[test]
fn a_static_users_open_tunnel_closes_at_the_expiry_and_new_logins_are_refused() {
    let (rig, at) = expiring_config(8);
    // The hint tells the user when access ends.
    let mut ssh = rig.alice.ssh();
    ssh.args(["-o", "LogLevel=INFO", "bastion", "true"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    let shown = humantime::format_rfc3339_seconds(at).to_string();
    assert!(
        out.stderr_str()
            .contains(&format!("your access ends at {shown}")),
        "{out}"
    );
    let mut tunnel = rig.echo_tunnel(18_090, b"hello");
    tunnel
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let _ = tunnel.stream.read_to_end(&mut rest);
    let late = SystemTime::now()
        .duration_since(at)
        .unwrap_or_else(|e| panic!("tunnel closed {:?} before the expiry", e.duration()));
    assert!(
        late <= EXPIRY_BOUND,
        "tunnel closed {late:?} after the expiry"
    );
    let line = rig.wait_audit("session.expired", |l| is(l, "session.expired"));
    assert_eq!(line["user"], "alice", "{line}");
    assert_eq!(line["expired_at"], shown.as_str(), "{line}");
    rig.wait_audit("tunnel.close", |l| {
        is(l, "tunnel.close") && l["user"] == "alice"
    });
    // From now on, alice is refused with the reason.
    rig.dash_w(&format!("jupyter:{SSH_PORT}"))
        .expect_failure("a login after the expiry");
    let refused = rig.wait_audit("auth.failure after the expiry", |l| {
        is(l, "auth.failure") && l["user"] == "alice"
    });
    assert_eq!(
        refused["reason"],
        format!("access expired at {shown}"),
        "{refused}"
    );
}

#[test]
fn a_key_whose_expiry_time_passed_is_refused() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::generate(&scratch, "bob_key", KeyType::Rsa);
    let config = write_config(&scratch, &alice_key, &bob_key, &ServerOptions::default());
    let toml = std::fs::read_to_string(&config).expect("config");
    let line = alice_key.public_line.trim();
    let toml = toml.replacen(
        &format!("keys = [\"{line}\"]"),
        &format!("keys = ['expiry-time=\"20200101Z\" {line}']"),
        1,
    );
    std::fs::write(&config, toml).expect("write config");
    let rig = start_rig(topology, scratch, alice_key, bob_key, config);
    rig.dash_w(&format!("{}:{SSH_PORT}", addr(PRIVATE_ADDR, SSH_PORT).ip()))
        .expect_failure("a key past its expiry-time");
    let refused = rig.wait_audit("auth.failure", |l| {
        is(l, "auth.failure") && l["user"] == "alice"
    });
    assert_eq!(
        refused["reason"], "access expired at 2020-01-01T00:00:00Z",
        "{refused}"
    );
    assert!(rig.audit().iter().all(|l| !is(l, "auth.success")));
}
