//! `interceptor rules check [DIR]`: validate secret rules without a daemon.

use std::path::PathBuf;

use clap::Subcommand;
use interceptor::detection::check::check_dir;

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Compile every rule in Hyperscan and in `regex` and verify all examples in both.
    Check {
        /// Directory of rule files (*.yaml).
        #[arg(default_value = "policies/rules")]
        dir: PathBuf,
    },
}

pub fn run(command: RulesCommand) -> anyhow::Result<i32> {
    match command {
        RulesCommand::Check { dir } => {
            let report = check_dir(&dir)?;
            for problem in &report.problems {
                println!("{problem}");
            }
            let summary = format!(
                "{} rules, {} examples, {} negative examples",
                report.rules, report.examples, report.negative_examples
            );
            if report.problems.is_empty() {
                println!("{summary}: ok");
                Ok(0)
            } else {
                println!("{summary}: {} problems", report.problems.len());
                Ok(1)
            }
        }
    }
}
