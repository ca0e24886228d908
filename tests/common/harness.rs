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

/// Runs the ignored test `helper` of this test binary in a process of its own, with
/// `env_key=1` set (a helper returns at once without it), and returns what it printed. The
/// helper is killed, and the test fails, if it has not finished within `secs` seconds.
#[allow(clippy::disallowed_methods)] // a helper program of the test's own
pub fn run_helper(helper: &str, env_key: &str, secs: u64) -> String {
    let mut process = std::process::Command::new(std::env::current_exe().unwrap())
        .args([helper, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(env_key, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = process.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = process.kill();
            let _ = process.wait();
            panic!("the helper {helper} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "the helper {helper} failed ({status}):\n{out}");
    out
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
