//! API benchmark: `scripts/bench-api.sh [ROWS]` (default 1,000,000), or
//! `cargo bench -p vmpipe-tests --bench api -- ROWS` after `cargo build --release --bin api`.
//!
//! A release `api` over a database of its own (`vmpipe_bench_api`, kept between runs) holding
//! ROWS generated voicemails (200 accounts, the biggest with ~10% of them; 85% transcribed,
//! with "invoice", "refund", "escalation" and "zebra" planted in 10%, 1%, 0.1% and 0.01% of
//! the transcripts; ~50 rows backed by a real MP3). Prints, for each list and full-text
//! scenario and for the audio, p50/p90/p99/max and requests/s at concurrency 1 and 8, the
//! api's memory, PostgreSQL's plan of every list scenario (all of them in
//! `target/bench-api/plans.txt`) and a summary against the targets (list and full-text p99
//! < 50 ms, audio first byte p99 < 20 ms, both at concurrency 1). It fails on a wrong answer,
//! never on a missed target.
//!
//! `BENCH_REQUESTS=N` (default 500) requests per scenario and concurrency, cut short after
//! `BENCH_MAX_SECONDS` (default 30: a scenario with a bad plan would take hours); `BENCH_FRESH=1`
//! regenerates the data even when the database already holds it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use vmpipe_tests::{database_admin_url, free_port};

const DATABASE: &str = "vmpipe_bench_api";
/// Bumped whenever the generated data changes: a database made by another version is rebuilt.
const GENERATOR_VERSION: i32 = 2;
const BATCH: i64 = 100_000;
const AUDIO_ROWS: i64 = 50;
const WARM_UP: usize = 50;
/// A warm-up stops after this long, whatever it has done.
const WARM_UP_SECONDS: f64 = 10.0;
const CONCURRENCY: [usize; 2] = [1, 8];
const LIST_TARGET_MS: f64 = 50.0;
const AUDIO_TARGET_MS: f64 = 20.0;

/// ~300 common English words the transcripts are made of (none of them a planted word).
const WORDS: &str = "the be to of and a in that have i it for not on with he as you do at this \
    but his by from they we say her she or an will my one all would there their what so up out \
    if about who get which go me when make can like time no just him know take people into year \
    your good some could them see other than then now look only come its over think also back \
    after use two how our work first well way even new want because any these give day most us \
    is was are been has had were said did having may should call calling called number phone \
    message please thanks thank hello hi hey morning afternoon evening today tomorrow yesterday \
    week month monday tuesday wednesday thursday friday saturday sunday meeting appointment \
    office home mobile cell email address account order delivery package shipment payment \
    balance statement question questions answer help support service customer team manager \
    sales quote price cost estimate contract project report update status schedule reschedule \
    confirm confirmation cancel available soon later minute minutes hour hours noon tonight \
    again still really sure okay right great fine just wanted check quick regarding \
    about concerning follow following reach reached trying tried leave left return returning \
    earliest convenience whenever best times between until before around free talk speak \
    discuss details information file files document documents send sent email emailed copy \
    signed sign review reviewed approved approve need needs needed issue problem trouble \
    working works broken fix fixed repair technician visit site location street avenue road \
    building floor suite room parking lot car truck driver pickup drop bring brought ready \
    waiting wait ticket case reference code letter box mail online website portal login \
    password reset access card credit bank transfer deposit receipt amount dollars hundred \
    thousand fifty twenty ten five three four six seven eight nine zero extension direct line \
    doctor dentist clinic school kids dinner lunch coffee weekend holiday vacation trip flight \
    hotel family friend mom dad brother sister john mary mike sarah david lisa";

const FIRST_NAMES: &str = "James Mary Robert Patricia John Jennifer Michael Linda David \
    Elizabeth William Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen \
    Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra Mark Ashley Donald Kimberly \
    Steven Emily Paul Donna Andrew Michelle Joshua Carol";
const LAST_NAMES: &str = "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez \
    Martinez Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee \
    Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King \
    Wright Scott Torres Nguyen Hill Flores";

/// One batch of voicemails (`$1..=$2`) and their transcripts, in one statement. `$3`: the word
/// list, `$4`/`$5`: first and last names.
const GENERATE: &str = r#"
WITH src AS (
    SELECT i,
           CASE WHEN ra < 0.10 THEN 0
                ELSE 1 + least(198, floor(power((ra - 0.10) / 0.90, 1.5) * 199)::int) END AS a,
           floor(random() * 5)::int AS m,
           floor(random() * 50000)::int AS c,
           date_trunc('milliseconds', now() - random() * interval '365 days') AS t,
           random() AS r_null, random() AS r_folder,
           3000 + floor(random() * 117001)::int AS duration_ms
    FROM (SELECT i, random() AS ra FROM generate_series($1::bigint, $2::bigint) AS i) s
), rows AS (
    SELECT src.*,
           md5('account-' || a) AS account_id,
           to_char(t, 'YYYYMM') || '-' || md5('document-' || i) AS document_id,
           md5('attachment-' || i) || '.mp3' AS attachment_name,
           t + (1 + random() * 5) * interval '1 second' AS received_at,
           md5(i::text) AS h
    FROM src
), ins AS (
    INSERT INTO voicemails (
        id, storage_key, account_id, document_id, attachment_name, mailbox_id,
        caller_id_number, caller_id_name, call_id, from_user, from_realm, to_user, to_realm,
        folder, kazoo_length_ms, recorded_at, duration_ms, codec, sample_rate, channels,
        bitrate_bps, content_type, size_bytes, sha256, upload_mode, received_at, request_id,
        job_id)
    SELECT
        (lpad(to_hex(floor(extract(epoch FROM coalesce(CASE WHEN r_null < 0.01 THEN NULL ELSE t END,
                                                        received_at)) * 1000)::bigint), 12, '0')
         || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 3) || lpad(to_hex(i), 12, '0'))::uuid,
        account_id || '/' || document_id || '/' || attachment_name,
        account_id, document_id, attachment_name,
        md5('mailbox-' || a || '-' || m),
        '+1415' || (5550000 + c),
        ($4::text[])[1 + c % cardinality($4::text[])] || ' '
            || ($5::text[])[1 + (c / cardinality($4::text[])) % cardinality($5::text[])],
        md5('call-' || i) || '@10.0.0.1',
        '1415' || (5550000 + c), 'pstn.example.net',
        (1001 + a * 5 + m)::text, 'account' || a || '.sip.example.com',
        CASE WHEN r_folder < 0.60 THEN 'new' WHEN r_folder < 0.95 THEN 'saved' ELSE 'deleted' END,
        (duration_ms / 1000) * 1000,
        CASE WHEN r_null < 0.01 THEN NULL ELSE t END,
        duration_ms, 'mp3', 8000, 1, 32000, 'audio/mpeg', duration_ms::bigint * 4,
        md5('file-' || i) || md5('content-' || i),
        'multipart', received_at, md5('request-' || i),
        md5('job-' || i)::uuid
    FROM rows
    RETURNING id, received_at, duration_ms, coalesce(recorded_at, received_at) AS listed_at,
        account_id
), spoken AS (
    SELECT id, received_at, duration_ms, listed_at, account_id,
           (SELECT string_agg(($3::text[])[1 + floor(random() * cardinality($3::text[]))::int], ' ')
              FROM generate_series(1, n1)) AS head,
           (SELECT string_agg(($3::text[])[1 + floor(random() * cardinality($3::text[]))::int], ' ')
              FROM generate_series(1, n2)) AS tail,
           planted
    FROM (
        SELECT id, received_at, duration_ms, listed_at, account_id,
               10 + floor(random() * 31)::int AS n1,
               10 + floor(random() * 31)::int AS n2,
               concat_ws(' ',
                   CASE WHEN random() < 0.10 THEN 'invoice' END,
                   CASE WHEN random() < 0.01 THEN 'refund' END,
                   CASE WHEN random() < 0.001 THEN 'escalation' END,
                   CASE WHEN random() < 0.0001 THEN 'zebra' END,
                   CASE WHEN random() < 0.03 THEN 'please call back' END) AS planted
        FROM ins
        WHERE random() < 0.85
    ) t
)
INSERT INTO transcriptions (
    voicemail_id, hook, status, text, language, confidence, attempts, queued_at, started_at,
    finished_at, run_ms, next_attempt_at, audio_received_at, segments, listed_at, account_id)
SELECT id, 'whisper', 'done', concat_ws(' ', head, nullif(planted, ''), tail), 'en',
       0.8 + random() * 0.2, 1, received_at, received_at + interval '2 seconds',
       received_at + interval '9 seconds', 7000, received_at, received_at,
       CASE WHEN random() < 0.5 THEN NULL
            ELSE jsonb_build_array(jsonb_build_object('start_ms', 0, 'end_ms', duration_ms,
                                                      'text', left(head, 60))) END,
       listed_at, account_id
FROM spoken
"#;

struct Paths {
    api: PathBuf,
    out: PathBuf,
    storage: PathBuf,
    fixture: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace.join(t)
                }
            })
            .unwrap_or_else(|| workspace.join("target"));
        let api = target.join("release").join("api");
        assert!(
            api.exists(),
            "{} is missing: cargo build --release --locked --bin api",
            api.display()
        );
        let out = target.join("bench-api");
        Self {
            api,
            storage: out.join("storage"),
            out,
            fixture: workspace.join("tests/fixtures/spoken/invoice.mp3"),
        }
    }
}

fn database_url() -> String {
    let admin = database_admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{DATABASE}")
}

/// `api ARGS` over the bench database: its standard output (panics if it fails).
fn api_command(paths: &Paths, args: &[&str]) -> String {
    let output = std::process::Command::new(&paths.api)
        .args(args)
        .env("VMPIPE_DATABASE_URL", database_url())
        .env("VMPIPE_STORAGE_DIR", &paths.storage)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run api");
    assert!(
        output.status.success(),
        "api {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn list_of(words: &str) -> Vec<String> {
    words.split_whitespace().map(str::to_owned).collect()
}

/// The database as the bench wants it: kept when it holds `rows` voicemails of this generator,
/// else made again.
async fn prepare(paths: &Paths, rows: i64) -> sqlx::PgPool {
    let fresh = std::env::var("BENCH_FRESH").is_ok_and(|v| v == "1");
    if !fresh && let Ok(pool) = sqlx::PgPool::connect(&database_url()).await {
        let marker: Option<(i32, i64)> =
            sqlx::query_as("SELECT version, rows FROM bench_api_marker")
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
        let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM voicemails")
            .fetch_one(&pool)
            .await
            .ok();
        if marker == Some((GENERATOR_VERSION, rows)) && count == Some(rows) {
            eprintln!(
                "data: {DATABASE} already holds {rows} voicemails (generator v{GENERATOR_VERSION}): kept (BENCH_FRESH=1 rebuilds)"
            );
            return pool;
        }
        pool.close().await;
    }
    let started = Instant::now();
    let admin = sqlx::PgPool::connect(&database_admin_url())
        .await
        .expect("PostgreSQL answers");
    sqlx::query("DROP DATABASE IF EXISTS vmpipe_bench_api WITH (FORCE)")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE vmpipe_bench_api")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    // The schema: the api's own migrations.
    api_command(
        paths,
        &[
            "token",
            "create",
            "--name",
            "bench-schema",
            "--all-accounts",
        ],
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url())
        .await
        .unwrap();
    sqlx::query("SELECT setseed(0.42)")
        .execute(&pool)
        .await
        .unwrap();
    let (words, first, last) = (list_of(WORDS), list_of(FIRST_NAMES), list_of(LAST_NAMES));
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + BATCH - 1).min(rows);
        let batch = Instant::now();
        sqlx::query(GENERATE)
            .bind(lo)
            .bind(hi)
            .bind(&words)
            .bind(&first)
            .bind(&last)
            .execute(&pool)
            .await
            .expect("generate a batch");
        eprintln!(
            "data: {hi}/{rows} voicemails ({:.1} s for this batch, {:.0} s in all)",
            batch.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    // ~50 rows get the real MP3 (their files are written by `audio_files`).
    let audio = std::fs::read(&paths.fixture).expect("the fixture");
    sqlx::query(
        "UPDATE voicemails SET size_bytes = $1, sha256 = $2, codec = 'mp3', \
         content_type = 'audio/mpeg' WHERE id IN \
         (SELECT id FROM voicemails ORDER BY md5(id::text) LIMIT $3)",
    )
    .bind(audio.len() as i64)
    .bind(hex::encode(Sha256::digest(&audio)))
    .bind(AUDIO_ROWS)
    .execute(&pool)
    .await
    .unwrap();
    eprintln!("data: VACUUM ANALYZE");
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE bench_api_marker (version integer NOT NULL, rows bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO bench_api_marker VALUES ($1, $2)")
        .bind(GENERATOR_VERSION)
        .bind(rows)
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "data: {rows} voicemails generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    pool
}

/// The rows backed by the real MP3, their files written if missing: their ids.
async fn audio_files(paths: &Paths, pool: &sqlx::PgPool) -> Vec<String> {
    let audio = std::fs::read(&paths.fixture).expect("the fixture");
    let rows = sqlx::query("SELECT id::text, storage_key FROM voicemails WHERE sha256 = $1")
        .bind(hex::encode(Sha256::digest(&audio)))
        .fetch_all(pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for row in rows {
        let key: String = row.get("storage_key");
        let path = paths.storage.join("voicemails").join(&key);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(audio.len() as u64) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &audio).unwrap();
        }
        ids.push(row.get("id"));
    }
    assert!(!ids.is_empty(), "no voicemail has the real audio");
    ids
}

/// Percent-encodes a query-string value.
fn enc(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The api process, killed when dropped.
struct Api {
    child: tokio::process::Child,
    base: String,
}

impl Api {
    async fn start(paths: &Paths) -> Self {
        let port = free_port();
        let child = tokio::process::Command::new(&paths.api)
            .env("VMPIPE_DATABASE_URL", database_url())
            .env("VMPIPE_STORAGE_DIR", &paths.storage)
            .env("VMPIPE_API_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start api");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "api not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("api running")
    }
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    List,
    Audio,
    Range,
}

struct Scenario {
    name: String,
    kind: Kind,
    /// List: the query string; audio: unused.
    query: String,
    token: String,
    /// The account-scoped token's account (for `api explain --accounts`, and to check items).
    account: Option<String>,
    /// Whether the data holds voicemails this scenario must find (a rare word may be in none
    /// of a small data set's transcripts).
    rows_exist: bool,
}

#[derive(Default)]
struct Stats {
    /// Sorted, in ms.
    ms: Vec<f64>,
    per_second: f64,
}

impl Stats {
    fn at(&self, q: f64) -> f64 {
        let i = ((self.ms.len() as f64 * q).ceil() as usize).clamp(1, self.ms.len()) - 1;
        self.ms[i]
    }
    fn max(&self) -> f64 {
        self.ms.last().copied().unwrap_or(0.0)
    }
}

/// One request of `scenario` (the `n`th): its time in ms (list: to the whole body; audio: to
/// the headers and first body chunk), having checked the answer.
async fn one(client: &reqwest::Client, base: &str, s: &Scenario, ids: &[String], n: usize) -> f64 {
    let url = match s.kind {
        Kind::List => format!("{base}/api/v1/voicemails?{}", s.query),
        Kind::Audio | Kind::Range => {
            format!("{base}/api/v1/voicemails/{}/audio", ids[n % ids.len()])
        }
    };
    let mut request = client.get(&url).bearer_auth(&s.token);
    if s.kind == Kind::Range {
        request = request.header("range", "bytes=1000-1999");
    }
    let sent = Instant::now();
    let mut response = request.send().await.expect("api answers");
    match s.kind {
        Kind::List => {
            let status = response.status();
            let body = response.bytes().await.expect("a body");
            let took = sent.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(
                status,
                200,
                "{}: {url}: {}",
                s.name,
                String::from_utf8_lossy(&body)
            );
            let page: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", s.name));
            let items = page["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no items array", s.name));
            assert!(
                !items.is_empty() || !s.rows_exist,
                "{}: no voicemails: {url}",
                s.name
            );
            if let Some(account) = &s.account {
                assert!(
                    items.iter().all(|i| i["account_id"] == account.as_str()),
                    "{}: another account's voicemail",
                    s.name
                );
            }
            took
        }
        Kind::Audio | Kind::Range => {
            let expect = if s.kind == Kind::Range { 206 } else { 200 };
            assert_eq!(response.status(), expect, "{}: {url}", s.name);
            let first = response.chunk().await.expect("a body");
            let took = sent.elapsed().as_secs_f64() * 1000.0;
            let mut length = first.map_or(0, |c| c.len());
            while let Some(chunk) = response.chunk().await.expect("the body") {
                length += chunk.len();
            }
            if s.kind == Kind::Range {
                assert_eq!(length, 1000, "{}: range length", s.name);
            } else {
                assert!(length > 1000, "{}: body of {length} bytes", s.name);
            }
            took
        }
    }
}

/// `requests` requests of `scenario` at `concurrency`.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    scenario: &Arc<Scenario>,
    ids: &Arc<Vec<String>>,
    requests: usize,
    concurrency: usize,
    seconds: f64,
) -> Stats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, s, ids, next) = (
                client.clone(),
                base.to_owned(),
                scenario.clone(),
                ids.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut ms = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests || Instant::now() >= deadline {
                        break ms;
                    }
                    ms.push(one(&client, &base, &s, &ids, n).await);
                }
            })
        })
        .collect();
    let mut ms = Vec::with_capacity(requests);
    for task in tasks {
        ms.extend(task.await.expect("a request failed"));
    }
    let per_second = ms.len() as f64 / started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    Stats { ms, per_second }
}

/// Execution time (ms, summed over the plan's queries), indexes used and whether voicemails or transcriptions were read by a
/// sequential scan, from an EXPLAIN ANALYZE plan.
fn read_plan(plan: &str) -> (Option<f64>, Vec<String>, bool) {
    // The api may run several queries for one page (`-- query 1 of at most N`): their sum.
    let times: Vec<f64> = plan
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("Execution Time:")?
                .trim()
                .trim_end_matches("ms")
                .trim()
                .parse()
                .ok()
        })
        .collect();
    let execution = (!times.is_empty()).then(|| times.iter().sum());
    let mut indexes: Vec<String> = Vec::new();
    for line in plan.lines() {
        for marker in [
            "Index Scan using ",
            "Index Scan Backward using ",
            "Index Only Scan using ",
            "Index Only Scan Backward using ",
            "Bitmap Index Scan on ",
        ] {
            if let Some((_, rest)) = line.split_once(marker)
                && let Some(name) = rest.split_whitespace().next()
                && !indexes.iter().any(|i| i == name)
            {
                indexes.push(name.to_owned());
            }
        }
    }
    let seq = plan
        .lines()
        .any(|l| l.contains("Seq Scan on voicemails") || l.contains("Seq Scan on transcriptions"));
    (execution, indexes, seq)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let max_seconds: f64 = std::env::var("BENCH_MAX_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30.0);
    let bench_started = Instant::now();
    let paths = Paths::new();
    std::fs::create_dir_all(&paths.storage).unwrap();
    let pool = prepare(&paths, rows).await;
    let ids = Arc::new(audio_files(&paths, &pool).await);

    // What the scenarios ask for, from the data.
    let (biggest, biggest_rows): (String, i64) = sqlx::query_as(
        "SELECT account_id, count(*) FROM voicemails GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (big_mailbox, big_mailbox_rows): (String, i64) = sqlx::query_as(
        "SELECT to_user, count(*) FROM voicemails WHERE account_id = $1 GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    .bind(&biggest)
    .fetch_one(&pool)
    .await
    .unwrap();
    // A typical mailbox: the median one by size.
    let (small_mailbox, small_mailbox_rows): (String, i64) = sqlx::query_as(
        "SELECT to_user, n FROM (SELECT to_user, count(*) AS n FROM voicemails GROUP BY 1) m \
         ORDER BY n, to_user OFFSET (SELECT count(DISTINCT to_user) / 2 FROM voicemails) LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (number, number_rows): (String, i64) = sqlx::query_as(
        "SELECT caller_id_number, (SELECT count(*) FROM voicemails w \
           WHERE w.caller_id_number = v.caller_id_number) \
         FROM voicemails v ORDER BY coalesce(recorded_at, received_at) DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let until = (Utc::now() - chrono::Duration::days(30))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let since = until - chrono::Duration::days(1);
    let rfc = |t: chrono::DateTime<Utc>| enc(&t.to_rfc3339_opts(SecondsFormat::Secs, true));
    println!(
        "biggest account {biggest}: {biggest_rows} of {rows} voicemails; mailbox {big_mailbox} \
         ({big_mailbox_rows}), median mailbox {small_mailbox} ({small_mailbox_rows}); caller \
         {number} ({number_rows}); {} audio files",
        ids.len()
    );

    sqlx::query("DELETE FROM api_tokens")
        .execute(&pool)
        .await
        .unwrap();
    let all = api_command(
        &paths,
        &["token", "create", "--name", "bench-all", "--all-accounts"],
    )
    .trim()
    .to_owned();
    let scoped = api_command(
        &paths,
        &[
            "token",
            "create",
            "--name",
            "bench-biggest",
            "--accounts",
            &biggest,
        ],
    )
    .trim()
    .to_owned();

    let api = Api::start(&paths).await;
    let (rss_start, hwm_start) = memory(api.pid());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // Page 21: the cursor after 20 pages.
    let mut cursor = String::new();
    for _ in 0..20 {
        let url = format!(
            "{}/api/v1/voicemails?limit=50{}",
            api.base,
            if cursor.is_empty() {
                String::new()
            } else {
                format!("&cursor={}", enc(&cursor))
            }
        );
        let body = client
            .get(url)
            .bearer_auth(&all)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let page: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        cursor = page["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned();
    }

    let list = |name: &str, query: String, scoped_token: bool| Scenario {
        name: name.to_owned(),
        kind: Kind::List,
        query,
        token: (if scoped_token { &scoped } else { &all }).clone(),
        account: scoped_token.then(|| biggest.clone()),
        rows_exist: true,
    };
    let mut scenarios = vec![
        list("newest", "limit=50".into(), false),
        list(
            "page 21",
            format!("limit=50&cursor={}", enc(&cursor)),
            false,
        ),
        list("scoped token newest", "limit=50".into(), true),
        list("account_id=biggest", format!("account_id={biggest}"), false),
        list(
            "mailbox_number (big)",
            format!("mailbox_number={big_mailbox}"),
            false,
        ),
        list(
            "mailbox_number (median)",
            format!("mailbox_number={small_mailbox}"),
            false,
        ),
        list(
            "caller=full number",
            format!("caller={}", enc(&number)),
            false,
        ),
        list("caller=smith", "caller=smith".into(), false),
        list(
            "since/until 1 day",
            format!("since={}&until={}", rfc(since), rfc(until)),
            false,
        ),
        list("folder=saved", "folder=saved".into(), false),
        list("has_transcript=false", "has_transcript=false".into(), false),
        list("limit=200", "limit=200".into(), false),
        list("q=invoice", "q=invoice".into(), false),
        list("q=refund", "q=refund".into(), false),
        list("q=escalation", "q=escalation".into(), false),
        list("q=zebra", "q=zebra".into(), false),
        list("q=invoice scoped", "q=invoice".into(), true),
        list(
            "q=\"call back\"",
            format!("q={}", enc("\"call back\"")),
            false,
        ),
    ];
    for (name, kind) in [
        ("audio first byte", Kind::Audio),
        ("audio Range first byte", Kind::Range),
    ] {
        scenarios.push(Scenario {
            name: name.into(),
            kind,
            query: String::new(),
            token: all.clone(),
            account: None,
            rows_exist: true,
        });
    }
    for s in &mut scenarios {
        if let Some((_, q)) = s.query.split_once("q=") {
            let q = q.replace("%22", "\"").replace("%20", " ");
            s.rows_exist = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM transcriptions t JOIN voicemails v \
                 ON v.id = t.voicemail_id WHERE t.text_search @@ websearch_to_tsquery('english', $1) \
                 AND ($2::text IS NULL OR v.account_id = $2))",
            )
            .bind(&q)
            .bind(&s.account)
            .fetch_one(&pool)
            .await
            .unwrap();
            if !s.rows_exist {
                println!(
                    "(no transcript of this data matches {q}: {} may be empty)",
                    s.name
                );
            }
        }
    }
    let scenarios: Vec<Arc<Scenario>> = scenarios.into_iter().map(Arc::new).collect();

    println!(
        "\n{requests} requests per scenario and concurrency (n: fewer when {max_seconds} s ran \
         out), after {WARM_UP} warm-up requests (at most {WARM_UP_SECONDS} s); ms"
    );
    println!(
        "{:<24} | {:>2} | {:>4} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7}",
        "scenario", "c", "n", "p50", "p90", "p99", "max", "req/s"
    );
    let mut results: Vec<[Stats; 2]> = Vec::new();
    for s in &scenarios {
        drive(&client, &api.base, s, &ids, WARM_UP, 1, WARM_UP_SECONDS).await;
        let mut pair: [Stats; 2] = Default::default();
        for (slot, c) in CONCURRENCY.into_iter().enumerate() {
            let stats = drive(&client, &api.base, s, &ids, requests, c, max_seconds).await;
            println!(
                "{:<24} | {:>2} | {:>4} | {:>7.2} | {:>7.2} | {:>7.2} | {:>7.2} | {:>7.0}",
                s.name,
                c,
                stats.ms.len(),
                stats.at(0.50),
                stats.at(0.90),
                stats.at(0.99),
                stats.max(),
                stats.per_second
            );
            pair[slot] = stats;
        }
        results.push(pair);
    }
    let (rss_end, hwm_end) = memory(api.pid());
    println!(
        "\napi memory: after start VmRSS {rss_start:.1} MiB (VmHWM {hwm_start:.1} MiB); \
         after the load VmRSS {rss_end:.1} MiB (VmHWM {hwm_end:.1} MiB)"
    );

    // Plans.
    std::fs::create_dir_all(&paths.out).unwrap();
    let mut plans = String::new();
    let mut plan_notes: Vec<String> = Vec::new();
    println!(
        "\nplans (api explain; all in {}/plans.txt)",
        paths.out.display()
    );
    for s in &scenarios {
        if s.kind != Kind::List {
            plan_notes.push("-".into());
            continue;
        }
        let mut args = vec!["explain", s.query.as_str()];
        if let Some(account) = &s.account {
            args.extend(["--accounts", account.as_str()]);
        }
        let plan = api_command(&paths, &args);
        let _ = writeln!(plans, "=== {} ({})\n{plan}\n", s.name, s.query);
        let (execution, indexes, seq) = read_plan(&plan);
        let indexes = indexes.join(", ");
        println!(
            "{:<24} | {:>9} | {}{}",
            s.name,
            execution.map_or("?".into(), |e| format!("{e:.2} ms")),
            indexes,
            if seq { "  SEQ SCAN" } else { "" }
        );
        plan_notes.push(format!("{indexes}{}", if seq { " SEQ SCAN" } else { "" }));
    }
    std::fs::write(paths.out.join("plans.txt"), plans).unwrap();

    println!("\nsummary (ms)");
    println!(
        "{:<24} | {:>17} | {:>17} | {:>8} | indexes",
        "scenario", "c=1 p50 / p99", "c=8 p50 / p99", "req/s c=8"
    );
    for ((s, [one, eight]), note) in scenarios.iter().zip(&results).zip(&plan_notes) {
        println!(
            "{:<24} | {:>7.2} / {:>7.2} | {:>7.2} / {:>7.2} | {:>9.0} | {note}",
            s.name,
            one.at(0.5),
            one.at(0.99),
            eight.at(0.5),
            eight.at(0.99),
            eight.per_second
        );
    }
    let worst = |kinds: &[Kind]| {
        scenarios
            .iter()
            .zip(&results)
            .filter(|(s, _)| kinds.contains(&s.kind))
            .map(|(s, [one, _])| (s.name.clone(), one.at(0.99)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    };
    for (target, kinds, limit) in [
        (
            "list and full-text p99 < 50 ms (c=1)",
            &[Kind::List][..],
            LIST_TARGET_MS,
        ),
        (
            "audio first byte p99 < 20 ms (c=1)",
            &[Kind::Audio, Kind::Range][..],
            AUDIO_TARGET_MS,
        ),
    ] {
        let (name, p99) = worst(kinds);
        println!(
            "{target}: {} (worst: {name}, {p99:.2} ms)",
            if p99 < limit { "PASS" } else { "MISS" }
        );
    }
    println!(
        "bench run in {:.1} s",
        bench_started.elapsed().as_secs_f64()
    );
    drop(api);
    pool.close().await;
}
