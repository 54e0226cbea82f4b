//! Benchmarks of modeld against baselines measured in the same run.
//!
//! - `hash`: hashing + outboard of a page-cached file (modeld's import hasher) against
//!   `b3sum --num-threads N` on the same file.
//! - `publish`: a whole `modelctl publish` of a file into a fresh store against `cp` of
//!   the same file onto the same file system (and `cp` followed by `sync`, since the
//!   store makes its data durable before recording it); plus modeld's peak RSS.
//!
//! Runs alternate between the contender and the baseline so drift on a shared machine
//! hits both alike; each figure is the median of the runs, with min and max. Run it with
//! `scripts/bench` (builds release binaries first). Results go in `docs/benchmarks.md`.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod fetch;

#[derive(Debug, Parser)]
#[command(about = "modeld benchmarks with same-run baselines")]
struct Args {
    /// Working directory (on the file system to measure); test files are made here.
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Directory holding release `modeld` and `modelctl` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Timed runs per contender.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Threads for hashing (ours and b3sum's).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Hash + outboard vs b3sum.
    Hash {
        /// File size in MiB.
        #[arg(long, default_value_t = 4096)]
        mib: u64,
    },
    /// modelctl publish vs cp; peak RSS of modeld.
    Publish {
        /// File sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
        mib: Vec<u64>,
    },
    /// modelctl fetch from 1 and 3 peers on loopback vs nginx + curl; peak RSS.
    Fetch {
        /// File sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
        mib: Vec<u64>,
        /// Cap each seed's upload (e.g. `100MiB`), as each seed's own link would on a
        /// real network; the curl baseline is then skipped.
        #[arg(long)]
        seed_upload_rate: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .to_owned(),
    };
    println!("machine: {} cores, {}", cores(), cpu_model());
    match args.what {
        What::Hash { mib } => bench_hash(&dir, mib, args.runs, args.threads),
        What::Publish { mib } => {
            for m in mib {
                bench_publish(&dir, &bin_dir, m, args.runs)?;
            }
            Ok(())
        }
        What::Fetch {
            mib,
            seed_upload_rate,
        } => {
            for m in mib {
                fetch::bench_fetch(&dir, &bin_dir, m, args.runs, seed_upload_rate.as_deref())?;
            }
            Ok(())
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A file of `mib` MiB of pseudo-random bytes, reused between runs of the benchmark.
pub(crate) fn test_file(dir: &Path, mib: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("input-{mib}MiB.bin"));
    if std::fs::metadata(&path).map(|m| m.len()).ok() == Some(mib << 20) {
        return Ok(path);
    }
    println!("writing {}", path.display());
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    sync();
    Ok(path)
}

/// Reads the file once so later runs find it page-cached.
pub(crate) fn warm(path: &Path) -> anyhow::Result<()> {
    let mut f = File::open(path)?;
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(())
}

pub(crate) fn sync() {
    let _ = Command::new("sync").status();
}

pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

pub(crate) fn time_command(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = cmd.stdout(Stdio::null()).status()?;
    let d = t.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(d)
}

fn bench_hash(dir: &Path, mib: u64, runs: usize, threads: usize) -> anyhow::Result<()> {
    let path = test_file(dir, mib)?;
    let size = mib << 20;
    warm(&path)?;
    let mut ours = Vec::new();
    let mut b3 = Vec::new();
    let mut hash = None;
    for _ in 0..runs {
        let src = File::open(&path)?;
        let ob = tempfile::tempfile_in(dir)?;
        let t = Instant::now();
        let h = modeld_store::compute_outboard(&src, size, &ob, threads)?;
        ours.push(gbps(size, t.elapsed()));
        hash = Some(h);
        let d = time_command(
            Command::new("b3sum")
                .args(["--num-threads", &threads.to_string()])
                .arg(&path),
        )
        .context("running b3sum (cargo install b3sum)")?;
        b3.push(gbps(size, d));
    }
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(&path)
        .output()?;
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ours_hex = hash.map(|h| h.to_string()).unwrap_or_default();
    if theirs != ours_hex {
        bail!("hash mismatch: modeld {ours_hex}, b3sum {theirs}");
    }
    let (o, b) = (stats(ours), stats(b3));
    println!("\n## hash + outboard, {mib} MiB page-cached file, {threads} threads, {runs} runs");
    println!("| contender | median GB/s | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| modeld hash + outboard | {:.2} | {:.2} | {:.2} |",
        o.median, o.min, o.max
    );
    println!(
        "| b3sum --num-threads {threads} | {:.2} | {:.2} | {:.2} |",
        b.median, b.min, b.max
    );
    println!(
        "ratio (median modeld / median b3sum): {:.2}x",
        o.median / b.median
    );
    Ok(())
}

fn bench_publish(dir: &Path, bin_dir: &Path, mib: u64, runs: usize) -> anyhow::Result<()> {
    let modeld = bin_dir.join("modeld");
    let modelctl = bin_dir.join("modelctl");
    for b in [&modeld, &modelctl] {
        if !b.exists() {
            bail!(
                "{} not found: run `cargo build --release` (scripts/bench does)",
                b.display()
            );
        }
    }
    let path = test_file(dir, mib)?;
    let size = mib << 20;
    let model = dir.join(format!("model-{mib}"));
    let _ = std::fs::remove_dir_all(&model);
    std::fs::create_dir_all(&model)?;
    std::fs::hard_link(&path, model.join("weights.bin"))?;
    let key = dir.join("bench.key");
    let _ = std::fs::remove_file(&key);
    let out = Command::new(&modelctl)
        .args(["key", "generate"])
        .arg(&key)
        .stderr(Stdio::null())
        .output()?;
    let public = String::from_utf8(out.stdout)?.trim().to_owned();

    let mut ours = Vec::new();
    let mut cp = Vec::new();
    let mut cp_sync = Vec::new();
    let mut rss = Vec::new();
    for run in 0..runs {
        // Alternate which contender goes first, and let the disk settle (deleting a
        // multi-GiB file on a file system mounted with `discard` keeps it busy) so that
        // neither inherits the other's background work.
        for contender in [run % 2, 1 - run % 2] {
            warm(&path)?;
            settle();
            if contender == 0 {
                let dest = dir.join("cp-copy.bin");
                let d = time_command(
                    Command::new("cp")
                        .arg("--reflink=never")
                        .arg(&path)
                        .arg(&dest),
                )?;
                cp.push(gbps(size, d));
                let t = Instant::now();
                sync();
                cp_sync.push(gbps(size, d + t.elapsed()));
                std::fs::remove_file(&dest)?;
            } else {
                let (speed, peak) =
                    publish_once(dir, &modeld, &modelctl, &model, &key, &public, size)?;
                ours.push(speed);
                rss.push(peak);
            }
        }
    }
    let (o, c, cs, r) = (stats(ours), stats(cp), stats(cp_sync), stats(rss));
    println!("\n## publish of one {mib} MiB page-cached file into a fresh store, {runs} runs");
    println!("| contender | median GB/s | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| modelctl publish (hash, copy, fsync, sign, index) | {:.2} | {:.2} | {:.2} |",
        o.median, o.min, o.max
    );
    println!(
        "| cp --reflink=never | {:.2} | {:.2} | {:.2} |",
        c.median, c.min, c.max
    );
    println!(
        "| cp then sync | {:.2} | {:.2} | {:.2} |",
        cs.median, cs.min, cs.max
    );
    println!(
        "ratio vs cp: {:.2}x; vs cp+sync: {:.2}x",
        o.median / c.median,
        o.median / cs.median
    );
    println!(
        "modeld peak RSS (VmHWM): median {:.1} MiB, max {:.1} MiB",
        r.median, r.max
    );
    Ok(())
}

/// Flushes everything and gives the disk a moment to finish background work.
pub(crate) fn settle() {
    sync();
    std::thread::sleep(Duration::from_secs(3));
}

/// One `modelctl publish` into a fresh store; returns GB/s and modeld's peak RSS.
fn publish_once(
    dir: &Path,
    modeld: &Path,
    modelctl: &Path,
    model: &Path,
    key: &Path,
    public: &str,
    size: u64,
) -> anyhow::Result<(f64, f64)> {
    let data = dir.join("bench-node");
    let _ = std::fs::remove_dir_all(&data);
    let mut daemon = Command::new(modeld)
        .arg("--data-dir")
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()?;
    let ctl = |args: &[&str]| {
        let mut c = Command::new(modelctl);
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.join("daemon.json").exists() {
        if Instant::now() > deadline {
            bail!("modeld did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    time_command(ctl(&["trust", "add", public]).stderr(Stdio::null()))?;
    let d = time_command(
        ctl(&[
            "publish",
            model.to_str().context("utf-8 path")?,
            "--name",
            "bench/m",
            "--version",
            "1",
            "--key",
            key.to_str().context("utf-8 path")?,
        ])
        .stderr(Stdio::null()),
    )?;
    let peak = peak_rss_mib(daemon.id())?;
    terminate(daemon.id());
    daemon.wait()?;
    std::fs::remove_dir_all(&data)?;
    Ok((gbps(size, d), peak))
}

/// Peak resident set of a process, from /proc (VmHWM), in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmHWM")?
        .parse()?;
    Ok(kb / 1024.0)
}

pub(crate) fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}
