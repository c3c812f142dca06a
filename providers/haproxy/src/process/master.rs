//! HAProxy's master CLI: commands, and reading its answers (`show proc`,
//! the alerts of a refused reload).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Sends `cmds` (commands separated by `; `, each one the master's or one
/// a worker's `@!<pid> ` prefix sends on) to HAProxy's master CLI and
/// returns every answer: a trailing `quit` makes the master close the
/// connection once they are written.
pub async fn master_batch(socket: &Path, cmds: &str) -> std::io::Result<String> {
    let io = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(format!("{cmds}; quit\n").as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "master CLI timed out"))?
}

/// Sends one command to HAProxy's master CLI and returns its answer, which
/// ends at an empty line (the master does not always close the connection).
pub async fn master_command(socket: &Path, cmd: &str) -> std::io::Result<String> {
    let io = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\n\n") {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "master CLI timed out"))?
}

/// Whether the HAProxy behind `socket` has a current worker (one listed
/// before the old workers that are still draining).
///
/// # Errors
/// Why it does not: no master answering, or no worker.
pub async fn serving(socket: &Path) -> Result<(), String> {
    let out = master_command(socket, "show proc").await.map_err(|e| {
        format!(
            "haproxy's master at {} does not answer: {e}",
            socket.display()
        )
    })?;
    if current_workers(&out) > 0 {
        Ok(())
    } else {
        Err("haproxy has no worker serving".into())
    }
}

/// The pids of the old workers in `show proc`'s answer: those still
/// carrying connections of a configuration a reload replaced (the master
/// CLI reaches each with an `@!<pid>` prefix).
pub fn old_workers(show_proc: &str) -> Vec<u32> {
    show_proc
        .lines()
        .skip_while(|l| !l.starts_with("# old workers"))
        .take_while(|l| !l.starts_with("# programs"))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let pid = cols.next()?.parse().ok()?;
            (cols.next() == Some("worker")).then_some(pid)
        })
        .collect()
}

pub(super) fn current_workers(show_proc: &str) -> usize {
    show_proc
        .lines()
        .take_while(|l| !l.starts_with("# old workers"))
        .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
        .count()
}

/// From `show proc`: `<pid> master <reloads> [failed: <n>] ...`.
/// The master's pid from `show proc`.
pub(super) fn master_pid(out: &str) -> Option<u32> {
    out.lines()
        .find(|l| l.contains("master"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn parse_master_line(out: &str) -> Option<(u64, u64)> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    let mut words = line.split_whitespace().skip(2);
    let reloads = words.next()?.parse().ok()?;
    let failed = line
        .split("failed:")
        .nth(1)?
        .trim()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .split(']')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((reloads, failed))
}

/// `line` without the process id HAProxy prints after its level
/// (`[ALERT]    (1234) : …`): a message quoting it would differ on every
/// attempt for the same cause, and each change of a Service's status
/// triggers another reconcile, around the backoff.
pub(super) fn without_pid(line: &str) -> String {
    let line = line.trim();
    let Some(rest) = line.strip_prefix("[ALERT]") else {
        return line.to_owned();
    };
    let rest = rest.trim_start();
    let said = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .filter(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit()))
        .map_or(rest, |(_, after)| {
            after.trim_start().trim_start_matches(':').trim_start()
        });
    format!("[ALERT] {said}")
}

/// haproxy's `[ALERT]` lines from `haproxy -c`, bounded: at most 5 lines of
/// at most 300 bytes each, and how many more there were.
pub(super) fn alerts(stdout: &[u8], stderr: &[u8]) -> String {
    const LINES: usize = 5;
    const WIDTH: usize = 300;
    let (out, err) = (
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr),
    );
    let all: Vec<String> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("ALERT"))
        .map(without_pid)
        .collect();
    let mut shown: Vec<String> = all
        .iter()
        .take(LINES)
        .map(|l| match l.char_indices().nth(WIDTH) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => (*l).to_owned(),
        })
        .collect();
    if all.len() > LINES {
        shown.push(format!("and {} more", all.len() - LINES));
    }
    if shown.is_empty() {
        return "haproxy printed no alert".into();
    }
    shown.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_current_workers_only() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
            10              master          2 [failed: 0]   0d00h01m00s     2.6.12\n\
            # workers\n\
            31              worker          0               0d00h00m10s     2.6.12\n\
            # old workers\n\
            20              worker          1               0d00h00m50s     2.6.12\n\n";
        assert_eq!(current_workers(out), 1);
        assert_eq!(old_workers(out), vec![20]);
        assert!(old_workers(out.split("# old").next().unwrap()).is_empty());
        let with_programs = format!("{out}# programs\n40              dataplane       0\n");
        assert_eq!(old_workers(&with_programs), vec![20]);
        let draining_only = out.replace("31              worker", "# none");
        assert_eq!(current_workers(&draining_only), 0);
    }

    #[test]
    fn parses_show_proc() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                   20286           master          3 [failed: 1]   0d00h00m01s     2.6.12-1+deb12u4\n\
                   # workers\n20289           worker          0               0d00h00m01s     2.6.12\n";
        assert_eq!(parse_master_line(out), Some((3, 1)));
        assert_eq!(master_pid(out), Some(20286));
        assert_eq!(parse_master_line("garbage"), None);
    }

    #[test]
    fn alerts_are_bounded() {
        let many: String = (0..20)
            .map(|i| format!("[ALERT] {i}: {}\n", "z".repeat(1000)))
            .collect();
        let text = alerts(many.as_bytes(), b"");
        assert!(text.contains("and 15 more"), "{text}");
        assert!(text.len() < 5 * 310 + 20, "{}", text.len());
    }

    #[test]
    fn alerts_do_not_quote_the_process_id() {
        let say = |pid: u32| {
            alerts(
                format!("[NOTICE]   ({pid}) : haproxy version is 2.6.12\n[ALERT]    ({pid}) : config : parsing [h.cfg:7] : unknown keyword 'x'.\n").as_bytes(),
                b"",
            )
        };
        assert_eq!(say(41), say(4242), "the same cause, the same message");
        assert_eq!(
            say(41),
            "[ALERT] config : parsing [h.cfg:7] : unknown keyword 'x'."
        );
        assert_eq!(without_pid("[ALERT] (x) : odd"), "[ALERT] (x) : odd");
    }
}
