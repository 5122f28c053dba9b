//! `yoom` command line: parses arguments, sets up logging, runs the server.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use yoom::config::{Config, LogFormat, ServeArgs};

/// Yoom — a video-meeting server (SFU) in one binary.
///
/// Browsers publish their camera and microphone once; Yoom forwards the media to everyone else in
/// the room. `yoom serve` serves the web client and signaling on http://localhost:3000.
#[derive(Parser)]
#[command(name = "yoom", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web client, WebSocket signaling (/ws), /healthz and /metrics.
    ///
    /// Every flag can also be set with the YOOM_* variable shown, or in the config file.
    Serve(Box<ServeArgs>),
    /// Load a running Yoom server with simulated members and report loss, delay and CPU.
    ///
    /// Each room gets --publishers members sending synthetic video (and --audio) and
    /// --subscribers receive-only members; every member is a real WebRTC peer in this process.
    Load(yoom::load::LoadArgs),
    /// Check a running server: exit 0 when GET /healthz answers 200, else 1.
    ///
    /// For container health checks (the runtime image has no curl). Gives up after 2 s.
    Healthcheck(yoom::healthcheck::HealthcheckArgs),
    /// Mint a join token for `auth.mode = "token"` and print it.
    ///
    /// The token is an HS256 JWT with claims room, name, exp (and can_publish = false with
    /// --no-publish), signed with auth.secret.
    Token(yoom::auth::TokenArgs),
}

/// After a shutdown signal the process exits within this time, whatever is still running.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Load(args) => load(args),
        Command::Healthcheck(args) => healthcheck(args),
        Command::Token(args) => token(args),
    }
}

fn token(args: yoom::auth::TokenArgs) -> ExitCode {
    use yoom::ids::{MemberName, RoomId};
    let fail = |message: String| {
        eprintln!("yoom token: {message}");
        ExitCode::from(2)
    };
    let secret = match args.secret.clone().filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => {
            let serve = ServeArgs {
                config: args.config.clone(),
                ..ServeArgs::default()
            };
            match Config::load(&serve).map(|c| c.auth_secret) {
                Ok(Some(s)) => s.expose().to_owned(),
                Ok(None) => {
                    return fail(
                        "no secret: pass --secret, set YOOM_AUTH_SECRET or auth.secret".into(),
                    )
                }
                Err(e) => return fail(e.to_string()),
            }
        }
    };
    if secret.len() < 32 {
        return fail("the secret must be at least 32 characters, as the server requires".into());
    }
    if let Err(e) = RoomId::parse(&args.room) {
        return fail(format!("--room: {e}"));
    }
    if let Err(e) = MemberName::parse(&args.name) {
        return fail(format!("--name: {e}"));
    }
    let Some(ttl) = yoom::auth::parse_ttl(&args.ttl) else {
        return fail(format!(
            "--ttl: {:?} is not like 90s, 30m, 1h or 2d",
            args.ttl
        ));
    };
    let claims = yoom::auth::claims_for(
        &args.room,
        &args.name,
        ttl,
        !args.no_publish,
        std::time::SystemTime::now(),
    );
    println!("{}", yoom::auth::mint(&claims, &secret));
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("yoom: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    if !yoom::allocator::fix_thresholds() {
        tracing::debug!(
            "malloc thresholds left as they are (tuned by the environment, or not glibc)"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("yoom: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let addr = std::net::SocketAddr::new(config.bind, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("yoom: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        };
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            wait_for_signal().await;
            let _ = signalled_tx.send(());
        };
        let server = tokio::spawn(yoom::run(config, listener, shutdown));
        let deadline = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_DEADLINE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => match result {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(yoom::ServeError::Start(e))) => {
                    eprintln!("yoom: {e}");
                    ExitCode::from(2)
                }
                Ok(Err(e)) => {
                    eprintln!("yoom: server error: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("yoom: server task failed: {e}");
                    ExitCode::FAILURE
                }
            },
            () = deadline => {
                tracing::warn!("shutdown deadline passed, exiting");
                ExitCode::SUCCESS
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

fn load(args: yoom::load::LoadArgs) -> ExitCode {
    let json = args.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("yoom load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(yoom::load::run(args)) {
        Ok(report) => {
            let _ = yoom::load::print_report(&report, json, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("yoom load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(args: yoom::healthcheck::HealthcheckArgs) -> ExitCode {
    use yoom::healthcheck::{check, target_url, HEALTHCHECK_TIMEOUT};
    let url = match target_url(&args, |key| std::env::var(key).ok()) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("yoom healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("yoom healthcheck: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(check(&url, HEALTHCHECK_TIMEOUT)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yoom healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn init_tracing(config: &Config) {
    // Validated in Config::load, so this only falls back on a race with a changed env.
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
