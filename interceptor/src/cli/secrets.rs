//! `interceptor rules check [DIR]`: validate secret rules (a directory, or the built-in ones)
//! without a daemon.

use std::path::PathBuf;

use clap::Subcommand;
use interceptor::detection::check::{check_dir, check_rules};

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Compile every rule in Hyperscan and in `regex` and verify all examples in both.
    Check {
        /// Directory of rule files (*.yaml); without it, the rules built into the binary.
        dir: Option<PathBuf>,
    },
}

pub fn run(command: RulesCommand) -> anyhow::Result<i32> {
    match command {
        RulesCommand::Check { dir } => {
            let report = match dir {
                Some(dir) => check_dir(&dir)?,
                None => check_rules(&interceptor::detection::builtin()?),
            };
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
