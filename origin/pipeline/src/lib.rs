//! abx-origin-pipeline: from acknowledged events to rollups.
//!
//! The event log (`writer` appends with group commit, `tail` keeps what it committed last
//! for the pipeline of the same process), the JetStream producer and loader (`jetstream`),
//! attribution and rollups over the log (`attribution`), and the ClickHouse warehouse
//! (`clickhouse`, recomputed by `warehouse`). It owns its tables (`tables` is their SQL):
//! nothing outside this crate writes them, and readers go through [`Pipeline`], which
//! chooses the SQL rollups or the warehouse's. Background tasks get a [`Pipeline`], never
//! the server's state.

pub mod attribution;
pub mod clickhouse;
mod error;
pub mod jetstream;
pub mod properties;
pub mod tables;
pub mod tail;
pub mod telemetry;
pub mod warehouse;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

// The modules name these through the crate root.
use abx_origin_domain::{clock, event, model, plan, rollup};
use abx_origin_store as store;
use abx_origin_store::db;

use abx_origin_domain::event::Window;
use abx_origin_domain::model::catalog::Metric;
use abx_origin_domain::model::experiment::Experiment;
use abx_origin_domain::rollup::Rollups;
use sqlx::AnyConnection;

pub use error::Error;

/// What the pipeline is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Events the pipeline consumes per transaction.
    pub batch: i64,
    /// Which event times are accepted; raw events older than its age are pruned.
    pub event_window: Window,
    /// The JetStream loader waits while more events than this wait for the pipeline.
    pub max_lag: i64,
    /// Raw events in the warehouse are kept this long (see `warehouse::refresh`).
    pub warehouse_retention_days: Option<i64>,
}

/// The pipeline's share of a running origin: its databases, writer, caches and warehouse.
/// Tasks and handlers that work on events get this, not the whole server.
pub struct Pipeline {
    /// The configuration database (experiments, metrics, the pipeline's cursor and state).
    pub db: db::Db,
    /// The event log: its own SQLite file, or `db` itself on PostgreSQL (see
    /// `abx_origin_store::db::event_log_file`).
    pub log: db::Db,
    pub settings: Settings,
    pub telemetry: Arc<telemetry::Telemetry>,
    pub writer: writer::Writer,
    /// What the writer committed last, for the pipeline (see `tail`).
    pub log_tail: Arc<tail::LogTail>,
    /// The ClickHouse warehouse, when events are analysed there.
    pub warehouse: Option<Arc<clickhouse::ClickHouse>>,
    /// The pipeline's per-unit state between batches (see `attribution::UnitCache`).
    pub unit_cache: tokio::sync::Mutex<attribution::UnitCache>,
    /// The property names recorded by this process (shared with the writer).
    pub properties: Arc<properties::PropertyCatalog>,
}

impl Pipeline {
    /// An experiment's rollups, from the warehouse when events are analysed there (with the
    /// time they were computed), else from the SQL pipeline's tables (always current).
    pub async fn rollups(
        &self,
        conn: &mut AnyConnection,
        experiment: &Experiment,
        metrics: &HashMap<String, Metric>,
    ) -> Result<(Rollups, Option<i64>), Error> {
        match &self.warehouse {
            Some(warehouse) => {
                let (rollups, computed_ms) =
                    warehouse::rollups(&self.db, warehouse, experiment, metrics).await?;
                Ok((rollups, Some(computed_ms)))
            }
            None => {
                let plan = plan::plan_of(experiment, metrics);
                Ok((
                    Rollups {
                        exposures: tables::exposure_rollups(conn, &experiment.id).await?,
                        metrics: tables::metric_rollups(conn, &experiment.id).await?,
                        quantiles: attribution::quantile_rollups(conn, &experiment.id, &plan)
                            .await?,
                        capped: attribution::capped_rollups(conn, &experiment.id, &plan).await?,
                    },
                    None,
                ))
            }
        }
    }

    /// The cells of a drill-down of an experiment by a dimension, from the warehouse or the
    /// SQL pipeline's per-unit tables.
    pub async fn dimension_cells(
        &self,
        conn: &mut AnyConnection,
        experiment: &Experiment,
        metrics: &HashMap<String, Metric>,
        dimension: &str,
    ) -> Result<Vec<rollup::DimensionCell>, Error> {
        let plan = &plan::plan_of(experiment, metrics);
        match &self.warehouse {
            Some(warehouse) => {
                warehouse::beside_ticks(warehouse, |history| async move {
                    let cells =
                        warehouse.dimension_cells((&experiment.id, plan), dimension, &history);
                    Ok(cells.await?)
                })
                .await
            }
            None => Ok(attribution::dimension_cells(conn, &experiment.id, plan, dimension).await?),
        }
    }

    /// Per (A variant, B variant) among units exposed to both experiments: units, Σx and
    /// Σx² of `metric`, from the warehouse or the SQL pipeline's tables.
    pub async fn interaction_cells(
        &self,
        conn: &mut AnyConnection,
        (a, b): (&Experiment, &Experiment),
        metric: &Metric,
        metrics: &HashMap<String, Metric>,
    ) -> Result<Vec<rollup::InteractionCell>, Error> {
        match &self.warehouse {
            Some(warehouse) => Ok(warehouse
                .interaction_cells(
                    (&a.id, &plan::plan_of(a, metrics)),
                    (&b.id, &plan::plan_of(b, metrics)),
                    &metric.into(),
                )
                .await?),
            None => Ok(tables::interaction_cells(conn, &a.id, &b.id, metric).await?),
        }
    }
}
