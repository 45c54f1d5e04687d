//! `abgate analyze`: report every problem in a configuration, as `istioctl analyze` does.

use std::path::PathBuf;
use std::process::ExitCode;

use abgate_config::{Diagnostic, Summary};

/// Arguments of `abgate analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// A YAML file, or a directory searched recursively for *.yaml and *.yml. Repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

/// Exit 0 without errors (warnings and infos allowed), 1 with at least one error, 2 when a
/// path cannot be read at all.
pub fn run(args: &AnalyzeArgs) -> ExitCode {
    let loaded = match abgate_config::load(&args.files) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("abgate analyze: {e}");
            return ExitCode::from(2);
        }
    };
    let mut diagnostics: Vec<Diagnostic> = loaded.diagnostics;
    diagnostics.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
    match args.output {
        Output::Json => match serde_json::to_string_pretty(&diagnostics) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("abgate analyze: cannot encode diagnostics: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
            println!("{}", Summary::of(&diagnostics));
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
