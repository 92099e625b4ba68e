// An experiment's results, as GET /api/v1/experiments/{id}/results?granularity=day returns
// them (origin/domain/src/results.rs, docs/statistics.md §18). The console computes nothing
// statistical: every figure shown is a field of that response, formatted.

import { api, enc } from '../api.js';
import { badge, fill, h, uid } from '../dom.js';
import { forestPlot, liftChart } from '../charts.js';
import { count, days, fixed, interval, metricEffect, metricValue, pValue, percent, sig, signedPercent, windowText } from '../format.js';

function actionTone(text) {
  if (/^(Ship|What shipped improves)/.test(text)) return 'good';
  if (/^(Stop|Invalid|Don't|What shipped harms)/.test(text)) return 'bad';
  return 'neutral';
}

function decision(c) {
  if (c.significant) {
    return c.improvement === false ? badge('significant harm', 'bad') : badge('significant improvement', 'good');
  }
  return badge('not significant', 'neutral');
}

function figure(field, estimate, ci) {
  return h('td', { class: 'num', dataset: { field } }, h('span', { dataset: { part: 'estimate' } }, estimate), ci ? h('span', { class: 'ci', dataset: { part: 'ci' } }, ci) : null);
}

function th(text, numeric = true) {
  return h('th', { scope: 'col', class: numeric ? 'num' : '' }, text);
}

/** A comparison's effect, p-values and decision cells (five columns), or why it has none. */
function effectCells(m, c) {
  if (!c.absolute) return h('td', { colspan: 5, class: 'muted', dataset: { field: 'note' } }, c.note || 'not computed yet');
  return [
    figure('absolute', metricEffect(m.kind, c.absolute.estimate), interval(c.absolute.ci, (x) => metricEffect(m.kind, x))),
    c.relative ? figure('relative', signedPercent(c.relative.estimate), interval(c.relative.ci, (x) => signedPercent(x))) : h('td', { class: 'muted', dataset: { field: 'relative' } }, `unavailable (${c.relative_unavailable})`),
    figure('p_value', pValue(c.p_value)),
    figure('adjusted_p_value', pValue(c.adjusted_p_value)),
    h('td', { dataset: { field: 'decision' } }, decision(c)),
  ];
}

const MODES = { sequential: 'sequential (always valid)', fixed_horizon: 'fixed horizon', group_sequential: 'group sequential' };

/** The main table of one metric: each variant's value, and each treatment's effect. */
function metricTable(r, m) {
  const sequential = r.analysis_mode === 'sequential';
  const level = `${Math.round((1 - r.alpha) * 1000) / 10}%`;
  const control = r.variants[r.control];
  const controlSummary = control && control.metrics[m.metric];
  const rows = [
    h(
      'tr',
      { dataset: { variant: r.control } },
      h('th', { scope: 'row' }, r.control, h('span', { class: 'muted' }, ' (control)')),
      figure('units', units(m, controlSummary)),
      figure('value', metricValue(m.kind, controlSummary ? controlSummary.value : null)),
      h('td', { colspan: 5, class: 'muted' }, 'baseline'),
    ),
  ];
  for (const c of m.comparisons) {
    const summary = r.variants[c.variant] && r.variants[c.variant].metrics[m.metric];
    const cells = [
      h('th', { scope: 'row' }, c.variant),
      figure('units', units(m, summary)),
      figure('value', metricValue(m.kind, summary ? summary.value : null)),
    ];
    cells.push(effectCells(m, c));
    rows.push(h('tr', { dataset: { variant: c.variant } }, cells));
  }
  const notes = [];
  for (const c of m.comparisons) {
    if (c.latest && c.latest.absolute) {
      notes.push(
        h(
          'li',
          { dataset: { variant: c.variant, field: 'latest' } },
          `${c.variant}: the test above is frozen${r.analysed_through ? ` at the data through ${r.analysed_through}` : ' at its deciding look'}; with all ${count(c.latest.control_units + c.latest.treatment_units)} units since, the effect is ${metricEffect(m.kind, c.latest.absolute.estimate)}`,
          c.latest.relative ? ` (${signedPercent(c.latest.relative.estimate)})` : '',
          ' — descriptive only, not a test.',
        ),
      );
    }
    if (c.trend && c.trend.significant) {
      notes.push(
        h('li', { dataset: { variant: c.variant, field: 'trend' } }, `${c.variant}: the relative effect is drifting (${signedPercent(c.trend.slope_per_day)} a day, p = ${pValue(c.trend.p_value)}, descriptive): early effects may fade (novelty) or grow (primacy).`),
      );
    }
  }
  return h(
    'div',
    { class: 'table-wrap', tabindex: '0' },
    notes.length ? h('ul', { class: 'note' }, notes) : null,
    h(
      'table',
      { dataset: { metric: m.metric, table: 'effects' } },
      h('caption', { class: 'visually-hidden' }, `${m.metric}: effects against ${r.control}`),
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          th('Variant', false),
          th('Units'),
          th(valueHeading(m)),
          th(`Absolute effect [${level} CI]`),
          th(`Relative lift [${level} CI]`),
          th('p (fixed horizon)'),
          th(sequential ? 'Adjusted always-valid p' : 'Adjusted p'),
          th('Decision', false),
        ),
      ),
      h('tbody', {}, rows),
    ),
  );
}

/**
 * What a metric's value column holds: a rate, a ratio, a quantile of events or a mean, and
 * over which window after the exposure when it has one.
 */
function valueHeading(m) {
  const value = m.kind === 'quantile' ? `p${+(m.quantile * 100).toFixed(2)} of events` : m.kind === 'conversion' ? 'Rate' : m.kind === 'ratio' ? 'Ratio' : 'Mean per unit';
  return m.window ? `${value}, ${windowText(m.window)}` : value;
}

/** A variant's units, for a quantile the events it was computed from, for a cap how many it held. */
function units(m, summary) {
  if (!summary) return count(0);
  if (m.kind === 'quantile') return `${count(summary.units)} (${count(summary.count)} events)`;
  if (summary.cap != null) return `${count(summary.units)} (${count(summary.capped_units)} capped at ${sig(summary.cap)})`;
  return count(summary.units);
}

/** Sequential, group-sequential, Bayesian and CUPED figures of one metric's comparisons. */
function detailTable(r, m) {
  const withFigures = m.comparisons.filter((c) => c.absolute);
  if (withFigures.length === 0) return null;
  const groupSequential = withFigures.some((c) => c.group_sequential);
  return h(
    'details',
    { open: r.analysis_mode === 'sequential' },
    h('summary', {}, `Sequential, Bayesian and CUPED figures for ${m.metric}`),
    h(
      'div',
      { class: 'table-wrap', tabindex: '0' },
      h(
        'table',
        { dataset: { metric: m.metric, table: 'details' } },
        h('caption', { class: 'visually-hidden' }, `${m.metric}: sequential, Bayesian and CUPED figures`),
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            th('Variant', false),
            th('Always-valid p'),
            th('Confidence sequence (absolute)'),
            groupSequential ? th('Group-sequential looks (z / boundary)') : null,
            th('Chance to beat control'),
            th('Expected loss'),
            th('Estimate that decided'),
            th('Unadjusted effect [CI]'),
            th('Variance reduction'),
          ),
        ),
        h(
          'tbody',
          {},
          withFigures.map((c) =>
            h(
              'tr',
              { dataset: { variant: c.variant } },
              h('th', { scope: 'row' }, c.variant),
              figure('sequential_p', c.sequential ? pValue(c.sequential.p_value) : '—'),
              figure('sequential_ci', c.sequential ? interval(c.sequential.ci, (x) => metricEffect(m.kind, x)) : '—'),
              groupSequential
                ? figure(
                    'group_sequential',
                    c.group_sequential ? groupSequentialLooks(c.group_sequential) : '—',
                  )
                : null,
              figure('chance_to_win', c.bayesian ? percent(c.bayesian.chance_to_win, 1) : '—'),
              figure('expected_loss', c.bayesian ? sig(c.bayesian.expected_loss) : '—'),
              // With pre-exposure data CUPED decides and the headline figures are its own; the
              // unadjusted difference is shown beside them for reference.
              figure('estimator', c.estimator === 'cuped' ? 'CUPED' : 'unadjusted'),
              c.unadjusted ? figure('unadjusted', metricEffect(m.kind, c.unadjusted.estimate), interval(c.unadjusted.ci, (x) => metricEffect(m.kind, x))) : figure('unadjusted', '—'),
              figure('variance_reduction', c.estimator === 'cuped' && c.cuped ? percent(c.cuped.variance_reduction, 1) : '—'),
            ),
          ),
        ),
      ),
    ),
  );
}

/** The recorded looks of a group-sequential test, and where it stands. */
function groupSequentialLooks(g) {
  const looks = g.looks.map((l) => `${l.date} (${percent(l.information_fraction, 0)}): ${fixed(l.z)} / ${fixed(l.z_boundary)}${l.crossed ? ' crossed' : ''}`);
  const state = g.crossed ? 'stopped: boundary crossed' : g.decided ? 'over: final look read' : `${g.looks_passed}/${g.looks_planned} looks, ${percent(g.information_fraction, 0)} of the plan`;
  return [looks.join('; ') || 'no look yet', ` — ${state}`].join('');
}

/**
 * Rows of the forest plot: the relative effect of each treatment on each metric, with its
 * interval. In sequential mode the decision rests on the always-valid confidence sequence,
 * which the API gives for the relative lift too.
 */
export function forestRows(r) {
  const sequential = r.analysis_mode === 'sequential';
  const rows = [];
  const missing = [];
  for (const m of r.metrics) {
    for (const c of m.comparisons) {
      const label = `${m.metric} · ${c.variant}`;
      const tone = c.significant ? (c.improvement === false ? 'bad' : 'good') : 'plain';
      if (sequential && c.sequential && c.sequential.relative_ci && c.relative) {
        rows.push({ label, tone, estimate: c.relative.estimate, lo: c.sequential.relative_ci[0], hi: c.sequential.relative_ci[1] });
      } else if (!sequential && c.relative) {
        rows.push({ label, tone, estimate: c.relative.estimate, lo: c.relative.ci[0], hi: c.relative.ci[1] });
      } else {
        missing.push(`${label}: ${c.note || (c.relative_unavailable ? `relative lift unavailable (${c.relative_unavailable})` : 'no interval yet')}`);
      }
    }
  }
  return { rows, missing };
}

function forest(r) {
  const { rows, missing } = forestRows(r);
  const sequential = r.analysis_mode === 'sequential';
  const level = `${Math.round((1 - r.alpha) * 1000) / 10}%`;
  const what = sequential
    ? `always-valid ${level} confidence sequences of the relative lift`
    : `${level} confidence intervals of the relative lift`;
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': 'forest-title', id: 'forest' },
    h('h3', { id: 'forest-title' }, 'Relative effects'),
    rows.length
      ? forestPlot(rows, { title: `Relative effect of each treatment on each metric`, description: `Squares are estimates; bars are ${what}. The dashed line is no effect.` })
      : h('p', { class: 'muted' }, 'No intervals yet.'),
    h('p', { class: 'note' }, `Bars: ${what}. Green: significant improvement; red: significant harm; grey: not significant.`),
    missing.length ? h('ul', { class: 'note' }, missing.map((t) => h('li', {}, t))) : null,
  );
}

/** A drill-down group's name: its value, or what the merged and missing groups stand for. */
export function groupLabel(g) {
  if (g.kind === 'other') return `other (${g.values_merged} values)`;
  if (g.kind === 'missing') return '(not set)';
  return g.value;
}

/** What the heterogeneity test of one metric and treatment says, in words. */
export function heterogeneityText(d, het) {
  const name = `${het.metric} · ${het.variant}`;
  if (!het.test) return `${name}: ${het.note}`;
  const q = `Cochran's Q = ${fixed(het.test.q, 2)}, ${het.test.df} df, p = ${pValue(het.test.p_value)}`;
  return het.differs
    ? `${name}: the effect differs by ${d.dimension} (${q})`
    : `${name}: no evidence that the effect differs by ${d.dimension} (${q})`;
}

/** The drill-down's table: per group, metric and treatment, the units and the effect. */
function drillDownTable(r, d) {
  const rows = [];
  for (const g of d.groups) {
    for (const m of g.metrics) {
      for (const c of m.comparisons) {
        const cells = [
          h('th', { scope: 'row' }, groupLabel(g)),
          h('td', {}, m.metric),
          h('td', {}, c.variant),
          figure('units', `${count(g.units[r.control] || 0)} / ${count(g.units[c.variant] || 0)}`),
        ];
        cells.push(effectCells(m, c));
        rows.push(h('tr', { dataset: { group: groupLabel(g), metric: m.metric, variant: c.variant } }, cells));
      }
    }
  }
  return h(
    'div',
    { class: 'table-wrap', tabindex: '0' },
    h(
      'table',
      { dataset: { table: 'drilldown' } },
      h('caption', { class: 'visually-hidden' }, `Results by ${d.dimension}`),
      h('thead', {}, h('tr', {}, th(d.dimension, false), th('Metric', false), th('Variant', false), th(`Units (${r.control} / variant)`), th('Absolute effect'), th('Relative effect'), th('p'), th('Adjusted p'), th('Decision', false))),
      h('tbody', {}, rows),
    ),
  );
}

/** The forest plot of a drill-down: each group's relative effect per metric and treatment. */
function drillDownForest(r, d) {
  const rows = [];
  for (const g of d.groups) {
    const { rows: groupRows } = forestRows({ analysis_mode: r.analysis_mode, metrics: g.metrics });
    for (const row of groupRows) rows.push({ ...row, label: `${groupLabel(g)} · ${row.label}` });
  }
  if (rows.length === 0) return h('p', { class: 'muted' }, 'No intervals yet.');
  return forestPlot(rows, { title: `Relative effects by ${d.dimension}`, description: 'Squares are estimates; bars are intervals of the relative lift in each group. The dashed line is no effect.' });
}

/**
 * The drill-down of the results by one of the experiment's dimensions or the instance's
 * (`instance`), chosen in a picker.
 */
function drillDownPanel(r, e, instance, ctx) {
  const own = e.dimensions || [];
  const dimensions = [...own, ...instance.filter((d) => !own.includes(d))];
  if (dimensions.length === 0) return null;
  const id = uid('dimension');
  const select = h('select', { id }, dimensions.map((d) => h('option', { value: d }, d)));
  const body = h('div', { id: 'drilldown-body', 'aria-live': 'polite' });
  // Only the newest choice's answer is shown: one for a dimension chosen before may arrive
  // after it.
  let latest = 0;
  const show = async () => {
    const request = ++latest;
    fill(body, h('p', { class: 'loading' }, 'Loading…'));
    try {
      const d = await api(`/experiments/${enc(e.id)}/results?dimension=${enc(select.value)}`, { signal: ctx.signal });
      if (request !== latest) return;
      fill(
        body,
        h('div', { class: 'message neutral', id: 'drilldown-note' }, d.note),
        h('ul', { class: 'note', id: 'heterogeneity' }, d.heterogeneity.map((het) => h('li', { dataset: { metric: het.metric, variant: het.variant } }, heterogeneityText(d, het)))),
        drillDownForest(r, d),
        drillDownTable(r, d),
      );
    } catch (error) {
      if (error.name !== 'AbortError' && request === latest) fill(body, h('p', { class: 'message bad' }, error.message));
    }
  };
  select.addEventListener('change', show);
  show();
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': 'drilldown-title', id: 'drilldown' },
    h('h3', { id: 'drilldown-title' }, 'Results by dimension ', badge('exploratory', 'neutral')),
    h('p', {}, h('label', { for: id }, 'Break down by '), select),
    body,
  );
}

/** Exposures the origin refused because their variant is not the unit's (forged or broken clients). */
function mismatchNote(r) {
  const claimed = Object.entries(r.mismatched_exposures ?? {});
  if (!claimed.length) return null;
  const total = claimed.reduce((a, [, n]) => a + n, 0);
  return h(
    'p',
    { class: 'message error', dataset: { field: 'mismatched_exposures' } },
    `${count(total)} exposures were refused because their variant is not the one the snapshot assigns the unit (`,
    claimed.map(([variant, n]) => `${variant}: ${count(n)}`).join(', '),
    '): a client is forging or misreporting assignments. They are not in these results.',
  );
}

function srmPanel(r) {
  const srm = r.srm;
  if (!srm) {
    return h('section', { class: 'panel', id: 'srm', 'aria-labelledby': 'srm-title' }, h('h3', { id: 'srm-title' }, 'Sample ratio check'), h('p', { class: 'muted' }, 'Not computed yet (no exposures).'));
  }
  const total = Object.values(srm.counts).reduce((a, b) => a + b, 0);
  return h(
    'section',
    { class: 'panel', id: 'srm', 'aria-labelledby': 'srm-title' },
    h('h3', { id: 'srm-title' }, 'Sample ratio check ', srm.mismatch ? badge('mismatch', 'bad') : badge('ok', 'good')),
    mismatchNote(r),
    h(
      'p',
      {},
      srm.mismatch ? 'The split differs from the configured weights (always-valid p < 0.001): results cannot be trusted. ' : 'The split matches the configured weights. ',
      'Always-valid p = ',
      h('span', { dataset: { field: 'srm_sequential_p' } }, pValue(srm.sequential_p_value)),
      ' (checked on every refresh); χ² = ',
      h('span', { dataset: { field: 'chi2' } }, fixed(srm.chi2, 3)),
      ', p = ',
      h('span', { dataset: { field: 'srm_p' } }, pValue(srm.p_value)),
      ' (one look).',
    ),
    h(
      'div',
      { class: 'table-wrap', tabindex: '0' },
      h(
      'table',
      {},
      h('caption', { class: 'visually-hidden' }, 'Exposed units by variant against the configured weights'),
      h('thead', {}, h('tr', {}, th('Variant', false), th('Exposed units'), th('Expected'), th('Share'))),
      h(
        'tbody',
        {},
        Object.entries(srm.counts).map(([variant, n]) =>
          h(
            'tr',
            { dataset: { variant } },
            h('th', { scope: 'row' }, variant),
            figure('observed', count(n)),
            figure('expected', count(Math.round(srm.expected[variant]))),
            figure('share', total ? percent(n / total, 1) : '—'),
          ),
        ),
      ),
    ),
    ),
  );
}

function guardrailPanel(r, e) {
  const body = r.guardrails.length
    ? h(
        'div',
        { class: 'table-wrap', tabindex: '0' },
        h(
        'table',
        {},
        h('caption', { class: 'visually-hidden' }, 'Guardrail checks'),
        h('thead', {}, h('tr', {}, th('Metric', false), th('Variant', false), th('Status', false), th('Harmful effect'), th('z'), th('Alarm at z'), th('Always-valid p'), th('Level'), th('Margin'), th('Harm bound'))),
        h(
          'tbody',
          {},
          r.guardrails.map((g) =>
            h(
              'tr',
              { dataset: { metric: g.metric, variant: g.variant } },
              h('th', { scope: 'row' }, g.metric),
              h('td', {}, g.variant),
              h('td', { dataset: { field: 'status' } }, badge(g.status.replace('_', ' '), g.status === 'alarm' ? 'bad' : g.status === 'healthy' ? 'good' : 'neutral')),
              figure('harmful_effect', sig(g.harmful_effect)),
              figure('z', fixed(g.z)),
              figure('threshold', fixed(g.threshold, 2)),
              figure('guardrail_p', pValue(g.p_value)),
              figure('guardrail_alpha', sig(g.alpha)),
              figure('margin', g.margin === undefined ? '—' : percent(g.margin, 1)),
              h(
                'td',
                { class: 'num', dataset: { field: 'harm_bound' } },
                g.harm_upper_bound === undefined ? '—' : signedPercent(g.harm_upper_bound),
                g.non_inferior === undefined ? null : ' ',
                g.non_inferior === undefined ? null : g.non_inferior ? badge('within margin', 'good') : badge('not shown', 'neutral'),
              ),
            ),
          ),
        ),
      ),
      )
    : h('p', { class: 'muted' }, e.guardrail_metrics.length ? 'Not enough data for the guardrail checks yet.' : 'This experiment has no guardrail metrics.');
  return h('section', { class: 'panel', id: 'guardrails', 'aria-labelledby': 'guardrails-title' }, h('h3', { id: 'guardrails-title' }, 'Guardrails'), body);
}

/** Points of the daily series for one metric, by treatment. */
function dailyLines(r, metric) {
  const series = (r.series || []).filter((p) => p.metric === metric);
  const variants = [...new Set(series.map((p) => p.variant))];
  return variants.map((variant) => ({
    label: variant,
    points: series
      .filter((p) => p.variant === variant)
      .map((p) => ({
        date: p.date,
        t: Date.parse(`${p.date}T00:00:00Z`) / 1000,
        estimate: p.relative ? p.relative.estimate : null,
        lo: p.relative ? p.relative.ci[0] : null,
        hi: p.relative ? p.relative.ci[1] : null,
        units: p.control_units + p.treatment_units,
      })),
  }));
}

function dailyTable(lines) {
  return h(
    'details',
    {},
    h('summary', {}, 'The daily figures as a table'),
    h(
      'table',
      { dataset: { table: 'daily' } },
      h('caption', { class: 'visually-hidden' }, 'Cumulative relative lift by day'),
      h('thead', {}, h('tr', {}, th('Day', false), th('Variant', false), th('Units (both arms)'), th('Cumulative lift'), th('Interval'))),
      h(
        'tbody',
        {},
        lines.flatMap((line) =>
          line.points.map((p) =>
            h(
              'tr',
              {},
              h('th', { scope: 'row' }, p.date),
              h('td', {}, line.label),
              figure('units', count(p.units)),
              figure('lift', signedPercent(p.estimate)),
              figure('interval', p.lo === null ? '—' : interval([p.lo, p.hi], (x) => signedPercent(x))),
            ),
          ),
        ),
      ),
    ),
  );
}

function dailyPanel(r) {
  const metrics = [...new Set((r.series || []).map((p) => p.metric))];
  const panel = h('section', { class: 'panel', id: 'daily', 'aria-labelledby': 'daily-title' }, h('h3', { id: 'daily-title' }, 'Cumulative lift by day'));
  if (metrics.length === 0) {
    panel.append(h('p', { class: 'muted' }, 'No daily data yet.'));
    return panel;
  }
  const selectId = uid('daily-metric');
  const select = h('select', { id: selectId }, metrics.map((m) => h('option', { value: m }, m)));
  const holder = h('div', {});
  const level = `${Math.round((1 - r.alpha) * 1000) / 10}%`;
  const draw = () => {
    const lines = dailyLines(r, select.value);
    fill(holder,
      liftChart(lines, { title: `Cumulative relative lift of ${select.value} by day, with ${level} intervals` }),
      h('p', { class: 'note' }, `Each day's point uses all data up to the end of that day (UTC); the band is the ${level} fixed-horizon interval of that day's data.`, r.analysis_mode === 'sequential' ? ' Decisions use the always-valid figures above.' : ''),
      dailyTable(lines),
    );
  };
  select.addEventListener('change', draw);
  panel.append(h('div', { class: 'field inline' }, h('label', { for: selectId }, 'Metric'), select), holder);
  draw();
  return panel;
}

export async function renderResults(container, e, ctx) {
  fill(container, h('h2', { id: 'results-title' }, 'Results'), h('p', { class: 'loading' }, 'Loading results…'));
  const [r, instance] = await Promise.all([
    api(`/experiments/${enc(e.id)}/results?granularity=day`, { signal: ctx.signal }),
    // The instance's dimensions only add to the picker, so the results show without them.
    api('/dimensions', { signal: ctx.signal }).catch((error) => {
      if (error.name === 'AbortError') throw error;
      return { dimensions: [] };
    }),
  ]);
  const mode = MODES[r.analysis_mode] || r.analysis_mode;
  const summary = h(
    'dl',
    { class: 'facts' },
    h('dt', {}, 'Days running'),
    h('dd', { dataset: { field: 'days_running' } }, days(r.days_running)),
    h('dt', {}, 'Analysis'),
    h('dd', {}, `${mode}, α = ${r.alpha}, ${r.correction === 'bh' ? 'Benjamini-Hochberg' : r.correction} correction over primary and secondary metrics`),
    h('dt', {}, 'Excluded units'),
    h('dd', { dataset: { field: 'multiple_exposures' } }, `${count(r.multiple_exposures)} seen in more than one variant`),
    r.planned_sample_fraction !== null && r.planned_sample_fraction !== undefined
      ? [h('dt', {}, 'Planned sample reached'), h('dd', { dataset: { field: 'planned' } }, percent(r.planned_sample_fraction, 1))]
      : null,
    r.analysed_through ? [h('dt', {}, 'Tested with data through'), h('dd', { dataset: { field: 'analysed_through' } }, `${r.analysed_through} (the test is frozen at its plan; later data is descriptive)`)] : null,
    h('dt', {}, 'Minimum duration'),
    h('dd', { dataset: { field: 'min_duration_days' } }, r.min_duration_days ? `${r.min_duration_days} days` : 'none'),
  );
  fill(container, resultsPanels(r, summary, [h('div', { class: 'grid-2' }, srmPanel(r), guardrailPanel(r, e)), forest(r), drillDownPanel(r, e, instance.dimensions, ctx)]));
  return r;
}

/** The recommendation, the summary, `middle`, the daily lift and each metric's tables. */
function resultsPanels(r, summary, middle) {
  return [
    h('h2', { id: 'results-title' }, 'Results'),
    h('div', { class: `message action ${actionTone(r.recommended_action)}`, id: 'recommended-action' }, h('span', { class: 'visually-hidden' }, 'Recommended action: '), r.recommended_action),
    h('div', { class: 'panel' }, summary),
    middle,
    dailyPanel(r),
    r.metrics.map((m) =>
      h(
        'section',
        { class: 'panel', dataset: { metric: m.metric }, 'aria-labelledby': `metric-${m.metric}` },
        h('h3', { id: `metric-${m.metric}` }, m.metric, ' ', badge(m.role, m.role === 'primary' ? 'info' : 'neutral'), ' ', h('span', { class: 'note' }, `${m.kind}, ${m.direction === 'increase' ? 'higher' : 'lower'} is better`)),
        metricTable(r, m),
        detailTable(r, m),
      ),
    ),
  ];
}

/**
 * A holdout's readout (GET /api/v1/holdouts/{id}/results): the units it holds (`held`, the
 * control) against those it releases, with the experiment results' tables and charts.
 */
export async function renderHoldoutResults(container, holdout, ctx) {
  fill(container, h('h2', { id: 'results-title' }, 'Results'), h('p', { class: 'loading' }, 'Loading results…'));
  const r = await api(`/holdouts/${enc(holdout.id)}/results?granularity=day`, { signal: ctx.signal });
  const units = (arm) => count(r.variants[arm]?.impressions ?? 0);
  const summary = h(
    'dl',
    { class: 'facts' },
    h('dt', {}, 'Days running'),
    h('dd', { dataset: { field: 'days_running' } }, days(r.days_running)),
    h('dt', {}, 'Units'),
    h('dd', { dataset: { field: 'arms' } }, `${units('held')} held, ${units('released')} released`),
    h('dt', {}, 'Analysis'),
    h('dd', {}, `${MODES[r.analysis_mode] || r.analysis_mode}, α = ${r.alpha}: a holdout is read for months, so every figure stays valid however often it is read`),
  );
  fill(container, resultsPanels(r, summary, [srmPanel(r), forest(r)]));
  return r;
}
