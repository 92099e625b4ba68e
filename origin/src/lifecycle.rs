//! The experiment lifecycle: start, pause, resume, complete and archive, with what each does
//! to layer slots, the status, the audit log and the outbox. The HTTP handlers and the
//! guardrail monitor run these inside a configuration change (`AppState::mutate`).

use serde::Deserialize;
use serde_json::json;
use sqlx::AnyConnection;

use crate::error::{ApiError, ApiResult};
use crate::model::experiment::{self, Action, Experiment};
use crate::model::slots;
use crate::store::experiments::StatusChange;
use crate::store::{self, Change};

/// Optional body of lifecycle requests.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleBody {
    /// For `complete`: the variant to ship to everyone (but the units of a running holdout
    /// the experiment respects).
    #[serde(default)]
    pub ship: Option<String>,
    /// Recorded in the audit log and shown as the status reason.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest reason a lifecycle action records, in characters.
const MAX_REASON_CHARS: usize = 1_000;

/// One experiment by id or key; 404 when there is none.
pub(crate) async fn load(conn: &mut AnyConnection, id: &str) -> ApiResult<Experiment> {
    store::experiments::get(conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("experiment `{id}`")))
}

/// The conflict of a layer without room for `free_bp` more basis points.
pub(crate) fn layer_full(free_bp: u16) -> ApiError {
    let free_percent = f64::from(free_bp) / 100.0;
    ApiError::Conflict {
        code: "layer_full",
        message: format!("not enough free room in the layer: {free_percent}% is free"),
        details: Some(json!({"free_percent": free_percent})),
    }
}

/// Applies a lifecycle action inside a configuration change.
pub async fn apply(
    conn: &mut AnyConnection,
    actor: &str,
    id: &str,
    action: Action,
    body: &LifecycleBody,
) -> ApiResult<Experiment> {
    if let Some(reason) = &body.reason {
        // Stored as the status reason, shown to everyone reading the experiment; and
        // PostgreSQL's text cannot hold NUL, which would fail the change with a 500.
        let mut errors = Vec::new();
        crate::model::check_text(reason, "reason", MAX_REASON_CHARS, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::Unprocessable(errors));
        }
    }
    let current = load(conn, id).await?;
    let to = experiment::transition(current.status, action)?;
    if body.ship.is_some() && action != Action::Complete {
        return Err(ApiError::invalid("ship", "only `complete` ships a variant"));
    }
    if let Some(ship) = &body.ship
        && !current.variants.iter().any(|v| &v.name == ship)
    {
        return Err(ApiError::invalid(
            "ship",
            format!("unknown variant `{ship}`"),
        ));
    }
    match action {
        Action::Start => {
            if let Some(layer_id) = &current.layer_id {
                let ranges = store::catalog::layer_ranges(conn, layer_id).await?;
                check_layer_companions(conn, &current, &ranges).await?;
                let taken: Vec<slots::Range> = ranges.iter().map(|(_, s, e)| (*s, *e)).collect();
                let mine = slots::allocate(&taken, current.traffic_bp).map_err(layer_full)?;
                store::catalog::set_allocations(conn, layer_id, &current.id, &mine).await?;
            }
        }
        Action::Complete => {
            if let Some(layer_id) = &current.layer_id {
                store::catalog::set_allocations(conn, layer_id, &current.id, &[]).await?;
            }
        }
        Action::Pause | Action::Resume | Action::Archive => {}
    }
    let change = StatusChange {
        status: to,
        reason: body.reason.as_deref(),
        shipped_variant: body.ship.as_deref(),
        started: action == Action::Start,
        ended: action == Action::Complete,
    };
    store::experiments::set_status(conn, &current.id, &change).await?;
    let details = json!({"key": current.key, "from": current.status, "to": to, "ship": body.ship, "reason": body.reason});
    let action_name = format!(
        "experiment.{}",
        match action {
            Action::Start => "started",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Complete => "completed",
            Action::Archive => "archived",
        }
    );
    store::record(
        conn,
        Change {
            actor,
            action: &action_name,
            entity_type: "experiment",
            entity_id: &current.id,
            details,
        },
    )
    .await?;
    load(conn, &current.id).await
}

/// Experiments sharing a layer must share the unit and switchback period, or the layer could
/// no longer guarantee that a unit is in at most one of them.
async fn check_layer_companions(
    conn: &mut AnyConnection,
    e: &Experiment,
    ranges: &[(String, u16, u16)],
) -> ApiResult<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (other_id, _, _) in ranges {
        if other_id == &e.id || !seen.insert(other_id.clone()) {
            continue;
        }
        let other = load(conn, other_id).await?;
        if other.unit != e.unit || other.switchback_period_s != e.switchback_period_s {
            return Err(ApiError::conflict(
                "layer_mismatch",
                format!(
                    "experiment `{}` in this layer uses unit `{}` and switchback {:?}; experiments sharing a layer must match",
                    other.key, other.unit, other.switchback_period_s
                ),
            ));
        }
    }
    Ok(())
}
