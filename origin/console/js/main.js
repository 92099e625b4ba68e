// The console's shell: session, navigation and the hash router. Pages are modules under
// pages/ exporting `render(ctx)`; they are loaded on first visit.
//
// Routing uses the URL fragment (#/experiments/…) so that every view has a link and the
// origin serves one page at `/` without knowing the console's routes.

import { api, session } from './api.js';
import { announce, errorBox, fill, h } from './dom.js';

const routes = [
  { pattern: /^\/signin$/, load: () => import('./pages/signin.js'), public: true },
  { pattern: /^\/experiments$/, load: () => import('./pages/experiments.js'), section: 'experiments' },
  { pattern: /^\/experiments\/new$/, load: () => import('./pages/form.js'), section: 'experiments', admin: true },
  { pattern: /^\/experiments\/([^/]+)\/edit$/, load: () => import('./pages/form.js'), section: 'experiments', admin: true },
  { pattern: /^\/experiments\/([^/]+)$/, load: () => import('./pages/experiment.js'), section: 'experiments' },
  { pattern: /^\/layers$/, load: () => import('./pages/layers.js'), section: 'layers' },
  { pattern: /^\/holdouts$/, load: () => import('./pages/holdouts.js'), section: 'holdouts' },
  { pattern: /^\/holdouts\/([^/]+)$/, load: () => import('./pages/holdouts.js'), section: 'holdouts' },
  { pattern: /^\/flags$/, load: () => import('./pages/flags.js'), section: 'flags' },
  { pattern: /^\/metrics$/, load: () => import('./pages/metrics.js'), section: 'metrics' },
  { pattern: /^\/metrics\/([^/]+)$/, load: () => import('./pages/metrics.js'), section: 'metrics', admin: true },
  { pattern: /^\/power$/, load: () => import('./pages/power.js'), section: 'power' },
  { pattern: /^\/audit$/, load: () => import('./pages/audit.js'), section: 'audit' },
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const sessionBox = document.getElementById('session');
const roleLabel = document.getElementById('role');

/** Who is signed in: {key_id, role}, or null. */
let identity = null;
let rendering = 0;
let controller = null;
/** Where to go after signing in. */
let afterSignIn = '#/experiments';

function parseHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, '')) || '/experiments';
  const [path, search = ''] = raw.split('?');
  return { path: path.startsWith('/') ? path : `/${path}`, query: new URLSearchParams(search) };
}

export function navigate(hash) {
  if (location.hash === hash) {
    route();
  } else {
    location.hash = hash;
  }
}

function showChrome() {
  const signedIn = identity !== null;
  nav.hidden = !signedIn;
  sessionBox.hidden = !signedIn;
  roleLabel.textContent = signedIn ? `Signed in as ${identity.role}${identity.role === 'viewer' ? ' (read only)' : ''}` : '';
}

function markSection(section) {
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.section === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

/** Asks the origin which role the stored key has; false when there is no usable key. */
async function identify() {
  if (!session.key) return false;
  try {
    const me = await api('/whoami');
    if (me.role === 'sdk' || me.role === 'server') {
      session.clear();
      return false;
    }
    identity = me;
    return true;
  } catch {
    session.clear();
    return false;
  }
}

export async function signedIn(me) {
  identity = me;
  showChrome();
  const target = afterSignIn;
  afterSignIn = '#/experiments';
  navigate(target);
}

function signOut(message) {
  session.clear();
  identity = null;
  showChrome();
  if (message) sessionStorage.setItem('abx.console.notice', message);
  navigate('#/signin');
}

/** Renders the route in the fragment. `keepFocus` is for refreshes after an action. */
async function route({ keepFocus = false } = {}) {
  const token = ++rendering;
  if (controller) controller.abort();
  controller = new AbortController();
  const { path, query } = parseHash();
  const match = routes.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  if (!match) {
    navigate('#/experiments');
    return;
  }
  const { r, m } = match;
  if (!r.public && identity === null) {
    afterSignIn = location.hash || '#/experiments';
    if (location.hash !== '#/signin') {
      location.hash = '#/signin';
      return;
    }
  }
  if (r.public && identity !== null) {
    navigate('#/experiments');
    return;
  }
  markSection(r.section);
  const root = h('div', { class: 'page' }, h('p', { class: 'loading' }, 'Loading…'));
  fill(main, root);
  main.setAttribute('aria-busy', 'true');
  const ctx = {
    root,
    params: m.slice(1).map(decodeURIComponent),
    query,
    role: identity ? identity.role : null,
    canEdit: identity !== null && identity.role === 'admin',
    signal: controller.signal,
    navigate,
    refresh: () => route({ keepFocus: true }),
    setTitle: (title) => {
      document.title = `${title} · abx console`;
    },
    signedIn,
  };
  try {
    if (r.admin && !ctx.canEdit) {
      fill(root, h('h1', { tabindex: '-1' }, 'Not allowed'), h('p', {}, 'Only admin keys can create or edit configuration.'));
    } else {
      const page = await r.load();
      await page.render(ctx);
    }
  } catch (error) {
    if (error.name === 'AbortError' || token !== rendering) return;
    fill(root, h('h1', { tabindex: '-1' }, 'Something went wrong'), errorBox(error));
  }
  if (token !== rendering) return;
  main.removeAttribute('aria-busy');
  if (!keepFocus) {
    const heading = root.querySelector('h1');
    if (heading) {
      heading.setAttribute('tabindex', '-1');
      heading.focus({ preventScroll: true });
      window.scrollTo(0, 0);
    }
  }
}

document.getElementById('sign-out').addEventListener('click', () => {
  signOut('Signed out.');
  announce('Signed out');
});

// The skip link would otherwise be taken for a route.
document.querySelector('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener('abx:unauthorized', () => {
  if (identity !== null) signOut('The API key is no longer valid; sign in again.');
});

window.addEventListener('hashchange', () => route());

if (await identify()) {
  showChrome();
} else {
  afterSignIn = location.hash && location.hash !== '#/signin' ? location.hash : '#/experiments';
}
if (identity === null && location.hash !== '#/signin') {
  location.hash = '#/signin';
} else {
  route();
}
