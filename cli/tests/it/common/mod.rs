//! The servers behind the `msim` program's tests (msim-chat with its embedded relay, from
//! msim-testkit, on a runtime of their own) and what drives the program: commands, running
//! processes, their output.

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use msim_testkit::{System, ThreadedSystem};

/// msim-chat with its embedded relay, plain or TLS, and `msim` commands pointed at it.
pub struct TestServer {
    system: ThreadedSystem,
}

impl TestServer {
    /// A plain server.
    pub fn start() -> TestServer {
        Self::with(System::builder())
    }

    /// A server and relay serving TLS with a self-signed certificate for `localhost`; the
    /// relay's URL names `localhost`, so that SNI and verification use it.
    pub fn start_tls() -> TestServer {
        Self::with(
            System::builder()
                .tls(true)
                .relay_host("localhost")
                .chat(|c| c.tls_handshake_timeout = Duration::from_secs(3)),
        )
    }

    /// A plain server whose chat configuration `f` changes first.
    pub fn start_with(f: impl FnOnce(&mut msim_chat::Config) + Send + 'static) -> TestServer {
        Self::with(System::builder().chat(f))
    }

    fn with(builder: msim_testkit::SystemBuilder) -> TestServer {
        let system = builder.start_on_thread().expect("msim-chat starts");
        TestServer { system }
    }

    /// The `--server` value: `tls://127.0.0.1:PORT` with TLS.
    pub fn server(&self) -> String {
        match self.cert {
            Some(_) => format!("tls://127.0.0.1:{}", self.chat.port()),
            None => self.chat.to_string(),
        }
    }

    /// The certificate to trust (`--ca-file`) of a TLS server.
    pub fn ca_file(&self) -> &std::path::Path {
        &self.cert.as_ref().expect("a TLS server").cert
    }

    /// `msim` with no config file and no server, credentials or CA from the environment; a
    /// TLS server's clients wait 5 s at most for an answer, so that failures show quickly.
    pub fn bare(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_msim"));
        c.env_remove("MSIM_LOGIN")
            .env_remove("MSIM_PASSWORD")
            .env_remove("MSIM_SERVER")
            .env_remove("MSIM_CONFIG")
            .env_remove("MSIM_CA_FILE")
            // No ~/.config/msim/config.toml from the machine running the tests.
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"));
        if self.cert.is_some() {
            c.args(["--timeout", "5"]);
        }
        c
    }

    /// `msim --server ADDR` (with `--ca-file` for TLS).
    pub fn msim(&self) -> Command {
        let mut c = self.bare();
        c.arg("--server").arg(self.server());
        if self.cert.is_some() {
            c.arg("--ca-file").arg(self.ca_file());
        }
        c
    }

    /// `msim` logged in as `login`.
    pub fn as_user(&self, login: &str) -> Command {
        let mut c = self.msim();
        c.args(["--login", login, "--password", &password(login)]);
        c
    }
}

impl Deref for TestServer {
    type Target = ThreadedSystem;

    fn deref(&self) -> &ThreadedSystem {
        &self.system
    }
}

impl DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut ThreadedSystem {
        &mut self.system
    }
}

/// The password the tests give `login`.
pub fn password(login: &str) -> String {
    format!("{login}-password-123")
}

/// Runs a command with `input` on its standard input; panics with stderr when the exit code
/// differs.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8], code: i32) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run msim");
    {
        let mut stdin = child.stdin.take().unwrap();
        // The program may exit without reading everything (a usage error): ignore EPIPE.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().expect("wait for msim");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `msim` whose stdout and stderr are read line by line on background threads, so
/// a test can wait for a given line (with a timeout) instead of sleeping. Killed on drop.
pub struct Running {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn msim");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Panics when the program has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "msim exited ({status}); stdout: {:?}; stderr: {:?}",
                self.stdout.seen(),
                self.stderr.seen()
            );
        }
    }

    /// Waits for the program to exit (both pipes closed, then its status), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        self.stdout.wait_closed(deadline);
        self.stderr.wait_closed(deadline);
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines read from a pipe on a background thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits for the next line (after those already returned) that satisfies `pred`; panics
    /// after `timeout` or when the pipe closes first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out waiting for {what}; lines so far: {:?}",
                        self.seen
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    panic!("the pipe closed before {what}; lines: {:?}", self.seen)
                }
            }
        }
    }

    /// Like [`Lines::wait_for`] for a JSON line.
    pub fn wait_for_json(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = self.wait_for(what, timeout, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v))
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Reads until the pipe closes (the program exited), at most until `deadline`.
    pub fn wait_closed(&mut self, deadline: Instant) {
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the program did not exit in time; lines: {:?}", self.seen)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// The JSON objects among the lines read so far.
    pub fn seen_json(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Runs a command, returning its output; panics with stderr when the exit code differs.
pub fn run_expect(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().expect("run msim");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_json(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The events a fresh login of `login` gets before the answer to its first request: the
/// results stored for it (§4.5, §10.6).
pub fn stored_results_at_login(srv: &TestServer, login: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, mut events) = msim::Client::connect(srv.server()).await.unwrap();
        client.login(login, &password(login)).await.unwrap();
        client.ping().await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::ZERO, events.recv()).await
        {
            seen.push(format!("{e:?}"));
        }
        seen
    })
}
