// The power calculator: POST /api/v1/analysis/power (docs/statistics.md §10). The plan is
// for the analysis that will run: its mode (looks cost units), its looks and the family of
// metrics the results correct over.

import { ApiError, api } from '../api.js';
import { errorBox, fill, h, uid } from '../dom.js';
import { count, percent, sig } from '../format.js';

function control(label, attrs, hint) {
  const id = uid('power');
  const element = attrs.tag === 'select' ? h('select', { id, name: attrs.name }, attrs.options.map(([v, t]) => h('option', { value: v, selected: v === attrs.value }, t))) : h('input', { id, type: 'number', step: 'any', ...attrs });
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) element.setAttribute('aria-describedby', hintId);
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  return {
    element,
    error,
    hintId,
    wrap: h('div', { class: 'field', dataset: { field: attrs.name } }, h('label', { for: id }, label), element, hint ? h('p', { class: 'hint', id: hintId }, hint) : null, error),
  };
}

export async function render(ctx) {
  ctx.setTitle('Power calculator');
  const fields = {
    metric: control('Metric type', { tag: 'select', name: 'metric', value: 'conversion', options: [['conversion', 'Conversion rate'], ['mean', 'Mean per unit']] }),
    baseline: control('Baseline', { name: 'baseline', value: '0.1', required: true }, 'The control\u2019s conversion rate (0.1 = 10%) or mean.'),
    std_dev: control('Standard deviation per unit', { name: 'std_dev', value: '' }, 'Means only.'),
    mde: control('Minimum detectable effect', { name: 'mde', value: '0.05', required: true }, 'Relative: 0.05 = a 5% lift. Absolute: in the metric\u2019s units.'),
    mde_type: control('Effect is', { tag: 'select', name: 'mde_type', value: 'relative', options: [['relative', 'Relative'], ['absolute', 'Absolute']] }),
    mode: control('Analysis', { tag: 'select', name: 'mode', value: 'sequential', options: [['sequential', 'Sequential (always valid)'], ['fixed_horizon', 'Fixed horizon'], ['group_sequential', 'Group sequential']] }, 'The experiment\u2019s analysis mode: looking more than once needs more units.'),
    looks: control('Looks', { name: 'looks', value: '5', step: '1', min: '2', max: '20' }, 'Group sequential only.'),
    secondary_metrics: control('Secondary metrics', { name: 'secondary_metrics', value: '0', step: '1', min: '0' }, 'They share alpha with the primary metric.'),
    alpha: control('Alpha', { name: 'alpha', value: '0.05' }, 'Two-sided; split over treatments × (1 + secondary metrics) (Bonferroni).'),
    power: control('Power', { name: 'power', value: '0.8' }),
    variants: control('Variants (control included)', { name: 'variants', value: '2', step: '1', min: '2' }),
    daily_traffic: control('Units per day (optional)', { name: 'daily_traffic', value: '' }, 'Entering the experiment per day, for the expected duration.'),
  };
  const stdDevWrap = fields.std_dev.wrap;
  const syncMetric = () => {
    stdDevWrap.hidden = fields.metric.element.value !== 'mean';
    fields.looks.wrap.hidden = fields.mode.element.value !== 'group_sequential';
  };
  fields.metric.element.addEventListener('change', syncMetric);
  fields.mode.element.addEventListener('change', syncMetric);
  syncMetric();
  const output = h('div', { id: 'power-result', 'aria-live': 'polite' });
  const form = h(
    'form',
    { class: 'panel', novalidate: true },
    h('div', { class: 'inline' }, fields.metric.wrap, fields.baseline.wrap, stdDevWrap),
    h('div', { class: 'inline' }, fields.mde.wrap, fields.mde_type.wrap),
    h('div', { class: 'inline' }, fields.mode.wrap, fields.looks.wrap, fields.secondary_metrics.wrap),
    h('div', { class: 'inline' }, fields.alpha.wrap, fields.power.wrap, fields.variants.wrap, fields.daily_traffic.wrap),
    h('button', { type: 'submit' }, 'Calculate'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    for (const f of Object.values(fields)) {
      f.error.hidden = true;
      f.element.removeAttribute('aria-invalid');
      if (f.hintId) f.element.setAttribute('aria-describedby', f.hintId);
      else f.element.removeAttribute('aria-describedby');
    }
    const value = (name) => {
      const text = fields[name].element.value.trim();
      if (text === '') return undefined;
      const n = Number(text);
      return Number.isFinite(n) ? n : text;
    };
    const body = {
      metric: fields.metric.element.value,
      baseline: value('baseline'),
      mde: value('mde'),
      mde_type: fields.mde_type.element.value,
      mode: fields.mode.element.value,
    };
    for (const name of ['alpha', 'power', 'variants', 'daily_traffic', 'secondary_metrics']) if (value(name) !== undefined) body[name] = value(name);
    if (body.mode === 'group_sequential' && value('looks') !== undefined) body.looks = value('looks');
    if (body.metric === 'mean' && value('std_dev') !== undefined) body.std_dev = value('std_dev');
    try {
      const r = await api('/analysis/power', { method: 'POST', body });
      fill(output,
        h(
          'section',
          { class: 'panel', 'aria-labelledby': 'power-result-title' },
          h('h2', { id: 'power-result-title' }, 'Sample size'),
          h(
            'dl',
            { class: 'facts' },
            h('dt', {}, 'Units per variant'),
            h('dd', { dataset: { field: 'units_per_variant' } }, count(r.units_per_variant)),
            h('dt', {}, 'Total units'),
            h('dd', { dataset: { field: 'total_units' } }, count(r.total_units)),
            h('dt', {}, 'One fixed-horizon look would need'),
            h('dd', { dataset: { field: 'fixed_horizon_units_per_variant' } }, `${count(r.fixed_horizon_units_per_variant)} per variant`),
            h('dt', {}, 'Alpha per comparison'),
            h('dd', { dataset: { field: 'alpha_per_comparison' } }, sig(r.alpha_per_comparison)),
            h('dt', {}, 'Absolute effect detected'),
            h('dd', { dataset: { field: 'absolute_effect' } }, body.metric === 'conversion' ? `${sig(r.absolute_effect)} (${percent(r.absolute_effect)} points)` : sig(r.absolute_effect)),
            h('dt', {}, 'Expected duration'),
            h('dd', { dataset: { field: 'expected_days' } }, r.expected_days === null ? 'give units per day' : `${count(r.expected_days)} days`),
          ),
          h('p', { class: 'note' }, 'Use the units per variant as the experiment\u2019s planned sample (analysis.planned_units_per_variant); a sequential test is tuned to it.'),
        ),
      );
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const unplaced = [];
      for (const f of error.fields) {
        const target = fields[f.field];
        if (target) {
          target.error.textContent = f.message;
          target.error.hidden = false;
          target.element.setAttribute('aria-invalid', 'true');
          target.element.setAttribute('aria-describedby', [target.error.id, target.hintId].filter(Boolean).join(' '));
        } else {
          unplaced.push(f);
        }
      }
      fill(output, errorBox({ message: error.message, code: error.code, fields: unplaced }));
    }
  });
  fill(ctx.root,
    h('h1', { tabindex: '-1' }, 'Power calculator'),
    h('p', { class: 'subtitle' }, 'How many units a test needs to detect an effect of a given size.'),
    form,
    output,
  );
}
