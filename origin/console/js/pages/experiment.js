// One experiment: its configuration, the lifecycle buttons (admins only, each confirmed in a
// dialog) and its results.

import { ApiError, api, enc } from '../api.js';
import { confirmDialog } from '../dialog.js';
import { announce, badge, errorBox, fill, h, statusBadge, uid } from '../dom.js';
import { dateTime, json } from '../format.js';
import { renderResults } from './results.js';

/** What each lifecycle action needs: where it applies and how it is confirmed. */
const ACTIONS = {
  start: { from: ['draft'], label: 'Start', done: 'started', message: 'Units will be assigned from the next snapshot on. A layered experiment takes its slots in the layer now.' },
  pause: { from: ['running'], label: 'Pause', done: 'paused', message: 'Nobody is assigned while it is paused; its layer slots are kept.' },
  resume: { from: ['paused'], label: 'Resume', done: 'resumed', message: 'Assignment continues where it stopped.' },
  complete: { from: ['running', 'paused'], label: 'Complete', done: 'completed', message: 'The experiment ends and frees its layer slots. Choose a variant to serve to everyone (except the units of a running holdout), or none.' },
  archive: { from: ['completed'], label: 'Archive', done: 'archived', message: 'Archived experiments leave the snapshot and the default list.' },
};

/** A message to show after the page re-renders following an action. */
let flash = null;

/** Shows `text` on the next render of an experiment (after a save or an action). */
export function setFlash(text) {
  flash = text;
}

function facts(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
  );
}

function list(items) {
  return items.length ? items.join(', ') : h('span', { class: 'muted' }, 'none');
}

function configuration(e) {
  const a = e.analysis;
  const analysis = [
    a.mode.replace('_', ' '),
    `α = ${a.alpha}`,
    `${a.correction === 'bh' ? 'Benjamini-Hochberg' : a.correction} correction`,
    a.planned_units_per_variant ? `${a.planned_units_per_variant.toLocaleString('en-US')} units per variant planned` : null,
    a.looks ? `${a.looks} looks (${(a.spending || 'o_brien_fleming').replaceAll('_', ' ')} spending)` : null,
    a.tuning_units ? `tuning ${a.tuning_units} per variant` : null,
    a.min_duration_days ? `at least ${a.min_duration_days} days` : 'no minimum duration',
    ...Object.entries(a.guardrail_margins || {}).map(([metric, margin]) => `${metric} within ${(margin * 100).toFixed(1)}%`),
  ].filter(Boolean);
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': 'config-title' },
    h('h2', { id: 'config-title' }, 'Configuration'),
    facts([
      ['Hypothesis', e.hypothesis],
      ['Description', e.description],
      ['Owner', e.owner],
      ['Layer', e.layer ? h('a', { href: '#/layers' }, e.layer) : h('span', { class: 'muted' }, 'none (all units)')],
      ['Traffic', `${e.traffic_percent}%${e.layer ? ' of the layer' : ''}`],
      ['Slots', e.slot_ranges.length ? e.slot_ranges.map((r) => `${r.start_percent}–${r.end_percent}%`).join(', ') : null],
      ['Unit', h('code', {}, e.unit)],
      ['Holdout', e.holdout],
      ['Primary metric', e.primary_metric],
      ['Secondary metrics', list(e.secondary_metrics)],
      ['Guardrail metrics', list(e.guardrail_metrics)],
      ['Analysis', analysis.join(' · ')],
      ['Switchback period', e.switchback_period_s ? `${e.switchback_period_s} s` : null],
      ['Targeting', e.targeting ? h('pre', {}, json(e.targeting)) : h('span', { class: 'muted' }, 'everyone')],
      ['Forced variants', Object.keys(e.forced).length ? h('pre', {}, json(e.forced)) : null],
      ['Shipped variant', e.shipped_variant],
      ['Created', dateTime(e.created_at)],
      ['Started', e.started_at ? dateTime(e.started_at) : null],
      ['Ended', e.ended_at ? dateTime(e.ended_at) : null],
      ['Version', String(e.version)],
    ]),
    h('h3', {}, 'Variants'),
    h(
      'div',
      { class: 'table-wrap', tabindex: '0' },
      h(
        'table',
        { id: 'variants' },
        h('caption', { class: 'visually-hidden' }, 'Variants (the first is the control)'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Variant'), h('th', { scope: 'col', class: 'num' }, 'Weight'), h('th', { scope: 'col' }, 'Config'))),
        h(
          'tbody',
          {},
          e.variants.map((v, i) =>
            h(
              'tr',
              { dataset: { variant: v.name } },
              h('th', { scope: 'row' }, v.name, i === 0 ? h('span', { class: 'muted' }, ' (control)') : null),
              h('td', { class: 'num' }, `${v.weight}%`),
              h('td', {}, h('pre', {}, json(v.config))),
            ),
          ),
        ),
      ),
    ),
  );
}

async function runAction(ctx, e, action, messages) {
  const spec = ACTIONS[action];
  let content = [];
  if (action === 'complete') {
    const id = uid('ship');
    content = h(
      'div',
      { class: 'field' },
      h('label', { for: id }, 'Variant to ship'),
      h('select', { id, name: 'ship' }, h('option', { value: '' }, 'None: stop serving the experiment'), e.variants.map((v) => h('option', { value: v.name }, v.name))),
    );
  }
  const answer = await confirmDialog({
    title: `${spec.label} ${e.key}?`,
    message: spec.message,
    confirmLabel: spec.label,
    danger: action === 'complete' || action === 'archive',
    content,
  });
  if (!answer) return;
  const body = {};
  if (action === 'complete' && answer.get('ship')) body.ship = answer.get('ship');
  try {
    await api(`/experiments/${enc(e.id)}/${action}`, { method: 'POST', body });
    flash = `${e.key} ${spec.done}${body.ship ? `, shipping ${body.ship}` : ''}.`;
    announce(flash);
    await ctx.refresh();
  } catch (error) {
    showError(messages, error, `Could not ${action} ${e.key}: `);
  }
}

function showError(messages, error, prefix) {
  const box = errorBox(error, prefix);
  box.tabIndex = -1;
  fill(messages, box);
  box.focus();
}

async function remove(ctx, e, messages) {
  const answer = await confirmDialog({
    title: `Delete ${e.key}?`,
    message: 'The draft is deleted for good.',
    confirmLabel: 'Delete',
    danger: true,
  });
  if (!answer) return;
  try {
    await api(`/experiments/${enc(e.id)}`, { method: 'DELETE' });
    announce(`${e.key} deleted`);
    ctx.navigate('#/experiments');
  } catch (error) {
    showError(messages, error, `Could not delete ${e.key}: `);
  }
}

export async function render(ctx) {
  const [id] = ctx.params;
  let e;
  try {
    e = await api(`/experiments/${enc(id)}`, { signal: ctx.signal });
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      ctx.setTitle('Not found');
      fill(ctx.root, h('h1', { tabindex: '-1' }, 'Experiment not found'), h('p', {}, h('a', { href: '#/experiments' }, 'Back to the experiments')));
      return;
    }
    throw error;
  }
  ctx.setTitle(e.key);
  const messages = h('div', { id: 'messages' });
  if (flash) {
    const note = h('div', { class: 'message success', role: 'status', tabindex: '-1' }, flash);
    messages.append(note);
    flash = null;
  }
  const actions = ctx.canEdit
    ? h(
        'div',
        { class: 'actions', role: 'group', 'aria-label': 'Lifecycle' },
        Object.entries(ACTIONS)
          .filter(([, spec]) => spec.from.includes(e.status))
          .map(([action, spec]) =>
            h('button', { type: 'button', class: action === 'start' || action === 'resume' ? '' : 'secondary', dataset: { action }, onclick: () => runAction(ctx, e, action, messages) }, spec.label),
          ),
        h('a', { class: 'button secondary', href: `#/experiments/${enc(e.id)}/edit` }, 'Edit'),
        e.status === 'draft' ? h('button', { type: 'button', class: 'secondary', dataset: { action: 'delete' }, onclick: () => remove(ctx, e, messages) }, 'Delete') : null,
      )
    : null;
  const results = h('section', { 'aria-labelledby': 'results-title', id: 'results' });
  fill(ctx.root,
    h('p', { class: 'note' }, h('a', { href: '#/experiments' }, '← Experiments')),
    h('div', { class: 'title-row' }, h('h1', { tabindex: '-1' }, e.key), statusBadge(e.status), e.shipped_variant ? badge(`shipped: ${e.shipped_variant}`, 'info') : null),
    e.name !== e.key ? h('p', { class: 'subtitle' }, e.name) : null,
    e.status_reason ? h('p', { class: 'message info' }, `Status reason: ${e.status_reason}`) : null,
    actions,
    messages,
    results,
    configuration(e),
    h('p', {}, h('a', { href: `#/audit?entity_type=experiment&entity_id=${enc(e.id)}` }, 'History of this experiment in the audit log')),
  );
  if (messages.firstChild) messages.firstChild.focus();
  if (e.status === 'draft') {
    fill(results, h('h2', { id: 'results-title' }, 'Results'), h('p', { class: 'panel muted' }, 'Results appear once the experiment has started and exposures arrive.'));
  } else {
    await renderResults(results, e, ctx);
  }
}
