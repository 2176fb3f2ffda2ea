//! Runs every smbtorture test listed in `tests/smbtorture-pass.txt` against
//! the server and fails if any of them does not pass. The list holds the
//! tests judged one by one to pass (see SMB2-NOTES sec. 7); a test leaves
//! it only with a reason in the commit. Prints `skipped: ...` without
//! smbtorture (fails under CI=true).

mod common;

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::common::*;

    /// Longest one smbtorture test may run.
    const TEST_TIMEOUT: Duration = Duration::from_secs(120);

    fn run_one(tool: &std::path::Path, port: u16, name: &str) -> Result<(), String> {
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let mut child = Command::new(tool)
            .args([
                "//127.0.0.1/xchg",
                "-p",
                &port.to_string(),
                "-U",
                "guest%",
                name,
            ])
            .stdin(Stdio::null())
            .stdout(log.reopen().map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if start.elapsed() > TEST_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = std::fs::read_to_string(log.path()).map_err(|e| e.to_string())?;
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let passed = out.lines().any(|l| l == format!("success: {leaf}"));
        let failed = out
            .lines()
            .any(|l| l.starts_with("failure:") || l.starts_with("error:"));
        if passed && !failed {
            Ok(())
        } else {
            Err(out
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    #[test]
    fn smbtorture_listed_tests_pass() {
        let Some(tool) = require_tool("smbtorture") else {
            return;
        };
        let list = include_str!("smbtorture-pass.txt");
        let names: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(!names.is_empty());
        let shares = Shares::new();
        let port = spawn_server(shares.config());
        let mut failures = Vec::new();
        for name in &names {
            if let Err(why) = run_one(&tool, port, name) {
                failures.push(format!("{name}:\n{why}"));
            }
        }
        println!(
            "smbtorture: {} passed, {} failed",
            names.len() - failures.len(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "failing smbtorture tests:\n{}",
            failures.join("\n\n")
        );
    }
}
