//! Admission by progress: the pre-authentication slots (`server.max_unauthenticated`).
//!
//! A legitimate client sends its version line at once and finishes the key exchange within
//! tens of milliseconds; a slowloris never does. So when every slot is taken, a new connection
//! is not simply refused: it takes the slot of the connection that has made the least progress
//! (lowest [`Phase`]) for the longest (earliest into that phase), provided that one is at least
//! `server.eviction_min_age` old, or has made less progress than the newcomer (whose version
//! line may already be waiting on its socket: a live client needs no grace period to prove
//! itself against a silent one). If none is old enough yet, the newcomer waits (accepted, not
//! served: nothing is read from it) in a queue of at most [`WAITING_PER_SLOT`] per slot, first
//! come first served, until one is or a slot frees up ([`Admission::dispatch`] hands them
//! out); a full queue lets its oldest go for the newcomer. A waiter whose version line arrives
//! goes ahead of the queue ([`Admission::try_ahead`]). So neither a burst of attackers
//! arriving together nor a flood filling the queue locks out a client that speaks. The evicted connection is cut by its
//! own task (its [`Progress::evicted`] token), which audits and charges it. With
//! `eviction_min_age` at `login_grace` or more nobody is evicted, nobody waits, and the cap is
//! a hard cap.
//!
//! Each connection also has a deadline per phase (`version_grace`, `kex_grace`, then
//! `login_grace`, all counted from admission): [`Progress::deadline`].
//!
//! The table is ordered by (phase, entered the phase, id), so finding a victim and moving a
//! connection to its next phase are O(log n) under one lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// How far a connection has come before authenticating. Ordered: later is more progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Accepted (and through the PROXY header, if any); no version line yet.
    Connected,
    /// The client's `SSH-` version line arrived; the key exchange is under way.
    Version,
    /// The key exchange is done: the client asked to authenticate.
    Authenticating,
}

/// When each phase must be over, counted from admission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub version: Duration,
    pub kex: Duration,
    pub login: Duration,
}

impl Deadlines {
    /// The deadline of `phase` (never past `login`), its audit code and reason.
    fn of(&self, phase: Phase) -> (Duration, &'static str, &'static str) {
        let (limit, code, reason) = match phase {
            Phase::Connected => (
                self.version,
                "version_grace",
                "no SSH version line within server.version_grace",
            ),
            Phase::Version => (
                self.kex,
                "kex_grace",
                "key exchange not done within server.kex_grace",
            ),
            Phase::Authenticating => (self.login, "login_grace", "login grace time exceeded"),
        };
        if limit < self.login {
            (limit, code, reason)
        } else {
            (self.login, "login_grace", "login grace time exceeded")
        }
    }
}

type Key = (Phase, Instant, u64);

/// Connections that may wait for a slot, per slot (only while eviction is on).
pub(crate) const WAITING_PER_SLOT: usize = 4;

/// The pre-authentication slots of the whole bastion.
pub(crate) struct Admission {
    limit: usize,
    min_age: Duration,
    /// Whether a newcomer may take an old enough connection's slot at all.
    evicting: bool,
    max_waiting: usize,
    table: Mutex<Table>,
    /// Wakes [`Admission::dispatch`]: a connection waits, a slot was released, one moved on.
    wake: Notify,
}

struct Table {
    order: BTreeMap<Key, Arc<Progress>>,
    next_id: u64,
    /// Connections waiting for a slot, first come first served.
    waiting: VecDeque<oneshot::Sender<Grant>>,
}

/// A slot, and the connection evicted for it (its token already cancelled), if any.
pub(crate) type Grant = (Admitted, Option<Arc<Progress>>);

/// What a new connection gets.
pub(crate) enum Admit {
    /// A slot now.
    Now(Grant),
    /// A place in the queue: the slot comes through the receiver.
    Wait(oneshot::Receiver<Grant>),
    /// Nothing: every slot is taken and eviction is off.
    Full,
}

/// One admitted connection's place in the table. Shared by the table, the connection task,
/// its socket (which sees the version line) and its handler (which sees authentication).
pub(crate) struct Progress {
    admission: Arc<Admission>,
    id: u64,
    admitted: Instant,
    /// Where it sits in the table (phase, since); `None` once it left it.
    key: Mutex<Option<(Phase, Instant)>>,
    phase: watch::Sender<Phase>,
    /// Cancelled when a newcomer took this connection's slot.
    pub evicted: CancellationToken,
}

/// Releases the slot when dropped (if it was not released or taken before).
pub(crate) struct Admitted(pub Arc<Progress>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Admission {
    /// `limit` slots; eviction (and waiting) only if `min_age` is under `login_grace`.
    pub fn new(limit: usize, min_age: Duration, login_grace: Duration) -> Arc<Self> {
        let evicting = min_age < login_grace;
        Arc::new(Admission {
            limit: limit.max(1),
            min_age,
            evicting,
            max_waiting: if evicting {
                limit.saturating_mul(WAITING_PER_SLOT)
            } else {
                0
            },
            table: Mutex::new(Table {
                order: BTreeMap::new(),
                next_id: 0,
                waiting: VecDeque::new(),
            }),
            wake: Notify::new(),
        })
    }

    /// Admits a new connection that has come as far as `phase`: a free slot, or the slot of
    /// the least-progressed connection if that one is old enough or behind the newcomer, or a
    /// place in the queue, or nothing.
    pub fn admit(self: &Arc<Self>, now: Instant, phase: Phase) -> Admit {
        let mut table = lock(&self.table);
        table.waiting.retain(|w| !w.is_closed());
        // Ahead of the queue only with more progress than whom it evicts.
        let ahead = phase > Phase::Connected;
        if table.waiting.is_empty() || ahead {
            if let Some(grant) = self.try_grant(&mut table, now, phase) {
                return Admit::Now(grant);
            }
        }
        if self.max_waiting == 0 {
            return Admit::Full;
        }
        if table.waiting.len() >= self.max_waiting {
            // The oldest waiter has had longest to speak up: it goes (refused by its task).
            table.waiting.pop_front();
        }
        let (tx, rx) = oneshot::channel();
        table.waiting.push_back(tx);
        drop(table);
        self.wake.notify_one();
        Admit::Wait(rx)
    }

    /// A slot now, ahead of the queue, for a waiting connection that has come as far as
    /// `phase` (its version line arrived): only by evicting one that is old enough or behind it.
    pub fn try_ahead(self: &Arc<Self>, now: Instant, phase: Phase) -> Option<Grant> {
        let mut table = lock(&self.table);
        self.try_grant(&mut table, now, phase)
    }

    /// Hands slots to waiting connections as slots free up and victims come of age. Runs for
    /// the server's life.
    pub async fn dispatch(self: Arc<Self>) {
        loop {
            let (undelivered, next) = {
                let mut table = lock(&self.table);
                self.serve_waiting(&mut table, Instant::now())
            };
            // Slots whose waiter gave up: released here, outside the lock.
            drop(undelivered);
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Grants slots to the queue's head while there are any to give. Returns the grants whose
    /// waiter was gone, and when the next victim comes of age if some still wait.
    fn serve_waiting(
        self: &Arc<Self>,
        table: &mut Table,
        now: Instant,
    ) -> (Vec<Grant>, Option<Instant>) {
        let mut undelivered = Vec::new();
        loop {
            while table.waiting.front().is_some_and(|w| w.is_closed()) {
                table.waiting.pop_front();
            }
            if table.waiting.is_empty() {
                return (undelivered, None);
            }
            let Some(grant) = self.try_grant(table, now, Phase::Connected) else {
                let next = table
                    .order
                    .values()
                    .next()
                    .map(|p| p.admitted + self.min_age);
                return (undelivered, next);
            };
            if let Some(waiter) = table.waiting.pop_front() {
                if let Err(grant) = waiter.send(grant) {
                    undelivered.push(grant);
                }
            }
        }
    }

    /// A slot now for a connection at `phase`: a free one, or the least-progressed
    /// connection's if it is old enough or behind `phase` (evicted: removed and its token
    /// cancelled).
    fn try_grant(self: &Arc<Self>, table: &mut Table, now: Instant, phase: Phase) -> Option<Grant> {
        let mut evicted = None;
        if table.order.len() >= self.limit {
            if !self.evicting {
                return None;
            }
            let entry = table.order.first_entry()?;
            let behind = entry.key().0 < phase;
            if !behind && now.saturating_duration_since(entry.get().admitted) < self.min_age {
                return None;
            }
            let victim = entry.remove();
            *lock(&victim.key) = None;
            victim.evicted.cancel();
            evicted = Some(victim);
        }
        let id = table.next_id;
        table.next_id += 1;
        let progress = Arc::new(Progress {
            admission: self.clone(),
            id,
            admitted: now,
            key: Mutex::new(Some((phase, now))),
            phase: watch::Sender::new(phase),
            evicted: CancellationToken::new(),
        });
        table.order.insert((phase, now, id), progress.clone());
        Some((Admitted(progress), evicted))
    }

    /// Connections holding a slot now.
    pub fn held(&self) -> usize {
        lock(&self.table).order.len()
    }
}

impl Progress {
    /// Records that the connection reached `phase` (never moves back).
    pub fn advance(&self, phase: Phase) {
        let mut table = lock(&self.admission.table);
        let mut key = lock(&self.key);
        let Some((current, since)) = *key else {
            return;
        };
        if phase <= current {
            return;
        }
        let now = Instant::now();
        if let Some(me) = table.order.remove(&(current, since, self.id)) {
            table.order.insert((phase, now, self.id), me);
        }
        *key = Some((phase, now));
        drop((key, table));
        self.phase.send_replace(phase);
        // The least-progressed connection may be another one now.
        self.admission.wake.notify_one();
    }

    /// Gives the slot back (authenticated, or the connection ended). Idempotent.
    pub fn release(&self) {
        let mut table = lock(&self.admission.table);
        if let Some((phase, since)) = lock(&self.key).take() {
            table.order.remove(&(phase, since, self.id));
            drop(table);
            self.admission.wake.notify_one();
        }
    }

    /// Completes when the current phase outlives its deadline: the audit code and reason.
    pub async fn deadline(&self, deadlines: Deadlines) -> (&'static str, &'static str) {
        let mut phase = self.phase.subscribe();
        loop {
            let (limit, code, reason) = deadlines.of(*phase.borrow_and_update());
            tokio::select! {
                _ = sleep_until(self.admitted + limit) => return (code, reason),
                changed = phase.changed() => {
                    if changed.is_err() {
                        // Unreachable while `self` lives; never cut for it.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// The table holds plain data: a panic elsewhere cannot leave it inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const GRACE: Duration = Duration::from_secs(20);

    /// A slot granted at once.
    fn now(a: &Arc<Admission>, at: Instant) -> Grant {
        match a.admit(at, Phase::Connected) {
            Admit::Now(grant) => grant,
            Admit::Wait(_) => panic!("waits"),
            Admit::Full => panic!("refused"),
        }
    }

    #[test]
    fn a_newcomer_takes_the_slot_of_the_least_progressed_longest_stalled_connection() {
        let a = Admission::new(3, Duration::ZERO, GRACE);
        let t0 = Instant::now();
        let (first, _) = now(&a, t0);
        let (second, _) = now(&a, t0 + MS);
        let (third, _) = now(&a, t0 + 2 * MS);
        // The oldest has sent its version line: the second is the least progressed.
        first.0.advance(Phase::Version);
        third.0.advance(Phase::Authenticating);
        let (fourth, evicted) = now(&a, t0 + 3 * MS);
        assert!(Arc::ptr_eq(&evicted.unwrap(), &second.0));
        assert!(second.0.evicted.is_cancelled());
        assert!(!first.0.evicted.is_cancelled());
        // With the newcomer authenticating too, the one in the key exchange goes next.
        fourth.0.advance(Phase::Authenticating);
        let (_fifth, evicted) = now(&a, t0 + 4 * MS);
        assert!(Arc::ptr_eq(&evicted.unwrap(), &first.0));
        assert_eq!(a.held(), 3);
        // An evicted connection cannot climb back, and releasing it frees nothing else.
        first.0.advance(Phase::Authenticating);
        drop((first, second));
        assert_eq!(a.held(), 3);
        // Within a phase, the one that entered it first goes first; phases never move back.
        let b = Admission::new(2, Duration::ZERO, GRACE);
        let (x, _) = now(&b, t0);
        let (y, _) = now(&b, t0);
        y.0.advance(Phase::Version);
        x.0.advance(Phase::Version);
        x.0.advance(Phase::Connected);
        let (_z, evicted) = now(&b, t0);
        assert!(Arc::ptr_eq(&evicted.unwrap(), &y.0));
        x.0.release();
        assert_eq!(b.held(), 1);
        assert!(now(&b, t0).1.is_none(), "a released slot is free");
    }

    #[tokio::test(start_paused = true)]
    async fn too_young_to_evict_means_waiting_in_turn_not_refused() {
        let a = Admission::new(2, 100 * MS, GRACE);
        tokio::spawn(a.clone().dispatch());
        let t0 = Instant::now();
        let (first, _) = now(&a, t0);
        tokio::time::sleep(50 * MS).await;
        let (second, _) = now(&a, Instant::now());
        let Admit::Wait(third) = a.admit(Instant::now(), Phase::Connected) else {
            panic!("the third should wait")
        };
        let Admit::Wait(fourth) = a.admit(Instant::now(), Phase::Connected) else {
            panic!("the fourth should wait")
        };
        // At 100 ms the first comes of age: the third, first in line, gets its slot.
        let (third, evicted) = third.await.unwrap();
        assert_eq!(t0.elapsed(), 100 * MS);
        assert!(Arc::ptr_eq(&evicted.unwrap(), &first.0));
        // The second is not of age yet; a released slot goes to the next in line, with no
        // eviction.
        drop(second);
        let (fourth, evicted) = fourth.await.unwrap();
        assert!(evicted.is_none());
        assert!(!third.0.evicted.is_cancelled());
        assert_eq!(a.held(), 2);
        // A newcomer whose version line is already there takes a silent connection's slot
        // at once, however young, ahead of the queue; not a slot of one as far as itself.
        let Admit::Wait(_queued) = a.admit(Instant::now(), Phase::Connected) else {
            panic!("should wait")
        };
        let Admit::Now((live, evicted)) = a.admit(Instant::now(), Phase::Version) else {
            panic!("a live newcomer should not wait behind silent ones")
        };
        assert!(Arc::ptr_eq(&evicted.unwrap(), &third.0));
        fourth.0.advance(Phase::Version);
        assert!(matches!(
            a.admit(Instant::now(), Phase::Version),
            Admit::Wait(_)
        ));
        drop((_queued, live));
        let (filler, _) = now(&a, Instant::now());
        filler.0.advance(Phase::Version);
        // The queue is bounded: WAITING_PER_SLOT per slot; past that the oldest waiter goes.
        let mut waiting: Vec<_> = (0..2 * WAITING_PER_SLOT)
            .map(|_| match a.admit(Instant::now(), Phase::Connected) {
                Admit::Wait(rx) => rx,
                _ => panic!("should wait"),
            })
            .collect();
        assert!(matches!(
            a.admit(Instant::now(), Phase::Connected),
            Admit::Wait(_)
        ));
        use oneshot::error::TryRecvError;
        assert_eq!(waiting[0].try_recv().err(), Some(TryRecvError::Closed));
        assert_eq!(waiting[1].try_recv().err(), Some(TryRecvError::Empty));
        // A waiter that spoke up goes ahead only past a silent or old enough connection.
        assert!(a.try_ahead(Instant::now(), Phase::Version).is_none());
        tokio::time::sleep(100 * MS).await;
        assert!(a.try_ahead(Instant::now(), Phase::Version).is_some());
    }

    #[test]
    fn with_eviction_off_the_cap_is_a_hard_cap() {
        let a = Admission::new(1, GRACE, GRACE);
        let t0 = Instant::now();
        let _only = now(&a, t0);
        assert!(matches!(
            a.admit(t0 + GRACE * 2, Phase::Connected),
            Admit::Full
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_own_deadline_never_past_login_grace() {
        let a = Admission::new(4, Duration::ZERO, GRACE);
        let deadlines = Deadlines {
            version: Duration::from_secs(5),
            kex: Duration::from_secs(10),
            login: Duration::from_secs(20),
        };
        let (silent, _) = now(&a, Instant::now());
        let t0 = Instant::now();
        assert_eq!(silent.0.deadline(deadlines).await.0, "version_grace");
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        let (stalled, _) = now(&a, Instant::now());
        let t0 = Instant::now();
        let progress = stalled.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            progress.advance(Phase::Version);
        });
        assert_eq!(stalled.0.deadline(deadlines).await.0, "kex_grace");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));

        // A login_grace shorter than a phase's deadline wins, with its own code.
        let short = Deadlines {
            login: Duration::from_secs(2),
            ..deadlines
        };
        let (quick, _) = now(&a, Instant::now());
        let t0 = Instant::now();
        assert_eq!(quick.0.deadline(short).await.0, "login_grace");
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }
}
