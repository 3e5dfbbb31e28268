//! The booking load benchmark (issue 9): the real `issuer serve` (release
//! build, a fresh data directory, SQLite) on 127.0.0.1, driven by buyers in
//! this process over HTTP/1.1 keep-alive connections and WebSockets.
//!
//!     cargo bench -p issuer --bench booking [-- --buyers 2000 --seconds 10
//!         --hold-rate 5000 --phases saturation,holds,orders,browse,states,live]
//!
//! Each phase has an event of its own: 5,000 seats (5 sections of 20 rows
//! of 50) and 5,000 standing places. Phases, in this order:
//! 1. saturation: every buyer holds (the best 2 seats, or 2 standing places)
//!    and lets go, again and again at once; the most holds a second;
//! 2. holds: holds offered at a fixed rate, each buyer on its own schedule,
//!    latency counted from when each was due, after a warm-up;
//! 3. orders, end to end, until the event is sold out: hold, order, pay by
//!    the sandbox gateway's test card, signed tickets in the answer; then
//!    the oversell check (every seat sold once, sold = places in paid
//!    orders, never beyond capacity);
//! 4. browse and search at a fixed 1,000 requests a second (latency from
//!    when each request was due, so a slow server cannot hide its queue);
//! 5. the seat states of a 20,000-seat event, one client;
//! 6. live availability: 5,000 WebSocket watchers, and how long a seat
//!    change takes to reach each.
//!
//! The buyers share the machine's cores with the server: the figures are
//! the server's with a load generator beside it. `--host ADDR --data DIR`
//! drives a server already running (under a profiler, say) instead.
//! `--postgres "host=... user=..."` runs the server on a fresh PostgreSQL
//! database of that server instead of SQLite, and `--processes N` runs N
//! servers on it, buyers spread over them (issue 10).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The servers buyers are spread over (several processes on one
/// PostgreSQL database), round robin, with no stickiness.
#[derive(Clone)]
struct Hosts(Arc<Vec<String>>);

impl Hosts {
    fn of(&self, i: usize) -> &str {
        &self.0[i % self.0.len()]
    }
}

/// One keep-alive HTTP/1.1 connection, requests one at a time.
struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(host: &str) -> Conn {
        let stream = TcpStream::connect(host).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            host: host.to_owned(),
            buf: Vec::with_capacity(16 << 10),
        }
    }

    /// (status, body) of a request; a connection the server closed is
    /// opened again once.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Vec<u8>) {
        for _ in 0..2 {
            match self.try_call(method, path, headers, body).await {
                Ok(answer) => return answer,
                Err(_) => *self = Conn::open(&self.host.clone()).await,
            }
        }
        panic!("{method} {path}: the server did not answer");
    }

    async fn try_call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        let closed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(closed)?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + length {
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(closed());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, self.buf[end..end + length].to_vec()))
    }

    async fn json(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let body = body.map(|b| b.to_string());
        let (status, bytes) = self.call(method, path, &headers, body.as_deref()).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Latencies in microseconds, and what they come to.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1000.0
    }

    fn line(&mut self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            self.pct(0.50),
            self.pct(0.99),
            self.pct(1.0),
            self.0.len()
        )
    }
}

struct Server {
    child: std::process::Child,
    host: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `issuer serve` on data directory `data`, on `database` (PostgreSQL)
/// if given, else on the directory's SQLite.
fn start_server(data: &std::path::Path, database: Option<&str>) -> Server {
    use std::io::BufRead;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_issuer"));
    match database {
        Some(url) => command.env("ISSUER_DATABASE_URL", url),
        None => command.env_remove("ISSUER_DATABASE_URL"),
    };
    let mut child = command
        .arg("--data")
        .arg(data)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--buyer-rate",
            "0",
            "--max-held",
            "0",
            "--conns-per-address",
            "19000",
            "--max-conns",
            "19000",
            "--idle-seconds",
            "60",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("issuer serve");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("issuer serve stopped");
        }
    }
    let host = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|u| u.strip_suffix("/api/v1"))
        .unwrap()
        .to_owned();
    // Keep its stdout drained.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Server { child, host }
}

/// A venue of `sections` sections of 20 rows of 50 seats, and a standing
/// area of `standing`.
fn venue(name: &str, sections: usize, standing: u32) -> Value {
    let sections: Vec<Value> = (1..=sections)
        .map(|s| {
            let rows: Vec<Value> = (1..=20)
                .map(|r| {
                    json!({"label": r.to_string(), "seats": (1..=50)
                        .map(|n| json!({"label": n.to_string(), "x": n, "y": r}))
                        .collect::<Vec<_>>()})
                })
                .collect();
            json!({"id": format!("S{s}"), "name": format!("Section {s}"), "rows": rows})
        })
        .collect();
    json!({"name": name, "city": "Lyon", "address": "1 quai",
           "plan": {"sections": sections, "areas": [{"id": "floor", "name": "Floor", "capacity": standing}]}})
}

/// Makes an event at a new venue and puts it on sale: (event, seated
/// category, standing category).
async fn event_on_sale(
    c: &mut Conn,
    token: &str,
    sections: usize,
    standing: u32,
) -> (u64, u64, u64) {
    let (status, v) = c
        .json(
            "POST",
            "/api/v1/venues",
            Some(token),
            Some(&venue("Bench Hall", sections, standing)),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, e) = c
        .json(
            "POST",
            "/api/v1/events",
            Some(token),
            Some(
                &json!({"name": "Stampede", "genre": "concert", "venue_id": v["id"],
                "starts_at": 1_900_000_000u64, "ends_at": 1_900_007_200u64,
                "performers": ["The Band"], "description": "On sale now"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_u64().unwrap();
    let all: Vec<String> = (1..=sections).map(|s| format!("S{s}")).collect();
    let mut categories = Vec::new();
    for places in [
        json!({"kind": "seats", "sections": all}),
        json!({"kind": "quota", "area": "floor", "places": standing}),
    ] {
        let (status, c_) = c
            .json(
                "POST",
                &format!("/api/v1/events/{id}/categories"),
                Some(token),
                Some(&json!({"name": "Tickets", "price": 4500, "currency": "EUR",
                    "places": places, "sale_starts": 0, "sale_ends": 1_900_000_000u64,
                    "per_order": 10})),
            )
            .await;
        assert_eq!(status, 201, "{c_}");
        categories.push(c_["id"].as_u64().unwrap());
    }
    let (status, _) = c
        .json(
            "POST",
            &format!("/api/v1/events/{id}/status"),
            Some(token),
            Some(&json!({"status": "on_sale"})),
        )
        .await;
    assert_eq!(status, 200);
    (id, categories[0], categories[1])
}

fn hold_body(event: u64, seated: u64, standing: u64, i: u64) -> Value {
    if i.is_multiple_of(2) {
        json!({"event_id": event, "items": [{"kind": "best", "category_id": seated, "quantity": 2}]})
    } else {
        json!({"event_id": event, "items": [{"kind": "quantity", "category_id": standing, "quantity": 2}]})
    }
}

/// Phase 1a: hold and let go as fast as the server answers, for
/// `seconds`: the most it makes, every buyer asking again at once.
async fn holds(hosts: &Hosts, buyers: usize, seconds: u64, event: (u64, u64, u64)) {
    let stop = Arc::new(AtomicBool::new(false));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for b in 0..buyers {
        let (hosts, stop, conflicts) = (hosts.clone(), stop.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(hosts.of(b)).await;
            let mut lat = Latencies::default();
            let mut i = b as u64;
            while !stop.load(Ordering::Relaxed) {
                let body = hold_body(event.0, event.1, event.2, i);
                i += 1;
                let t = Instant::now();
                let (status, h) = c.json("POST", "/api/v1/holds", None, Some(&body)).await;
                match status {
                    201 => {
                        lat.add(t.elapsed());
                        let token = h["token"].as_str().unwrap();
                        c.call("DELETE", &format!("/api/v1/holds/{token}"), &[], None)
                            .await;
                    }
                    409 => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("hold: {other} {h}"),
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "holds at saturation ({buyers} buyers, each holding then letting go at once): {:.0} holds/s (and as many releases); \
         {} refused as taken; hold {}",
        all.0.len() as f64 / took,
        conflicts.load(Ordering::Relaxed),
        all.line()
    );
}

/// Seconds of holds at the offered rate before they are counted.
const WARM_UP: u64 = 2;

/// Phase 1b: holds offered at a fixed `rate` a second by `buyers` buyers
/// (each holds, then lets go, on its own schedule), for `seconds`; the
/// latency of each hold counts from when it was due, so a server that
/// falls behind cannot hide its queue.
async fn holds_at(hosts: &Hosts, buyers: usize, rate: u64, seconds: u64, event: (u64, u64, u64)) {
    let conflicts = Arc::new(AtomicU64::new(0));
    let every = Duration::from_secs_f64(buyers as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let n = ((seconds + WARM_UP) * rate / buyers as u64).max(1) as u32;
    let counted_from = start + Duration::from_secs(WARM_UP);
    let mut tasks = Vec::new();
    for b in 0..buyers {
        let (hosts, conflicts) = (hosts.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(hosts.of(b)).await;
            let (mut hold, mut release) = (Latencies::default(), Latencies::default());
            let mut slowest: Vec<u64> = Vec::new();
            let first = start + every.mul_f64(b as f64 / buyers as f64);
            for i in 0..n {
                let due = first + every * i;
                tokio::time::sleep_until(due).await;
                let body = hold_body(event.0, event.1, event.2, b as u64 + u64::from(i));
                let (status, h) = c.json("POST", "/api/v1/holds", None, Some(&body)).await;
                match status {
                    201 => {
                        // The first seconds warm up (connections, threads,
                        // caches) and are not counted.
                        if due >= counted_from {
                            hold.add(due.elapsed());
                        }
                        let second = (due - start).as_secs_f64() as usize;
                        if slowest.len() <= second {
                            slowest.resize(second + 1, 0);
                        }
                        slowest[second] = slowest[second].max(due.elapsed().as_millis() as u64);
                        let token = h["token"].as_str().unwrap();
                        let t = Instant::now();
                        let (status, _) = c
                            .call("DELETE", &format!("/api/v1/holds/{token}"), &[], None)
                            .await;
                        assert_eq!(status, 200);
                        if due >= counted_from {
                            release.add(t.elapsed());
                        }
                    }
                    409 => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("hold: {other} {h}"),
                }
            }
            (hold, release, slowest)
        }));
    }
    let (mut hold, mut release) = (Latencies::default(), Latencies::default());
    let mut slowest: Vec<u64> = Vec::new();
    for t in tasks {
        let (h, r, s) = t.await.unwrap();
        hold.merge(h);
        release.merge(r);
        if slowest.len() < s.len() {
            slowest.resize(s.len(), 0);
        }
        for (a, b) in slowest.iter_mut().zip(s) {
            *a = (*a).max(b);
        }
    }
    let took = (tokio::time::Instant::now() - counted_from).as_secs_f64();
    println!(
        "holds offered at {rate}/s ({buyers} buyers, each holding then letting go every {:.0} ms; {WARM_UP} s of warm-up not counted): \
         {:.0} holds/s made (and as many releases); {} refused as taken; \
         hold (from when due) {}; release {}",
        every.as_secs_f64() * 1000.0,
        hold.0.len() as f64 / took,
        conflicts.load(Ordering::Relaxed),
        hold.line(),
        release.line()
    );
    println!("  slowest hold due in each second (ms): {slowest:?}");
}

/// Phase 2: hold, order and pay until sold out; then the oversell check.
async fn orders(hosts: &Hosts, buyers: usize, event: (u64, u64, u64)) {
    let mut tasks = Vec::new();
    for b in 0..buyers {
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(hosts.of(b)).await;
            let mut lat = Latencies::default();
            let mut mine: Vec<(u64, Option<String>)> = Vec::new();
            let mut charged = 0u64;
            let mut i = b as u64;
            let mut misses = 0;
            let mut last_sale = None;
            // A buyer gives up after both kinds were refused three times
            // in a row: sold out, or as good as.
            while misses < 6 {
                let body = hold_body(event.0, event.1, event.2, i);
                i += 1;
                let t = Instant::now();
                let (status, h) = c.json("POST", "/api/v1/holds", None, Some(&body)).await;
                if status == 409 {
                    // This kind is gone; the other may not be.
                    misses += 1;
                    continue;
                }
                assert_eq!(status, 201, "{h}");
                misses = 0;
                let order = json!({"hold_token": h["token"], "email": "ana@example.org",
                    "name": "Ana", "payment_method": "pm_card_visa"});
                let key = format!("bench-{b}-{i}");
                let (status, bytes) = c
                    .call(
                        "POST",
                        "/api/v1/orders",
                        &[("idempotency-key", &key)],
                        Some(&order.to_string()),
                    )
                    .await;
                let o: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                assert_eq!((status, o["state"].as_str()), (201, Some("paid")), "{o}");
                lat.add(t.elapsed());
                last_sale = Some(Instant::now());
                let tickets = o["tickets"].as_array().unwrap();
                assert_eq!(tickets.len(), o["places"].as_array().unwrap().len());
                charged += o["amount"].as_u64().unwrap();
                for p in o["places"].as_array().unwrap() {
                    mine.push((
                        p["category_id"].as_u64().unwrap(),
                        p["seat"].as_str().map(str::to_owned),
                    ));
                }
            }
            (lat, mine, charged, last_sale)
        }));
    }
    let start = Instant::now();
    let (mut all, mut places, mut charged) = (Latencies::default(), Vec::new(), 0);
    let mut last_sale = start;
    for t in tasks {
        let (lat, mine, c, last) = t.await.unwrap();
        all.merge(lat);
        places.extend(mine);
        charged += c;
        last_sale = last_sale.max(last.unwrap_or(start));
    }
    let took = start.elapsed().as_secs_f64();
    let selling = (last_sale - start).as_secs_f64();
    // The oversell check, against what the server says now.
    let mut c = Conn::open(hosts.of(0)).await;
    let (_, t) = c
        .json(
            "GET",
            &format!("/api/v1/events/{}/tickets", event.0),
            None,
            None,
        )
        .await;
    let seats: Vec<&String> = places.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let unique: HashSet<&&String> = seats.iter().collect();
    assert_eq!(unique.len(), seats.len(), "a seat sold twice");
    let mut sold_total = 0;
    for cat in t["categories"].as_array().unwrap() {
        let (id, sold, capacity) = (
            cat["category_id"].as_u64().unwrap(),
            cat["sold"].as_u64().unwrap(),
            cat["capacity"].as_u64().unwrap(),
        );
        let answered = places.iter().filter(|(c, _)| *c == id).count() as u64;
        assert!(sold <= capacity, "oversold: {sold} of {capacity}");
        assert_eq!(sold, answered, "sold as the buyers were answered");
        sold_total += sold;
    }
    println!(
        "orders end to end ({buyers} buyers until sold out: hold, order, sandbox card payment, signed tickets): \
         {:.0} paid orders/s ({} orders, {} places sold of 10000, the last {:.1} s after the first request; \
         {:.1} s until every buyer had been refused 6 times running); hold+order {}",
        all.0.len() as f64 / selling,
        all.0.len(),
        sold_total,
        selling,
        took,
        all.line()
    );
    println!(
        "oversell check: every seat sold once ({} seats), sold = places of paid orders, none beyond capacity; \
         charged {} = {} places x 45.00 EUR",
        seats.len(),
        charged,
        sold_total
    );
    assert_eq!(charged, sold_total * 4500, "every charge is a paid order's");
}

/// Phase 3: browse and search at `rate` requests a second for `seconds`.
async fn browse(hosts: &Hosts, rate: u64, seconds: u64, event: u64) {
    let paths = [
        "/api/v1/events?genre=concert".to_owned(),
        "/api/v1/events?city=lyon&limit=20".to_owned(),
        "/api/v1/search?query=daft".to_owned(),
        "/api/v1/search?query=ber".to_owned(),
        format!("/api/v1/events/{event}"),
        "/api/v1/events/1".to_owned(),
    ];
    let clients = 50u64;
    let every = Duration::from_secs_f64(clients as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (hosts, paths) = (hosts.clone(), paths.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(hosts.of(k as usize)).await;
            let mut lat = Latencies::default();
            let first = start + every.mul_f64(k as f64 / clients as f64);
            let n = (seconds * rate / clients) as u32;
            for i in 0..n {
                let due = first + every * i;
                tokio::time::sleep_until(due).await;
                let path = &paths[(k as usize + i as usize) % paths.len()];
                let (status, _) = c.call("GET", path, &[], None).await;
                assert_eq!(status, 200, "{path}");
                lat.add(due.elapsed());
            }
            lat
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    let took = (tokio::time::Instant::now() - start).as_secs_f64();
    println!(
        "browse and search at {rate} requests/s (50 connections, latency from when each was due): \
         {:.0} requests/s served, {}",
        all.0.len() as f64 / took,
        all.line()
    );
}

/// Phase 4: the seat states of a big event, one client.
async fn seat_states(hosts: &Hosts, token: &str) {
    let mut c = Conn::open(hosts.of(0)).await;
    let (event, _, _) = event_on_sale(&mut c, token, 20, 1000).await;
    let path = format!("/api/v1/events/{event}/tickets");
    let mut lat = Latencies::default();
    let mut size = 0;
    for i in 0..60 {
        let t = Instant::now();
        let (status, body) = c.call("GET", &path, &[], None).await;
        assert_eq!(status, 200);
        if i >= 10 {
            lat.add(t.elapsed());
        }
        size = body.len();
    }
    println!(
        "seat states of a 20,000-seat event ({} KiB of JSON, one client, after 10 warm-up requests): {}",
        size / 1024,
        lat.line()
    );
}

/// Phase 5: `watchers` WebSocket watchers; `changes` seat changes, each
/// timed from the moment its hold was sent to its arrival at each watcher.
async fn live(hosts: &Hosts, token: &str, watchers: usize, changes: usize) {
    // Changes made through the first process; watchers on every one.
    let mut c = Conn::open(hosts.of(0)).await;
    let (event, _, _) = event_on_sale(&mut c, token, 5, 100).await;
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; changes + 1]));
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let url = format!("ws://{}/api/v1/events/{event}/live", hosts.of(w));
        let (sent, ready) = (sent.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
            let first = ws.next().await.unwrap().unwrap();
            assert!(first.to_text().unwrap().contains("snapshot"));
            ready.wait().await;
            let mut lat = Latencies::default();
            while lat.0.len() < changes {
                let msg = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(m))) => m,
                    _ => break,
                };
                let Ok(text) = msg.to_text() else { continue };
                let arrived = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if v["type"] != "change" {
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap() as usize;
                let at = sent.lock().unwrap().get(seq).copied().flatten();
                if let Some(at) = at {
                    lat.add(arrived - at);
                }
            }
            lat
        }));
    }
    ready.wait().await;
    for i in 1..=changes {
        let row = 1 + (i - 1) / 50;
        let seat = 1 + (i - 1) % 50;
        let body = json!({"event_id": event, "items": [{"kind": "seats", "seats": [format!("S1-{row}-{seat}")]}]});
        sent.lock().unwrap()[i] = Some(Instant::now());
        let (status, h) = c.json("POST", "/api/v1/holds", None, Some(&body)).await;
        assert_eq!(status, 201, "{h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    assert_eq!(
        all.0.len(),
        watchers * changes,
        "every watcher heard every change"
    );
    println!(
        "live availability: {watchers} WebSocket watchers, {changes} seat changes (one each 200 ms); \
         from the hold's request to each watcher: {}",
        all.line()
    );
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A text argument: `--phases holds,orders`, `--host 127.0.0.1:8080`.
fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let buyers = arg("--buyers", 2000) as usize;
    let seconds = arg("--seconds", 10);
    let watchers = arg("--watchers", 5000) as usize;
    let hold_rate = arg("--hold-rate", 5000);
    let phases =
        text_arg("--phases").unwrap_or_else(|| "saturation,holds,orders,browse,states,live".into());
    let run = |p: &str| phases.split(',').any(|q| q == p);
    let tmp = tempfile::tempdir().unwrap();
    // On PostgreSQL (`--postgres "host=... user=..."`, a server whose user
    // may make databases): a fresh database, and `--processes` servers on
    // it, buyers spread over them.
    let processes = arg("--processes", 1).max(1) as usize;
    let database = text_arg("--postgres").map(|base| {
        let name = format!("bench_{}", std::process::id());
        issuer::storage::postgres::admin(
            &format!("{base} dbname=postgres"),
            &format!("CREATE DATABASE {name}"),
        )
        .expect("making the benchmark's database");
        format!("{base} dbname={name}")
    });
    // A server already running (`--host`, with its `--data` for the
    // organizer's token), say under a profiler; else our own.
    let (servers, data) = match text_arg("--host") {
        Some(_) => (
            Vec::new(),
            std::path::PathBuf::from(text_arg("--data").expect("--data with --host")),
        ),
        None => {
            let data = tmp.path().join("data");
            // The first sets the shop up; the others find it.
            let mut servers = vec![start_server(&data, database.as_deref())];
            for _ in 1..processes {
                servers.push(start_server(&data, database.as_deref()));
            }
            (servers, data)
        }
    };
    let hosts = Hosts(Arc::new(match text_arg("--host") {
        Some(host) => host.split(',').map(str::to_owned).collect(),
        None => servers.iter().map(|s| s.host.clone()).collect(),
    }));
    let host = hosts.of(0).to_owned();
    let token = std::fs::read_to_string(data.join("demo-organizer.token"))
        .unwrap()
        .trim()
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut c = Conn::open(&host).await;
        println!(
            "issuer serve (release, {}, fresh) x {} on {}; events of 5,000 seats and \
             5,000 standing places; {buyers} buyers",
            if database.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            hosts.0.len(),
            hosts.0.join(", ")
        );
        if run("saturation") {
            let first = event_on_sale(&mut c, &token, 5, 5000).await;
            holds(&hosts, buyers, seconds, first).await;
        }
        if run("holds") {
            let first = event_on_sale(&mut c, &token, 5, 5000).await;
            holds_at(&hosts, buyers, hold_rate, seconds, first).await;
        }
        let second = event_on_sale(&mut c, &token, 5, 5000).await;
        if run("orders") {
            orders(&hosts, buyers, second).await;
        }
        if run("browse") {
            browse(&hosts, 1000, seconds, second.0).await;
        }
        if run("states") {
            seat_states(&hosts, &token).await;
        }
        if run("live") {
            live(&hosts, &token, watchers, 20).await;
        }
    });
    drop(servers);
    if let (Some(base), Some(url)) = (text_arg("--postgres"), database) {
        let name = url.rsplit("dbname=").next().unwrap_or_default();
        let _ = issuer::storage::postgres::admin(
            &format!("{base} dbname=postgres"),
            &format!("DROP DATABASE IF EXISTS {name}"),
        );
    }
}
