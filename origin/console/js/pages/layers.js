// Layers: each layer's 0–100 % slot map with the experiments that own each range (running
// and paused experiments hold slots; completing one frees them).

import { enc, listAll } from '../api.js';
import { fill, h, statusBadge } from '../dom.js';
import { slotMap } from '../charts.js';

function layerPanel(layer) {
  const used = 100 - layer.free_percent;
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': `layer-${layer.id}`, dataset: { layer: layer.key } },
    h('h2', { id: `layer-${layer.id}` }, layer.key, layer.name !== layer.key ? h('span', { class: 'muted' }, ` — ${layer.name}`) : null),
    layer.description ? h('p', {}, layer.description) : null,
    h(
      'p',
      { class: 'note' },
      `Unit ${layer.unit} · `,
      h('strong', { dataset: { value: 'free' } }, `${layer.free_percent}% free`),
      ` · ${Math.round(used * 100) / 100}% allocated to ${new Set(layer.allocations.map((a) => a.experiment_id)).size} experiment(s)`,
    ),
    slotMap(layer),
    layer.allocations.length
      ? h(
          'div',
          { class: 'table-wrap', tabindex: '0' },
          h(
            'table',
            {},
            h('caption', { class: 'visually-hidden' }, `Ranges of layer ${layer.key}`),
            h(
              'thead',
              {},
              h('tr', {}, h('th', { scope: 'col' }, 'Experiment'), h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'num' }, 'From'), h('th', { scope: 'col', class: 'num' }, 'To'), h('th', { scope: 'col', class: 'num' }, 'Size')),
            ),
            h(
              'tbody',
              {},
              layer.allocations.map((a) =>
                h(
                  'tr',
                  { dataset: { experiment: a.experiment_key } },
                  h('th', { scope: 'row' }, h('a', { href: `#/experiments/${enc(a.experiment_id)}` }, a.experiment_key)),
                  h('td', {}, statusBadge(a.status)),
                  h('td', { class: 'num' }, `${a.start_percent}%`),
                  h('td', { class: 'num' }, `${a.end_percent}%`),
                  h('td', { class: 'num' }, `${Math.round((a.end_percent - a.start_percent) * 100) / 100}%`),
                ),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted' }, 'No experiment holds slots in this layer.'),
  );
}

export async function render(ctx) {
  ctx.setTitle('Layers');
  const layers = await listAll('/layers', { signal: ctx.signal });
  fill(ctx.root,
    h('h1', { tabindex: '-1' }, 'Layers'),
    h('p', { class: 'subtitle' }, 'Experiments in one layer never share a unit: each owns a range of the layer\u2019s 0\u2013100% slots while it runs or is paused.'),
    layers.length ? layers.map(layerPanel) : h('p', { class: 'panel' }, 'No layers yet. Create one with POST /api/v1/layers.'),
  );
}
