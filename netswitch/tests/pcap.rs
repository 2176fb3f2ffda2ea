//! A capture of real endpoint traffic parses back (in Rust and with tshark)
//! and holds the ARP and TCP frames, full-size frames uncut.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use netswitch::endpoint::{EndpointConfig, HostEndpoint};
use netswitch::pcap::PcapRecord;
use netswitch::{Switch, SwitchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("netswitch-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs a short TCP exchange between two endpoints and returns the capture.
async fn capture_exchange(path: &Path) -> Result<()> {
    let switch = Switch::new(SwitchConfig::default())?;
    switch.capture_to(path)?;
    let host = HostEndpoint::spawn(switch.add_port(), EndpointConfig::default())?;
    let guest_config = EndpointConfig {
        address: GUEST,
        ..EndpointConfig::default()
    };
    let guest = HostEndpoint::spawn(switch.add_port(), guest_config)?;
    let listener = host.listen(445)?;
    let mut client = guest.connect(HOST, 445).await?;
    let mut server = listener.accept().await?;
    let payload = vec![0x5a; 64 * 1024];
    client.write_all(&payload).await?;
    client.shutdown().await?;
    let mut got = Vec::new();
    server.read_to_end(&mut got).await?;
    ensure!(got == payload, "payload corrupted");
    switch.finish_capture()?;
    Ok(())
}

fn ethertype(record: &PcapRecord) -> u16 {
    u16::from_be_bytes([record.data[12], record.data[13]])
}

fn is_tcp(record: &PcapRecord) -> bool {
    ethertype(record) == 0x0800 && record.data.len() > 34 && record.data[23] == 6
}

/// The MSS option of a SYN segment, if the record is one.
fn syn_mss(record: &PcapRecord) -> Option<u16> {
    if !is_tcp(record) {
        return None;
    }
    let ihl = usize::from(record.data[14] & 0x0f) * 4;
    let tcp = record.data.get(14 + ihl..)?;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if tcp[13] & 0x02 == 0 {
        return None;
    }
    let mut options = tcp.get(20..data_offset)?;
    while let [kind, rest @ ..] = options {
        match kind {
            0 => return None,
            1 => options = rest,
            2 => return Some(u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?])),
            _ => options = rest.get(usize::from(*rest.first()?).checked_sub(1)?..)?,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capture_holds_arp_and_tcp_with_full_size_frames() -> Result<()> {
        let dir = scratch_dir("pcap-rust")?;
        let path = dir.join("run.pcap");
        capture_exchange(&path).await?;
        let records = netswitch::pcap::parse(&std::fs::read(&path)?)?;
        let arp = records.iter().filter(|r| ethertype(r) == 0x0806).count();
        let tcp = records.iter().filter(|r| is_tcp(r)).count();
        ensure!(arp >= 2, "expected ARP request and reply, found {arp}");
        ensure!(tcp >= 40, "expected a TCP exchange, found {tcp} segments");
        let full = records.iter().filter(|r| r.data.len() == 1514).count();
        ensure!(
            full >= 40,
            "64 KiB should travel in 1514-byte frames, found {full}"
        );
        ensure!(records.iter().all(|r| r.data.len() <= 1514));
        let mss: Vec<u16> = records.iter().filter_map(syn_mss).collect();
        ensure!(
            mss == [1460, 1460],
            "SYN and SYN-ACK must announce MSS 1460: {mss:?}"
        );
        ensure!(records.windows(2).all(|w| w[0].time <= w[1].time));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capture_is_read_by_tshark() -> Result<()> {
        let version = std::process::Command::new("tshark")
            .arg("--version")
            .output();
        if version.is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tshark is required under CI (apt-get install tshark)"
            );
            println!("skipped: tshark not installed");
            return Ok(());
        }
        let dir = scratch_dir("pcap-tshark")?;
        let path = dir.join("run.pcap");
        capture_exchange(&path).await?;
        let count = |filter: &str| -> Result<usize> {
            let out = std::process::Command::new("tshark")
                .args(["-n", "-r"])
                .arg(&path)
                .args(["-Y", filter])
                .output()
                .context("running tshark")?;
            ensure!(
                out.status.success(),
                "tshark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).lines().count())
        };
        ensure!(count("arp.opcode == 1")? >= 1, "tshark sees no ARP request");
        ensure!(count("arp.opcode == 2")? >= 1, "tshark sees no ARP reply");
        ensure!(count("tcp.flags.syn == 1 && tcp.options.mss_val == 1460")? == 2);
        ensure!(count("tcp.port == 445 && tcp.len == 1460")? >= 40);
        ensure!(count("_ws.malformed || tcp.analysis.retransmission")? == 0);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
