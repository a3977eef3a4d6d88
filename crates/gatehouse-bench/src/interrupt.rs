//! Ctrl-C and `kill` during a run: the namespaces, their veths and every process in them (the
//! bastions, the private hosts' sshd, the clients) are removed before exiting, as a finished or
//! panicking run removes them through the harness's guards. A signal does not unwind, so those
//! guards would not run: a dedicated thread takes the signals instead and sweeps by name.

use std::path::Path;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::harness::netns::NAME_PREFIX;
use crate::harness::Netns;

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started after it;
/// child processes start with an empty mask) and starts the thread that waits for them.
/// Call first thing in `main`.
pub fn install() -> nix::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                eprintln!(
                    "gatehouse-bench: {signal}: removing this run's namespaces and processes"
                );
                sweep();
                std::process::exit(128 + signal as i32);
            }
        })
        .map(|_| ())
        .map_err(|_| nix::Error::EAGAIN)
}

/// Kills every process in this run's namespaces (`gh<pid>x...`) and deletes the namespaces.
fn sweep() {
    let me = std::process::id();
    let ours = format!("{NAME_PREFIX}{me}x");
    let Ok(entries) = std::fs::read_dir(Path::new("/run/netns")) else {
        return;
    };
    let namespaces: Vec<Netns> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&ours))
        .map(Netns::named)
        .collect();
    for ns in &namespaces {
        for pid in ns.pids() {
            if pid != me {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    for ns in &namespaces {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns.name()])
            .status();
    }
}
