//! The kernel's floor under tickwire's cost per delivery: a bare loop that
//! writes one WebSocket-frame-sized buffer (160 bytes: a 4-byte header and
//! a ~156-byte `market_update`) to each of many loopback TCP sockets, with
//! no WebSocket library, no runtime and no queue. It reports the CPU the
//! writing thread spends per `write` (user + system, from
//! `getrusage(RUSAGE_THREAD)`), which on loopback includes the kernel
//! carrying the bytes into the receiving socket and waking its reader.
//!
//! Two patterns, each with 1 and with several frames per `write`:
//! - `paced`: rounds of one write per socket, spread so that the total is
//!   `FLOOR_RATE` writes/s (20 000 by default, the standard scenario). The
//!   readers are idle when each frame lands, so every write wakes one.
//! - `flat_out`: the same loop with no pause; readers wake less often
//!   because data is already waiting when they get to run.
//!
//! The readers are tokio tasks on one other thread (like a load generator's
//! subscribers). Settings from the environment: `FLOOR_SOCKETS` (1000),
//! `FLOOR_SECS` per case (3), `FLOOR_RATE` (20000).
//!
//! `cargo bench --bench write_floor`

// getrusage is the only way to read one thread's CPU time; see `thread_cpu`.
#![allow(unsafe_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const FRAME_BYTES: usize = 160;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of the calling thread (user + system).
fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: RUSAGE_THREAD with a valid pointer to a rusage the kernel
    // fills completely; it only fails for a bad `who`, which this is not.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One case: `frames_per_write` frames in each write, paced or not.
struct Case {
    name: &'static str,
    frames_per_write: usize,
    paced: bool,
    /// Each frame as two slices (a 4-byte header and the payload) in one
    /// `writev`, the way tickwire writes (`outbox::writer`), instead of
    /// one buffer in one `write`.
    vectored: bool,
}

/// `buf` as `frames` frames of a 4-byte header and its payload each, in one
/// `writev` (the socket is blocking, so it takes everything at once).
fn write_vectored(w: &mut TcpStream, buf: &[u8], frames: usize) {
    let frame = buf.len() / frames;
    let mut slices = Vec::with_capacity(2 * frames);
    for f in buf.chunks(frame) {
        slices.push(std::io::IoSlice::new(&f[..4]));
        slices.push(std::io::IoSlice::new(&f[4..]));
    }
    let n = w.write_vectored(&slices).expect("loopback writev");
    assert_eq!(
        n,
        buf.len(),
        "a blocking writev of a few hundred bytes takes them all"
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let sockets = env("FLOOR_SOCKETS", 1_000) as usize;
    let secs = env("FLOOR_SECS", 3);
    let rate = env("FLOOR_RATE", 20_000);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let mut writers = Vec::with_capacity(sockets);
    let mut readers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let client = TcpStream::connect(addr).expect("connect loopback");
        let (server, _) = listener.accept().expect("accept");
        server.set_nodelay(true).expect("nodelay");
        client.set_nonblocking(true).expect("nonblocking");
        writers.push(server);
        readers.push(client);
    }

    // The subscribers: one runtime thread reading every socket.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Duration>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for r in readers {
                let mut stop = stop_rx.clone();
                let mut s = tokio::net::TcpStream::from_std(r).expect("tokio stream");
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            n = s.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return },
                            _ = stop.changed() => return,
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let _ = done_tx.send(thread_cpu());
    });

    let cases = [
        Case {
            name: "paced_1_frame_per_write",
            frames_per_write: 1,
            paced: true,
            vectored: false,
        },
        Case {
            name: "paced_1_frame_per_writev",
            frames_per_write: 1,
            paced: true,
            vectored: true,
        },
        Case {
            name: "flat_out_1_frame_per_write",
            frames_per_write: 1,
            paced: false,
            vectored: false,
        },
        Case {
            name: "flat_out_8_frames_per_write",
            frames_per_write: 8,
            paced: false,
            vectored: false,
        },
        Case {
            name: "flat_out_32_frames_per_write",
            frames_per_write: 32,
            paced: false,
            vectored: false,
        },
    ];
    println!("write floor: {sockets} loopback sockets, {FRAME_BYTES}-byte frames, {secs} s per case");
    println!(
        "{:<30} {:>12} {:>14} {:>16} {:>16}",
        "case", "writes/s", "frames/s", "CPU µs/write", "CPU µs/frame"
    );
    for case in &cases {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let buf = vec![b'x'; FRAME_BYTES * case.frames_per_write];
        let round_gap = Duration::from_secs_f64(sockets as f64 / rate as f64);
        let started = Instant::now();
        let cpu0 = thread_cpu();
        let mut writes = 0u64;
        let mut next_round = started;
        while started.elapsed() < Duration::from_secs(secs) {
            for w in writers.iter_mut() {
                if case.vectored {
                    write_vectored(w, &buf, case.frames_per_write);
                } else {
                    w.write_all(&buf).expect("loopback write");
                }
                writes += 1;
            }
            if case.paced {
                next_round += round_gap;
                if let Some(wait) = next_round.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let cpu = thread_cpu() - cpu0;
        let wall = started.elapsed().as_secs_f64();
        let frames = writes * case.frames_per_write as u64;
        println!(
            "{:<30} {:>12.0} {:>14.0} {:>16.2} {:>16.2}",
            case.name,
            writes as f64 / wall,
            frames as f64 / wall,
            cpu.as_secs_f64() * 1e6 / writes as f64,
            cpu.as_secs_f64() * 1e6 / frames as f64,
        );
        // Let the readers catch up before the next case.
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = stop_tx.send(true);
    drop(writers);
    let reader_cpu = done_rx.recv().unwrap_or_default();
    let _ = reader_thread.join();
    println!(
        "reader thread CPU over all cases: {:.2} s",
        reader_cpu.as_secs_f64()
    );
}
