// The experiments list: status, layer, traffic, days running, the primary metric's lift
// with its significance, and SRM and guardrail badges; filtered by status, layer and text.
//
// The list route has no results in it, so each started experiment's results are fetched
// separately, a few at a time (the API rate-limits each key).

import { api, enc, listAll, mapLimited } from '../api.js';
import { badge, errorBox, fill, h, statusBadge, uid } from '../dom.js';
import { days, daysRunning, signedPercent } from '../format.js';

const STATUSES = ['draft', 'running', 'paused', 'completed', 'archived'];

export function liftCell(results) {
  if (!results) return h('span', { class: 'muted' }, '—');
  const primary = results.metrics.find((m) => m.role === 'primary');
  const comparison = primary && primary.comparisons[0];
  if (results.lift === null || results.lift === undefined) {
    return h('span', { class: 'muted', title: comparison && comparison.note ? comparison.note : '' }, '—');
  }
  const significance = results.significant
    ? badge(comparison && comparison.improvement === false ? 'significant harm' : 'significant', comparison && comparison.improvement === false ? 'bad' : 'good')
    : badge('not significant', 'neutral');
  return h('span', {}, h('span', { class: 'num', dataset: { value: 'lift' } }, signedPercent(results.lift)), ' ', significance);
}

export function checkBadges(results) {
  if (!results) return [];
  const out = [];
  if (results.srm) {
    out.push(results.srm.mismatch ? badge('SRM mismatch', 'bad', { dataset: { check: 'srm' } }) : badge('SRM ok', 'good', { dataset: { check: 'srm' } }));
  }
  const guardrails = results.guardrails || [];
  if (guardrails.some((g) => g.status === 'alarm')) {
    out.push(badge('guardrail alarm', 'bad', { dataset: { check: 'guardrails' } }));
  } else if (guardrails.some((g) => g.status === 'healthy')) {
    out.push(badge('guardrails ok', 'good', { dataset: { check: 'guardrails' } }));
  } else if (guardrails.length > 0) {
    out.push(badge('guardrails: too little data', 'neutral', { dataset: { check: 'guardrails' } }));
  }
  return out;
}

function row(experiment) {
  const running = daysRunning(experiment);
  const lift = h('td', { dataset: { col: 'lift' } }, experiment.status === 'draft' ? h('span', { class: 'muted' }, 'not started') : h('span', { class: 'loading' }, 'loading…'));
  const checks = h('td', { dataset: { col: 'checks' } });
  const tr = h(
    'tr',
    { dataset: { experiment: experiment.key } },
    h(
      'th',
      { scope: 'row' },
      h('a', { href: `#/experiments/${enc(experiment.id)}` }, experiment.key),
      experiment.name !== experiment.key ? h('div', { class: 'note' }, experiment.name) : null,
    ),
    h('td', { dataset: { col: 'status' } }, statusBadge(experiment.status)),
    h('td', { dataset: { col: 'layer' } }, experiment.layer || h('span', { class: 'muted' }, '—')),
    h('td', { class: 'num', dataset: { col: 'traffic' } }, `${experiment.traffic_percent}%`),
    h('td', { class: 'num', dataset: { col: 'days' } }, running === null ? '—' : days(running)),
    lift,
    checks,
  );
  return { tr, lift, checks };
}

export async function render(ctx) {
  ctx.setTitle('Experiments');
  const layers = await listAll('/layers', { signal: ctx.signal });
  const state = {
    status: ctx.query.get('status') || '',
    layer: ctx.query.get('layer') || '',
    q: ctx.query.get('q') || '',
  };
  const statusId = uid('status');
  const layerId = uid('layer');
  const searchId = uid('search');
  const statusSelect = h(
    'select',
    { id: statusId, name: 'status' },
    h('option', { value: '' }, 'All but archived'),
    STATUSES.map((s) => h('option', { value: s, selected: state.status === s }, s)),
  );
  const layerSelect = h(
    'select',
    { id: layerId, name: 'layer' },
    h('option', { value: '' }, 'All layers'),
    layers.map((l) => h('option', { value: l.key, selected: state.layer === l.key }, l.key)),
  );
  const search = h('input', { id: searchId, name: 'q', type: 'text', value: state.q, placeholder: 'key or name' });
  const filters = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter experiments' },
    h('div', { class: 'field' }, h('label', { for: statusId }, 'Status'), statusSelect),
    h('div', { class: 'field' }, h('label', { for: layerId }, 'Layer'), layerSelect),
    h('div', { class: 'field' }, h('label', { for: searchId }, 'Search'), search),
    h('button', { type: 'submit', class: 'secondary' }, 'Search'),
  );
  const results = h('div', { 'aria-live': 'polite' });
  fill(ctx.root,
    h(
      'div',
      { class: 'page-head' },
      h('h1', { tabindex: '-1' }, 'Experiments'),
      ctx.canEdit ? h('a', { class: 'button', href: '#/experiments/new' }, 'New experiment') : null,
    ),
    filters,
    results,
  );

  let loading = 0;
  const load = async () => {
    const token = ++loading;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v) params.set(k, v);
    const hash = `#/experiments${params.toString() ? `?${params}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    fill(results, h('p', { class: 'loading' }, 'Loading experiments…'));
    let experiments;
    try {
      experiments = await listAll(`/experiments?${params}`, { signal: ctx.signal });
    } catch (error) {
      if (error.name !== 'AbortError') fill(results, errorBox(error));
      return;
    }
    if (token !== loading) return;
    if (experiments.length === 0) {
      fill(results, h('p', { class: 'panel' }, 'No experiments match.', ctx.canEdit ? [' ', h('a', { href: '#/experiments/new' }, 'Create one.')] : null));
      return;
    }
    const rows = experiments.map(row);
    fill(results,
      h(
        'div',
        { class: 'table-wrap', tabindex: '0' },
        h(
          'table',
          { id: 'experiments' },
          h('caption', {}, `${experiments.length} experiment${experiments.length === 1 ? '' : 's'}`),
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['Experiment', 'Status', 'Layer'].map((t) => h('th', { scope: 'col' }, t)),
              h('th', { scope: 'col', class: 'num' }, 'Traffic'),
              h('th', { scope: 'col', class: 'num' }, 'Days running'),
              h('th', { scope: 'col' }, 'Primary metric lift'),
              h('th', { scope: 'col' }, 'Checks'),
            ),
          ),
          h('tbody', {}, rows.map((r) => r.tr)),
        ),
      ),
    );
    await mapLimited(
      experiments.map((e, i) => [e, rows[i]]).filter(([e]) => e.status !== 'draft'),
      4,
      async ([experiment, cells]) => {
        try {
          const r = await api(`/experiments/${enc(experiment.id)}/results`, { signal: ctx.signal });
          fill(cells.lift, liftCell(r));
          fill(cells.checks, ...checkBadges(r));
        } catch (error) {
          if (error.name === 'AbortError') return;
          fill(cells.lift, h('span', { class: 'muted' }, `results unavailable: ${error.message}`));
        }
      },
    );
  };

  statusSelect.addEventListener('change', () => {
    state.status = statusSelect.value;
    load();
  });
  layerSelect.addEventListener('change', () => {
    state.layer = layerSelect.value;
    load();
  });
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    state.q = search.value.trim();
    load();
  });
  await load();
}
