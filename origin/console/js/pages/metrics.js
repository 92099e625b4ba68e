// Metrics: what each one measures (kind, events, quantile, cap, window, filter), and for an
// admin a form that defines a new one or edits one (#/metrics/{key}). As in the experiment
// form, validation is the origin's: the form sends what was entered and shows each 422 field
// error at its field, and the origin's 409 when a running experiment uses the metric.

import { api, enc, listAll } from '../api.js';
import { announce, fill, h } from '../dom.js';
import { box, errorDisplay, group, input, number, parseJson, save, select } from '../fields.js';
import { json, windowText } from '../format.js';

let flash = null;

const KINDS = [
  ['conversion', 'Conversion: share of units with an event'],
  ['mean', 'Mean: value per unit'],
  ['sum', 'Sum: total value per unit'],
  ['ratio', 'Ratio: Σ value over Σ denominator'],
  ['quantile', 'Quantile: of all events\u2019 values (p95 latency)'],
];
/** Which kinds take each optional part of a definition (docs/api.md, "Metrics"). */
const TAKES = {
  denominator: ['ratio'],
  quantile: ['quantile'],
  cap: ['mean', 'sum', 'ratio'],
};

function measures(m) {
  const kind = m.kind === 'quantile' ? `p${+(m.quantile * 100).toFixed(2)}` : m.kind;
  const events = m.denominator_event_type ? `${m.event_type} / ${m.denominator_event_type}` : m.event_type;
  return [h('strong', {}, kind), ' of ', h('code', {}, events)];
}

function capText(cap) {
  if (!cap) return '—';
  return cap.value != null ? `at ${cap.value}` : `at the ${+(cap.percentile * 100).toFixed(3)}th percentile`;
}

function metricRow(m, canEdit) {
  const edit = canEdit ? h('a', { class: 'row-action', href: `#/metrics/${enc(m.key)}`, 'aria-label': `Edit ${m.key}` }, 'Edit') : null;
  return h(
    'tr',
    { dataset: { metric: m.key } },
    h('th', { scope: 'row' }, m.key, m.name && m.name !== m.key ? h('span', { class: 'muted' }, ` ${m.name}`) : null, edit ? ' ' : null, edit),
    h('td', { dataset: { field: 'measures' } }, measures(m)),
    h('td', { dataset: { field: 'direction' } }, m.direction === 'increase' ? 'higher is better' : 'lower is better'),
    h('td', { dataset: { field: 'cap' } }, capText(m.cap)),
    h('td', { dataset: { field: 'window' } }, windowText(m.window)),
    h('td', { dataset: { field: 'filter' } }, m.filter ? h('pre', {}, json(m.filter)) : '—'),
  );
}

/** Days as entered (decimals allowed) in whole seconds; null when empty. */
function seconds(control) {
  const days = number(control);
  return typeof days === 'number' ? Math.round(days * 86_400) : days;
}

/** Seconds as the form shows them, in days; empty for none. */
function days(s) {
  return s == null ? '' : String(s / 86_400);
}

/** The form that defines a metric, or with `m` edits it (its key cannot change). */
function metricForm(ctx, m = null) {
  const editing = m !== null;
  const key = input({ name: 'key', required: true, spellcheck: 'false', value: m?.key ?? '', disabled: editing });
  const name = input({ name: 'name', value: m && m.name !== m.key ? m.name : '' });
  const kind = select(KINDS, m?.kind ?? 'conversion', { name: 'kind' });
  const eventType = input({ name: 'event_type', spellcheck: 'false', value: m?.event_type ?? '' });
  const denominator = input({ name: 'denominator_event_type', spellcheck: 'false', value: m?.denominator_event_type ?? '' });
  const quantile = input({ name: 'quantile', type: 'number', min: 0, max: 1, step: 'any', placeholder: '0.95', value: m?.quantile ?? '' });
  const direction = select(
    [
      ['increase', 'Higher is better'],
      ['decrease', 'Lower is better'],
    ],
    m?.direction ?? 'increase',
    { name: 'direction' },
  );
  const capKind = select(
    [
      ['', 'No cap'],
      ['value', 'At a value'],
      ['percentile', 'At a percentile of the units\u2019 values'],
    ],
    m?.cap ? (m.cap.value != null ? 'value' : 'percentile') : '',
    { name: 'cap.kind' },
  );
  const capValue = input({ name: 'cap.amount', type: 'number', step: 'any', value: m?.cap ? (m.cap.value ?? m.cap.percentile) : '' });
  const windowDelay = input({ name: 'window.delay', type: 'number', min: 0, step: 'any', value: days(m?.window?.delay_s) });
  const windowLength = input({ name: 'window.length', type: 'number', min: 0, step: 'any', value: days(m?.window?.length_s) });
  const threshold = input({ name: 'guardrail_threshold', type: 'number', step: 'any', value: m?.guardrail_threshold ?? '' });
  const filter = h(
    'textarea',
    { name: 'filter', rows: m?.filter ? 6 : 2, spellcheck: 'false', placeholder: '{"all": [{"attr": "currency", "op": "eq", "value": "USD"}]}' },
    m?.filter ? json(m.filter) : '',
  );

  const denominatorBox = box('denominator_event_type', 'Denominator event type', denominator, 'Ratio metrics: Σ value of these events per unit.');
  const quantileBox = box('quantile', 'Quantile', quantile, 'Strictly between 0 and 1: 0.95 is the 95th percentile.');
  const capGroup = group('cap', 'Cap (winsorization)', [h('div', { class: 'inline' }, box('cap.kind', 'Cap', capKind), box('cap.amount', 'Value or percentile (0–1)', capValue))], 'Holds each unit\u2019s value (a ratio\u2019s numerator) at the cap before the statistics, so that a few whales cannot decide.');
  const showParts = () => {
    denominatorBox.hidden = !TAKES.denominator.includes(kind.value);
    quantileBox.hidden = !TAKES.quantile.includes(kind.value);
    capGroup.hidden = !TAKES.cap.includes(kind.value);
    capValue.disabled = capKind.value === '';
  };
  kind.addEventListener('change', showParts);
  capKind.addEventListener('change', showParts);

  const summary = h('div', { id: 'form-errors', tabindex: '-1' });
  const submit = h('button', { type: 'submit' }, editing ? 'Save changes' : 'Create metric');
  const heading = editing ? 'edit-metric' : 'new-metric';
  const form = h(
    'form',
    { novalidate: true, 'aria-labelledby': heading },
    summary,
    group('definition', 'What it measures', [
      h('div', { class: 'inline' }, box('key', 'Key', key, 'Lowercase letters, digits, _ and -.'), box('name', 'Name', name, 'Defaults to the key.')),
      h('div', { class: 'inline' }, box('kind', 'Kind', kind), box('event_type', 'Event type', eventType), box('direction', 'Direction', direction)),
      denominatorBox,
      quantileBox,
    ]),
    capGroup,
    group(
      'window',
      'Window after the exposure',
      [h('div', { class: 'inline' }, box('window.delay_s', 'Starts (days after exposure)', windowDelay), box('window.length_s', 'Lasts (days)', windowLength))],
      'Empty: every event after the exposure. "Purchase within 3 days": starts 0, lasts 3. Retention on day 7: starts 7, lasts 1.',
    ),
    group('more', 'Guardrail threshold and filter', [
      box('guardrail_threshold', 'Guardrail threshold (standard errors)', threshold, 'Optional: the harm that must be seen before a guardrail alarms.'),
      box('filter', 'Filter (JSON condition on event properties)', filter, 'Optional: only events whose properties match count.'),
    ]),
    h('div', { class: 'actions' }, submit, editing ? h('a', { class: 'button secondary', href: '#/metrics' }, 'Cancel') : null),
  );
  const { clearErrors, showErrors } = errorDisplay(form, summary);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const errors = [];
    // Every part is sent, null when empty or not taken by the kind, so that an edit (a
    // merge patch) also removes what was cleared.
    const takes = (part) => TAKES[part].includes(kind.value);
    const windowed = windowDelay.value.trim() || windowLength.value.trim();
    const body = {
      name: name.value.trim() || null,
      kind: kind.value,
      event_type: eventType.value.trim(),
      direction: direction.value,
      guardrail_threshold: number(threshold),
      filter: parseJson(filter.value, 'filter', errors, null),
      denominator_event_type: takes('denominator') ? denominator.value.trim() || null : null,
      quantile: takes('quantile') ? number(quantile) : null,
      cap: takes('cap') && capKind.value ? { [capKind.value]: number(capValue) } : null,
      window: windowed ? { delay_s: seconds(windowDelay) ?? 0, length_s: seconds(windowLength) } : null,
    };
    if (!editing) body.key = key.value.trim();
    if (errors.length) {
      showErrors('Fix the JSON before saving:', errors);
      return;
    }
    const saved = await save({
      submit,
      showErrors,
      what: 'metric',
      request: () => (editing ? api(`/metrics/${enc(m.key)}`, { method: 'PATCH', body, ifMatch: m.version }) : api('/metrics', { method: 'POST', body })),
    });
    if (!saved) return;
    flash = `${saved.key} ${editing ? 'saved' : 'created'}.`;
    announce(flash);
    if (editing) ctx.navigate('#/metrics');
    else await ctx.refresh();
  });
  showParts();
  return h('section', { class: 'panel', 'aria-labelledby': heading }, h('h2', { id: heading }, editing ? `Edit ${m.key}` : 'New metric'), form);
}

/** #/metrics/{key}: one metric's form. */
async function renderEdit(ctx, key) {
  const metric = await api(`/metrics/${enc(key)}`, { signal: ctx.signal });
  ctx.setTitle(`Edit ${metric.key}`);
  fill(
    ctx.root,
    h('p', { class: 'note' }, h('a', { href: '#/metrics' }, '← Metrics')),
    h('h1', { tabindex: '-1' }, metric.key),
    h('p', { class: 'subtitle' }, 'What the metric measures (kind, events, quantile, cap, window, filter) cannot change while a running experiment uses it; its name, direction and guardrail threshold can.'),
    metricForm(ctx, metric),
  );
}

export async function render(ctx) {
  if (ctx.params.length) return renderEdit(ctx, ctx.params[0]);
  ctx.setTitle('Metrics');
  const metrics = await listAll('/metrics', { signal: ctx.signal });
  const note = flash ? h('div', { class: 'message success', role: 'status', tabindex: '-1' }, flash) : null;
  flash = null;
  fill(
    ctx.root,
    h('h1', { tabindex: '-1' }, 'Metrics'),
    h('p', { class: 'subtitle' }, 'What each metric counts per exposed unit. What a metric measures cannot change while a running experiment uses it.'),
    note,
    metrics.length
      ? h(
          'div',
          { class: 'table-wrap', tabindex: '0' },
          h(
            'table',
            { dataset: { table: 'metrics' } },
            h('caption', { class: 'visually-hidden' }, 'Metrics'),
            h(
              'thead',
              {},
              h('tr', {}, ['Metric', 'Measures', 'Direction', 'Cap', 'Window', 'Filter'].map((t) => h('th', { scope: 'col' }, t))),
            ),
            h('tbody', {}, metrics.map((m) => metricRow(m, ctx.canEdit))),
          ),
        )
      : h('p', { class: 'panel' }, 'No metrics yet.'),
    ctx.canEdit ? metricForm(ctx) : null,
  );
  if (note) note.focus();
}
