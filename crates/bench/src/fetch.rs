//! Fetch benchmark: `modelctl fetch` of one file on loopback from 1 and from 3 seeds,
//! against the strongest plain HTTP transfer of the same file: nginx (sendfile, no
//! TLS, no verification) to `curl -o` on the same disk.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{gbps, peak_rss_mib, settle, stats, terminate, test_file, time_command, warm};

/// A release modeld on its own data dir, on loopback.
struct Node {
    child: Child,
    data: PathBuf,
    modelctl: PathBuf,
}

impl Node {
    fn start(modeld: &Path, modelctl: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(data);
        let child = Command::new(modeld)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !data.join("daemon.json").exists() {
            if Instant::now() > deadline {
                bail!("modeld did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            data: data.to_owned(),
            modelctl: modelctl.to_owned(),
        })
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.modelctl);
        c.arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .stderr(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctl(args).output()?;
        if !out.status.success() {
            bail!("modelctl {args:?} failed");
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    fn peer(&self) -> anyhow::Result<String> {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data.join("daemon.json"))?)?;
        Ok(format!(
            "{}@{}",
            info["node_id"].as_str().context("node_id")?,
            info["listen"]["quic"].as_str().context("quic")?
        ))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        terminate(self.child.id());
        self.child.wait()?;
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            p = prefix.display(),
            root = dir.display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&prefix)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

pub(crate) fn bench_fetch(
    dir: &Path,
    bin_dir: &Path,
    mib: u64,
    runs: usize,
    seed_rate: Option<&str>,
) -> anyhow::Result<()> {
    let modeld = bin_dir.join("modeld");
    let modelctl = bin_dir.join("modelctl");
    let path = test_file(dir, mib)?;
    let name = path
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .into_owned();
    let size = mib << 20;
    let model = dir.join(format!("model-{mib}"));
    if !model.join("weights.bin").exists() {
        std::fs::create_dir_all(&model)?;
        std::fs::hard_link(&path, model.join("weights.bin"))?;
    }
    let key = dir.join("bench.key");
    if !key.exists() {
        Command::new(&modelctl)
            .args(["key", "generate"])
            .arg(&key)
            .stderr(Stdio::null())
            .output()?;
    }
    let public = String::from_utf8(
        Command::new(&modelctl)
            .args(["key", "show"])
            .arg(&key)
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let k = key.to_str().context("utf-8")?;
    let m = model.to_str().context("utf-8")?;

    println!("setting up 3 seeds with {mib} MiB each");
    let mut seeds = Vec::new();
    let mut manifest = PathBuf::new();
    for i in 0..3 {
        let cap: Vec<&str> = seed_rate
            .map(|r| vec!["--upload-rate", r])
            .unwrap_or_default();
        let seed = Node::start(&modeld, &modelctl, &dir.join(format!("seed{i}")), &cap)?;
        seed.ok(&["trust", "add", &public])?;
        if i == 0 {
            let id = seed.ok(&[
                "publish",
                m,
                "--name",
                "bench/m",
                "--version",
                "1",
                "--key",
                k,
            ])?;
            manifest = dir.join("bench-manifest.json");
            std::fs::write(&manifest, seed.ok(&["manifest", "show", &id, "--raw"])?)?;
        } else {
            seed.ok(&[
                "publish",
                m,
                "--name",
                "bench/mirror",
                "--version",
                "1",
                "--key",
                k,
            ])?;
            seed.ok(&[
                "manifest",
                "add",
                manifest.to_str().context("utf-8")?,
                "--pin",
            ])?;
        }
        seeds.push(seed);
    }
    let peers: Vec<String> = seeds.iter().map(Node::peer).collect::<Result<_, _>>()?;
    let port = free_port()?;
    let mut nginx = start_nginx(dir, port)?;
    let url = format!("http://127.0.0.1:{port}/{name}");
    let contenders: &[usize] = if seed_rate.is_some() {
        &[1, 2]
    } else {
        &[0, 1, 2]
    };

    let mut curl = Vec::new();
    let mut one = Vec::new();
    let mut three = Vec::new();
    let mut rss = Vec::new();
    for run in 0..runs {
        for contender in contenders
            .iter()
            .cycle()
            .skip(run % contenders.len())
            .take(contenders.len())
        {
            warm(&path)?;
            settle();
            match contender {
                0 => {
                    let dest = dir.join("curl-out.bin");
                    let d =
                        time_command(Command::new("curl").args(["-s", "-o"]).arg(&dest).arg(&url))?;
                    if std::fs::metadata(&dest)?.len() != size {
                        bail!("curl fetched a wrong size");
                    }
                    curl.push(gbps(size, d));
                    std::fs::remove_file(&dest)?;
                }
                n => {
                    let leech = Node::start(&modeld, &modelctl, &dir.join("leech"), &[])?;
                    leech.ok(&["trust", "add", &public])?;
                    let mut args = vec!["fetch", manifest.to_str().context("utf-8")?];
                    let count = if *n == 1 { 1 } else { 3 };
                    for p in &peers[..count] {
                        args.extend(["--peer", p.as_str()]);
                    }
                    let d = time_command(&mut leech.ctl(&args))?;
                    rss.push(peak_rss_mib(leech.child.id())?);
                    if count == 1 {
                        one.push(gbps(size, d));
                    } else {
                        three.push(gbps(size, d));
                    }
                    leech.stop()?;
                    std::fs::remove_dir_all(dir.join("leech"))?;
                }
            }
        }
    }
    // SIGQUIT: nginx's graceful stop, which takes its workers along.
    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(nginx.id().to_string())
        .status();
    let _ = nginx.wait();
    for s in seeds {
        s.stop()?;
    }
    if curl.is_empty() {
        curl.push(f64::NAN);
    }
    let (c, o, t, r) = (stats(curl), stats(one), stats(three), stats(rss));
    println!(
        "\n## fetch of one {mib} MiB file on loopback, {runs} runs{}",
        seed_rate
            .map(|r| format!(", each seed's upload capped at {r}/s"))
            .unwrap_or_default()
    );
    println!("| contender | median GB/s | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| nginx -> curl -o (HTTP, no TLS, no verification) | {:.2} | {:.2} | {:.2} |",
        c.median, c.min, c.max
    );
    println!(
        "| modelctl fetch, 1 peer | {:.2} | {:.2} | {:.2} |",
        o.median, o.min, o.max
    );
    println!(
        "| modelctl fetch, 3 peers | {:.2} | {:.2} | {:.2} |",
        t.median, t.min, t.max
    );
    println!(
        "ratios vs curl: 1 peer {:.2}x, 3 peers {:.2}x; 3 peers vs 1 peer {:.2}x",
        o.median / c.median,
        t.median / c.median,
        t.median / o.median
    );
    println!(
        "fetching modeld peak RSS (VmHWM): median {:.1} MiB, max {:.1} MiB",
        r.median, r.max
    );
    Ok(())
}
