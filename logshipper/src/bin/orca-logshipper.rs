//! `orca-logshipper --config FILE`: the shipper as its own small binary,
//! the same wiring as `orca logshipper`, so this crate's process tests
//! (SIGKILL and restart) can run it without building the whole CLI.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [flag, path] if flag == "--config" => PathBuf::from(path),
        _ => {
            eprintln!("usage: orca-logshipper --config FILE");
            return ExitCode::from(2);
        }
    };
    orca_core::telemetry::init_tracing("info");
    let config: orca_logshipper::config::Config = match orca_core::config::load(Some(&path), |_| {})
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(orca_logshipper::run(
        config,
        None,
        orca_core::telemetry::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
