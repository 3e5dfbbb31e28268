//! A throw-away PostgreSQL cluster for the tests: Debian's `postgresql`,
//! started once per test binary in a temporary directory, reached by its
//! Unix socket only, and stopped (its directory removed) when the binary
//! exits. Each test gets a database of its own.
//!
//! `ISSUER_TEST_POSTGRES` (a connection string to a superuser's database)
//! uses a server already running instead. Without either, the PostgreSQL
//! half of the tests says so loudly and is skipped, except under CI, where
//! it fails.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The cluster: how to reach it as its superuser.
struct Cluster {
    /// `host=... user=...`, without a database.
    base: String,
    /// Kept open while the binary runs: the cluster stops when it closes.
    _alive: Option<std::sync::Mutex<std::process::ChildStdin>>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A connection string to a fresh, empty database, or `None` (said
/// loudly) where no PostgreSQL can be had.
pub fn fresh_database() -> Option<String> {
    let cluster = CLUSTER.get_or_init(start).as_ref()?;
    let name = format!(
        "t{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let admin = format!("{} dbname=postgres", cluster.base);
    issuer::storage::postgres::admin(&admin, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    Some(format!("{} dbname={name}", cluster.base))
}

/// How to reach the cluster as its superuser (`host=... user=...`,
/// without a database), or `None` (said loudly).
pub fn server() -> Option<String> {
    Some(CLUSTER.get_or_init(start).as_ref()?.base.clone())
}

/// The HTTP tests (`api::`), run by `issuer serve` on SQLite in this
/// binary, run again on PostgreSQL: this binary once more, with
/// `ISSUER_TEST_BACKEND=postgres`, on this binary's cluster.
#[test]
fn the_http_tests_pass_on_postgresql_too() {
    if std::env::var_os("ISSUER_TEST_BACKEND").is_some() {
        return; // This is that run.
    }
    let Some(server) = server() else {
        return;
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("api::")
        // Those on PostgreSQL whatever the backend: run once is enough.
        .args(["--skip", "api::faults::", "--skip", "api::moving::"])
        .args(["--skip", "two_processes_on_one_database"])
        .args(["--skip", "a_process_without_the_shops_keys"])
        .env("ISSUER_TEST_BACKEND", "postgres")
        .env("ISSUER_TEST_POSTGRES", server)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the HTTP tests on PostgreSQL:\n{said}"
    );
    let passed: usize = said
        .split("test result: ok. ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 25,
        "only {passed} HTTP tests ran on PostgreSQL:\n{said}"
    );
}

/// Debian's server programs, and who runs them: PostgreSQL will not run
/// as root, so as root they are run as the `postgres` user Debian's
/// package made.
struct Owner {
    bin: PathBuf,
    root: bool,
}

impl Owner {
    fn find() -> Result<Owner, &'static str> {
        let bin = server_bin().ok_or("Debian's postgresql is not installed")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        Ok(Owner { bin, root })
    }

    /// `program` of the server's, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }

    /// A new cluster in a temporary directory (its `data/`), the owner's.
    fn init(&self, prefix: &str) -> Result<PathBuf, &'static str> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap()
            .keep();
        if self.root {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("the data directory cannot be given to the postgres user");
            }
        }
        let init = self
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        Ok(dir)
    }
}

/// Where Debian keeps the server's programs (`initdb`, `postgres`).
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn unavailable(why: &str) -> Option<Cluster> {
    assert!(
        std::env::var_os("CI").is_none(),
        "PostgreSQL is needed under CI: {why}"
    );
    eprintln!(
        "SKIPPED: the PostgreSQL half of these tests: {why} (apt-get install postgresql, or set \
         ISSUER_TEST_POSTGRES)"
    );
    None
}

fn start() -> Option<Cluster> {
    if let Ok(url) = std::env::var("ISSUER_TEST_POSTGRES") {
        return Some(Cluster {
            base: url,
            _alive: None,
        });
    }
    let owner = match Owner::find() {
        Ok(owner) => owner,
        Err(why) => return unavailable(why),
    };
    let dir = match owner.init("issuer-pg-") {
        Ok(dir) => dir,
        Err(why) => return unavailable(why),
    };
    let (bin, root) = (&owner.bin, owner.root);
    let data = dir.join("data");
    // The server runs until this binary's end closes its standard input;
    // then it is stopped and its directory removed.
    let server = format!(
        "{} -D {} -k {} -c listen_addresses= -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB",
        bin.join("postgres").display(),
        data.display(),
        dir.display()
    );
    let script = format!(
        "{server} >{log} 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf {dir}",
        log = dir.join("log").display(),
        dir = dir.display(),
    );
    let mut child = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    } else {
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut alive = child.stdin.take().unwrap();
    let _ = alive.flush();
    let base = format!("host={} user=postgres", dir.display());
    let admin = format!("{base} dbname=postgres");
    for _ in 0..300 {
        if issuer::storage::postgres::admin(&admin, "SELECT 1").is_ok() {
            return Some(Cluster {
                base,
                _alive: Some(std::sync::Mutex::new(alive)),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    panic!("the test cluster did not start in 30 s:\n{log}");
}

/// A cluster of a test's own, which the test may stop and start again
/// (a fault test): run by `pg_ctl`, stopped and removed when dropped.
pub struct Restartable {
    dir: PathBuf,
    owner: Owner,
}

impl Restartable {
    /// A new cluster, running, or `None` (said loudly) where PostgreSQL
    /// cannot be had.
    pub fn start() -> Option<Restartable> {
        let made = Owner::find().and_then(|owner| Ok((owner.init("issuer-pg-own-")?, owner)));
        let (dir, owner) = match made {
            Ok(made) => made,
            Err(why) => {
                unavailable(why);
                return None;
            }
        };
        let cluster = Restartable { dir, owner };
        cluster.up();
        issuer::storage::postgres::admin(&cluster.url("postgres"), "CREATE DATABASE shop").unwrap();
        Some(cluster)
    }

    fn as_owner(&self, program: &str) -> Command {
        self.owner.command(program)
    }

    /// How to reach database `db` of it.
    pub fn url(&self, db: &str) -> String {
        format!("host={} user=postgres dbname={db}", self.dir.display())
    }

    /// Starts the server and waits until it answers.
    pub fn up(&self) {
        let options = format!(
            "-k {} -c listen_addresses= -c fsync=off -c max_connections=100",
            self.dir.display()
        );
        let started = self
            .as_owner("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.join("data"))
            .args(["-l"])
            .arg(self.dir.join("log"))
            .args(["-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    /// Stops the server at once: connections are cut, transactions rolled
    /// back (`pg_ctl stop -m fast`).
    pub fn down(&self) {
        let stopped = self
            .as_owner("pg_ctl")
            .args(["-w", "-t", "30", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output()
            .unwrap();
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
