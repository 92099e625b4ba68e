// Creating and editing an experiment. Validation is the origin's: the form sends what was
// entered and shows each 422 field error next to its field (and all of them in a summary
// at the top), so the rules live in one place (origin/src/model/experiment.rs). Only JSON
// syntax is checked here, since a malformed JSON text cannot be sent at all.

import { api, enc, listAll } from '../api.js';
import { box, errorDisplay, group, input, number, parseJson, save, select } from '../fields.js';
import { announce, fill, h, uid } from '../dom.js';
import { json } from '../format.js';
import { setFlash } from './experiment.js';

/** Fields that may change in each status (docs/api.md, "Experiments"). */
const LOCKED_WHILE_RUNNING = ['layer', 'unit', 'variants', 'targeting', 'holdout', 'switchback_period_s', 'primary_metric', 'secondary_metrics', 'analysis'];
const TEXTS = ['name', 'hypothesis', 'description', 'owner'];

export async function render(ctx) {
  const [id] = ctx.params;
  const editing = id !== undefined;
  const [layers, metrics, holdouts, current] = await Promise.all([
    listAll('/layers', { signal: ctx.signal }),
    listAll('/metrics', { signal: ctx.signal }),
    listAll('/holdouts', { signal: ctx.signal }),
    editing ? api(`/experiments/${enc(id)}`, { signal: ctx.signal }) : Promise.resolve(null),
  ]);
  const e = current || {
    key: '',
    name: '',
    hypothesis: '',
    description: '',
    owner: '',
    layer: null,
    traffic_percent: 100,
    unit: '',
    variants: [
      { name: 'control', weight: 50, config: {} },
      { name: 'treatment', weight: 50, config: {} },
    ],
    primary_metric: metrics.length ? metrics[0].key : '',
    secondary_metrics: [],
    guardrail_metrics: [],
    holdout: null,
    targeting: null,
    forced: {},
    switchback_period_s: null,
    dimensions: [],
    analysis: { mode: 'sequential', alpha: 0.05, correction: 'bh', planned_units_per_variant: null, looks: null, tuning_units: null, spending: 'o_brien_fleming', min_duration_days: 14, guardrail_margins: {} },
    status: 'draft',
  };
  const title = editing ? `Edit ${e.key}` : 'New experiment';
  ctx.setTitle(title);
  const running = e.status === 'running' || e.status === 'paused';
  const ended = e.status === 'completed' || e.status === 'archived';
  const locked = (name) => (ended && !TEXTS.includes(name)) || (running && LOCKED_WHILE_RUNNING.includes(name));

  // Texts
  const key = input({ name: 'key', value: e.key, required: true, disabled: editing, spellcheck: 'false' });
  const name = input({ name: 'name', value: e.name === e.key && !editing ? '' : e.name });
  const hypothesis = h('textarea', { name: 'hypothesis', rows: 2 });
  hypothesis.value = e.hypothesis;
  const description = h('textarea', { name: 'description', rows: 3 });
  description.value = e.description;
  const owner = input({ name: 'owner', value: e.owner });

  // Allocation
  const layerSelect = select(
    [['', 'None: the experiment sees all units'], ...layers.map((l) => [l.key, `${l.key} (${l.free_percent}% free)`])],
    e.layer || '',
    { name: 'layer', disabled: locked('layer') },
  );
  const layerInfo = h('div', { class: 'hint', id: uid('layer-info'), 'aria-live': 'polite' });
  const traffic = input({ name: 'traffic_percent', type: 'number', min: running ? e.traffic_percent : 0, max: 100, step: '0.01', value: e.traffic_percent, disabled: locked('traffic_percent') });
  const unit = input({ name: 'unit', value: editing ? e.unit : '', placeholder: 'user_id (or the layer\u2019s unit)', disabled: locked('unit'), spellcheck: 'false' });
  // An ended holdout holds nobody: offered only to an experiment that already names it.
  const holdoutChoices = holdouts
    .filter((x) => x.status !== 'ended' || x.key === e.holdout || x.id === e.holdout)
    .map((x) => [x.key, `${x.key} (${x.percent}%${x.status === 'ended' ? ', ended' : ''})`]);
  const holdout = select([['', 'None'], ...holdoutChoices], e.holdout || '', { name: 'holdout', disabled: locked('holdout') });
  const showLayer = () => {
    const layer = layers.find((l) => l.key === layerSelect.value);
    if (!layer) {
      layerInfo.textContent = '';
      return;
    }
    const own = layer.allocations.filter((a) => a.experiment_id === e.id).reduce((sum, a) => sum + a.end_percent - a.start_percent, 0);
    const others = layer.allocations.filter((a) => a.experiment_id !== e.id);
    const owners = [...new Set(others.map((a) => a.experiment_key))];
    const wanted = Number(traffic.value || 100);
    const room = layer.free_percent + own;
    const parts = [`Layer ${layer.key}: ${layer.free_percent}% free`];
    if (own) parts.push(`this experiment holds ${Math.round(own * 100) / 100}%`);
    parts.push(owners.length ? `held by ${owners.join(', ')}` : 'no other experiment holds slots');
    parts.push(`unit ${layer.unit}`);
    fill(layerInfo, parts.join('; ') + '.');
    if (wanted > room + 1e-9) {
      layerInfo.append(
        ' ',
        h('strong', { class: 'field-error', dataset: { warning: 'layer' } }, `${wanted}% of the layer is more than the ${Math.round(room * 100) / 100}% free: starting it will be refused until room frees up.`),
      );
    }
  };
  layerSelect.addEventListener('change', showLayer);
  traffic.addEventListener('input', showLayer);
  layerSelect.setAttribute('aria-describedby', layerInfo.id);

  // Variants
  const variantRows = h('div', {});
  const weightSum = h('p', { class: 'hint', 'aria-live': 'polite' });
  const variantControls = [];
  const updateSum = () => {
    const total = variantControls.reduce((sum, v) => sum + (Number(v.weight.value) || 0), 0);
    weightSum.textContent = `Weights sum to ${Math.round(total * 100) / 100}% (they must sum to 100%).`;
  };
  const addVariant = (v) => {
    const i = variantControls.length;
    const nameInput = input({ value: v.name, disabled: locked('variants'), spellcheck: 'false' });
    const weightInput = input({ type: 'number', min: 0, max: 100, step: '0.01', value: v.weight, disabled: locked('variants') });
    const configInput = h('textarea', { rows: 1, disabled: locked('variants'), spellcheck: 'false' });
    configInput.value = json(v.config ?? {});
    weightInput.addEventListener('input', updateSum);
    const label = (text) => [text, h('span', { class: 'visually-hidden' }, ` of variant ${i + 1}`)];
    const removeButton = h('button', { type: 'button', class: 'secondary', disabled: locked('variants'), 'aria-label': `Remove variant ${i + 1}` }, 'Remove');
    const row = h(
      'div',
      { class: 'variant-row' },
      box(`variants[${i}].name`, label(i === 0 ? 'Name (control)' : 'Name'), nameInput),
      box(`variants[${i}].weight`, label('Weight (%)'), weightInput),
      box(`variants[${i}].config`, label('Config (JSON)'), configInput),
      h('div', { class: 'field' }, h('span', { class: 'label', 'aria-hidden': 'true' }, '\u00a0'), removeButton),
    );
    const entry = { row, name: nameInput, weight: weightInput, config: configInput };
    removeButton.addEventListener('click', () => {
      if (variantControls.length <= 2) {
        announce('An experiment needs at least two variants');
        return;
      }
      // Rebuild so that field names (variants[i]) stay in order.
      const kept = variantControls.filter((x) => x !== entry).map(read);
      variantControls.length = 0;
      fill(variantRows);
      kept.forEach(addVariant);
      updateSum();
      variantControls[Math.min(i, variantControls.length - 1)].name.focus();
    });
    variantControls.push(entry);
    variantRows.append(row);
  };
  const read = (v) => ({ name: v.name.value.trim(), weight: number(v.weight), config: v.config.value });
  e.variants.forEach(addVariant);
  updateSum();
  const addButton = h('button', { type: 'button', class: 'secondary', disabled: locked('variants') }, 'Add variant');
  addButton.addEventListener('click', () => {
    addVariant({ name: `variant_${variantControls.length}`, weight: 0, config: {} });
    updateSum();
    variantControls[variantControls.length - 1].name.focus();
  });

  // Metrics
  const metricOptions = metrics.map((m) => [m.key, `${m.key} (${m.kind}, ${m.direction === 'increase' ? 'higher' : 'lower'} is better)`]);
  const primary = select(metricOptions.length ? metricOptions : [['', 'No metrics: define one with POST /api/v1/metrics']], e.primary_metric, { name: 'primary_metric', disabled: locked('primary_metric') });
  const checkboxes = (fieldName, chosen) =>
    h(
      'div',
      { class: 'checks' },
      // A running experiment's guardrails may be added to, not removed (they share alpha).
      metrics.map((m) => h('label', {}, h('input', { type: 'checkbox', name: fieldName, value: m.key, checked: chosen.includes(m.key), disabled: locked(fieldName) || (fieldName === 'guardrail_metrics' && running && chosen.includes(m.key)) }), m.key)),
    );
  const secondary = checkboxes('secondary_metrics', e.secondary_metrics);
  const guardrails = checkboxes('guardrail_metrics', e.guardrail_metrics);

  // Targeting and the rest
  const targeting = h('textarea', { name: 'targeting', rows: 3, disabled: locked('targeting'), spellcheck: 'false', placeholder: '{"all": [{"attr": "country", "op": "in", "value": ["US", "CA"]}]}' });
  targeting.value = e.targeting ? json(e.targeting) : '';
  const forced = h('textarea', { name: 'forced', rows: 2, disabled: locked('forced'), spellcheck: 'false', placeholder: '{"qa-user-1": "treatment"}' });
  forced.value = Object.keys(e.forced || {}).length ? json(e.forced) : '';
  const switchback = input({ name: 'switchback_period_s', type: 'number', min: 1, step: 1, value: e.switchback_period_s ?? '', disabled: locked('switchback_period_s') });
  const dimensions = input({ name: 'dimensions', value: (e.dimensions || []).join(', '), placeholder: 'platform, country', disabled: locked('dimensions'), spellcheck: 'false' });

  // Analysis
  const a = e.analysis;
  const mode = select(
    [
      ['sequential', 'Sequential: always valid, look any time'],
      ['fixed_horizon', 'Fixed horizon: one look at the planned sample'],
      ['group_sequential', 'Group sequential: planned looks with alpha spending'],
    ],
    a.mode,
    { name: 'analysis.mode', disabled: locked('analysis') },
  );
  const alpha = input({ name: 'analysis.alpha', type: 'number', step: 'any', min: 0, max: 0.5, value: a.alpha, disabled: locked('analysis') });
  const correction = select(
    [
      ['bh', 'Benjamini-Hochberg (false discovery rate)'],
      ['holm', 'Holm'],
      ['bonferroni', 'Bonferroni'],
    ],
    a.correction,
    { name: 'analysis.correction', disabled: locked('analysis') },
  );
  const planned = input({ name: 'analysis.planned_units_per_variant', type: 'number', min: 1, step: 1, value: a.planned_units_per_variant ?? '', disabled: locked('analysis') });
  const looks = input({ name: 'analysis.looks', type: 'number', min: 2, max: 20, step: 1, value: a.looks ?? '', disabled: locked('analysis') });
  const tuning = input({ name: 'analysis.tuning_units', type: 'number', min: 1, step: 'any', value: a.tuning_units ?? '', disabled: locked('analysis') });
  const spending = select(
    [
      ['o_brien_fleming', 'O\u2019Brien-Fleming (gsDesign, rpact)'],
      ['o_brien_fleming_total', 'O\u2019Brien-Fleming on the two-sided alpha (abx before 2026-12)'],
      ['pocock', 'Pocock'],
    ],
    a.spending || 'o_brien_fleming',
    { name: 'analysis.spending', disabled: locked('analysis') },
  );
  const minDuration = input({ name: 'analysis.min_duration_days', type: 'number', min: 0, max: 364, step: 7, value: a.min_duration_days ?? 14, disabled: locked('analysis') });
  const margins = h('textarea', { name: 'analysis.guardrail_margins', rows: 2, disabled: locked('analysis'), spellcheck: 'false', placeholder: '{"crash_rate": 0.02}' });
  margins.value = Object.keys(a.guardrail_margins || {}).length ? json(a.guardrail_margins) : '';

  const summary = h('div', { id: 'form-errors', tabindex: '-1' });
  const submit = h('button', { type: 'submit' }, editing ? 'Save changes' : 'Create experiment');
  const form = h(
    'form',
    { novalidate: true, 'aria-describedby': 'form-intro' },
    summary,
    group('texts', 'Description', [
      box('key', 'Key', key, editing ? 'The key never changes.' : 'Lowercase letters, digits, _ and -; used by SDKs and in URLs.'),
      box('name', 'Name', name, 'Defaults to the key.'),
      box('hypothesis', 'Hypothesis', hypothesis),
      box('description', 'Description', description),
      box('owner', 'Owner', owner),
    ]),
    group('allocation', 'Who is in it', [
      box('layer', 'Layer', layerSelect),
      layerInfo,
      box('traffic_percent', 'Traffic (%)', traffic, running ? 'While running, traffic can only increase.' : 'Share of units admitted (of the layer, for a layered experiment); up to two decimals.'),
      box('unit', 'Randomization unit', unit, 'The context attribute units are bucketed by.'),
      box('holdout', 'Holdout', holdout),
      box('targeting', 'Targeting (JSON condition)', targeting, 'Empty: everyone. Conditions: all, any, not, segment, attr/op/value (docs/assignment.md).'),
      box('forced', 'Forced variants (JSON: unit value → variant)', forced, 'QA overrides.'),
      box('switchback_period_s', 'Switchback period (seconds)', switchback, 'Empty for a normal experiment.'),
    ]),
    group('variants', 'Variants', [variantRows, weightSum, h('div', { class: 'actions' }, addButton)], 'The first variant is the control. 2 to 20 variants.'),
    group('metrics', 'Metrics', [
      box('primary_metric', 'Primary metric', primary, running ? 'Fixed once the experiment has started.' : 'The decision metric.'),
      group('secondary_metrics', 'Secondary metrics', secondary),
      group('guardrail_metrics', 'Guardrail metrics', guardrails, running ? 'Checked continuously; an alarm pauses the experiment. While it runs, guardrails can be added, not removed.' : 'Checked continuously; an alarm pauses the experiment.'),
      box('dimensions', 'Dimensions (comma-separated attributes)', dimensions, 'What the results can be broken down by (exploratory); exposures carry these attributes. Editable at any time.'),
    ]),
    group('analysis', 'Analysis', [
      box('analysis.mode', 'Mode', mode),
      h('div', { class: 'inline' }, box('analysis.alpha', 'Alpha', alpha), box('analysis.correction', 'Correction', correction)),
      h(
        'div',
        { class: 'inline' },
        box('analysis.planned_units_per_variant', 'Planned units per variant', planned),
        box('analysis.looks', 'Looks', looks),
        box('analysis.tuning_units', 'Sequential tuning units (per variant)', tuning),
      ),
      h('p', { class: 'hint' }, 'Fixed horizon and group sequential need a planned sample (see the ', h('a', { href: '#/power' }, 'power calculator'), '); group sequential also needs 2 to 20 looks.'),
      h('div', { class: 'inline' }, box('analysis.spending', 'Alpha spending (group sequential)', spending), box('analysis.min_duration_days', 'Minimum duration (days, whole weeks)', minDuration, 'No decision is recommended before it: early effects fade or grow.')),
      box('analysis.guardrail_margins', 'Guardrail non-inferiority margins (JSON: metric → relative margin)', margins, '"Ship" then needs evidence that the guardrail is not worse by more than its margin.'),
    ]),
    h('div', { class: 'actions' }, submit, h('a', { class: 'button secondary', href: editing ? `#/experiments/${enc(e.id)}` : '#/experiments' }, 'Cancel')),
  );

  const { clearErrors, showErrors } = errorDisplay(form, summary);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const errors = [];
    const body = {
      name: name.value.trim() || null,
      hypothesis: hypothesis.value,
      description: description.value,
      owner: owner.value,
      layer: layerSelect.value || null,
      traffic_percent: number(traffic),
      unit: unit.value.trim() || null,
      targeting: parseJson(targeting.value, 'targeting', errors, null),
      variants: variantControls.map(read).map((v, i) => ({ name: v.name, weight: v.weight, config: parseJson(v.config, `variants[${i}].config`, errors, {}) })),
      primary_metric: primary.value,
      secondary_metrics: [...secondary.querySelectorAll('input:checked')].map((c) => c.value),
      guardrail_metrics: [...guardrails.querySelectorAll('input:checked')].map((c) => c.value),
      holdout: holdout.value || null,
      forced: parseJson(forced.value, 'forced', errors, {}),
      switchback_period_s: number(switchback),
      dimensions: dimensions.value.split(',').map((d) => d.trim()).filter(Boolean),
      analysis: {
        mode: mode.value,
        alpha: number(alpha) ?? 0.05,
        correction: correction.value,
        planned_units_per_variant: number(planned),
        looks: number(looks),
        tuning_units: number(tuning),
        spending: spending.value,
        min_duration_days: number(minDuration) ?? 14,
        guardrail_margins: parseJson(margins.value, 'analysis.guardrail_margins', errors, {}),
      },
    };
    if (!editing) body.key = key.value.trim();
    if (errors.length) {
      showErrors('Fix the JSON before saving:', errors);
      return;
    }
    const saved = await save({
      submit,
      showErrors,
      what: 'experiment',
      request: () => (editing ? api(`/experiments/${enc(e.id)}`, { method: 'PATCH', body, ifMatch: e.version }) : api('/experiments', { method: 'POST', body })),
      fieldsOf: (error) => (error.code === 'layer_full' && error.details ? [{ field: 'layer', message: `${error.details.free_percent}% is free` }] : []),
    });
    if (!saved) return;
    setFlash(editing ? `${saved.key} saved.` : `${saved.key} created as a draft.`);
    ctx.navigate(`#/experiments/${enc(saved.id)}`);
  });

  fill(ctx.root,
    h('p', { class: 'note' }, h('a', { href: editing ? `#/experiments/${enc(e.id)}` : '#/experiments' }, editing ? `← ${e.key}` : '← Experiments')),
    h('h1', { tabindex: '-1' }, title),
    h(
      'p',
      { class: 'subtitle', id: 'form-intro' },
      running ? 'The experiment is running: only changes that cannot move an assigned unit are possible.' : ended ? 'The experiment has ended: only its texts can change.' : 'The origin checks everything when you save and explains what to fix.',
    ),
    form,
  );
  showLayer();
}
