//! The proof's rules, each broken once; the replay itself is tested against moto (tests/sso.rs).

use super::*;

const NOW: u64 = 1_796_656_500; // 2026-12-07T15:15:00Z

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

fn binding() -> Binding {
    Binding {
        bastion: "SHA256:bastionbastionbastionbastionbastionbastion1".into(),
        key: "SHA256:aliceskeyaliceskeyaliceskeyaliceskeyalices1".into(),
    }
}

fn credentials(token: Option<&str>) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        "ASIAEXAMPLEEXAMPLE00",
        "secretsecretsecretsecretsecretsecret0000",
        token.map(str::to_owned),
        None,
        "test",
    )
}

fn proof() -> Proof {
    sign(
        &credentials(Some("session-token")),
        "us-east-1",
        &sts_endpoint("us-east-1"),
        &binding(),
        now(),
    )
    .expect("signed")
}

fn with_header(mut proof: Proof, name: &str, value: &str) -> Proof {
    match proof.headers.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v = value.to_owned(),
        None => proof.headers.push((name.to_owned(), value.to_owned())),
    }
    proof
}

#[test]
fn a_signed_proof_passes_and_names_its_time_and_headers() {
    let proof = proof();
    let checked = check(&proof, &binding(), None, now()).expect("checked");
    assert_eq!(checked.made, now());
    assert_eq!(checked.url, "https://sts.us-east-1.amazonaws.com/");
    let names: Vec<&str> = checked.headers.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "authorization",
        "host",
        "x-amz-date",
        "x-amz-security-token",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    let authorization = header(&checked.headers, "authorization").expect("signed");
    assert!(
        authorization.starts_with(
            "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE00/20261207/us-east-1/sts/aws4_request"
        ),
        "{authorization}"
    );
    let signed = signed_headers(authorization).expect("signed headers");
    for name in SIGNED {
        assert!(signed.iter().any(|s| s == name), "{signed:?}");
    }
    // It travels as JSON and reads back the same.
    let text = serde_json::to_string(&proof).expect("json");
    assert!(text.len() < MAX_PROOF_BYTES, "{}", text.len());
    assert_eq!(parse(&text).expect("parsed"), proof);
}

#[test]
fn a_proof_for_another_bastion_or_another_key_is_refused() {
    let other = Binding {
        bastion: "SHA256:otherbastion".into(),
        ..binding()
    };
    assert!(matches!(
        check(&proof(), &other, None, now()),
        Err(ProofError::Binding {
            what: "bastion",
            ..
        })
    ));
    let other = Binding {
        key: "SHA256:otherkey".into(),
        ..binding()
    };
    assert!(matches!(
        check(&proof(), &other, None, now()),
        Err(ProofError::Binding { what: "key", .. })
    ));
}

#[test]
fn only_sts_endpoints_are_accepted() {
    for url in [
        "https://evil.example/",
        "https://sts.amazonaws.com.evil.example/",
        "http://sts.amazonaws.com/",
        "https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity",
        "https://sts.us-east-1.amazonaws.com:8443/",
        "https://user@sts.amazonaws.com/",
        "https://iam.amazonaws.com/",
        "https://sts.us-east-1.amazonaws.com/path",
        "https://169.254.169.254/",
        "http://127.0.0.1:5000/",
    ] {
        let mut p = proof();
        p.url = url.into();
        assert_eq!(
            check(&p, &binding(), None, now()),
            Err(ProofError::NotSts(url.into())),
            "{url}"
        );
    }
    for url in [
        "https://sts.amazonaws.com/",
        "https://sts.eu-central-1.amazonaws.com/",
        "https://sts-fips.us-east-1.amazonaws.com/",
        "https://sts.cn-north-1.amazonaws.com.cn/",
    ] {
        assert!(sts_host(url, None).is_some(), "{url}");
    }
    // The daemon's endpoint override (a test rig's moto) is accepted exactly, nothing near it.
    let moto = "http://127.0.0.1:5000";
    let p = sign(&credentials(None), "us-east-1", moto, &binding(), now()).expect("signed");
    check(&p, &binding(), Some(moto), now()).expect("the override");
    let mut p = p;
    p.url = "http://127.0.0.1:5001".into();
    assert!(matches!(
        check(&p, &binding(), Some(moto), now()),
        Err(ProofError::NotSts(_))
    ));
}

#[test]
fn only_get_caller_identity_with_known_signed_headers_is_accepted() {
    let mut p = proof();
    p.body = "Action=AssumeRole&Version=2011-06-15".into();
    assert_eq!(
        check(&p, &binding(), None, now()),
        Err(ProofError::NotGetCallerIdentity)
    );
    let p = with_header(proof(), "x-forwarded-for", "10.0.0.1");
    assert_eq!(
        check(&p, &binding(), None, now()),
        Err(ProofError::Header("x-forwarded-for".into()))
    );
    let p = with_header(proof(), "host", "sts.eu-west-1.amazonaws.com");
    assert!(matches!(
        check(&p, &binding(), None, now()),
        Err(ProofError::Malformed(_))
    ));
    // A binding header left out of the signature: refused before STS would notice.
    let p = proof();
    let authorization = header(&p.headers, "authorization")
        .expect("auth")
        .to_owned();
    let unsigned = authorization.replace(&format!(";{BASTION_HEADER}"), "");
    assert_ne!(unsigned, authorization);
    let p = with_header(p, "authorization", &unsigned);
    assert_eq!(
        check(&p, &binding(), None, now()),
        Err(ProofError::Unsigned(BASTION_HEADER))
    );
    let mut p = proof();
    let twice = p.headers[0].clone();
    p.headers.push(twice);
    assert!(matches!(
        check(&p, &binding(), None, now()),
        Err(ProofError::Malformed(_))
    ));
}

#[test]
fn a_stale_or_future_proof_is_refused() {
    let later = now() + MAX_AGE + Duration::from_secs(1);
    assert_eq!(
        check(&proof(), &binding(), None, later),
        Err(ProofError::Stale(MAX_AGE.as_secs() + 1))
    );
    check(&proof(), &binding(), None, now() + MAX_AGE).expect("just in time");
    let earlier = now() - MAX_SKEW - Duration::from_secs(1);
    assert_eq!(
        check(&proof(), &binding(), None, earlier),
        Err(ProofError::Future(MAX_SKEW.as_secs() + 1))
    );
}

#[test]
fn proofs_are_read_bounded_and_strict() {
    let big = format!("{{\"url\":\"{}\"}}", "a".repeat(MAX_PROOF_BYTES));
    assert_eq!(parse(&big), Err(ProofError::TooLarge));
    assert!(matches!(
        parse(r#"{"url":"https://sts.amazonaws.com/","headers":[],"body":"","extra":1}"#),
        Err(ProofError::Malformed(_))
    ));
    assert!(matches!(parse("not json"), Err(ProofError::Malformed(_))));
}

#[test]
fn amz_dates_are_read_exactly() {
    assert_eq!(amz_date("20261207T151500Z"), Ok(now()));
    assert_eq!(
        amz_date("20000229T000001Z"),
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_401))
    );
    for bad in [
        "",
        "20261207151500Z",
        "20261307T151500Z",
        "2026120xT151500Z",
        "20261207T251500Z",
    ] {
        assert!(amz_date(bad).is_err(), "{bad}");
    }
}

#[test]
fn stss_answers_are_read_for_the_caller_and_the_refusal() {
    let ok = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
        <GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/R/s</Arn>\
        <UserId>AROA:s</UserId><Account>123456789012</Account></GetCallerIdentityResult>\
        </GetCallerIdentityResponse>";
    assert_eq!(
        xml_text(ok, "Arn").as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/R/s")
    );
    assert_eq!(xml_text(ok, "Account").as_deref(), Some("123456789012"));
    let refused = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>\
        <Message>...</Message></Error></ErrorResponse>";
    assert_eq!(
        xml_text(refused, "Code").as_deref(),
        Some("SignatureDoesNotMatch")
    );
    assert_eq!(xml_text("<<<", "Arn"), None);
}

#[test]
fn two_proofs_made_in_the_same_second_differ_by_their_signed_nonce() {
    let (a, b) = (proof(), proof());
    let authorization = |p: &Proof| header(&p.headers, "authorization").map(str::to_owned);
    assert_ne!(authorization(&a), authorization(&b));
    let nonce = header(&a.headers, NONCE_HEADER).expect("a nonce");
    assert_eq!(nonce.len(), 32, "{nonce}");
    assert!(check(&a, &binding(), None, now()).is_ok());
    // A proof whose nonce is not signed in is refused like any unsigned binding.
    let signed = header(&a.headers, "authorization")
        .unwrap_or_default()
        .to_owned();
    let unsigned = with_header(
        a.clone(),
        "authorization",
        &signed.replace(";x-gatehouse-nonce", ""),
    );
    assert_eq!(
        check(&unsigned, &binding(), None, now()),
        Err(ProofError::Unsigned(NONCE_HEADER))
    );
}
