// Sign-in: an API key, checked with GET /api/v1/whoami and kept in session storage (gone
// when the tab closes; never in local storage or a cookie).

import { api, session } from '../api.js';
import { field, fill, h } from '../dom.js';

export async function render(ctx) {
  ctx.setTitle('Sign in');
  const notice = sessionStorage.getItem('abx.console.notice');
  sessionStorage.removeItem('abx.console.notice');
  const key = field({
    label: 'API key',
    name: 'key',
    input: h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', required: true }),
    hint: 'An admin key can change configuration; a viewer key can read everything. abx-origin prints the first admin key when it starts.',
  });
  const status = h('div', { 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'panel', novalidate: true }, key.wrap, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const secret = key.input.value.trim();
    const fail = (message) => {
      key.error.textContent = message;
      key.error.hidden = false;
      key.input.setAttribute('aria-invalid', 'true');
      key.input.setAttribute('aria-describedby', `${key.error.id} ${key.input.id}-hint`);
      key.input.focus();
    };
    if (!secret) {
      fail('Enter an API key.');
      return;
    }
    submit.disabled = true;
    status.textContent = 'Checking the key…';
    try {
      const me = await api('/whoami', { key: secret });
      if (me.role === 'sdk' || me.role === 'server') {
        fail(`This is an ${me.role} key, which may only read snapshots and send events. Use an admin or viewer key.`);
        return;
      }
      session.save(secret);
      await ctx.signedIn(me);
    } catch (error) {
      fail(error.status === 401 ? 'The origin does not know this key (or it was revoked).' : error.message);
    } finally {
      submit.disabled = false;
      status.textContent = '';
    }
  });
  fill(ctx.root,
    h('h1', { tabindex: '-1' }, 'Sign in to the abx console'),
    notice ? h('div', { class: 'message info', role: 'status' }, notice) : null,
    form,
    status,
  );
}
