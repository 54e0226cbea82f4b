//! `modeld-sim SCENARIO.toml [--out DIR] [--piece SIZE] [--seed N | --seeds LIST]`:
//! runs a scenario and writes `<name>.csv`, `<name>.svg` and `<name>.md` to DIR
//! (default `docs/simulations`), printing the summary. With `--seeds`, it runs once
//! per seed (several at once, one per CPU) and adds `<name>-seeds.md`, a table of all
//! the runs: one draw of a random swarm is not a result.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use modeld_sim::{
    Bound, Stats, lower_bound, report,
    scenario::{self, Scenario},
    setup, stats,
    swarm::Swarm,
};

/// A large run allocates and frees hundreds of millions of small have-maps and
/// requests: mimalloc, keeping freed memory for reuse (see `modeld_alloc`).
#[global_allocator]
static ALLOCATOR: modeld_alloc::MiMalloc = modeld_alloc::MiMalloc;

/// What one run gives the table of a multi-seed run.
struct Ran {
    seed: u64,
    stats: Stats,
    bound: Bound,
    model_bytes: u64,
    wall: Duration,
}

/// Runs `sc` (with `piece` overriding its piece size) on up to `threads` threads,
/// writes NAME.{csv,svg,md} to `out` and prints the summary.
fn run(
    sc: &Scenario,
    piece: Option<u64>,
    threads: usize,
    name: &str,
    out: &Path,
) -> anyhow::Result<Ran> {
    let mut setup = setup(sc, piece)?;
    setup.threads = threads;
    let bound = lower_bound(&setup);
    let started = Instant::now();
    let outcome = Swarm::new(setup).run();
    let wall = started.elapsed();
    let st = stats(&outcome);
    let summary = report::summary(name, &outcome, &st, &bound);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(format!("{name}.csv")), report::csv(&outcome))?;
    std::fs::write(
        out.join(format!("{name}.svg")),
        report::svg(name, &outcome, &bound),
    )?;
    std::fs::write(out.join(format!("{name}.md")), &summary)?;
    // One print: runs side by side (`--seeds`) do not interleave their lines.
    println!(
        "{summary}\nsimulated {:.1} s in {:.1} s of wall time; wrote {}/{name}.{{csv,svg,md}}",
        outcome.end as f64 / 1e9,
        wall.as_secs_f64(),
        out.display()
    );
    Ok(Ran {
        seed: sc.seed,
        stats: st,
        bound,
        model_bytes: outcome.model_bytes,
        wall,
    })
}

/// Runs `sc` once per seed in `seeds`, `jobs` at a time (each run is independent and
/// deterministic, so running them side by side changes no result), then writes
/// NAME-seeds.md, the table of all of them.
fn run_seeds(
    sc: &Scenario,
    piece: Option<u64>,
    name: &str,
    out: &Path,
    seeds: &[u64],
    jobs: usize,
) -> anyhow::Result<()> {
    let jobs = jobs.clamp(1, seeds.len());
    // The CPUs left over for each run.
    let threads = (cpus() / jobs).max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<anyhow::Result<Ran>>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut one = sc.clone();
                    one.seed = seed;
                    let ran = run(&one, piece, threads, &format!("{name}-seed{seed}"), out);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(ran);
                }
            });
        }
    });
    let mut runs = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .collect::<anyhow::Result<Vec<Ran>>>()?;
    runs.sort_by_key(|r| r.seed);
    let rows: Vec<report::SeedRow<'_>> = runs
        .iter()
        .map(|r| report::SeedRow {
            seed: r.seed,
            stats: &r.stats,
            bound: &r.bound,
            model_bytes: r.model_bytes,
        })
        .collect();
    let table = report::seeds_table(name, &rows);
    let path = out.join(format!("{name}-seeds.md"));
    std::fs::write(&path, &table)?;
    println!("{table}");
    let walls: Vec<String> = runs
        .iter()
        .map(|r| format!("seed {} {:.1} s", r.seed, r.wall.as_secs_f64()))
        .collect();
    println!("wall time: {}; wrote {}", walls.join(", "), path.display());
    Ok(())
}

/// The CPUs this process may use.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses `--seeds`: a comma-separated list of seeds, each a number or a range `A-B`.
fn parse_seeds(list: &str) -> anyhow::Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let bad = || format!("--seeds: {part:?} is not a seed or a range A-B");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) =
                    (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
                anyhow::ensure!(a <= b && b - a < 1000, "{}", bad());
                seeds.extend(a..=b);
            }
            None => seeds.push(part.parse().with_context(bad)?),
        }
    }
    seeds.sort_unstable();
    seeds.dedup();
    Ok(seeds)
}

const USAGE: &str = "usage: modeld-sim SCENARIO.toml [--out DIR] [--piece SIZE] [--seed N | --seeds LIST [--jobs N]]
Simulates a swarm with modeld's own scheduler; writes NAME.csv, NAME.svg and NAME.md to DIR
(default docs/simulations). --seeds 1-3 (or 1,2,3) runs once per seed, NAME-seedN.*, and writes
NAME-seeds.md, a table of them all; --jobs runs that many at once (default: one per CPU).
See docs/simulations/README.md.";

fn main() -> anyhow::Result<()> {
    modeld_alloc::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut out = PathBuf::from("docs/simulations");
    let mut piece = None;
    let mut seed = None;
    let mut seeds = None;
    let mut jobs = None;
    let mut suffix = String::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "--piece" => {
                let p = args.next().context("--piece needs a size")?;
                suffix.push_str(&format!("-piece{p}"));
                piece = Some(scenario::size(&p)?);
            }
            "--seed" => {
                let s = args.next().context("--seed needs a number")?;
                suffix.push_str(&format!("-seed{s}"));
                seed = Some(s.parse::<u64>().context("--seed")?);
            }
            "--seeds" => seeds = Some(parse_seeds(&args.next().context("--seeds needs a list")?)?),
            "--jobs" => {
                let j = args.next().context("--jobs needs a number")?;
                jobs = Some(j.parse::<usize>().context("--jobs")?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown option {other}\n{USAGE}"),
            other => file = Some(PathBuf::from(other)),
        }
    }
    let file = file.context("give a scenario file (see simulations/scenarios/)")?;
    let mut sc = Scenario::load(&file)?;
    let name = format!("{}{suffix}", sc.name);
    match (seed, seeds) {
        (Some(_), Some(_)) => bail!("give --seed or --seeds, not both"),
        (_, Some(seeds)) => run_seeds(&sc, piece, &name, &out, &seeds, jobs.unwrap_or(cpus())),
        (seed, None) => {
            if let Some(s) = seed {
                sc.seed = s;
            }
            run(&sc, piece, cpus(), &name, &out).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seeds;

    #[test]
    fn seeds_are_numbers_and_ranges() {
        assert_eq!(parse_seeds("3").unwrap(), [3]);
        assert_eq!(parse_seeds("1-3,7, 2").unwrap(), [1, 2, 3, 7]);
        for bad in ["", "a", "3-1", "1-", "0-5000"] {
            let e = parse_seeds(bad).unwrap_err().to_string();
            assert!(e.contains("--seeds"), "{bad}: {e}");
        }
    }
}
