//! A web service that offloads CPU-heavy, crash-prone work to a farm of worker processes.
//!
//! An actix-web server owns a farm. `GET /fib/{n}` computes a Fibonacci number in a worker;
//! `GET /crash` runs a job that aborts its worker process. The crashing request gets a 500
//! with the reason, the worker is replaced by the farm's supervisor, and every other request,
//! including those that were in flight on the same worker, is answered (they are retried once
//! on another worker). With Python one bad request in a `Pool` takes the pool down or hangs it.
//!
//! Run: `cargo run --example web_service` and try `curl localhost:8080/fib/40` and
//! `curl -i localhost:8080/crash`; or `-- --quick` to start on a free port, send a burst of
//! requests at itself (some crashing), check every answer, and exit.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

use actix_web::{get, web, App, HttpResponse, HttpServer};
use ensemble::farm::{Farm, FarmConfig, TaskError};
use ensemble::prelude::*;
use std::io::{Read, Write};
use std::net::TcpListener;

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
    fn handle(&mut self, job: Job, _: &mut ProcessContext<Self>) -> u64 {
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

async fn run(farm: &Farm<Cruncher>, job: Job) -> HttpResponse {
    match farm.map_all(std::iter::once(job)).await.pop() {
        Some(Ok(value)) => HttpResponse::Ok().body(format!("{value}\n")),
        Some(Err(TaskError::WorkerDied { exit, .. })) => {
            HttpResponse::InternalServerError().body(format!("the job crashed its worker: {exit}\n"))
        }
        Some(Err(error)) => HttpResponse::InternalServerError().body(format!("{error}\n")),
        None => HttpResponse::InternalServerError().body("no result\n"),
    }
}

#[get("/fib/{n}")]
async fn fib(farm: web::Data<Farm<Cruncher>>, n: web::Path<u32>) -> HttpResponse {
    match n.into_inner() {
        n @ 0..=60 => run(&farm, Job::Fibonacci(n)).await,
        _ => HttpResponse::BadRequest().body("n must be at most 60\n"),
    }
}

#[get("/crash")]
async fn crash(farm: web::Data<Farm<Cruncher>>) -> HttpResponse {
    run(&farm, Job::Crash).await
}

/// Serves the routes on `listener` with `farm` until the returned server is stopped.
///
/// # Errors
/// When the listener cannot be used.
pub fn serve(listener: TcpListener, farm: Farm<Cruncher>) -> std::io::Result<actix_web::dev::Server> {
    let farm = web::Data::new(farm);
    Ok(HttpServer::new(move || App::new().app_data(farm.clone()).service(fib).service(crash))
        .workers(2)
        .disable_signals()
        .listen(listener)?
        .run())
}

/// A minimal HTTP/1.1 GET: returns the status code and the body.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((status, body))
}

#[ensemble::main]
#[allow(dead_code)] // `main` is unused when the integration test includes this file
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let listener = TcpListener::bind(if quick { "127.0.0.1:0" } else { "127.0.0.1:8080" })?;
    let port = listener.local_addr()?.port();
    let server = serve(listener, farm(2).await?)?;
    let handle = server.handle();
    let running = actix_rt::spawn(server);
    println!("serving on http://127.0.0.1:{port}  (GET /fib/{{n}}, GET /crash)");
    if quick {
        let answers = web::block(move || {
            let paths: Vec<String> = (0..12)
                .map(|i| if i % 4 == 3 { "/crash".to_owned() } else { format!("/fib/{}", 20 + i) })
                .collect();
            std::thread::scope(|s| {
                let calls: Vec<_> =
                    paths.iter().map(|p| s.spawn(move || (p.clone(), get(port, p)))).collect();
                calls.into_iter().map(|c| c.join().expect("client thread")).collect::<Vec<_>>()
            })
        })
        .await?;
        for (path, answer) in &answers {
            let (status, body) = answer.as_ref().map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            println!("GET {path:<8} -> {status} {}", body.trim());
            let expected = if path == "/crash" { 500 } else { 200 };
            anyhow::ensure!(*status == expected, "{path} answered {status}");
        }
        let (status, body) = web::block(move || get(port, "/fib/30")).await??;
        anyhow::ensure!(status == 200 && body.trim() == fibonacci(30).to_string(), "the service recovered");
        println!("after the crashes: GET /fib/30 -> {status} {}", body.trim());
    } else {
        actix_rt::signal::ctrl_c().await?;
    }
    handle.stop(true).await;
    running.await??;
    Ok(())
}
