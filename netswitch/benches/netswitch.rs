//! Throughput of the switch and the host endpoint (run with
//! `cargo bench -p netswitch`; `-- --quick` for a shorter run).
//!
//! Measures, on one core unless stated:
//! - frames/s through the sans-IO core between two ports (64 and 1500 B);
//! - frames/s through the shared `Port` handles (lock + clock per frame);
//! - frames/s from a sender thread to a receiver thread woken by a notifier;
//! - TCP throughput between two host endpoints on one switch.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netswitch::endpoint::{EndpointConfig, HostEndpoint};
use netswitch::switch::SwitchCore;
use netswitch::{Switch, SwitchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0x42u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// CPU time this thread has run (Linux `schedstat`), so figures stay
/// meaningful on a shared, loaded machine.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Prints a rate per wall-clock second and, when `cpu` is known, per
/// second of CPU time of the measuring thread (the "one core" figure).
fn report(what: &str, frames: u64, bytes: u64, elapsed: Duration, cpu: Option<Duration>) {
    let secs = elapsed.as_secs_f64();
    let per_cpu = cpu
        .filter(|c| !c.is_zero())
        .map(|c| {
            format!(
                ", {:.2} Mframes per CPU-s",
                frames as f64 / c.as_secs_f64() / 1e6
            )
        })
        .unwrap_or_default();
    println!(
        "{what:<44} {:>7.2} Mframes/s {:>8.1} MB/s{per_cpu}",
        frames as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}

fn core_bench(len: usize, frames: u64) {
    let mut core = SwitchCore::new(SwitchConfig::default()).unwrap();
    let (a, b) = (core.add_port(), core.add_port());
    let mut now = Instant::now();
    // Learn both stations so the loop measures unicast forwarding.
    core.input(now, a, &frame([0xff; 6], A, 60));
    core.input(now, b, &frame([0xff; 6], B, 60));
    while let Some(f) = core.pop(a) {
        core.recycle(f);
    }
    while let Some(f) = core.pop(b) {
        core.recycle(f);
    }
    let f = frame(B, A, len);
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    for i in 0..frames {
        if i % 1024 == 0 {
            now = Instant::now();
        }
        black_box(core.input(now, a, black_box(&f)));
        let out = core.pop(b).unwrap();
        black_box(&out);
        core.recycle(out);
    }
    let cpu = thread_cpu_time() - cpu_start;
    let bytes = frames * len as u64;
    report(
        &format!("core, {len} B frames"),
        frames,
        bytes,
        start.elapsed(),
        Some(cpu),
    );
}

fn port_bench(len: usize, frames: u64) {
    let switch = Switch::new(SwitchConfig::default()).unwrap();
    let (a, b) = (switch.add_port(), switch.add_port());
    a.send(&frame([0xff; 6], A, 60));
    b.send(&frame([0xff; 6], B, 60));
    while a.try_recv().is_some() {}
    while b.try_recv().is_some() {}
    let f = frame(B, A, len);
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    for _ in 0..frames {
        black_box(a.send(black_box(&f)));
        let out = b.try_recv().unwrap();
        black_box(&out);
        b.recycle(out);
    }
    let cpu = thread_cpu_time() - cpu_start;
    let bytes = frames * len as u64;
    report(
        &format!("Port handles, {len} B frames"),
        frames,
        bytes,
        start.elapsed(),
        Some(cpu),
    );
}

fn threads_bench(len: usize, frames: u64) {
    let switch = Switch::new(SwitchConfig::default()).unwrap();
    let a = switch.add_port();
    let b = Arc::new(switch.add_port());
    a.send(&frame([0xff; 6], A, 60));
    b.send(&frame([0xff; 6], B, 60));
    while a.try_recv().is_some() {}
    while b.try_recv().is_some() {}
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    b.set_notifier(move || {
        let _ = wake.try_send(());
    });
    let receiver = {
        let b = b.clone();
        std::thread::spawn(move || {
            let mut got = 0u64;
            while got < frames {
                if woken.recv_timeout(Duration::from_secs(2)).is_err() {
                    break; // sender finished; the rest were dropped
                }
                while let Some(f) = b.try_recv() {
                    got += 1;
                    b.recycle(f);
                }
            }
            got
        })
    };
    let f = frame(B, A, len);
    let start = Instant::now();
    for i in 0..frames {
        a.send(&f);
        if i % 256 == 0 {
            // Keep the sender from racing far ahead of the receiver.
            while b.queued().0 > 256 {
                std::thread::yield_now();
            }
        }
    }
    let got = receiver.join().unwrap();
    let elapsed = start.elapsed();
    let what = format!("sender thread -> woken receiver, {len} B");
    report(&what, got, got * len as u64, elapsed, None);
    println!("{:<44} dropped {}", "", b.counters().tx_dropped_queue_full);
}

async fn tcp_bench(total: usize, rx_buffer: usize) {
    let switch = Switch::new(SwitchConfig::default()).unwrap();
    let config = |address| EndpointConfig {
        address,
        tcp_rx_buffer: rx_buffer,
        tcp_tx_buffer: rx_buffer.max(256 * 1024),
        ..EndpointConfig::default()
    };
    let host =
        HostEndpoint::spawn(switch.add_port(), config(Ipv4Addr::new(192, 168, 0, 2))).unwrap();
    let guest =
        HostEndpoint::spawn(switch.add_port(), config(Ipv4Addr::new(192, 168, 0, 1))).unwrap();
    let listener = host.listen(5001).unwrap();
    let sink = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let mut client = guest
        .connect(Ipv4Addr::new(192, 168, 0, 2), 5001)
        .await
        .unwrap();
    let buf = vec![0x77u8; 256 * 1024];
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len());
        client.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    client.shutdown().await.unwrap();
    let received = sink.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(received, total);
    println!(
        "{:<44} {:>7.1} MB/s ({:.0} Mbit/s)",
        format!("TCP endpoint -> endpoint, {rx_buffer} B receive buffer"),
        total as f64 / elapsed.as_secs_f64() / 1e6,
        total as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 2_000_000 } else { 20_000_000 };
    for len in [64, 1500] {
        core_bench(len, n);
    }
    for len in [64, 1500] {
        port_bench(len, n);
    }
    for len in [64, 1500] {
        threads_bench(len, n / 4);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = if quick { 64 << 20 } else { 512 << 20 };
    runtime.block_on(tcp_bench(total, 65535));
    runtime.block_on(tcp_bench(total / 4, 4 * 1024));
}
