//! The `tickwire` binary as an operator or a script meets it (DESIGN.md,
//! "Starting it", and PROTOCOL.md 4): it logs `listening on <addr>` with the
//! real port when started on port 0; SIGTERM and SIGINT close subscribers
//! with 1001 and exit 0 within the drain time; flags, `TICKWIRE_*`
//! variables and the config file apply in that order of precedence; `--help`
//! lists the settings; a bad setting stops the start with exit code 2 and a
//! message naming it; `tickwire token` mints a token the server accepts; and
//! the development defaults are warned about. Every child is killed by its
//! PID when its guard drops, also when a test fails.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::{market_update, notification, tickwire, Client, Scratch, WAIT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Error as WsError;

const SECRET: &str = "process-test-secret-0123456789";
const KEY: &str = "process-test-api-key";

/// A running child; killed (by its PID) and reaped on drop.
struct Proc {
    child: std::process::Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn tickwire");
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until the `listening on` line; returns the address it
    /// names and every line up to it.
    fn listening(&mut self) -> (SocketAddr, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let found = line.split("listening on ").nth(1).map(|rest| {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        addr.parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("`{addr}` in `{line}` is not an address: {e}"))
                    });
                    lines.push(line);
                    if let Some(addr) = found {
                        return (addr, lines);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no `listening on` line within {WAIT:?}: {lines:#?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let err = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
                    panic!(
                        "tickwire ended ({status:?}) before listening; stdout {lines:#?}; stderr:\n{}",
                        err.join().unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit.
    fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tickwire (pid {}) still running after {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit, then returns its status, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let status = self.exit_within(limit);
        let mut out = String::new();
        while let Ok(line) = self.stdout.recv_timeout(WAIT) {
            out.push_str(&line);
            out.push('\n');
        }
        let err = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, out, err.join().unwrap_or_default())
    }
}

/// Starts a server with `args` (and `env`) in `dir`; waits until it listens.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr, Vec<String>) {
    let mut cmd = tickwire(dir, args);
    cmd.envs(env.iter().copied());
    let mut p = Proc::spawn(cmd);
    let (addr, lines) = p.listening();
    assert_ne!(addr.port(), 0, "the real port is logged, not 0");
    (p, addr, lines)
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) only takes two integers and touches none of our memory;
    // the pid is that of our own child, which its guard has not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

fn mint(secret: &str, sub: &str) -> String {
    tickwire::auth::mint(
        secret.as_bytes(),
        sub,
        None,
        SystemTime::now() + Duration::from_secs(3600),
    )
}

async fn ws(addr: SocketAddr, endpoint: &str, token: &str) -> Result<Client, WsError> {
    let url = format!("ws://{addr}/ws/{endpoint}/?token={token}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")?;
    Ok(Client { ws })
}

async fn handshake_status(addr: SocketAddr, endpoint: &str, token: &str) -> u16 {
    match ws(addr, endpoint, token).await {
        Ok(_) => 101,
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

async fn publish(addr: SocketAddr, key: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/publish"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("publish request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_on_port_0_it_logs_the_real_address_and_serves_there() {
    let dir = Scratch::new();
    let (_p, addr, lines) = serve(
        &dir.0,
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            KEY,
        ],
        &[],
    );
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{lines:?}");
    let resp = reqwest::get(format!("http://{addr}/health"))
        .await
        .expect("GET /health");
    assert_eq!(resp.status().as_u16(), 200);
    let mut c = ws(addr, "market-data", &mint(SECRET, "alice"))
        .await
        .expect("accepted");
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
}

async fn signal_drains_and_exits_0(signal: libc::c_int) {
    let dir = Scratch::new();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--api-key",
        KEY,
        "--drain-timeout-secs",
        "3",
    ];
    let (mut p, addr, _) = serve(&dir.0, &args, &[]);
    let token = mint(SECRET, "alice");
    let mut market = ws(addr, "market-data", &token).await.expect("accepted");
    market
        .send(json!({"type": "subscribe", "symbols": ["BTC-USD"]}))
        .await;
    market.recv_type("subscribed").await;
    let mut signals = ws(addr, "trading-signals", &token).await.expect("accepted");
    signals.send(json!({"type": "ping"})).await;
    signals.recv_type("pong").await;
    let mut notes = ws(addr, "notifications", &token).await.expect("accepted");
    notes.recv_type("unread_notifications").await;

    let sent = Instant::now();
    send_signal(p.pid(), signal);
    for c in [&mut market, &mut signals, &mut notes] {
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(1001), "{closed:?}");
    }
    // No new subscriber is taken once shutdown has begun.
    match ws(addr, "market-data", &token).await {
        Ok(_) => panic!("a new connection was accepted after the signal"),
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        Err(_) => {} // the listener is gone: refused
    }
    drop((market, signals, notes));
    let status = p.exit_within(Duration::from_secs(3) + Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "exited {:?} after the signal",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_subscribers_with_1001_and_exits_0_within_the_drain_time() {
    signal_drains_and_exits_0(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_subscribers_with_1001_and_exits_0_within_the_drain_time() {
    signal_drains_and_exits_0(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_the_server() {
    let dir = Scratch::new();
    let env_secret = "environment-secret-0123456789";
    let (_p, addr, _) = serve(
        &dir.0,
        &[],
        &[
            ("TICKWIRE_LISTEN", "127.0.0.1:0"),
            ("TICKWIRE_JWT_SECRET", env_secret),
            ("TICKWIRE_API_KEYS", "env-key-number-one,env-key-number-two"),
        ],
    );
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_eq!(
        handshake_status(addr, "market-data", &mint(env_secret, "alice")).await,
        101
    );
    assert_eq!(
        handshake_status(addr, "market-data", &mint(SECRET, "alice")).await,
        401
    );
    assert_eq!(
        publish(addr, "env-key-number-one", market_update("ENV-1", 1.0)).await,
        202
    );
    assert_eq!(
        publish(addr, "env-key-number-two", market_update("ENV-1", 2.0)).await,
        202
    );
    assert_eq!(publish(addr, KEY, market_update("ENV-1", 3.0)).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_environment_which_wins_over_the_config_file() {
    let dir = Scratch::new();
    let file_secret = "config-file-secret-0123456789";
    let env_secret = "environment-secret-0123456789";
    let flag_secret = "command-line-secret-0123456789";
    let config = dir.write(
        "custom.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[auth]\njwt_secret = \"{file_secret}\"\napi_keys = [\"file-key-number-one\"]\n"
        ),
    );
    let config = config.to_str().unwrap();

    // The environment over the file: its secret and keys, the file's none.
    let (p, addr, _) = serve(
        &dir.0,
        &["--config", config],
        &[
            ("TICKWIRE_LISTEN", "127.0.0.1:0"),
            ("TICKWIRE_JWT_SECRET", env_secret),
            ("TICKWIRE_API_KEYS", "env-key-number-one"),
        ],
    );
    assert_eq!(
        handshake_status(addr, "market-data", &mint(env_secret, "a")).await,
        101
    );
    assert_eq!(
        handshake_status(addr, "market-data", &mint(file_secret, "a")).await,
        401
    );
    assert_eq!(
        publish(addr, "env-key-number-one", market_update("P-1", 1.0)).await,
        202
    );
    assert_eq!(
        publish(addr, "file-key-number-one", market_update("P-1", 1.0)).await,
        401
    );
    drop(p);

    // Flags over the environment (whose listen address is not even valid).
    let (_p, addr, _) = serve(
        &dir.0,
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            flag_secret,
            "--api-key",
            "flag-key-number-one",
        ],
        &[
            ("TICKWIRE_LISTEN", "nowhere"),
            ("TICKWIRE_JWT_SECRET", env_secret),
            ("TICKWIRE_API_KEYS", "env-key-number-one"),
        ],
    );
    assert_eq!(
        handshake_status(addr, "market-data", &mint(flag_secret, "a")).await,
        101
    );
    assert_eq!(
        handshake_status(addr, "market-data", &mint(env_secret, "a")).await,
        401
    );
    assert_eq!(
        publish(addr, "flag-key-number-one", market_update("P-1", 1.0)).await,
        202
    );
    assert_eq!(
        publish(addr, "env-key-number-one", market_update("P-1", 1.0)).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_the_deployment_settings() {
    let dir = Scratch::new();
    let (status, out, err) = Proc::spawn(tickwire(&dir.0, &["--help"])).finish(WAIT);
    assert_eq!(status.code(), Some(0), "{err}");
    for flag in ["--listen", "--jwt-secret", "--api-key", "--redis", "--config"] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
}

/// A start that must fail: where, with what, and the words its message must hold.
struct BadStart<'a> {
    cwd: &'a Path,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    named: Vec<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_exits_2_with_a_message_naming_it() {
    let dir = Scratch::new();
    let unknown_key = dir.write("unknown-key.toml", "[limits]\nmax_subscription = 3\n");
    let unknown_section = dir.write("unknown-section.toml", "[srever]\nlisten = \"127.0.0.1:0\"\n");
    let bad_value = dir.write("bad-value.toml", "[limits]\nmax_subscriptions = 0\n");
    let missing = dir.0.join("does-not-exist.toml");
    let default_dir = Scratch::new();
    default_dir.write("config/tickwire.toml", "[auth]\njwt_secrett = \"x\"\n");

    let config = |path: &PathBuf| vec!["--config".to_string(), path.to_str().unwrap().to_string()];
    let at = |cwd, args: Vec<String>, named| BadStart {
        cwd,
        args,
        env: vec![],
        named,
    };
    let cases = [
        at(
            &dir.0,
            vec!["--listen".into(), "nowhere".into()],
            vec!["listen", "nowhere"],
        ),
        BadStart {
            cwd: &dir.0,
            args: vec![],
            env: vec![("TICKWIRE_LISTEN", "nowhere")],
            named: vec!["listen", "nowhere"],
        },
        at(&dir.0, config(&unknown_key), vec!["max_subscription"]),
        at(&dir.0, config(&unknown_section), vec!["srever"]),
        at(&dir.0, config(&bad_value), vec!["max_subscriptions"]),
        at(&dir.0, config(&missing), vec!["does-not-exist.toml"]),
        at(
            &dir.0,
            vec!["--jwt-secret".into(), "short".into()],
            vec!["jwt_secret"],
        ),
        at(&default_dir.0, vec![], vec!["jwt_secrett"]),
    ];
    for BadStart {
        cwd,
        args,
        env,
        named,
    } in cases
    {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !args.contains(&"--listen") && env.is_empty() {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut cmd = tickwire(cwd, &args);
        cmd.envs(env.iter().copied());
        let (status, out, err) = Proc::spawn(cmd).finish(WAIT);
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?} {env:?}: {status:?}\nstdout {out}\nstderr {err}"
        );
        for word in named {
            assert!(
                err.contains(word),
                "{args:?} {env:?}: the message does not name `{word}`:\n{err}"
            );
        }
        assert!(
            !out.contains("listening on"),
            "{args:?} {env:?} started anyway:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_mints_a_token_the_server_accepts() {
    let dir = Scratch::new();
    let (status, out, err) = Proc::spawn(tickwire(
        &dir.0,
        &["token", "--sub", "alice", "--jwt-secret", SECRET],
    ))
    .finish(WAIT);
    assert_eq!(status.code(), Some(0), "{err}");
    let token = out.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {out}");
    let (status, out, _) = Proc::spawn(tickwire(
        &dir.0,
        &[
            "token",
            "--sub",
            "bob",
            "--symbols",
            "ETH-*",
            "--ttl",
            "15m",
            "--jwt-secret",
            SECRET,
        ],
    ))
    .finish(WAIT);
    assert_eq!(status.code(), Some(0));
    let limited = out.trim().to_string();
    let (_, other_out, _) = Proc::spawn(tickwire(
        &dir.0,
        &[
            "token",
            "--sub",
            "alice",
            "--jwt-secret",
            "another-secret-0123456789",
        ],
    ))
    .finish(WAIT);

    let (_p, addr, _) = serve(
        &dir.0,
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            KEY,
        ],
        &[],
    );
    let mut c = ws(addr, "notifications", &token)
        .await
        .expect("the minted token is accepted");
    c.recv_type("unread_notifications").await;
    assert_eq!(publish(addr, KEY, notification("alice", "n-cli")).await, 202);
    let n = c.recv_type("new_notification").await;
    assert_eq!(n["notification_id"], "n-cli", "the token is alice's: {n}");

    let mut m = ws(addr, "market-data", &limited).await.expect("accepted");
    m.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "id": 1}))
        .await;
    assert_eq!(m.recv().await["code"], "forbidden", "--symbols became the claim");
    m.send(json!({"type": "subscribe", "symbols": ["ETH-USD"], "id": 2}))
        .await;
    assert_eq!(m.recv().await["type"], "subscribed");

    assert_eq!(
        handshake_status(addr, "market-data", other_out.trim()).await,
        401,
        "signed with another secret"
    );
}

fn warnings(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("WARN")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_defaults_are_warned_about_at_start() {
    let dir = Scratch::new();
    let (p, _, lines) = serve(&dir.0, &["--listen", "127.0.0.1:0"], &[]);
    let warned = warnings(&lines);
    assert!(
        warned.iter().any(|l| l.contains("JWT secret")),
        "a WARN line about the development JWT secret before `listening on`: {lines:#?}"
    );
    assert!(
        warned.iter().any(|l| l.contains("API key")),
        "a WARN line about the development API key before `listening on`: {lines:#?}"
    );
    drop(p);

    let (_p, _, lines) = serve(
        &dir.0,
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            KEY,
        ],
        &[],
    );
    assert!(
        warnings(&lines).is_empty(),
        "no warning with real secrets: {lines:#?}"
    );
}
