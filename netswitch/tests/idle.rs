//! Idle endpoints must sleep, not spin. In its own test binary so no other
//! test's CPU use is counted.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use netswitch::endpoint::{EndpointConfig, HostEndpoint};
use netswitch::{Switch, SwitchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

fn config(address: Ipv4Addr, buffer: usize) -> EndpointConfig {
    EndpointConfig {
        address,
        tcp_rx_buffer: buffer,
        tcp_tx_buffer: buffer,
        ..EndpointConfig::default()
    }
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').context("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_endpoints_with_open_connections_do_not_spin() -> Result<()> {
        let switch = Switch::new(SwitchConfig::default())?;
        let host = HostEndpoint::spawn(switch.add_port(), config(HOST, 8192))?;
        let guest = HostEndpoint::spawn(switch.add_port(), config(GUEST, 8192))?;
        let listener = host.listen(22)?;
        let mut client = guest.connect(HOST, 22).await?;
        let mut server = listener.accept().await?;
        client.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = cpu_time()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_time()? - before;
        ensure!(
            used < Duration::from_millis(200),
            "idle endpoints used {used:?} of CPU in 2 s"
        );
        Ok(())
    }
}
