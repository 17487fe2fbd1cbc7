//! `interceptor ca export|install|uninstall`: the CA certificate, from the running daemon,
//! and the host trust store.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::args::CaCommand;
use crate::control::client;
use crate::control::protocol::Request;

/// File name inside the trust store's source directory; update-ca-certificates wants `.crt`.
const INSTALLED_NAME: &str = "interceptor-ca.crt";

pub fn run(socket: &Path, command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Export => {
            print!("{}", certificate(socket)?);
            Ok(())
        }
        CaCommand::Install { dir } => {
            let pem = certificate(socket)?;
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            let path = dir.join(INSTALLED_NAME);
            std::fs::write(&path, pem).with_context(|| path.display().to_string())?;
            update_trust_store()?;
            println!("installed {}", path.display());
            Ok(())
        }
        CaCommand::Uninstall { dir } => {
            let path = dir.join(INSTALLED_NAME);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{} was not installed", path.display());
                    return Ok(());
                }
                Err(e) => return Err(e).context(path.display().to_string()),
            }
            update_trust_store()?;
            println!("removed {}", path.display());
            Ok(())
        }
    }
}

/// The CA the daemon signs with (its own or the operator's).
pub fn certificate(socket: &Path) -> anyhow::Result<String> {
    client::call(socket, &Request::CaCertificate)
}

fn update_trust_store() -> anyhow::Result<()> {
    let status = Command::new("update-ca-certificates")
        .status()
        .context("running update-ca-certificates (package ca-certificates)")?;
    if !status.success() {
        bail!("update-ca-certificates failed: {status}");
    }
    Ok(())
}
