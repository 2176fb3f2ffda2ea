//! virtio devices under a real guest (`vmm boot --disk ...`): a file
//! system made on a fresh disk survives and reads back on the host and in a
//! second boot; `,cow` keeps the base file's bytes; `,ro` makes writes
//! fail and keeps the file; the guest gets entropy from virtio-rng.
//!
//! Needs the kit (`vmm guest build`) in its default folder, `mtools` on the
//! host, and a hardware KVM (run through `scripts/with-kvm` elsewhere).

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::guest::{BootedGuest, BOOT_TIMEOUT, EXIT_MARKER_PREFIX, READY_MARKER};

const AFTER_READY: Duration = Duration::from_secs(240);

/// A scratch folder removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vmm-kvm-virtio-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sparse image of `size` bytes.
fn empty_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

/// An image of `size` bytes of a fixed pattern.
fn pattern_image(path: &Path, size: usize) {
    let bytes: Vec<u8> = (0..size)
        .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
        .collect();
    std::fs::write(path, bytes).expect("write image");
}

/// Boots the kit with `disk_args` and runs `cmd`; returns the console and
/// the command's exit status as printed by `/init`.
fn run_guest(disk_args: &[String], cmd: &str) -> (Vec<String>, String) {
    let mut args: Vec<String> = disk_args.to_vec();
    args.push("--append".into());
    args.push(format!("run=\"{cmd}\""));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut g = BootedGuest::start(&refs);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    let status = g.expect_line(EXIT_MARKER_PREFIX, AFTER_READY);
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(0), "{:#?}", g.seen);
    (g.seen.clone(), status)
}

fn line_with<'a>(console: &'a [String], prefix: &str) -> &'a str {
    console
        .iter()
        .find_map(|l| l.find(prefix).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no {prefix:?} on the console: {console:#?}"))
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn kvm_virtio_blk_filesystem_made_in_guest_reads_back_on_host_and_next_boot() {
    if !tests::require_kvm() {
        return;
    }
    let s = Scratch::new("mkfs");
    let img = s.path("disk.img");
    empty_image(&img, 64 << 20);
    let disk = img.display().to_string();
    let cmd = "mkdosfs /dev/vda >/dev/null && mkdir -p /mnt && mount -t vfat /dev/vda /mnt \
               && echo payload-one > /mnt/one.txt \
               && dd if=/dev/urandom of=/mnt/big.bin bs=65536 count=64 2>/dev/null \
               && echo sum1=$(sha256sum /mnt/big.bin) && umount /mnt && sync";
    let (console, status) = run_guest(&["--disk".into(), disk.clone()], cmd);
    assert!(status.ends_with("exit 0"), "{console:#?}");
    let sum1 = line_with(&console, "sum1=")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    // The host reads the files out of the image with mtools.
    let one = Command::new("mtype")
        .args(["-i", &disk, "::one.txt"])
        .output()
        .expect("mtype (apt-get install mtools)");
    assert_eq!(String::from_utf8_lossy(&one.stdout).trim(), "payload-one");
    let big = s.path("big.bin");
    let copy = Command::new("mcopy")
        .args(["-i", &disk, "::big.bin"])
        .arg(&big)
        .status()
        .expect("mcopy");
    assert!(copy.success());
    assert_eq!(format!("sum1={}", sha256_of(&big)), sum1);

    // A second boot reads them through the device.
    let cmd = "mkdir -p /mnt && mount -t vfat -o ro /dev/vda /mnt && cat /mnt/one.txt \
               && echo sum1=$(sha256sum /mnt/big.bin)";
    let (console, status) = run_guest(&["--disk".into(), format!("{disk},ro")], cmd);
    assert!(status.ends_with("exit 0"), "{console:#?}");
    assert!(
        console.iter().any(|l| l.trim() == "payload-one"),
        "{console:#?}"
    );
    assert_eq!(
        line_with(&console, "sum1=")
            .split_whitespace()
            .next()
            .unwrap(),
        sum1
    );
}

/// Writes a marker at sector 10, drops the guest's caches and reads the
/// sector back from the device.
const MARK_AND_READ: &str =
    "echo cow-marker-42 | dd of=/dev/vda bs=512 seek=10 conv=fsync 2>/dev/null \
    && echo 3 > /proc/sys/vm/drop_caches \
    && echo got=$(dd if=/dev/vda bs=512 skip=10 count=1 2>/dev/null | head -c 13)";

#[test]
fn kvm_virtio_blk_cow_guest_sees_its_writes_and_base_bytes_stay() {
    if !tests::require_kvm() {
        return;
    }
    let s = Scratch::new("cow");
    let base = s.path("base.img");
    pattern_image(&base, 8 << 20);
    let before = sha256_of(&base);
    let disk = base.display().to_string();

    let (console, status) = run_guest(&["--disk".into(), format!("{disk},cow")], MARK_AND_READ);
    assert!(status.ends_with("exit 0"), "{console:#?}");
    assert_eq!(line_with(&console, "got="), "got=cow-marker-42");
    assert_eq!(sha256_of(&base), before);

    // A kept overlay carries the write into the next boot; the base still
    // does not change.
    let overlay = s.path("overlay");
    let keep = format!("{disk},cow={}", overlay.display());
    let (console, _) = run_guest(&["--disk".into(), keep.clone()], MARK_AND_READ);
    assert_eq!(line_with(&console, "got="), "got=cow-marker-42");
    let read = "echo got=$(dd if=/dev/vda bs=512 skip=10 count=1 2>/dev/null | head -c 13)";
    let (console, _) = run_guest(&["--disk".into(), keep], read);
    assert_eq!(line_with(&console, "got="), "got=cow-marker-42");
    assert_eq!(sha256_of(&base), before);
}

#[test]
fn kvm_virtio_blk_read_only_write_fails_in_guest_and_file_is_unchanged() {
    if !tests::require_kvm() {
        return;
    }
    let s = Scratch::new("ro");
    let img = s.path("ro.img");
    pattern_image(&img, 4 << 20);
    let before = sha256_of(&img);
    let cmd = "dd if=/dev/zero of=/dev/vda bs=4096 count=4 conv=fsync 2>/dev/null; \
               echo ddstatus=$?; \
               echo 3 > /proc/sys/vm/drop_caches; \
               echo first=$(dd if=/dev/vda bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')";
    let disk = format!("{},ro", img.display());
    let (console, status) = run_guest(&["--disk".into(), disk], cmd);
    assert!(status.ends_with("exit 0"), "{console:#?}");
    let dd = line_with(&console, "ddstatus=");
    assert_ne!(dd, "ddstatus=0", "the write must fail: {console:#?}");
    // The guest still reads the original bytes: 0, 7, 14, ...
    assert_eq!(
        line_with(&console, "first="),
        "first=00070e151c232a31383f464d545b6269"
    );
    assert_eq!(sha256_of(&img), before);
}

#[test]
fn kvm_virtio_rng_feeds_the_guest_hwrng() {
    if !tests::require_kvm() {
        return;
    }
    let cmd = "echo rng=$(cat /sys/class/misc/hw_random/rng_current) \
               && echo bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)";
    let (console, status) = run_guest(&[], cmd);
    assert!(status.ends_with("exit 0"), "{console:#?}");
    assert!(
        line_with(&console, "rng=").starts_with("rng=virtio_rng"),
        "{console:#?}"
    );
    assert_eq!(line_with(&console, "bytes="), "bytes=64");
}

/// One guest assembled through the library: kit kernel and initrd, a
/// serial console to a file, power-off, and one virtio-net NIC on
/// `backend`.
struct LibGuest {
    stop: std::sync::Arc<vmm::vcpu::StopSignal>,
    console_path: PathBuf,
    finished: std::sync::mpsc::Receiver<vmm::vcpu::StopReason>,
}

impl LibGuest {
    fn start(
        mac: [u8; 6],
        backend: vmm::devices::virtio::net::PairEnd,
        cmd: &str,
        console_path: PathBuf,
    ) -> Self {
        use std::sync::{Arc, Mutex};
        use vmm::devices::legacy::{pm::Pm, serial::Serial, SystemControl};
        use vmm::devices::pci::kvm::PciDevices;
        use vmm::devices::virtio::net::Net;
        use vmm::layout::{self, MemoryLayout};
        use vmm::vcpu::{self, StopSignal, Vcpu, VcpuConfig};

        let kit = vmm::guest::Kit::in_dir(&vmm::guest::default_dir().expect("kit folder"));
        let kvm = vmm::kvm::open(
            Path::new(vmm::kvm::DEFAULT_DEVICE),
            Path::new(vmm::kvm::SYS_MODULE_DIR),
        )
        .expect("open KVM");
        let layout = MemoryLayout::new(256 << 20).expect("layout");
        let vm = Arc::new(vmm::vm::Vm::new(&kvm, layout).expect("VM"));
        let mut pci = PciDevices::new(vm.clone()).expect("PCI bus");
        pci.add_virtio(Box::new(Net::new(mac, Box::new(backend))), "virtio-net")
            .expect("NIC");
        let stop = Arc::new(StopSignal::new());
        let file = std::fs::File::create(&console_path).expect("console file");
        let console = vmm::console::Console::spawn(Box::new(file), vmm::console::DEFAULT_CAPACITY)
            .expect("console");
        let serial = Serial::new(
            Box::new(vm.irq_line(layout::COM1_GSI).expect("COM1 line")),
            Box::new(console.writer()),
        );
        vm.pio_bus()
            .insert(
                Arc::new(Mutex::new(serial)),
                u64::from(layout::COM1_PORT),
                8,
            )
            .expect("serial");
        let control: Arc<dyn SystemControl> = stop.clone();
        vm.pio_bus()
            .insert(
                Arc::new(Mutex::new(Pm::new(control))),
                u64::from(layout::PM1A_EVT_PORT),
                u64::from(layout::PM_PORTS_LEN),
            )
            .expect("PM");
        let rsdp = vmm::acpi::write_tables(vm.memory(), &layout, 1).expect("ACPI");
        let cmdline = format!("console=ttyS0 panic=-1 quiet i8042.noaux run=\"{cmd}\"");
        let entry = vmm::boot::load_linux(
            vm.memory(),
            &layout,
            &vmm::boot::LinuxBoot {
                kernel: &kit.kernel,
                initrd: &kit.initrd,
                cmdline: &cmdline,
                rsdp,
            },
        )
        .expect("load the kit");
        // 80 = KVM_MAX_CPUID_ENTRIES.
        let supported = kvm.get_supported_cpuid(80).expect("CPUID");
        let cfg = VcpuConfig {
            supported_cpuid: &supported,
            count: 1,
            tsc_deadline: false,
            entry: Some(entry),
        };
        let vcpu = Vcpu::configure(0, vm.create_vcpu(0).expect("vCPU"), &cfg).expect("vCPU setup");
        vcpu::install_kick_handler().expect("kick handler");
        let threads = vec![vcpu
            .start(vm.pio_bus().clone(), vm.mmio_bus().clone(), stop.clone())
            .expect("vCPU start")];
        let (tx, finished) = std::sync::mpsc::channel();
        let waiter = stop.clone();
        std::thread::spawn(move || {
            let reason = waiter.wait();
            let _ = vcpu::stop_all(threads);
            drop(pci);
            console.finish(Duration::from_secs(2));
            let _ = tx.send(reason);
        });
        Self {
            stop,
            console_path,
            finished,
        }
    }

    /// Waits until a console line contains `wanted`; returns it.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console_path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(wanted)) {
                return line.trim().to_owned();
            }
            if std::time::Instant::now() >= deadline {
                self.stop
                    .stop(vmm::vcpu::StopReason::InternalError("test timeout".into()));
                panic!("no {wanted:?} in {timeout:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the guest and waits for its threads.
    fn stop(self) {
        self.stop
            .stop(vmm::vcpu::StopReason::InternalError("test done".into()));
        let _ = self.finished.recv_timeout(Duration::from_secs(30));
    }
}

#[test]
fn kvm_virtio_net_two_guests_on_a_direct_pair_ping_each_other() {
    if !tests::require_kvm() {
        return;
    }
    let s = Scratch::new("net");
    let (a, b) = vmm::devices::virtio::net::pair().expect("pair");
    let up = |addr: &str| {
        format!("ip link set lo up && ip addr add {addr}/24 dev eth0 && ip link set eth0 up")
    };
    let pinger = format!(
        "{} && for i in $(seq 1 120); do ping -c 1 -W 1 10.0.0.2 >/dev/null && break; done; \
         ping -c 3 -W 2 10.0.0.2 | grep -E -o [0-9]+.packets.received",
        up("10.0.0.1")
    );
    let answerer = format!("{} && echo answerer-up && sleep 3600", up("10.0.0.2"));
    // One guest boots at a time: two booting at once on a loaded 2-core
    // machine in the emulated KVM host starved one of them past its bound.
    let g_b = LibGuest::start([2, 0, 0, 0, 0, 0xb], b, &answerer, s.path("b.txt"));
    g_b.wait_for("answerer-up", BOOT_TIMEOUT + AFTER_READY);
    let g_a = LibGuest::start([2, 0, 0, 0, 0, 0xa], a, &pinger, s.path("a.txt"));
    let received = g_a.wait_for("packets received", BOOT_TIMEOUT + AFTER_READY);
    assert_eq!(received, "3 packets received");
    g_a.wait_for(&format!("{EXIT_MARKER_PREFIX}0"), AFTER_READY);
    g_a.stop();
    g_b.stop();
}
