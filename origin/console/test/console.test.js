// The console in headless Chromium against a real abx-origin: an admin creates, starts and
// completes an experiment by clicking through the pages, and every figure the results page
// shows is checked against the JSON the API returns for the same request. A viewer sees no
// editing controls. Every page is checked with axe-core and must log no console errors.
//
// `ABX_CONSOLE_SCREENSHOTS=dir` also writes a screenshot of each main page into `dir`
// (scripts/test-console.sh --screenshots refreshes docs/screenshots/).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { count, interval, metricEffect, metricValue, pValue, sig, signedPercent } from '../js/format.js';
import { ADMIN_KEY, CHECKOUT, CHECKOUT_TRAFFIC, Origin, seed, traffic } from './origin.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOTS = process.env.ABX_CONSOLE_SCREENSHOTS;
const missing = !existsSync(CHROMIUM);
if (missing && process.env.ABX_REQUIRE_ALL) throw new Error(`Chromium is required (ABX_REQUIRE_ALL is set) but ${CHROMIUM} is missing`);
const skip = missing ? `Chromium not found at ${CHROMIUM} (set CHROMIUM, or run scripts/test-console.sh)` : false;

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

let origin;
let browser;
let sdk;
let seeded;

before(async () => {
  if (skip) return;
  origin = await Origin.start();
  sdk = await origin.key('sdk');
  seeded = await seed(origin, sdk);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  await origin?.stop();
});

/** A page that records console errors and uncaught exceptions; `expected` filters known ones. */
async function openPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  page.errors = errors;
  return page;
}

async function signIn(page, key) {
  await page.goto(`${origin.base}/#/signin`);
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Experiments' }).waitFor();
}

/** axe-core's WCAG 2 A/AA rules on the current page; returns the violations. */
async function accessibility(page) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa'] }));
  return result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join('; ')})`);
}

async function checkPage(page, name) {
  assert.deepEqual(await accessibility(page), [], `accessibility violations on ${name}`);
  if (SCREENSHOTS) {
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
  }
}

/** The text of a results cell, by metric, variant row and field. */
async function cell(page, metric, variant, field, part) {
  const selector = `table[data-metric="${metric}"][data-table="effects"] tr[data-variant="${variant}"] [data-field="${field}"]`;
  const target = part ? `${selector} [data-part="${part}"]` : selector;
  return (await page.locator(target).textContent()).trim();
}

test('an admin creates, starts and completes an experiment, and the results page shows the API numbers', { skip, timeout: 300_000 }, async () => {
  const page = await openPage();
  await signIn(page, ADMIN_KEY);

  // The list: both seeded experiments with their badges.
  const list = page.locator('main');
  await list.getByRole('link', { name: 'search_ranking' }).waitFor();
  await list.getByRole('link', { name: 'onboarding_flow' }).waitFor();
  await checkPage(page, 'experiments');

  // Create: first with a weight sum the API refuses, whose message lands at the field.
  await page.getByRole('link', { name: 'New experiment' }).click();
  await page.getByRole('heading', { level: 1, name: 'New experiment' }).waitFor();
  const form = page.locator('form');
  await form.locator('[name=key]').fill(CHECKOUT.key);
  await form.locator('[name=name]').fill(CHECKOUT.name);
  await form.locator('[name=hypothesis]').fill(CHECKOUT.hypothesis);
  await form.locator('[name=layer]').selectOption(CHECKOUT.layer);
  // The layer's free space is shown next to the choice: 30% is held by search_ranking.
  await page.getByText('Layer checkout_ui: 70% free; held by search_ranking', { exact: false }).waitFor();
  await form.locator('[name=traffic_percent]').fill(String(CHECKOUT.traffic_percent));
  const weights = form.getByLabel(/Weight \(%\)/);
  const names = form.getByLabel(/^Name( \(control\))? of variant/);
  const configs = form.getByLabel(/Config \(JSON\)/);
  await names.nth(0).fill('control');
  await names.nth(1).fill('treatment');
  await weights.nth(0).fill('50');
  await weights.nth(1).fill('40');
  await configs.nth(0).fill(JSON.stringify(CHECKOUT.variants[0].config));
  await configs.nth(1).fill(JSON.stringify(CHECKOUT.variants[1].config));
  await form.locator('[name=primary_metric]').selectOption(CHECKOUT.primary_metric);
  await form.locator('[name=secondary_metrics][value=revenue]').check();
  await form.locator('[name=secondary_metrics][value=p95_latency]').check();
  await form.locator('[name=secondary_metrics][value=revenue_capped]').check();
  await form.locator('[name=secondary_metrics][value=purchase_3d]').check();
  await form.locator('[name=guardrail_metrics][value=crash_rate]').check();
  await form.locator('[name=dimensions]').fill(CHECKOUT.dimensions.join(', '));
  await checkPage(page, 'experiment-form');
  await page.getByRole('button', { name: 'Create experiment' }).click();
  await page.locator('#form-errors[role=alert]').waitFor();
  const refusal = await page.locator('#form-errors').textContent();
  assert.match(refusal, /The origin refused the experiment/);
  assert.match(refusal, /100/, refusal);
  // The message is also shown at the variants it is about.
  assert.match(await form.locator('[data-field=variants] .field-error').first().textContent(), /100/);
  // Chromium reports the refused request itself as a console error: expected here.
  const refused = page.errors.findIndex((e) => e.includes('422'));
  assert.notEqual(refused, -1, `the 422 was not seen: ${page.errors}`);
  page.errors.splice(refused, 1);

  await weights.nth(1).fill('50');
  await page.getByRole('button', { name: 'Create experiment' }).click();
  await page.getByRole('heading', { level: 1, name: CHECKOUT.key }).waitFor();
  const listed = await origin.get(`/experiments?q=${CHECKOUT.key}`);
  const created = listed.items.find((e) => e.key === CHECKOUT.key);
  assert.ok(created, JSON.stringify(listed));
  assert.equal(created.status, 'draft');
  assert.deepEqual(
    created.variants.map((v) => [v.name, v.weight, v.config]),
    CHECKOUT.variants.map((v) => [v.name, v.weight, v.config]),
  );
  assert.equal(created.layer, CHECKOUT.layer);
  assert.deepEqual(created.guardrail_metrics, ['crash_rate']);
  assert.deepEqual(created.dimensions, CHECKOUT.dimensions);

  // Start, confirmed in a dialog.
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByRole('button', { name: 'Start' }).click();
  await page.locator('.badge', { hasText: 'running' }).first().waitFor();
  assert.equal((await origin.get(`/experiments/${created.id}`)).status, 'running');

  // Traffic with a true +50% relative lift, then the results page against the API.
  await traffic(origin, sdk, created, CHECKOUT_TRAFFIC);
  await page.reload();
  await page.locator('#recommended-action').waitFor();
  const results = await origin.get(`/experiments/${created.id}/results?granularity=day`);
  assert.equal((await page.locator('#recommended-action').textContent()).replace('Recommended action: ', ''), results.recommended_action);
  let checked = 0;
  for (const m of results.metrics) {
    const control = results.variants[results.control].metrics[m.metric];
    // A quantile's units say how many events it was computed from, a capped metric's how
    // many units the cap held.
    const units = (summary) => {
      if (m.kind === 'quantile') return `${count(summary.units)} (${count(summary.count)} events)`;
      if (summary.cap != null) return `${count(summary.units)} (${count(summary.capped_units)} capped at ${sig(summary.cap)})`;
      return count(summary.units);
    };
    assert.equal(await cell(page, m.metric, results.control, 'units', 'estimate'), units(control));
    assert.equal(await cell(page, m.metric, results.control, 'value', 'estimate'), metricValue(m.kind, control.value));
    for (const c of m.comparisons) {
      const summary = results.variants[c.variant].metrics[m.metric];
      assert.equal(await cell(page, m.metric, c.variant, 'units', 'estimate'), units(summary));
      assert.equal(await cell(page, m.metric, c.variant, 'value', 'estimate'), metricValue(m.kind, summary.value));
      assert.equal(await cell(page, m.metric, c.variant, 'absolute', 'estimate'), metricEffect(m.kind, c.absolute.estimate));
      assert.equal(await cell(page, m.metric, c.variant, 'absolute', 'ci'), interval(c.absolute.ci, (x) => metricEffect(m.kind, x)));
      assert.equal(await cell(page, m.metric, c.variant, 'relative', 'estimate'), signedPercent(c.relative.estimate));
      assert.equal(await cell(page, m.metric, c.variant, 'relative', 'ci'), interval(c.relative.ci, (x) => signedPercent(x)));
      assert.equal(await cell(page, m.metric, c.variant, 'p_value', 'estimate'), pValue(c.p_value));
      assert.equal(await cell(page, m.metric, c.variant, 'adjusted_p_value', 'estimate'), pValue(c.adjusted_p_value));
      checked += 1;
    }
  }
  assert.equal(checked, 6, 'purchase, revenue, p95_latency, revenue_capped, purchase_3d and crash_rate each have one comparison');
  assert.ok(results.metrics.some((m) => m.kind === 'quantile' && m.quantile === 0.95), 'the quantile metric is in the results');
  await page.getByRole('columnheader', { name: 'p95 of events' }).waitFor();
  // The capped metric says what its cap held, the windowed one which events it counts.
  assert.ok(results.variants[results.control].metrics.revenue_capped.cap > 0);
  assert.match(await cell(page, 'revenue_capped', results.control, 'units', 'estimate'), /capped at/);
  await page.getByRole('columnheader', { name: 'Rate, first 3 d after exposure' }).waitFor();
  // The decision badge says what the API decided (the data are random: each run's
  // experiment id gives other assignments, so significance is not asserted here; the
  // statistics are tested in origin/tests/analysis.rs and e2e/measurement.test.mjs).
  const purchase = results.metrics.find((m) => m.metric === 'purchase').comparisons[0];
  assert.match(await cell(page, 'purchase', 'treatment', 'decision'), purchase.significant ? /significant improvement/ : /not significant/);
  // The SRM panel, guardrails, forest plot and daily lift chart are drawn.
  await page.locator('#srm').waitFor();
  await page.locator('#guardrails').waitFor();
  await page.locator('#daily canvas, #daily table').first().waitFor({ state: 'attached' });
  // The drill-downs by platform (the experiment's dimension, chosen at once) and by country
  // (the instance's): every effect shown is the API's, and the heterogeneity test is stated
  // for each metric and treatment.
  const picker = page.getByLabel('Break down by');
  assert.deepEqual(await picker.locator('option').allTextContents(), ['platform', 'country']);
  for (const dimension of ['platform', 'country']) {
    const drill = await origin.get(`/experiments/${created.id}/results?dimension=${dimension}`);
    if (dimension !== 'platform') await picker.selectOption(dimension);
    const first = drill.groups[0];
    await page.locator(`table[data-table="drilldown"] tr[data-group="${first.value}"]`).first().waitFor();
    let drilled = 0;
    for (const g of drill.groups) {
      for (const m of g.metrics) {
        for (const c of m.comparisons) {
          const row = page.locator(`table[data-table="drilldown"] tr[data-group="${g.value}"][data-metric="${m.metric}"][data-variant="${c.variant}"]`);
          assert.equal((await row.locator('[data-field="absolute"] [data-part="estimate"]').textContent()).trim(), metricEffect(m.kind, c.absolute.estimate));
          assert.equal((await row.locator('[data-field="adjusted_p_value"] [data-part="estimate"]').textContent()).trim(), pValue(c.adjusted_p_value));
          drilled += 1;
        }
      }
    }
    assert.equal(drilled, drill.groups.reduce((n, g) => n + g.metrics.reduce((k, m) => k + m.comparisons.length, 0), 0));
    assert.ok(drilled >= 6, `two ${dimension} values × at least purchase, revenue and crash_rate`);
    assert.equal(await page.locator('#heterogeneity li').count(), drill.heterogeneity.length);
    assert.match(await page.locator('#drilldown-note').textContent(), /Exploratory/);
  }
  await picker.selectOption('platform');
  await page.locator('table[data-table="drilldown"] tr[data-group="mobile"]').first().waitFor();
  await checkPage(page, 'experiment-results');

  // Complete, shipping the treatment.
  await page.getByRole('button', { name: 'Complete', exact: true }).click();
  await dialog.getByLabel('Variant to ship').selectOption('treatment');
  await dialog.getByRole('button', { name: 'Complete' }).click();
  await page.locator('.badge', { hasText: 'shipped: treatment' }).waitFor();
  const completed = await origin.get(`/experiments/${created.id}`);
  assert.equal(completed.status, 'completed');
  assert.equal(completed.shipped_variant, 'treatment');
  const assignment = await origin.get(`/experiments/${CHECKOUT.key}/assignment?user_id=anyone-at-all`, sdk);
  assert.equal(assignment.variant, 'treatment');

  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('the other pages: layers, flags (rollout and kill switch), metrics, power calculator, audit log', { skip, timeout: 120_000 }, async () => {
  const page = await openPage();
  await signIn(page, ADMIN_KEY);

  // Metrics: the seeded ones say what they measure; an admin defines new kinds with the
  // form, and a refused definition shows the origin's message at its field.
  await page.getByRole('link', { name: 'Metrics' }).click();
  await page.getByRole('heading', { level: 1, name: 'Metrics' }).waitFor();
  const row = (key, field) => page.locator(`table[data-table="metrics"] tr[data-metric="${key}"] [data-field="${field}"]`);
  assert.equal((await row('p95_latency', 'measures').textContent()).trim(), 'p95 of latency_ms');
  assert.equal((await row('revenue_capped', 'cap').textContent()).trim(), 'at the 99th percentile');
  assert.equal((await row('purchase_3d', 'window').textContent()).trim(), 'first 3 d after exposure');
  const metricForm = page.locator('form');
  await metricForm.locator('[name=key]').fill('p99_checkout_ms');
  await metricForm.locator('[name=kind]').selectOption('quantile');
  await metricForm.locator('[name=event_type]').fill('checkout_ms');
  await metricForm.locator('[name=direction]').selectOption('decrease');
  await metricForm.locator('[name=quantile]').fill('99');
  await page.getByRole('button', { name: 'Create metric' }).click();
  await page.locator('#form-errors[role=alert]').waitFor();
  assert.match(await metricForm.locator('[data-field=quantile] .field-error').textContent(), /\S/);
  const refused = page.errors.findIndex((e) => e.includes('422'));
  assert.notEqual(refused, -1, `the 422 was not seen: ${page.errors}`);
  page.errors.splice(refused, 1);
  await metricForm.locator('[name=quantile]').fill('0.99');
  await page.getByRole('button', { name: 'Create metric' }).click();
  await row('p99_checkout_ms', 'measures').waitFor();
  const quantileMetric = await origin.get('/metrics/p99_checkout_ms');
  assert.equal(quantileMetric.kind, 'quantile');
  assert.equal(quantileMetric.quantile, 0.99);
  // A capped ratio counted in the second week after the exposure.
  await page.locator('form [name=key]').fill('revenue_per_session_week2');
  await page.locator('form [name=kind]').selectOption('ratio');
  await page.locator('form [name=event_type]').fill('revenue');
  await page.locator('form [name=denominator_event_type]').fill('session');
  await page.locator('form [name="cap.kind"]').selectOption('value');
  await page.locator('form [name="cap.amount"]').fill('500');
  await page.locator('form [name="window.delay"]').fill('7');
  await page.locator('form [name="window.length"]').fill('7');
  await checkPage(page, 'metrics');
  await page.getByRole('button', { name: 'Create metric' }).click();
  await row('revenue_per_session_week2', 'window').waitFor();
  assert.equal((await row('revenue_per_session_week2', 'window').textContent()).trim(), '7 d to 14 d after exposure');
  const ratio = await origin.get('/metrics/revenue_per_session_week2');
  assert.deepEqual([ratio.denominator_event_type, ratio.cap, ratio.window], ['session', { value: 500 }, { delay_s: 604_800, length_s: 604_800 }]);

  // Editing: the form opens with the metric as it is; a filter is added and the window
  // cleared (an edit removes what was emptied); the origin's 422 shows at the filter.
  await page.getByRole('link', { name: 'Edit revenue_per_session_week2' }).click();
  await page.getByRole('heading', { level: 1, name: 'revenue_per_session_week2' }).waitFor();
  const editForm = page.locator('form');
  assert.equal(await editForm.locator('[name=key]').isDisabled(), true);
  assert.deepEqual(
    await Promise.all(['kind', 'denominator_event_type', '"cap.kind"', '"cap.amount"', '"window.delay"', '"window.length"'].map((n) => editForm.locator(`[name=${n}]`).inputValue())),
    ['ratio', 'session', 'value', '500', '7', '7'],
  );
  await editForm.locator('[name=filter]').fill('{"all": [{"attr": "currency", "op": "matches", "value": "USD"}]}');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#form-errors[role=alert]').waitFor();
  assert.match(await editForm.locator('[data-field=filter] .field-error').textContent(), /\S/);
  const badFilter = page.errors.findIndex((e) => e.includes('422'));
  assert.notEqual(badFilter, -1, `the 422 was not seen: ${page.errors}`);
  page.errors.splice(badFilter, 1);
  await editForm.locator('[name=filter]').fill('{"all": [{"attr": "currency", "op": "eq", "value": "USD"}]}');
  await editForm.locator('[name="window.delay"]').fill('');
  await editForm.locator('[name="window.length"]').fill('');
  await checkPage(page, 'metric-edit');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByRole('heading', { level: 1, name: 'Metrics' }).waitFor();
  assert.match(await row('revenue_per_session_week2', 'filter').textContent(), /currency/);
  const edited = await origin.get('/metrics/revenue_per_session_week2');
  assert.deepEqual(edited.filter, { all: [{ attr: 'currency', op: 'eq', value: 'USD' }] });
  assert.equal(edited.window ?? null, null);
  assert.deepEqual([edited.kind, edited.cap, edited.version], ['ratio', { value: 500 }, ratio.version + 1]);
  // A metric that running experiments use keeps what it measures (the origin's 409), while
  // its name can change.
  await page.getByRole('link', { name: 'Edit crash_rate' }).click();
  await page.getByRole('heading', { level: 1, name: 'crash_rate' }).waitFor();
  await page.locator('form [name=filter]').fill('{"all": [{"attr": "fatal", "op": "eq", "value": true}]}');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByText('cannot change while running experiments use it').waitFor();
  const inUse = page.errors.findIndex((e) => e.includes('409'));
  assert.notEqual(inUse, -1, `the 409 was not seen: ${page.errors}`);
  page.errors.splice(inUse, 1);
  await page.locator('form [name=filter]').fill('');
  await page.locator('form [name=name]').fill('Crashes');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByRole('heading', { level: 1, name: 'Metrics' }).waitFor();
  const crash = await origin.get('/metrics/crash_rate');
  assert.deepEqual([crash.name, crash.filter ?? null, crash.event_type], ['Crashes', null, 'crash']);

  // Layers: the slot map names the experiment owning each range.
  await page.getByRole('link', { name: 'Layers' }).click();
  await page.getByRole('heading', { level: 1, name: 'Layers' }).waitFor();
  await page.getByText('search_ranking', { exact: false }).first().waitFor();
  await checkPage(page, 'layers');

  // Flags: move the rollout of new_checkout's last rule, save it, then kill the flag.
  await page.getByRole('link', { name: 'Flags' }).click();
  await page.getByRole('heading', { level: 1, name: 'Feature flags' }).waitFor();
  const flag = page.locator('[data-flag="new_checkout"]');
  const slider = flag.locator('input[type=range]').last();
  await slider.fill('40');
  await flag.locator('[data-action=save-rollout]').last().click();
  await flag.locator('[data-action=save-rollout]').last().isDisabled();
  await expectEventually(async () => (await origin.get('/flags/new_checkout')).rules.at(-1).rollout_percent === 40, 'the rollout was saved');
  await checkPage(page, 'flags');
  await flag.locator('[data-action=disable]').click();
  const dialog = page.getByRole('dialog');
  if (await dialog.count()) await dialog.getByRole('button').first().click();
  await expectEventually(async () => (await origin.get('/flags/new_checkout')).enabled === false, 'the kill switch turned the flag off');

  // Power: the form's answer is the API's.
  await page.getByRole('link', { name: 'Power calculator' }).click();
  await page.getByLabel('Baseline').fill('0.1');
  await page.getByLabel('Minimum detectable effect').fill('0.05');
  await page.getByLabel('Units per day (optional)').fill('2000');
  await page.getByRole('button', { name: 'Calculate' }).click();
  await page.locator('[data-field=units_per_variant]').waitFor();
  const power = await origin.post('/analysis/power', { metric: 'conversion', baseline: 0.1, mde: 0.05, mde_type: 'relative', alpha: 0.05, power: 0.8, variants: 2, daily_traffic: 2000 });
  assert.equal((await page.locator('[data-field=units_per_variant]').textContent()).trim(), count(power.units_per_variant));
  assert.equal((await page.locator('[data-field=total_units]').textContent()).trim(), count(power.total_units));
  await checkPage(page, 'power');

  // Audit: the flag changes above are listed.
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('heading', { level: 1, name: 'Audit log' }).waitFor();
  await page.getByText('new_checkout', { exact: false }).first().waitFor();
  await checkPage(page, 'audit');

  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('the holdouts page lists holdouts, and a holdout\'s readout shows the API numbers', { skip, timeout: 120_000 }, async () => {
  const page = await openPage();
  await signIn(page, ADMIN_KEY);
  await page.getByRole('link', { name: 'Holdouts' }).click();
  await page.getByRole('heading', { level: 1, name: 'Holdouts' }).waitFor();
  const row = page.locator('table[data-table="holdouts"] tr[data-holdout="everything_shipped"]');
  assert.equal((await row.locator('[data-field=percent]').textContent()).trim(), '20%');
  assert.equal((await row.locator('[data-field=metrics]').textContent()).trim(), 'purchase, revenue');
  await checkPage(page, 'holdouts');
  await row.getByRole('link', { name: 'everything_shipped' }).click();
  await page.getByRole('heading', { level: 1, name: 'everything_shipped' }).waitFor();
  await page.locator('#recommended-action').waitFor();
  const api = await origin.get(`/holdouts/${seeded.holdout.id}/results?granularity=day`);
  assert.equal(api.control, 'held');
  assert.equal((await page.locator('#recommended-action').textContent()).replace('Recommended action: ', '').trim(), api.recommended_action);
  assert.match(api.recommended_action, /^What shipped improves purchase/);
  const units = (arm) => count(api.variants[arm].impressions);
  assert.equal((await page.locator('dd[data-field=arms]').textContent()).trim(), `${units('held')} held, ${units('released')} released`);
  const effects = page.locator('table[data-metric="purchase"][data-table="effects"] tr[data-variant="released"]');
  const comparison = api.metrics.find((m) => m.metric === 'purchase').comparisons[0];
  assert.equal((await effects.locator('[data-field=relative] [data-part=estimate]').textContent()).trim(), signedPercent(comparison.relative.estimate));
  await checkPage(page, 'holdout');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('a viewer sees everything and can change nothing; bad keys are refused', { skip, timeout: 60_000 }, async () => {
  const page = await openPage();
  await page.goto(`${origin.base}/#/signin`);
  await page.getByLabel('API key').fill('abx_not_a_real_key_at_all');
  await page.keyboard.press('Enter');
  await page.getByText('does not know this key').waitFor();
  const refused = page.errors.findIndex((e) => e.includes('401'));
  assert.notEqual(refused, -1);
  page.errors.splice(refused, 1);

  await signIn(page, await origin.key('viewer'));
  await page.getByText('read only').waitFor();
  assert.equal(await page.getByRole('link', { name: 'New experiment' }).count(), 0);
  await page.getByRole('link', { name: 'search_ranking' }).click();
  await page.locator('#recommended-action').waitFor();
  assert.equal(await page.locator('[data-action]').count(), 0, 'no lifecycle buttons for a viewer');
  await page.getByRole('link', { name: 'Flags' }).click();
  await page.getByRole('heading', { level: 1, name: 'Feature flags' }).waitFor();
  assert.equal(await page.locator('button[data-action]').count(), 0, 'no flag controls for a viewer');
  await page.getByRole('link', { name: 'Metrics' }).click();
  await page.locator('table[data-table="metrics"] tr[data-metric="purchase_3d"]').waitFor();
  assert.equal(await page.locator('form').count(), 0, 'no metric form for a viewer');
  assert.equal(await page.getByRole('link', { name: /^Edit / }).count(), 0, 'no edit links for a viewer');
  await page.goto(`${origin.base}/#/metrics/purchase_3d`);
  await page.getByRole('heading', { level: 1, name: 'Not allowed' }).waitFor();
  await page.getByRole('link', { name: 'Flags' }).click();
  await page.getByRole('heading', { level: 1, name: 'Feature flags' }).waitFor();
  // Keyboard: the skip link moves focus to the content, and Tab from the page heading
  // reaches the flag tables (focusable so that wide ones can be scrolled).
  await page.getByRole('link', { name: 'Skip to content' }).focus();
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'main');
  await page.getByRole('heading', { level: 1, name: 'Feature flags' }).focus();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'table-wrap');
  assert.deepEqual(page.errors, []);
  await page.context().close();
  assert.ok(seeded.ranking.id);
});

async function expectEventually(check, what) {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
