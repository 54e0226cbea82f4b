//! A network-namespace lab: N hosts on one machine, each a namespace with its own
//! address on a private bridge, with shaped links, its own modeld.
//!
//! ```text
//!  host 0 (ns mdXXXXh0)           bridge (ns mdXXXXb)            host 1 (ns mdXXXXh1)
//!  eth0 10.77.0.1/24  ── tbf ──>  mdXXXXp0 ─┐  br0  ┌─ mdXXXXp1  <── tbf ── eth0 10.77.0.2/24
//!                     <── tbf ──            └───────┘            ── tbf ──>
//! ```
//!
//! Each host's egress (upload) is shaped on its `eth0`; its ingress (download) on the
//! bridge side of its veth. The bridge lives in a namespace of its own, so nothing of
//! the lab touches the root namespace, and nothing is routed anywhere: the hosts can
//! reach each other and nothing else. A route for 224.0.0.0/4 lets mDNS work inside.
//!
//! Needs root and `ip`/`tc` (iproute2). Where it cannot run, [`Lab::new`] says why; with
//! `MODELD_CI` set (CI), that is a failure instead of a skip. Everything is torn down on
//! drop, test failure included; names are unique per run.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::Daemon;

/// A lab of hosts on one bridge.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    /// The hosts, in order.
    pub hosts: Vec<LabHost>,
    /// Other programs run in the hosts ([`Lab::spawn`]), killed with the lab.
    others: Vec<Child>,
    /// One lab at a time: each one loads both cores.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One host of the lab.
#[derive(Debug)]
pub struct LabHost {
    /// Its namespace.
    pub ns: String,
    /// The bridge-side name of its link.
    pub port: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its data dir.
    pub data: PathBuf,
    /// Its daemon, once started.
    pub daemon: Option<Daemon>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn tc(args: &[&str]) -> Result<(), String> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .map_err(|e| format!("tc {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether lab tests must run (CI) rather than skip.
pub fn required() -> bool {
    std::env::var_os("MODELD_CI").is_some()
}

/// Returns a lab, or `None` after saying loudly why it cannot run (and failing under CI).
pub fn lab_or_skip(hosts: usize, rate_mbit: u32) -> Option<Lab> {
    match Lab::new(hosts, rate_mbit) {
        Ok(lab) => Some(lab),
        Err(why) if !required() => {
            eprintln!("\n*** SKIPPING network-namespace lab test: {why} ***\n");
            None
        }
        Err(why) => panic!("the network-namespace lab cannot run under CI: {why}"),
    }
}

impl Lab {
    /// Builds a lab of `hosts` hosts whose links are shaped to `rate_mbit` each way.
    pub fn new(hosts: usize, rate_mbit: u32) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (network namespaces need it)".into());
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "md{:04x}{}",
            std::process::id() & 0xffff,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let guard = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut lab = Self {
            prefix: prefix.clone(),
            dir,
            hosts: Vec::new(),
            others: Vec::new(),
            _one_at_a_time: guard,
        };
        let bridge = lab.bridge_ns();
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "set", "lo", "up"])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let rate = format!("{rate_mbit}mbit");
        for i in 0..hosts {
            let ns = format!("{prefix}h{i}");
            let port = format!("{prefix}p{i}");
            let addr = Ipv4Addr::new(10, 77, 0, (i + 1) as u8);
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(LabHost {
                ns: ns.clone(),
                port: port.clone(),
                ip: addr,
                data: lab.dir.path().join(format!("host{i}")),
                daemon: None,
            });
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            let shape = [
                "root", "tbf", "rate", &rate, "burst", "256kb", "latency", "20ms",
            ];
            let mut up = vec!["-n", &ns, "qdisc", "add", "dev", "eth0"];
            up.extend(shape);
            tc(&up)?;
            let mut down = vec!["-n", &bridge, "qdisc", "add", "dev", &port];
            down.extend(shape);
            tc(&down)?;
        }
        Ok(lab)
    }

    fn bridge_ns(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// A directory for test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts host `i`'s modeld on its address, with extra flags.
    pub fn start(&mut self, i: usize, extra: &[&str]) {
        let h = &self.hosts[i];
        let listen = format!("{}:4810", h.ip);
        let p2p = format!("{}:4811", h.ip);
        let mut args: Vec<String> = ["--listen", &listen, "--p2p-listen", &p2p]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if !extra.contains(&"--mdns") {
            args.extend(["--mdns".to_owned(), "true".to_owned()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_in(&["ip", "netns", "exec", &h.ns], &h.data, &args);
        self.hosts[i].daemon = Some(daemon);
    }

    /// Host `i`'s daemon.
    pub fn daemon(&self, i: usize) -> &Daemon {
        self.hosts[i].daemon.as_ref().expect("daemon started")
    }

    /// Host `i`'s daemon, mutably.
    pub fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        self.hosts[i].daemon.as_mut().expect("daemon started")
    }

    /// A command that runs `program` in host `i`'s namespace.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns, program]);
        c
    }

    /// Starts `command` (from [`Lab::command`]); it is killed when the lab is dropped,
    /// or by [`Lab::kill_others`].
    pub fn spawn(&mut self, command: &mut Command) {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        self.others.push(child);
    }

    /// Kills what [`Lab::spawn`] started.
    pub fn kill_others(&mut self) {
        for mut c in self.others.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The bytes host `i` has sent on its link so far (frames: payload and headers).
    pub fn wire_sent(&self, i: usize) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.hosts[i].ns, "-s", "-j", "link", "show", "eth0"])
            .output()
            .expect("run ip");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("`ip -j` prints JSON");
        v[0]["stats64"]["tx"]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx byte count for host {i}: {v}"))
    }

    /// Packets the shaped links of host `i` have dropped so far: on its way out (its
    /// own `tbf`) and on its way in (the bridge side's, where many senders meet).
    pub fn drops(&self, i: usize) -> (u64, u64) {
        let dropped = |ns: &str, dev: &str| {
            let out = Command::new("tc")
                .args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev])
                .output()
                .expect("run tc");
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("`tc -j` prints JSON");
            v.as_array()
                .into_iter()
                .flatten()
                .filter(|q| q["kind"] == "tbf")
                .map(|q| q["drops"].as_u64().unwrap_or(0))
                .sum()
        };
        let h = &self.hosts[i];
        (dropped(&h.ns, "eth0"), dropped(&self.bridge_ns(), &h.port))
    }

    /// Cuts host `i` off the bridge (both directions).
    pub fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &self.hosts[i].port,
            "down",
        ])
        .expect("cut link");
    }

    /// Reconnects host `i`.
    pub fn restore(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &self.hosts[i].port,
            "up",
        ])
        .expect("restore link");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_others();
        let keep = std::env::var_os("MODELD_LAB_LOGS").map(PathBuf::from);
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if let Some(mut d) = h.daemon.take() {
                d.kill9();
                if let Some(dir) = &keep {
                    keep_log(&d, dir, i);
                }
            }
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}

/// Copies host `i`'s daemon log into `dir` (`MODELD_LAB_LOGS`: with
/// `MODELD_TEST_LOG=info,modeld_net::trace=debug` the logs say which piece went from
/// whom to whom and when; `scripts/lab-trace` reads them).
fn keep_log(daemon: &Daemon, dir: &Path, i: usize) {
    let to = dir.join(format!("host{i}.log"));
    let kept = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&to, daemon.log()));
    match kept {
        Ok(()) => eprintln!("lab: kept host {i}'s log in {}", to.display()),
        Err(e) => eprintln!(
            "lab: could not keep host {i}'s log in {}: {e}",
            to.display()
        ),
    }
}
