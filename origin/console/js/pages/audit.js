// The audit log: who changed what, newest first, filtered by entity, a page at a time.

import { api, enc } from '../api.js';
import { errorBox, fill, h, uid } from '../dom.js';
import { dateTime, json } from '../format.js';

const TYPES = ['experiment', 'layer', 'flag', 'segment', 'holdout', 'metric', 'dimensions', 'api_key'];

function entity(entry) {
  if (entry.entity_type === 'experiment') {
    return h('a', { href: `#/experiments/${enc(entry.entity_id)}` }, entry.details && entry.details.key ? entry.details.key : entry.entity_id);
  }
  return h('span', { class: 'mono' }, entry.entity_id);
}

function row(entry) {
  return h(
    'tr',
    { dataset: { action: entry.action } },
    h('td', { class: 'num' }, dateTime(entry.at)),
    h('td', {}, h('span', { class: 'mono' }, entry.actor)),
    h('th', { scope: 'row' }, entry.action),
    h('td', {}, entry.entity_type, ' ', entity(entry)),
    h('td', {}, entry.details && Object.keys(entry.details).length ? h('details', {}, h('summary', {}, 'Details'), h('pre', {}, json(entry.details))) : null),
  );
}

export async function render(ctx) {
  ctx.setTitle('Audit log');
  const typeId = uid('entity-type');
  const entityId = uid('entity-id');
  const state = { entity_type: ctx.query.get('entity_type') || '', entity_id: ctx.query.get('entity_id') || '' };
  const typeSelect = h('select', { id: typeId }, h('option', { value: '' }, 'Everything'), TYPES.map((t) => h('option', { value: t, selected: t === state.entity_type }, t)));
  const idInput = h('input', { id: entityId, type: 'text', value: state.entity_id, spellcheck: 'false' });
  const filters = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log' },
    h('div', { class: 'field' }, h('label', { for: typeId }, 'Entity type'), typeSelect),
    h('div', { class: 'field' }, h('label', { for: entityId }, 'Entity id'), idInput),
    h('button', { type: 'submit', class: 'secondary' }, 'Filter'),
  );
  const tbody = h('tbody', {});
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load older entries');
  const status = h('div', { 'aria-live': 'polite' });
  const table = h(
    'div',
    { class: 'table-wrap', tabindex: '0' },
    h(
      'table',
      { id: 'audit' },
      h('caption', { class: 'visually-hidden' }, 'Audit log entries, newest first'),
      h('thead', {}, h('tr', {}, ['When', 'Actor', 'Action', 'Entity', ''].map((t, i) => h('th', { scope: 'col', class: i === 0 ? 'num' : '' }, t || h('span', { class: 'visually-hidden' }, 'Details'))))),
      tbody,
    ),
  );
  let cursor = null;
  const load = async (append) => {
    const params = new URLSearchParams({ limit: '50' });
    if (state.entity_type) params.set('entity_type', state.entity_type);
    if (state.entity_id) params.set('entity_id', state.entity_id);
    if (append && cursor) params.set('cursor', cursor);
    try {
      const page = await api(`/audit?${params}`, { signal: ctx.signal });
      if (!append) fill(tbody);
      tbody.append(...page.items.map(row));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      status.textContent = `${tbody.children.length} entries shown${cursor ? '; older ones can be loaded' : ''}.`;
      if (append && page.items.length) tbody.children[tbody.children.length - page.items.length].querySelector('th').setAttribute('tabindex', '-1');
    } catch (error) {
      if (error.name !== 'AbortError') fill(status, errorBox(error));
    }
  };
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    state.entity_type = typeSelect.value;
    state.entity_id = idInput.value.trim();
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v) params.set(k, v);
    history.replaceState(null, '', `#/audit${params.toString() ? `?${params}` : ''}`);
    cursor = null;
    load(false);
  });
  more.addEventListener('click', async () => {
    const before = tbody.children.length;
    await load(true);
    const first = tbody.children[before];
    if (first) first.querySelector('th').focus();
  });
  fill(ctx.root, h('h1', { tabindex: '-1' }, 'Audit log'), filters, status, table, h('p', {}, more));
  await load(false);
}
