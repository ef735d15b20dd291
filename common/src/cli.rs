//! What every stage's command line shares: the common flags, sharding over
//! HPC job arrays, logging and progress bars. The stage runner that uses
//! them is `crate::stage`.

use std::path::PathBuf;

use clap::Args;

/// Flags common to the stages that work on units.
#[derive(Args, Clone, Debug)]
pub struct StageArgs {
    /// The pipeline config.
    #[arg(long, short, default_value = "pipeline.toml")]
    pub config: PathBuf,

    /// Only these runs (repeatable; default: all runs in the config).
    #[arg(long = "run", value_name = "NAME")]
    pub runs: Vec<String>,

    /// Take units I, I+N, I+2N, ... of the sorted unit list (0-based I).
    /// Without it, SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are used
    /// when set; otherwise all units.
    #[arg(long, value_name = "I/N", allow_hyphen_values = true)]
    pub shard: Option<Shard>,

    /// Redo units even when their stored fingerprint is current.
    #[arg(long)]
    pub force: bool,

    /// Print what would be done (and why) without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

impl StageArgs {
    /// The shard from `--shard`, else from SLURM's job-array variables.
    pub fn shard(&self) -> Result<Shard, String> {
        match &self.shard {
            Some(s) => Ok(*s),
            None => Shard::from_env(|k| std::env::var(k).ok()),
        }
    }
}

/// The `--method` filter of the stages that work per explanation method.
#[derive(Args, Clone, Debug, Default)]
pub struct MethodFilter {
    /// Only these methods (repeatable; default: all methods in the config).
    #[arg(long = "method", value_name = "NAME")]
    pub methods: Vec<String>,
}

/// One slice `index/count` of a sorted list of work units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Reads `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT`; with
    /// neither set, all units. The array must be indexed 0..COUNT-1
    /// (`sbatch --array=0-N`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
            (None, None) => Ok(Shard::ALL),
            (Some(id), Some(count)) => format!("{id}/{count}")
                .parse()
                .map_err(|e| format!("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT: {e} (submit with --array=0-<N-1>)")),
            (Some(_), None) => Err("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into()),
            (None, Some(_)) => Err("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID is not".into()),
        }
    }

    /// The units of this shard, in order.
    pub fn select<T>(&self, units: Vec<T>) -> Vec<T> {
        units.into_iter().enumerate().filter(|(i, _)| i % self.count == self.index).map(|(_, u)| u).collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}` is not of the form I/N (e.g. 0/4)"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("`{i}` in `{s}` is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("`{n}` in `{s}` is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Logs to stderr; `RUST_LOG` sets the level (default `info`).
pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// A progress bar on a terminal, nothing otherwise (batch jobs keep their
/// logs clean and rely on the `tracing` lines instead).
pub fn progress_bar(len: u64, message: impl Into<String>) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:28} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.into());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_units_round_robin() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s.select((0..8).collect()), vec![1, 4, 7]);
        let all: Vec<Vec<i32>> = (0..3).map(|i| Shard { index: i, count: 3 }.select((0..8).collect())).collect();
        assert_eq!(all.concat().len(), 8);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("a/3".parse::<Shard>().unwrap_err().contains("not a number"));
    }

    #[test]
    fn shard_from_slurm_variables() {
        let env = |id: Option<&str>, count: Option<&str>| {
            Shard::from_env(move |k| if k == "SLURM_ARRAY_TASK_ID" { id.map(String::from) } else { count.map(String::from) })
        };
        assert_eq!(env(None, None).unwrap(), Shard::ALL);
        assert_eq!(env(Some("2"), Some("4")).unwrap(), Shard { index: 2, count: 4 });
        assert!(env(Some("4"), Some("4")).is_err());
        assert!(env(Some("1"), None).is_err());
    }
}
