//! The one stage runner the four stages share (docs/DESIGN.md, "Work units
//! and sharding").
//!
//! A stage supplies its units in sorted order, the status of one unit
//! (up to date, or to do and why) and how to do the pending ones. The
//! runner takes this shard's slice of the units (`--shard I/N` or SLURM's
//! array variables), skips the current ones, prints what a dry run would
//! do, shows progress, counts what was done and what failed (a failed unit
//! does not stop the others), and turns the outcome into the exit code:
//! 0 when every unit is done or current, 1 when any failed, 2 when the
//! stage could not start (a bad config or flag).

use std::fmt::Display;
use std::process::ExitCode;

use crate::cli::{Shard, StageArgs};

/// Whether a unit's output is what the stage would write now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status<R> {
    UpToDate,
    /// To do, for this reason.
    ToDo(R),
}

/// A pipeline stage as the runner drives it.
pub trait Stage {
    /// One unit of work; its `Display` names it in logs ("run `simple`").
    type Unit: Display;
    /// Why a unit is to be done ("missing", "the method's settings changed").
    type Reason: Display;

    /// The stage's name in logs: "trainer", "explainer", ...
    const NAME: &'static str;
    /// What doing a unit is called, for dry runs: "would train (why)".
    const VERB: &'static str;

    /// Every unit the filters select, in the sorted order shards slice.
    fn units(&mut self) -> anyhow::Result<Vec<Self::Unit>>;

    /// The unit's status; an error fails the unit (a dry run reports it).
    fn status(&mut self, unit: &Self::Unit) -> anyhow::Result<Status<Self::Reason>>;

    /// The reason of a unit redone under `--force`.
    fn forced(&mut self, unit: &Self::Unit) -> Self::Reason;

    /// Does the pending units of this shard (in shard order), reporting
    /// each one's outcome.
    fn run(&mut self, pending: Vec<(Self::Unit, Self::Reason)>, outcomes: &mut Outcomes);

    /// Whether the runner shows a bar over the units (a stage with a bar
    /// of its own, within a unit, says no).
    fn unit_progress(&self) -> bool {
        true
    }
}

/// How to run a stage: which shard, and whether to redo current units or
/// only say what would be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub shard: Shard,
    pub force: bool,
    pub dry_run: bool,
}

impl RunOptions {
    /// What the runner needs of the stage flags (the shard from `--shard`,
    /// else SLURM's array variables).
    pub fn from_args(args: &StageArgs) -> anyhow::Result<Self> {
        let shard = args.shard().map_err(anyhow::Error::msg)?;
        Ok(RunOptions { shard, force: args.force, dry_run: args.dry_run })
    }
}

/// What a stage did with its units, for the closing log line and the exit
/// code.
#[derive(Debug, Default)]
pub struct StageReport {
    pub done: usize,
    pub skipped: usize,
    /// Units a dry run found to do.
    pub planned: usize,
    /// One message per unit that failed (the other units still ran).
    pub failed: Vec<String>,
}

impl StageReport {
    /// Logs the outcome; exit code 0 when every unit is done or current,
    /// 1 when any failed.
    pub fn finish(&self, stage: &str) -> ExitCode {
        if !self.failed.is_empty() {
            for f in &self.failed {
                tracing::error!("{f}");
            }
            tracing::error!("{stage}: {} unit(s) failed, {} done, {} up to date", self.failed.len(), self.done, self.skipped);
            return ExitCode::FAILURE;
        }
        if self.planned > 0 {
            tracing::info!("{stage}: dry run: {} unit(s) to do, {} up to date", self.planned, self.skipped);
        } else if self.done == 0 {
            tracing::info!("{stage}: nothing to do, {} unit(s) up to date", self.skipped);
        } else {
            tracing::info!("{stage}: {} unit(s) done, {} up to date", self.done, self.skipped);
        }
        ExitCode::SUCCESS
    }
}

/// The exit of a stage's `main`: the report's code, or 2 with the error
/// (and its causes) when the stage could not start.
pub fn exit_with(stage: &str, result: anyhow::Result<StageReport>) -> ExitCode {
    match result {
        Ok(report) => report.finish(stage),
        Err(e) => {
            eprintln!("{stage}: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Where a stage reports each pending unit's outcome: counts, logs and the
/// progress bar.
pub struct Outcomes {
    report: StageReport,
    bar: indicatif::ProgressBar,
}

impl Outcomes {
    /// The unit is done; `what` says what was written.
    pub fn done(&mut self, unit: &impl Display, what: impl Display) {
        tracing::info!("{unit}: {what}");
        self.report.done += 1;
        self.bar.inc(1);
    }

    /// The unit failed; the others go on.
    pub fn failed(&mut self, unit: &impl Display, error: &anyhow::Error) {
        self.report.failed.push(format!("{unit}: {error:#}"));
        self.bar.inc(1);
    }

    /// Every unit of a group that failed together (their shared input).
    pub fn fail_all<'a, U: Display + 'a>(&mut self, units: impl IntoIterator<Item = &'a U>, error: &anyhow::Error) {
        for unit in units {
            self.failed(unit, error);
        }
    }
}

/// Runs `stage` over this shard's units as `options` say.
pub fn run_stage<S: Stage>(stage: &mut S, options: RunOptions) -> anyhow::Result<StageReport> {
    let all = stage.units()?;
    let total = all.len();
    let mine = options.shard.select(all);
    if options.shard != Shard::ALL {
        tracing::info!("{}: shard {}: {} of {total} unit(s)", S::NAME, options.shard, mine.len());
    }
    let mut report = StageReport::default();
    let mut pending = Vec::new();
    for unit in mine {
        let status = if options.force { Ok(Status::ToDo(stage.forced(&unit))) } else { stage.status(&unit) };
        match status {
            Ok(Status::UpToDate) => {
                tracing::debug!("{unit}: up to date");
                report.skipped += 1;
            }
            Ok(Status::ToDo(reason)) if options.dry_run => {
                println!("{}: {unit}: would {} ({reason})", S::NAME, S::VERB);
                report.planned += 1;
            }
            Ok(Status::ToDo(reason)) => pending.push((unit, reason)),
            Err(e) => report.failed.push(format!("{unit}: {e:#}")),
        }
    }
    if pending.is_empty() {
        return Ok(report);
    }
    let bar = if stage.unit_progress() {
        crate::cli::progress_bar(pending.len() as u64, S::NAME)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut outcomes = Outcomes { report, bar };
    stage.run(pending, &mut outcomes);
    outcomes.bar.finish_and_clear();
    Ok(outcomes.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units 0..n; even ones are current, 3 fails its status, 5 fails when done.
    struct Numbers {
        n: usize,
        ran: Vec<usize>,
    }

    impl Stage for Numbers {
        type Unit = usize;
        type Reason = &'static str;
        const NAME: &'static str = "numbers";
        const VERB: &'static str = "count";

        fn units(&mut self) -> anyhow::Result<Vec<usize>> {
            Ok((0..self.n).collect())
        }

        fn status(&mut self, unit: &usize) -> anyhow::Result<Status<&'static str>> {
            match unit {
                3 => anyhow::bail!("unreadable"),
                u if u % 2 == 0 => Ok(Status::UpToDate),
                _ => Ok(Status::ToDo("odd")),
            }
        }

        fn forced(&mut self, _: &usize) -> &'static str {
            "--force"
        }

        fn run(&mut self, pending: Vec<(usize, &'static str)>, outcomes: &mut Outcomes) {
            for (unit, _) in pending {
                self.ran.push(unit);
                if unit == 5 {
                    outcomes.failed(&unit, &anyhow::anyhow!("broken"));
                } else {
                    outcomes.done(&unit, "counted");
                }
            }
        }
    }

    fn run(n: usize, shard: Shard, force: bool, dry_run: bool) -> (StageReport, Vec<usize>) {
        let mut stage = Numbers { n, ran: Vec::new() };
        let report = run_stage(&mut stage, RunOptions { shard, force, dry_run }).unwrap();
        (report, stage.ran)
    }

    #[test]
    fn the_runner_skips_current_units_counts_failures_and_shards() {
        let (report, ran) = run(8, Shard::ALL, false, false);
        assert_eq!(ran, [1, 5, 7]);
        assert_eq!((report.done, report.skipped, report.planned), (2, 4, 0));
        assert_eq!(report.failed, ["3: unreadable", "5: broken"]);
        assert_eq!(report.finish("numbers"), ExitCode::FAILURE);

        let (report, ran) = run(8, Shard { index: 1, count: 3 }, false, false);
        assert_eq!(ran, [1, 7], "shard 1/3 takes units 1, 4, 7");
        assert_eq!((report.done, report.skipped), (2, 1));

        let (report, ran) = run(8, Shard::ALL, false, true);
        assert!(ran.is_empty(), "a dry run does nothing");
        assert_eq!(report.planned, 3);

        let (report, ran) = run(4, Shard::ALL, true, false);
        assert_eq!(ran, [0, 1, 2, 3], "--force redoes every unit without asking its status");
        assert_eq!((report.done, report.skipped), (4, 0));
        assert_eq!(report.finish("numbers"), ExitCode::SUCCESS);
    }
}
