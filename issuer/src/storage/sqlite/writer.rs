//! The writer: one thread makes every change, back to back, and commits
//! them in batches (group commit).
//!
//! A caller hands its change over and waits for the commit that carries
//! it. The thread takes every change queued, runs each in its own
//! savepoint of one transaction, and commits them together: one wait for
//! the disk for the lot. A change that fails, or panics, is undone alone;
//! a commit that fails fails every change of its batch. Running the
//! changes on one thread, rather than handing the connection from thread
//! to thread, keeps the connection busy while the cores are: no change
//! waits for a thread to be woken and scheduled to take its turn.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::Connection;

use super::board::Boards;
use crate::storage::{Result, StorageError};

/// Most changes one commit carries.
const MAX_BATCH: usize = 256;

pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    checkpoints: Option<std::thread::JoinHandle<()>>,
}

/// How often the log is copied into the database, beside the writer.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Pages of log past which the writer copies them itself (4 KiB each):
/// only if the checkpoints beside it fall behind.
const CHECKPOINT_AT: i64 = 1000;

struct Shared {
    /// The one connection that writes (SQLite lets one writer in at a
    /// time): the thread's while it makes a batch, else for the rare writes
    /// that run their own transaction ([`Writer::conn`]).
    conn: Mutex<Connection>,
    queue: Mutex<Queue>,
    /// A change was queued (the writer waits on it).
    ready: Condvar,
    /// The writer is stopping (the checkpoints wait on it).
    stopping: Condvar,
    /// Which seats are free, for best-seats holds ([`super::board`]).
    boards: Mutex<Boards>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stop: bool,
}

/// A change handed to the writer: made in a savepoint of the open batch,
/// then told how the batch's commit went. Dropped unmade (the writer
/// stopping, or a batch broken off), it tells its caller so.
trait Task: Send {
    /// Makes the change: false if the batch cannot be committed any more.
    fn run(&mut self, conn: &Connection, boards: &Mutex<Boards>) -> bool;
    /// Tells the caller how the commit went.
    fn finish(self: Box<Self>, outcome: std::result::Result<(), String>);
}

type Job = Box<dyn Task>;

/// What a change came to: its own result, or its panic.
type Made<T> = std::thread::Result<Result<T>>;

/// Makes `f` in a savepoint of the open batch, undone (with whatever it
/// told the boards) if it fails or panics. Also says whether the batch
/// can still be committed.
fn in_savepoint<T>(
    conn: &Connection,
    boards: &Mutex<Boards>,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> (bool, Made<T>) {
    if let Err(e) = conn.execute_batch("SAVEPOINT change") {
        return (false, Ok(Err(e.into())));
    }
    lock(boards).begin();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
    let closed = match &out {
        Ok(Ok(_)) => conn.execute_batch("RELEASE change"),
        _ => {
            lock(boards).undo();
            conn.execute_batch("ROLLBACK TO change; RELEASE change")
        }
    };
    let kept = closed.is_ok();
    let made = match (closed, out) {
        (_, Err(panic)) => Err(panic),
        (Ok(()), Ok(out)) => Ok(out),
        (Err(e), Ok(_)) => Ok(Err(e.into())),
    };
    (kept, made)
}

/// A change's answer, from what it came to and how its batch's commit
/// went (`None` if it was never made).
fn answer<T>(made: Option<Made<T>>, outcome: std::result::Result<(), String>) -> Made<T> {
    Ok(match (made, outcome) {
        (Some(Err(panic)), _) => return Err(panic),
        // Its own failure first: the change was undone whatever the batch
        // came to.
        (Some(Ok(Err(e))), _) => Err(e),
        (Some(Ok(Ok(v))), Ok(())) => Ok(v),
        (Some(Ok(Ok(_))), Err(why)) => Err(StorageError::Backend(format!("commit: {why}"))),
        (None, Err(why)) => Err(StorageError::Backend(why)),
        (None, Ok(())) => Err(StorageError::Backend("the change was not made".into())),
    })
}

/// What a caller that cannot wait is told when the writer stopped first.
const STOPPED: &str = "the writer stopped before the change was made";

/// A blocking caller's change: false if the batch cannot be committed any
/// more.
type Work<'a> = Box<dyn FnOnce(&Connection, &Mutex<Boards>) -> bool + Send + 'a>;

/// A change whose caller blocks its thread until told ([`Writer::write`]).
/// Its work borrows the caller's frame (its lifetime erased): it is
/// dropped before the caller is told, and the caller does not return
/// before it is told.
struct Blocking {
    work: Option<Work<'static>>,
    done: Arc<Done>,
}

impl Task for Blocking {
    fn run(&mut self, conn: &Connection, boards: &Mutex<Boards>) -> bool {
        self.work.take().is_none_or(|work| work(conn, boards))
    }

    fn finish(mut self: Box<Self>, outcome: std::result::Result<(), String>) {
        // The work goes first: it borrows from its caller's frame, which
        // may end as soon as the caller is told.
        drop(self.work.take());
        self.done.tell(outcome);
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        drop(self.work.take());
        self.done.tell(Err(STOPPED.into()));
    }
}

/// A change whose caller awaits a oneshot ([`Writer::submit`]): it owns
/// everything it uses, so no thread waits for it. Dropped unmade, its
/// sender goes and the caller hears that the writer stopped.
struct Soon<T, F> {
    work: Option<F>,
    made: Option<Made<T>>,
    tell: tokio::sync::oneshot::Sender<Made<T>>,
    /// Not made if its caller has gone when its turn comes.
    unless_gone: bool,
}

impl<T, F> Task for Soon<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, boards: &Mutex<Boards>) -> bool {
        let Some(work) = self.work.take() else {
            return true;
        };
        if self.unless_gone && self.tell.is_closed() {
            // No one is left to be told (a buyer who hung up): not made.
            return true;
        }
        let (kept, made) = in_savepoint(conn, boards, work);
        self.made = Some(made);
        kept
    }

    fn finish(self: Box<Self>, outcome: std::result::Result<(), String>) {
        let Soon { made, tell, .. } = *self;
        // A caller that has gone no longer wants to know.
        let _ = tell.send(answer(made, outcome));
    }
}

/// How the commit of a blocking caller's change went, once known.
#[derive(Default)]
struct Done {
    outcome: Mutex<Option<std::result::Result<(), String>>>,
    told: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Done {
    /// Tells the caller, once (later news is ignored).
    fn tell(&self, outcome: std::result::Result<(), String>) {
        let mut g = lock(&self.outcome);
        if g.is_none() {
            *g = Some(outcome);
        }
        self.told.notify_all();
    }

    fn wait(&self) -> std::result::Result<(), String> {
        let mut g = lock(&self.outcome);
        loop {
            if let Some(outcome) = g.as_ref() {
                return outcome.clone();
            }
            g = self.told.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Waits for a job to be told, when dropped: however its caller's frame
/// ends, it does not end while the job may still use it.
struct WaitOnDrop<'a>(&'a Done);

impl Drop for WaitOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.wait();
    }
}

/// The writer connection with a batch open. Should making the batch
/// panic, the batch is rolled back and the boards dropped as this goes,
/// before any of its changes' callers is told.
struct Open<'a> {
    conn: MutexGuard<'a, Connection>,
    shared: &'a Shared,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            lock(&self.shared.boards).clear();
        }
    }
}

impl Writer {
    /// The writer of `conn`, with `checkpointer` (another connection to the
    /// same database) copying the write-ahead log into the database beside
    /// it, so that commits do not.
    pub fn new(conn: Connection, checkpointer: Connection) -> rusqlite::Result<Writer> {
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_AT)?;
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            queue: Mutex::default(),
            ready: Condvar::new(),
            stopping: Condvar::new(),
            boards: Mutex::default(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || run(&shared))
                .map_err(io_error)?
        };
        let checkpoints = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpoint(&shared, &checkpointer))
                .map_err(io_error)?
        };
        Ok(Writer {
            shared,
            thread: Some(thread),
            checkpoints: Some(checkpoints),
        })
    }

    /// The writer connection between batches: for the rare writes that run
    /// their own transaction (the catalogue's). Never call [`Writer::write`]
    /// while holding it.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.shared.conn)
    }

    pub fn boards(&self) -> MutexGuard<'_, Boards> {
        lock(&self.shared.boards)
    }

    /// Makes `f` one all-or-nothing change, and returns once it is on disk
    /// (or failed), blocking this thread. `f` runs on the writer's thread:
    /// it must not call `write` itself.
    pub fn write<T: Send>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send) -> Result<T> {
        let made: Mutex<Option<Made<T>>> = Mutex::new(None);
        let work = |conn: &Connection, boards: &Mutex<Boards>| -> bool {
            let (kept, out) = in_savepoint(conn, boards, f);
            *lock(&made) = Some(out);
            kept
        };
        let work: Work<'_> = Box::new(work);
        // SAFETY: the work borrows `made` and what `f` captured from this
        // frame. This function returns only once `done` is told, and a job
        // tells it only after its work has run or been dropped (`finish`
        // and `Drop` drop the work first); so the borrows outlive every use.
        let work: Work<'static> = unsafe { std::mem::transmute(work) };
        let done = Arc::new(Done::default());
        self.enqueue(Box::new(Blocking {
            work: Some(work),
            done: done.clone(),
        }))?;
        // From here this frame must outlive the job, even if unwinding.
        let _stay = WaitOnDrop(&done);
        let outcome = done.wait();
        let made = made.into_inner().unwrap_or_else(|p| p.into_inner());
        answer(made, outcome).unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Hands `f` to the writer as one all-or-nothing change, and returns
    /// what resolves once it is on disk (or failed): no thread waits for
    /// it. A change that panics is answered as a failure of the backend.
    /// With `unless_gone`, a change whose caller has dropped what this
    /// returns by the time its turn comes is not made.
    pub fn submit<T, F>(
        &self,
        f: F,
        unless_gone: bool,
    ) -> impl std::future::Future<Output = Result<T>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tell, told) = tokio::sync::oneshot::channel();
        let queued = self.enqueue(Box::new(Soon {
            work: Some(f),
            made: None,
            tell,
            unless_gone,
        }));
        async move {
            queued?;
            match told.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_panic)) => {
                    tracing::error!("a change panicked on the writer's thread");
                    Err(StorageError::Backend("the change failed".into()))
                }
                Err(_) => Err(StorageError::Backend(STOPPED.into())),
            }
        }
    }

    /// Queues a job and wakes the writer; refused once it is stopping (the
    /// job is then dropped, which tells its caller).
    fn enqueue(&self, job: Job) -> Result<()> {
        {
            let mut q = lock(&self.shared.queue);
            if q.stop {
                return Err(StorageError::Backend("the database is closing".into()));
            }
            q.jobs.push_back(job);
        }
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.ready.notify_all();
        self.shared.stopping.notify_all();
        // The last handle on the storage may go on the writer's own thread
        // (a change took one along): the thread then ends by itself, once
        // its queue is empty.
        for t in [self.thread.take(), self.checkpoints.take()]
            .into_iter()
            .flatten()
            .filter(|t| t.thread().id() != std::thread::current().id())
        {
            let _ = t.join();
        }
    }
}

fn io_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// Copies the log into the database now and then, without holding up the
/// writer (a passive checkpoint copies what no reader still needs), until
/// the writer stops.
fn checkpoint(shared: &Shared, conn: &Connection) {
    loop {
        {
            let q = lock(&shared.queue);
            let (q, _) = shared
                .stopping
                .wait_timeout_while(q, CHECKPOINT_EVERY, |q| !q.stop)
                .unwrap_or_else(|p| p.into_inner());
            if q.stop {
                return;
            }
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "copying the write-ahead log into the database");
        }
    }
}

/// The writer's thread: a batch at a time until stopped, with every queued
/// change made first.
fn run(shared: &Shared) {
    loop {
        let jobs = {
            let mut q = lock(&shared.queue);
            while q.jobs.is_empty() && !q.stop {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.jobs.is_empty() {
                return;
            }
            let n = q.jobs.len().min(MAX_BATCH);
            q.jobs.drain(..n).collect::<Vec<_>>()
        };
        // A bug here fails this batch's changes (their jobs are dropped,
        // which tells their callers), never the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch(shared, jobs)));
    }
}

/// Makes `jobs`, and those queued meanwhile, in one transaction and
/// commits it.
fn batch(shared: &Shared, mut jobs: Vec<Job>) {
    // Declared before the open batch: on a panic, the batch is undone
    // (`Open`'s drop) before these are told.
    let mut made: Vec<Job> = Vec::with_capacity(jobs.len());
    let open = Open {
        conn: lock(&shared.conn),
        shared,
    };
    let conn = &open.conn;
    if !conn.is_autocommit() {
        // Left open by a batch that broke off.
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let why = e.to_string();
        drop(open);
        for job in jobs {
            job.finish(Err(why.clone()));
        }
        return;
    }
    let mut broken = None;
    loop {
        for mut job in jobs {
            if broken.is_none() && !job.run(conn, &shared.boards) {
                broken = Some("a change could not be closed".to_owned());
            }
            made.push(job);
        }
        if broken.is_some() || made.len() >= MAX_BATCH {
            break;
        }
        // Changes queued while these were made join them.
        jobs = {
            let mut q = lock(&shared.queue);
            let n = q.jobs.len().min(MAX_BATCH - made.len());
            q.jobs.drain(..n).collect()
        };
        if jobs.is_empty() {
            break;
        }
    }
    let outcome = match broken {
        Some(why) => Err(why),
        None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
    };
    if outcome.is_err() {
        // Whatever the batch did is undone, and boards that may have read
        // its changes are dropped.
        let _ = conn.execute_batch("ROLLBACK");
        lock(&shared.boards).clear();
    }
    drop(open);
    for job in made {
        job.finish(outcome.clone());
    }
}
