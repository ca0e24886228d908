//! What every integration test needs: deadlines on futures and conditions. A test that would
//! hang fails instead, with what it was waiting for.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Awaits `future`, failing the test if it takes more than `secs` seconds.
pub async fn within<F: std::future::Future>(secs: u64, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), future).await {
        Ok(output) => output,
        Err(_) => panic!("not done within {secs} s"),
    }
}

/// Polls `condition` until it holds, failing the test after `secs` seconds.
pub async fn wait_until(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// As [`wait_until`], for a test without a runtime: blocks the thread between looks.
pub fn eventually(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An ignored test of this test binary run in a process of its own (a helper test returns at
/// once unless its environment variable is set): for what needs a separate root process (a
/// signal to the root, a root killed mid-operation, CPU time measured without other tests).
/// Every wait on it has a deadline, and dropping it kills and reaps the process, so a stuck or
/// failing helper fails its test instead of hanging the suite or outliving it.
pub struct Helper {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    name: String,
}

impl Helper {
    /// Starts helper test `name` with `key=value` in its environment.
    #[allow(clippy::disallowed_methods)] // a helper program of the test's own
    pub fn start(name: &str, key: &str, value: &str) -> Helper {
        let mut process = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(key, value)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Helper { process, lines, name: name.to_owned() }
    }

    /// The helper's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The text after `marker` on the first line that has it, failing the test after `secs`
    /// seconds or when the helper's output ends first. (libtest prints "test NAME ... " before
    /// the helper's own output, so the marker need not start the line.)
    pub fn line_after(&mut self, marker: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(marker) {
                        return line[at + marker.len()..].to_owned();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the helper {} printed no {marker:?} within {secs} s", self.name)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the helper {} ended without printing {marker:?}: {:?}",
                        self.name,
                        self.process.wait()
                    )
                }
            }
        }
    }

    /// Sends `signal` to the helper.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.process.id() as i32).expect("a child's pid");
        if let Err(e) = rustix::process::kill_process(pid, signal) {
            panic!("could not signal the helper {}: {e}", self.name);
        }
    }

    /// Waits for the helper to exit, failing the test after `secs` seconds.
    pub fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the helper {} did not exit within {secs} s", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs helper test `name` to its end with `key=1` set, and returns the text after `marker`
/// on the line that has it; fails the test after `secs` seconds.
pub fn run_helper(name: &str, key: &str, marker: &str, secs: u64) -> String {
    let mut helper = Helper::start(name, key, "1");
    let found = helper.line_after(marker, secs);
    let status = helper.wait(secs);
    assert!(status.success(), "the helper {name} failed ({status})");
    found
}

/// The CPU time process `pid` has used so far, all its threads, in nanoseconds (from
/// `/proc/<pid>/task/*/schedstat`; threads that already ended are not counted).
pub fn cpu_time_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}
