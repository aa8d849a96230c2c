//! Every worker of the service in one place: the four read models, the
//! membership engine and the NATS relay. `serve` starts them
//! ([`Workers::start`]), `migrate` creates their tables ([`migrate`]),
//! `replay` and `bench` rebuild the read models by name ([`ReadModel`]),
//! and `/readyz` lists them ([`Workers::handles`]). A new read model is
//! added here and nowhere else.

use crate::engine::Engine;
use crate::read_models::attributes::AttributesProjection;
use crate::read_models::groups::GroupsProjection;
use crate::read_models::jobs::JobsProjection;
use crate::read_models::users::{InlineUsers, UsersProjection};
use crate::relay::{Relay, RelayConfig};
use crate::{Projection, ProjectionError, Runner, RunnerHandle};
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use userstream_eventlog::SqlEventLog;

/// A read model the runner builds from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadModel {
    Users,
    Attributes,
    Groups,
    Jobs,
}

/// Something to do with a read model's projection, whichever it is (the
/// projections are different types, so this is how code that is generic
/// over them takes one by name).
pub trait WithProjection {
    type Output;
    fn call<P: Projection + Clone>(self, projection: P) -> impl Future<Output = Self::Output>;
}

impl ReadModel {
    pub const ALL: [ReadModel; 4] = [ReadModel::Users, ReadModel::Attributes, ReadModel::Groups, ReadModel::Jobs];

    /// Its projection's name: the checkpoint's key, and what `replay --projection` takes.
    pub fn name(self) -> &'static str {
        match self {
            ReadModel::Users => UsersProjection.name(),
            ReadModel::Attributes => AttributesProjection.name(),
            ReadModel::Groups => GroupsProjection.name(),
            ReadModel::Jobs => JobsProjection.name(),
        }
    }

    pub fn by_name(name: &str) -> Option<ReadModel> {
        ReadModel::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Runs `f` with this read model's projection.
    pub async fn with<F: WithProjection>(self, f: F) -> F::Output {
        match self {
            ReadModel::Users => f.call(UsersProjection).await,
            ReadModel::Attributes => f.call(AttributesProjection).await,
            ReadModel::Groups => f.call(GroupsProjection).await,
            ReadModel::Jobs => f.call(JobsProjection).await,
        }
    }
}

/// Creates (or upgrades) the tables of every worker; what `userstream
/// migrate` does, and what [`Workers::start`] does first.
pub async fn migrate(log: &SqlEventLog) -> Result<(), ProjectionError> {
    struct Migrate<'a>(&'a SqlEventLog);
    impl WithProjection for Migrate<'_> {
        type Output = Result<(), sqlx::Error>;
        async fn call<P: Projection + Clone>(self, projection: P) -> Self::Output {
            Runner::new(self.0.clone(), projection).await.map(drop)
        }
    }
    for model in ReadModel::ALL {
        model.with(Migrate(log)).await?;
    }
    Engine::new(log.clone()).await?;
    Ok(())
}

/// The workers of one process, running.
pub struct Workers {
    pub users: RunnerHandle,
    pub attributes: RunnerHandle,
    pub groups: RunnerHandle,
    pub jobs: RunnerHandle,
    pub membership: RunnerHandle,
    pub relay: Option<RunnerHandle>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Migrates and starts every worker (the relay only with a NATS config);
    /// they run until `cancel` fires.
    pub async fn start(
        log: &SqlEventLog,
        nats: Option<RelayConfig>,
        cancel: &CancellationToken,
        poll: Duration,
    ) -> Result<Workers, ProjectionError> {
        let users = Runner::new(log.clone(), UsersProjection).await?;
        // On SQLite, created users go into the read model in the log's own
        // transaction; the runner applies everything else.
        log.set_inline(std::sync::Arc::new(InlineUsers));
        let attributes = Runner::new(log.clone(), AttributesProjection).await?;
        let groups = Runner::new(log.clone(), GroupsProjection).await?;
        let jobs = Runner::new(log.clone(), JobsProjection).await?;
        let engine = Engine::new(log.clone()).await?;
        let mut workers = Workers {
            users: users.handle(),
            attributes: attributes.handle(),
            groups: groups.handle(),
            jobs: jobs.handle(),
            membership: engine.handle(),
            relay: None,
            tasks: vec![
                tokio::spawn(users.run(cancel.clone(), poll)),
                tokio::spawn(attributes.run(cancel.clone(), poll)),
                tokio::spawn(groups.run(cancel.clone(), poll)),
                tokio::spawn(jobs.run(cancel.clone(), poll)),
                tokio::spawn(engine.run(cancel.clone(), poll)),
            ],
        };
        if let Some(nats) = nats {
            let relay = Relay::new(log.clone(), nats).await?;
            workers.relay = Some(relay.handle());
            workers.tasks.push(tokio::spawn(relay.run(cancel.clone(), poll)));
        }
        Ok(workers)
    }

    /// Every worker's handle, for readiness.
    pub fn handles(&self) -> Vec<RunnerHandle> {
        let all = [&self.users, &self.attributes, &self.groups, &self.jobs, &self.membership];
        all.into_iter().cloned().chain(self.relay.clone()).collect()
    }
}
