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
