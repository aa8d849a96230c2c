//! `userstream replay`: rebuilds read models from the log into fresh tables
//! and switches reads over, while a running service keeps answering.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use userstream_eventlog::{Db, EventLog, SqlEventLog};
use userstream_projections::registry::{ReadModel, WithProjection};
use userstream_projections::replay::Rebuild;
use userstream_projections::Projection;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// `sqlite://FILE` or `postgres://…`: the database of the log and the read models.
    #[arg(long = "database", env = "DATABASE_URL", default_value = "sqlite://userstream.db")]
    database: String,
    /// One read model (`users_v1`, `attributes_v1`, `groups_v1`, `jobs_v1`); default: all.
    #[arg(long)]
    projection: Option<String>,
    /// Rebuild up to this position only and keep the result beside the live
    /// model (for an audit of that moment) instead of switching to it.
    #[arg(long)]
    to: Option<i64>,
    /// The master key the service runs with (personal data in the log is
    /// sealed under keys it wraps); without it, the one kept in the database.
    #[arg(long = "attribute-key", env = "USERSTREAM_ATTRIBUTE_KEY", hide_env_values = true)]
    attribute_key: Option<secrecy::SecretString>,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let models: Vec<ReadModel> = match &args.projection {
        Some(p) => match ReadModel::by_name(p) {
            Some(model) => vec![model],
            None => {
                let names: Vec<&str> = ReadModel::ALL.iter().map(|m| m.name()).collect();
                anyhow::bail!("unknown projection {p:?}: one of {}", names.join(", "))
            }
        },
        None => ReadModel::ALL.to_vec(),
    };
    if args.to.is_some_and(|t| t < 0) {
        anyhow::bail!("--to must be a position (0 or more)");
    }
    let db = Db::connect(&args.database).await.context("connecting to the database")?;
    let key = args.attribute_key.as_ref().filter(|k| !secrecy::ExposeSecret::expose_secret(*k).trim().is_empty());
    let (log, _) = userstream_api::open_log(&db, key).await?;
    for model in models {
        model.with(Replay { log: &log, to: args.to }).await?;
    }
    Ok(())
}

struct Replay<'a> {
    log: &'a SqlEventLog,
    to: Option<i64>,
}

impl WithProjection for Replay<'_> {
    type Output = anyhow::Result<()>;
    async fn call<P: Projection + Clone>(self, projection: P) -> anyhow::Result<()> {
        replay(self.log, projection, self.to).await
    }
}

async fn replay<P: Projection + Clone>(log: &SqlEventLog, projection: P, to: Option<i64>) -> anyhow::Result<()> {
    let name = projection.name();
    let head = log.head().await?;
    let target = to.unwrap_or(head);
    let mut rebuild = Rebuild::start(log, projection).await?;
    let bar = ProgressBar::new(target.max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(name);
    let started = Instant::now();
    let mut progress = |p: i64| bar.set_position(p.max(0) as u64);
    let position = rebuild.run_to(target, &mut progress).await?;
    let location = rebuild.shadow.location.clone();
    let position = match to {
        Some(_) => {
            rebuild.build_indexes().await?;
            bar.finish();
            println!("{name}: rebuilt to position {position}, kept in {location} (not switched)");
            position
        }
        None => {
            let switched = rebuild.switch(&mut progress).await?;
            bar.finish();
            println!(
                "{name}: rebuilt and switched at position {} (writes held up {} ms)",
                switched.position,
                switched.locked.as_millis()
            );
            switched.position
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    println!("{name}: {position} events in {seconds:.2} s ({:.0} events/s)", position as f64 / seconds.max(1e-9));
    Ok(())
}
