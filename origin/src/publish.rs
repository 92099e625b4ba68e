//! Snapshot publishing. Every configuration change compiles the whole configuration into a
//! snapshot inside the change's own transaction, so a change and its snapshot commit (or
//! roll back) together; the new snapshot then replaces the one in memory and is announced
//! on the change stream.
//!
//! Experiments dominate the configuration, and reading them back from the database was most
//! of a change's cost (docs/benchmarks.md, abx-origin). So the experiments last loaded are
//! kept, by id, in a [`LoadedExperiments`] owned by the serialising write lock, and a change
//! reloads only those whose `version` moved: every write to an experiment's definition,
//! status or slots bumps it in the same transaction. Debug builds (every test) also compile
//! from a full reload and check that both snapshots agree.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use abx_core::snapshot::{
    Allocation, Experiment as CoreExperiment, Flag as CoreFlag, FlagRule as CoreRule, FlagValue,
    Forced, Id, SlotRange, Status as CoreStatus, Variant,
};
use abx_core::{Evaluator, Format, Snapshot, SnapshotBuilder};
use anyhow::{Context as _, anyhow, bail};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::clock;
use crate::model::catalog::{Holdout, HoldoutStatus, LayerName, Segment};
use crate::model::experiment::Experiment;
use crate::model::experiment::Status;
use crate::model::flag::Flag;
use crate::model::targeting;
use crate::store::{self, StoredSnapshot};

/// The snapshot currently served.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub published_at_ms: i64,
    /// Strong ETag of `bytes`, quoted.
    pub etag: String,
    /// As stored: the newest format, unless an older origin stored it.
    pub bytes: Arc<[u8]>,
    /// The format of `bytes`, known when they are made or loaded, so that a request does
    /// not read the envelope again.
    format: Format,
    pub evaluator: Evaluator,
    json: OnceLock<String>,
    /// The same snapshot in the other format, derived on first request.
    other_format: OnceLock<Encoded>,
    /// What browser keys read, derived on first request (see [`client_copy`]).
    client: OnceLock<ClientCopy>,
}

/// A snapshot's bytes in one format, with their strong ETag (quoted).
#[derive(Debug)]
pub struct Encoded {
    pub etag: String,
    pub bytes: Arc<[u8]>,
    format: Format,
}

impl Encoded {
    fn new(version: u64, bytes: Vec<u8>, format: Format) -> Encoded {
        Encoded {
            etag: etag(version, &bytes),
            bytes: bytes.into(),
            format,
        }
    }
}

/// `snapshot` in `format`, signed when `like` (its bytes in some format) is signed: the
/// genesis snapshot is not, every published one is.
fn encode_like(
    snapshot: &abx_core::Snapshot,
    like: &[u8],
    signing_seed: &[u8; 32],
    format: Format,
) -> Vec<u8> {
    if abx_core::signed_parts(like).is_ok() {
        abx_core::encode_signed_as(snapshot, signing_seed, format)
    } else {
        abx_core::encode_as(snapshot, format)
    }
}

/// The bytes of a copy (`held`) in `format`: those bytes when they are in it, else the copy
/// re-encoded, kept in `other`. Deterministic, so every process serves the same bytes, and
/// so the same ETag, for one version and format.
fn in_format<'a>(
    held: (&'a str, &'a Arc<[u8]>, Format),
    other: &'a OnceLock<Encoded>,
    snapshot: &abx_core::Snapshot,
    format: Format,
    signing_seed: &[u8; 32],
) -> (&'a str, &'a Arc<[u8]>) {
    let (etag, bytes, held_format) = held;
    if held_format == format {
        return (etag, bytes);
    }
    let encoded = other.get_or_init(|| {
        let bytes = encode_like(snapshot, bytes, signing_seed, format);
        Encoded::new(snapshot.snapshot_version, bytes, format)
    });
    (&encoded.etag, &encoded.bytes)
}

/// The client snapshot of one version: no drafts, no QA overrides, private attributes'
/// values hashed (`abx_core::client_view`, docs/snapshot-format.md). Browser keys are public,
/// so this is all they may read; edges and servers read the full snapshot.
#[derive(Debug)]
pub struct ClientCopy {
    /// In the newest format.
    pub encoded: Encoded,
    snapshot: abx_core::Snapshot,
    json: OnceLock<String>,
    other_format: OnceLock<Encoded>,
    /// What browser keys evaluate with, made on their first evaluation.
    evaluator: OnceLock<Option<Evaluator>>,
}

impl ClientCopy {
    /// An evaluator of this copy: what a browser key's evaluation on the origin answers
    /// from, so that it tells a browser no more than the copy it may read (no drafts, no QA
    /// overrides). `None` only if the copy were invalid, which `client_view` never makes.
    pub fn evaluator(&self) -> Option<&Evaluator> {
        self.evaluator
            .get_or_init(|| match Evaluator::new(self.snapshot.clone()) {
                Ok(evaluator) => Some(evaluator),
                Err(error) => {
                    tracing::error!(%error, "the client copy of a snapshot is invalid");
                    None
                }
            })
            .as_ref()
    }

    /// This copy in `format`.
    pub fn copy(&self, format: Format, signing_seed: &[u8; 32]) -> SnapshotCopy<'_> {
        let held = (
            self.encoded.etag.as_str(),
            &self.encoded.bytes,
            self.encoded.format,
        );
        let (etag, bytes) = in_format(
            held,
            &self.other_format,
            &self.snapshot,
            format,
            signing_seed,
        );
        SnapshotCopy {
            etag,
            bytes,
            snapshot: &self.snapshot,
            json: &self.json,
        }
    }
}

/// Derives the client copy of a full snapshot, signed as the full one is (the genesis
/// snapshot is not). Deterministic: every process with the same key and private attributes
/// derives the same bytes, and so the same ETag.
pub fn client_copy(
    full: &abx_core::Snapshot,
    full_bytes: &[u8],
    signing_seed: &[u8; 32],
    private_attributes: &[String],
) -> ClientCopy {
    let private: Vec<&str> = private_attributes.iter().map(String::as_str).collect();
    let snapshot = abx_core::client_view(full, &private);
    let bytes = encode_like(&snapshot, full_bytes, signing_seed, Format::LATEST);
    ClientCopy {
        encoded: Encoded::new(full.snapshot_version, bytes, Format::LATEST),
        snapshot,
        json: OnceLock::new(),
        other_format: OnceLock::new(),
        evaluator: OnceLock::new(),
    }
}

/// What one caller reads of a version, in the format it asked for (see
/// `AppState::snapshot_copy`).
pub struct SnapshotCopy<'a> {
    pub etag: &'a str,
    pub bytes: &'a Arc<[u8]>,
    snapshot: &'a abx_core::Snapshot,
    json: &'a OnceLock<String>,
}

impl SnapshotCopy<'_> {
    /// The readable twin, the same in every format (it shows everything format 2 holds),
    /// rendered on first request.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string_pretty(self.snapshot).unwrap_or_default())
    }
}

impl Published {
    pub fn from_bytes(stored: &StoredSnapshot) -> anyhow::Result<Published> {
        let evaluator =
            Evaluator::from_bytes(&stored.bytes).map_err(|e| anyhow!("stored snapshot: {e}"))?;
        // Older origins stored format 1.
        let format = abx_core::format_of(&stored.bytes).unwrap_or(Format::V1);
        Ok(Published::new(
            stored.version as u64,
            stored.published_at_ms,
            Encoded {
                etag: stored.etag.clone(),
                bytes: stored.bytes.clone().into(),
                format,
            },
            evaluator,
        ))
    }

    fn new(version: u64, published_at_ms: i64, stored: Encoded, evaluator: Evaluator) -> Self {
        Published {
            version,
            published_at_ms,
            etag: stored.etag,
            bytes: stored.bytes,
            format: stored.format,
            evaluator,
            json: OnceLock::new(),
            other_format: OnceLock::new(),
            client: OnceLock::new(),
        }
    }

    /// The full snapshot in `format`.
    pub fn copy(&self, format: Format, signing_seed: &[u8; 32]) -> SnapshotCopy<'_> {
        let (etag, bytes) = in_format(
            (&self.etag, &self.bytes, self.format),
            &self.other_format,
            self.evaluator.snapshot(),
            format,
            signing_seed,
        );
        SnapshotCopy {
            etag,
            bytes,
            snapshot: self.evaluator.snapshot(),
            json: &self.json,
        }
    }

    /// The client copy of this snapshot (see [`ClientCopy`]).
    pub fn client(&self, signing_seed: &[u8; 32], private_attributes: &[String]) -> &ClientCopy {
        self.client.get_or_init(|| {
            client_copy(
                self.evaluator.snapshot(),
                &self.bytes,
                signing_seed,
                private_attributes,
            )
        })
    }
}

/// A public key's id: the first 8 bytes of its SHA-256, hex. Stored in the database as the
/// deployment's active key, and served with the key (`GET /snapshot/key`).
pub fn signing_key_id(public_key: &[u8; 32]) -> String {
    crate::auth::hex(&Sha256::digest(public_key)[..8])
}

/// Refuses a publication signed with a key that is not the deployment's active one: edges
/// pinned to the active public key would reject the snapshot (and with it every later
/// change, a kill switch included) while this process believed it published.
pub async fn check_signing_key(
    conn: &mut AnyConnection,
    public_key: &[u8; 32],
) -> anyhow::Result<()> {
    let own = signing_key_id(public_key);
    let Some(active) = store::active_signing_key(conn, &own, &crate::auth::hex(public_key)).await?
    else {
        bail!("the deployment has no active signing key right now (an activation is running?)");
    };
    if active != own {
        bail!(
            "this process signs snapshots with key {own}, but the deployment's active signing key \
             is {active}: start every process with the same --signing-key (ABX_SIGNING_KEY), or \
             make this key the deployment's with `abx-origin signing-key activate` \
             (docs/api.md, \"Signing keys\")"
        );
    }
    Ok(())
}

pub fn etag(version: u64, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{version}-{}\"", crate::auth::hex(&digest[..8]))
}

/// Everything a snapshot is compiled from.
pub struct Config {
    pub layers: Vec<LayerName>,
    pub holdouts: Vec<Holdout>,
    pub segments: Vec<Segment>,
    pub experiments: Vec<Arc<Experiment>>,
    pub flags: Vec<Flag>,
    /// The instance's dimensions, which every experiment's exposures carry besides its own.
    pub dimensions: Vec<String>,
}

/// The experiments as last committed, by id (see the module's documentation).
#[derive(Default)]
pub struct LoadedExperiments(HashMap<String, Arc<Experiment>>);

/// Loads the configuration, reading in full only the experiments that are not in `loaded`
/// at their current version. Returns the experiments to keep once the transaction commits.
async fn load_config(
    conn: &mut AnyConnection,
    loaded: &LoadedExperiments,
) -> Result<(Config, LoadedExperiments), crate::store::Error> {
    let versions = store::experiments::published_versions(conn).await?;
    let stale: Vec<&str> = versions
        .iter()
        .filter(|(id, version)| loaded.0.get(id).is_none_or(|e| e.version != *version))
        .map(|(id, _)| id.as_str())
        .collect();
    let mut fresh: HashMap<String, Arc<Experiment>> = store::experiments::by_ids(conn, &stale)
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), Arc::new(e)))
        .collect();
    let experiments: Vec<Arc<Experiment>> = versions
        .iter()
        .filter_map(|(id, _)| fresh.remove(id).or_else(|| loaded.0.get(id).cloned()))
        .collect();
    let config = Config {
        layers: store::catalog::layer_names(conn).await?,
        holdouts: store::catalog::holdouts(conn, None).await?,
        segments: store::catalog::segments(conn, None).await?,
        flags: store::flags::flags(conn, None).await?,
        dimensions: store::catalog::instance_dimensions(conn).await?.dimensions,
        experiments,
    };
    let now_loaded = config
        .experiments
        .iter()
        .map(|e| (e.id.clone(), e.clone()))
        .collect();
    Ok((config, LoadedExperiments(now_loaded)))
}

/// The whole configuration read afresh, for the debug-build cross-check.
async fn load_config_in_full(conn: &mut AnyConnection) -> Result<Config, crate::store::Error> {
    let (config, _) = load_config(conn, &LoadedExperiments::default()).await?;
    Ok(config)
}

fn id(text: &str) -> anyhow::Result<Id> {
    Id::parse(text).ok_or_else(|| anyhow!("stored id {text} is not a UUID"))
}

fn status(s: Status) -> CoreStatus {
    match s {
        Status::Draft => CoreStatus::Draft,
        Status::Running => CoreStatus::Running,
        Status::Paused => CoreStatus::Paused,
        Status::Completed => CoreStatus::Completed,
        Status::Archived => CoreStatus::Archived,
    }
}

/// Segments ordered so that every segment comes after the segments it refers to.
fn segments_in_dependency_order(segments: &[Segment]) -> anyhow::Result<Vec<&Segment>> {
    let by_key: HashMap<&str, &Segment> = segments.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut ordered: Vec<&Segment> = Vec::with_capacity(segments.len());
    let mut done: BTreeSet<&str> = BTreeSet::new();
    fn visit<'a>(
        segment: &'a Segment,
        by_key: &HashMap<&str, &'a Segment>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
        ordered: &mut Vec<&'a Segment>,
    ) -> anyhow::Result<()> {
        if done.contains(segment.key.as_str()) {
            return Ok(());
        }
        if path.contains(&segment.key.as_str()) {
            return Err(anyhow!("segment reference cycle through {}", segment.key));
        }
        path.push(&segment.key);
        let mut references = BTreeSet::new();
        targeting::references(&segment.condition, &mut references);
        for key in references {
            let child = by_key
                .get(key.as_str())
                .ok_or_else(|| anyhow!("segment {} refers to unknown {key}", segment.key))?;
            visit(child, by_key, done, path, ordered)?;
        }
        path.pop();
        done.insert(&segment.key);
        ordered.push(segment);
        Ok(())
    }
    for segment in segments {
        visit(segment, &by_key, &mut done, &mut Vec::new(), &mut ordered)?;
    }
    Ok(ordered)
}

/// Compiles the configuration. `version` and `published_at_ms` stamp the result.
pub fn compile(config: &Config, version: u64, published_at_ms: i64) -> anyhow::Result<Snapshot> {
    let mut b = SnapshotBuilder::new(version, published_at_ms);
    let layers: HashMap<&str, u32> = config
        .layers
        .iter()
        .map(|l| Ok((l.id.as_str(), b.layer(id(&l.id)?, &l.key))))
        .collect::<anyhow::Result<_>>()?;
    // Only running holdouts: an ended one holds nobody, so experiments that respected it
    // (shipped variants included) now reach its units.
    let holdouts: HashMap<&str, u32> = config
        .holdouts
        .iter()
        .filter(|h| h.status == HoldoutStatus::Running)
        .map(|h| {
            let index = b.holdout(id(&h.id)?, &h.key, h.percent_bp);
            b.holdout_unit(index, &h.unit);
            Ok((h.id.as_str(), index))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut segments: HashMap<String, u32> = HashMap::new();
    for segment in segments_in_dependency_order(&config.segments)? {
        let expr = targeting::compile(&segment.condition, &segments)
            .map_err(|e| anyhow!("segment {}: {e}", segment.key))?;
        let index = b.segment(id(&segment.id)?, &segment.key, &expr);
        segments.insert(segment.key.clone(), index);
    }

    let known = Compiled {
        layers: &layers,
        holdouts: &holdouts,
        segments: &segments,
    };
    let mut experiment_index: HashMap<&str, u32> = HashMap::new();
    for e in &config.experiments {
        let index = compile_experiment(&mut b, e, &known)?;
        experiment_index.insert(e.key.as_str(), index);
        // Exposures carry what the experiment's results can be broken down by: its own
        // dimensions, then the instance's.
        let mut carried: Vec<&str> = e.dimensions.iter().map(String::as_str).collect();
        for dimension in &config.dimensions {
            if !carried.contains(&dimension.as_str()) {
                carried.push(dimension);
            }
        }
        b.exposure_attributes(index, &carried);
    }

    for f in &config.flags {
        compile_flag(&mut b, f, config, &experiment_index, &segments)?;
    }
    Ok(b.build())
}

/// What an experiment's compilation refers to: the snapshot's indices of layers and
/// holdouts by id, and of segments by key.
struct Compiled<'a> {
    layers: &'a HashMap<&'a str, u32>,
    holdouts: &'a HashMap<&'a str, u32>,
    segments: &'a HashMap<String, u32>,
}

/// Adds one experiment to the snapshot; returns its index.
fn compile_experiment(
    b: &mut SnapshotBuilder,
    e: &Experiment,
    known: &Compiled<'_>,
) -> anyhow::Result<u32> {
    let unit = b.attribute(&e.unit);
    let targeting = match &e.targeting {
        Some(condition) => {
            let expr = targeting::compile(condition, known.segments)
                .map_err(|err| anyhow!("experiment {}: {err}", e.key))?;
            Some(b.condition(&expr))
        }
        None => None,
    };
    // Only running and paused experiments own slots; the others never reach the traffic
    // step, so they are published with a plain traffic gate and do not constrain the
    // layer's shared unit.
    let allocation = match (&e.layer_id, e.status.holds_slots()) {
        (Some(layer), true) => Allocation::Layer {
            layer: *known
                .layers
                .get(layer.as_str())
                .context("experiment's layer")?,
            ranges: e
                .slots
                .iter()
                .map(|&(start, end)| SlotRange { start, end })
                .collect(),
        },
        _ => Allocation::Traffic { bp: e.traffic_bp },
    };
    let ends = abx_core::thresholds(&e.weights_bp)
        .ok_or_else(|| anyhow!("experiment {}: weights", e.key))?;
    let variants: Vec<Variant> = e
        .variants
        .iter()
        .zip(ends)
        .map(|(v, threshold)| Variant {
            key: b.string(&v.name),
            threshold,
            config: v.config.to_string(),
        })
        .collect();
    let position = |name: &str| {
        e.variants
            .iter()
            .position(|v| v.name == name)
            .map(|p| p as u32)
    };
    let forced = e
        .forced
        .iter()
        .filter_map(|(unit, variant)| {
            Some(Forced {
                unit: unit.clone(),
                variant: position(variant)?,
            })
        })
        .collect();
    let holdout = e
        .holdout_id
        .as_deref()
        .and_then(|h| known.holdouts.get(h).copied());
    Ok(b.experiment(CoreExperiment {
        id: id(&e.id)?,
        key: e.key.clone(),
        status: status(e.status),
        unit,
        targeting,
        holdout,
        allocation,
        variants,
        forced,
        shipped: e.shipped_variant.as_deref().and_then(position),
        switchback_period_s: e.switchback_period_s,
    }))
}

/// Adds one flag to the snapshot. A rule that takes its value from an experiment which is
/// not in the snapshot (archived) is left out.
fn compile_flag(
    b: &mut SnapshotBuilder,
    f: &Flag,
    config: &Config,
    experiment_index: &HashMap<&str, u32>,
    segments: &HashMap<String, u32>,
) -> anyhow::Result<()> {
    let unit = b.attribute(&f.unit);
    let mut rules = Vec::with_capacity(f.rules.len());
    for rule in &f.rules {
        let condition = match rule.condition.as_ref().filter(|c| !c.is_null()) {
            Some(c) => Some(b.condition(
                &targeting::compile(c, segments).map_err(|err| anyhow!("flag {}: {err}", f.key))?,
            )),
            None => None,
        };
        let value = match (&rule.value, &rule.from_experiment) {
            (Some(value), _) => FlagValue::Json(value.to_string()),
            (None, Some(from)) => {
                // A rule whose experiment has been archived drops out of the snapshot.
                let Some(&experiment) = experiment_index.get(from.experiment.as_str()) else {
                    continue;
                };
                let source = config
                    .experiments
                    .iter()
                    .find(|e| e.key == from.experiment)
                    .context("flag's experiment")?;
                let values = source
                    .variants
                    .iter()
                    .map(|v| match &from.config_key {
                        Some(key) => v.config.get(key).cloned().unwrap_or(Json::Null).to_string(),
                        None => v.config.to_string(),
                    })
                    .collect();
                FlagValue::Experiment { experiment, values }
            }
            (None, None) => continue,
        };
        rules.push(CoreRule {
            condition,
            rollout_bp: (rule.rollout_percent * 100.0).round() as u16,
            value,
        });
    }
    b.flag(CoreFlag {
        key: f.key.clone(),
        enabled: f.enabled,
        unit,
        off_value: f.off_value.to_string(),
        default_value: f.default_value.to_string(),
        rules,
    });
    Ok(())
}

/// Whether two snapshots differ in anything but their version stamp.
fn same_content(a: &Snapshot, b: &Snapshot) -> bool {
    let strip = |s: &Snapshot| Snapshot {
        snapshot_version: 0,
        published_at_ms: 0,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// What a change publishes, to install once its transaction commits.
pub struct Prepared {
    /// The new snapshot; `None` when the configuration compiles to the one already published.
    pub published: Option<Published>,
    /// The experiments as this transaction left them.
    pub loaded: LoadedExperiments,
}

/// Compiles, validates, signs and stores a new snapshot in the caller's transaction, unless
/// the configuration compiles to the snapshot already published.
pub async fn prepare(
    conn: &mut AnyConnection,
    current: &Published,
    loaded: &LoadedExperiments,
    signing_seed: &[u8; 32],
    force: bool,
) -> anyhow::Result<Prepared> {
    check_signing_key(conn, &abx_core::public_key(signing_seed)).await?;
    let (config, loaded) = load_config(conn, loaded).await?;
    // Another process may have published since this one last did: a second admin process,
    // or the guardrail monitor of the pipeline process pausing an experiment. The version
    // follows the newest stored snapshot, which the caller's write transaction holds still.
    let newest = u64::try_from(store::latest_snapshot_version(conn).await?).unwrap_or(0);
    let version = current.version.max(newest) + 1;
    let now = clock::now_ms();
    let snapshot = compile(&config, version, now)?;
    if cfg!(debug_assertions) {
        let in_full = compile(&load_config_in_full(conn).await?, version, now)?;
        assert!(
            same_content(&snapshot, &in_full),
            "the snapshot compiled from the loaded experiments differs from a full reload: \
             some write to an experiment did not bump its version"
        );
    }
    if !force && same_content(&snapshot, current.evaluator.snapshot()) {
        return Ok(Prepared {
            published: None,
            loaded,
        });
    }
    let bytes = abx_core::encode_signed(&snapshot, signing_seed);
    // The core validates exactly what every runtime will: a snapshot the runtimes would
    // refuse is never published, and the change that produced it rolls back.
    let evaluator =
        Evaluator::new(snapshot).map_err(|e| anyhow!("compiled snapshot is invalid: {e}"))?;
    let stored = StoredSnapshot {
        version: version as i64,
        published_at_ms: now,
        etag: etag(version, &bytes),
        bytes,
    };
    store::insert_snapshot(conn, &stored).await?;
    Ok(Prepared {
        published: Some(Published::new(
            version,
            now,
            Encoded {
                etag: stored.etag,
                bytes: stored.bytes.into(),
                format: Format::LATEST,
            },
            evaluator,
        )),
        loaded,
    })
}

/// The empty snapshot a brand-new origin starts from (version 0, never stored).
pub fn genesis() -> Published {
    let snapshot = SnapshotBuilder::new(0, 0).build();
    let bytes = abx_core::encode(&snapshot);
    Published::new(
        0,
        0,
        Encoded::new(0, bytes, Format::LATEST),
        Evaluator::new(snapshot).expect("the empty snapshot is valid"),
    )
}
