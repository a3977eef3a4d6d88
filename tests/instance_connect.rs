//! The last hop with EC2 Instance Connect, end to end: the real gatehouse (AWS mode, with
//! `instance_connect = true`) against moto behind the recording proxy, and a private host
//! whose OpenSSH sshd has **no authorized_keys**, only an `AuthorizedKeysCommand` like the
//! stock `ec2-instance-connect` package's, reading the keys pushed in the last 60 s from a
//! stand-in of the instance metadata service (`tests/py/eic_host.py`). moto answers
//! `SendSSHPublicKey` without keeping the key, so the proxy records each push moto accepted
//! on its way, and the metadata stand-in serves those.
//!
//! Covered: a permitted user's `ssh -J` lands on the host (the push is audited with the
//! key's fingerprint); one push per tunnel, each audited, none kept by the bastion (the
//! key's minute on the host is EC2 Instance Connect's rule, which the metadata stand-in
//! plays: checked as the rig's, not as gatehouse's); another group's
//! user is refused at the bastion and nothing is pushed; an ECDSA key is refused with the
//! reason and nothing is sent to AWS; AWS refusing the push refuses the tunnel with the reason
//! (and the log names the missing action); with AWS latency added the push is seen to wait
//! for it; a host whose login tag is removed is reached without any push.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::aws::{dash_w, fixture, read_audit, start_gatehouse, write_config, Proxy, Settings};
use crate::harness::jupyter::py_script;
use crate::harness::moto_ns::NsMoto as Moto;
use crate::harness::{
    run_with_timeout, CmdOutput, Daemon, KeyPair, KeyType, Scratch, SshClient, Sshd, SshdConfig,
    Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR, TEST_USER,
};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// The push action, as the proxy counts it and the daemon names it.
pub(super) const PUSH: &str = "ec2-instance-connect:SendSSHPublicKey";

/// The pushes moto accepted, as the proxy recorded them.
pub(super) fn pushes(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("push line {l:?}: {e}")))
        .collect()
}

/// Lets `seconds` pass for the pushes made so far (as the metadata service sees them).
fn age_pushes(path: &Path, seconds: f64) {
    let aged: Vec<String> = pushes(path)
        .into_iter()
        .map(|mut p| {
            p["at"] = json!(p["at"].as_f64().expect("push time") - seconds);
            p.to_string()
        })
        .collect();
    std::fs::write(path, aged.join("\n") + "\n").expect("rewrite the pushes");
}

/// The `type base64` part of a public key line: what the bastion pushes.
fn key_body(public_line: &str) -> String {
    public_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The private host as an EC2 instance with the stock EC2 Instance Connect package sees it:
/// its metadata service (serving the keys pushed for `instance_id` in the last minute, from
/// the proxy's `pushes` file) and an OpenSSH sshd on the private address with no
/// authorized_keys at all, only an `AuthorizedKeysCommand` reading that service.
pub(super) fn eic_host(
    topology: &Topology,
    scratch: &Scratch,
    pushes: &Path,
    instance_id: &str,
) -> (Daemon, Sshd) {
    let mut imds_cmd = topology.private.command("python3");
    imds_cmd
        .arg(py_script("eic_host.py"))
        .arg("imds")
        .arg(pushes)
        .arg(instance_id);
    let (imds, imds_url) = start_imds("eic_imds", imds_cmd, scratch);
    let sshd = SshdConfig::private_host((PRIVATE_ADDR, 22).into())
        .config_line("AuthorizedKeysFile none")
        .config_line(&format!(
            "AuthorizedKeysCommand /usr/bin/python3 {} keys {imds_url} %u",
            py_script("eic_host.py").display()
        ))
        .config_line("AuthorizedKeysCommandUser nobody")
        .start(&topology.private, scratch, "private_sshd");
    (imds, sshd)
}

/// Starts a metadata stand-in (`fake_imds.py`, `eic_host.py imds`) and returns it with its
/// URL, from the line it prints once listening.
pub(super) fn start_imds(
    name: &str,
    cmd: std::process::Command,
    scratch: &Scratch,
) -> (Daemon, String) {
    let mut imds = Daemon::spawn(name, cmd, scratch);
    let line = imds.wait_for_stdout("imds listening on ", Duration::from_secs(20));
    let url = format!(
        "http://{}",
        line.lines()
            .find_map(|l| l.strip_prefix("imds listening on "))
            .expect("imds address")
            .trim()
    );
    (imds, url)
}

/// `ssh -J bastion ghtest@jupyter echo reached`, through the client's config.
fn hop(client: &SshClient) -> CmdOutput {
    let mut ssh = client.ssh();
    ssh.args(["jupyter-box", "echo", "reached"]);
    run_with_timeout(ssh, CMD_TIMEOUT)
}

fn key_pushed_lines(audit: &Path) -> Vec<Value> {
    read_audit(audit)
        .into_iter()
        .filter(|l| l["event"] == "target.key_pushed")
        .collect()
}

#[test]
fn aws_instance_connect_pushes_the_login_key_once_per_tunnel_and_never_when_refused() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let moto = Moto::start_in(&topology.bastion);
    let pushes_file = scratch.path().join("pushes.jsonl");
    let proxy = Proxy::start_recording(&topology, &scratch, moto.addr().port(), Some(&pushes_file));
    let alice = KeyPair::ed25519(&scratch, "alice_key");
    let bob = KeyPair::ed25519(&scratch, "bob_key");
    let erin = KeyPair::generate(&scratch, "erin_key", KeyType::Ecdsa);
    let r = fixture(
        &topology,
        &moto,
        json!([
            {"op": "vpc", "cidr": "10.0.0.0/16", "subnet": "10.0.3.0/24"},
            {"op": "user", "name": "alice", "groups": "research", "keys": [alice.public_line.trim()]},
            {"op": "user", "name": "bob", "groups": "ops", "keys": [bob.public_line.trim()]},
            {"op": "user", "name": "erin", "groups": "research", "keys": [erin.public_line.trim()]},
        ]),
    );
    let vpc_id = r[0]["vpc_id"].as_str().expect("vpc id").to_owned();
    let subnet_id = r[0]["subnet_id"].as_str().expect("subnet id").to_owned();
    let r = fixture(
        &topology,
        &moto,
        json!([{"op": "instance", "subnet_id": subnet_id, "ip": PRIVATE_ADDR.to_string(),
                "tags": {"Name": "jupyter", "gatehouse:groups": "research",
                         "gatehouse:ports": "22", "gatehouse:login": TEST_USER}}]),
    );
    let jupyter_id = r[0]["id"].as_str().expect("instance id").to_owned();

    let config = write_config(
        &scratch,
        "gatehouse",
        &proxy.url(),
        &Settings {
            max_staleness: "1m",
            vpc_ids: vec![vpc_id],
            listen_port: 22,
        },
    );
    // [aws] is the config's last table.
    let text = std::fs::read_to_string(&config).expect("config") + "instance_connect = true\n";
    std::fs::write(&config, text).expect("config");
    let gatehouse = start_gatehouse(&topology, &scratch, &config, "gatehouse");
    let audit = scratch.join("gatehouse.audit.jsonl");

    let (mut imds, mut sshd) = eic_host(&topology, &scratch, &pushes_file, &jupyter_id);

    let bastion = (BASTION_CLIENT_ADDR, 22).into();
    let client = |user: &str, key: &KeyPair| {
        let mut c = SshClient::new(&topology.client, &scratch, bastion, user, &key.private);
        c.add_target("jupyter-box", "jupyter", 22, TEST_USER, None);
        c
    };
    let alice_client = client("alice", &alice);

    // 1. alice: ssh -J bastion ghtest@jupyter, with nothing installed on the host.
    let out = hop(&alice_client);
    out.expect_success("ssh -J bastion jupyter as alice, key pushed");
    assert_eq!(out.stdout_str().trim(), "reached");
    sshd.daemon().wait_for_stderr(
        &format!("Accepted publickey for {TEST_USER}"),
        Duration::from_secs(5),
    );
    let recorded = pushes(&pushes_file);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["instance"], jupyter_id.as_str());
    assert_eq!(recorded[0]["user"], TEST_USER);
    assert_eq!(recorded[0]["key"], key_body(&alice.public_line).as_str());
    let pushed = key_pushed_lines(&audit);
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["user"], "alice");
    assert_eq!(pushed[0]["host"], jupyter_id.as_str());
    assert_eq!(pushed[0]["os_users"], json!([TEST_USER]));
    assert_eq!(pushed[0]["key"], alice.fingerprint().as_str());
    let unloaded_ms = pushed[0]["duration_ms"].as_u64().expect("duration");

    // 2. The pushed key opens the host (straight from the private network, not through the
    //    bastion) for the minute EC2 Instance Connect gives it, and then no more. That minute
    //    is the fixture's rule (`py/eic_host.py` plays the host's metadata service): this
    //    checks the rig. What gatehouse does is below: a push for each tunnel, none kept.
    let direct = SshClient::new(
        &topology.private,
        &scratch,
        (PRIVATE_ADDR, 22).into(),
        TEST_USER,
        &alice.private,
    );
    let direct_login = || {
        let mut ssh = direct.ssh();
        ssh.args(["bastion", "echo", "direct"]);
        run_with_timeout(ssh, CMD_TIMEOUT)
    };
    direct_login().expect_success("the pushed key within its minute");
    age_pushes(&pushes_file, 61.0);
    let out = direct_login();
    out.expect_failure("the pushed key after its minute");
    assert!(out.stderr_str().contains("Permission denied"), "{out}");
    // A new connection through the bastion pushes it again.
    hop(&alice_client).expect_success("ssh -J after the minute");
    assert_eq!(pushes(&pushes_file).len(), 2);

    // 3. bob (group ops) is refused at the bastion, and nothing is pushed.
    // (`-W`, the channel `-J` opens, shown at LogLevel INFO so the bastion's reason shows.)
    let out = dash_w(&client("bob", &bob), "jupyter:22");
    out.expect_failure("bob to a research host");
    assert!(
        out.stderr_str()
            .contains("'jupyter' is not a host this bastion forwards to"),
        "{out}"
    );
    // 4. erin's ECDSA key: EC2 Instance Connect would refuse it, so the bastion says so.
    let out = dash_w(&client("erin", &erin), "jupyter:22");
    out.expect_failure("erin with an ECDSA key");
    assert!(
        out.stderr_str().contains("takes ed25519 and RSA keys"),
        "{out}"
    );
    assert_eq!(pushes(&pushes_file).len(), 2, "bob and erin pushed nothing");
    assert_eq!(proxy.control("/__proxy/counts")[PUSH], 2);
    // What gatehouse does: exactly one push for each tunnel it opened to the SSH port, each
    // audited, and none for a tunnel it refused.
    let opened = read_audit(&audit)
        .into_iter()
        .filter(|l| l["event"] == "tunnel.open" && l["port"] == 22)
        .count();
    assert_eq!(opened, 2, "{:?}", read_audit(&audit));
    assert_eq!(key_pushed_lines(&audit).len(), opened);

    // 5. AWS refuses the push: the tunnel is refused with the reason; the log names the
    //    action the role lacks; the audit has the refusal.
    proxy.control(&format!("/__proxy/deny?action={PUSH}"));
    let out = dash_w(&alice_client, "jupyter:22");
    out.expect_failure("the tunnel with the push denied");
    assert!(
        out.stderr_str().contains("could not give your key to host")
            && out.stderr_str().contains("AccessDeniedException"),
        "{out}"
    );
    let deny = read_audit(&audit)
        .into_iter()
        .find(|l| {
            l["event"] == "tunnel.deny"
                && l["reason_code"] == "key_push_failed"
                && l["user"] == "alice"
        })
        .unwrap_or_else(|| panic!("no key_push_failed refusal\n{}", gatehouse.logs()));
    assert!(
        deny["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("lacks the action {PUSH}"))),
        "{deny}"
    );
    assert!(
        gatehouse
            .stderr()
            .contains(&format!("lacks the action {PUSH}")),
        "{}",
        gatehouse.logs()
    );
    proxy.control(&format!("/__proxy/allow?action={PUSH}"));

    // 6. With 50 ms added to every AWS call, the push (and so the login) waits for it.
    proxy.control("/__proxy/delay?ms=50");
    let started = Instant::now();
    hop(&alice_client).expect_success("ssh -J with AWS 50 ms away");
    let hop_ms = started.elapsed().as_millis();
    proxy.control("/__proxy/delay?ms=0");
    let last = key_pushed_lines(&audit).pop().expect("a push");
    let loaded_ms = last["duration_ms"].as_u64().expect("duration");
    assert!(loaded_ms >= 50, "the push did not wait for AWS: {last}");
    eprintln!(
        "key push: {unloaded_ms} ms against moto, {loaded_ms} ms with 50 ms added per AWS \
         call (whole ssh -J login {hop_ms} ms)"
    );

    // 7. The login tag removed: the host is an ordinary target again, reached without a push
    //    (once a refresh has seen the tag gone).
    fixture(
        &topology,
        &moto,
        json!([{"op": "untag", "id": jupyter_id, "key": "gatehouse:login"}]),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = pushes(&pushes_file).len();
        let out = dash_w(&alice_client, "jupyter:22");
        assert!(out.stdout_str().starts_with("SSH-2.0-"), "{out}");
        if pushes(&pushes_file).len() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still pushing 20 s after the login tag was removed"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(sshd);
    imds.terminate(Duration::from_secs(5));
}
