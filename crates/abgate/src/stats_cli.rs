//! `abgate stats ...`: the statistics engine offline, for people and scripts. Each
//! command prints one JSON object; exit 0 on success, 2 on bad input (with the reason
//! on stderr).

use std::process::ExitCode;

use abgate_stats::{
    fixed_horizon, sequential, srm_chi_squared, Alternative, Difference, Effect, Inference,
    Proportion, SampleMean, SequentialSrm, StatsError, DEFAULT_TUNING,
};
use serde_json::{json, Value};

/// Arguments of `abgate stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Sample ratio mismatch: do the observed counts fit the weights? (chi-squared)
    Srm(SrmArgs),
    /// Compare a candidate (B) with a baseline (A) from their sufficient statistics.
    Compare(CompareArgs),
}

#[derive(clap::Args, Debug)]
struct SrmArgs {
    /// Units per arm, comma-separated: `1000,1200`.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1)]
    observed: Vec<u64>,
    /// The intended weights in the same order, comma-separated (need not sum to 1).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1)]
    weights: Vec<f64>,
    /// Also give the sequential (Dirichlet-multinomial Bayes factor) test on these
    /// totals, valid however often it is checked.
    #[arg(long)]
    sequential: bool,
    /// The sequential test's Dirichlet concentration.
    #[arg(long, requires = "sequential", value_name = "C")]
    concentration: Option<f64>,
}

/// `N,SUM,SUM_SQUARES` of one arm.
#[derive(Clone, Copy, Debug)]
struct ArmSums {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

fn parse_arm(text: &str) -> Result<ArmSums, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [n, sum, sum_sq] = parts.as_slice() else {
        return Err(format!(
            "expected N,SUM,SUM_SQUARES (three comma-separated numbers), got `{text}`"
        ));
    };
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("N must be a whole number, got `{n}`"))?;
    let number = |what: &str, s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{what} must be a finite number, got `{s}`"))
    };
    Ok(ArmSums {
        n,
        sum: number("SUM", sum)?,
        sum_sq: number("SUM_SQUARES", sum_sq)?,
    })
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OneSided {
    /// H1: the candidate is greater (interval `[lower, ∞)`).
    Greater,
    /// H1: the candidate is lesser (interval `(−∞, upper]`).
    Lesser,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// The baseline: N,SUM,SUM_SQUARES.
    #[arg(long, value_name = "N,SUM,SUM_SQUARES", value_parser = parse_arm)]
    a: ArmSums,
    /// The candidate: N,SUM,SUM_SQUARES.
    #[arg(long, value_name = "N,SUM,SUM_SQUARES", value_parser = parse_arm)]
    b: ArmSums,
    /// The metric is a proportion: SUM is the number of successes, and SUM_SQUARES
    /// equals SUM.
    #[arg(long)]
    proportion: bool,
    /// Compare as a fraction of the baseline, (B − A)/|A|, instead of B − A.
    #[arg(long)]
    relative: bool,
    /// Always-valid inference (the asymptotic confidence sequence), for looking at the
    /// data repeatedly.
    #[arg(long)]
    sequential: bool,
    /// The sequential test's tuning: total units of both arms at which a decision is
    /// expected (default 5000).
    #[arg(long, requires = "sequential", value_name = "N")]
    tuning: Option<f64>,
    /// A one-sided test in the given direction (default two-sided).
    #[arg(long, value_enum, value_name = "greater|lesser")]
    one_sided: Option<OneSided>,
    /// The significance level.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
}

/// Runs one command.
pub fn run(args: StatsArgs) -> ExitCode {
    let result = match args.command {
        Command::Srm(a) => srm(&a),
        Command::Compare(a) => compare(&a),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("abgate stats: {e}");
            ExitCode::from(2)
        }
    }
}

fn srm(args: &SrmArgs) -> Result<Value, StatsError> {
    let chi2 = srm_chi_squared(&args.observed, &args.weights)?;
    let mut out = json!({
        "test": "chi-squared",
        "chi_squared": chi2.chi_squared,
        "df": chi2.df,
        "expected": chi2.expected,
        "p_value": chi2.p_value,
    });
    if args.sequential {
        let concentration = args
            .concentration
            .unwrap_or(SequentialSrm::DEFAULT_CONCENTRATION);
        let mut test = SequentialSrm::new(&args.weights, concentration)?;
        let p = test.update(&args.observed)?;
        out["sequential"] = json!({
            "test": "dirichlet-multinomial",
            "concentration": concentration,
            "log_bayes_factor": test.log_bayes_factor(),
            "p_value": p,
        });
    }
    Ok(out)
}

fn compare(args: &CompareArgs) -> Result<Value, StatsError> {
    let difference = if args.relative {
        Difference::Relative
    } else {
        Difference::Absolute
    };
    let effect = if args.proportion {
        Effect::between(
            &proportion("--a", args.a)?,
            &proportion("--b", args.b)?,
            difference,
        )?
    } else {
        let arm = |s: ArmSums| SampleMean::new(s.n, s.sum, s.sum_sq);
        Effect::between(&arm(args.a)?, &arm(args.b)?, difference)?
    };
    let alternative = match args.one_sided {
        None => Alternative::TwoSided,
        Some(OneSided::Greater) => Alternative::Greater,
        Some(OneSided::Lesser) => Alternative::Lesser,
    };
    let tuning = args
        .sequential
        .then(|| args.tuning.unwrap_or(DEFAULT_TUNING));
    let result = match tuning {
        Some(tuning) => sequential(&effect, alternative, args.alpha, tuning)?,
        None => fixed_horizon(&effect, alternative, args.alpha)?,
    };
    Ok(report(&effect, &result, tuning))
}

/// An arm of a proportion metric: SUM successes of N, with SUM_SQUARES = SUM.
fn proportion(flag: &str, s: ArmSums) -> Result<Proportion, StatsError> {
    if s.sum < 0.0 || s.sum.fract() != 0.0 {
        return Err(StatsError::InvalidInput(format!(
            "{flag}: with --proportion, SUM is a count of successes, got {}",
            s.sum
        )));
    }
    if s.sum_sq != s.sum {
        return Err(StatsError::InvalidInput(format!(
            "{flag}: with --proportion, SUM_SQUARES must equal SUM (a 0/1 metric), got {} and {}",
            s.sum_sq, s.sum
        )));
    }
    Proportion::new(s.n, s.sum as u64)
}

/// Infinite ends of a one-sided interval become `null`.
fn end(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn report(effect: &Effect, r: &Inference, tuning: Option<f64>) -> Value {
    json!({
        "estimate": r.estimate,
        "se": r.standard_error,
        "ci_lower": end(r.interval.lower),
        "ci_upper": end(r.interval.upper),
        "p_value": r.p_value,
        "significant": r.significant(),
        "alpha": r.alpha,
        "difference": match effect.difference {
            Difference::Absolute => "absolute",
            Difference::Relative => "relative",
        },
        "alternative": match r.alternative {
            Alternative::TwoSided => "two-sided",
            Alternative::Greater => "greater",
            Alternative::Lesser => "lesser",
        },
        "method": if tuning.is_some() { "sequential" } else { "welch-t" },
        "tuning": tuning,
        "units": effect.units,
        "dof": end(effect.dof),
    })
}
