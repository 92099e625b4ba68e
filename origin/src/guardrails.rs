//! The guardrail monitor. On a schedule it computes every running experiment's guardrail
//! checks (always-valid one-sided tests, so checking often does not inflate false alarms)
//! and pauses an experiment whose treatment degrades a guardrail: the pause publishes a
//! snapshot so edges and browsers stop assigning it, and the audit log and the webhook (via
//! the outbox) receive the evidence. With a warehouse, each tick first recomputes the
//! rollups that results and the checks read (`pipeline::warehouse`).

use std::time::Duration;

use serde_json::json;

use crate::analysis::results_of;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{self, LifecycleBody};
use crate::model::experiment::{Action, Experiment, Status};
use crate::{AppState, store};

pub const ACTOR: &str = "guardrail-monitor";

pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(
            state.settings.guardrail_interval_s.max(1),
        ));
        // A tick that overran (a long recomputation) is followed by a full interval, not
        // by the ticks it missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(warehouse) = &state.pipeline.warehouse {
                match crate::pipeline::warehouse::refresh(&state.pipeline, warehouse).await {
                    Ok(Some(_)) => {}
                    // Another pipeline process ticks; this one checks what it stores.
                    Ok(None) => tracing::debug!("another process holds the warehouse's ticks"),
                    Err(error) => {
                        tracing::warn!(%error, "recomputing the warehouse's rollups failed")
                    }
                }
            }
            match check_all(&state).await {
                Ok(round) if !round.paused.is_empty() => {
                    tracing::warn!(paused = ?round.paused, "guardrail monitor paused experiments")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "listing the running experiments failed"),
            }
        }
    });
}

/// What one round of the monitor did.
#[derive(Debug, Default)]
pub struct Round {
    /// The keys of the experiments it paused.
    pub paused: Vec<String>,
    /// The experiments it could not check or pause, with why. Each is logged, and the next
    /// round tries it again.
    pub failed: Vec<(String, ApiError)>,
}

/// Checks every running experiment with guardrails, pausing those in alarm. One
/// experiment's failure (its results could not be computed, say a warehouse answering
/// `unavailable`, or someone paused it first) does not stop the round: a harmful
/// experiment further down the list must still be paused. Only failing to list the running
/// experiments fails the round.
pub async fn check_all(state: &AppState) -> ApiResult<Round> {
    let running = {
        let mut conn = state.db.pool.acquire().await?;
        store::experiments::with_status(&mut conn, &[Status::Running]).await?
    };
    let mut round = Round::default();
    for experiment in running.iter().filter(|e| !e.guardrail_metrics.is_empty()) {
        match check(state, experiment).await {
            Ok(true) => round.paused.push(experiment.key.clone()),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(experiment = %experiment.key, %error, "guardrail check failed");
                round.failed.push((experiment.key.clone(), error));
            }
        }
    }
    Ok(round)
}

/// Checks one experiment's guardrails and pauses it if one is in alarm; says whether it did.
async fn check(state: &AppState, experiment: &Experiment) -> ApiResult<bool> {
    // A connection of its own: one an earlier experiment's failure broke is not reused, and
    // none is held while the pause takes another for its transaction.
    let results = {
        let mut conn = state.db.pool.acquire().await?;
        results_of(state, &mut conn, &experiment.id, false).await?
    };
    let Some(alarm) = results.guardrails.iter().find(|g| g.status == "alarm") else {
        return Ok(false);
    };
    let reason = match &alarm.note {
        Some(note) => format!(
            "guardrail {} degraded in {}: {note}",
            alarm.metric, alarm.variant
        ),
        None => format!(
            "guardrail {} degraded in {}: harmful effect {:.4} (z = {:.2}, always-valid p = {:.2e})",
            alarm.metric, alarm.variant, alarm.harmful_effect, alarm.z, alarm.p_value
        ),
    };
    let evidence = json!({"key": experiment.key, "alarm": alarm, "guardrails": results.guardrails, "srm": results.srm});
    state
        .mutate(async |tx| {
            let body = LifecycleBody {
                ship: None,
                reason: Some(reason.clone()),
            };
            let updated = lifecycle::apply(tx, ACTOR, &experiment.id, Action::Pause, &body).await?;
            store::record(
                tx,
                store::Change {
                    actor: ACTOR,
                    action: "experiment.guardrail_alarm",
                    entity_type: "experiment",
                    entity_id: &updated.id,
                    details: evidence.clone(),
                },
            )
            .await?;
            Ok(())
        })
        .await?;
    Ok(true)
}
