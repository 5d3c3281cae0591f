//! The `tickwire` binary: reads the configuration, sets up logging, and
//! runs a node (or mints a token).

use std::io::IsTerminal;
use std::time::SystemTime;

use anyhow::Context;
use clap::Parser;
use tickwire::config::{parse_ttl, Cli, CliCommand, Config, LogFormat};

// mimalloc: fanout clones and drops many small buffers across threads,
// where it is markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Every fatal error is one line that names its subject.
    if let Err(e) = run() {
        tracing::error!("{e:#}");
        eprintln!("tickwire: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match Config::load(&cli.settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tickwire: {e}");
            std::process::exit(2);
        }
    };
    match cli.command {
        Some(CliCommand::Token { sub, symbols, ttl }) => {
            let ttl = parse_ttl(&ttl).map_err(anyhow::Error::msg).context("--ttl")?;
            let token = tickwire::auth::mint(
                config.jwt_secret.as_bytes(),
                &sub,
                symbols.as_deref(),
                SystemTime::now() + ttl,
            );
            println!("{token}");
            return Ok(());
        }
        Some(CliCommand::CheckConfig) => {
            let mut shown = config.clone();
            shown.jwt_secret = "***".into();
            shown.api_keys = shown.api_keys.iter().map(|_| "***".to_string()).collect();
            shown.redis_url = shown.redis_url.as_deref().map(tickwire::config::redacted_url);
            println!("{shown:#?}");
            for w in config.warnings() {
                println!("warning: {w}");
            }
            return Ok(());
        }
        None => {}
    }
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(tickwire::server::run(config))?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}
