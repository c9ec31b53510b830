//! `weightcast manager` (the open API, cluster registry and job queue) and
//! `weightcast manager token create`, `weightcast manager user set-password`.

use super::cluster_secret::ClusterSecretArgs;
use super::ready_file;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use weightcast_manager::{console, tokens, Db, Manager, ManagerConfig};
use weightcast_origin::hub::DEFAULT_ENDPOINT;

#[derive(Args, Debug)]
pub struct ManagerArgs {
    #[command(subcommand)]
    pub command: Option<ManagerCommand>,
    /// Where the embedded SQLite database lives (manager.db).
    #[arg(
        long,
        env = "WEIGHTCAST_MANAGER_DATA_DIR",
        global = true,
        default_value = "/var/lib/weightcast-manager"
    )]
    pub data_dir: PathBuf,
    /// A PostgreSQL database instead (postgres://user@host/db), shared by
    /// several manager replicas.
    #[arg(
        long,
        env = "WEIGHTCAST_MANAGER_DATABASE",
        global = true,
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// HTTP address of the open API and the cluster registry.
    #[arg(
        long,
        env = "WEIGHTCAST_MANAGER_LISTEN",
        default_value = "0.0.0.0:7500"
    )]
    pub listen: SocketAddr,
    /// Seconds without a keepalive before a scheduler or seed peer is
    /// marked inactive.
    #[arg(long, env = "WEIGHTCAST_MANAGER_KEEPALIVE_TTL", default_value_t = 15)]
    pub keepalive_ttl: u64,
    /// The Hub hf:// preheats resolve against.
    #[arg(long, env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hf_endpoint: String,
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// The console's root password, set at the first start (when no user
    /// has one); change it later with `weightcast manager user set-password`.
    #[arg(long, env = "WEIGHTCAST_MANAGER_ROOT_PASSWORD", hide_env_values = true)]
    pub root_password: Option<String>,
    /// Write {"addr"} here once serving (for scripts using port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// The cluster secret the schedulers require, for jobs and the console.
    #[command(flatten)]
    pub cluster_secret: ClusterSecretArgs,
}

#[derive(Subcommand, Debug)]
pub enum ManagerCommand {
    /// Personal access tokens of the open API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Users of the web console.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Sets a console user's password (creating the user) and ends its
    /// sessions. The password comes from WEIGHTCAST_MANAGER_PASSWORD, else
    /// the first line of standard input.
    SetPassword {
        #[arg(long, default_value = "root")]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Creates a token and prints it once (only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        /// job, cluster; comma-separated or repeated. Default: both.
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d, 12h. Default: no expiry.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Deactivates a token (requests with it get 403).
    Revoke {
        #[arg(long)]
        name: String,
    },
}

pub async fn run(a: ManagerArgs) -> anyhow::Result<()> {
    match a.command {
        Some(ManagerCommand::Token { command }) => {
            token(&a.data_dir, a.database.as_deref(), command).await
        }
        Some(ManagerCommand::User { command }) => {
            user(&a.data_dir, a.database.as_deref(), command).await
        }
        None => serve(a).await,
    }
}

async fn token(
    data_dir: &std::path::Path,
    database: Option<&str>,
    c: TokenCommand,
) -> anyhow::Result<()> {
    let db = Db::open(database, data_dir).await?;
    match c {
        TokenCommand::Create {
            name,
            scopes,
            expires,
        } => {
            let scopes = if scopes.is_empty() {
                tokens::SCOPES.iter().map(|s| s.to_string()).collect()
            } else {
                scopes
            };
            tokens::check_scopes(&scopes).map_err(anyhow::Error::msg)?;
            let expires_at = expires
                .as_deref()
                .map(tokens::parse_expiry)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .map(|ms| weightcast_manager::db::now_ms() + ms);
            let (token, hash) = tokens::generate();
            db.create_token(&name, &hash, &scopes, expires_at).await?;
            println!("{token}");
            eprintln!(
                "token {name:?} created with scopes {}; it is shown only now",
                scopes.join(",")
            );
        }
        TokenCommand::Revoke { name } => {
            if !db.set_token_state(&name, "inactive").await? {
                anyhow::bail!("no token named {name:?}");
            }
            eprintln!("token {name:?} is inactive");
        }
    }
    Ok(())
}

async fn user(
    data_dir: &std::path::Path,
    database: Option<&str>,
    c: UserCommand,
) -> anyhow::Result<()> {
    let UserCommand::SetPassword { name } = c;
    let password = match std::env::var("WEIGHTCAST_MANAGER_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    let db = Db::open(database, data_dir).await?;
    console::session::set_password(&db, &name, &password).await?;
    eprintln!("console user {name:?}: password set; its sessions are signed out");
    Ok(())
}

async fn serve(a: ManagerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", a.listen))?;
    let config = ManagerConfig {
        data_dir: a.data_dir.clone(),
        database: a.database.clone(),
        keepalive_ttl: Duration::from_secs(a.keepalive_ttl.max(1)),
        hf_endpoint: a.hf_endpoint.clone(),
        hf_token: a.hf_token.clone(),
        root_password: a.root_password.clone(),
        cluster_secrets: a.cluster_secret.load()?,
    };
    let manager = Manager::start(config, listener)
        .await
        .context("cannot start the manager")?;
    if let Some(f) = &a.ready_file {
        ready_file::write(f, &serde_json::json!({"addr": manager.addr.to_string()}))?;
    }
    let db = match &a.database {
        Some(_) => "postgresql",
        None => "sqlite",
    };
    tracing::info!(addr = %manager.addr, db, "manager ready");
    ready_file::shutdown_signal().await;
    tracing::info!("shutting down");
    manager.shutdown().await;
    Ok(())
}
