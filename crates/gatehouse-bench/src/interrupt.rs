//! Ctrl-C and `kill` during a run: the namespaces, their veths and every process in them (the
//! bastions, the private hosts' sshd, the clients) are removed before exiting, as a finished or
//! panicking run removes them through the harness's guards. A signal does not unwind, so those
//! guards would not run: a dedicated thread takes the signals instead and sweeps by name.

use std::path::Path;

use nix::sys::signal::{SigSet, Signal};

use crate::harness::netns::{tear_down, NAME_PREFIX};
use crate::harness::Netns;

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started after it;
/// child processes start with an empty mask) and starts the thread that waits for them.
/// Call first thing in `main`.
pub fn install() -> std::io::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().map_err(std::io::Error::from)?;
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
}

/// Removes this run's namespaces (`gh<pid>x...`) and every process in them.
fn sweep() {
    let ours = format!("{NAME_PREFIX}{}x", std::process::id());
    let Ok(entries) = std::fs::read_dir(Path::new("/run/netns")) else {
        return;
    };
    let namespaces: Vec<Netns> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&ours))
        .map(Netns::named)
        .collect();
    tear_down(&namespaces.iter().collect::<Vec<_>>());
}
