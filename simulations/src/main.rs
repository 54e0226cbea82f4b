//! `modeld-sim SCENARIO.toml [--out DIR] [--piece SIZE] [--seed N]`: runs a scenario
//! and writes `<name>.csv`, `<name>.svg` and `<name>.md` to DIR (default
//! `docs/simulations`), printing the summary.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, bail};
use modeld_sim::{lower_bound, report, scenario, setup, stats, swarm::Swarm};

/// A large run allocates and frees hundreds of millions of small have-maps and
/// requests; mimalloc does it in about a tenth less time than glibc's allocator
/// (docs/simulations/README.md, "Cost of a run").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut out = PathBuf::from("docs/simulations");
    let mut piece = None;
    let mut seed = None;
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
            "-h" | "--help" => {
                println!(
                    "usage: modeld-sim SCENARIO.toml [--out DIR] [--piece SIZE] [--seed N]\n\
                     Simulates a swarm with modeld's own scheduler; writes NAME.csv, NAME.svg and NAME.md to DIR\n\
                     (default docs/simulations). See docs/simulations/README.md."
                );
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown option {other}"),
            other => file = Some(PathBuf::from(other)),
        }
    }
    let file = file.context("give a scenario file (see simulations/scenarios/)")?;
    let mut sc = scenario::Scenario::load(&file)?;
    if let Some(s) = seed {
        sc.seed = s;
    }
    let name = format!("{}{suffix}", sc.name);
    let setup = setup(&sc, piece)?;
    let bound = lower_bound(&setup);
    let started = Instant::now();
    let outcome = Swarm::new(setup).run();
    let wall = started.elapsed();
    let st = stats(&outcome);
    let summary = report::summary(&name, &outcome, &st, &bound);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(format!("{name}.csv")), report::csv(&outcome))?;
    std::fs::write(
        out.join(format!("{name}.svg")),
        report::svg(&name, &outcome, &bound),
    )?;
    std::fs::write(out.join(format!("{name}.md")), &summary)?;
    println!("{summary}");
    println!(
        "simulated {:.1} s in {:.1} s of wall time; wrote {}/{name}.{{csv,svg,md}}",
        outcome.end as f64 / 1e9,
        wall.as_secs_f64(),
        out.display()
    );
    Ok(())
}
