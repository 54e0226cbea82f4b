//! The test harness: start real `modeld` processes, drive them with `modelctl`, make
//! seeded test data, and check hashes with real external tools.
//!
//! The binaries are found next to the test executable (`target/<profile>/`), or in
//! `$MODELD_BIN_DIR`. `cargo test --workspace` builds them (the binary crates have
//! integration tests of their own, which makes cargo build them first).

pub mod lab;
pub mod models;
pub mod peers;

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The path of a workspace binary (`modeld`, `modelctl`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MODELD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("test executable lives in target/<profile>/deps")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace`, which `cargo test --workspace` does), or set MODELD_BIN_DIR",
        path.display()
    );
    path
}

/// A running `modeld` with its own data dir. Stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct Daemon {
    data_dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// A command that runs modeld (such as `ip netns exec NS`), if any.
    prefix: Vec<String>,
}

impl Daemon {
    /// Starts a daemon on `data_dir` (created if needed) and waits until its API answers.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Daemon::start`], with extra `modeld` flags.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_in(&[], data_dir, args)
    }

    /// Like [`Daemon::start_with`], run under `prefix` (e.g. `ip netns exec NS`).
    pub fn start_in(prefix: &[&str], data_dir: &Path, args: &[&str]) -> Self {
        let mut d = Self {
            data_dir: data_dir.to_owned(),
            child: None,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("create data dir");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.data_dir.join("test-modeld.log"))
            .expect("open daemon log");
        // Loopback only, ports of the kernel's choosing, no multicast, unless the test
        // says otherwise (the network-namespace lab does).
        let mut listen: Vec<&str> = Vec::new();
        for (flag, value) in [
            ("--listen", "127.0.0.1:0"),
            ("--p2p-listen", "127.0.0.1:0"),
            ("--mdns", "false"),
        ] {
            if !self.extra_args.iter().any(|a| a == flag) {
                listen.extend([flag, value]);
            }
        }
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("modeld"));
                c
            }
            None => Command::new(bin("modeld")),
        };
        let child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(listen)
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("MODELD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start modeld");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("modeld exited early ({status}); log:\n{}", self.log());
            }
            if self.data_dir.join("daemon.json").exists() && self.ctl(&["status"]).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "modeld did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `NODE_ID@IP:PORT` of this daemon's data plane, for `--peer`.
    pub fn peer_addr(&self) -> String {
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data_dir.join("daemon.json")).expect("daemon.json"),
        )
        .expect("daemon.json is JSON");
        format!(
            "{}@{}",
            info["node_id"].as_str().expect("node_id"),
            info["listen"]["quic"].as_str().expect("quic address")
        )
    }

    /// `NODE_ID@IP:PORT` of this daemon's control plane, for `--bootstrap`.
    pub fn bootstrap_addr(&self) -> String {
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data_dir.join("daemon.json")).expect("daemon.json"),
        )
        .expect("daemon.json is JSON");
        let p2p = info["listen"]["p2p"].as_str().expect("p2p address");
        // /ip4/A.B.C.D/tcp/PORT
        let parts: Vec<&str> = p2p.split('/').collect();
        format!(
            "{}@{}:{}",
            info["node_id"].as_str().expect("node_id"),
            parts[2],
            parts[4]
        )
    }

    /// The daemon's counters (from `modelctl status`).
    pub fn counter(&self, name: &str) -> u64 {
        self.ctl_json(&["status"])["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("test-modeld.log")).unwrap_or_default()
    }

    /// Runs `modelctl --data-dir <ours> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        modelctl(&self.data_dir, args)
    }

    /// Runs modelctl and asserts success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "modelctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs modelctl with `--json`, asserts success, parses stdout.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut v = vec!["--json"];
        v.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&v)).expect("modelctl printed JSON")
    }

    /// Runs modelctl, asserts failure, returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "modelctl {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Stops with SIGTERM and waits; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills with SIGKILL (no chance to clean up) and waits.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the daemon again after [`Daemon::kill9`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Runs `modelctl --data-dir DIR ARGS`.
pub fn modelctl(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("modelctl"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run modelctl")
}

/// Writes `size` seeded pseudo-random bytes to `path`, streaming (flat memory).
///
/// A `.safetensors` path gets a valid safetensors file of that exact size (one `U8`
/// tensor of random bytes), since modeld holds files of that name to the format.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create file"));
    let mut left = size;
    if path.extension().is_some_and(|e| e == "safetensors") {
        let header = safetensors_header(size);
        out.write_all(&header).expect("write");
        left -= header.len() as u64;
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    out.flush().expect("flush");
}

/// The length prefix and space-padded header of a safetensors file of `size` bytes
/// holding one `U8` tensor.
fn safetensors_header(size: u64) -> Vec<u8> {
    let mut hlen = 0u64;
    loop {
        let data = size
            .checked_sub(8 + hlen)
            .expect("file too small for safetensors");
        let mut h =
            format!(r#"{{"weight":{{"dtype":"U8","shape":[{data}],"data_offsets":[0,{data}]}}}}"#)
                .into_bytes();
        if h.len() as u64 > hlen {
            hlen = (h.len() as u64).next_multiple_of(8);
            continue;
        }
        h.resize(hlen as usize, b' ');
        let mut out = hlen.to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        return out;
    }
}

/// The BLAKE3 of a file according to an independent tool: `b3sum` if installed,
/// else the `blake3` Python package. Panics if neither is available, since a test
/// that cannot compare against a reference must not pass.
pub fn reference_b3sum(path: &Path) -> String {
    if let Ok(out) = Command::new("b3sum").arg("--no-names").arg(path).output()
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    let script = "import sys, blake3\nh = blake3.blake3()\nf = open(sys.argv[1], 'rb')\nwhile True:\n    b = f.read(1 << 20)\n    if not b: break\n    h.update(b)\nprint(h.hexdigest())";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "neither `b3sum` nor the Python `blake3` package is available (pip install blake3): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The arguments of `modelctl publish DIR --name NAME --version VERSION --key KEY`.
pub fn publish_args<'a>(
    dir: &'a str,
    name: &'a str,
    version: &'a str,
    key: &'a str,
) -> [&'a str; 8] {
    [
        "publish",
        dir,
        "--name",
        name,
        "--version",
        version,
        "--key",
        key,
    ]
}

/// Generates a publisher key file in `dir` and trusts it on `daemon` for `scope`;
/// returns the key file and the public key text.
pub fn trusted_key(daemon: &Daemon, dir: &Path, scope: &str) -> (PathBuf, String) {
    let file = dir.join(format!("publisher-{}.key", rand_suffix()));
    let public = daemon.ctl_ok(&["key", "generate", file.to_str().expect("utf-8 path")]);
    let public = public.trim().to_owned();
    daemon.ctl_ok(&["trust", "add", &public, "--scope", scope]);
    (file, public)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 20 | N.fetch_add(1, Ordering::Relaxed)
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
