//! A Postgres cluster of a test's own, for the faults that stop, crash or freeze the server. The
//! shared server (`GEMHOOK_TEST_DATABASE_URL`) serves every other test and is never touched.
//!
//! `initdb` into a temporary directory, a free port on 127.0.0.1, run as the `postgres` user when
//! the tests run as root (Postgres refuses to run as root), `fsync` and `synchronous_commit` on:
//! what the receiver acknowledges must really be on disk, or a crash fault proves nothing. The
//! cluster is stopped (thawed first, if frozen) and its directory removed on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct PrivateCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Run Postgres' programs through `runuser -u postgres` (the tests run as root).
    as_postgres: bool,
}

/// Whether a private cluster can be had. Without `initdb` the test is skipped with a notice,
/// except under `CI=true`, where a test that cannot run must fail the run instead.
pub fn postgres_binaries() -> Option<PathBuf> {
    if let Some(bin) = find_binaries() {
        return Some(bin);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but no initdb was found (GEMHOOK_TEST_PG_BIN, pg_config --bindir, \
             /usr/lib/postgresql/*/bin): the private-cluster fault tests cannot run"
        );
    }
    eprintln!(
        "notice: no initdb found (set GEMHOOK_TEST_PG_BIN to Postgres' bin directory); \
         skipping a test that needs a private Postgres cluster"
    );
    None
}

/// Skips the rest of a test when no private cluster can be started (see
/// [`postgres_binaries`]); otherwise binds the started cluster.
#[macro_export]
macro_rules! private_cluster_or_skip {
    () => {
        match $crate::private_pg::postgres_binaries() {
            Some(bin) => $crate::private_pg::PrivateCluster::start(&bin),
            None => return,
        }
    };
}

fn find_binaries() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("GEMHOOK_TEST_PG_BIN").map(PathBuf::from) {
        return has_initdb(&dir).then_some(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    // Debian and Ubuntu keep each major version's programs here; the newest wins.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_initdb(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

/// A port nobody listens on right now (the kernel's pick; freed at once for Postgres to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free local port")
}

impl PrivateCluster {
    /// Creates and starts a cluster; panics (with Postgres' own words) if it cannot.
    pub fn start(bin: &Path) -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!(
            "gemhook-private-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = running_as_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .output()
                .unwrap();
            assert_success("chown the cluster directory to postgres", &chown);
        }
        let cluster = PrivateCluster {
            dir,
            bin: bin.to_owned(),
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data_dir();
        let initdb = cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
            ],
        );
        assert_success("initdb", &initdb);
        cluster.start_server();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of Postgres' programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).output().unwrap()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh database on the cluster; returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let created = self.psql(&format!(r#"CREATE DATABASE "{name}""#));
        assert_success("CREATE DATABASE", &created);
        self.url(name)
    }

    /// One statement through `psql` on the `postgres` database.
    pub fn psql(&self, sql: &str) -> Output {
        let url = self.url("postgres");
        self.run(
            "psql",
            &["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", sql],
        )
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on \
             -c shared_buffers=32MB -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let started = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
            ],
        );
        if !started.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "the private cluster did not start: {}{}\n{log}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr)
            );
        }
    }

    /// Stops the server: `fast` (connections ended, a clean shutdown) or `immediate` (a crash:
    /// the next start recovers from the WAL).
    pub fn stop_server(&self, mode: &str) {
        let stopped = self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "60",
                "-m",
                mode,
                "-D",
                self.data_dir().to_str().unwrap(),
            ],
        );
        assert_success("pg_ctl stop", &stopped);
    }

    /// The postmaster's pid, from `postmaster.pid` (absent when the server is stopped).
    fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// The postmaster and every process it started (backends, checkpointer, WAL writer...).
    fn server_pids(&self) -> Vec<u32> {
        let Some(postmaster) = self.postmaster_pid() else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    /// SIGSTOP to the postmaster, then to all its children: the server keeps its sockets open
    /// and answers nothing, like a host that froze. The postmaster first, so it forks no new
    /// backend that would escape the freeze.
    pub fn freeze(&self) {
        let postmaster = self.postmaster_pid().expect("the server is running");
        signal("STOP", &[postmaster]);
        signal("STOP", &children_of(postmaster));
    }

    /// Takes `EXCLUSIVE` on `table` in `database` in a session of its own (reads go on, writes
    /// wait) and holds it until [`HeldLock::release`], then waits (bounded) until a `gemhook`
    /// session is waiting for it: from then on a receiver's insert is certainly in flight.
    pub fn block_writes_to(&self, database: &str, table: &str) -> HeldLock {
        let url = self.url(database);
        let program = self.bin.join("psql");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let mut session = command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut input = session.stdin.take().unwrap();
        writeln!(input, "BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE;").unwrap();
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
             AND application_name = 'gemhook' AND wait_event_type = 'Lock'"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.psql(&waiting);
            if String::from_utf8_lossy(&count.stdout).trim() != "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no gemhook insert waited for the lock within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        HeldLock { session, input }
    }

    /// SIGCONT to every process of the server.
    pub fn thaw(&self) {
        signal("CONT", &self.server_pids());
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // A test that failed mid-freeze must not leave stopped processes behind.
        self.thaw();
        if self.postmaster_pid().is_some() {
            let _ = self.run(
                "pg_ctl",
                &[
                    "stop",
                    "-w",
                    "-t",
                    "30",
                    "-m",
                    "immediate",
                    "-D",
                    self.data_dir().to_str().unwrap(),
                ],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lock held by a `psql` session of its own (see [`PrivateCluster::block_writes_to`]).
pub struct HeldLock {
    session: std::process::Child,
    input: std::process::ChildStdin,
}

impl HeldLock {
    /// Commits the lock's transaction and ends its session.
    pub fn release(mut self) {
        let _ = writeln!(self.input, "COMMIT;");
        drop(self.input);
        let _ = self.session.wait();
    }
}

/// Direct children of `parent`, from `/proc/<pid>/stat` (field 4 is the parent pid; the command
/// name before it is in parentheses and may contain spaces, so fields are counted after it).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = stat.rsplit_once(") ")?.1;
                    after_name.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .output();
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
