//! The JSON results of the C ABI (`docs/wasm-abi.md`). Configs and flag values are JSON text
//! that abx-core never parses, so they are passed on as strings (`config_json`,
//! `value_json`) rather than spliced into the output: a malformed value in a snapshot then
//! cannot make the whole result unparsable.

use abx_core::snapshot::Snapshot;
use abx_core::{Assignment, Context, Evaluation, Evaluator, ExposureAttributes, FlagResult};
use serde::Serialize;
use serde::ser::Serializer;

use crate::packed::{FLAG_REASONS, REASONS, flag_values};

#[derive(Serialize)]
pub struct ExperimentJson<'a> {
    pub experiment: &'a str,
    pub experiment_id: &'a str,
    pub variant: Option<&'a str>,
    pub config_json: Option<&'a str>,
    pub reason: &'static str,
    pub log_exposure: bool,
    /// The holdout the unit reached, to log as an exposure to it (`abx_core::HoldoutStep`).
    pub holdout: Option<HoldoutJson<'a>>,
    /// What the exposure to log carries besides its unit: the context's values of the
    /// attributes the experiment's results are broken down by (format 2 snapshots). Only
    /// with `log_exposure`, and left out when there are none.
    #[serde(skip_serializing_if = "ExposureAttributes::is_empty")]
    pub attributes: ExposureAttributes<'a, 'a>,
}

#[derive(Serialize)]
pub struct HoldoutJson<'a> {
    pub holdout_id: &'a str,
    pub arm: &'static str,
}

impl<'a> ExperimentJson<'a> {
    /// `a`, an answer `evaluator` gave for `context`.
    pub fn new(evaluator: &'a Evaluator, a: &Assignment<'a>, context: &'a Context) -> Self {
        ExperimentJson {
            experiment: a.experiment_key,
            experiment_id: a.experiment_id,
            variant: a.variant,
            config_json: a.config,
            reason: a.reason.as_str(),
            log_exposure: a.log_exposure,
            holdout: evaluator.holdout_step(a, context).map(|step| HoldoutJson {
                holdout_id: step.holdout_id,
                arm: step.arm(),
            }),
            attributes: if a.log_exposure {
                evaluator.exposure_attributes(a.index, context)
            } else {
                ExposureAttributes::default()
            },
        }
    }
}

#[derive(Serialize)]
pub struct FlagJson<'a> {
    pub flag: &'a str,
    pub value_json: &'a str,
    pub reason: &'static str,
    /// The key of the experiment that supplied the value (reason `experiment`).
    pub experiment: Option<&'a str>,
    /// The holdout the unit reached through the experiments the flag consulted, to log as
    /// an exposure to it with the unit of the experiment `holdout_experiment` names
    /// (`abx_core::FlagResult::holdout_experiment`).
    pub holdout: Option<HoldoutJson<'a>>,
    pub holdout_experiment: Option<&'a str>,
}

impl<'a> FlagJson<'a> {
    /// `f`, a result `evaluator` gave for `context`, with `answer`, the answer of the
    /// experiment `f.holdout_experiment` names.
    pub fn new(
        evaluator: &'a Evaluator,
        f: &FlagResult<'a>,
        answer: Option<&Assignment<'a>>,
        context: &Context,
    ) -> Self {
        let key = |e: u32| {
            let experiments = &evaluator.snapshot().experiments;
            experiments.get(e as usize).map(|e| e.key.as_str())
        };
        let step = answer.and_then(|a| evaluator.holdout_step(a, context));
        FlagJson {
            flag: f.flag_key,
            value_json: f.value,
            reason: f.reason.as_str(),
            experiment: f.experiment.and_then(key),
            holdout: step.map(|step| HoldoutJson {
                holdout_id: step.holdout_id,
                arm: step.arm(),
            }),
            holdout_experiment: step.and(f.holdout_experiment).and_then(key),
        }
    }
}

/// `{"snapshot_version", "experiments": {key: …}, "flags": {key: …}}`, the shape of the
/// origin's `POST /evaluate`.
pub struct EvaluationJson<'a> {
    pub evaluator: &'a Evaluator,
    pub evaluation: &'a Evaluation<'a>,
    /// The context evaluated, for the holdout steps.
    pub context: &'a Context,
}

impl Serialize for EvaluationJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let snapshot = self.evaluator.snapshot();
        let experiments = self.evaluation.experiments.iter().map(|a| {
            let json = ExperimentJson::new(self.evaluator, a, self.context);
            (a.experiment_key, json)
        });
        let flags = self.evaluation.flags.iter().map(|f| {
            let experiments = &self.evaluation.experiments;
            let answer = f
                .holdout_experiment
                .and_then(|e| experiments.get(e as usize));
            let json = FlagJson::new(self.evaluator, f, answer, self.context);
            (f.flag_key, json)
        });
        let mut out = serializer.serialize_struct("Evaluation", 3)?;
        out.serialize_field("snapshot_version", &snapshot.snapshot_version)?;
        out.serialize_field("experiments", &Map(experiments))?;
        out.serialize_field("flags", &Map(flags))?;
        out.end()
    }
}

/// Serializes an iterator of pairs as a JSON object without collecting it first.
struct Map<I>(I);

impl<K: Serialize, V: Serialize, I: Iterator<Item = (K, V)> + Clone> Serialize for Map<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.clone())
    }
}

/// Serializes an iterator as a JSON array without collecting it first.
struct Seq<I>(I);

impl<T: Serialize, I: Iterator<Item = T> + Clone> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// The name tables a host needs to read packed results (`abx_describe`).
pub struct Description<'a>(pub &'a Snapshot);

impl Serialize for Description<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let s = self.0;
        let text = |i: u32| s.strings.get(i as usize).map_or("", String::as_str);
        let attribute = |i: u32| s.attributes.get(i as usize).map_or("", String::as_str);
        let experiments = s.experiments.iter().map(|e| ExperimentTable {
            key: &e.key,
            id: e.id.to_text().as_str().into(),
            unit: attribute(e.unit),
            variants: e.variants.iter().map(|v| text(v.key)).collect(),
            configs_json: e.variants.iter().map(|v| v.config.as_str()).collect(),
        });
        let flags = s.flags.iter().map(|f| FlagTable {
            key: &f.key,
            unit: attribute(f.unit),
            values_json: flag_values(f).collect(),
        });
        let mut out = serializer.serialize_struct("Description", 6)?;
        out.serialize_field("snapshot_version", &s.snapshot_version)?;
        out.serialize_field("published_at_ms", &s.published_at_ms)?;
        out.serialize_field("reasons", &Seq(REASONS.iter().map(|r| r.as_str())))?;
        out.serialize_field(
            "flag_reasons",
            &Seq(FLAG_REASONS.iter().map(|r| r.as_str())),
        )?;
        out.serialize_field("experiments", &Seq(experiments))?;
        out.serialize_field("flags", &Seq(flags))?;
        out.end()
    }
}

#[derive(Serialize)]
struct ExperimentTable<'a> {
    key: &'a str,
    id: String,
    unit: &'a str,
    variants: Vec<&'a str>,
    configs_json: Vec<&'a str>,
}

#[derive(Serialize)]
struct FlagTable<'a> {
    key: &'a str,
    unit: &'a str,
    values_json: Vec<&'a str>,
}
