//! The `web_service` example without actix: a service on a plain tokio runtime
//! (`#[tokio::main]`, where an axum or hyper service runs) that offloads CPU-heavy, crash-prone
//! work to a farm of worker processes.
//!
//! Nothing here is actix: the farm runs its supervisor on a thread of its own (with its own actix
//! system), and its handles are `Send + Sync`, so request tasks spawned with `tokio::spawn` share
//! it. `GET /fib/{n}` computes a Fibonacci number in a worker; `GET /crash` aborts its worker,
//! gets a 500 with the reason, and the worker is replaced. The HTTP is a minimal HTTP/1.1 by hand,
//! to keep to tokio alone; an axum handler would call `farm.map_all(..)` the same way.
//!
//! Without `#[ensemble::main]`, `main` calls `ensemble::init()` first and shuts the farm down
//! before it returns: that is what stops the workers in order (their `post_run` runs) and reaps
//! them; a `main` that just returned would kill them with it.
//!
//! Run: `cargo run --example tokio_service` and try `curl localhost:8081/fib/40` and
//! `curl -i localhost:8081/crash`; or `-- --quick` to start on a free port, send a burst of
//! requests at itself (some crashing), check every answer, and exit.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

use ensemble::farm::{Farm, FarmConfig, TaskError};
use ensemble::prelude::*;
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Serialize, Deserialize, ProcessActor)]
#[actor(batches(Job))]
pub struct Cruncher;

#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
pub enum Job {
    Fibonacci(u32),
    Crash,
}

impl ProcessHandler<Job> for Cruncher {
    fn handle(&mut self, job: Job, _: &mut Self::Context) -> u64 {
        match job {
            Job::Fibonacci(n) => fibonacci(n),
            Job::Crash => {
                eprintln!("cruncher: this job brings the process down");
                std::process::abort()
            }
        }
    }
}

/// Deliberately slow (exponential): CPU-heavy work worth a separate process.
pub fn fibonacci(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fibonacci(n - 1) + fibonacci(n - 2)
    }
}

/// The farm behind the service: a task lost with a crashed worker is retried once, alone.
pub async fn farm(workers: usize) -> Result<Farm<Cruncher>, ensemble::supervisor::SupervisorError> {
    let config =
        FarmConfig { workers, retries: 1, progress: false, name: "cruncher".into(), ..FarmConfig::default() };
    Farm::start(config, |_| Cruncher).await
}

/// Answers connections on `listener` with `farm`, each on a task of its own, until the returned
/// task is aborted.
pub fn serve(listener: TcpListener, farm: Arc<Farm<Cruncher>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, Arc::clone(&farm)));
        }
    })
}

/// Reads one request, answers it, closes the connection.
async fn answer(mut stream: TcpStream, farm: Arc<Farm<Cruncher>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split(' ').nth(1).unwrap_or("/");
    let (status, body) = route(&farm, path).await;
    drop(farm); // before the client sees the answer: `main` takes the farm back to shut it down
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

async fn route(farm: &Farm<Cruncher>, path: &str) -> (u16, String) {
    match (path, path.strip_prefix("/fib/").map(str::parse::<u32>)) {
        (_, Some(Ok(n @ 0..=60))) => run(farm, Job::Fibonacci(n)).await,
        (_, Some(_)) => (400, "n must be a number of at most 60\n".into()),
        ("/crash", None) => run(farm, Job::Crash).await,
        _ => (404, "try /fib/{n} or /crash\n".into()),
    }
}

async fn run(farm: &Farm<Cruncher>, job: Job) -> (u16, String) {
    match farm.map_all(std::iter::once(job)).await.pop() {
        Some(Ok(value)) => (200, format!("{value}\n")),
        Some(Err(TaskError::WorkerDied { exit, .. })) => {
            (500, format!("the job crashed its worker: {exit}\n"))
        }
        Some(Err(error)) => (500, format!("{error}\n")),
        None => (500, "no result\n".into()),
    }
}

/// A minimal, blocking HTTP/1.1 GET: returns the status code and the body.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((status, body))
}

/// Sends `paths` at once from as many client threads; answers in the same order.
pub async fn burst(port: u16, paths: Vec<String>) -> Vec<(String, std::io::Result<(u16, String)>)> {
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let calls: Vec<_> = paths.iter().map(|p| s.spawn(move || (p.clone(), get(port, p)))).collect();
            calls.into_iter().map(|c| c.join().expect("client thread")).collect()
        })
    })
    .await
    .expect("the client threads")
}

#[tokio::main]
#[allow(dead_code)] // `main` is unused when the integration test includes this file
async fn main() -> anyhow::Result<()> {
    ensemble::init(); // first thing: this `main` is not `#[ensemble::main]`
    let quick = std::env::args().any(|a| a == "--quick");
    let listener = TcpListener::bind(if quick { "127.0.0.1:0" } else { "127.0.0.1:8081" }).await?;
    let port = listener.local_addr()?.port();
    let farm = Arc::new(farm(2).await?);
    let server = serve(listener, Arc::clone(&farm));
    println!("serving on http://127.0.0.1:{port}  (GET /fib/{{n}}, GET /crash)");
    if quick {
        let paths = (0..12)
            .map(|i| if i % 4 == 3 { "/crash".to_owned() } else { format!("/fib/{}", 20 + i) })
            .collect();
        for (path, answer) in burst(port, paths).await {
            let (status, body) = answer.map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            println!("GET {path:<8} -> {status} {}", body.lines().next().unwrap_or(""));
            let expected = if path == "/crash" { 500 } else { 200 };
            anyhow::ensure!(status == expected, "{path} answered {status}");
        }
        let (_, answer) = burst(port, vec!["/fib/30".into()]).await.remove(0);
        let (status, body) = answer?;
        anyhow::ensure!(status == 200 && body.trim() == fibonacci(30).to_string(), "the service recovered");
        println!("after the crashes: GET /fib/30 -> {status} {}", body.trim());
    } else {
        tokio::signal::ctrl_c().await?;
    }
    server.abort();
    let _ = server.await; // cancelled: its copy of the farm is dropped
    let farm = Arc::try_unwrap(farm).map_err(|_| anyhow::anyhow!("a request still holds the farm"))?;
    farm.shutdown().await?;
    println!("the workers stopped");
    Ok(())
}
