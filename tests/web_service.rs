//! The web_service example under real HTTP load on 127.0.0.1: concurrent requests, some of
//! which crash their worker, each get the right answer, and the service recovers.

#[path = "../examples/web_service.rs"]
#[allow(dead_code)]
mod web_service;

use std::net::TcpListener;
use web_service::{fibonacci, get};

#[actix_rt::test]
async fn concurrent_requests_including_crashing_ones_each_get_their_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let farm = web_service::farm(2).await.unwrap();
    let server = web_service::serve(listener, farm).unwrap();
    let handle = server.handle();
    let running = actix_rt::spawn(server);

    let paths: Vec<String> =
        (0..24).map(|i| if i % 6 == 5 { "/crash".to_owned() } else { format!("/fib/{}", 15 + i) }).collect();
    let answers = actix_web::web::block(move || {
        std::thread::scope(|s| {
            let calls: Vec<_> = paths.iter().map(|p| s.spawn(move || (p.clone(), get(port, p)))).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect::<Vec<_>>()
        })
    });
    let answers = tokio::time::timeout(std::time::Duration::from_secs(60), answers).await.unwrap().unwrap();
    for (path, answer) in answers {
        let (status, body) = answer.unwrap();
        if path == "/crash" {
            assert_eq!(status, 500, "{path}: {body}");
            assert!(body.contains("SIGABRT"), "the reason is given: {body}");
        } else {
            let n: u32 = path.trim_start_matches("/fib/").parse().unwrap();
            assert_eq!((status, body.trim()), (200, fibonacci(n).to_string().as_str()), "{path}");
        }
    }
    let (status, body) = actix_web::web::block(move || get(port, "/fib/25")).await.unwrap().unwrap();
    assert_eq!((status, body.trim()), (200, "75025"), "the crashed workers were replaced");
    assert_eq!(actix_web::web::block(move || get(port, "/fib/99")).await.unwrap().unwrap().0, 400);
    handle.stop(true).await;
    running.await.unwrap().unwrap();
}
