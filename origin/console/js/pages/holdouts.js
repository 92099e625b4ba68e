// Holdouts: each holdout's size, unit and life, and its readout — the units it holds out of
// everything the experiments respecting it ship, against the units it releases
// (docs/statistics.md §12h). The console computes nothing statistical.

import { api, enc, listAll } from '../api.js';
import { badge, fill, h } from '../dom.js';
import { dateTime } from '../format.js';
import { renderHoldoutResults } from './results.js';

function lifeBadge(holdout) {
  return badge(holdout.status, holdout.status === 'running' ? 'good' : 'neutral', { dataset: { field: 'status' } });
}

function holdoutTable(holdouts) {
  return h(
    'div',
    { class: 'table-wrap', tabindex: '0' },
    h(
      'table',
      { dataset: { table: 'holdouts' } },
      h('caption', { class: 'visually-hidden' }, 'Holdouts'),
      h(
        'thead',
        {},
        h('tr', {}, ['Holdout', 'Status', 'Held', 'Unit', 'Metrics', 'Started'].map((text) => h('th', { scope: 'col' }, text))),
      ),
      h(
        'tbody',
        {},
        holdouts.map((x) =>
          h(
            'tr',
            { dataset: { holdout: x.key } },
            h('th', { scope: 'row' }, h('a', { href: `#/holdouts/${enc(x.id)}` }, x.key)),
            h('td', {}, lifeBadge(x)),
            h('td', { class: 'num', dataset: { field: 'percent' } }, `${x.percent}%`),
            h('td', {}, x.unit),
            h('td', { dataset: { field: 'metrics' } }, x.metrics.length ? x.metrics.join(', ') : h('span', { class: 'muted' }, 'none chosen')),
            h('td', {}, dateTime(x.started_at)),
          ),
        ),
      ),
    ),
  );
}

async function list(ctx) {
  ctx.setTitle('Holdouts');
  const holdouts = await listAll('/holdouts', { signal: ctx.signal });
  fill(ctx.root,
    h('h1', { tabindex: '-1' }, 'Holdouts'),
    h('p', { class: 'subtitle' }, 'A holdout keeps a share of units out of every experiment that respects it and out of what those experiments ship, until it ends: its readout measures what everything shipped did.'),
    holdouts.length ? holdoutTable(holdouts) : h('p', { class: 'panel' }, 'No holdouts yet. Create one with POST /api/v1/holdouts.'),
  );
}

async function one(ctx, id) {
  const holdout = await api(`/holdouts/${enc(id)}`, { signal: ctx.signal });
  ctx.setTitle(`Holdout ${holdout.key}`);
  const results = h('section', { 'aria-labelledby': 'results-title', id: 'results' });
  fill(ctx.root,
    h('p', { class: 'note' }, h('a', { href: '#/holdouts' }, '← Holdouts')),
    h('div', { class: 'title-row' }, h('h1', { tabindex: '-1' }, holdout.key), lifeBadge(holdout)),
    holdout.name !== holdout.key ? h('p', { class: 'subtitle' }, holdout.name) : null,
    h(
      'div',
      { class: 'panel' },
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Held out'),
        h('dd', {}, `${holdout.percent}% of ${holdout.unit} units`),
        h('dt', {}, 'Running'),
        h('dd', {}, holdout.ended_at ? `${dateTime(holdout.started_at)} to ${dateTime(holdout.ended_at)}` : `since ${dateTime(holdout.started_at)}`),
        h('dt', {}, 'Compared on'),
        h('dd', {}, holdout.metrics.length ? holdout.metrics.join(', ') : 'no metrics yet: choose them with PATCH /api/v1/holdouts/{id}'),
      ),
    ),
    results,
    h('p', {}, h('a', { href: `#/audit?entity_type=holdout&entity_id=${enc(holdout.id)}` }, 'History of this holdout in the audit log')),
  );
  await renderHoldoutResults(results, holdout, ctx);
}

export async function render(ctx) {
  if (ctx.params.length > 0) {
    await one(ctx, ctx.params[0]);
  } else {
    await list(ctx);
  }
}
