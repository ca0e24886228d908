//! The tokio_service example under real HTTP on 127.0.0.1, in a plain multi-threaded tokio
//! runtime (no actix system): concurrent requests, some of which crash their worker, each get
//! the right answer, and the service recovers.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use harness::within;

#[path = "../examples/tokio_service.rs"]
#[allow(dead_code)]
mod tokio_service;

use std::sync::Arc;
use tokio_service::{burst, fibonacci};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_including_crashing_ones_each_get_their_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let farm = Arc::new(within(20, tokio_service::farm(2)).await.unwrap());
    let server = tokio_service::serve(listener, Arc::clone(&farm));

    let paths: Vec<String> =
        (0..24).map(|i| if i % 6 == 5 { "/crash".to_owned() } else { format!("/fib/{}", 15 + i) }).collect();
    for (path, answer) in within(60, burst(port, paths)).await {
        let (status, body) = answer.unwrap();
        if path == "/crash" {
            assert_eq!(status, 500, "{path}: {body}");
            assert!(body.contains("SIGABRT"), "the reason is given: {body}");
        } else {
            let n: u32 = path.trim_start_matches("/fib/").parse().unwrap();
            assert_eq!((status, body.trim()), (200, fibonacci(n).to_string().as_str()), "{path}");
        }
    }
    let answers = within(20, burst(port, vec!["/fib/25".into(), "/fib/99".into()])).await;
    let answers: Vec<_> = answers.into_iter().map(|(_, answer)| answer.unwrap()).collect();
    assert_eq!((answers[0].0, answers[0].1.trim()), (200, "75025"), "the crashed workers were replaced");
    assert_eq!(answers[1].0, 400);

    server.abort();
    let _ = server.await;
    let farm = Arc::try_unwrap(farm).expect("no request holds the farm");
    within(20, farm.shutdown()).await.unwrap();
}
