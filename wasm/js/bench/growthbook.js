// The realistic 1,000-experiment snapshot (its JSON twin) as a GrowthBook payload, so the
// GrowthBook JavaScript SDK evaluates an equivalent set of experiments and flags in the same
// run. Translation, mirroring core/benches/assign.rs's Unleash translation:
// - each experiment becomes a feature with one experiment rule: its variants' configs as
//   variations, their weights, its traffic share as coverage, its targeting as a condition,
//   its unit as hashAttribute and its id as seed; a layered experiment (one slot range each in
//   this snapshot) gets GrowthBook's namespace `[layer, start, end]`, the same mechanism;
// - each flag becomes a feature with one force rule per rule (condition, coverage = rollout);
// - GrowthBook's SDK has no holdouts, so the 5 % global holdout is left out (slightly less work
//   for GrowthBook).

function conditionOf(snapshot, node) {
  const c = snapshot.conditions[node];
  if (c.all) return { $and: c.all.map((child) => conditionOf(snapshot, child)) };
  if (c.segment !== undefined) return conditionOf(snapshot, snapshot.segments[c.segment].condition);
  if (c.attr) {
    const name = snapshot.attributes[c.attr.attr];
    const operand = c.attr.operand;
    const text = (i) => snapshot.strings[i];
    switch (c.attr.op) {
      case 'eq':
        return { [name]: operand.str !== undefined ? text(operand.str) : operand.num };
      case 'in':
        return { [name]: { $in: operand.str_list.map(text) } };
      case 'semver_gte':
        return { [name]: { $vgte: text(operand.str) } };
      case 'gte':
        return { [name]: { $gte: operand.num } };
      default:
        throw new Error(`no GrowthBook translation needed for ${JSON.stringify(c)}`);
    }
  }
  throw new Error(`no GrowthBook translation needed for ${JSON.stringify(c)}`);
}

export function growthbookFeatures(snapshot) {
  const features = {};
  for (const e of snapshot.experiments) {
    let previous = 0;
    const weights = e.variants.map((v) => {
      const weight = (v.threshold - previous) / 10_000;
      previous = v.threshold;
      return weight;
    });
    const rule = {
      key: e.key,
      variations: e.variants.map((v) => JSON.parse(v.config)),
      weights,
      hashAttribute: snapshot.attributes[e.unit],
      hashVersion: 2,
      seed: e.id,
    };
    if (e.allocation.traffic) rule.coverage = e.allocation.traffic.bp / 10_000;
    if (e.allocation.layer) {
      const [range] = e.allocation.layer.ranges;
      rule.coverage = 1;
      rule.namespace = [snapshot.layers[e.allocation.layer.layer].key, range.start / 10_000, range.end / 10_000];
    }
    if (e.targeting !== null) rule.condition = conditionOf(snapshot, e.targeting);
    features[e.key] = { defaultValue: null, rules: [rule] };
  }
  for (const f of snapshot.flags) {
    const rules = f.rules.map((r) => {
      if (!r.value.json) throw new Error('only fixed-value flag rules need a translation');
      const rule = { force: JSON.parse(r.value.json), coverage: r.rollout_bp / 10_000, hashAttribute: snapshot.attributes[f.unit] };
      if (r.condition !== null) rule.condition = conditionOf(snapshot, r.condition);
      return rule;
    });
    features[f.key] = { defaultValue: JSON.parse(f.enabled ? f.default_value : f.off_value), rules: f.enabled ? rules : [] };
  }
  return { features };
}
