//! `gatehouse audit`: what happened, summed up from an audit file (the JSON lines of
//! `gatehouse_ssh::audit`): logins by user, failed logins by reason, tunnels by host with bytes,
//! refusals by reason, and the sources refused most. `connection.refused.summary` lines (the
//! refusals that had no line of their own under a flood) count in full.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;

/// Which lines count.
#[derive(Default)]
pub struct Filter {
    /// Only lines at most this old.
    pub since: Option<Duration>,
    /// Only lines about this user.
    pub user: Option<String>,
    /// Only tunnel lines about this host (its name, or the target as typed).
    pub host: Option<String>,
    /// Only refusals (failed logins, denied tunnels and requests, refused connections,
    /// revocations, penalties).
    pub refused: bool,
}

/// What the lines add up to.
#[derive(Default, Debug)]
pub struct Summary {
    pub lines: u64,
    pub unreadable: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// By user: (logins, failed attempts).
    pub logins: BTreeMap<String, (u64, u64)>,
    pub failures: BTreeMap<String, u64>,
    /// By host: (tunnels opened, bytes up, bytes down).
    pub tunnels: BTreeMap<String, (u64, u64, u64)>,
    /// "connection: code", "tunnel: code", "request: kind", "revoked: kind", "penalized".
    pub refusals: BTreeMap<String, u64>,
    /// Refused connections and failed logins by source address.
    pub sources: BTreeMap<String, u64>,
}

const REFUSALS: [&str; 8] = [
    "auth.failure",
    "tunnel.deny",
    "request.deny",
    "connection.refused",
    "connection.refused.summary",
    "session.revoked",
    "tunnel.revoked",
    "source.penalized",
];

/// Reads `path` and prints the summary.
pub fn print(path: &Path, filter: &Filter) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the audit log {}", path.display()))?;
    let mut summary = Summary::default();
    let now = SystemTime::now();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        summary.add(&line, filter, now);
    }
    print!("{}", summary.render(path));
    Ok(())
}

impl Summary {
    /// Counts one audit line, if `filter` lets it through.
    pub fn add(&mut self, line: &str, filter: &Filter, now: SystemTime) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.unreadable += u64::from(!line.trim().is_empty());
            return;
        };
        let text = |key: &str| v[key].as_str().unwrap_or("").to_owned();
        let num = |key: &str| v[key].as_u64().unwrap_or(0);
        let (event, ts) = (text("event"), text("ts"));
        if let Some(since) = filter.since {
            let at = humantime::parse_rfc3339_weak(&ts).ok();
            if at.is_none_or(|at| now.duration_since(at).is_ok_and(|age| age > since)) {
                return;
            }
        }
        if filter.user.as_ref().is_some_and(|u| *u != text("user")) {
            return;
        }
        if let Some(host) = &filter.host {
            let about = |key: &str| text(key).eq_ignore_ascii_case(host);
            if !about("host") && !about("target") {
                return;
            }
        }
        if filter.refused && !REFUSALS.contains(&event.as_str()) {
            return;
        }
        self.lines += 1;
        self.first.get_or_insert_with(|| ts.clone());
        self.last = Some(ts);
        let source = || {
            let s = text("source");
            s.rsplit_once(':').map(|(ip, _)| ip.to_owned()).unwrap_or(s)
        };
        match event.as_str() {
            "auth.success" => self.logins.entry(text("user")).or_default().0 += 1,
            "auth.failure" => {
                self.logins.entry(text("user")).or_default().1 += 1;
                *self.failures.entry(text("reason")).or_default() += 1;
                *self.sources.entry(source()).or_default() += 1;
            }
            "tunnel.open" => self.tunnels.entry(text("host")).or_default().0 += 1,
            "tunnel.close" => {
                let t = self.tunnels.entry(text("host")).or_default();
                t.1 += num("bytes_up");
                t.2 += num("bytes_down");
            }
            "tunnel.deny" => self.refuse(format!("tunnel: {}", text("reason_code")), 1),
            "request.deny" => {
                let request = text("request");
                let kind = request.split_whitespace().next().unwrap_or("other");
                self.refuse(format!("request: {kind}"), 1);
            }
            "connection.refused" => {
                self.refuse(format!("connection: {}", text("reason_code")), 1);
                *self.sources.entry(source()).or_default() += 1;
            }
            "connection.refused.summary" => {
                let rest = num("count").saturating_sub(num("itemized"));
                self.refuse(format!("connection: {}", text("reason_code")), rest);
                for top in v["top_sources"].as_array().into_iter().flatten() {
                    let who = top["source"].as_str().unwrap_or("").to_owned();
                    *self.sources.entry(who).or_default() += top["count"].as_u64().unwrap_or(0);
                }
            }
            "session.revoked" => self.refuse("revoked: session".into(), 1),
            "tunnel.revoked" => self.refuse("revoked: tunnel".into(), 1),
            "source.penalized" => self.refuse("penalized".into(), 1),
            _ => {}
        }
    }

    fn refuse(&mut self, what: String, n: u64) {
        *self.refusals.entry(what).or_default() += n;
    }

    /// The summary as text tables.
    pub fn render(&self, path: &Path) -> String {
        let mut out = format!(
            "{}: {} lines, {} .. {}{}\n",
            path.display(),
            self.lines,
            self.first.as_deref().unwrap_or("-"),
            self.last.as_deref().unwrap_or("-"),
            if self.unreadable > 0 {
                format!(" ({} unreadable lines skipped)", self.unreadable)
            } else {
                String::new()
            }
        );
        let mut section = |title: &str, rows: Vec<String>| {
            if !rows.is_empty() {
                out += &format!("\n{title}\n");
                rows.iter().for_each(|r| out += &format!("  {r}\n"));
            }
        };
        section(
            "logins (user, logins, failed attempts)",
            self.logins
                .iter()
                .map(|(u, (ok, failed))| format!("{u:<24} {ok:>8} {failed:>8}"))
                .collect(),
        );
        section(
            "failed logins by reason",
            counted(&self.failures, usize::MAX),
        );
        section(
            "tunnels by host (host, opened, bytes up, bytes down)",
            self.tunnels
                .iter()
                .map(|(h, (n, up, down))| format!("{h:<24} {n:>8} {up:>14} {down:>14}"))
                .collect(),
        );
        section("refusals by reason", counted(&self.refusals, usize::MAX));
        section(
            "sources refused most (connections and failed logins)",
            counted(&self.sources, 10),
        );
        out
    }
}

/// `map` as "key count" rows, the largest counts first, at most `top`.
fn counted(map: &BTreeMap<String, u64>, top: usize) -> Vec<String> {
    let mut rows: Vec<(&String, &u64)> = map.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    rows.into_iter()
        .take(top)
        .map(|(k, n)| format!("{k:<40} {n:>8}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_ssh::audit::{Audit, Event, SourceCount};
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines written by the daemon's own audit writer, so reader and writer agree.
    fn daemon_lines() -> String {
        let buffer = Buffer::default();
        let audit = Audit::to_writer(buffer.clone());
        let source = "10.0.0.9:4000".parse().unwrap();
        let dial = "10.0.3.140:8888".parse().unwrap();
        audit.record(Event::AuthSuccess {
            session: "s1",
            user: "alice",
            key: "SHA256:k",
            source,
        });
        audit.record(Event::AuthFailure {
            session: "s2",
            user: "mallory",
            method: "publickey",
            key: None,
            source,
            reason: "unknown_user",
        });
        audit.record(Event::TunnelOpen {
            session: "s1",
            tunnel: 1,
            user: "alice",
            target: "jupyter",
            port: 8888,
            host: "jupyter",
            dial,
        });
        audit.record(Event::TunnelClose {
            session: "s1",
            tunnel: 1,
            user: "alice",
            host: "jupyter",
            dial,
            bytes_up: 100,
            bytes_down: 2000,
            duration_ms: 5,
            reason: "closed",
        });
        audit.record(Event::TunnelDeny {
            session: "s1",
            user: "alice",
            target: "opsbox",
            port: 22,
            reason_code: "unknown_target",
            reason: "no",
        });
        audit.record(Event::ConnectionRefused {
            session: None,
            source,
            reason_code: "evicted",
            reason: "slot taken",
        });
        audit.record(Event::ConnectionRefusedSummary {
            reason_code: "evicted",
            count: 25,
            itemized: 10,
            summarized: 15,
            interval_s: 10,
            sources: 2,
            top_sources: vec![
                SourceCount {
                    source: "10.0.0.9",
                    count: 9,
                },
                SourceCount {
                    source: "10.0.0.8",
                    count: 6,
                },
            ],
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text + "not json\n"
    }

    fn summarize(filter: &Filter) -> Summary {
        let mut s = Summary::default();
        for line in daemon_lines().lines() {
            s.add(line, filter, SystemTime::now());
        }
        s
    }

    #[test]
    fn the_daemons_lines_add_up_summaries_in_full() {
        let s = summarize(&Filter::default());
        assert_eq!(s.lines, 7);
        assert_eq!(s.unreadable, 1);
        assert_eq!(s.logins["alice"], (1, 0));
        assert_eq!(s.logins["mallory"], (0, 1));
        assert_eq!(s.failures["unknown_user"], 1);
        assert_eq!(s.tunnels["jupyter"], (1, 100, 2000));
        assert_eq!(s.refusals["tunnel: unknown_target"], 1);
        // One itemized line, and the summary's 15 without a line of their own.
        assert_eq!(s.refusals["connection: evicted"], 16);
        // The failed login, the itemized refusal and the summary's 9.
        assert_eq!(s.sources["10.0.0.9"], 11);
        let text = s.render(Path::new("audit.jsonl"));
        assert!(text.contains("connection: evicted"), "{text}");
        assert!(text.contains("1 unreadable lines skipped"), "{text}");
    }

    #[test]
    fn filters_pick_the_user_the_host_refusals_and_the_period() {
        let alice = summarize(&Filter {
            user: Some("alice".into()),
            ..Filter::default()
        });
        assert_eq!(alice.lines, 4);
        assert!(!alice.logins.contains_key("mallory"));
        let refused = summarize(&Filter {
            refused: true,
            ..Filter::default()
        });
        assert!(refused.tunnels.is_empty() && refused.logins["mallory"] == (0, 1));
        let jupyter = summarize(&Filter {
            host: Some("JUPYTER".into()),
            ..Filter::default()
        });
        assert_eq!(jupyter.lines, 2);
        // Lines written just now are within an hour, and none is a second in the future.
        let recent = summarize(&Filter {
            since: Some(Duration::from_secs(3600)),
            ..Filter::default()
        });
        assert_eq!(recent.lines, 7);
        let mut old = Summary::default();
        old.add(
            r#"{"ts":"2020-01-01T00:00:00Z","event":"auth.success","user":"bob"}"#,
            &Filter {
                since: Some(Duration::from_secs(3600)),
                ..Filter::default()
            },
            SystemTime::now(),
        );
        assert_eq!(old.lines, 0);
    }
}
