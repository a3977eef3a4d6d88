//! The Debian package (`[package.metadata.deb]` in crates/gatehouse/Cargo.toml, built by
//! cargo-deb as the README says), checked where it lands: unpacked into a temporary root.
//!
//! The package is built from the debug binary the other tests run (`cargo deb --no-build` on
//! a target directory of the test's own that holds it as the dist build), so this costs seconds,
//! not the dist build's twenty minutes. What it proves: the files and their modes, the control
//! fields and the conffile, maintainer scripts that neither enable nor start anything, a binary
//! that runs and reads the packaged config, and units that `systemd-analyze verify` accepts
//! without a word and whose sandbox keeps its rating.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bastion::CMD_TIMEOUT;
use crate::hardening::{assert_service_exposure_at_most_1_0, assert_verify_silent};
use crate::harness::{gatehouse_bin, repo_root, run_with_timeout, Scratch};

/// `cargo deb` with `--fast` compression of the 130 MB debug binary: about 10 s when idle.
const DEB_TIMEOUT: Duration = Duration::from_secs(300);

/// Every file the package installs, with its mode. Nothing under /usr/local (Debian policy),
/// nothing under /var: systemd creates the state, runtime and log directories (the unit's
/// StateDirectory= and friends, owned by its DynamicUser).
const FILES: &[(&str, u32)] = &[
    ("etc/gatehouse/gatehouse.toml", 0o644),
    ("usr/bin/gatehouse", 0o755),
    ("usr/lib/systemd/system/gatehouse.service", 0o644),
    (
        "usr/lib/systemd/system/gatehouse.service.d/usr-bin.conf",
        0o644,
    ),
    ("usr/lib/systemd/system/gatehouse.socket", 0o644),
    ("usr/share/doc/gatehouse/README.md", 0o644),
    ("usr/share/doc/gatehouse/copyright", 0o644),
    ("usr/share/doc/gatehouse/examples/aws.toml", 0o644),
];

/// Builds the package the README's `cargo deb -p gatehouse --no-strip` builds, minus the
/// compile: the binary under test stands in for the dist build. Returns the .deb's path.
fn build_deb(scratch: &Scratch) -> PathBuf {
    let target = scratch.join("target");
    let dist = scratch.subdir("target/dist");
    let binary = dist.join("gatehouse");
    fs::hard_link(gatehouse_bin(), &binary)
        .or_else(|_| fs::copy(gatehouse_bin(), &binary).map(drop))
        .expect("put the binary under test where cargo-deb looks for the dist build");
    let deb = scratch.join("gatehouse.deb");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "deb",
            "-p",
            "gatehouse",
            "--no-strip",
            "--no-build",
            "--fast",
            "--locked",
        ])
        .arg("--output")
        .arg(&deb);
    let out = run_with_timeout(cargo, DEB_TIMEOUT);
    assert!(
        out.success(),
        "cargo deb (tests/run installs cargo-deb): {out}"
    );
    // A warning means the metadata is off (a missing asset, a profile it cannot read).
    assert!(
        !out.stderr_str().contains("warning"),
        "cargo deb warned: {out}"
    );
    deb
}

/// Every regular file under `root`, relative to it, with its permission bits.
fn files_under(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, u32>) {
        for entry in fs::read_dir(dir).expect("read a directory of the package") {
            let path = entry.expect("directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                walk(root, &path, found);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                found.insert(
                    rel.to_string_lossy().into_owned(),
                    meta.permissions().mode() & 0o7777,
                );
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(root, root, &mut found);
    found
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(args).arg(deb);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("dpkg-deb");
    out.stdout_str()
}

/// Runs the package's postinst as dpkg does on a first install, with deb-systemd-helper,
/// deb-systemd-invoke and systemctl replaced by stand-ins that log their arguments and answer
/// as on a machine that never had the package. Returns the log.
fn postinst_first_install(scratch: &Scratch, control: &Path) -> String {
    let log = scratch.join("helpers.log");
    let stand_in = format!(
        "#!/bin/sh\necho \"$(basename \"$0\") $*\" >>{log}\n\
         case \"$1\" in debian-installed) exit 1 ;; esac\nexit 0\n",
        log = log.display()
    );
    let bin = scratch.subdir("fake-bin");
    for name in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let path = scratch.write(Path::new("fake-bin").join(name), &stand_in);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stand-in");
    }
    let mut postinst = Command::new("sh");
    postinst
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .arg(control.join("postinst"))
        .arg("configure");
    run_with_timeout(postinst, CMD_TIMEOUT).expect_success("postinst configure");
    fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn debian_package_unpacks_to_a_binary_config_and_units_that_work() {
    let scratch = Scratch::new();
    let deb = build_deb(&scratch);

    // Control fields.
    let fields = dpkg_deb(&["-f"], &deb);
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the control file:\n{fields}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "gatehouse");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let mut arch = Command::new("dpkg");
    arch.arg("--print-architecture");
    let arch = run_with_timeout(arch, CMD_TIMEOUT);
    assert_eq!(field("Architecture"), arch.stdout_str().trim());
    assert!(field("Depends").contains("libc6"), "{fields}");

    // The config is a conffile: an upgrade keeps the administrator's edits.
    let control = scratch.join("control");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-e").arg(&deb).arg(&control);
    run_with_timeout(extract, CMD_TIMEOUT).expect_success("dpkg-deb -e");
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).expect("conffiles"),
        "/etc/gatehouse/gatehouse.toml\n"
    );

    // Nothing is enabled or started by installing, and an upgrade restarts nothing: the socket
    // takes port 22 and the packaged config's users are placeholders. Removal stops both units.
    let helpers = postinst_first_install(&scratch, &control);
    assert!(
        !helpers.split_whitespace().any(|w| w == "enable")
            && !helpers.contains("deb-systemd-invoke")
            && helpers
                .lines()
                .filter(|l| l.starts_with("systemctl"))
                .all(|l| l == "systemctl --system daemon-reload"),
        "a first install enables or starts units:\n{helpers}"
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let text = fs::read_to_string(control.join(script)).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("deb-systemd-invoke")) {
            assert!(
                script == "prerm" && line.trim().starts_with("deb-systemd-invoke stop "),
                "{script} runs `{}`:\n{text}",
                line.trim()
            );
        }
    }

    // The files, as dpkg unpacks them.
    let root = scratch.subdir("root");
    let mut unpack = Command::new("dpkg-deb");
    unpack.arg("-x").arg(&deb).arg(&root);
    run_with_timeout(unpack, CMD_TIMEOUT).expect_success("dpkg-deb -x");
    let expected: BTreeMap<String, u32> =
        FILES.iter().map(|(p, m)| ((*p).to_owned(), *m)).collect();
    assert_eq!(files_under(&root), expected);

    // The binary is the one built, not stripped again (cargo-deb's strip would take the symbol
    // names a panic's backtrace prints), and it runs.
    let installed = root.join("usr/bin/gatehouse");
    let mut cmp = Command::new("cmp");
    cmp.arg(gatehouse_bin()).arg(&installed);
    run_with_timeout(cmp, CMD_TIMEOUT).expect_success("packaged binary == built binary");
    let mut version = Command::new(&installed);
    version.arg("--version");
    let out = run_with_timeout(version, CMD_TIMEOUT);
    out.expect_success("gatehouse --version");
    assert_eq!(
        out.stdout_str().trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );

    // The packaged config is the reference one, and the packaged binary accepts it.
    let config = root.join("etc/gatehouse/gatehouse.toml");
    assert_eq!(
        fs::read(&config).expect("packaged config"),
        fs::read(repo_root().join("config/gatehouse.toml")).expect("config/gatehouse.toml")
    );
    let mut check = Command::new(&installed);
    check.arg("check").arg("--config").arg(&config);
    let out = run_with_timeout(check, CMD_TIMEOUT);
    out.expect_success("gatehouse check on the packaged config");
    assert!(out.stdout_str().contains(": OK"), "{out}");

    // The units are the ones in systemd/ (the same that gatehouse-vpc's cloud-init installs).
    let units = root.join("usr/lib/systemd/system");
    for unit in ["gatehouse.service", "gatehouse.socket"] {
        assert_eq!(
            fs::read(units.join(unit)).expect("packaged unit"),
            fs::read(repo_root().join("systemd").join(unit)).expect("unit in systemd/"),
            "{unit} differs from systemd/{unit}"
        );
    }

    // verify --root reads the units as systemd would on the installed machine: the drop-in
    // applied, ExecStart looked up inside the root (so /usr/bin/gatehouse must be there, and
    // the unit's /usr/local/bin/gatehouse must be overridden). It also needs the system's
    // targets (sysinit.target, sockets.target, ...), which no package of ours ships: copy the
    // host's into the root's /lib/systemd/system, a directory the package leaves alone.
    let targets = scratch.subdir("root/lib/systemd/system");
    for entry in fs::read_dir("/usr/lib/systemd/system").expect("the host's systemd units") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "target") {
            fs::copy(&path, targets.join(path.file_name().expect("name"))).expect("copy target");
        }
    }
    let root_arg = format!("--root={}", root.display());
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(&root_arg)
        .args(["gatehouse.socket", "gatehouse.service"]);
    assert_verify_silent(verify);
    assert_service_exposure_at_most_1_0(&[root_arg.as_str(), "gatehouse.service"]);
}
