// Feature flags: each flag's rules with a rollout slider per rule (saved with PATCH and
// If-Match, so a concurrent change is never overwritten) and the kill switch.

import { api, enc, listAll } from '../api.js';
import { confirmDialog } from '../dialog.js';
import { announce, badge, errorBox, fill, h, uid } from '../dom.js';
import { json } from '../format.js';

let flash = null;

function valueText(value) {
  return h('code', {}, JSON.stringify(value));
}

function serves(rule) {
  if (rule.from_experiment) {
    const f = rule.from_experiment;
    return [`the variant config of `, h('a', { href: `#/experiments/${enc(f.experiment)}` }, f.experiment), f.config_key ? [' (key ', h('code', {}, f.config_key), ')'] : null];
  }
  return valueText(rule.value);
}

function slider(flag, rule, i, onChange) {
  const id = uid('rollout');
  const range = h('input', {
    type: 'range',
    id,
    min: 0,
    max: 100,
    step: 1,
    value: rule.rollout_percent,
    'aria-valuetext': `${rule.rollout_percent}%`,
    dataset: { rule: String(i) },
  });
  const output = h('output', { for: id }, `${rule.rollout_percent}%`);
  range.addEventListener('input', () => {
    output.textContent = `${range.value}%`;
    range.setAttribute('aria-valuetext', `${range.value}%`);
    onChange();
  });
  return {
    element: h('div', { class: 'rollout' }, h('label', { for: id, class: 'visually-hidden' }, `Rollout of rule ${i + 1} of ${flag.key}`), range, output),
    range,
  };
}

function flagPanel(ctx, flag) {
  const headingId = `flag-${flag.id}`;
  const messages = h('div', {});
  const sliders = [];
  const save = h('button', { type: 'button', disabled: true, dataset: { action: 'save-rollout' } }, 'Save rollout');
  const changed = () => {
    save.disabled = sliders.every((s, i) => Number(s.range.value) === flag.rules[i].rollout_percent);
  };
  const rows = flag.rules.map((rule, i) => {
    let rollout;
    if (ctx.canEdit) {
      const control = slider(flag, rule, i, changed);
      sliders.push(control);
      rollout = control.element;
    } else {
      rollout = `${rule.rollout_percent}%`;
    }
    return h(
      'tr',
      { dataset: { rule: String(i) } },
      h('th', { scope: 'row', class: 'num' }, String(i + 1)),
      h('td', {}, rule.condition ? h('pre', {}, json(rule.condition)) : h('span', { class: 'muted' }, 'everyone')),
      h('td', {}, serves(rule)),
      h('td', { dataset: { field: 'rollout' } }, rollout),
    );
  });
  save.addEventListener('click', async () => {
    const rules = flag.rules.map((rule, i) => ({ ...rule, rollout_percent: Number(sliders[i].range.value) }));
    try {
      await api(`/flags/${enc(flag.id)}`, { method: 'PATCH', body: { rules }, ifMatch: flag.version });
      flash = `${flag.key}: rollout saved.`;
      announce(flash);
      await ctx.refresh();
    } catch (error) {
      fill(messages, errorBox(error, `Could not save ${flag.key}: `));
    }
  });
  const toggle = async () => {
    const off = flag.enabled;
    const answer = await confirmDialog({
      title: off ? `Turn off ${flag.key}?` : `Turn on ${flag.key}?`,
      message: off
        ? `Everyone gets the off value ${JSON.stringify(flag.off_value)} from the next snapshot on, whatever the rules say.`
        : 'The rules apply again from the next snapshot on.',
      confirmLabel: off ? 'Turn off' : 'Turn on',
      danger: off,
    });
    if (!answer) return;
    try {
      await api(`/flags/${enc(flag.id)}/${off ? 'disable' : 'enable'}`, { method: 'POST' });
      flash = `${flag.key} turned ${off ? 'off' : 'on'}.`;
      announce(flash);
      await ctx.refresh();
    } catch (error) {
      fill(messages, errorBox(error, `Could not change ${flag.key}: `));
    }
  };
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': headingId, dataset: { flag: flag.key } },
    h('h2', { id: headingId }, flag.key, ' ', flag.enabled ? badge('on', 'good', { dataset: { state: 'on' } }) : badge('off: kill switch', 'bad', { dataset: { state: 'off' } })),
    flag.description ? h('p', {}, flag.description) : null,
    h('p', { class: 'note' }, `Unit ${flag.unit} · default `, valueText(flag.default_value), ' · off value ', valueText(flag.off_value), ` · version ${flag.version}`),
    messages,
    flag.rules.length
      ? h(
          'div',
          { class: 'table-wrap', tabindex: '0' },
          h(
            'table',
            {},
            h('caption', { class: 'visually-hidden' }, `Rules of ${flag.key}, first match wins`),
            h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'num' }, 'Rule'), h('th', { scope: 'col' }, 'When'), h('th', { scope: 'col' }, 'Serves'), h('th', { scope: 'col' }, 'Rollout'))),
            h('tbody', {}, rows),
          ),
        )
      : h('p', { class: 'muted' }, 'No rules: everyone gets the default value.'),
    ctx.canEdit
      ? h(
          'div',
          { class: 'actions' },
          flag.rules.length ? save : null,
          h('button', { type: 'button', class: flag.enabled ? 'danger' : '', dataset: { action: flag.enabled ? 'disable' : 'enable' }, onclick: toggle }, flag.enabled ? 'Kill switch: turn off' : 'Turn on'),
        )
      : null,
  );
}

export async function render(ctx) {
  ctx.setTitle('Flags');
  const flags = await listAll('/flags', { signal: ctx.signal });
  const note = flash ? h('div', { class: 'message success', role: 'status', tabindex: '-1' }, flash) : null;
  flash = null;
  fill(ctx.root,
    h('h1', { tabindex: '-1' }, 'Feature flags'),
    h('p', { class: 'subtitle' }, 'Rules are tried in order; a rule\u2019s rollout is the share of matching units that get its value. Turning a flag off serves its off value to everyone.'),
    note,
    flags.length ? flags.map((f) => flagPanel(ctx, f)) : h('p', { class: 'panel' }, 'No flags yet. Create one with POST /api/v1/flags.'),
  );
  if (note) note.focus();
}
