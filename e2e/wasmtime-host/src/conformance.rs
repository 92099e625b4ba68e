//! Replays the conformance suite (snapshots/README.md) through the module.

use std::path::{Path, PathBuf};

use abx_core::{Context, Evaluation, Evaluator};
use anyhow::{Context as _, Result, anyhow};
use serde_json::Value as Json;

use crate::module::{AbiError, AbxModule, Buffer, ContextFormat, ResultFormat};

fn hex_decode(text: &str) -> Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text
                .get(i..i + 2)
                .ok_or_else(|| anyhow!("odd hex length"))?;
            Ok(u8::from_str_radix(pair, 16)?)
        })
        .collect()
}

fn public_key(value: &Json) -> Result<Option<Vec<u8>>> {
    value.as_str().map(hex_decode).transpose()
}

fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Compares one observed field with the native value and records a mismatch.
struct Checker<'a> {
    case: &'a str,
    mismatches: Vec<String>,
}

impl Checker<'_> {
    fn same<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.mismatches
                .push(format!("{} {what}: got {got:?}, want {want:?}", self.case));
        }
    }
}

/// The name tables of `abx_describe`, for reading packed results.
struct Tables {
    reasons: Vec<String>,
    flag_reasons: Vec<String>,
    variants: Vec<Vec<String>>,
    flag_values: Vec<Vec<String>>,
}

impl Tables {
    fn new(description: &Json) -> Result<Tables> {
        let strings = |value: &Json| -> Vec<String> {
            value
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|s| s.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let list = |key: &str| {
            description[key]
                .as_array()
                .ok_or_else(|| anyhow!("description lacks {key}"))
        };
        Ok(Tables {
            reasons: strings(&description["reasons"]),
            flag_reasons: strings(&description["flag_reasons"]),
            variants: list("experiments")?
                .iter()
                .map(|e| strings(&e["variants"]))
                .collect(),
            flag_values: list("flags")?
                .iter()
                .map(|f| strings(&f["values_json"]))
                .collect(),
        })
    }
}

/// Everything the module said about one case, in a shape comparable with native results.
#[derive(Debug, PartialEq)]
struct Row {
    key: String,
    variant: Option<String>,
    reason: String,
    /// Config JSON for experiments, value JSON for flags.
    text: Option<String>,
}

fn native_rows(evaluation: &Evaluation<'_>) -> (Vec<Row>, Vec<Row>) {
    let experiments = evaluation
        .experiments
        .iter()
        .map(|a| Row {
            key: a.experiment_key.into(),
            variant: a.variant.map(String::from),
            reason: a.reason.as_str().into(),
            text: a.config.map(String::from),
        })
        .collect();
    let flags = evaluation
        .flags
        .iter()
        .map(|f| Row {
            key: f.flag_key.into(),
            variant: None,
            reason: f.reason.as_str().into(),
            text: Some(f.value.into()),
        })
        .collect();
    (experiments, flags)
}

fn json_row(key: &str, value: &Json, text_field: &str) -> Row {
    Row {
        key: key.into(),
        variant: value["variant"].as_str().map(String::from),
        reason: value["reason"].as_str().unwrap_or_default().into(),
        text: value[text_field].as_str().map(String::from),
    }
}

struct Replay<'m> {
    module: &'m mut AbxModule,
    handle: u32,
    evaluator: Evaluator,
    tables: Tables,
    packed: Vec<u32>,
}

impl Replay<'_> {
    /// Checks one case every way; returns its mismatches.
    fn case(&mut self, name: &str, case: &Json) -> Result<Vec<String>> {
        let now_ms = case["now_ms"]
            .as_i64()
            .ok_or_else(|| anyhow!("{name}: now_ms"))?;
        let context: Context = serde_json::from_value(case["context"].clone())?;
        let native = self.evaluator.evaluate(&context, now_ms);
        let (want_experiments, want_flags) = native_rows(&native);
        let mut check = Checker {
            case: name,
            mismatches: Vec::new(),
        };

        // The vector's expected values (from the reference model) and native abx-core agree
        // (core's own conformance test); checking both here names whichever differs.
        let expected = case["expected"]
            .as_object()
            .ok_or_else(|| anyhow!("expected"))?;
        check.same("experiment count", expected.len(), want_experiments.len());
        for row in &want_experiments {
            let want = &expected[&row.key];
            check.same(
                &format!("{} vs vector", row.key),
                (row.variant.as_deref(), row.reason.as_str()),
                (
                    want["variant"].as_str(),
                    want["reason"].as_str().unwrap_or("?"),
                ),
            );
        }
        let expected_flags = case["flags"].as_object().ok_or_else(|| anyhow!("flags"))?;
        check.same("flag count", expected_flags.len(), want_flags.len());
        for row in &want_flags {
            let want = &expected_flags[&row.key];
            check.same(
                &format!("flag {} vs vector", row.key),
                (row.text.as_deref(), row.reason.as_str()),
                (
                    want["value"].as_str(),
                    want["reason"].as_str().unwrap_or("?"),
                ),
            );
        }

        // 1. JSON context, JSON result.
        let json_context = self.module.write(&serde_json::to_vec(&case["context"])?)?;
        self.module.evaluate_in_place(
            self.handle,
            json_context,
            ContextFormat::Json,
            now_ms,
            ResultFormat::Json,
        )?;
        let result: Json = serde_json::from_slice(&self.module.result()?)?;
        check.same(
            "snapshot_version",
            result["snapshot_version"].as_u64(),
            Some(self.evaluator.snapshot().snapshot_version),
        );
        let experiments = result["experiments"]
            .as_object()
            .ok_or_else(|| anyhow!("experiments"))?;
        check.same(
            "JSON experiment count",
            experiments.len(),
            want_experiments.len(),
        );
        for (want, a) in want_experiments.iter().zip(&native.experiments) {
            let got = &experiments[&want.key];
            check.same(
                &format!("{} (JSON)", want.key),
                &json_row(&want.key, got, "config_json"),
                want,
            );
            check.same(
                &format!("{} log_exposure (JSON)", want.key),
                got["log_exposure"].as_bool(),
                Some(a.log_exposure),
            );
            check.same(
                &format!("{} experiment_id (JSON)", want.key),
                got["experiment_id"].as_str(),
                Some(a.experiment_id),
            );
            check.same(
                &format!("{} holdout (JSON)", want.key),
                (
                    got["holdout"]["holdout_id"].as_str(),
                    got["holdout"]["arm"].as_str(),
                ),
                self.evaluator
                    .holdout_step(a, &context)
                    .map_or((None, None), |step| {
                        (Some(step.holdout_id), Some(step.arm()))
                    }),
            );
            // What the exposure to log carries: the vector's object, left out when empty or
            // when there is no exposure to log.
            let want_carried = expected[&want.key]
                .get("attributes")
                .filter(|carried| carried.as_object().is_some_and(|o| !o.is_empty()))
                .filter(|_| a.log_exposure);
            check.same(
                &format!("{} attributes (JSON)", want.key),
                got.get("attributes"),
                want_carried,
            );
        }
        let flags = result["flags"]
            .as_object()
            .ok_or_else(|| anyhow!("flags"))?;
        check.same("JSON flag count", flags.len(), want_flags.len());
        for (want, f) in want_flags.iter().zip(&native.flags) {
            let got = &flags[&want.key];
            check.same(
                &format!("flag {} (JSON)", want.key),
                &json_row(&want.key, got, "value_json"),
                want,
            );
            let experiment = f.experiment.map(|e| {
                self.evaluator.snapshot().experiments[e as usize]
                    .key
                    .as_str()
            });
            check.same(
                &format!("flag {} experiment (JSON)", want.key),
                got["experiment"].as_str(),
                experiment,
            );
            check_flag_holdout(&mut check, &want.key, got, &expected_flags[&want.key]);
        }

        // 2. Postcard context, packed result.
        let postcard_context = self.module.write(&postcard::to_allocvec(&context)?)?;
        self.module.evaluate_in_place(
            self.handle,
            postcard_context,
            ContextFormat::Postcard,
            now_ms,
            ResultFormat::Packed,
        )?;
        self.module.result_words(&mut self.packed)?;
        check.same(
            "packed length",
            self.packed.len(),
            2 * (want_experiments.len() + want_flags.len()),
        );
        let (experiment_words, flag_words) = self
            .packed
            .split_at((2 * want_experiments.len()).min(self.packed.len()));
        for (i, (want, pair)) in want_experiments
            .iter()
            .zip(experiment_words.chunks(2))
            .enumerate()
        {
            let got = Row {
                key: want.key.clone(),
                variant: pair[1]
                    .checked_sub(1)
                    .and_then(|v| self.tables.variants[i].get(v as usize).cloned()),
                reason: self
                    .tables
                    .reasons
                    .get(pair[0] as usize)
                    .cloned()
                    .unwrap_or_default(),
                text: want.text.clone(),
            };
            check.same(&format!("{} (packed)", want.key), &got, want);
        }
        for (i, (want, pair)) in want_flags.iter().zip(flag_words.chunks(2)).enumerate() {
            let got = Row {
                key: want.key.clone(),
                variant: None,
                reason: self
                    .tables
                    .flag_reasons
                    .get(pair[0] as usize)
                    .cloned()
                    .unwrap_or_default(),
                text: self.tables.flag_values[i].get(pair[1] as usize).cloned(),
            };
            check.same(&format!("flag {} (packed)", want.key), &got, want);
        }

        // 3. One at a time, alternating the context encoding.
        for (n, want) in want_experiments.iter().enumerate() {
            let (buffer, format) = alternate(n, json_context, postcard_context);
            let got: Json = serde_json::from_slice(&self.module.experiment(
                self.handle,
                &want.key,
                buffer,
                format,
                now_ms,
            )?)?;
            check.same(
                &format!("{} (single)", want.key),
                &json_row(&want.key, &got, "config_json"),
                want,
            );
        }
        for (n, want) in want_flags.iter().enumerate() {
            let (buffer, format) = alternate(n, json_context, postcard_context);
            let got: Json = serde_json::from_slice(&self.module.flag(
                self.handle,
                &want.key,
                buffer,
                format,
                now_ms,
            )?)?;
            check.same(
                &format!("flag {} (single)", want.key),
                &json_row(&want.key, &got, "value_json"),
                want,
            );
            check_flag_holdout(&mut check, &want.key, &got, &expected_flags[&want.key]);
        }
        self.module.free(json_context)?;
        self.module.free(postcard_context)?;
        Ok(check.mismatches)
    }
}

/// A flag's holdout step in the module's JSON against the vector's: the arm, and the
/// experiment the unit reached the holdout through, present exactly where the vector has them.
fn check_flag_holdout(check: &mut Checker<'_>, key: &str, got: &Json, want: &Json) {
    check.same(
        &format!("flag {key} holdout (JSON)"),
        (
            got["holdout"]["arm"].as_str(),
            got["holdout_experiment"].as_str(),
        ),
        (
            want["holdout"].as_str(),
            want["holdout_experiment"].as_str(),
        ),
    );
}

fn alternate(n: usize, json: Buffer, postcard: Buffer) -> (Buffer, ContextFormat) {
    if n.is_multiple_of(2) {
        (json, ContextFormat::Json)
    } else {
        (postcard, ContextFormat::Postcard)
    }
}

/// Replays one vector file; returns (passed, failed) case counts.
fn replay_file(
    module: &mut AbxModule,
    suite: &Path,
    file: &Path,
    mismatches: &mut Vec<String>,
) -> Result<(usize, usize)> {
    let vectors = read_json(file)?;
    let snapshot_name = vectors["snapshot"]
        .as_str()
        .ok_or_else(|| anyhow!("snapshot name"))?;
    let bytes = std::fs::read(suite.join("golden").join(snapshot_name))?;
    let key = public_key(&vectors["public_key"])?;
    let handle = module.load_snapshot(&bytes, key.as_deref())?;
    let evaluator = match &key {
        Some(key) => Evaluator::from_verified_bytes(&bytes, key),
        None => Evaluator::from_bytes(&bytes),
    }
    .map_err(|e| anyhow!("native load of {snapshot_name}: {e}"))?;
    let version = module.snapshot_version(handle)?;
    if u64::try_from(version).ok() != Some(evaluator.snapshot().snapshot_version) {
        mismatches.push(format!("{snapshot_name}: snapshot version {version}"));
    }
    let description: Json = serde_json::from_slice(&module.describe(handle)?)?;
    let mut replay = Replay {
        module,
        handle,
        evaluator,
        tables: Tables::new(&description)?,
        packed: Vec::new(),
    };
    let cases = vectors["cases"]
        .as_array()
        .ok_or_else(|| anyhow!("cases"))?;
    let (mut passed, mut failed) = (0, 0);
    for (n, case) in cases.iter().enumerate() {
        let found = replay.case(&format!("{snapshot_name} case {n}"), case)?;
        if found.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            mismatches.extend(found);
        }
    }
    replay.module.unload(handle)?;
    Ok((passed, failed))
}

/// Replays the suite; prints per-file counts and the closing `N passed, M failed` line.
pub fn run(wasm: &[u8], suite: &Path, complete_suite_required: bool) -> Result<bool> {
    let mut module = AbxModule::load(wasm)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite.join("vectors"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("invalid.json"));
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    let mut mismatches = Vec::new();
    for file in &files {
        let (p, f) = replay_file(&mut module, suite, file, &mut mismatches)?;
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        println!("wasmtime: {name}: {} cases, {f} with mismatches", p + f);
        passed += p;
        failed += f;
    }

    let manifest = read_json(&suite.join("vectors/invalid.json"))?;
    let invalid = manifest["cases"]
        .as_array()
        .ok_or_else(|| anyhow!("invalid cases"))?;
    for case in invalid {
        let file = case["file"].as_str().ok_or_else(|| anyhow!("file"))?;
        let want = case["error"].as_str().ok_or_else(|| anyhow!("error"))?;
        let bytes = std::fs::read(suite.join("golden").join(file))?;
        let key = public_key(&case["public_key"])?;
        match module.load_snapshot(&bytes, key.as_deref()) {
            Err(error) if error.downcast_ref::<AbiError>() == Some(&AbiError(want.into())) => {
                passed += 1
            }
            other => {
                failed += 1;
                mismatches.push(format!("{file}: got {other:?}, want error {want}"));
            }
        }
    }
    println!("wasmtime: invalid.json: {} broken snapshots", invalid.len());

    let (p, f) = crate::misuse::run(&mut module, suite)?;
    passed += p;
    failed += f;

    for line in mismatches.iter().take(20) {
        eprintln!("mismatch: {line}");
    }
    // The repository's suite must be whole; another suite (the end-to-end tests write one
    // from a live origin) is taken as it is.
    if complete_suite_required && (files.len() < 8 || passed + failed < 20_000) {
        eprintln!(
            "the suite looks incomplete: {} files, {} cases",
            files.len(),
            passed + failed
        );
        failed += 1;
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
