// Metrics: what each one measures (kind, events, quantile, cap, window, filter), and for an
// admin a form that defines a new one. As in the experiment form, validation is the
// origin's: the form sends what was entered and shows each 422 field error at its field.

import { ApiError, api, listAll } from '../api.js';
import { announce, fill, h } from '../dom.js';
import { box, errorDisplay, group, input, number, parseJson, select } from '../fields.js';
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

function metricRow(m) {
  return h(
    'tr',
    { dataset: { metric: m.key } },
    h('th', { scope: 'row' }, m.key, m.name && m.name !== m.key ? h('span', { class: 'muted' }, ` ${m.name}`) : null),
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

function metricForm(ctx) {
  const key = input({ name: 'key', required: true, spellcheck: 'false' });
  const name = input({ name: 'name' });
  const kind = select(KINDS, 'conversion', { name: 'kind' });
  const eventType = input({ name: 'event_type', spellcheck: 'false' });
  const denominator = input({ name: 'denominator_event_type', spellcheck: 'false' });
  const quantile = input({ name: 'quantile', type: 'number', min: 0, max: 1, step: 'any', placeholder: '0.95' });
  const direction = select(
    [
      ['increase', 'Higher is better'],
      ['decrease', 'Lower is better'],
    ],
    'increase',
    { name: 'direction' },
  );
  const capKind = select(
    [
      ['', 'No cap'],
      ['value', 'At a value'],
      ['percentile', 'At a percentile of the units\u2019 values'],
    ],
    '',
    { name: 'cap.kind' },
  );
  const capValue = input({ name: 'cap.amount', type: 'number', step: 'any' });
  const windowDelay = input({ name: 'window.delay', type: 'number', min: 0, step: 'any' });
  const windowLength = input({ name: 'window.length', type: 'number', min: 0, step: 'any' });
  const threshold = input({ name: 'guardrail_threshold', type: 'number', step: 'any' });
  const filter = h('textarea', { name: 'filter', rows: 2, spellcheck: 'false', placeholder: '{"all": [{"attr": "currency", "op": "eq", "value": "USD"}]}' });

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
  const submit = h('button', { type: 'submit' }, 'Create metric');
  const form = h(
    'form',
    { novalidate: true, 'aria-labelledby': 'new-metric' },
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
    h('div', { class: 'actions' }, submit),
  );
  const { clearErrors, showErrors } = errorDisplay(form, summary);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const errors = [];
    const body = {
      key: key.value.trim(),
      name: name.value.trim() || undefined,
      kind: kind.value,
      event_type: eventType.value.trim(),
      direction: direction.value,
      guardrail_threshold: number(threshold),
      filter: parseJson(filter.value, 'filter', errors, null),
    };
    if (TAKES.denominator.includes(kind.value)) body.denominator_event_type = denominator.value.trim() || null;
    if (TAKES.quantile.includes(kind.value)) body.quantile = number(quantile);
    if (TAKES.cap.includes(kind.value) && capKind.value) body.cap = { [capKind.value]: number(capValue) };
    if (windowDelay.value.trim() || windowLength.value.trim()) {
      body.window = { delay_s: seconds(windowDelay) ?? 0, length_s: seconds(windowLength) };
    }
    if (errors.length) {
      showErrors('Fix the JSON before saving:', errors);
      return;
    }
    submit.disabled = true;
    try {
      const created = await api('/metrics', { method: 'POST', body });
      flash = `${created.key} created.`;
      announce(flash);
      await ctx.refresh();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(error.status === 422 ? 'The origin refused the metric:' : error.message, error.fields || []);
    } finally {
      submit.disabled = false;
    }
  });
  showParts();
  return h('section', { class: 'panel', 'aria-labelledby': 'new-metric' }, h('h2', { id: 'new-metric' }, 'New metric'), form);
}

export async function render(ctx) {
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
            h('tbody', {}, metrics.map(metricRow)),
          ),
        )
      : h('p', { class: 'panel' }, 'No metrics yet.'),
    ctx.canEdit ? metricForm(ctx) : null,
  );
  if (note) note.focus();
}
