//! Audit shipping (`aws.audit_log_group`): every line of the audit file goes to a CloudWatch
//! Logs stream, so the audit trail outlives the instance.
//!
//! The audit file is the spool. The daemon appends each line whole and flushed, so a kill -9
//! loses nothing that was written; this module reads complete lines from the position it has
//! shipped up to, sends them (PutLogEvents, in batches under CloudWatch's limits, sorted by
//! their own timestamps), and only then moves the position, kept in `<audit file>.shipped`
//! (written atomically). A restart resumes there: no line is lost, and the only line shipped
//! twice is one of a batch that CloudWatch took but whose position was not yet saved when
//! the process died (at most one batch per crash). A file replaced or truncated (rotation)
//! is read again from its start. While CloudWatch cannot be reached, the lines wait in the
//! file and retries back off up to [`MAX_BACKOFF`]; the audit log itself never waits on AWS.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use crate::actions;
use crate::calls::Calls;
use crate::error::AwsError;

/// How often the file is looked at for new lines: the bound on a line's wait before it is sent.
pub const POLL: Duration = Duration::from_secs(1);
/// Longest wait between two tries while CloudWatch fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// CloudWatch counts 26 bytes per event besides its message.
const EVENT_OVERHEAD: usize = 26;
/// Bytes of one batch, overheads included (CloudWatch's limit is 1,048,576).
const MAX_BATCH_BYTES: usize = 1_000_000;
/// Events of one batch (CloudWatch's limit).
const MAX_EVENTS: usize = 10_000;
/// Longest message (CloudWatch's event limit is 256 KiB with the overhead); a longer line is
/// cut there and marked.
const MAX_MESSAGE: usize = 256 * 1024 - EVENT_OVERHEAD - 32;
/// Widest span of event times in one batch: CloudWatch rejects a batch spanning more than 24
/// hours whole (a minute of margin).
const MAX_SPAN_MS: i64 = (24 * 60 - 1) * 60 * 1000;
/// The oldest event CloudWatch takes is 14 days old: older lines are never sent (an hour of
/// margin, so that none is sent that ages past the limit on its way).
const MAX_AGE_MS: i64 = (14 * 24 - 1) * 3600 * 1000;
/// The newest event CloudWatch takes is 2 hours ahead (ten minutes of margin).
const MAX_AHEAD_MS: i64 = 110 * 60 * 1000;

/// How far the audit file has been shipped: the file (by inode) and the byte after the last
/// line sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The audit file's inode when it was read.
    pub inode: u64,
    /// Bytes shipped from its start.
    pub offset: u64,
}

/// Where the position of `audit_file` is kept.
pub fn position_path(audit_file: &Path) -> PathBuf {
    let mut name = audit_file.file_name().unwrap_or_default().to_os_string();
    name.push(".shipped");
    audit_file.with_file_name(name)
}

/// The position kept at `path`; the start of the file when there is none or it does not read
/// (then the whole file is shipped again: nothing is lost).
pub fn load_position(path: &Path) -> Position {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Position::default();
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(inode)), Some(Ok(offset)), None) => Position { inode, offset },
        _ => {
            tracing::warn!(file = %path.display(),
                "the audit shipping position does not read; shipping the audit file again \
                 from its start");
            Position::default()
        }
    }
}

/// Keeps `position` at `path`: a temporary file (0600), synced, renamed over it.
///
/// # Errors
/// It could not be written (the old position stays: lines are shipped again, not lost).
pub fn save_position(path: &Path, position: Position) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        writeln!(file, "{} {}", position.inode, position.offset)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)
}

/// The next lines to ship, and the position after them.
#[derive(Debug, Default)]
pub struct Batch {
    /// (milliseconds since the epoch, message), oldest first.
    pub events: Vec<(i64, String)>,
    /// Lines CloudWatch would reject for their time (older than 14 days, or more than 2
    /// hours ahead): passed over, never sent, and never counted as shipped.
    pub unshippable: Unshippable,
    /// Where the next batch starts once these are shipped.
    pub next: Position,
    /// The file was replaced or truncated since `from`: it is read from its start.
    pub restarted: bool,
}

/// Lines passed over because CloudWatch would reject them for their time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unshippable {
    /// Lines older than CloudWatch takes (14 days).
    pub too_old: usize,
    /// Lines further ahead than CloudWatch takes (2 hours: a clock that jumped).
    pub too_new: usize,
    /// The earliest and latest time among them, in milliseconds since the epoch.
    pub range: Option<(i64, i64)>,
}

impl Unshippable {
    fn add(&mut self, ts: i64, old: bool) {
        if old {
            self.too_old += 1;
        } else {
            self.too_new += 1;
        }
        self.range = Some(self.range.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts))));
    }

    /// How many lines were passed over.
    pub fn count(&self) -> usize {
        self.too_old + self.too_new
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The complete lines of `file` after `from`, as many as one PutLogEvents takes: under its
/// count and byte limits, and spanning less than 24 hours (a line that would widen the span
/// further starts the next batch). Lines CloudWatch would reject for their time (compared
/// with `now`) are passed over into [`Batch::unshippable`]. A line not yet ended by a newline
/// waits for the next batch.
///
/// # Errors
/// The file cannot be read (it may not exist yet).
pub fn read_batch(file: &Path, from: Position) -> std::io::Result<Batch> {
    read_batch_at(file, from, millis(SystemTime::now()))
}

fn read_batch_at(file: &Path, from: Position, now: i64) -> std::io::Result<Batch> {
    let mut handle = std::fs::File::open(file)?;
    let meta = handle.metadata()?;
    let restarted = meta.ino() != from.inode || meta.len() < from.offset;
    let start = if restarted { 0 } else { from.offset };
    handle.seek(SeekFrom::Start(start))?;
    let mut buffer = Vec::new();
    handle
        .take(MAX_BATCH_BYTES as u64)
        .read_to_end(&mut buffer)?;
    let mut events: Vec<(i64, String)> = Vec::new();
    let mut unshippable = Unshippable::default();
    let mut span: Option<(i64, i64)> = None;
    let (mut used, mut bytes) = (0usize, 0usize);
    while events.len() < MAX_EVENTS {
        let rest = &buffer[used..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            // No newline in a whole batch's worth: one line longer than a batch. Ship it cut,
            // or it would block the file for ever.
            if used == 0 && rest.len() == MAX_BATCH_BYTES {
                events.push(event(rest, now));
                used = rest.len();
            }
            break;
        };
        let line = &rest[..end];
        let cost = line.len().min(MAX_MESSAGE) + EVENT_OVERHEAD;
        if bytes + cost > MAX_BATCH_BYTES {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            used += end + 1;
            continue;
        }
        let (ts, message) = event(line, now);
        if ts < now.saturating_sub(MAX_AGE_MS) || ts > now.saturating_add(MAX_AHEAD_MS) {
            used += end + 1;
            unshippable.add(ts, ts < now);
            continue;
        }
        let wider = span.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts)));
        if wider.1 - wider.0 > MAX_SPAN_MS {
            // CloudWatch would reject the whole batch: this line starts the next one.
            break;
        }
        span = Some(wider);
        used += end + 1;
        bytes += cost;
        events.push((ts, message));
    }
    // CloudWatch takes a batch only in time order; the file is in write order.
    events.sort_by_key(|(ts, _)| *ts);
    Ok(Batch {
        events,
        unshippable,
        next: Position {
            inode: meta.ino(),
            offset: start + used as u64,
        },
        restarted,
    })
}

/// One line as an event: its `ts` field as the time (`now` when it has none), cut at
/// [`MAX_MESSAGE`].
fn event(line: &[u8], now: i64) -> (i64, String) {
    let text = String::from_utf8_lossy(line);
    let ms = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["ts"].as_str().map(str::to_owned))
        .and_then(|ts| humantime::parse_rfc3339_weak(&ts).ok())
        .map_or(now, millis);
    let message = if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…[cut at {MAX_MESSAGE} bytes]", &text[..cut])
    } else {
        text.into_owned()
    };
    (ms, message)
}

/// Ships one audit file to one log stream.
#[derive(Debug)]
pub struct Shipper {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    file: PathBuf,
    calls: Calls,
}

impl Shipper {
    /// A shipper of `file` to `stream` of `group`.
    pub fn new(
        client: aws_sdk_cloudwatchlogs::Client,
        group: String,
        stream: String,
        file: PathBuf,
    ) -> Shipper {
        Shipper {
            client,
            group,
            stream,
            file,
            calls: Calls::default(),
        }
    }

    /// Ships for ever (see the module docs). Logs the first failure of a run as a warning and
    /// the recovery at info.
    pub async fn run(self) {
        let position_file = position_path(&self.file);
        let mut position = load_position(&position_file);
        let mut stream_ready = false;
        let mut failures: u32 = 0;
        tracing::info!(group = %self.group, stream = %self.stream, file = %self.file.display(),
            shipped = position.offset, "shipping the audit log to CloudWatch Logs");
        loop {
            let outcome = self.step(&mut position, &mut stream_ready).await;
            match outcome {
                Ok(Some(sent)) => {
                    if failures > 0 {
                        tracing::info!(failures, "shipping audit lines to CloudWatch Logs again");
                    }
                    failures = 0;
                    tracing::debug!(sent, offset = position.offset, "audit lines shipped");
                    if let Err(e) = save_position(&position_file, position) {
                        tracing::warn!(file = %position_file.display(), error = %e,
                            "cannot keep the audit shipping position; a restart ships these \
                             lines again");
                    }
                }
                Ok(None) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, group = %self.group,
                            "cannot ship audit lines to CloudWatch Logs; they wait in the audit \
                             file");
                    }
                    let backoff = POLL.saturating_mul(1 << failures.min(5)).min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One try: the stream if needed, then the next batch. `Ok(None)`: nothing to send.
    async fn step(
        &self,
        position: &mut Position,
        stream_ready: &mut bool,
    ) -> Result<Option<usize>, AwsError> {
        if !*stream_ready {
            self.create_stream().await?;
            *stream_ready = true;
        }
        let (file, from) = (self.file.clone(), *position);
        let batch = tokio::task::spawn_blocking(move || read_batch(&file, from))
            .await
            .map_err(|e| AwsError::Suspicious(format!("reading the audit file: {e}")))?;
        let batch = match batch {
            Ok(batch) => batch,
            // Not written yet: nothing to ship.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AwsError::Suspicious(format!(
                    "reading {}: {e}",
                    self.file.display()
                )))
            }
        };
        if batch.restarted && from != Position::default() {
            tracing::info!(file = %self.file.display(),
                "the audit file was replaced or truncated; shipping it from its start");
        }
        let skipped = &batch.unshippable;
        if let Some((first, last)) = skipped.range {
            tracing::warn!(file = %self.file.display(), too_old = skipped.too_old,
                too_new = skipped.too_new, first = %rfc3339(first), last = %rfc3339(last),
                "audit lines not shipped: CloudWatch Logs takes events from 14 days ago to 2 \
                 hours ahead only; these stay in the audit file alone");
        }
        if batch.events.is_empty() {
            *position = batch.next;
            return Ok(None);
        }
        let sent = batch.events.len();
        let rejected = match self.put(batch.events).await {
            Ok(rejected) => rejected,
            Err(e) => {
                if e.code() == Some("ResourceNotFoundException") {
                    // The stream (or the group) went away: make the stream again next time.
                    *stream_ready = false;
                }
                return Err(e);
            }
        };
        *position = batch.next;
        Ok(Some(sent - rejected))
    }

    /// Creates the stream; one that exists already is used.
    async fn create_stream(&self) -> Result<(), AwsError> {
        self.calls.count(actions::CREATE_LOG_STREAM);
        match self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = AwsError::call("logs", "CreateLogStream", &e);
                if e.code() == Some("ResourceAlreadyExistsException") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Sends `events` (oldest first). Returns how many CloudWatch rejected for their time
    /// (logged with the reason; they stay in the audit file alone, and are not counted as
    /// shipped).
    async fn put(&self, events: Vec<(i64, String)>) -> Result<usize, AwsError> {
        let total = events.len();
        let events: Vec<InputLogEvent> = events
            .into_iter()
            .filter_map(|(ts, message)| {
                InputLogEvent::builder()
                    .timestamp(ts)
                    .message(message)
                    .build()
                    .ok()
            })
            .collect();
        self.calls.count(actions::PUT_LOG_EVENTS);
        let answer = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .send()
            .await
            .map_err(|e| AwsError::call("logs", "PutLogEvents", &e))?;
        let Some(rejected) = answer.rejected_log_events_info() else {
            return Ok(0);
        };
        // The indexes are of the batch sent: events up to an end index were too old (or
        // past the group's retention), events from the start index on too new.
        let count = |index: Option<i32>| usize::try_from(index.unwrap_or(-1) + 1).unwrap_or(0);
        let too_old = count(rejected.too_old_log_event_end_index())
            .max(count(rejected.expired_log_event_end_index()));
        let too_new = rejected
            .too_new_log_event_start_index()
            .and_then(|i| usize::try_from(i).ok())
            .map_or(0, |i| total.saturating_sub(i));
        let lost = (too_old + too_new).min(total);
        tracing::warn!(file = %self.file.display(), too_old, too_new,
            "CloudWatch Logs rejected audit lines for their time (it takes events from 14 days \
             ago, and within the group's retention, to 2 hours ahead); these stay in the audit \
             file alone");
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Now" for the tests' files, written on 2026-01-01: 2026-01-02T00:00Z.
    const NOW: i64 = 1_767_312_000_000;

    fn line(ts: &str, n: u32) -> String {
        format!("{{\"ts\":\"{ts}\",\"event\":\"auth.success\",\"n\":{n}}}\n")
    }

    #[test]
    fn only_complete_lines_are_shipped_and_the_position_follows_them() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("audit.jsonl");
        let mut text = line("2026-01-01T10:00:00.000Z", 1) + &line("2026-01-01T10:00:01.000Z", 2);
        text.push_str("{\"ts\":\"2026-01-01T10:00:02.000Z\",\"half");
        std::fs::write(&file, &text).expect("write");
        let batch = read_batch_at(&file, Position::default(), NOW).expect("batch");
        assert_eq!(batch.events.len(), 2, "{:?}", batch.events);
        assert_eq!(batch.events[0].0, 1_767_261_600_000);
        assert!(batch.events[1].1.contains("\"n\":2"));
        let whole = text.rfind('\n').expect("newline") + 1;
        assert_eq!(batch.next.offset, whole as u64);
        // The half line waits; once ended, it is the next batch, alone.
        let again = read_batch_at(&file, batch.next, NOW).expect("batch");
        assert!(again.events.is_empty());
        assert_eq!(again.next, batch.next);
        std::fs::write(&file, text.clone() + "\":1}\n").expect("write");
        let next = read_batch_at(&file, batch.next, NOW).expect("batch");
        assert_eq!(next.events.len(), 1);
        assert!(
            next.events[0].1.ends_with("\"half\":1}"),
            "{:?}",
            next.events
        );
        assert!(!next.restarted);
    }

    #[test]
    fn a_batch_is_in_time_order_and_a_line_without_a_time_gets_now() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("audit.jsonl");
        let text = line("2026-01-01T10:00:05.000Z", 1)
            + &line("2026-01-01T10:00:01.000Z", 2)
            + "not json\n\n";
        std::fs::write(&file, text).expect("write");
        let batch = read_batch_at(&file, Position::default(), NOW).expect("batch");
        let order: Vec<&str> = batch.events.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(order.len(), 3, "blank lines are skipped: {order:?}");
        assert!(
            order[0].contains("\"n\":2") && order[1].contains("\"n\":1"),
            "{order:?}"
        );
        assert_eq!(order[2], "not json");
        assert!(batch.events[2].0 > 1_767_261_605_000);
    }

    #[test]
    fn a_replaced_or_truncated_file_is_shipped_from_its_start() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("audit.jsonl");
        std::fs::write(&file, line("2026-01-01T10:00:00.000Z", 1).repeat(3)).expect("write");
        let first = read_batch_at(&file, Position::default(), NOW).expect("batch");
        assert_eq!(first.events.len(), 3);
        // Truncated (logrotate's copytruncate): shorter than the position.
        std::fs::write(&file, line("2026-01-01T11:00:00.000Z", 9)).expect("write");
        let after = read_batch_at(&file, first.next, NOW).expect("batch");
        assert!(after.restarted);
        assert_eq!(after.events.len(), 1);
        // Replaced (renamed away, a new file): another inode.
        let moved = dir.path().join("audit.jsonl.1");
        std::fs::rename(&file, &moved).expect("rename");
        std::fs::write(&file, line("2026-01-01T12:00:00.000Z", 7).repeat(5)).expect("write");
        let replaced = read_batch_at(&file, after.next, NOW).expect("batch");
        assert!(replaced.restarted);
        assert_eq!(replaced.events.len(), 5);
    }

    #[test]
    fn a_batch_stays_under_cloudwatchs_limits_and_an_endless_line_is_cut() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("audit.jsonl");
        // 12,000 short lines: more events than one batch takes.
        std::fs::write(
            &file,
            "{\"ts\":\"2026-01-01T10:00:00.000Z\"}\n".repeat(12_000),
        )
        .expect("write");
        let batch = read_batch_at(&file, Position::default(), NOW).expect("batch");
        assert_eq!(batch.events.len(), MAX_EVENTS);
        let rest = read_batch_at(&file, batch.next, NOW).expect("batch");
        assert_eq!(rest.events.len(), 2_000);
        // One line longer than a batch, without a newline yet: shipped cut, not stuck.
        let long = dir.path().join("long.jsonl");
        std::fs::write(&long, "x".repeat(MAX_BATCH_BYTES + 10)).expect("write");
        let cut = read_batch_at(&long, Position::default(), NOW).expect("batch");
        assert_eq!(cut.events.len(), 1);
        assert!(
            cut.events[0].1.len() < 256 * 1024,
            "{}",
            cut.events[0].1.len()
        );
        assert!(cut.events[0].1.ends_with("bytes]"));
        assert_eq!(cut.next.offset, MAX_BATCH_BYTES as u64);
    }

    #[test]
    fn the_position_survives_a_round_trip_and_a_broken_one_ships_everything_again() {
        let dir = tempfile::tempdir().expect("dir");
        let path = position_path(&dir.path().join("audit.jsonl"));
        assert!(path.ends_with("audit.jsonl.shipped"));
        assert_eq!(load_position(&path), Position::default());
        let at = Position {
            inode: 42,
            offset: 1234,
        };
        save_position(&path, at).expect("save");
        assert_eq!(load_position(&path), at);
        std::fs::write(&path, "42 not-a-number\n").expect("write");
        assert_eq!(load_position(&path), Position::default());
    }

    /// A file written over three days (a day-long outage, a lost position, shipping turned on
    /// over an old file): no batch spans more than 24 hours, so CloudWatch takes each; lines
    /// CloudWatch would reject for their time are passed over and counted, never sent.
    #[test]
    fn batches_span_less_than_a_day_and_lines_cloudwatch_rejects_are_counted_not_sent() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("audit.jsonl");
        let text = line("2025-12-25T00:00:00.000Z", 0)
            + &line("2026-01-10T00:00:00.000Z", 1)
            + &line("2026-01-10T23:00:00.000Z", 2)
            + &line("2026-01-11T01:00:00.000Z", 3)
            + &line("2026-01-12T12:00:00.000Z", 4)
            + &line("2026-01-13T12:00:00.000Z", 5)
            + &line("2026-01-20T00:00:00.000Z", 6);
        std::fs::write(&file, text).expect("write");
        // "Now" is 2026-01-14T00:00Z: the first line is older than 14 days, the last is days
        // ahead.
        let now = 1_768_348_800_000;
        let mut position = Position::default();
        let mut batches = Vec::new();
        let mut unshippable = Unshippable::default();
        for _ in 0..10 {
            let batch = read_batch_at(&file, position, now).expect("batch");
            unshippable.too_old += batch.unshippable.too_old;
            unshippable.too_new += batch.unshippable.too_new;
            position = batch.next;
            if batch.events.is_empty() {
                break;
            }
            let n: Vec<String> = batch
                .events
                .iter()
                .map(|(_, m)| {
                    m[m.find("\"n\":").expect("n") + 4..]
                        .trim_end_matches('}')
                        .to_owned()
                })
                .collect();
            let (first, last) = (batch.events[0].0, batch.events[batch.events.len() - 1].0);
            assert!(last - first <= MAX_SPAN_MS, "{n:?}");
            batches.push(n.join(","));
        }
        assert_eq!(batches, ["1,2", "3", "4", "5"]);
        assert_eq!((unshippable.too_old, unshippable.too_new), (1, 1));
        assert_eq!(
            position.offset,
            std::fs::metadata(&file).expect("meta").len()
        );
    }
}
