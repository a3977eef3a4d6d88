//! Spec validation: the example parses, and each kind of bad spec is rejected with its message
//! and location.

use super::*;

pub(crate) const MINIMAL: &str = r#"
[stack]
name = "lab"
region = "eu-central-1"

[vpc]
cidr = "10.0.0.0/16"
azs = ["eu-central-1a", "eu-central-1b"]
nat = "single"

[[subnets]]
name = "dmz"
tier = "public"
cidr = "10.0.0.0/24"
az = "eu-central-1a"

[[subnets]]
name = "private-a"
tier = "private"
cidr = "10.0.10.0/24"
az = "eu-central-1a"

[bastion]
subnet = "dmz"
ami = "ami-0123456789abcdef0"
allowed_cidrs = ["198.51.100.0/24"]
gatehouse_download_url = "https://example.org/gatehouse"

[private]
ports = [22, 8888]

[[hosts]]
name = "jupyter"
subnet = "private-a"
ami = "ami-0123456789abcdef0"
groups = ["research"]
ports = [22, 8888]
"#;

/// The minimal spec with one text replaced (the replaced text must exist).
fn with(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "test bug: {from:?} not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

/// Parse and return the error messages with locations ("line:col: message").
fn errors(text: &str) -> Vec<String> {
    match parse("t.toml", text, None) {
        Ok(_) => vec![],
        Err(SpecError::Invalid { issues, .. }) => issues
            .iter()
            .map(|i| format!("{}:{}: {}", i.line, i.col, i.message))
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn assert_rejected(text: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn minimal_spec_is_valid() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert_eq!(spec.stack, "lab");
    assert_eq!(spec.bastion.instance_type, DEFAULT_BASTION_INSTANCE_TYPE);
    assert_eq!(spec.hosts[0].instance_type, DEFAULT_HOST_INSTANCE_TYPE);
    assert_eq!(spec.private_ports, vec![22, 8888]);
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../../config/vpc.toml");
    // Its binary is a dist build that may not exist here: read as destroy reads it.
    let spec = crate::spec::parse_with("config/vpc.toml", text, None, ReadBinary::No)
        .expect("config/vpc.toml must stay valid");
    assert_eq!(spec.stack, "research");
    assert_eq!(spec.subnets.len(), 4);
    assert!(
        matches!(&spec.bastion.binary, crate::spec::Binary::Stored { path, .. }
            if path == std::path::Path::new("config/../target/dist/gatehouse")),
        "{:?}",
        spec.bastion.binary
    );
}

#[test]
fn region_comes_from_the_environment_when_the_spec_has_none() {
    let text = with("region = \"eu-central-1\"\n", "");
    let spec = parse("t.toml", &text, Some("eu-central-1")).expect("valid");
    assert_eq!(spec.region, "eu-central-1");
    assert_rejected(&text, "no region");
}

#[test]
fn unknown_key_is_rejected_with_its_location() {
    let errs = errors(&with(
        "nat = \"single\"",
        "nat = \"single\"\nnat_gateways = 2",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("10:1: unknown field `nat_gateways`"),
        "{errs:?}"
    );
}

#[test]
fn error_display_names_file_line_and_column() {
    let err = parse(
        "config/vpc.toml",
        &with("10.0.10.0/24", "10.0.0.128/25"),
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("config/vpc.toml:20:8: subnet private-a cidr 10.0.0.128/25 overlaps"),
        "{text}"
    );
}

#[test]
fn overlapping_subnets_are_rejected() {
    assert_rejected(&with("10.0.10.0/24", "10.0.0.0/23"), "overlaps subnet dmz");
}

#[test]
fn subnet_outside_the_vpc_is_rejected() {
    assert_rejected(
        &with("10.0.10.0/24", "10.1.10.0/24"),
        "is outside the vpc cidr 10.0.0.0/16",
    );
}

#[test]
fn host_bits_are_rejected() {
    assert_rejected(
        &with("cidr = \"10.0.0.0/16\"", "cidr = \"10.0.0.1/16\""),
        "has host bits set",
    );
}

#[test]
fn bad_cidr_text_is_rejected() {
    assert_rejected(
        &with("10.0.10.0/24", "10.0.10.0/33"),
        "invalid IP address syntax",
    );
}

#[test]
fn prefix_length_out_of_aws_range_is_rejected() {
    assert_rejected(
        &with("cidr = \"10.0.0.0/16\"", "cidr = \"10.0.0.0/8\""),
        "AWS allows prefix lengths /16 to /28",
    );
}

#[test]
fn unknown_availability_zone_is_rejected() {
    assert_rejected(
        &with("\"eu-central-1b\"]", "\"us-east-1b\"]"),
        "unknown availability zone \"us-east-1b\"",
    );
    assert_rejected(
        &with(
            "az = \"eu-central-1a\"\n\n[[subnets]]\nname = \"private-a\"",
            "az = \"eu-central-1c\"\n\n[[subnets]]\nname = \"private-a\"",
        ),
        "unknown availability zone \"eu-central-1c\" (not in vpc azs)",
    );
}

#[test]
fn the_whole_internet_needs_allow_world() {
    let open = with("[\"198.51.100.0/24\"]", "[\"0.0.0.0/0\"]");
    assert_rejected(&open, "set allow_world = true");
    let allowed = open.replace("allowed_cidrs", "allow_world = true\nallowed_cidrs");
    assert!(
        parse("t.toml", &allowed, None).is_ok(),
        "{:?}",
        errors(&allowed)
    );
}

#[test]
fn empty_allowed_cidrs_is_rejected() {
    assert_rejected(
        &with("[\"198.51.100.0/24\"]", "[]"),
        "nobody could reach the bastion",
    );
}

#[test]
fn bastion_must_sit_in_a_public_subnet() {
    assert_rejected(
        &with("subnet = \"dmz\"", "subnet = \"private-a\""),
        "must be public",
    );
    assert_rejected(
        &with("subnet = \"dmz\"", "subnet = \"nowhere\""),
        "is not defined in [[subnets]]",
    );
}

#[test]
fn per_az_nat_needs_a_public_subnet_in_each_private_az() {
    let text = with("nat = \"single\"", "nat = \"per_az\"").replace(
        "cidr = \"10.0.10.0/24\"\naz = \"eu-central-1a\"",
        "cidr = \"10.0.10.0/24\"\naz = \"eu-central-1b\"",
    );
    assert_rejected(&text, "needs a public subnet in eu-central-1b");
}

#[test]
fn unknown_nat_mode_is_rejected() {
    assert_rejected(
        &with("nat = \"single\"", "nat = \"two\""),
        "unknown variant `two`",
    );
}

#[test]
fn host_ports_must_be_open_in_the_private_group() {
    let text = format!(
        "{}ports = [22, 9999]\n",
        MINIMAL.trim_end().trim_end_matches("ports = [22, 8888]")
    );
    assert_rejected(&text, "port 9999 is not open");
}

#[test]
fn host_must_sit_in_a_private_subnet() {
    assert_rejected(
        &with("subnet = \"private-a\"", "subnet = \"dmz\""),
        "host jupyter: subnet \"dmz\" must be private",
    );
}

#[test]
fn host_private_ip_must_be_in_its_subnet() {
    let text = with(
        "groups = [\"research\"]",
        "groups = [\"research\"]\nprivate_ip = \"10.0.11.5\"",
    );
    assert_rejected(&text, "private_ip 10.0.11.5 is outside subnet private-a");
    let text = with(
        "groups = [\"research\"]",
        "groups = [\"research\"]\nprivate_ip = \"10.0.10.2\"",
    );
    assert_rejected(&text, "is reserved by AWS");
}

#[test]
fn duplicate_names_are_rejected() {
    assert_rejected(
        &with("name = \"private-a\"", "name = \"dmz\""),
        "subnet name \"dmz\" used twice",
    );
}

#[test]
fn download_url_must_be_plain_https() {
    assert_rejected(
        &with(
            "https://example.org/gatehouse",
            "http://example.org/gatehouse",
        ),
        "must be an https:// URL",
    );
    assert_rejected(
        &with(
            "https://example.org/gatehouse",
            "https://example.org/x';reboot;'",
        ),
        "must be an https:// URL",
    );
}

#[test]
fn sha256_must_be_hex() {
    let text = with(
        "gatehouse_download_url",
        "gatehouse_sha256 = \"abc\"\ngatehouse_download_url",
    );
    assert_rejected(&text, "64 hexadecimal characters");
}

#[test]
fn bad_names_and_amis_are_rejected() {
    assert_rejected(&with("name = \"lab\"", "name = \"Lab_1\""), "stack name");
    assert_rejected(
        &with("ami = \"ami-0123456789abcdef0\"", "ami = \"ubuntu\""),
        "is not an AMI id",
    );
    assert_rejected(
        &with("name = \"jupyter\"", "name = \"bastion\""),
        "host name",
    );
}

#[test]
fn groups_follow_the_daemons_rule() {
    // The daemon skips an instance whose `gatehouse:groups` tag holds a group its config rule
    // refuses: the spec must refuse the same groups, with the daemon's reason, at plan time.
    for bad in ["research.gpu", "Research", "a b", ""] {
        let text = with("groups = [\"research\"]", &format!("groups = [\"{bad}\"]"));
        let errs = errors(&text);
        let why = gatehouse_config::check_group_name(bad).expect_err("the daemon refuses it");
        assert!(
            errs.iter()
                .any(|e| e.contains("host jupyter:") && e.contains(&why)),
            "{bad:?}: {errs:#?}"
        );
    }
    for good in ["research", "gpu_users", "team-2"] {
        let text = with("groups = [\"research\"]", &format!("groups = [\"{good}\"]"));
        assert!(errors(&text).is_empty(), "{good:?}: {:?}", errors(&text));
    }
}

#[test]
fn reserved_tags_are_rejected() {
    let text = with(
        "[bastion]",
        "[tags]\n\"gatehouse:stack\" = \"other\"\n\n[bastion]",
    );
    assert_rejected(&text, "is reserved");
}

/// A valid `[bastion.daemon]` table of about `n` x 20 bytes (penalty-exempt addresses).
fn big_daemon_table(n: usize) -> String {
    let exempt: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    format!(
        "[bastion.daemon.penalties]\nexempt = [{}]\n",
        exempt.join(", ")
    )
}

#[test]
fn user_data_over_16_kib_is_rejected_before_any_call() {
    let text = format!("{MINIMAL}\n{}", big_daemon_table(1000));
    assert_rejected(&text, "EC2 accepts at most 16383");
}

#[test]
fn the_daemon_table_is_checked_by_the_daemons_own_validator() {
    // Keys gatehouse-vpc writes itself.
    let text = with(
        "gatehouse_download_url",
        "daemon = { server = { listen = [\"0.0.0.0:2222\"] } }\ngatehouse_download_url",
    );
    assert_rejected(&text, "server.listen is written by gatehouse-vpc");
    // A value the daemon refuses, in the daemon's words.
    let text = format!("{}\n[bastion.daemon.limits]\nmax_tunnels = -1\n", MINIMAL);
    assert_rejected(
        &text,
        "the daemon would refuse its config: limits.max_tunnels",
    );
    // Static users next to [aws]: the daemon refuses them (a second door no IAM change
    // closes), so the spec does too, before any AWS call.
    let text = format!(
        "{}\n[[bastion.daemon.users]]\nname = \"root\"\nkeys = []\ngroups = [\"all\"]\n",
        MINIMAL
    );
    assert_rejected(&text, "cannot be combined with [aws]");
    // A key the daemon does not know.
    let text = format!("{}\n[bastion.daemon.aws]\nrefresh = \"5s\"\n", MINIMAL);
    assert_rejected(&text, "the daemon would refuse its config");
    // Accepted settings land in the written config.
    let text = format!(
        "{}\n[bastion.daemon.aws]\nrefresh_interval = \"5s\"\niam_group_prefix = \"gh-\"\n",
        MINIMAL
    );
    let spec = crate::spec::parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "123456789012")
            .unwrap_or_else(|e| panic!("{e:?}"));
    let aws = config.aws.expect("[aws]");
    assert_eq!(aws.refresh_interval, std::time::Duration::from_secs(5));
    assert_eq!(aws.iam_group_prefix.as_deref(), Some("gh-"));
    assert_eq!(aws.vpc_ids, ["vpc-0123456789abcdef0"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = with("10.0.10.0/24", "10.1.10.0/24").replace("198.51.100.0/24", "0.0.0.0/0");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn host_tags_are_read_by_the_daemon_as_the_spec_says() {
    // gatehouse-vpc tags a host; the daemon, on the config gatehouse-vpc writes, reads it.
    let text = format!(
        "{}login = [\"ubuntu\", \"ec2-user\"]\n\n[bastion.daemon.aws]\ninstance_connect = true\n",
        MINIMAL
    );
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "123456789012")
            .unwrap_or_else(|e| panic!("{e:?}"));
    let aws = config.aws.expect("[aws]");
    let host = &spec.hosts[0];
    let record = gatehouse_aws::build::InstanceRecord {
        id: "i-0123456789abcdef0".into(),
        state: "running".into(),
        private_ip: Some("10.0.10.20".into()),
        private_dns: None,
        tags: crate::plan::host_tags(&spec, host).into_iter().collect(),
    };
    let (read, notes) = gatehouse_aws::build::hosts(&[record], &aws);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(read.len(), 1, "the daemon takes the host");
    assert_eq!(read[0].names[0], "jupyter");
    assert_eq!(
        read[0].groups.iter().collect::<Vec<_>>(),
        host.groups.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        read[0].ports.iter().copied().collect::<Vec<_>>(),
        host.ports
    );
    assert_eq!(read[0].login_users, ["ubuntu", "ec2-user"]);
    // The daemon's tag prefix is gatehouse-vpc's to write, so the tags cannot drift apart.
    let text = format!("{MINIMAL}\n[bastion.daemon.aws]\ntag_prefix = \"lab/\"\n");
    assert_rejected(&text, "aws.tag_prefix is written by gatehouse-vpc");
}

#[test]
fn login_users_follow_the_daemons_rule_and_need_instance_connect() {
    let on = "\n[bastion.daemon.aws]\ninstance_connect = true\n";
    for (login, why) in [
        ("[\"root\"]", "never pushed for root"),
        ("[\"Ubuntu\"]", "not an OS user name"),
        ("[]", "no OS user listed"),
        ("[\"a\", \"b\", \"c\", \"d\", \"e\"]", "at most 4"),
    ] {
        let text = format!("{MINIMAL}login = {login}\n{on}");
        assert_rejected(&text, why);
    }
    // Without instance_connect the tag would do nothing.
    let text = format!("{MINIMAL}login = [\"ubuntu\"]\n");
    assert_rejected(&text, "login needs `instance_connect = true`");
    // A push is for the SSH port: a host without it has nothing to push for.
    let text = format!("{MINIMAL}login = [\"ubuntu\"]\n{on}").replace(
        "groups = [\"research\"]\nports = [22, 8888]",
        "groups = [\"research\"]\nports = [8888]",
    );
    assert_rejected(&text, "login is for tunnels to port 22");
    // Good: the tag is written.
    let spec = parse(
        "t.toml",
        &format!("{MINIMAL}login = [\"ubuntu\"]\n{on}"),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tags = crate::plan::host_tags(&spec, &spec.hosts[0]);
    assert_eq!(
        tags.get(crate::model::TAG_LOGIN).map(String::as_str),
        Some("ubuntu")
    );
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert!(!crate::plan::host_tags(&spec, &spec.hosts[0]).contains_key(crate::model::TAG_LOGIN));
}

#[test]
fn iam_events_is_off_by_default_and_writes_the_stacks_queue_into_the_daemon_config() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert!(!spec.bastion.iam_events);
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "210987654321")
            .unwrap_or_else(|e| panic!("{e:?}"));
    let aws = config.aws.expect("[aws]");
    assert_eq!(aws.events_queue_url, None);

    let text = with(
        "gatehouse_download_url",
        "iam_events = true\ngatehouse_download_url",
    );
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.bastion.iam_events);
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "210987654321")
            .unwrap_or_else(|e| panic!("{e:?}"));
    let aws = config.aws.expect("[aws]");
    // SQS's own URL form, in IAM's events region whatever the stack's region; the sweep keeps
    // the daemon's default for events.
    assert_eq!(
        aws.events_queue_url.as_deref(),
        Some("https://sqs.us-east-1.amazonaws.com/210987654321/gatehouse-lab-iam-events")
    );
    assert_eq!(
        aws.iam_sweep_interval,
        gatehouse_config::DEFAULT_EVENTS_SWEEP_INTERVAL
    );
    // With the daemon sent to another endpoint (LocalStack, moto), the URL is that endpoint's.
    let text = format!("{text}\n[bastion.daemon.aws]\nendpoint_url = \"http://127.0.0.1:5000/\"\n");
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "210987654321")
            .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        config.aws.expect("[aws]").events_queue_url.as_deref(),
        Some("http://127.0.0.1:5000/210987654321/gatehouse-lab-iam-events")
    );
}

#[test]
fn iam_events_are_refused_where_they_cannot_be() {
    // The queue URL is the stack's, written by gatehouse-vpc: the switch, not the key.
    let text = format!(
        "{MINIMAL}\n[bastion.daemon.aws]\nevents_queue_url = \
         \"https://sqs.us-east-1.amazonaws.com/123456789012/mine\"\n"
    );
    assert_rejected(
        &text,
        "aws.events_queue_url is written by gatehouse-vpc; remove it and set iam_events = true in [bastion]",
    );
    // Another partition cannot reach us-east-1, where IAM's events arrive.
    let text = MINIMAL.replace("eu-central-1", "cn-north-1").replace(
        "gatehouse_download_url",
        "iam_events = true\ngatehouse_download_url",
    );
    assert_eq!(
        errors(&text),
        ["27:14: iam_events: IAM's events arrive in us-east-1, in partition aws; region cn-north-1 is in partition aws-cn"]
    );
    // Off there, nothing to refuse.
    let text = MINIMAL.replace("eu-central-1", "cn-north-1");
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn the_audit_retention_is_a_year_by_default_and_one_cloudwatch_accepts() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert_eq!(spec.bastion.audit_retention_days, 365);
    for days in [1, 30, 3653] {
        let text = with(
            "gatehouse_download_url",
            &format!("audit_retention_days = {days}\ngatehouse_download_url"),
        );
        let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{days}: {e}"));
        assert_eq!(spec.bastion.audit_retention_days, days);
    }
    for days in ["0", "42", "-1", "3654", "99999999999"] {
        let text = with(
            "gatehouse_download_url",
            &format!("audit_retention_days = {days}\ngatehouse_download_url"),
        );
        assert_eq!(
            errors(&text),
            [format!(
                "27:24: audit_retention_days = {days}: CloudWatch Logs keeps log events for one \
                 of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, \
                 2192, 2557, 2922, 3288, 3653 days"
            )]
        );
    }
}

#[test]
fn the_audit_file_and_log_group_are_written_by_gatehouse_vpc() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "123456789012")
            .unwrap_or_else(|e| panic!("{e:?}"));
    // The daemon's StateDirectory, as the systemd unit declares it.
    assert!(crate::userdata::SYSTEMD_UNIT.contains("\nStateDirectory=gatehouse\n"));
    assert_eq!(
        config.audit.file.as_deref(),
        Some(std::path::Path::new("/var/lib/gatehouse/audit.jsonl"))
    );
    let aws = config.aws.expect("[aws]");
    assert_eq!(aws.audit_log_group.as_deref(), Some("/gatehouse/lab/audit"));
    // The stream is the daemon's default (the host name) unless the spec names one.
    assert_eq!(aws.audit_log_stream, None);
    let text = format!("{MINIMAL}\n[bastion.daemon.aws]\naudit_log_stream = \"bastion\"\n");
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "123456789012")
            .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        config.aws.and_then(|a| a.audit_log_stream).as_deref(),
        Some("bastion")
    );
    // Neither may be set in [bastion.daemon].
    for (table, key, value) in [
        ("audit", "file", "\"/tmp/audit.jsonl\""),
        ("aws", "audit_log_group", "\"/mine\""),
    ] {
        let text = format!("{MINIMAL}\n[bastion.daemon.{table}]\n{key} = {value}\n");
        assert_rejected(
            &text,
            &format!(
                "bastion.daemon: {table}.{key} is written by gatehouse-vpc; remove it (the audit \
                 lines go to /var/lib/gatehouse/audit.jsonl and from there to the stack's log \
                 group /gatehouse/lab/audit, kept for [bastion] audit_retention_days)"
            ),
        );
    }
}

#[test]
fn replicas_are_one_by_default_and_more_need_public_subnets_in_two_zones() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert_eq!(spec.bastion.replicas, 1);
    assert!(!spec.bastion.scaled_out() && !spec.bastion.fixed_addresses);
    // MINIMAL has one public subnet, in one zone.
    let text = with(
        "gatehouse_download_url",
        "replicas = 2\ngatehouse_download_url",
    );
    assert_eq!(
        errors(&text),
        [
            "27:12: replicas = 2 needs public subnets in at least two availability zones (the \
          balancer and the group span them); the spec has them in eu-central-1a"
        ]
    );
    let two_zones = text.replace(
        "[[subnets]]\nname = \"private-a\"",
        "[[subnets]]\nname = \"dmz-b\"\ntier = \"public\"\ncidr = \"10.0.1.0/24\"\naz = \"eu-central-1b\"\n\n[[subnets]]\nname = \"private-a\"",
    );
    let spec = parse("t.toml", &two_zones, None).expect("two zones");
    assert_eq!(spec.bastion.replicas, 2);
    assert!(spec.bastion.scaled_out());
    for n in ["0", "-3", "21", "99999999999"] {
        assert_rejected(
            &two_zones.replace("replicas = 2", &format!("replicas = {n}")),
            &format!("replicas = {n}: 1 to 20"),
        );
    }
    // Fixed addresses are the balancer's: refused for one bastion, which has its own.
    assert_rejected(
        &with(
            "gatehouse_download_url",
            "fixed_addresses = true\ngatehouse_download_url",
        ),
        "fixed_addresses is for replicas >= 2",
    );
    let spec = parse(
        "t.toml",
        &two_zones.replace("replicas = 2", "replicas = 2\nfixed_addresses = true"),
        None,
    )
    .expect("fixed addresses");
    assert!(spec.bastion.fixed_addresses);
    // The settings gatehouse-vpc writes for replicas may not be set in [bastion.daemon].
    for (table, key, value) in [
        ("server", "proxy_listen", "[\"0.0.0.0:2222\"]"),
        ("server", "trusted_proxies", "[\"10.0.0.0/8\"]"),
        ("server", "health_listen", "\"0.0.0.0:9999\""),
        ("aws", "shared_snapshot", "\"s3://b/k\""),
    ] {
        assert_rejected(
            &format!("{two_zones}\n[bastion.daemon.{table}]\n{key} = {value}\n"),
            &format!("bastion.daemon: {table}.{key} is written by gatehouse-vpc; remove it"),
        );
    }
}

#[test]
fn alerts_take_email_addresses_once_and_thresholds_of_at_least_one() {
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    assert_eq!(spec.alerts.emails, Vec::<String>::new());
    assert_eq!(spec.alerts.failed_logins, DEFAULT_FAILED_LOGINS_ALARM);
    assert_eq!(spec.alerts.refusals, DEFAULT_REFUSALS_ALARM);
    let text = format!(
        "{MINIMAL}\n[alerts]\nemails = [\"ops@example.org\"]\nfailed_logins = 5\nrefusals = 50\n"
    );
    let spec = parse("t.toml", &text, None).expect("valid");
    assert_eq!(spec.alerts.emails, ["ops@example.org"]);
    assert_eq!((spec.alerts.failed_logins, spec.alerts.refusals), (5, 50));
    for (alerts, needle) in [
        ("emails = [\"ops\"]", "\"ops\" is not an email address"),
        ("emails = [\"a b@example.org\"]", "is not an email address"),
        ("emails = [\"ops@localhost\"]", "is not an email address"),
        (
            "emails = [\"ops@example.org\", \"ops@example.org\"]",
            "\"ops@example.org\" listed twice",
        ),
        ("failed_logins = 0", "failed_logins = 0 must be at least 1"),
        ("refusals = -3", "refusals = -3 must be at least 1"),
        ("pager = \"x\"", "unknown field `pager`"),
    ] {
        assert_rejected(&format!("{MINIMAL}\n[alerts]\n{alerts}\n"), needle);
    }
}

#[test]
fn a_binary_with_debug_info_is_taken_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = |name: &str| {
        with(
            "gatehouse_download_url = \"https://example.org/gatehouse\"",
            &format!("gatehouse_binary = \"{name}\""),
        )
    };
    let origin = dir.path().join("t.toml");
    let origin = origin.to_str().expect("utf-8");
    // The section name across the boundary of two reads (64 KiB), as in a real file where
    // it sits anywhere.
    let mut debug = b"\x7fELF".to_vec();
    debug.resize(64 * 1024 - 5, 0);
    debug.extend_from_slice(b".debug_info\0.debug_line\0");
    std::fs::write(dir.path().join("debug"), &debug).expect("write");
    let spec = parse_with(origin, &text("debug"), None, ReadBinary::Yes).expect("valid");
    assert_eq!(spec.warnings.len(), 1, "{:?}", spec.warnings);
    assert!(
        spec.warnings[0].contains("has debug info"),
        "{:?}",
        spec.warnings
    );
    assert!(
        spec.warnings[0].contains("--profile dist"),
        "{:?}",
        spec.warnings
    );
    // Stripped of it (symbols kept): no warning.
    let mut dist = b"\x7fELF".to_vec();
    dist.resize(200 * 1024, 0);
    dist.extend_from_slice(b".symtab\0.strtab\0.text\0");
    std::fs::write(dir.path().join("dist"), &dist).expect("write");
    let spec = parse_with(origin, &text("dist"), None, ReadBinary::Yes).expect("valid");
    assert_eq!(spec.warnings, Vec::<String>::new());
}

/// The bastion role's statement on the key parameters, for `spec`.
fn key_statement(spec: &Spec) -> serde_json::Value {
    let policy = crate::policy::bastion_policy(spec, None, "210987654321");
    policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Sid"] == "HostKey")
        .expect("the key statement")
        .clone()
}

#[test]
fn sso_in_the_daemon_table_keeps_the_ca_in_the_stacks_parameter_and_maps_the_stacks_account() {
    let text = format!(
        "{MINIMAL}\n[bastion.daemon.sso]\npermission_sets = {{ Research = [\"research\"] }}\n"
    );
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.bastion.sso());
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "210987654321")
            .unwrap_or_else(|e| panic!("{e:?}"));
    let sso = config.sso.expect("[sso]");
    assert_eq!(sso.accounts, ["210987654321"], "the stack's own account");
    assert_eq!(
        sso.ca_key,
        std::path::Path::new(crate::userdata::USER_CA_PATH)
    );
    assert!(sso.iam_users, "IAM users map by default in AWS mode");
    let aws = config.aws.expect("[aws]");
    assert_eq!(
        aws.user_ca_ssm_parameter.as_deref(),
        Some("/gatehouse/lab/user_ca_ed25519")
    );
    // The bastion may read and create exactly the two key parameters.
    let keys = key_statement(&spec);
    let region = &spec.region;
    assert_eq!(
        keys["Resource"],
        serde_json::json!([
            format!("arn:aws:ssm:{region}:*:parameter/gatehouse/lab/host_ed25519"),
            format!("arn:aws:ssm:{region}:*:parameter/gatehouse/lab/user_ca_ed25519"),
        ])
    );
    // Accounts the spec names are kept; the key gatehouse-vpc writes is refused.
    let text = format!(
        "{MINIMAL}\n[bastion.daemon.sso]\naccounts = [\"111111111111\"]\n\
         permission_sets = {{ Research = [\"research\"] }}\n"
    );
    let spec = parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let config =
        crate::userdata::check_daemon_config(&spec, "vpc-0123456789abcdef0", "210987654321")
            .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.sso.expect("[sso]").accounts, ["111111111111"]);
    let text = format!(
        "{MINIMAL}\n[bastion.daemon.sso]\nca_key = \"/tmp/ca\"\n\
         permission_sets = {{ Research = [\"research\"] }}\n"
    );
    assert_rejected(&text, "sso.ca_key is written by gatehouse-vpc");
    // Without [sso], the bastion's key statement names the host key alone.
    let spec = parse("t.toml", MINIMAL, None).expect("valid");
    let keys = key_statement(&spec);
    assert!(keys["Resource"].is_string(), "{keys}");
}
