//! Proving an AWS identity to the bastion (`gatehouse_aws::sts_proof`) against moto: the
//! credentials of an SSO-style session (a role named like IAM Identity Center's, assumed with
//! the user's email as the session name) sign a proof bound to a bastion and a key; checked
//! and replayed, STS names that session. The proof's rules are unit-tested in gatehouse-aws;
//! this shows the signed request is one STS accepts, and that the caller maps as expected.

use std::process::Command;
use std::time::{Duration, SystemTime};

use gatehouse_aws::sts_proof::{self, Binding, Caller};

use crate::harness::moto::Moto;
use crate::harness::run_with_timeout;

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
        Ok(Caller::Sso {
            permission_set: "Research".into(),
            role: "AWSReservedSSO_Research_0123abcd".into(),
            session: "alice@example.org".into(),
        })
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
