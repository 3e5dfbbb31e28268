//! A pool of PostgreSQL connections, each with its statements kept
//! prepared.
//!
//! A connection is taken for one transaction (or one statement) and
//! given back. One given back inside a transaction (its caller gave up
//! half-way) is closed rather than kept, so no lock outlives its caller.
//! A connection the server closed is left, and a new one made when next
//! needed: the pool heals itself after a restart of the server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::storage::{Result, StorageError};

/// An argument of a statement sent later ([`Conn::defer`]).
pub(crate) type Arg = Box<dyn ToSql + Sync + Send>;

/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Pool {
    config: tokio_postgres::Config,
    /// Where each connection's driver runs.
    runtime: tokio::runtime::Handle,
    idle: Arc<Mutex<Vec<Open>>>,
    turns: Arc<Semaphore>,
    /// Connections at most.
    size: usize,
}

/// A connection and its prepared statements.
struct Open {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Those run by the connection's one plan a statement (not planned
    /// for each run's values: [`Conn::plan_each_run`]).
    generic: HashSet<String>,
}

/// A connection taken from the pool, given back when dropped.
pub(crate) struct Conn {
    open: Option<Open>,
    in_transaction: bool,
    /// Places the transaction let go, (category, number): the process's
    /// picture of free seats is told once it commits (`inventory::FreeSeats`).
    pub freed: Vec<(u64, i64)>,
    /// Seats the transaction chose from that picture: told free again
    /// should it fail.
    pub chosen: Vec<(u64, i64)>,
    /// Statements without arguments not yet sent: they go with the next
    /// (a BEGIN with the transaction's first statement).
    ahead: Vec<&'static str>,
    /// Statements whose answer is not needed, sent with the COMMIT.
    deferred: Vec<(&'static str, Vec<Arg>)>,
    /// A read sent with the next statement, and what it read.
    read_ahead: Option<(&'static str, Vec<Arg>)>,
    read_rows: Option<Result<Vec<Row>>>,
    /// Whether the transaction's statements are planned for each run's
    /// values ([`Conn::plan_each_run`]).
    each_run: bool,
    idle: Arc<Mutex<Vec<Open>>>,
    _turn: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(
        mut config: tokio_postgres::Config,
        runtime: tokio::runtime::Handle,
        size: usize,
    ) -> Pool {
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("issuer");
        // A server gone quiet is found out in half a minute, not hours.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // No wait is for ever: a lock not had in 5 s, a statement not done
        // in 30 s, a transaction left idle for 15 s (a process frozen or
        // cut off half-way, holding what others need) end with an error.
        // Statements are never compiled: they are small, and compiling
        // them would cost more than running them.
        // Each statement is planned once a connection, not for each run
        // (planning was a fifth of the server's work on a sale): without
        // its arguments' values, on the tables as they were then, and
        // again only once PostgreSQL has analyzed them anew. So that a
        // plan made when a table was nearly empty still serves once it is
        // full, no plan reads a table from end to end where an index can
        // find the rows, and every statement is written for an index to
        // find its rows (`contract::a_new_shops_statements_find_rows_by_key`).
        // The few statements whose best plan depends on how much of a
        // table their values pick are planned for each run instead
        // ([`Conn::plan_each_run`]).
        let ours = "-c lock_timeout=5000 -c statement_timeout=30000 \
                    -c idle_in_transaction_session_timeout=15000 -c jit=off \
                    -c plan_cache_mode=force_generic_plan -c enable_seqscan=off";
        let options = match config.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
            _ => ours.to_owned(),
        };
        config.options(&options);
        Pool {
            config,
            runtime,
            idle: Arc::default(),
            turns: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The settings connections are made with.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A connection: an idle one that is still open, else a new one.
    pub async fn get(&self) -> Result<Conn> {
        // The timer is the runtime's, whatever thread waits (a blocking
        // caller has none of its own).
        let turn = {
            let _runtime = self.runtime.enter();
            tokio::time::timeout(WAIT_TIMEOUT, self.turns.clone().acquire_owned())
        };
        let turn = turn
            .await
            .map_err(|_| unavailable("no connection came free in time"))?
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match idle.pop() {
                    Some(open) if open.client.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let open = match kept {
            Some(open) => open,
            None => self.connect().await?,
        };
        Ok(Conn {
            open: Some(open),
            in_transaction: false,
            freed: Vec::new(),
            chosen: Vec::new(),
            ahead: Vec::new(),
            deferred: Vec::new(),
            read_ahead: None,
            read_rows: None,
            each_run: false,
            idle: self.idle.clone(),
            _turn: turn,
        })
    }

    /// The plan of each statement the idle connections keep prepared, as
    /// `EXPLAIN (FORMAT JSON)` shows it, made again on that connection
    /// now: (statement, plan). Every statement runs by one plan a connection, made without
    /// its arguments' values (`plan_cache_mode`), as this one is.
    pub async fn kept_plans(&self) -> Result<Vec<(String, String)>> {
        // Every turn, so that no connection is in use meanwhile (nor made
        // beyond the pool's size).
        let _all = self
            .turns
            .acquire_many(u32::try_from(self.size).unwrap_or(u32::MAX))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        let opens = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let mut plans = Vec::new();
        let mut failed = None;
        'all: for open in &opens {
            for (sql, s) in &open.statements {
                // Those that have a plan (not `RELEASE SAVEPOINT`, say),
                // and run by the one plan.
                let verb = sql.split_whitespace().next().unwrap_or("");
                let planned = ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES"];
                if !planned.iter().any(|v| verb.eq_ignore_ascii_case(v))
                    || !open.generic.contains(sql)
                {
                    continue;
                }
                let types: Vec<&str> = s.params().iter().map(|t| t.name()).collect();
                // The values do not matter to a plan made without them.
                let (types, args) = match types.is_empty() {
                    true => (String::new(), String::new()),
                    false => (
                        format!("({})", types.join(", ")),
                        format!("({})", vec!["NULL"; types.len()].join(", ")),
                    ),
                };
                let explain = format!(
                    "PREPARE kept_plan{types} AS {sql}; \
                     EXPLAIN (FORMAT JSON) EXECUTE kept_plan{args}; \
                     DEALLOCATE kept_plan"
                );
                match open.client.simple_query(&explain).await {
                    Ok(lines) => {
                        let plan = lines
                            .iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                            .join("\n");
                        plans.push((sql.clone(), plan));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break 'all;
                    }
                }
            }
        }
        match failed {
            // Closed: a statement of the check may be left prepared.
            Some(e) => Err(e.into()),
            None => {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(opens);
                Ok(plans)
            }
        }
    }

    /// A new connection, made on the runtime, whose driver runs there.
    async fn connect(&self) -> Result<Open> {
        let config = self.config.clone();
        let connected = self.runtime.spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "a database connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = connected
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
            .map_err(|e| unavailable(&format!("connecting: {e}")))?;
        Ok(Open {
            client,
            statements: HashMap::new(),
            generic: HashSet::new(),
        })
    }
}

/// The database cannot be reached now: worth trying again shortly.
fn unavailable(why: &str) -> StorageError {
    StorageError::Unavailable(why.to_owned())
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(open) = self.open.take()
            && !self.in_transaction
            && !open.client.is_closed()
        {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(open);
        }
    }
}

impl Conn {
    fn open(&mut self) -> &mut Open {
        // Only `Drop` takes it.
        self.open.as_mut().expect("a connection in use")
    }

    /// The statements to send ahead of the next, as one string.
    fn take_ahead(&mut self) -> Option<String> {
        (!self.ahead.is_empty()).then(|| std::mem::take(&mut self.ahead).join("; "))
    }

    /// The client, for statements run once (not kept prepared), inside
    /// the transaction begun if any.
    pub async fn client(&mut self) -> Result<&Client> {
        if let Some(ahead) = self.take_ahead() {
            self.open().client.batch_execute(&ahead).await?;
        }
        Ok(&self.open().client)
    }

    /// `sql`, prepared on this connection once and kept. What is to go
    /// ahead goes first, if `sql` is new: its preparing is a round trip of
    /// its own, and its failure must come after them.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if !self.each_run && !self.open().generic.contains(sql) {
            self.open().generic.insert(sql.to_owned());
        }
        if let Some(s) = self.open().statements.get(sql) {
            return Ok(s.clone());
        }
        if let Some(ahead) = self.take_ahead() {
            self.open().client.batch_execute(&ahead).await?;
        }
        let open = self.open();
        let s = open.client.prepare(sql).await?;
        open.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub async fn query(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let s = self.prepare(sql).await?;
        let read = self.take_read().await?;
        let ahead = self.take_ahead();
        let client = &self.open().client;
        let (read, out) = after(client, ahead, read.as_ref(), client.query(&s, args)).await;
        if read.is_some() {
            self.read_rows = read;
        }
        out
    }

    /// Runs `statements` one after another, sent together (with what is
    /// to go ahead, and the read sent ahead): one round trip for them
    /// all. The rows of each; the first failure fails them all (in a
    /// transaction, those after it fail too).
    pub async fn query_all(&mut self, statements: &[(&str, Vec<Arg>)]) -> Result<Vec<Vec<Row>>> {
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, _) in statements {
            prepared.push(self.prepare(sql).await?);
        }
        let read = self.take_read().await?;
        let ahead = self.take_ahead();
        let client = &self.open().client;
        let runs = prepared.iter().zip(statements).map(|(s, (_, args))| {
            let args = arg_refs(args);
            async move { client.query(s, &args).await }
        });
        let all = async {
            futures_util::future::join_all(runs)
                .await
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let (read, out) = after(client, ahead, read.as_ref(), all).await;
        if read.is_some() {
            self.read_rows = read;
        }
        out
    }

    /// Sends the read `sql` with the next statement (one round trip, not
    /// two), its rows kept for [`Conn::read_back`].
    pub fn read_ahead(&mut self, sql: &'static str, args: Vec<Arg>) {
        self.read_ahead = Some((sql, args));
        self.read_rows = None;
    }

    /// What the read sent ahead read; read now if it was not sent yet.
    pub async fn read_back(&mut self) -> Result<Option<Vec<Row>>> {
        if let Some(rows) = self.read_rows.take() {
            return rows.map(Some);
        }
        let Some((sql, args)) = self.read_ahead.take() else {
            return Ok(None);
        };
        let args = arg_refs(&args);
        self.query(sql, &args).await.map(Some)
    }

    /// The read to send ahead, prepared.
    async fn take_read(&mut self) -> Result<Option<(Statement, Vec<Arg>)>> {
        match self.read_ahead.take() {
            Some((sql, args)) => Ok(Some((self.prepare(sql).await?, args))),
            None => Ok(None),
        }
    }

    pub async fn query_opt(
        &mut self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let mut rows = self.query(sql, args).await?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.pop()),
            n => Err(StorageError::Backend(format!(
                "{n} rows where one at most was expected"
            ))),
        }
    }

    pub async fn query_one(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let mut rows = self.query(sql, args).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(StorageError::Backend(format!(
                "{n} rows where one was expected"
            ))),
        }
    }

    pub async fn execute(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let s = self.prepare(sql).await?;
        let read = self.take_read().await?;
        let ahead = self.take_ahead();
        let client = &self.open().client;
        let (read, out) = after(client, ahead, read.as_ref(), client.execute(&s, args)).await;
        if read.is_some() {
            self.read_rows = read;
        }
        out
    }

    /// Statements with no arguments, as one string.
    pub async fn batch(&mut self, sql: &str) -> Result<()> {
        let sql = match self.take_ahead() {
            Some(ahead) => format!("{ahead}; {sql}"),
            None => sql.to_owned(),
        };
        Ok(self.open().client.batch_execute(&sql).await?)
    }

    /// Sends `sql` (no arguments) with the next statement: one round trip,
    /// not two.
    pub fn ahead(&mut self, sql: &'static str) {
        self.ahead.push(sql);
    }

    /// Begins a transaction: its BEGIN is sent with its first statement.
    pub async fn begin(&mut self) -> Result<()> {
        self.in_transaction = true;
        self.ahead("BEGIN");
        Ok(())
    }

    /// Plans the transaction's statements for the values each run has,
    /// as PostgreSQL sees fit, not once a connection: for a statement
    /// whose best plan depends on how much of a table its values pick (an
    /// event's counts, say).
    pub fn plan_each_run(&mut self) {
        self.each_run = true;
        self.ahead("SET LOCAL plan_cache_mode = force_custom_plan");
        self.ahead("SET LOCAL enable_seqscan = on");
    }

    /// Begins a transaction that reads one snapshot and writes nothing.
    pub async fn begin_read(&mut self) -> Result<()> {
        self.in_transaction = true;
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }

    /// Runs `sql` with `args` at the end of the transaction, sent with its
    /// COMMIT in one round trip; should it fail, the transaction is rolled
    /// back and [`Conn::end`] returns its error.
    pub fn defer(&mut self, sql: &'static str, args: Vec<Arg>) {
        self.deferred.push((sql, args));
    }

    /// Commits, with the statements deferred sent first, all at once.
    async fn commit(&mut self) -> Result<()> {
        let deferred = std::mem::take(&mut self.deferred);
        if deferred.is_empty() {
            return self.batch("COMMIT").await;
        }
        let mut statements = Vec::with_capacity(deferred.len());
        for (sql, args) in &deferred {
            let s = self.prepare(sql).await?;
            // Arguments the client would refuse to send are refused now,
            // before anything is: else the others and the COMMIT would go.
            if s.params().len() != args.len() {
                return Err(StorageError::Backend(format!(
                    "{} arguments for a statement of {}",
                    args.len(),
                    s.params().len()
                )));
            }
            let mut buf = bytes::BytesMut::new();
            for (ty, arg) in s.params().iter().zip(args) {
                arg.to_sql_checked(ty, &mut buf)
                    .map_err(|e| StorageError::Backend(format!("an argument: {e}")))?;
                buf.clear();
            }
            statements.push(s);
        }
        let ahead = self.take_ahead();
        let client = &self.open().client;
        let runs = statements.iter().zip(&deferred).map(|(s, (_, args))| {
            let args = arg_refs(args);
            async move { client.execute(s, &args).await }
        });
        // In the order written: what is to go ahead (BEGIN if not sent
        // yet), the statements, COMMIT (which ends a transaction a failed
        // statement broke with a rollback).
        let begun = async {
            match &ahead {
                Some(ahead) => client.batch_execute(ahead).await,
                None => Ok(()),
            }
        };
        let (began, ran, committed) = tokio::join!(
            begun,
            futures_util::future::join_all(runs),
            client.batch_execute("COMMIT")
        );
        began?;
        committed?;
        // The COMMIT ended the transaction either way.
        self.in_transaction = false;
        match ran.into_iter().find_map(|r| r.err()) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Ends the transaction begun: commits it if `out` is `Ok`, else
    /// rolls it back; `out`, or the commit's failure.
    pub async fn end<T>(&mut self, out: Result<T>) -> Result<T> {
        self.each_run = false;
        self.read_ahead = None;
        self.read_rows = None;
        if self.ahead.first() == Some(&"BEGIN") && (out.is_err() || self.deferred.is_empty()) {
            // Nothing was sent: nothing to end.
            self.ahead.clear();
            self.deferred.clear();
            self.in_transaction = false;
            return out;
        }
        let ended = match &out {
            Ok(_) => self.commit().await,
            Err(_) => {
                self.deferred.clear();
                self.batch("ROLLBACK").await
            }
        };
        if ended.is_ok() {
            self.in_transaction = false;
        }
        match (out, ended) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    }
}

/// Arguments kept for later, as a statement takes them.
fn arg_refs(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// `run`, after the statements `ahead` and the read `read` if any, sent
/// together: what `read` read, and what `run` gave.
async fn after<T>(
    client: &Client,
    ahead: Option<String>,
    read: Option<&(Statement, Vec<Arg>)>,
    run: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> (Option<Result<Vec<Row>>>, Result<T>) {
    let sent = async {
        match &ahead {
            Some(ahead) => client.batch_execute(ahead).await,
            None => Ok(()),
        }
    };
    let read = async {
        let (s, args) = read?;
        let args = arg_refs(args);
        Some(client.query(s, &args).await.map_err(StorageError::from))
    };
    let (sent, read, out) = tokio::join!(sent, read, run);
    match sent {
        Err(e) => (read, Err(e.into())),
        Ok(()) => (read, out.map_err(StorageError::from)),
    }
}
