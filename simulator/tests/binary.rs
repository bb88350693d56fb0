//! The `batchgate-sim` binary: its listening line, SIGTERM, bind checks and
//! fault flags.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_batchgate-sim");

/// Kills the simulator when a failed assertion ends the test early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn binary_announces_url_and_stops_on_sigterm() {
    let child = Command::new(BINARY)
        .args(["--port", "0", "--validating-secs", "0.5", "--seed", "3"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start batchgate-sim");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .expect("read the listening line");

    let base_url = first_line
        .trim_end()
        .strip_prefix("batchgate-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .to_owned();
    let address = base_url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("base URL {base_url} is not on 127.0.0.1"));
    let port: u16 = address.parse().expect("port number");

    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /_sim/config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "response {response}");
    assert!(
        response.contains(r#""validating_ms":500"#),
        "response {response}"
    );
    assert!(response.contains(r#""seed":3"#), "response {response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("poll the child") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "batchgate-sim did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn binary_rejects_non_loopback_bind() {
    let output = Command::new(BINARY)
        .args(["--bind", "0.0.0.0", "--port", "0"])
        .env_remove("BATCHGATE_SIM_ALLOW_NON_LOOPBACK")
        .output()
        .expect("run batchgate-sim");

    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing is announced on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "stderr {stderr}");
}

#[test]
fn binary_rejects_invalid_ratio() {
    let output = Command::new(BINARY)
        .args(["--failure-ratio", "1.5"])
        .output()
        .expect("run batchgate-sim");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1.5"), "stderr {stderr}");
}

/// Starts the binary with `args` and returns it with the port it announced.
fn start_binary(args: &[&str]) -> (ChildGuard, u16) {
    let child = Command::new(BINARY)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start batchgate-sim");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .expect("read the listening line");
    let port = first_line
        .trim_end()
        .strip_prefix("batchgate-sim listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .parse()
        .expect("port number");
    (child, port)
}

/// Sends a GET with extra header lines and returns the raw response.
fn raw_get(port: u16, path: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

#[test]
fn binary_applies_fault_flags() {
    let (_child, port) = start_binary(&[
        "--port",
        "0",
        "--rate-limit-requests",
        "1",
        "--retry-after-secs",
        "5",
        "--server-error-status",
        "502",
        "--expire-after-secs",
        "2.5",
        "--anthropic-cache-read-ratio",
        "0.5",
    ]);

    let faults = raw_get(port, "/_sim/faults", "");
    assert!(faults.starts_with("HTTP/1.1 200"), "response {faults}");
    assert!(faults.contains(r#""expire_after_ms":2500"#), "{faults}");
    assert!(faults.contains(r#""server_error_status":502"#), "{faults}");
    let config = raw_get(port, "/_sim/config", "");
    assert!(
        config.contains(r#""anthropic_cache_read_ratio":0.5"#),
        "{config}"
    );

    let auth = "Authorization: Bearer sk-test\r\n";
    let limited = raw_get(port, "/v1/batches", auth);
    assert!(limited.starts_with("HTTP/1.1 429"), "response {limited}");
    assert!(
        limited.to_ascii_lowercase().contains("retry-after: 5\r\n"),
        "response {limited}"
    );
    let normal = raw_get(port, "/v1/batches", auth);
    assert!(normal.starts_with("HTTP/1.1 200"), "response {normal}");
}

#[test]
fn binary_rejects_invalid_server_error_status() {
    let output = Command::new(BINARY)
        .args(["--server-error-status", "504"])
        .output()
        .expect("run batchgate-sim");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("504"), "stderr {stderr}");
}
