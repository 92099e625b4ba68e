// Time and timers are injected everywhere (the event queue, refreshes) so that tests drive
// them with a fake clock. A clock is `{ now(), setTimeout(callback, ms), clearTimeout(timer) }`.

/** The real clock; timers do not keep a Node process alive. */
export const systemClock = {
  now: () => Date.now(),
  setTimeout(callback, ms) {
    const timer = setTimeout(callback, ms);
    timer?.unref?.();
    return timer;
  },
  clearTimeout: (timer) => clearTimeout(timer),
};
