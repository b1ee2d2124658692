//! Upload benchmark: `scripts/bench-upload.sh [SECONDS_PER_RUN]`.
//!
//! Drives a running release ingest (and, when nginx is installed, nginx's WebDAV PUT with the
//! config in `bench/nginx.conf`) with KAZOO-shaped requests over keep-alive connections:
//! bodies of 16 KiB, 128 KiB and 1 MiB, at 1, 16 and 64 connections, raw PUT and multipart
//! POST. The two servers alternate run by run, so machine noise hits both alike. Prints
//! requests/s, MB/s, p50/p99 latency, ingest's peak RSS, and the ratio to nginx; and the CPU
//! each server spent per request (ingest's own, plus RabbitMQ's for the jobs it confirmed), as
//! everything shares the machine's cores and CPU per upload is what bounds the rate.
//! Each case runs `BENCH_ROUNDS` (3) times per server, alternating, and the rounds are pooled.
//! `BENCH_ONLY=raw:128:16` (body:KiB:connections) runs a single case, e.g. under a profiler.
//! After the table, ingest's CPU per request by stage: its threads' CPU (/proc/PID/task),
//! grouped by thread name, and RabbitMQ's.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vmpipe_tests::*;

struct Run {
    requests: u64,
    bytes: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time of the server's processes, and of RabbitMQ's, during the run.
    server_cpu: Duration,
    broker_cpu: Duration,
    /// ingest's CPU by stage (its threads, grouped by name), during the run.
    stages: std::collections::BTreeMap<&'static str, Duration>,
}

/// The stage an ingest thread works for, from its name.
fn stage_of(thread: &str) -> &'static str {
    if thread.starts_with("vmpipe-file-io") {
        "file-io"
    } else if thread.starts_with("vmpipe-journal") {
        "journal"
    } else if thread.starts_with("actix-server wo") {
        "http"
    } else if thread.starts_with("lapin") {
        "amqp-io"
    } else if thread.starts_with("tokio-rt-worker") {
        "runtime"
    } else {
        "other"
    }
}

/// CPU ticks of each stage of `pid`'s threads (see [`stage_of`]).
fn stage_ticks(pid: u32) -> std::collections::BTreeMap<&'static str, u64> {
    let mut stages = std::collections::BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    for task in tasks {
        if let Some(stat) = stat_at(&task.path().join("stat")) {
            *stages.entry(stage_of(&stat.name)).or_default() += stat.ticks;
        }
    }
    stages
}

/// Who to charge CPU to while a server is driven.
#[derive(Clone, Copy)]
struct Server {
    port: u16,
    pid: Option<u32>,
}

/// utime + stime of `pid` and all its descendants (nginx's workers), from /proc.
fn tree_cpu(root: u32) -> Duration {
    let stats = processes();
    let mut tree = vec![root];
    let mut ticks = 0;
    while let Some(pid) = tree.pop() {
        for stat in &stats {
            if stat.pid == pid {
                ticks += stat.ticks;
            }
            if stat.parent == pid {
                tree.push(stat.pid);
            }
        }
    }
    ticks_to_duration(ticks)
}

/// CPU time of every process with this command name (RabbitMQ's `beam.smp`).
fn named_cpu(name: &str) -> Duration {
    let ticks = processes()
        .iter()
        .filter(|stat| stat.name == name)
        .map(|stat| stat.ticks)
        .sum();
    ticks_to_duration(ticks)
}

/// Every process in /proc.
fn processes() -> Vec<ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

struct ProcStat {
    pid: u32,
    parent: u32,
    name: String,
    ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    stat_at(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// A `stat` file of /proc: a process's, or one thread's (`/proc/PID/task/TID/stat`).
fn stat_at(path: &std::path::Path) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(path).ok()?;
    let pid = path.parent()?.file_name()?.to_str()?.parse().ok()?;
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // After the name: state, ppid, ..., utime (field 14 of the line), stime (15).
    Some(ProcStat {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        name,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// /proc counts in USER_HZ, which is 100 on Linux.
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

async fn drive(
    server: Server,
    body: Body,
    size: usize,
    connections: usize,
    seconds: f64,
    prefix: &str,
) -> Run {
    let port = server.port;
    let server_cpu_before = server.pid.map(tree_cpu).unwrap_or_default();
    let stages_before = server.pid.map(stage_ticks).unwrap_or_default();
    let broker_cpu_before = named_cpu("beam.smp");
    let audio = nasty_audio(size);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..connections {
        let audio = audio.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let mut latencies = Vec::new();
            let mut n = 0u64;
            // At least one request per connection (the memory runs send exactly one).
            loop {
                let name = format!("{lane}-{n}.mp3");
                let document = mailbox_message("d", &name);
                let att = Attachment { document_id: "d", name: &name, content_type: "audio/mpeg", data: &audio, document: &document };
                let (content_type, bytes) = encode_body(body, &att);
                let verb = if body == Body::Raw { "PUT" } else { "POST" };
                let head = format!(
                    "{verb} {prefix}/4e3005310add6229778caf6babfe7cfb/{lane}/{name} HTTP/1.1\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nte: \r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n\r\n",
                    bytes.len()
                );
                let sent = Instant::now();
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(&bytes).await.unwrap();
                let response = read_response_from(&mut stream, false).await;
                assert!((200..300).contains(&response.status), "status {}", response.status);
                latencies.push(sent.elapsed());
                n += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    latencies.sort();
    let elapsed = started.elapsed();
    Run {
        requests: latencies.len() as u64,
        bytes: latencies.len() as u64 * size as u64,
        latencies,
        elapsed,
        server_cpu: server
            .pid
            .map(tree_cpu)
            .unwrap_or_default()
            .saturating_sub(server_cpu_before),
        broker_cpu: named_cpu("beam.smp").saturating_sub(broker_cpu_before),
        stages: server
            .pid
            .map(stage_ticks)
            .unwrap_or_default()
            .into_iter()
            .map(|(stage, ticks)| {
                let before = stages_before.get(stage).copied().unwrap_or(0);
                (stage, ticks_to_duration(ticks.saturating_sub(before)))
            })
            .collect(),
    }
}

/// CPU milliseconds per request.
fn per_request(cpu: Duration, run: &Run) -> f64 {
    cpu.as_secs_f64() * 1000.0 / run.requests.max(1) as f64
}

fn merge(runs: Vec<Run>) -> Run {
    let mut all = Run {
        requests: 0,
        bytes: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        server_cpu: Duration::ZERO,
        broker_cpu: Duration::ZERO,
        stages: Default::default(),
    };
    for run in runs {
        for (stage, cpu) in &run.stages {
            *all.stages.entry(stage).or_default() += *cpu;
        }
        all.server_cpu += run.server_cpu;
        all.broker_cpu += run.broker_cpu;
        all.requests += run.requests;
        all.bytes += run.bytes;
        all.latencies.extend(run.latencies);
        all.elapsed += run.elapsed;
    }
    all.latencies.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    rss_kib(pid, "VmHWM:")
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let ingest_port: u16 = std::env::var("BENCH_INGEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(18181);
    let ingest_pid: Option<u32> = std::env::var("BENCH_INGEST_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let nginx_port: Option<u16> = std::env::var("BENCH_NGINX_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    let nginx_pid: Option<u32> = std::env::var("BENCH_NGINX_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let ingest = Server {
        port: ingest_port,
        pid: ingest_pid,
    };
    println!(
        "{seconds} s per run, {rounds} rounds alternating; ingest on {ingest_port}{}",
        nginx_port.map_or(String::new(), |p| format!(", nginx on {p}"))
    );
    println!(
        "CPU columns: milliseconds of CPU per request; ingest's own + RabbitMQ's for its jobs"
    );
    println!(
        "{:<10} {:>8} {:>5} | {:>9} {:>8} {:>8} {:>8} {:>11} | {:>9} {:>8} {:>8} {:>6} | {:>6}",
        "body",
        "size",
        "conns",
        "ingest/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "CPU ms",
        "nginx/s",
        "p50 ms",
        "p99 ms",
        "CPU ms",
        "ratio"
    );
    let mut stage_lines = Vec::new();
    for (body, sizes) in [
        (Body::Raw, [16 << 10, 128 << 10, 1 << 20]),
        (Body::Multipart, [16 << 10, 128 << 10, 1 << 20]),
    ] {
        for size in sizes {
            for connections in [1, 16, 64] {
                // BENCH_ONLY=raw:128:16 runs one case (to profile it).
                if let Ok(only) = std::env::var("BENCH_ONLY")
                    && only.to_lowercase()
                        != format!("{body:?}:{}:{connections}", size >> 10).to_lowercase()
                {
                    continue;
                }
                // Alternate the servers round by round, so that noise hits both alike.
                let mut ours = Vec::new();
                let mut theirs = Vec::new();
                for _ in 0..rounds {
                    ours.push(drive(ingest, body, size, connections, seconds, "").await);
                    if let (Some(port), Body::Raw) = (nginx_port, body) {
                        let nginx = Server {
                            port,
                            pid: nginx_pid,
                        };
                        theirs.push(drive(nginx, body, size, connections, seconds, "/dav").await);
                    }
                }
                let ours = merge(ours);
                let theirs = (!theirs.is_empty()).then(|| merge(theirs));
                let rate = |r: &Run| r.requests as f64 / r.elapsed.as_secs_f64();
                let ours_rate = rate(&ours);
                let (their_rate, their_p50, their_p99, their_cpu, ratio) = theirs.as_ref().map_or(
                    ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
                    |t| {
                        (
                            format!("{:.0}", rate(t)),
                            format!("{:.2}", percentile(&t.latencies, 0.5)),
                            format!("{:.2}", percentile(&t.latencies, 0.99)),
                            format!("{:.3}", per_request(t.server_cpu, t)),
                            format!("{:.2}", ours_rate / rate(t)),
                        )
                    },
                );
                let our_cpu = format!(
                    "{:.3}+{:.3}",
                    per_request(ours.server_cpu, &ours),
                    per_request(ours.broker_cpu, &ours)
                );
                let stages: Vec<String> = ours
                    .stages
                    .iter()
                    .filter(|(_, cpu)| !cpu.is_zero())
                    .map(|(stage, cpu)| format!("{stage} {:.3}", per_request(*cpu, &ours)))
                    .collect();
                stage_lines.push(format!(
                    "{:<10} {:>7}K {:>5} | {} + rabbitmq {:.3}",
                    format!("{body:?}"),
                    size >> 10,
                    connections,
                    stages.join(", "),
                    per_request(ours.broker_cpu, &ours)
                ));
                println!(
                    "{:<10} {:>7}K {:>5} | {:>9.0} {:>8.1} {:>8.2} {:>8.2} {:>11} | {:>9} {:>8} {:>8} {:>6} | {:>6}",
                    format!("{body:?}"),
                    size >> 10,
                    connections,
                    ours_rate,
                    ours.bytes as f64 / 1e6 / ours.elapsed.as_secs_f64(),
                    percentile(&ours.latencies, 0.5),
                    percentile(&ours.latencies, 0.99),
                    our_cpu,
                    their_rate,
                    their_p50,
                    their_p99,
                    their_cpu,
                    ratio
                );
            }
        }
    }
    if !stage_lines.is_empty() && ingest_pid.is_some() {
        println!(
            "ingest's CPU per request by stage, ms (its threads by name: file-io = vmpipe-file-io, \
             journal = vmpipe-journal (the group commit), http = actix workers, runtime = tokio \
             workers (the publisher), amqp-io = lapin's I/O loop), and RabbitMQ's:"
        );
        for line in &stage_lines {
            println!("{line}");
        }
    }
    if let Some(pid) = ingest_pid {
        println!("ingest peak RSS: {} KiB", peak_rss_kib(pid).unwrap_or(0));
        if std::env::var("BENCH_ONLY").is_err()
            || std::env::var("BENCH_ONLY").as_deref() == Ok("memory")
        {
            memory(ingest_port, pid).await;
        }
    }
}

/// Memory flat in body size: ingest's peak RSS over one 100 MiB upload, then over 64 concurrent
/// 10 MiB uploads, against its RSS before (the peak is reset through /proc/PID/clear_refs).
async fn memory(port: u16, pid: u32) {
    for (label, size, connections) in [("1 x 100 MiB", 100 << 20, 1), ("64 x 10 MiB", 10 << 20, 64)]
    {
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let before = rss_kib(pid, "VmRSS:").unwrap_or(0);
        let server = Server {
            port,
            pid: Some(pid),
        };
        let run = drive(server, Body::Raw, size, connections, 0.0, "").await;
        let peak = peak_rss_kib(pid).unwrap_or(0);
        println!(
            "memory {label}: {} uploads; ingest RSS {before} KiB before, peak {peak} KiB (+{} KiB){}",
            run.requests,
            peak.saturating_sub(before),
            if reset.is_ok() {
                ""
            } else {
                " (peak not reset: since start)"
            }
        );
    }
}
