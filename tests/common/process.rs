//! The real `trendstory` binary as a child process, for what only a process shows: its
//! command line, signals, exit status and log lines.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `trendstory` with a clean environment: no `TRENDSTORY_*` or `ORT_DYLIB_PATH` of the
/// caller's, no backtraces in error output.
pub fn trendstory() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trendstory"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("TRENDSTORY_") || name == "ORT_DYLIB_PATH" {
            command.env_remove(name);
        }
    }
    command.env("RUST_BACKTRACE", "0");
    command
}

/// An unused port on 127.0.0.1 (free when this returns; the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The command of [`ServerProcess::serve_tiny`], on `port`.
pub fn serve_tiny_command(port: u16, env: &[(&str, &str)]) -> Command {
    let mut command = trendstory();
    command
        .env("TRENDSTORY_MODEL__DIR", super::required_model(super::TINY))
        .env(
            "TRENDSTORY_RUNTIME__ONNXRUNTIME_LIBRARY",
            super::runtime().onnxruntime_library.unwrap(),
        )
        .env("TRENDSTORY_INFERENCE__THREADS_PER_WORKER", "1")
        .env("TRENDSTORY_STORIES__TRENDING__ENABLED", "false")
        .envs(env.iter().copied())
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()]);
    command
}

/// A running `trendstory serve`, killed when dropped; its stderr goes to a file.
pub struct ServerProcess {
    child: Child,
    pub base: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `command`, a `serve` command listening on 127.0.0.1:`port`.
    pub fn start(mut command: Command, port: u16) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("server.log");
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the server");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _log_dir: log_dir,
        }
    }

    /// `trendstory serve` on a free 127.0.0.1 port with the tiny model, the fetched ONNX
    /// Runtime, one thread and no pre-generation, plus `env`; ready when this returns.
    pub async fn serve_tiny(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut server = Self::start(serve_tiny_command(port, env), port);
        server.wait_ready().await;
        server
    }

    /// The process id (for what only /proc shows, such as its memory).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process exits first.
    pub async fn wait_ready(&mut self) {
        let client = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited with {status}:\n{}", self.log());
            }
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "not ready within a minute:\n{}",
                self.log()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The exit status, if the process exits within `limit` (a generous bound: a test
    /// that uses it checks that the process ends, not how fast).
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
