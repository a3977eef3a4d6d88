//! End-to-end tests of `gatehouse_config::{parse, load}` through the public API only.
//!
//! - shipped: `config/gatehouse.toml` and `config/demo.toml` load.
//! - shape: unknown keys, TOML syntax and type errors, with exact `LINE:COLUMN`.
//! - server: listen addresses, durations, counts, paths and their defaults.
//! - users: names, groups, inline keys, `keys_file`s, duplicate keys.
//! - hosts: names, addresses (forbidden ranges), ports.
//! - reporting: several errors at once, `Display`, the broken files in `tests/bad/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_config::{load, parse, Config, ConfigError, Diagnostic};

const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/QDyYe4rrdgqzIM35BWrczCDZdu7xlBwE9876P1IVv alice@example";
const ALICE2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGlsbDmyPkHePTdnNuTzBlrTbuq3FDyaS8iLeph81Gmh alice2@example";
const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFb0aTa674wN6fvHL2v7jfn2LmXuaiUsnsNaDNPXOkf3 bob@example";
const CAROL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID1/epXfixlSMRU/+nXXI0MBdkXyddgu850H/WDey7iC carol@example";

const ORIGIN: &str = "conf/gatehouse.toml";

/// `[server]` with one listen address: the least a config needs.
const SERVER: &str = "[server]\nlisten = [\"0.0.0.0:22\"]\n";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_key(name: &str) -> String {
    let path = manifest_dir().join("tests/keys").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new(ORIGIN)) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- text:\n{text}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    errors_at(text, Path::new(ORIGIN))
}

fn errors_at(text: &str, origin: &Path) -> Vec<Diagnostic> {
    match parse(text, origin) {
        Ok(_) => panic!("expected errors, config was accepted:\n{text}"),
        Err(ConfigError::Invalid(list)) => {
            assert!(!list.is_empty(), "Invalid with no diagnostics");
            list
        }
        Err(other) => panic!("expected Invalid, got {other:?}"),
    }
}

/// Exactly one error, at `line:column`, whose message contains every one of `needles`.
#[track_caller]
fn one_error(text: &str, line: usize, column: usize, needles: &[&str]) -> Diagnostic {
    let list = errors(text);
    assert_eq!(list.len(), 1, "expected one error, got:\n{}", render(&list));
    let d = list.into_iter().next().expect("one error");
    assert_at(&d, line, column, needles);
    d
}

#[track_caller]
fn assert_at(d: &Diagnostic, line: usize, column: usize, needles: &[&str]) {
    assert_eq!((d.line, d.column), (line, column), "position of: {d}");
    for needle in needles {
        assert!(d.message.contains(needle), "{d}\n  lacks {needle:?}");
    }
}

/// Asserts some error message contains `needle`.
#[track_caller]
fn has_error(list: &[Diagnostic], needle: &str) {
    assert!(
        list.iter().any(|d| d.message.contains(needle)),
        "no error contains {needle:?}:\n{}",
        render(list)
    );
}

fn render(list: &[Diagnostic]) -> String {
    list.iter().map(|d| format!("{d}\n")).collect()
}

fn user(name: &str, key: &str) -> String {
    format!("\n[[users]]\nname = \"{name}\"\nkeys = [\"{key}\"]\ngroups = [\"research\"]\n")
}

fn host(name: &str, address: &str) -> String {
    format!("\n[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\ngroups = [\"research\"]\n")
}

// ---------------------------------------------------------------------------------- shipped

#[test]
fn shipped_reference_config_is_valid() {
    let path = manifest_dir().join("../../config/gatehouse.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.server.listen,
        vec!["0.0.0.0:22".parse().expect("addr")]
    );
    assert_eq!(
        config.server.host_key,
        PathBuf::from("/var/lib/gatehouse/ssh_host_ed25519_key")
    );
    assert_eq!(
        config.audit.file,
        Some(PathBuf::from("/var/log/gatehouse/audit.jsonl"))
    );
    assert_eq!(config.users.len(), 2);
    assert_eq!(config.users.iter().map(|u| u.keys.len()).sum::<usize>(), 3);
    assert_eq!(config.hosts.len(), 3);
    assert_eq!(config.hosts[0].ports, vec![22, 8888]);
    assert_eq!(config.hosts[2].ports, vec![22], "default ports");
    // The reference spells every server key with its default value.
    let defaults = ok(SERVER).server;
    assert_eq!(config.server.login_grace, defaults.login_grace);
    assert_eq!(
        config.server.max_unauthenticated,
        defaults.max_unauthenticated
    );
    assert_eq!(config.server.idle_timeout, defaults.idle_timeout);
    assert_eq!(config.server.connect_timeout, defaults.connect_timeout);
    assert_eq!(
        config.server.keepalive_interval,
        defaults.keepalive_interval
    );
    assert_eq!(config.server.max_auth_attempts, defaults.max_auth_attempts);
    assert_eq!(config.server.shutdown_grace, defaults.shutdown_grace);
    assert_eq!(config.audit.on_failure, defaults_audit().on_failure);
}

fn defaults_audit() -> gatehouse_config::AuditConfig {
    ok(SERVER).audit
}

/// `audit.on_failure`: "refuse" by default (a hardened bastion does nothing its audit log
/// cannot hold), "continue" on request, anything else an error that names both.
#[test]
fn audit_on_failure_refuses_by_default() {
    use gatehouse_config::AuditOnFailure;
    assert_eq!(defaults_audit().on_failure, AuditOnFailure::Refuse);
    let with = |value: &str| format!("{SERVER}[audit]\non_failure = \"{value}\"\n");
    assert_eq!(
        ok(&with("continue")).audit.on_failure,
        AuditOnFailure::Continue
    );
    assert_eq!(ok(&with("refuse")).audit.on_failure, AuditOnFailure::Refuse);
    let errs = errors(&with("ignore"));
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("audit.on_failure")
                && e.to_string().contains("\"refuse\"")
                && e.to_string().contains("\"continue\"")),
        "{errs:?}"
    );
}

#[test]
fn shipped_demo_config_is_valid_once_the_demo_key_exists() {
    // `gatehouse demo` parses the embedded text with an origin inside its state directory,
    // after generating the demo key pair there.
    let text = std::fs::read_to_string(manifest_dir().join("../../config/demo.toml"))
        .expect("config/demo.toml");
    let state = tempfile::tempdir().expect("tempdir");
    let origin = state.path().join("demo.toml");

    // Before the key pair exists: one clear error at the keys_file line.
    let list = errors_at(&text, &origin);
    assert_eq!(list.len(), 1, "{}", render(&list));
    assert!(
        list[0].message.contains("users[0].keys_file: cannot read"),
        "{}",
        list[0]
    );

    let document: toml::Table = text.parse().expect("demo.toml is TOML");
    let keys_file = document["users"][0]["keys_file"]
        .as_str()
        .expect("keys_file");
    let key_path = state.path().join(keys_file);
    std::fs::create_dir_all(key_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&key_path, format!("{ALICE}\n")).expect("write key");

    let config = parse(&text, &origin).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.server.listen.iter().all(|a| a.ip().is_loopback()),
        "demo listens on loopback"
    );
    assert!(
        config.server.host_key.starts_with(state.path()),
        "host key in the state dir"
    );
    assert_eq!(config.users.len(), 1);
    assert_eq!(config.users[0].name, "demo");
    assert_eq!(config.users[0].keys.len(), 1);
    assert_eq!(config.users[0].groups, vec!["demo"]);
    assert_eq!(config.hosts.len(), 1);
    assert_eq!(
        config.hosts[0].address.to_string(),
        "192.0.2.10",
        "TEST-NET-1, never dialed"
    );
}

// ------------------------------------------------------------------------------------ shape

#[test]
fn unknown_top_level_key_is_reported_at_the_key() {
    one_error(
        &format!("listen_all = true\n{SERVER}"),
        1,
        1,
        &["unknown field `listen_all`", "expected one of `server`"],
    );
    // A misspelled table name is an unknown key too.
    one_error(
        &format!("{SERVER}\n[audti]\nfile = \"x\"\n"),
        4,
        2,
        &["unknown field `audti`"],
    );
}

#[test]
fn unknown_nested_keys_name_their_table() {
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\n  lisen = 1\n",
        3,
        3,
        &["server: unknown field `lisen`", "expected one of `listen`"],
    );
    one_error(
        &format!("{SERVER}[audit]\npath = \"a\"\n"),
        4,
        1,
        &["audit: unknown field `path`"],
    );
    let text = format!(
        "{SERVER}{}\n[[users]]\nname = \"bob\"\nkeys = [\"{BOB}\"]\ngroups = [\"x\"]\nshell = \"/bin/sh\"\n",
        user("alice", ALICE)
    );
    one_error(&text, 13, 1, &["users[1]: unknown field `shell`"]);
    let text = format!("{SERVER}{}hostname = \"x\"\n", host("db", "10.0.0.5"));
    one_error(&text, 8, 1, &["hosts[0]: unknown field `hostname`"]);
    // Inline tables are checked the same way.
    let text = format!("hosts = [{{ name = \"db\", address = \"10.0.0.5\", groups = [\"x\"], port = 22 }}]\n{SERVER}");
    one_error(&text, 1, 63, &["hosts[0]: unknown field `port`"]);
}

#[test]
fn toml_syntax_errors_have_positions() {
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"\nx = 1\n",
        3,
        1,
        &["expected `,`"],
    );
    one_error(
        "[server]\nlogin_grace = 20s\n",
        2,
        15,
        &["server.login_grace: string values must be quoted", "`20s`"],
    );
    one_error("[server\nlisten = []\n", 1, 8, &["unclosed table"]);
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\n[server]\n",
        3,
        2,
        &["duplicate key", "`server`"],
    );
    // The earliest of the parser's errors is the one reported, not its consequences.
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22]\nx = 1\n",
        2,
        23,
        &["invalid basic string"],
    );
}

#[test]
fn wrong_types_name_the_key() {
    one_error(
        "[server]\nlisten = \"0.0.0.0:22\"\n",
        2,
        10,
        &["server.listen: invalid type: string", "expected a sequence"],
    );
    one_error(
        &format!("{SERVER}max_auth_attempts = \"6\"\n"),
        3,
        21,
        &["server.max_auth_attempts", "expected an integer"],
    );
    one_error(
        &format!("{SERVER}max_auth_attempts = 1.5\n"),
        3,
        21,
        &["server.max_auth_attempts", "expected an integer"],
    );
    one_error(
        &format!("{SERVER}login_grace = 20\n"),
        3,
        15,
        &["server.login_grace: invalid type: integer `20`, expected a string"],
    );
    one_error(
        "server = 5\n",
        1,
        10,
        &["server: invalid type", "expected a table"],
    );
    let text = format!("{SERVER}{}", user("alice", ALICE)).replace("keys = [", "keys = [5, ");
    one_error(&text, 6, 9, &["users[0].keys[0]: invalid type: integer"]);
}

// ----------------------------------------------------------------------------------- server

#[test]
fn minimal_config_gets_every_default() {
    let config = ok(SERVER);
    let s = &config.server;
    assert_eq!(
        s.host_key,
        PathBuf::from(gatehouse_config::DEFAULT_HOST_KEY)
    );
    assert_eq!(s.login_grace, Duration::from_secs(20));
    assert_eq!(s.max_unauthenticated, 64);
    assert_eq!(s.idle_timeout, Duration::from_secs(3600));
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.keepalive_interval, Some(Duration::from_secs(30)));
    assert_eq!(s.max_auth_attempts, 6);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.audit.file, None);
    assert!(config.users.is_empty());
    assert!(config.hosts.is_empty());
    assert_eq!(config.source, PathBuf::from(ORIGIN));
}

#[test]
fn every_server_key_can_be_set() {
    let config = ok("[server]
listen = [\"127.0.0.1:2222\", \"[::1]:2222\", \"10.0.0.1:0\"]
host_key = \"/etc/gatehouse/key\"
login_grace = \"10m\"
max_unauthenticated = 100000
idle_timeout = \"7d\"
connect_timeout = \"100ms\"
keepalive_interval = \"0\"
max_auth_attempts = 20
shutdown_grace = \"0s\"
");
    let s = &config.server;
    assert_eq!(s.listen.len(), 3);
    assert!(s.listen[1].is_ipv6());
    assert_eq!(
        s.listen[2].port(),
        0,
        "port 0 (any free port) is allowed for tests"
    );
    assert_eq!(s.host_key, PathBuf::from("/etc/gatehouse/key"));
    assert_eq!(s.login_grace, Duration::from_secs(600));
    assert_eq!(s.max_unauthenticated, 100_000);
    assert_eq!(s.idle_timeout, Duration::from_secs(7 * 86_400));
    assert_eq!(s.connect_timeout, Duration::from_millis(100));
    assert_eq!(s.keepalive_interval, None, "0 disables keepalives");
    assert_eq!(s.max_auth_attempts, 20);
    assert_eq!(s.shutdown_grace, Duration::ZERO);

    let lower = ok("[server]
listen = [\"0.0.0.0:22\"]
login_grace = \"1s\"
max_unauthenticated = 1
idle_timeout = \"1m\"
connect_timeout = \"2m\"
keepalive_interval = \"1h\"
max_auth_attempts = 1
shutdown_grace = \"10m\"
");
    assert_eq!(
        lower.server.keepalive_interval,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn listen_must_be_present_non_empty_unique_socket_addresses() {
    one_error("", 1, 1, &["server.listen: missing", "[server]"]);
    one_error(
        "[audit]\n\n[server]\nhost_key = \"k\"\n",
        3,
        1,
        &["server.listen: missing"],
    );
    one_error("[server]\nlisten = []\n", 2, 10, &["server.listen: empty"]);
    // Reached only through a balancer: no plain listener, the PROXY one is enough.
    for text in [
        "[server]\nlisten = []\nproxy_listen = [\"0.0.0.0:22\"]\ntrusted_proxies = [\"10.0.0.0/24\"]\n",
        "[server]\nproxy_listen = [\"0.0.0.0:22\"]\ntrusted_proxies = [\"10.0.0.0/24\"]\n",
    ] {
        let config = gatehouse_config::parse(text, Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{text}: {e:?}"));
        assert!(config.server.listen.is_empty());
        assert_eq!(config.server.proxy_listen.len(), 1);
    }
    one_error(
        "[server]\nlisten = []\nproxy_listen = []\n",
        2,
        10,
        &["server.listen: empty"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\", \"0.0.0.0:22\"]\n",
        2,
        25,
        &["server.listen[1]: 0.0.0.0:22 is already listed as server.listen[0]"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0\"]\n",
        2,
        11,
        &["server.listen[0]: `0.0.0.0` is not a socket address"],
    );
    one_error(
        "[server]\nlisten = [\"::1:22\"]\n",
        2,
        11,
        &["IPv6 addresses need brackets"],
    );
    one_error(
        "[server]\nlisten = [\"localhost:22\"]\n",
        2,
        11,
        &["not a socket address", "host names are not resolved"],
    );
}

#[test]
fn durations_are_parsed_and_range_checked() {
    let cases: &[(&str, &str, &str)] = &[
        ("login_grace", "0s", "between 1s and 10m"),
        ("login_grace", "11m", "between 1s and 10m"),
        ("idle_timeout", "500ms", "between 1s and 7days"),
        ("idle_timeout", "8d", "between 1s and 7days"),
        ("connect_timeout", "99ms", "between 100ms and 2m"),
        ("connect_timeout", "121s", "between 100ms and 2m"),
        (
            "keepalive_interval",
            "500ms",
            "between 1s and 1h (or \"0\" to disable)",
        ),
        ("keepalive_interval", "2h", "between 1s and 1h"),
        ("shutdown_grace", "601s", "between 0s and 10m"),
    ];
    for (key, value, range) in cases {
        let text = format!("{SERVER}{key} = \"{value}\"\n");
        let column = key.len() + 4;
        one_error(
            &text,
            3,
            column,
            &[&format!("server.{key}: "), "is out of range", range],
        );
    }
    for bad in ["20", "20x", "-5s", "", "soon", "1h 2"] {
        let text = format!("{SERVER}login_grace = \"{bad}\"\n");
        one_error(
            &text,
            3,
            15,
            &[
                &format!("server.login_grace: `{bad}` is not a duration"),
                "\"15m\"",
            ],
        );
    }
    // humantime accepts compound durations.
    let config = ok(&format!("{SERVER}idle_timeout = \"1h 30m\"\n"));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(5400));
}

#[test]
fn counts_are_range_checked() {
    for (key, value, range) in [
        ("max_unauthenticated", "0", "between 1 and 100000"),
        ("max_unauthenticated", "100001", "between 1 and 100000"),
        ("max_unauthenticated", "-1", "between 1 and 100000"),
        ("max_auth_attempts", "0", "between 1 and 20"),
        ("max_auth_attempts", "21", "between 1 and 20"),
    ] {
        let text = format!("{SERVER}{key} = {value}\n");
        one_error(
            &text,
            3,
            key.len() + 4,
            &[&format!(
                "server.{key}: {value} is out of range: must be {range}"
            )],
        );
    }
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let config = ok(&format!(
        "{SERVER}host_key = \"keys/host\"\n[audit]\nfile = \"../log/audit.jsonl\"\n"
    ));
    assert_eq!(config.server.host_key, PathBuf::from("conf/keys/host"));
    assert_eq!(
        config.audit.file,
        Some(PathBuf::from("conf/../log/audit.jsonl"))
    );

    // A config named without a directory resolves against the working directory.
    let config = parse(
        &format!("{SERVER}host_key = \"host\"\n"),
        Path::new("g.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.host_key, PathBuf::from("host"));

    one_error(
        &format!("{SERVER}host_key = \"\"\n"),
        3,
        12,
        &["server.host_key: empty path"],
    );
    one_error(
        &format!("{SERVER}[audit]\nfile = \" \"\n"),
        4,
        8,
        &["audit.file: empty path"],
    );
}

// ------------------------------------------------------------------------------------ users

#[test]
fn users_are_typed_with_keys_and_groups() {
    let config = ok(&format!(
        "{SERVER}\n[[users]]\nname = \"alice\"\nkeys = [\"{ALICE}\", \"  {ALICE2}  \"]\ngroups = [\"research\", \"admins\"]\n{}",
        user("bob", BOB)
    ));
    let alice = &config.users[0];
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.groups, vec!["research", "admins"]);
    assert_eq!(alice.keys.len(), 2);
    assert_eq!(
        alice.keys[0].comment().to_string(),
        "alice@example",
        "comment kept"
    );
    assert_eq!(alice.keys[1].comment().to_string(), "alice2@example");
    assert_eq!(
        alice.keys[0].to_openssh().expect("encode"),
        ALICE,
        "round-trips to the same line"
    );
    assert_eq!(config.users[1].name, "bob");
}

#[test]
fn user_names_follow_the_documented_rule() {
    for good in ["a", "alice", "_svc", "0day", "a.b-c_d", &"x".repeat(64)] {
        ok(&format!("{SERVER}{}", user(good, ALICE)));
    }
    for (bad, why) in [
        ("", "empty name"),
        ("Alice", "login names are lowercase"),
        (".alice", "must start with a letter, a digit or `_`"),
        ("-alice", "must start with a letter, a digit or `_`"),
        ("al ice", "contains ' '"),
        ("alice@corp", "contains '@'"),
        ("élise", "contains 'é'"),
        (&"x".repeat(65), "longer than 64"),
    ] {
        one_error(
            &format!("{SERVER}{}", user(bad, ALICE)),
            5,
            8,
            &["users[0].name: ", why],
        );
    }
    one_error(
        &format!("{SERVER}\n[[users]]\nkeys = [\"{ALICE}\"]\ngroups = [\"x\"]\n"),
        4,
        1,
        &["users[0].name: missing"],
    );
}

#[test]
fn duplicate_user_names_are_rejected() {
    let text = format!("{SERVER}{}{}", user("alice", ALICE), user("alice", BOB));
    one_error(
        &text,
        10,
        8,
        &["users[1].name: user `alice` is already defined as users[0]"],
    );
}

#[test]
fn user_groups_are_required_valid_and_unique() {
    let text = format!("{SERVER}\n[[users]]\nname = \"alice\"\nkeys = [\"{ALICE}\"]\n");
    one_error(&text, 4, 1, &["users[0].groups: missing"]);
    let base = format!("{SERVER}{}", user("alice", ALICE));
    let with_groups = |groups: &str| base.replace("groups = [\"research\"]", groups);
    one_error(
        &with_groups("groups = []"),
        7,
        10,
        &["users[0].groups: empty"],
    );
    one_error(
        &with_groups("groups = [\"research\", \"Admins\"]"),
        7,
        23,
        &["users[0].groups[1]: group `Admins` contains 'A'"],
    );
    one_error(
        &with_groups("groups = [\"a.b\"]"),
        7,
        11,
        &["users[0].groups[0]: group `a.b` contains '.'"],
    );
    one_error(
        &with_groups("groups = [\"\"]"),
        7,
        11,
        &["users[0].groups[0]: empty group name"],
    );
    one_error(
        &with_groups(&format!("groups = [\"{}\"]", "g".repeat(65))),
        7,
        11,
        &["longer than 64"],
    );
    one_error(
        &with_groups("groups = [\"a\", \"b\", \"a\"]"),
        7,
        21,
        &["users[0].groups[2]: `a` is already listed as users[0].groups[0]"],
    );
    ok(&with_groups(
        "groups = [\"research_2\", \"ops-team\", \"0\"]",
    ));
}

#[test]
fn a_user_needs_at_least_one_key() {
    let text = format!("{SERVER}\n[[users]]\nname = \"alice\"\ngroups = [\"x\"]\n");
    one_error(
        &text,
        4,
        1,
        &["users[0]: user has no public keys", "keys_file"],
    );
    let text = format!("{SERVER}\n[[users]]\nname = \"alice\"\nkeys = []\ngroups = [\"x\"]\n");
    one_error(&text, 4, 1, &["users[0]: user has no public keys"]);
}

#[test]
fn a_bad_key_names_user_and_key_index_at_its_line() {
    let text = format!(
        "{SERVER}{}\n[[users]]\nname = \"bob\"\nkeys = [\n  \"{BOB}\",\n  \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFb0aTa674 bob@x\",\n]\ngroups = [\"x\"]\n",
        user("alice", ALICE)
    );
    one_error(
        &text,
        13,
        3,
        &["users[1].keys[1]: not an SSH public key", "ssh-ed25519"],
    );
    let cases = [
        ("", "empty key"),
        (
            "ssh-ed25519",
            "base64 key data after `ssh-ed25519` is missing",
        ),
        ("ssh-ed25519 !!!notbase64", "not an SSH public key"),
        (
            "hello world",
            "not an SSH public key: expected `TYPE BASE64 [COMMENT]`",
        ),
        ("ssh-foo AAAA", "unsupported key type `ssh-foo`"),
        // The base64 says rsa, the label says ed25519.
        (
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQCo9LbXqt bob",
            "not an SSH public key",
        ),
    ];
    for (key, why) in cases {
        let text = format!("{SERVER}{}", user("alice", key));
        one_error(&text, 6, 9, &["users[0].keys[0]: ", why]);
    }
}

#[test]
fn key_types_are_checked() {
    for accepted in ["ecdsa384.pub", "rsa2048.pub", "sk-ed25519.pub"] {
        let config = ok(&format!(
            "{SERVER}{}",
            user("alice", &fixture_key(accepted))
        ));
        assert_eq!(config.users[0].keys.len(), 1, "{accepted}");
    }
    let reject = |fixture: &str, why: &str| {
        let text = format!("{SERVER}{}", user("alice", &fixture_key(fixture)));
        one_error(&text, 6, 9, &["users[0].keys[0]: ", why]);
    };
    reject(
        "rsa1024.pub",
        "RSA key is too short (1024 bits); at least 2048 bits are required",
    );
    reject("dsa.pub", "DSA (ssh-dss) keys are not accepted");
    let cert = format!("ssh-ed25519-cert-v01@openssh.com {}", &ALICE[12..]);
    let text = format!("{SERVER}{}", user("alice", &cert));
    one_error(&text, 6, 9, &["certificates", "not supported"]);
}

#[test]
fn authorized_keys_options_are_rejected_inline() {
    for options in [
        "no-pty",
        "from=\\\"10.0.0.0/8\\\"",
        "restrict,command=\\\"/bin/true\\\"",
    ] {
        let text = format!("{SERVER}{}", user("alice", &format!("{options} {ALICE}")));
        one_error(
            &text,
            6,
            9,
            &[
                "users[0].keys[0]: authorized_keys options are not supported",
                "before `ssh-ed25519`",
            ],
        );
    }
}

#[test]
fn a_key_belongs_to_one_user_and_appears_once() {
    let text = format!("{SERVER}{}{}", user("alice", ALICE), user("bob", ALICE));
    one_error(
        &text,
        11,
        9,
        &[
            "users[1].keys[0]: key SHA256:",
            "already given at users[0].keys[0] (user `alice`)",
        ],
    );
    let text = format!(
        "{SERVER}\n[[users]]\nname = \"alice\"\nkeys = [\"{ALICE}\", \"{ALICE2}\", \"{ALICE}\"]\ngroups = [\"x\"]\n"
    );
    let list = errors(&text);
    assert_eq!(list.len(), 1, "{}", render(&list));
    let third_key_column = text
        .lines()
        .nth(5)
        .and_then(|l| l.rfind("\"ssh-"))
        .expect("line")
        + 1;
    assert_at(
        &list[0],
        6,
        third_key_column,
        &["users[0].keys[2]: key SHA256:", "users[0].keys[0]"],
    );
}

// -------------------------------------------------------------------------------- keys_file

/// A temporary directory with `gatehouse.toml` (returned path) and the given extra files.
fn config_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, contents).expect("write");
    }
    let origin = dir.path().join("gatehouse.toml");
    (dir, origin)
}

fn keys_file_user(keys_file: &str) -> String {
    format!(
        "{SERVER}\n[[users]]\nname = \"alice\"\nkeys_file = \"{keys_file}\"\ngroups = [\"x\"]\n"
    )
}

#[test]
fn keys_file_is_read_relative_to_the_config() {
    let file = format!("# alice's keys\n\n   \n{ALICE}\r\n  # old laptop:\n\t{ALICE2}\n");
    let (_dir, origin) = config_dir(&[("keys/alice.pub", &file)]);
    let text = keys_file_user("keys/alice.pub")
        .replace("keys_file", &format!("keys = [\"{CAROL}\"]\nkeys_file"));
    let config = parse(&text, &origin).unwrap_or_else(|e| panic!("{e}"));
    let comments: Vec<String> = config.users[0]
        .keys
        .iter()
        .map(|k| k.comment().to_string())
        .collect();
    assert_eq!(
        comments,
        vec!["carol@example", "alice@example", "alice2@example"]
    );
}

#[test]
fn keys_file_problems_cite_the_keys_file_line() {
    let file =
        format!("{ALICE}\n\n# next one is broken\nssh-ed25519 AAAAnope\n  junk here\n{ALICE2}\n");
    let (dir, origin) = config_dir(&[("alice.pub", &file)]);
    let list = errors_at(&keys_file_user("alice.pub"), &origin);
    assert_eq!(list.len(), 2, "{}", render(&list));
    let keys_path = dir.path().join("alice.pub");
    for d in &list {
        assert_eq!(d.file, keys_path);
        assert!(d
            .to_string()
            .starts_with(&format!("{}:", keys_path.display())));
    }
    assert_at(
        &list[0],
        4,
        1,
        &["users[0].keys_file: not an SSH public key"],
    );
    assert_at(
        &list[1],
        5,
        3,
        &["users[0].keys_file: not an SSH public key", "`junk`"],
    );
}

#[test]
fn keys_file_options_are_rejected() {
    let file = format!("{ALICE}\nfrom=\"10.0.0.0/8\",no-pty {ALICE2}\n");
    let (_dir, origin) = config_dir(&[("alice.pub", &file)]);
    let list = errors_at(&keys_file_user("alice.pub"), &origin);
    assert_eq!(list.len(), 1, "{}", render(&list));
    assert_at(
        &list[0],
        2,
        1,
        &["users[0].keys_file: authorized_keys options are not supported"],
    );
}

#[test]
fn keys_file_that_cannot_be_read_is_reported_at_the_config_key() {
    let (_dir, origin) = config_dir(&[]);
    let list = errors_at(&keys_file_user("missing.pub"), &origin);
    assert_eq!(list.len(), 1, "{}", render(&list));
    assert_eq!(list[0].file, origin);
    assert_at(
        &list[0],
        6,
        13,
        &["users[0].keys_file: cannot read", "missing.pub"],
    );
    let list = errors_at(&keys_file_user(""), &origin);
    assert_at(&list[0], 6, 13, &["users[0].keys_file: empty path"]);
}

#[test]
fn keys_file_keys_count_for_duplicates() {
    let (dir, origin) = config_dir(&[("bob.pub", &format!("{BOB}\n{ALICE}\n"))]);
    let text = format!(
        "{SERVER}{}\n[[users]]\nname = \"bob\"\nkeys_file = \"bob.pub\"\ngroups = [\"x\"]\n",
        user("alice", ALICE)
    );
    let list = errors_at(&text, &origin);
    assert_eq!(list.len(), 1, "{}", render(&list));
    assert_eq!(list[0].file, dir.path().join("bob.pub"));
    assert_at(
        &list[0],
        2,
        1,
        &["users[1].keys_file: key SHA256:", "users[0].keys[0]"],
    );
}

// ------------------------------------------------------------------------------------ hosts

#[test]
fn hosts_are_typed_with_default_ports() {
    let config = ok(&format!(
        "{SERVER}{}ports = [22, 8888, 65535, 1]\n{}",
        host("Jupyter.Research", "10.0.3.140"),
        host("db", "fd12:3456::5")
    ));
    let jupyter = &config.hosts[0];
    assert_eq!(jupyter.name, "jupyter.research", "stored lowercased");
    assert_eq!(jupyter.address.to_string(), "10.0.3.140");
    assert_eq!(jupyter.groups, vec!["research"]);
    assert_eq!(jupyter.ports, vec![22, 8888, 65535, 1]);
    assert_eq!(config.hosts[1].ports, vec![22]);
    assert!(config.hosts[1].address.is_ipv6());
}

#[test]
fn host_names_follow_the_documented_rule() {
    for good in [
        "db",
        "db-1",
        "a.b.c",
        "i-0abc123",
        "x1",
        "1x",
        &"a".repeat(63),
    ] {
        ok(&format!("{SERVER}{}", host(good, "10.0.0.1")));
    }
    for (bad, why) in [
        ("", "empty name"),
        ("10.0.0.1", "looks like an IP address"),
        ("fd00::1", "looks like an IP address"),
        ("1234", "looks like an IP address"),
        ("10.1", "looks like an IP address"),
        ("db_1", "contains '_'"),
        ("db 1", "contains ' '"),
        ("a..b", "empty label"),
        (".db", "empty label"),
        ("db.", "empty label"),
        ("-db", "starts or ends with `-`"),
        ("db-", "starts or ends with `-`"),
        (&"a".repeat(64), "label longer than 63"),
        (&["a"; 128].join("."), "longer than 253"),
    ] {
        one_error(
            &format!("{SERVER}{}", host(bad, "10.0.0.1")),
            5,
            8,
            &["hosts[0].name: ", why],
        );
    }
}

#[test]
fn duplicate_host_names_are_rejected_case_insensitively() {
    let text = format!(
        "{SERVER}{}{}",
        host("db", "10.0.0.1"),
        host("DB", "10.0.0.2")
    );
    one_error(
        &text,
        10,
        8,
        &["hosts[1].name: host `db` is already defined as hosts[0]"],
    );
}

#[test]
fn duplicate_addresses_are_rejected() {
    let text = format!("{SERVER}{}{}", host("a", "10.0.0.1"), host("b", "10.0.0.1"));
    one_error(
        &text,
        11,
        11,
        &["hosts[1].address: 10.0.0.1 is already the address of hosts[0]"],
    );
    // The same IPv6 address spelled differently is still the same address.
    let text = format!(
        "{SERVER}{}{}",
        host("a", "fd00::1"),
        host("b", "fd00:0:0::0001")
    );
    one_error(&text, 11, 11, &["already the address of hosts[0]"]);
}

#[test]
fn host_address_must_be_an_ip_literal() {
    for (bad, why) in [
        ("jupyter.internal", "DNS names are not accepted"),
        ("localhost", "never resolves names"),
        ("10.0.0.1:22", "ports go in `ports`"),
        ("[fd00::1]", "without brackets"),
        ("fe80::1%eth0", "scoped"),
        ("10.0.0.256", "not an IP address"),
        ("010.0.0.1", "not an IP address"),
        ("", "empty address"),
    ] {
        one_error(
            &format!("{SERVER}{}", host("db", bad)),
            6,
            11,
            &["hosts[0].address: ", why],
        );
    }
    let text = format!("{SERVER}\n[[hosts]]\nname = \"db\"\ngroups = [\"x\"]\n");
    one_error(&text, 4, 1, &["hosts[0].address: missing"]);
}

#[test]
fn forbidden_target_addresses_are_rejected_with_a_reason() {
    for (bad, why) in [
        ("127.0.0.1", "loopback"),
        ("127.53.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("169.254.169.254", "instance metadata service"),
        ("169.254.10.1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        (
            "::ffff:127.0.0.1",
            "IPv4-mapped form of 127.0.0.1, and it is a loopback",
        ),
        ("::ffff:169.254.169.254", "instance metadata service"),
        ("::ffff:10.0.0.1", "write it as 10.0.0.1"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("fd00:ec2::254", "reserved by AWS"),
    ] {
        let expected_ip: std::net::IpAddr = bad.parse().expect("test ip");
        one_error(
            &format!("{SERVER}{}", host("db", bad)),
            6,
            11,
            &[
                &format!("hosts[0].address: {expected_ip} may not be a target: "),
                why,
            ],
        );
    }
}

#[test]
fn host_groups_are_required() {
    let text = format!("{SERVER}\n[[hosts]]\nname = \"db\"\naddress = \"10.0.0.1\"\n");
    one_error(&text, 4, 1, &["hosts[0].groups: missing"]);
    let text = format!("{SERVER}{}", host("db", "10.0.0.1")).replace("[\"research\"]", "[]");
    one_error(&text, 7, 10, &["hosts[0].groups: empty"]);
}

#[test]
fn ports_are_range_checked_and_unique() {
    let with_ports = |ports: &str| format!("{SERVER}{}ports = {ports}\n", host("db", "10.0.0.1"));
    one_error(
        &with_ports("[0]"),
        8,
        10,
        &["hosts[0].ports[0]: 0 is not a TCP port: must be between 1 and 65535"],
    );
    one_error(
        &with_ports("[22, 70000]"),
        8,
        14,
        &["hosts[0].ports[1]: 70000 is not a TCP port"],
    );
    one_error(
        &with_ports("[-22]"),
        8,
        10,
        &["hosts[0].ports[0]: -22 is not a TCP port"],
    );
    one_error(
        &with_ports("[22, 443, 22]"),
        8,
        19,
        &["hosts[0].ports[2]: port 22 is already listed as hosts[0].ports[0]"],
    );
    one_error(&with_ports("[]"), 8, 9, &["hosts[0].ports: empty"]);
    one_error(
        &with_ports("[\"22\"]"),
        8,
        10,
        &[
            "hosts[0].ports[0]: invalid type: string",
            "expected an integer",
        ],
    );
}

// -------------------------------------------------------------------------------- reporting

#[test]
fn all_semantic_errors_are_collected_in_file_order() {
    let text = concat!(
        "[[hosts]]\nname = \"x\"\naddress = \"127.0.0.1\"\ngroups = []\nports = [0]\n\n",
        "[server]\nlisten = [\"nope\"]\nlogin_grace = \"1y\"\nmax_auth_attempts = 99\n\n",
        "[[users]]\nname = \"Bad\"\nkeys = [\"ssh-rsa AAAA\"]\ngroups = [\"ok\", \"NOT OK\"]\n"
    );
    let list = errors(text);
    let positions: Vec<(usize, usize)> = list.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        vec![
            (3, 11),
            (4, 10),
            (5, 10),
            (8, 11),
            (9, 15),
            (10, 21),
            (13, 8),
            (14, 9),
            (15, 17)
        ],
        "\n{}",
        render(&list)
    );
    has_error(&list, "hosts[0].address: 127.0.0.1 may not be a target");
    has_error(&list, "hosts[0].groups: empty");
    has_error(&list, "hosts[0].ports[0]: 0 is not a TCP port");
    has_error(&list, "server.listen[0]: `nope` is not a socket address");
    has_error(&list, "server.login_grace: 1year");
    has_error(&list, "server.max_auth_attempts: 99 is out of range");
    has_error(&list, "users[0].name: `Bad` contains 'B'");
    has_error(&list, "users[0].keys[0]: not an SSH public key");
    has_error(&list, "users[0].groups[1]: group `NOT OK`");

    let err = parse(text, Path::new("dir/g.toml")).expect_err("invalid");
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 9, "one error per line:\n{shown}");
    assert!(
        shown.lines().all(|l| l.starts_with("dir/g.toml:")),
        "{shown}"
    );
    assert!(
        shown.starts_with("dir/g.toml:3:11: hosts[0].address: "),
        "{shown}"
    );
}

#[test]
fn an_unreadable_config_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/gatehouse.toml")).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.diagnostics().is_empty());
    assert!(
        err.to_string()
            .starts_with("/nonexistent/gatehouse.toml: cannot read config file: "),
        "{err}"
    );
}

#[test]
fn summary_describes_the_config() {
    let config = ok(&format!(
        "{SERVER}[audit]\nfile = \"/var/log/a.jsonl\"\n{}{}{}ports = [22, 80]\n",
        user("alice", ALICE),
        user("bob", BOB),
        host("db", "10.0.0.1")
    ));
    let summary = config.summary();
    for needle in [
        "config: conf/gatehouse.toml",
        "listen: 0.0.0.0:22",
        "users: 2 (2 keys)",
        "hosts: 1 (2 ports)",
        "audit: /var/log/a.jsonl",
    ] {
        assert!(summary.contains(needle), "{summary}\n  lacks {needle:?}");
    }
    assert!(ok(SERVER).summary().contains("audit: standard output"));
}

/// The deliberately broken files that the end-to-end test of `gatehouse check` also uses.
/// Keep this table and the first-line comments of the files in sync.
#[test]
fn broken_example_files_fail_where_their_comment_says() {
    let bad = manifest_dir().join("tests/bad");
    let cases: &[(&str, &str, usize, usize, &str)] = &[
        (
            "unknown_key.toml",
            "unknown_key.toml",
            4,
            1,
            "server: unknown field `lisen`",
        ),
        (
            "unknown_nested_key.toml",
            "unknown_nested_key.toml",
            9,
            1,
            "users[0]: unknown field `group`",
        ),
        (
            "bad_port.toml",
            "bad_port.toml",
            15,
            14,
            "hosts[0].ports[1]: 70000 is not a TCP port",
        ),
        (
            "bad_key.toml",
            "bad_key.toml",
            14,
            5,
            "users[1].keys[0]: not an SSH public key",
        ),
        (
            "bad_duration.toml",
            "bad_duration.toml",
            4,
            15,
            "server.login_grace: `20 parsecs` is not a duration",
        ),
        (
            "syntax.toml",
            "syntax.toml",
            4,
            15,
            "server.login_grace: string values must be quoted",
        ),
        (
            "loopback_host.toml",
            "loopback_host.toml",
            12,
            11,
            "hosts[0].address: ::ffff:127.0.0.1 may not be a target",
        ),
        (
            "metadata_host.toml",
            "metadata_host.toml",
            12,
            11,
            "instance metadata service",
        ),
        (
            "keys_file_options.toml",
            "keys_file_options.pub",
            3,
            1,
            "users[0].keys_file: authorized_keys options are not supported",
        ),
        (
            "many_errors.toml",
            "many_errors.toml",
            3,
            11,
            "server.listen[0]: `0.0.0.0` is not a socket address",
        ),
    ];
    for (file, cited, line, column, needle) in cases {
        let path = bad.join(file);
        let err = load(&path).expect_err(file);
        let first = &err.diagnostics()[0];
        assert_eq!(first.file, bad.join(cited), "{file}: {err}");
        assert_eq!(
            (first.line, first.column),
            (*line, *column),
            "{file}: {err}"
        );
        assert!(
            first.message.contains(needle),
            "{file}: {err}\n  lacks {needle:?}"
        );
        let comment = std::fs::read_to_string(&path).expect("read");
        assert!(
            comment.starts_with("# BAD: "),
            "{file} must say what is wrong on line 1"
        );
    }
    let err = load(&bad.join("many_errors.toml")).expect_err("many");
    assert_eq!(err.diagnostics().len(), 5, "{err}");
}

#[test]
fn limits_penalties_and_metrics_have_openssh_like_defaults() {
    let config = ok(SERVER);
    assert!(!config.server.pq_only);
    assert!(config.server.proxy_listen.is_empty());
    assert_eq!(config.limits.max_sessions_per_user, 16);
    assert_eq!(config.limits.max_channels_per_connection, 64);
    assert_eq!(config.limits.max_tunnels, 10_000);
    assert_eq!(config.limits.per_source_max_unauthenticated, 8);
    assert_eq!(config.limits.per_prefix_max_unauthenticated, 32);
    assert_eq!(config.server.version_grace, Duration::from_secs(5));
    assert_eq!(config.server.kex_grace, Duration::from_secs(10));
    assert_eq!(config.server.eviction_min_age, Duration::from_millis(100));
    assert_eq!(config.server.control_socket, None);
    let p = &config.penalties;
    assert!(p.enabled);
    assert_eq!(p.auth_failure, Duration::from_secs(5));
    assert_eq!(p.no_auth, Duration::from_secs(1));
    assert_eq!(p.grace_exceeded, Duration::from_secs(10));
    assert_eq!(p.threshold, Duration::from_secs(15));
    assert_eq!(p.max, Duration::from_secs(600));
    assert!(p.exempt.is_empty());
    assert!(config.metrics.listen.is_none());
}

#[test]
fn limits_penalties_metrics_and_proxy_settings_parse() {
    let config = ok(
        "[server]\nlisten = [\"0.0.0.0:22\"]\npq_only = true\nproxy_listen = [\"0.0.0.0:2222\"]\n\
         trusted_proxies = [\"10.0.0.0/16\", \"10.1.2.3\"]\n\
         [limits]\nmax_sessions_per_user = 2\nmax_channels_per_connection = 3\nmax_tunnels = 4\n\
         per_source_max_unauthenticated = 5\n\
         [penalties]\nenabled = false\nauth_failure = \"1s\"\nthreshold = \"2s\"\nmax = \"1m\"\n\
         exempt = [\"192.0.2.0/24\", \"2001:db8::/48\"]\n\
         [metrics]\nlisten = \"127.0.0.1:9100\"\n",
    );
    assert!(config.server.pq_only);
    assert_eq!(
        config.server.proxy_listen,
        vec!["0.0.0.0:2222".parse().unwrap()]
    );
    let nets: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/16", "10.1.2.3/32"]);
    assert_eq!(config.limits.max_tunnels, 4);
    assert!(!config.penalties.enabled);
    assert_eq!(config.penalties.threshold, Duration::from_secs(2));
    assert_eq!(config.penalties.exempt.len(), 2);
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
}

#[test]
fn preauth_deadlines_eviction_and_the_prefix_cap_parse_and_are_checked() {
    let config = ok(
        "[server]\nlisten = [\"0.0.0.0:22\"]\nversion_grace = \"2s\"\nkex_grace = \"3s\"\n\
         eviction_min_age = \"0s\"\ncontrol_socket = \"run/control.sock\"\n\
         [limits]\nper_source_max_unauthenticated = 5\n",
    );
    let socket = config.server.control_socket.expect("control_socket");
    assert!(socket.ends_with("run/control.sock"), "{}", socket.display());
    assert_eq!(config.server.version_grace, Duration::from_secs(2));
    assert_eq!(config.server.kex_grace, Duration::from_secs(3));
    assert_eq!(config.server.eviction_min_age, Duration::ZERO);
    // The prefix cap follows the per-source one unless set.
    assert_eq!(config.limits.per_prefix_max_unauthenticated, 20);
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\n[limits]\nper_source_max_unauthenticated = 5\n\
         per_prefix_max_unauthenticated = 4\n",
        5,
        34,
        &["limits.per_prefix_max_unauthenticated: 4 is below limits.per_source_max_unauthenticated (5)"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\nkex_grace = \"0s\"\n",
        3,
        13,
        &["server.kex_grace"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\neviction_min_age = \"1h\"\n",
        3,
        20,
        &["server.eviction_min_age"],
    );
}

#[test]
fn bad_limits_penalties_metrics_and_proxy_settings_are_reported() {
    one_error(
        &format!("{SERVER}[metrics]\nlisten = \"0.0.0.0:9100\"\n"),
        4,
        10,
        &["metrics.listen", "not a loopback address"],
    );
    one_error(
        &format!("{SERVER}[penalties]\nexempt = [\"10.0.0.0/33\"]\n"),
        4,
        11,
        &["penalties.exempt[0]", "is not a CIDR"],
    );
    one_error(
        &format!("{SERVER}[penalties]\nthreshold = \"1m\"\nmax = \"30s\"\n"),
        5,
        7,
        &["penalties.max", "below penalties.threshold"],
    );
    one_error(
        &format!("{SERVER}[limits]\nmax_tunnels = 0\n"),
        4,
        15,
        &["limits.max_tunnels", "out of range"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\nproxy_listen = [\"0.0.0.0:2222\"]\n",
        3,
        16,
        &["server.proxy_listen", "needs server.trusted_proxies"],
    );
    one_error(
        "[server]\nlisten = [\"0.0.0.0:22\"]\nproxy_listen = [\"0.0.0.0:22\"]\ntrusted_proxies = [\"10.0.0.1\"]\n",
        3,
        16,
        &["server.proxy_listen", "also in server.listen"],
    );
    one_error(
        &format!("{SERVER}[limits]\nmax_tunnel = 3\n"),
        4,
        1,
        &["limits", "unknown field `max_tunnel`"],
    );
}

// ---------------------------------------------------------------------------------------------
// [aws]

#[test]
fn aws_section_defaults_and_every_key() {
    let c = ok(&format!("{SERVER}[aws]\nvpc_ids = [\"vpc-0abc123\"]\n"));
    let aws = c.aws.expect("aws");
    assert_eq!(aws.refresh_interval, Duration::from_secs(30));
    assert_eq!(aws.max_staleness, Duration::from_secs(15 * 60));
    assert_eq!(aws.tag_prefix, "gatehouse:");
    assert_eq!(aws.groups_tag(), "gatehouse:groups");
    assert_eq!(aws.ports_tag(), "gatehouse:ports");
    assert!(aws.region.is_none() && aws.endpoint_url.is_none());
    assert!(aws.iam_group_prefix.is_none() && aws.host_key_ssm_parameter.is_none());
    assert!(c.users.is_empty() && c.hosts.is_empty());

    let c = ok(&format!(
        "{SERVER}[aws]\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\n\
         vpc_ids = [\"vpc-0abc123\", \"vpc-1\"]\nrefresh_interval = \"1s\"\nmax_staleness = \"5s\"\n\
         iam_path_prefix = \"/staff/\"\niam_group_prefix = \"gatehouse-\"\ntag_prefix = \"gh:\"\n\
         host_key_ssm_parameter = \"/gatehouse/prod/host_ed25519\"\n"
    ));
    assert!(c.summary().contains("host key from SSM"), "{}", c.summary());
    let aws = c.aws.expect("aws");
    assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(aws.vpc_ids, ["vpc-0abc123", "vpc-1"]);
    assert_eq!(aws.refresh_interval, Duration::from_secs(1));
    assert_eq!(aws.max_staleness, Duration::from_secs(5));
    assert_eq!(aws.iam_path_prefix.as_deref(), Some("/staff/"));
    assert_eq!(aws.iam_group_prefix.as_deref(), Some("gatehouse-"));
    assert_eq!(aws.groups_tag(), "gh:groups");
    assert_eq!(
        aws.host_key_ssm_parameter.as_deref(),
        Some("/gatehouse/prod/host_ed25519")
    );
}

#[test]
fn aws_values_are_checked() {
    let list = errors(&format!(
        "{SERVER}[aws]\nregion = \"EU West\"\nendpoint_url = \"ftp://x\"\nvpc_ids = [\"subnet-1\", \"vpc-1\", \"vpc-1\"]\n\
         refresh_interval = \"0s\"\niam_path_prefix = \"staff\"\niam_group_prefix = \"a b\"\n\
         tag_prefix = \"aws:x\"\nhost_key_ssm_parameter = \"gatehouse/key\"\nbogus = 1\n"
    ));
    // Unknown keys stop at the shape stage.
    assert_eq!(list.len(), 1, "{}", render(&list));
    has_error(&list, "bogus");

    let list = errors(&format!(
        "{SERVER}[aws]\nregion = \"EU West\"\nendpoint_url = \"ftp://x\"\nvpc_ids = [\"subnet-1\", \"vpc-1\", \"vpc-1\"]\n\
         refresh_interval = \"0s\"\niam_path_prefix = \"staff\"\niam_group_prefix = \"a b\"\n\
         tag_prefix = \"aws:x\"\nhost_key_ssm_parameter = \"gatehouse/key\"\n"
    ));
    for needle in [
        "aws.region",
        "aws.endpoint_url",
        "aws.vpc_ids[0]",
        "aws.vpc_ids[2]: `vpc-1` is already listed",
        "aws.refresh_interval",
        "aws.iam_path_prefix",
        "aws.iam_group_prefix",
        "aws.tag_prefix",
        "aws.host_key_ssm_parameter",
    ] {
        has_error(&list, needle);
    }
}

#[test]
fn aws_host_key_tags_are_read_and_checked() {
    // Absent: the parameter is created untagged.
    let c = ok(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\nhost_key_ssm_parameter = \"/gatehouse/lab/host_ed25519\"\n"
    ));
    assert!(c.aws.expect("aws").host_key_tags.is_empty());
    let c = ok(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\nhost_key_ssm_parameter = \"/gatehouse/lab/host_ed25519\"\n\
         host_key_tags = {{ \"gatehouse:stack\" = \"lab\", owner = \"ops team\" }}\n"
    ));
    let tags = c.aws.expect("aws").host_key_tags;
    assert_eq!(
        tags.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("gatehouse:stack", "lab"), ("owner", "ops team")]
    );
    // Without the parameter they would tag nothing.
    let list = errors(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\nhost_key_tags = {{ \"gatehouse:stack\" = \"lab\" }}\n"
    ));
    assert_eq!(list.len(), 1, "{}", render(&list));
    has_error(
        &list,
        "aws.host_key_tags: set without aws.host_key_ssm_parameter",
    );
    // SSM's tag rules.
    let list = errors(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\nhost_key_ssm_parameter = \"/p/k\"\n\
         host_key_tags = {{ \"aws:stack\" = \"a\", \"\" = \"b\", ok = \"bad\\nvalue\", \"k*\" = \"c\" }}\n"
    ));
    assert_eq!(list.len(), 4, "{}", render(&list));
    has_error(&list, "aws.host_key_tags: `aws:stack` is not a tag key");
    has_error(&list, "aws.host_key_tags: `` is not a tag key");
    has_error(&list, "aws.host_key_tags: `k*` is not a tag key");
    has_error(
        &list,
        "aws.host_key_tags.ok: `bad\nvalue` is not a tag value",
    );
    let many: Vec<String> = (0..51).map(|i| format!("k{i} = \"v\"")).collect();
    let list = errors(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\nhost_key_ssm_parameter = \"/p/k\"\n\
         host_key_tags = {{ {} }}\n",
        many.join(", ")
    ));
    has_error(&list, "aws.host_key_tags: 51 tags; SSM allows at most 50");
}

#[test]
fn aws_vpc_ids_are_required_and_not_empty() {
    // Empty used to mean every VPC of the region: instances the bastion cannot route to, and
    // VPCs whose CIDRs overlap, where one private address names two hosts.
    let why = [
        "its own VPC",
        "peered",
        "overlapping CIDRs",
        "gatehouse-vpc writes",
        "vpc_ids = [\"vpc-",
    ];
    let d = one_error(&format!("{SERVER}[aws]\n"), 3, 1, &why);
    assert!(d.message.starts_with("aws.vpc_ids: missing"), "{d}");
    let d = one_error(
        &format!("{SERVER}[aws]\nregion = \"eu-west-1\"\nvpc_ids = []\n"),
        5,
        11,
        &why,
    );
    assert!(d.message.starts_with("aws.vpc_ids: empty"), "{d}");
    // One id is enough.
    let c = ok(&format!("{SERVER}[aws]\nvpc_ids = [\"vpc-0abc123\"]\n"));
    assert_eq!(c.aws.expect("aws").vpc_ids, ["vpc-0abc123"]);
}

#[test]
fn aws_max_staleness_must_exceed_the_refresh_interval() {
    one_error(
        &format!(
            "{SERVER}[aws]\nrefresh_interval = \"1m\"\nmax_staleness = \"30s\"\n\
             vpc_ids = [\"vpc-1\"]\n"
        ),
        5,
        17,
        &["must be longer than aws.refresh_interval"],
    );
}

#[test]
fn aws_refuses_static_users_and_hosts() {
    let list = errors(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\n{}{}",
        user("alice", ALICE),
        host("jupyter", "10.0.3.140")
    ));
    assert_eq!(list.len(), 2, "{}", render(&list));
    has_error(&list, "users: [[users]] cannot be combined with [aws]");
    has_error(&list, "hosts: [[hosts]] cannot be combined with [aws]");
}

#[test]
fn shipped_aws_config_is_valid() {
    let path = manifest_dir().join("../../config/aws.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let aws = config.aws.expect("config/aws.toml has [aws]");
    assert!(aws.host_key_ssm_parameter.is_some());
}

#[test]
fn public_helpers_apply_the_config_rules() {
    assert!(gatehouse_config::parse_public_key(ALICE).is_ok());
    assert!(gatehouse_config::parse_public_key("ssh-ed25519 AAAA").is_err());
    assert!(gatehouse_config::check_group_name("research").is_ok());
    assert!(gatehouse_config::check_group_name("Research").is_err());
    assert_eq!(
        gatehouse_config::check_host_name("Jupyter.Internal").as_deref(),
        Ok("jupyter.internal")
    );
    assert!(gatehouse_config::check_host_name("10.0.0.1").is_err());
}

#[test]
fn aws_instance_connect_is_off_unless_asked_for_and_reads_the_login_tag() {
    let c = ok(&format!("{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\n"));
    let aws = c.aws.expect("aws");
    assert!(!aws.instance_connect);
    assert_eq!(aws.login_tag(), "gatehouse:login");
    let c = ok(&format!(
        "{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\ninstance_connect = true\ntag_prefix = \"lab/\"\n"
    ));
    let aws = c.aws.expect("aws");
    assert!(aws.instance_connect);
    assert_eq!(aws.login_tag(), "lab/login");
    one_error(
        &format!("{SERVER}[aws]\nvpc_ids = [\"vpc-1\"]\ninstance_connect = \"yes\"\n"),
        5,
        20,
        &["instance_connect"],
    );
}

#[test]
fn server_health_listen_is_an_address_of_its_own() {
    let c = ok(SERVER);
    assert_eq!(c.server.health_listen, None);
    let c = ok("[server]\nlisten = [\"0.0.0.0:22\"]\nhealth_listen = \"0.0.0.0:8080\"\n");
    assert_eq!(
        c.server.health_listen,
        Some("0.0.0.0:8080".parse().expect("addr"))
    );
    let list = errors("[server]\nlisten = [\"0.0.0.0:22\"]\nhealth_listen = \"0.0.0.0:22\"\n");
    has_error(
        &list,
        "server.health_listen: 0.0.0.0:22 is also an SSH listen address",
    );
    let list = errors("[server]\nlisten = [\"0.0.0.0:22\"]\nhealth_listen = \"8080\"\n");
    has_error(&list, "server.health_listen");
}

#[test]
fn aws_events_set_the_sweep_slow_and_their_queue_url_is_checked() {
    const AWS: &str = "[aws]\nvpc_ids = [\"vpc-1\"]\n";
    // Without events, IAM is swept every refresh.
    let aws = ok(&format!("{SERVER}{AWS}refresh_interval = \"20s\"\n"))
        .aws
        .expect("aws");
    assert_eq!(aws.events_queue_url, None);
    assert_eq!(aws.iam_sweep_interval, Duration::from_secs(20));
    // With them, every half hour, unless said otherwise.
    let url = "https://sqs.us-east-1.amazonaws.com/123456789012/gatehouse-lab-iam-events";
    let aws = ok(&format!("{SERVER}{AWS}events_queue_url = \"{url}\"\n"))
        .aws
        .expect("aws");
    assert_eq!(aws.events_queue_url.as_deref(), Some(url));
    assert_eq!(aws.iam_sweep_interval, Duration::from_secs(30 * 60));
    let aws = ok(&format!(
        "{SERVER}{AWS}events_queue_url = \"{url}\"\niam_sweep_interval = \"2h\"\n"
    ))
    .aws
    .expect("aws");
    assert_eq!(aws.iam_sweep_interval, Duration::from_secs(2 * 3600));
    // China's partition, and moto behind an endpoint override.
    ok(&format!(
        "{SERVER}{AWS}events_queue_url = \"https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q\"\n"
    ));
    ok(&format!(
        "{SERVER}{AWS}endpoint_url = \"http://127.0.0.1:5000\"\n\
         events_queue_url = \"http://127.0.0.1:5000/123456789012/q\"\n"
    ));
    for bad in [
        "http://sqs.us-east-1.amazonaws.com/123456789012/q",
        "https://example.com/123456789012/q",
        "https://sqs.us-east-1.amazonaws.com/1234/q",
        "https://sqs.us-east-1.amazonaws.com/123456789012/",
        "https://sqs.us-east-1.amazonaws.com/123456789012/q/x",
        "https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo",
        "http://127.0.0.1:5000/123456789012/q",
    ] {
        let list = errors(&format!("{SERVER}{AWS}events_queue_url = \"{bad}\"\n"));
        has_error(&list, "aws.events_queue_url");
        has_error(&list, "is not an SQS queue URL");
    }
    // A sweep shorter than a refresh, or (without events) as long as the staleness bound.
    let list = errors(&format!(
        "{SERVER}{AWS}events_queue_url = \"{url}\"\niam_sweep_interval = \"10s\"\n"
    ));
    has_error(&list, "aws.iam_sweep_interval");
    let list = errors(&format!("{SERVER}{AWS}iam_sweep_interval = \"15m\"\n"));
    has_error(&list, "must be shorter than aws.max_staleness");
    let aws = ok(&format!("{SERVER}{AWS}iam_sweep_interval = \"5m\"\n"))
        .aws
        .expect("aws");
    assert_eq!(aws.iam_sweep_interval, Duration::from_secs(300));
}

#[test]
fn aws_shared_snapshot_is_an_s3_object() {
    const AWS: &str = "[aws]\nvpc_ids = [\"vpc-1\"]\n";
    let aws = ok(&format!("{SERVER}{AWS}")).aws.expect("aws");
    assert_eq!(aws.shared_snapshot, None);
    let aws = ok(&format!(
        "{SERVER}{AWS}shared_snapshot = \"s3://gatehouse-lab-123456789012/gatehouse/aws-directory.json\"\n"
    ))
    .aws
    .expect("aws");
    let shared = aws.shared_snapshot.expect("shared");
    assert_eq!(shared.bucket, "gatehouse-lab-123456789012");
    assert_eq!(shared.key, "gatehouse/aws-directory.json");
    assert_eq!(
        shared.to_string(),
        "s3://gatehouse-lab-123456789012/gatehouse/aws-directory.json"
    );
    for bad in [
        "gatehouse-lab/x",
        "https://gatehouse-lab.s3.amazonaws.com/x",
        "s3://gatehouse-lab",
        "s3://gatehouse-lab/",
        "s3://Gatehouse-Lab/x",
        "s3://ab/x",
        "s3://-lab/x",
        "s3://lab-/x",
        "s3://gatehouse-lab/a key",
    ] {
        let list = errors(&format!("{SERVER}{AWS}shared_snapshot = \"{bad}\"\n"));
        has_error(&list, "aws.shared_snapshot");
        has_error(&list, "is not an S3 object");
    }
}

#[test]
fn aws_audit_log_group_needs_the_audit_file_and_a_valid_name() {
    const AWS: &str = "[aws]\nvpc_ids = [\"vpc-1\"]\n";
    let aws = ok(&format!("{SERVER}{AWS}")).aws.expect("aws");
    assert_eq!(aws.audit_log_group, None);
    assert_eq!(aws.audit_log_stream, None);
    let c = ok(&format!(
        "{SERVER}[audit]\nfile = \"/var/lib/gatehouse/audit.jsonl\"\n{AWS}\
         audit_log_group = \"/gatehouse/lab/audit\"\naudit_log_stream = \"i-0abc\"\n"
    ));
    let aws = c.aws.expect("aws");
    assert_eq!(aws.audit_log_group.as_deref(), Some("/gatehouse/lab/audit"));
    assert_eq!(aws.audit_log_stream.as_deref(), Some("i-0abc"));
    let list = errors(&format!(
        "{SERVER}{AWS}audit_log_group = \"/gatehouse/lab/audit\"\n"
    ));
    has_error(&list, "aws.audit_log_group: needs audit.file");
    let list = errors(&format!(
        "{SERVER}[audit]\nfile = \"/a.jsonl\"\n{AWS}audit_log_group = \"a b\"\n\
         audit_log_stream = \"x:y\"\n"
    ));
    has_error(&list, "is not a CloudWatch Logs log group name");
    has_error(&list, "is not a CloudWatch Logs stream name");
}

#[test]
fn drain_delay_defaults_to_none_and_is_at_most_a_minute() {
    assert_eq!(ok(SERVER).server.drain_delay, Duration::ZERO);
    let c = ok(&format!("{SERVER}drain_delay = \"800ms\"\n"));
    assert_eq!(c.server.drain_delay, Duration::from_millis(800));
    let list = errors(&format!("{SERVER}drain_delay = \"2m\"\n"));
    has_error(&list, "server.drain_delay");
}
