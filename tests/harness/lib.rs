//! Test harness for interceptor's end-to-end tests: the real daemon, real kernel hooks,
//! real clients.
//!
//! * [`Daemon`]: one private daemon per test (own data dir, socket, bpffs pin dir, proxy port).
//! * [`TestCgroup`]: a cgroup2 directory the test owns; processes are started in it with
//!   [`in_cgroup`]; Drop kills what is left and removes it.
//! * [`Netns`] and [`veth`]: network namespaces and veth links for "remote" test hosts.
//! * [`Server`]: Python test servers (echo, hash, http) on 127.0.0.2+ or inside a netns.
//! * [`client`]: the Python test client and its JSON report.
//! * [`streaming::StreamServer`]: an HTTPS server pacing streamed replies event by event;
//!   [`llm_wire`] builds them in the LLM APIs' formats, [`planted`] splits the shipped rules'
//!   example secrets into their deltas.
//! * [`mcp::McpServer`]: an MCP server (the official SDK) whose tools log their calls.
//! * [`TestUser`] and [`TestGroup`]: local users and groups (useradd, groupadd) to run
//!   commands as.
//!
//! Everything the harness creates is removed on Drop, also when the test fails.

pub mod bench_report;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod floor;
pub mod https;
pub mod llm_wire;
pub mod mcp;
pub mod model;
pub mod netns;
pub mod planted;
pub mod proc;
pub mod server;
pub mod streaming;
pub mod users;
pub mod util;

pub use cgroup::{TestCgroup, cgroup2_mount, in_cgroup};
pub use client::{ClientReport, ConnError, ConnResult, client_argv, client_command, parse_report};
pub use daemon::Daemon;
pub use model::{Container, Enrollment, Identity, Session, Status};
pub use netns::{Netns, VethLink, veth};
pub use proc::{Reaped, run_ok, run_with_input, run_with_pid, run_with_timeout, spawn_logged};
pub use server::{Server, ServerOpts, ServerRecord};
pub use users::{TestGroup, TestUser};
pub use util::*;
