//! Shared test harness: a real tickwire node on 127.0.0.1:0 (in-process, or
//! as a child process where the test is about the process), real
//! WebSocket clients, real HTTP. Every wait is bounded.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tickwire::config::{Config, Overrides, RawConfig};
use tickwire::node::Node;
use tickwire::server;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const API_KEY: &str = "integration-test-api-key";

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// Polls `check` every 10 ms until it yields a value, for at most
/// [`WAIT`]; panics naming `what` when it never does. The one wait loop of
/// the tests: for what happens eventually but announces nothing.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A node reached over the network: its address and an HTTP client.
pub struct Api {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// An in-process node.
pub struct TestServer {
    pub api: Api,
    pub node: Arc<Node>,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.node.shutdown.trigger();
        self.node.fanout.stop();
    }
}

pub fn overrides() -> Overrides {
    Overrides {
        listen: Some("127.0.0.1:0".into()),
        jwt_secret: Some(SECRET.into()),
        api_keys: Some(vec![API_KEY.into()]),
        ..Default::default()
    }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Starts a node with the test defaults, adjusted by `tune`.
pub async fn start_with(tune: impl FnOnce(&mut Overrides)) -> TestServer {
    let mut o = overrides();
    tune(&mut o);
    let config = Config::from_raw(RawConfig::default(), &o).expect("test config is valid");
    let running = server::start(config).await.expect("bind 127.0.0.1:0");
    TestServer {
        api: Api {
            addr: running.addr,
            http: reqwest::Client::new(),
        },
        node: running.node,
    }
}

pub fn token(sub: &str) -> String {
    token_with(sub, None, Duration::from_secs(3600))
}

pub fn token_with(sub: &str, symbols: Option<&[&str]>, ttl: Duration) -> String {
    let symbols: Option<Vec<String>> = symbols.map(|s| s.iter().map(|x| x.to_string()).collect());
    tickwire::auth::mint(
        SECRET.as_bytes(),
        sub,
        symbols.as_deref(),
        SystemTime::now() + ttl,
    )
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects to `/ws/{endpoint}/` as `user`.
    pub async fn connect(&self, endpoint: &str, user: &str) -> Client {
        self.connect_token(endpoint, &token(user)).await
    }

    pub async fn connect_token(&self, endpoint: &str, token: &str) -> Client {
        let url = format!("ws://{}/ws/{}/?token={}", self.addr, endpoint, token);
        self.connect_url(&url).await.expect("handshake accepted")
    }

    pub async fn connect_url(&self, url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        self.connect_request(url.into_client_request()?).await
    }

    pub async fn connect_request(
        &self,
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake within the wait")?;
        Ok(Client { ws })
    }

    /// Connects a notifications client and takes its `unread_notifications`.
    pub async fn notifications(&self, user: &str) -> (Client, Value) {
        let mut c = self.connect("notifications", user).await;
        let unread = c.recv_type("unread_notifications").await;
        (c, unread)
    }

    /// A market-data client subscribed to `symbols` (answer consumed).
    pub async fn market(&self, user: &str, symbols: &[&str]) -> Client {
        let mut c = self.connect("market-data", user).await;
        c.send(json!({"type": "subscribe", "symbols": symbols})).await;
        c.recv_type("subscribed").await;
        c
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.publish_raw(body.to_string(), API_KEY).await
    }

    /// A market-data client on `symbols` whose socket asked the kernel for
    /// a tiny receive buffer: as soon as it stops reading, the server's
    /// writes to it stall.
    pub async fn tiny_buffer_market(&self, user: &str, symbols: &[&str]) -> Client {
        self.tiny_buffer_market_token(&token(user), symbols).await
    }

    /// [`Api::tiny_buffer_market`] with a given token.
    pub async fn tiny_buffer_market_token(&self, token: &str, symbols: &[&str]) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let req = format!("ws://{}/ws/market-data/?token={}", self.addr, token)
            .into_client_request()
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake accepted");
        let mut c = Client { ws };
        c.send(json!({"type": "subscribe", "symbols": symbols})).await;
        c.recv_type("subscribed").await;
        c
    }

    /// Publishes and insists every entry was accepted.
    pub async fn publish_ok(&self, body: Value) {
        let (status, answer) = self.publish(body).await;
        assert_eq!(status, 202, "publish refused: {answer}");
    }

    pub async fn publish_raw(&self, body: String, key: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/api/publish"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("publish request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn stats(&self) -> Value {
        self.get_json("/api/stats").await.1
    }
}

pub fn market_update(symbol: &str, price: f64) -> Value {
    json!({"type": "market_update", "symbol": symbol, "price": price, "change": 0.5, "volume": 1000})
}

pub fn new_signal(id: &str, symbol: &str, signal_type: &str) -> Value {
    json!({"type": "new_signal", "signal_id": id, "symbol": symbol, "signal_type": signal_type,
           "strength": "STRONG", "confidence_score": 85, "entry_price": 45000.0,
           "target_price": 50000.0, "stop_loss": 42000.0})
}

pub fn notification(user: &str, id: &str) -> Value {
    json!({"type": "new_notification", "user_id": user, "notification_id": id, "title": "Trade Executed",
           "message": "BUY 100 BTC-USD @ $45000", "notification_type": "trade", "priority": "high"})
}

/// A WebSocket client speaking JSON.
pub struct Client {
    pub ws: Ws,
}

/// What a client saw when its connection ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: String) {
        self.ws.send(Message::Text(s.into())).await.expect("send");
    }

    /// The next JSON message; panics after [`WAIT`] or on a close.
    pub async fn recv(&mut self) -> Value {
        match self.recv_within(WAIT).await {
            Some(v) => v,
            None => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next JSON message, or `None` if none comes within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(f))) => panic!("closed while waiting for a message: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error while waiting for a message: {e}"),
                None => panic!("connection ended while waiting for a message"),
            }
        }
    }

    /// Skips messages until one of `type`; panics on timeout.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(v) if v["type"] == kind => return v,
                Some(_) => continue,
                None => panic!("no `{kind}` within {WAIT:?}"),
            }
        }
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(v) = self.recv_within(QUIET).await {
            panic!("expected no message, got {v}");
        }
    }

    /// Reads until the connection ends; returns the close frame seen.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection still open after {WAIT:?}"),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Closed {
                        code: f.as_ref().map(|f| u16::from(f.code)),
                        reason: f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    }
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => {
                    return Closed {
                        code: None,
                        reason: String::new(),
                    }
                }
            }
        }
    }
}

pub fn close_code(c: u16) -> CloseCode {
    CloseCode::from(c)
}

/// Collects `n` messages of `type` into their `seq`s.
pub async fn seqs(c: &mut Client, kind: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = c.recv_type(kind).await;
        out.push(v["seq"].as_u64().expect("every update carries seq"));
    }
    out
}

/// Asserts `seqs` are consecutive, starting at `first`.
pub fn assert_consecutive(seqs: &[u64], first: u64) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            *s,
            first + i as u64,
            "gap, duplicate or reorder at index {i}: {seqs:?}"
        );
    }
}

/// A real `redis-server` on a spare loopback port, with no persistence,
/// stopped (by its PID) when dropped.
pub struct Redis {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Redis {
        let port = spare_port();
        let dir = std::env::temp_dir().join(format!("tickwire-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Redis::spawn(port, &dir, &extra);
        let r = Redis {
            port,
            child,
            dir,
            extra,
        };
        r.wait_up();
        r
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)")
    }

    fn wait_up(&self) {
        for _ in 0..200 {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Redis::spawn(self.port, &self.dir, &self.extra);
        self.wait_up();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tickwire node as a child process, killed (by its PID) when dropped.
pub struct NodeProc {
    pub api: Api,
    child: std::process::Child,
    /// Lines the node printed, for diagnostics.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Its working directory: no config file of the repository is read.
    _dir: Scratch,
}

impl std::ops::Deref for NodeProc {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl NodeProc {
    /// Starts `tickwire` with the test secret and key, on a free port.
    pub fn start(extra: &[&str]) -> NodeProc {
        use std::io::BufRead;
        let dir = Scratch::new();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
        ];
        args.extend_from_slice(extra);
        let mut child = tickwire(&dir.0, &args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tickwire");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(at) = line.find("listening on ") {
                        let addr: String = line[at + 13..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx.recv_timeout(WAIT).expect("tickwire printed `listening on`");
        NodeProc {
            api: Api {
                addr: addr.parse().unwrap(),
                http: reqwest::Client::new(),
            },
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the node dies without closing anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Api {
    /// Waits until `/ready` answers `want` (200 or 503).
    pub async fn wait_ready(&self, want: u16) {
        for _ in 0..400 {
            if let Ok(r) = self.http.get(self.url("/ready")).send().await {
                if r.status().as_u16() == want {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never answered /ready with {want}", self.addr);
    }
}

/// What a cluster test needs of Redis: one server or a Redis Cluster.
pub trait Backend: Sized {
    fn start() -> Self;
    fn url(&self) -> String;
    /// `redis-cli` against (the first node of) the backend.
    fn cli(&self, args: &[&str]) -> String;
    /// `redis-cli` against every server of the backend.
    fn cli_all(&self, args: &[&str]) -> Vec<String>;
    fn stop(&mut self);
    /// Stops everything and starts it again, empty.
    fn restart(&mut self);
    /// How many connections listen to `channel` (sharded pub/sub in a cluster).
    fn listeners(&self, channel: &str) -> u32;
}

fn second_line_number(out: &str) -> u32 {
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

impl Backend for Redis {
    fn start() -> Self {
        Redis::start()
    }
    fn url(&self) -> String {
        Redis::url(self)
    }
    fn cli(&self, args: &[&str]) -> String {
        Redis::cli(self, args)
    }
    fn cli_all(&self, args: &[&str]) -> Vec<String> {
        vec![Redis::cli(self, args)]
    }
    fn stop(&mut self) {
        Redis::stop(self)
    }
    fn restart(&mut self) {
        Redis::restart(self)
    }
    fn listeners(&self, channel: &str) -> u32 {
        second_line_number(&Redis::cli(self, &["PUBSUB", "NUMSUB", channel]))
    }
}

/// A Redis Cluster of three masters (no replicas) on spare loopback
/// ports, built with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    fn create(&self) {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..400 {
            if self
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the Redis Cluster never reached cluster_state:ok");
    }
}

impl Backend for RedisCluster {
    fn start() -> Self {
        let nodes = (0..3)
            .map(|_| {
                let bus = spare_port().to_string();
                let conf = format!("nodes-{}.conf", spare_port());
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    &conf,
                ])
            })
            .collect();
        let c = RedisCluster { nodes };
        c.create();
        c
    }
    fn url(&self) -> String {
        self.nodes[0].url()
    }
    fn cli(&self, args: &[&str]) -> String {
        self.nodes[0].cli(args)
    }
    fn cli_all(&self, args: &[&str]) -> Vec<String> {
        self.nodes.iter().map(|n| n.cli(args)).collect()
    }
    fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
    fn restart(&mut self) {
        for n in &mut self.nodes {
            n.stop();
            for entry in std::fs::read_dir(&n.dir).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for n in &mut self.nodes {
            n.child = Redis::spawn(n.port, &n.dir, &n.extra);
            n.wait_up();
        }
        self.create();
    }
    fn listeners(&self, channel: &str) -> u32 {
        self.cli_all(&["PUBSUB", "SHARDNUMSUB", channel])
            .iter()
            .map(|o| second_line_number(o))
            .sum()
    }
}

/// A process's resident set, in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Samples a process's RSS every 10 ms until dropped; `peak` is the
/// highest seen so far.
pub struct RssWatch {
    pid: u32,
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match std::fs::metadata(format!("/proc/{pid}")) {
                        Ok(_) => peak.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed),
                        Err(_) => return,
                    };
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        RssWatch { pid, peak, stop }
    }

    pub fn peak(&self) -> u64 {
        self.peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(rss_bytes(self.pid))
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A scratch working directory, so no `config/tickwire.toml` of the
/// repository is picked up by accident; removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tickwire-process-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, run in `dir` with no `TICKWIRE_*` variable inherited: the
/// one way every test starts a tickwire process.
pub fn tickwire(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("TICKWIRE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}
