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

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (the same place in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of handing it back to the kernel 10 ms later:
/// a run frees and allocates again all the time, and every page handed back was
/// zeroed by the kernel when taken again (about 5 % of a run in a profile; burst-1k
/// 48.4-48.8 s -> 44.2-45.7 s). Peak memory is unchanged: what is kept is reused.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides, if set.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an option's value, here first thing in `main`
        // while no other thread runs; -1 is a documented value of this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
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
