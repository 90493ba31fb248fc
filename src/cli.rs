//! The command line: `serve`, `dev` and the operator commands (`enqueue`, `show`, `dead`,
//! `stats`), which talk to Redis directly with the same scripts as the service.
//!
//! Invariant: every flag has an environment variable; bad configuration exits with status 64
//! and a message naming the flag.

pub mod merchant;
pub mod ops;
pub mod serve;
pub mod simulate;
pub mod validate;

use clap::{Parser, Subcommand, ValueEnum};

pub use ops::Operation;
pub use serve::{DevArgs, RedisArgs, ServeArgs};
pub use simulate::SimulateArgs;

/// Exit status for bad configuration or usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status for input that is well-formed but refused (EX_DATAERR): a conflicting enqueue,
/// an id that is not there.
pub const EXIT_DATA: u8 = 65;

/// paynotify: durable, scheduled payment notifications to merchants' servers over Redis.
#[derive(Debug, Parser)]
#[command(name = "paynotify", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "PAYNOTIFY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Threads of the async runtime. Default: the CPUs this process may use (its cgroup's CPU
    /// quota included). Set it to give a node fewer threads than the machine has cores, e.g.
    /// when it shares the machine with other nodes or with Redis.
    #[arg(long, env = "PAYNOTIFY_WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: HTTP API, delivery worker and intake consumer (see --roles).
    Serve(Box<ServeArgs>),
    /// Run everything on this machine: a private redis-server (unless --redis-url is given),
    /// a node with every role, a demo sink, and a printed API key and examples.
    Dev(DevArgs),
    /// Connect simulated devices that ping and answer every call (until Ctrl-C).
    SimulateDevices(SimulateArgs),
    #[command(flatten)]
    Operate(Operation),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn serve(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["paynotify", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => args.to_config(),
            _ => unreachable!(),
        }
    }

    const MINIMAL: &[&str] = &[
        "--api-key",
        "an-api-key-of-16-chars",
        "--token-secret",
        "a-token-secret-16-chars",
        "--node-id",
        "n1",
    ];

    /// The flags' defaults are `Config`'s defaults, which are the production ones: a node
    /// started with no flags refuses private targets, and so does a `Config` built in code.
    #[test]
    fn flag_defaults_are_the_config_defaults_and_safe() {
        let from_flags = serve(MINIMAL).unwrap();
        let mut from_code = serve::config_for("redis://127.0.0.1:6379");
        from_code.node_id = "n1".into();
        from_code.api_keys = vec!["an-api-key-of-16-chars".into()];
        from_code.token_secrets = vec!["a-token-secret-16-chars".into()];
        assert_eq!(format!("{from_flags:?}"), format!("{from_code:?}"));
        assert!(!from_flags.allow_private_targets);
        assert!(!from_code.allow_private_targets);
    }

    #[test]
    fn a_node_id_that_would_break_a_hash_tag_is_refused() {
        for bad in ["a}b", "{x}", "with space", "", &"x".repeat(129)] {
            let mut args = MINIMAL.to_vec();
            args[5] = bad;
            let err = serve(&args).unwrap_err();
            assert!(err.starts_with("--node-id"), "{bad:?}: {err}");
        }
        let mut args = MINIMAL.to_vec();
        args[5] = "pod-7f9c.zone-a:1";
        assert_eq!(serve(&args).unwrap().node_id, "pod-7f9c.zone-a:1");
    }

    #[test]
    fn a_bad_signing_key_is_refused_naming_its_flag() {
        let mut args = MINIMAL.to_vec();
        args.extend(["--signing-key", "whsk_AAAA"]);
        let err = serve(&args).unwrap_err();
        assert!(err.starts_with("--signing-key"), "{err}");
        let (key, _) = crate::delivery::signing::generate_key_pair();
        let mut args = MINIMAL.to_vec();
        args.extend(["--signing-key", key.as_str()]);
        assert_eq!(serve(&args).unwrap().signing_keys, vec![key.clone()]);
    }

    #[test]
    fn roles_help_names_every_role() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let roles = serve
            .get_arguments()
            .find(|a| a.get_id() == "roles")
            .unwrap();
        let help = roles.get_help().unwrap().to_string();
        for role in ["api", "worker", "gateway", "all"] {
            assert!(help.contains(role), "{help}");
        }
    }
}
