//! Benchmark harness (not a test) for `bench/netswitch-guests.sh`: boots
//! one or two kit guests in this process, each with one virtio-net NIC on
//! the same netswitch switch (whose host endpoint is 192.168.0.2), and
//! optionally puts TCP services on the endpoint: a sink that counts what
//! each connection sends, a source that sends N MiB of zeros to each.
//!
//! ```text
//! net_bench [--sink PORT] [--source PORT=MIB] [--after TEXT] [--timeout SECS] CMDLINE [CMDLINE2]
//! ```
//!
//! Guest 1 (MAC 02:00:00:00:00:0a) boots with CMDLINE; with CMDLINE2, guest 2
//! (MAC 02:00:00:00:00:0b) boots once guest 1's console shows TEXT (default
//! `vmm-guest: ready`). Each console line is printed as `g1| LINE` /
//! `g2| LINE`, each sink connection as `sink: N bytes`, then each switch
//! port's counters (`port 0` is the endpoint). Exits 0 once every
//! guest has powered off, 1 on a timeout (default 900 s) or another stop.
//!
//! The guests are assembled as `vmm boot --net` assembles its one guest
//! (virtio-rng, legacy devices, one vCPU, 256 MiB), but `vmm boot` has one
//! switch per process and a fixed guest MAC, so two guests on one switch
//! need the library.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmm::devices::pci::kvm::PciDevices;
use vmm::devices::virtio::net::Net;
use vmm::layout::MemoryLayout;
use vmm::net::Network;
use vmm::vcpu::{StopReason, StopSignal};

/// A console that keeps everything the guest printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// One running guest.
struct Guest {
    stop: Arc<StopSignal>,
    console: Captured,
    done: std::sync::mpsc::Receiver<StopReason>,
}

impl Guest {
    fn boot(net: &Network, mac: [u8; 6], cmdline: &str) -> anyhow::Result<Self> {
        let kit = vmm::guest::Kit::in_dir(&vmm::guest::default_dir()?);
        let kvm = vmm::kvm::open(
            Path::new(vmm::kvm::DEFAULT_DEVICE),
            Path::new(vmm::kvm::SYS_MODULE_DIR),
        )?;
        let layout = MemoryLayout::new(256 << 20)?;
        let vm = Arc::new(vmm::vm::Vm::new(&kvm, layout)?);
        let mut pci = PciDevices::for_boot(vm.clone(), &[])?;
        let nic = Net::new(mac, Box::new(net.nic_backend()?));
        pci.add_virtio(Box::new(nic), "virtio-net")?;
        let stop = Arc::new(StopSignal::new());
        let captured = Captured::default();
        let console = vmm::console::Console::spawn(
            Box::new(captured.clone()),
            vmm::console::DEFAULT_CAPACITY,
        )
        .context("console")?;
        let legacy =
            vmm::machine::add_legacy_devices(&vm, Box::new(console.writer()), stop.clone())?;
        let rsdp = vmm::acpi::write_tables(vm.memory(), &layout, 1)?;
        let entry = vmm::boot::load_linux(
            vm.memory(),
            &layout,
            &vmm::boot::LinuxBoot {
                kernel: &kit.kernel,
                initrd: &kit.initrd,
                cmdline,
                rsdp,
            },
        )?;
        let threads = vmm::machine::start_vcpus(&kvm, &vm, 1, entry, &stop)?;
        let (tx, done) = std::sync::mpsc::channel();
        let waiter = stop.clone();
        std::thread::spawn(move || {
            let reason = waiter.wait();
            let _ = vmm::vcpu::stop_all(threads);
            drop(pci);
            drop(legacy);
            console.finish(Duration::from_secs(2));
            drop(vm);
            let _ = tx.send(reason);
        });
        Ok(Self {
            stop,
            console: captured,
            done,
        })
    }

    fn wait_for(&self, text: &str, deadline: Instant) -> anyhow::Result<()> {
        while !self.console.text().contains(text) {
            if Instant::now() >= deadline {
                bail!("no {text:?} on guest 1's console in time");
            }
            if self.stop.reason().is_some() {
                bail!("guest 1 stopped before printing {text:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

struct Args {
    sink: Option<u16>,
    source: Option<(u16, usize)>,
    after: String,
    timeout: Duration,
    cmdlines: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        sink: None,
        source: None,
        after: "vmm-guest: ready".to_owned(),
        timeout: Duration::from_secs(900),
        cmdlines: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sink" => args.sink = Some(value()?.parse()?),
            "--source" => {
                let v = value()?;
                let (port, mib) = v.split_once('=').context("--source PORT=MIB")?;
                args.source = Some((port.parse()?, mib.parse()?));
            }
            "--after" => args.after = value()?,
            "--timeout" => args.timeout = Duration::from_secs(value()?.parse()?),
            _ if a.starts_with("--") => bail!("unknown option {a}"),
            _ => args.cmdlines.push(a),
        }
    }
    if args.cmdlines.is_empty() || args.cmdlines.len() > 2 {
        bail!("usage: net_bench [--sink PORT] [--source PORT=MIB] [--after TEXT] [--timeout SECS] CMDLINE [CMDLINE2]");
    }
    Ok(args)
}

fn start_services(net: &Network, args: &Args) -> anyhow::Result<()> {
    if let Some(port) = args.sink {
        let listener = net.endpoint().listen(port)?;
        net.runtime().spawn(async move {
            while let Ok(mut stream) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut total = 0u64;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => total += n as u64,
                            Err(e) => {
                                println!("sink: error after {total} bytes: {e}");
                                return;
                            }
                        }
                    }
                    println!("sink: {total} bytes");
                });
            }
        });
    }
    if let Some((port, mib)) = args.source {
        let listener = net.endpoint().listen(port)?;
        net.runtime().spawn(async move {
            while let Ok(mut stream) = listener.accept().await {
                tokio::spawn(async move {
                    let buf = vec![0u8; 64 << 10];
                    for _ in 0..mib * 16 {
                        if let Err(e) = stream.write_all(&buf).await {
                            println!("source: error: {e}");
                            return;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let deadline = Instant::now() + args.timeout;
    let net = Network::start(None)?;
    start_services(&net, &args)?;
    let mut guests = vec![Guest::boot(&net, [2, 0, 0, 0, 0, 0x0a], &args.cmdlines[0])?];
    if let Some(second) = args.cmdlines.get(1) {
        guests[0].wait_for(&args.after, deadline)?;
        guests.push(Guest::boot(&net, [2, 0, 0, 0, 0, 0x0b], second)?);
    }
    let mut ok = true;
    for g in &guests {
        let left = deadline.saturating_duration_since(Instant::now());
        match g.done.recv_timeout(left) {
            Ok(StopReason::PowerOff) => {}
            Ok(other) => {
                eprintln!("net_bench: a guest stopped: {other:?}");
                ok = false;
            }
            Err(_) => {
                eprintln!("net_bench: timeout");
                ok = false;
                break;
            }
        }
    }
    for g in &guests {
        g.stop
            .stop(StopReason::InternalError("net_bench done".into()));
    }
    for g in &guests {
        let _ = g.done.recv_timeout(Duration::from_secs(10));
    }
    // Let the sink print what it counted.
    std::thread::sleep(Duration::from_millis(200));
    let mut out = std::io::stdout().lock();
    for (i, g) in guests.iter().enumerate() {
        for line in g.console.text().lines() {
            writeln!(out, "g{}| {}", i + 1, line.trim_end())?;
        }
    }
    // Port 0 is the endpoint, then the guests' NICs in boot order.
    for id in 0..=guests.len() {
        let port = netswitch::PortId(u32::try_from(id)?);
        if let Some(c) = net.switch().port_counters(port) {
            writeln!(out, "port {id}: {c:?}")?;
        }
    }
    out.flush()?;
    drop(out);
    drop(net);
    std::process::exit(i32::from(!ok));
}
