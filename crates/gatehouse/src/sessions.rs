//! `gatehouse sessions`: who is in now, read from the running daemon's control socket (see
//! `gatehouse_ssh::control`). The daemon answers with one JSON document and closes; this
//! prints it as a table, or as is with `--json`.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use gatehouse_ssh::control::View;

/// Where the systemd unit's daemon listens (`RuntimeDirectory=gatehouse`).
pub const DEFAULT_SOCKET: &str = "/run/gatehouse/control.sock";
/// Largest answer read: the view of many thousands of sessions.
const MAX_ANSWER: u64 = 64 << 20;

pub fn print(socket: &Path, json: bool) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the daemon's control socket {} (server.control_socket; root or \
             the daemon's group only)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    stream
        .take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .context("reading the daemon's answer")?;
    let view: View = serde_json::from_str(&answer).context("the daemon's answer is not a view")?;
    if json {
        println!("{}", answer.trim_end());
        return Ok(());
    }
    if view.sessions.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    print!("{}", table(&view));
    Ok(())
}

/// The view as text: a line per session, an indented line per tunnel.
fn table(view: &View) -> String {
    let mut out = String::new();
    for s in &view.sessions {
        out += &format!(
            "{}  {}  from {}  since {}  idle {}s  {} tunnel(s)\n",
            s.session,
            s.user,
            s.source,
            s.since,
            s.idle_s,
            s.tunnels.len()
        );
        for t in &s.tunnels {
            out += &format!(
                "    #{} {}:{} ({}, {})  up {}  down {}  idle {}s\n",
                t.tunnel,
                t.target,
                t.port,
                t.host,
                t.dial,
                bytes(t.bytes_up),
                bytes(t.bytes_down),
                t.idle_s
            );
        }
    }
    out
}

/// A byte count people read at a glance.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_prints_a_line_per_session_and_per_tunnel() {
        let view: View = serde_json::from_str(
            r#"{"sessions":[{"session":"a-1","user":"alice","source":"10.0.0.2:5000",
            "since":"2026-12-07T10:00:00Z","idle_s":3,"tunnels":[{"tunnel":7,"host":"jupyter",
            "target":"jupyter","port":8888,"dial":"10.0.3.140:8888","bytes_up":2048,
            "bytes_down":5,"idle_s":1}]}]}"#,
        )
        .unwrap();
        let text = table(&view);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("a-1  alice  from 10.0.0.2:5000"), "{text}");
        assert!(
            text.contains("#7 jupyter:8888 (jupyter, 10.0.3.140:8888)  up 2.0 KiB  down 5 B"),
            "{text}"
        );
    }
}
