//! The simulator end to end: determinism, every host verified exactly once, faults
//! handled, and the lab calibration.

use modeld_sim::{lower_bound, report, scenario::Scenario, setup, stats, swarm::Swarm};

/// A small swarm with everything that can go wrong: racks with a 4:1 uplink, a seed
/// that dies, hosts that leave, hosts that lie, staggered arrivals.
const EVERYTHING: &str = r#"
name = "everything"
seed = 7
[model]
files = 3
file_size = "64MiB"
last_file_size = "10MiB"
piece = "1MiB"
[network]
host_up = "1Gbit"
host_down = "1Gbit"
rack_size = 8
rack_uplink = "2Gbit"
rtt_same_rack = "1ms"
rtt_cross_rack = "3ms"
[seeds]
count = 2
dies_at = "1s"
[hosts]
count = 30
arrive_over = "2s"
churn_fraction = 0.1
churn_window = ["1s", "2s"]
corrupt_fraction = 0.1
"#;

fn run(text: &str, seed: Option<u64>) -> (String, String, modeld_sim::swarm::Outcome) {
    let mut sc: Scenario = toml::from_str(text).unwrap();
    if let Some(s) = seed {
        sc.seed = s;
    }
    let setup = setup(&sc, None).unwrap();
    let bound = lower_bound(&setup);
    let outcome = Swarm::new(setup).run();
    (
        report::csv(&outcome),
        report::svg(&sc.name, &outcome, &bound),
        outcome,
    )
}

#[test]
fn the_same_scenario_and_seed_give_the_same_files_byte_for_byte() {
    let (csv1, svg1, _) = run(EVERYTHING, None);
    let (csv2, svg2, _) = run(EVERYTHING, None);
    assert_eq!(csv1, csv2);
    assert_eq!(svg1, svg2);
    let (csv3, _, _) = run(EVERYTHING, Some(8));
    assert_ne!(csv1, csv3, "another seed, another run");
}

#[test]
fn every_host_ends_with_every_piece_exactly_once_and_liars_are_banned() {
    for serve in ["parallel", "inorder", "queue"] {
        let text = format!("{EVERYTHING}[sim]\nserve = \"{serve}\"\n");
        everything_verified_once(&text);
    }
}

fn everything_verified_once(text: &str) {
    let (_, _, o) = run(text, None);
    let s = stats(&o);
    assert!(s.hosts > 0);
    assert_eq!(s.finished, s.hosts, "every honest staying host finishes");
    assert_eq!(s.incomplete, 0);
    for h in o.hosts.iter().filter(|h| h.done.is_some()) {
        assert!(h.has_everything);
        assert_eq!(h.verified, o.model_bytes, "each byte verified exactly once");
    }
    let liars = o.hosts.iter().filter(|h| h.spec.corrupt).count();
    assert!(liars > 0, "the scenario has liars");
    let banned: u32 = o.hosts.iter().map(|h| h.banned).sum();
    assert!(banned > 0, "liars were banned");
    let left = o.hosts.iter().filter(|h| h.left).count();
    assert!(left > 0, "the scenario has leavers");
    assert!(o.rack_uplink_bytes > 0);
}

#[test]
fn nobody_beats_the_lower_bound() {
    let (_, _, o) = run(EVERYTHING, None);
    let mut sc: Scenario = toml::from_str(EVERYTHING).unwrap();
    sc.hosts.churn_fraction = 0.0;
    let bound = lower_bound(&setup(&sc, None).unwrap());
    let first = o
        .hosts
        .iter()
        .filter(|h| h.done.is_some())
        .map(|h| h.spec.arrive)
        .min()
        .unwrap();
    for h in o.hosts.iter().filter_map(|h| h.done) {
        assert!((h - first) as f64 / 1e9 > 0.0);
    }
    assert!(
        stats(&o).last >= bound.seconds * 0.999,
        "{} < {}",
        stats(&o).last,
        bound.seconds
    );
}

/// The lab (with the scheduler of the second round) measured the last of seven hosts
/// done at 62.0 and 70.8 s in two mDNS runs (docs/simulations/README.md); the
/// simulator must predict their mean within 15 %.
#[test]
fn the_lab_burst_is_predicted_within_15_percent() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/lab-burst.toml"
    ))
    .unwrap();
    let (_, _, o) = run(&text, None);
    let last = stats(&o).last;
    let measured = (62.0 + 70.8) / 2.0;
    let err = (last - measured).abs() / measured;
    assert!(
        err <= 0.15,
        "predicted {last:.1} s, measured {measured:.1} s: {:.0} % off",
        err * 100.0
    );
}

/// One seed with a 1 Gbit/s uplink owes the model's only piece (1 MiB, 8.4 ms at
/// that rate) to two fetchers with fast downlinks.
const TWO_ASK_ONE: &str = r#"
name = "two-ask-one"
[model]
files = 1
file_size = "1MiB"
piece = "1MiB"
[network]
host_up = "1Gbit"
host_down = "100Gbit"
[seeds]
count = 1
[hosts]
count = 2
[discovery]
mdns = false
"#;

#[test]
fn queued_answers_go_one_after_the_other_and_parallel_ones_share_the_uplink() {
    let done = |serve: &str| {
        let text = format!("{TWO_ASK_ONE}[sim]\nserve = \"{serve}\"\n");
        let (_, _, o) = run(&text, None);
        let mut t: Vec<f64> = o
            .hosts
            .iter()
            .filter_map(|h| h.done)
            .map(|d| d as f64 / 1e6)
            .collect();
        t.sort_by(f64::total_cmp);
        assert_eq!(t.len(), 2);
        (t[0], t[1])
    };
    let (p_first, p_last) = done("parallel");
    let (q_first, q_last) = done("queue");
    // Sharing: both finish together, after two pieces' time. In turn: the first after
    // one piece's time, the second when the parallel ones did.
    assert!((p_last - p_first).abs() < 0.1, "{p_first} {p_last}");
    assert!(
        (p_first - q_first - 8.39).abs() < 0.2,
        "{p_first} {q_first}"
    );
    assert!((q_last - p_last).abs() < 0.1, "{q_last} {p_last}");
}

/// A burst whose DHT lookups name many providers at once: every fetch learns of the
/// same first providers and fills its peer slots with them. Peers whose queues hold a
/// fetch's answers past the late horizon must make room for later providers
/// (`Scheduler::queued_peers`); without that this run ends at 4.9x the bound (p50
/// 20.6 s), with it at 2.9x (p50 15.6 s).
const CROWD: &str = r#"
name = "crowd"
seed = 3
[model]
files = 8
file_size = "2GiB"
piece = "256MiB"
inflight = "16GiB"
[network]
host_up = "25Gbit"
host_down = "25Gbit"
rack_size = 40
[seeds]
count = 4
[hosts]
count = 300
[discovery]
mdns = false
lookup_results = 60
[sim]
serve = "queue"
"#;

#[test]
fn fetches_leave_crowded_first_providers_for_later_ones() {
    let sc: Scenario = toml::from_str(CROWD).unwrap();
    let bound = lower_bound(&setup(&sc, None).unwrap());
    let (_, _, o) = run(CROWD, None);
    let s = stats(&o);
    assert_eq!(s.finished, s.hosts);
    let ratio = s.last / bound.seconds;
    assert!(ratio < 3.5, "last host at {ratio:.2}x the bound");
}

/// A burst of 300 hosts from 4 seeds. Fetches tell the seeds what they hold, and a
/// busy seed points a request elsewhere at its turn while two of its other peers hold
/// the piece (`modeld_proto::holders`): the seeds send 4.3x the model instead of 9.1x
/// (without the rule, `REFUSE_AT` set out of reach: checked), and the last host
/// finishes as before (2.38x the bound against 2.39x; a small model, so start-up
/// dominates).
const SEEDY: &str = r#"
name = "seedy"
seed = 3
[model]
files = 8
file_size = "2GiB"
piece = "256MiB"
inflight = "16GiB"
[network]
host_up = "25Gbit"
host_down = "25Gbit"
rack_size = 40
[seeds]
count = 4
[hosts]
count = 300
[sim]
serve = "queue"
"#;

#[test]
fn seeds_keep_their_upload_for_pieces_the_swarm_lacks() {
    let (_, _, o) = run(SEEDY, None);
    let s = stats(&o);
    assert_eq!(s.finished, s.hosts);
    assert!(o.pointed_elsewhere > 0);
    let ratio = s.seed_upload as f64 / o.model_bytes as f64;
    assert!(ratio < 5.0, "seeds sent {ratio:.2}x the model");
}

/// `--seeds` runs the seeds side by side; each run's files are those a run of that one
/// seed alone writes, and the table has a row per seed.
#[test]
fn runs_of_several_seeds_at_once_give_each_seed_its_own_result() {
    let dir = std::env::temp_dir().join(format!("modeld-sim-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scenario = dir.join("everything.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&scenario, EVERYTHING).unwrap();
    let sim = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modeld-sim"))
            .arg(&scenario)
            .args(["--out", dir.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sim(&["--seeds", "7-8,10", "--jobs", "2"]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let together = read("everything-seed8.csv");
    sim(&["--seed", "8"]);
    assert_eq!(together, read("everything-seed8.csv"));
    // Seed 7 is the scenario's own.
    assert_eq!(read("everything-seed7.csv"), run(EVERYTHING, None).0);
    let table = read("everything-seeds.md");
    for row in ["| 7 |", "| 8 |", "| 10 |", "| mean |", "| worst |"] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    assert!(!table.contains("| 9 |"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The news pushed at one instant is taken in on several threads in a burst; the
/// result is the same, byte for byte, as on one.
#[test]
fn the_number_of_threads_changes_nothing() {
    const BURST: &str = r#"
name = "burst"
seed = 3
[model]
files = 4
file_size = "64MiB"
piece = "4MiB"
inflight = "64MiB"
[network]
host_up = "10Gbit"
host_down = "10Gbit"
rack_size = 20
[seeds]
count = 2
[hosts]
count = 200
"#;
    let on = |threads: usize| {
        let sc: Scenario = toml::from_str(BURST).unwrap();
        let mut setup = setup(&sc, None).unwrap();
        setup.threads = threads;
        let o = Swarm::new(setup).run();
        assert_eq!(stats(&o).finished, 200);
        report::csv(&o)
    };
    assert_eq!(on(1), on(4));
}
