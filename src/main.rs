//! The `paynotify` binary: parses the command line, installs logging, hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use paynotify::cli::{Cli, Command, LogFormat, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// mimalloc: the delivery path allocates small buffers per request (HTTP, Redis replies, JSON);
// glibc malloc took about a sixth of a worker's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let filter =
        EnvFilter::try_from_env("PAYNOTIFY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.to_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let listener = match tokio::net::TcpListener::bind(&args.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: --listen {}: {e}", args.listen);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            tokio::spawn(paynotify::shutdown::cancel_on_signal(shutdown.clone()));
            match paynotify::run(config, listener, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev(args) => {
            tokio::spawn(paynotify::shutdown::cancel_on_signal(shutdown.clone()));
            match paynotify::dev::run(args, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SimulateDevices(args) => match paynotify::cli::simulate::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => ExitCode::from(code),
        },
        Command::Operate(operation) => paynotify::cli::ops::operate(operation).await,
    }
}
