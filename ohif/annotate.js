/* polyp-al in OHIF 3.13.2: the next frame, the model's prediction as an editable labelmap, Save / Next / Train.
 *
 * Loaded by /annotate/ (ohif/start.html: asks polyp-al for the next frame, then opens it) and by OHIF's
 * own index.html (ohif/install.sh adds it before OHIF's bundle). Talks only to its own origin: the
 * MONAI Label API (/activelearning, /infer, /datastore/label, /train, /info). OHIF's runtime is reached
 * through the globals its cornerstone extension sets (window.services, window.cornerstone,
 * window.cornerstoneTools): a newer OHIF may rename them, which is why the version is pinned.
 */
(function () {
  'use strict';
  const BASE = '/annotate/';
  const DEFAULT_STRATEGY = 'bvsb_ta_coreset';
  const MODEL = 'polyp_seg';
  const q = new URLSearchParams(location.search);
  const state = (window.polypal = { phase: 'starting', dirty: false, saved: null, error: null, log: [] });

  function log(msg) {
    state.log.push(new Date().toISOString().slice(11, 19) + ' ' + msg);
    console.log('[polyp-al] ' + msg);
  }

  function randomId() {
    const a = new Uint8Array(8);
    crypto.getRandomValues(a); // also in non-secure contexts (unlike crypto.randomUUID)
    return 'browser-' + Array.from(a, x => x.toString(16).padStart(2, '0')).join('');
  }

  // one client id per browser profile (localStorage), unless the address names one (?client=)
  function clientId() {
    let c = q.get('client');
    if (c && /^[A-Za-z0-9_.-]{1,64}$/.test(c)) {
      localStorage.setItem('polypal.client', c);
      return c;
    }
    c = localStorage.getItem('polypal.client');
    if (!c) {
      c = randomId();
      localStorage.setItem('polypal.client', c);
    }
    return c;
  }

  function strategy() {
    let s = q.get('strategy');
    if (s && /^[A-Za-z0-9_-]{1,64}$/.test(s)) sessionStorage.setItem('polypal.strategy', s);
    return sessionStorage.getItem('polypal.strategy') || DEFAULT_STRATEGY;
  }

  // ---------------------------------------------------------------- signing in (MONAI Label's authentication)
  // With MONAI_LABEL_AUTH_ENABLE on the server, every request needs a bearer token. The page signs in with
  // POST /auth/token (user name and password, checked by the realm), keeps the token for this tab
  // (sessionStorage), and every request of the page to its own origin carries it: ours (fetch) and OHIF's
  // DICOMweb reads through /proxy/dicom (XMLHttpRequest). This file runs before OHIF's bundle, so the two are
  // wrapped before OHIF makes a request. The token is renewed before it ends with the realm's refresh token
  // (POST /auth/token/refresh: no password; Keycloak's tokens last 5 minutes by default). A request answered
  // 401 (the token expired) renews it, or, when the realm's sign-in has ended, asks to sign in again, and is
  // sent again: a labelmap being saved is not lost.
  const TOKEN = 'polypal.token';
  const REFRESH = 'polypal.refresh';
  const SKEW = 'polypal.clock-skew';
  const plainFetch = window.fetch.bind(window);
  let authOn = null;
  let renewing = null; // the renewal under way (a promise), if any

  function token() {
    return sessionStorage.getItem(TOKEN);
  }

  function sameOrigin(url) {
    try {
      return new URL(String(url), location.href).origin === location.origin;
    } catch (e) {
      return false;
    }
  }

  // a renewal is under way and the stored token has ended: a request waits for the new one (one still valid
  // goes out with it: a slow realm must not hold up the viewer)
  function waitForRenewal() {
    return renewing && tokenSecondsLeft() <= 5;
  }

  window.fetch = async function (input, init) {
    const url = typeof input === 'string' || input instanceof URL ? input : input && input.url;
    if (sameOrigin(url) && waitForRenewal()) await renewing;
    const t = token();
    if (t && sameOrigin(url)) {
      init = Object.assign({}, init);
      const h = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      if (!h.has('Authorization')) h.set('Authorization', 'Bearer ' + t);
      init.headers = h;
    }
    return plainFetch(input, init);
  };
  const xhrOpen = XMLHttpRequest.prototype.open;
  const xhrSend = XMLHttpRequest.prototype.send;
  const xhrHeader = XMLHttpRequest.prototype.setRequestHeader;
  const xhrAbort = XMLHttpRequest.prototype.abort;
  XMLHttpRequest.prototype.open = function (method, url, async) {
    this._polypalSame = sameOrigin(url);
    this._polypalAuth = false;
    this._polypalAsync = async !== false;
    this._polypalOpened = (this._polypalOpened || 0) + 1;
    return xhrOpen.apply(this, arguments);
  };
  XMLHttpRequest.prototype.abort = function () {
    this._polypalOpened = (this._polypalOpened || 0) + 1; // a send still waiting for a renewal is not made
    return xhrAbort.apply(this, arguments);
  };
  XMLHttpRequest.prototype.setRequestHeader = function (k) {
    if (String(k).toLowerCase() === 'authorization') this._polypalAuth = true;
    return xhrHeader.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this._polypalSame && !this._polypalAuth && this._polypalAsync && waitForRenewal()) {
      // sent once the new token is here, unless aborted or opened again meanwhile
      const args = arguments;
      const opened = this._polypalOpened;
      renewing.finally(() => {
        if (this._polypalOpened !== opened) return;
        const t = token();
        if (t) xhrHeader.call(this, 'Authorization', 'Bearer ' + t);
        try {
          xhrSend.apply(this, args);
        } catch (e) {
          log('a request was not sent: ' + e.message);
        }
      });
      return undefined;
    }
    const t = token();
    if (t && this._polypalSame && !this._polypalAuth) xhrHeader.call(this, 'Authorization', 'Bearer ' + t);
    return xhrSend.apply(this, arguments);
  };

  async function authEnabled() {
    if (authOn === null) {
      try {
        const r = await plainFetch('/auth/', { credentials: 'same-origin' }); // 404: MONAI Label's auth is off
        authOn = r.ok && !!(await r.json()).enabled;
      } catch (e) {
        authOn = false;
      }
    }
    return authOn;
  }

  function claims() {
    const t = token();
    try {
      return t ? JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))) : {};
    } catch (e) {
      return {};
    }
  }

  // seconds the stored token has left (its exp claim, on the realm's clock: the browser's may be minutes off,
  // so the difference seen when a token arrived is taken off), or -1 without one
  function tokenSecondsLeft() {
    const p = claims();
    const skew = Number(sessionStorage.getItem(SKEW)) || 0;
    return typeof p.exp === 'number' ? p.exp - (Date.now() / 1000 - skew) : -1;
  }

  // renew when this many seconds are left: 2 minutes, or a third of the token's life when that is shorter
  function renewAt() {
    const p = claims();
    const life = typeof p.exp === 'number' && typeof p.iat === 'number' ? p.exp - p.iat : 300;
    return Math.max(5, Math.min(120, life / 3));
  }

  // a token answer: its token, its refresh token (a renewal answered without one keeps the one it used, which
  // stays valid; a sign-in without one has none), and the realm's clock against the browser's
  function keep(d, renewal) {
    sessionStorage.setItem(TOKEN, d.access_token);
    if (d.refresh_token) sessionStorage.setItem(REFRESH, d.refresh_token);
    else if (!renewal) sessionStorage.removeItem(REFRESH);
    const p = claims();
    if (typeof p.exp === 'number' && typeof d.expires_in === 'number') {
      sessionStorage.setItem(SKEW, String(Date.now() / 1000 - (p.exp - d.expires_in)));
    }
    keepRenewing();
  }

  // a new token for the realm's refresh token (no password): true when renewed; false when there is no refresh
  // token, the realm refused it (the sign-in has ended: the password is asked for next) or could not answer
  function renew() {
    const rt = sessionStorage.getItem(REFRESH);
    if (!rt) return Promise.resolve(false);
    if (renewing) return renewing;
    renewing = (async () => {
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), 15000); // a server that does not answer: give up
      try {
        const r = await plainFetch('/auth/token/refresh', {
          method: 'POST', credentials: 'same-origin', signal: stop.signal,
          headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ refresh_token: rt }),
        });
        const d = await r.json().catch(() => ({}));
        if (sessionStorage.getItem(REFRESH) !== rt) return false; // signed out (or in again) meanwhile
        if (r.ok && d.access_token) {
          keep(d, true);
          state.renewed = (state.renewed || 0) + 1;
          return true;
        }
        if (r.status === 401 && sessionStorage.getItem(REFRESH) === rt) sessionStorage.removeItem(REFRESH);
        log('the sign-in was not renewed: ' + (d.detail || r.status));
        return false;
      } catch (e) {
        log('the sign-in was not renewed: ' + e.message);
        return false;
      } finally {
        clearTimeout(timer);
        renewing = null;
      }
    })();
    return renewing;
  }

  // renew the token before it ends, on every page of the tab (the viewer's own reads cannot stop to ask);
  // background tabs run timers rarely, so also when the tab is shown again
  let renewTimer = null;

  function keepRenewing() {
    if (renewTimer) return;
    const due = () => {
      if (sessionStorage.getItem(REFRESH) && tokenSecondsLeft() < renewAt()) renew();
    };
    renewTimer = setInterval(due, 10000);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') due();
    });
    due(); // at once too: a page loaded after a sleep or a reload may hold an ended token
  }
  if (sessionStorage.getItem(REFRESH)) keepRenewing();

  let signingIn = null;

  function signIn(why) {
    if (signingIn) return signingIn; // several requests answered 401 at once: one form
    signingIn = new Promise(resolve => {
      state.signIn = why;
      const box = el('form', { 'data-polypal': 'sign-in' });
      box.style.cssText = 'position:fixed;left:50%;top:30%;transform:translateX(-50%);z-index:10001;' +
        'background:#090c29;border:1px solid #5acce6;border-radius:6px;padding:14px;color:#ddd;' +
        'font:14px sans-serif;width:300px';
      const title = el('div', {}, why);
      title.style.cssText = 'margin-bottom:8px';
      const field = (name, type, label) => {
        const i = el('input', { 'data-polypal': name, type, name, autocomplete: name === 'password' ? 'current-password' : 'username', placeholder: label });
        i.style.cssText = 'display:block;width:100%;box-sizing:border-box;margin:4px 0;padding:5px;background:#111;' +
          'color:#fff;border:1px solid #555';
        return i;
      };
      const user = field('username', 'text', 'user name');
      const pass = field('password', 'password', 'password');
      const go = el('button', { 'data-polypal': 'sign-in-button', type: 'submit' }, 'Sign in');
      const msg = el('div', { 'data-polypal': 'sign-in-message' });
      msg.style.cssText = 'color:#f88;margin-top:6px';
      [title, user, pass, go, msg].forEach(x => box.appendChild(x));
      box.onsubmit = async ev => {
        ev.preventDefault();
        msg.textContent = '';
        let r, d = {};
        try {
          r = await plainFetch('/auth/token', {
            method: 'POST', credentials: 'same-origin',
            headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams({ username: user.value, password: pass.value, grant_type: 'password' }),
          });
          d = await r.json().catch(() => ({}));
        } catch (e) {
          msg.textContent = 'Not signed in: ' + e.message;
          return;
        }
        if (!r.ok || !d.access_token) {
          msg.textContent = 'Not signed in: ' + (d.detail || r.status);
          return;
        }
        keep(d);
        pass.value = '';
        box.remove();
        state.signIn = null;
        signingIn = null;
        log('signed in as ' + user.value);
        resolve();
      };
      document.body.appendChild(box);
      user.focus();
    });
    return signingIn;
  }

  // fetch, and after a 401 (no token, or it expired) sign in and send it once more
  async function authedFetch(path, init) {
    const sent = token();
    let r = await fetch(path, init);
    if (r.status === 401 && (await authEnabled())) {
      if (token() === sent) { // (renewed meanwhile: the new token is kept and the request sent again with it)
        sessionStorage.removeItem(TOKEN);
        if (!(await renew())) await signIn('Your sign-in has ended: sign in again to go on (nothing is lost).');
      }
      r = await fetch(path, init);
    }
    return r;
  }

  async function api(method, path, body, headers) {
    const r = await authedFetch(path, { method, body, headers, credentials: 'same-origin' });
    const text = await r.text();
    let data = text;
    try {
      data = JSON.parse(text);
    } catch (e) {
      /* not JSON */
    }
    if (!r.ok) {
      const d = data && data.detail !== undefined ? data.detail : text;
      const err = new Error(r.status + ': ' + (typeof d === 'string' ? d : JSON.stringify(d)).slice(0, 400));
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (text) e.textContent = text;
    return e;
  }

  function nextUrl() {
    return BASE + '?strategy=' + encodeURIComponent(strategy());
  }

  // ---------------------------------------------------------------- the start page (/annotate/)
  async function startPage() {
    const status = document.getElementById('polypal-status');
    const actions = document.getElementById('polypal-actions');
    const say = t => {
      status.textContent = t;
      log(t);
    };
    const cid = clientId();
    // the viewer's own reads cannot stop to sign in: open it with a token good for a while
    if ((await authEnabled()) && tokenSecondsLeft() < 120 && !((await renew()) && tokenSecondsLeft() > 30)) {
      say('Sign in to annotate.');
      await signIn(token() ? 'Your sign-in ends soon: sign in again.' : 'Sign in to annotate (polyp-al).');
    }
    say(`Asking polyp-al (strategy ${strategy()}) for the next frame for this browser (client ${cid})...`);
    let r;
    try {
      r = await api('POST', '/activelearning/' + encodeURIComponent(strategy()),
        JSON.stringify({ client_id: cid }), { 'Content-Type': 'application/json' });
    } catch (e) {
      state.error = e.message;
      say('Could not get the next frame: ' + e.message);
      signOutButton(actions);
      return;
    }
    if (!r || !r.id) {
      state.phase = 'nothing-left';
      say('Nothing left to annotate: every frame has a label (or is leased to another annotator). ' +
        'Train the model, or come back later.');
      const b = el('button', { 'data-polypal': 'train' }, 'Train model');
      b.onclick = () => startTraining(t => (status.textContent = t));
      actions.appendChild(b);
      signOutButton(actions);
      return;
    }
    if (!r.StudyInstanceUID) {
      state.error = 'no StudyInstanceUID';
      say(`polyp-al served frame ${r.id}, but not from a DICOMweb server: OHIF can only show frames stored ` +
        'in one. Start polyp-al with --studies http://127.0.0.1:8042/dicom-web (README "Annotating in OHIF").');
      return;
    }
    sessionStorage.setItem('polypal.frame.' + r.id, JSON.stringify(r));
    state.phase = 'redirect';
    location.replace(BASE + 'segmentation?StudyInstanceUIDs=' + encodeURIComponent(r.StudyInstanceUID) +
      '&polypal_image=' + encodeURIComponent(r.id) + '&strategy=' + encodeURIComponent(strategy()));
  }

  // ---------------------------------------------------------------- training from the browser
  let trainPoll = null;

  function describeTraining(st) {
    if (!st || !st.status) return 'No training yet.';
    if (st.status === 'RUNNING' && st.finishing) {
      return st.result === 'DONE' ? `Model #${st.model_number} trained; scoring the frames with it...`
        : `Training ${String(st.result).toLowerCase()}${st.error ? ': ' + st.error : ''}; finishing...`;
    }
    if (st.status === 'RUNNING') {
      const eta = st.eta_s != null ? `, about ${Math.round(st.eta_s)} s left` : '';
      return `Training model #${st.model_number} on ${st.labeled} label${st.labeled === 1 ? '' : 's'}: step ${st.step || 0}/${st.total_steps || '?'}` +
        (st.loss != null ? `, loss ${st.loss}` : '') + eta;
    }
    if (st.status === 'DONE') {
      return `Model #${st.model_number} trained on ${st.train_frames} frame${st.train_frames === 1 ? '' : 's'} ` +
        `(+${st.val_frames} validation) ` +
        `in ${st.seconds} s, finished ${String(st.finished_at || '').slice(11, 19)}.`;
    }
    return `Training ${st.status}${st.note ? ': ' + st.note : ''}`;
  }

  // the training this page asked for: done once /info shows a model number past the one before the request
  async function trainStats() {
    const info = await api('GET', '/info/');
    return (info.train_stats || {})[MODEL] || {};
  }

  async function pollTraining(show) {
    try {
      const st = await trainStats();
      state.train = st;
      const waiting = state.trainBefore !== undefined && st.status !== 'RUNNING' &&
        !((st.model_number || 0) > state.trainBefore);
      show(waiting ? 'Training requested: waiting for it to start...' : describeTraining(st));
      if (trainPoll && !waiting && st.status !== 'RUNNING') {
        clearInterval(trainPoll);
        trainPoll = null;
        state.trainBefore = undefined;
      }
    } catch (e) {
      show('Training status unavailable: ' + e.message);
    }
  }

  async function startTraining(show) {
    try {
      const before = await trainStats();
      await api('POST', '/train/' + MODEL, '{}', { 'Content-Type': 'application/json' });
      state.trainBefore = before.status === 'RUNNING' ? (before.model_number || 1) - 1 : before.model_number || 0;
      show('Training requested: waiting for it to start...');
    } catch (e) {
      show('Could not start training: ' + e.message);
      if (e.status !== 429) return; // 429: one is already running: show its progress
    }
    if (!trainPoll) trainPoll = setInterval(() => pollTraining(show), 1500);
  }

  // ---------------------------------------------------------------- the viewer page
  const imageId = q.get('polypal_image');
  let bar, statusLine, trainLine;

  function say(t) {
    if (statusLine) statusLine.textContent = t;
    log(t);
  }

  function buildBar() {
    bar = el('div', { id: 'polypal-bar' });
    bar.style.cssText = 'position:fixed;left:6px;bottom:6px;width:272px;z-index:10000;background:#090c29;' +
      'border:1px solid #5acce6;border-radius:6px;padding:8px;color:#ddd;font:13px sans-serif;line-height:1.35';
    const frame = JSON.parse(sessionStorage.getItem('polypal.frame.' + imageId) || '{}');
    state.frame = frame;
    const title = el('div', {}, 'polyp-al');
    title.style.cssText = 'font-weight:bold;color:#5acce6;margin-bottom:4px';
    const what = el('div', { 'data-polypal': 'frame' });
    what.textContent = (frame.al_strategy ? `${frame.al_strategy}` : strategy()) +
      (frame.position != null ? `, frame ${frame.position + 1}/${frame.batch_size} of cycle ${frame.cycle}` : '') +
      (frame.picked_by ? ` (${frame.picked_by})` : '') + (frame.note ? `. ${frame.note}` : '');
    const help = el('div', {}, 'Paint the polyp with the Brush (Label map tools), fix it with the Eraser, then Save.');
    help.style.cssText = 'color:#999;margin:4px 0';
    const buttons = el('div');
    buttons.style.cssText = 'display:flex;gap:6px;margin:6px 0';
    const mk = (key, label, fn) => {
      const b = el('button', { 'data-polypal': key }, label);
      b.style.cssText = 'flex:1;background:#1b2553;color:#fff;border:1px solid #5acce6;border-radius:4px;' +
        'padding:5px 2px;cursor:pointer;font-size:13px';
      b.onclick = fn;
      buttons.appendChild(b);
      return b;
    };
    mk('save', 'Save label', () => save());
    mk('next', 'Next frame', () => next());
    mk('train', 'Train', () => startTraining(t => (trainLine.textContent = t)));
    if (token()) mk('sign-out', 'Sign out', () => signOut());
    statusLine = el('div', { 'data-polypal': 'status' }, 'Loading the frame...');
    trainLine = el('div', { 'data-polypal': 'training' }, '');
    trainLine.style.cssText = 'color:#aaa;margin-top:4px';
    [title, what, help, buttons, statusLine, trainLine].forEach(x => bar.appendChild(x));
    document.body.appendChild(bar);
    pollTraining(t => (trainLine.textContent = t));
  }

  function sleep(ms) {
    return new Promise(r => setTimeout(r, ms));
  }

  async function waitFor(fn, what, timeoutMs) {
    const t0 = Date.now();
    for (;;) {
      let v = null;
      try {
        v = fn();
      } catch (e) {
        v = null;
      }
      if (v) return v;
      if (Date.now() - t0 > timeoutMs) throw new Error('timed out waiting for ' + what);
      await sleep(200);
    }
  }

  function frameViewport() {
    const S = window.services;
    const vs = S.cornerstoneViewportService;
    for (const vid of vs.getViewportIds()) {
      const vp = vs.getCornerstoneViewport(vid);
      if (vp && vp.getCurrentImageId && vp.getCurrentImageId() &&
        vp.getCurrentImageId().includes('/series/' + imageId + '/')) {
        return { viewportId: vid, viewport: vp };
      }
    }
    return null;
  }

  function labelmapImage() {
    const ids = window.cornerstoneTools.segmentation.getLabelmapImageIds(state.segmentationId);
    return window.cornerstone.cache.getImage(ids[0]);
  }

  function labelmapData(img) {
    return img.voxelManager ? img.voxelManager.getScalarData() : img.getPixelData();
  }

  function labelmapChanged() {
    window.cornerstoneTools.segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(
      state.segmentationId);
  }

  async function loadPrediction(img) {
    const t0 = performance.now();
    let blob;
    try {
      const r = await authedFetch(`/infer/${MODEL}?image=${encodeURIComponent(imageId)}&output=image`,
        { method: 'POST', credentials: 'same-origin' });
      if (r.status === 409) return 'No model yet: nothing predicted, paint the polyp from scratch.';
      if (!r.ok) return `The model's prediction could not be loaded (${r.status}): paint from scratch.`;
      blob = await r.blob();
    } catch (e) {
      return "The model's prediction could not be loaded: " + e.message;
    }
    const bmp = await createImageBitmap(blob, { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
    if (bmp.width !== img.columns || bmp.height !== img.rows) {
      return `The prediction is ${bmp.width}x${bmp.height}, the frame ${img.columns}x${img.rows}: not loaded.`;
    }
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = c.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bmp, 0, 0);
    const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
    const data = labelmapData(img);
    let n = 0;
    for (let i = 0; i < data.length; i++) {
      const v = px[4 * i] > 0 ? 1 : 0; // the label PNG: polyp = 1, grey
      data[i] = v;
      n += v;
    }
    if (img.voxelManager && img.voxelManager.setScalarData) img.voxelManager.setScalarData(data);
    labelmapChanged();
    state.predictionPixels = n;
    log(`prediction loaded in ${Math.round(performance.now() - t0)} ms: ${n} polyp pixels`);
    return n ? `The model's prediction is loaded (${n} polyp pixels): correct it, then Save.`
      : 'The model predicts no polyp here: paint it if there is one, then Save.';
  }

  async function viewerPage() {
    buildBar();
    try {
      await waitFor(() => window.services && window.cornerstoneTools && frameViewport(), 'the frame', 120000);
      const { viewportId } = frameViewport();
      const S = window.services;
      const ds = await waitFor(() => S.displaySetService.getActiveDisplaySets()
        .find(d => d.SeriesInstanceUID === imageId), 'the display set', 30000);
      state.segmentationId = await S.segmentationService.createLabelmapForDisplaySet(ds, {
        label: 'polyp-al label', segments: { 1: { label: 'polyp', active: true } },
      });
      await S.segmentationService.addSegmentationRepresentation(viewportId, {
        segmentationId: state.segmentationId,
      });
      const img = await waitFor(() => labelmapImage(), 'the labelmap', 30000);
      state.rows = img.rows;
      state.columns = img.columns;
      const msg = await loadPrediction(img);
      const modified = window.cornerstoneTools.Enums.Events.SEGMENTATION_DATA_MODIFIED;
      window.cornerstone.eventTarget.addEventListener(modified, () => {
        if (state.phase === 'ready') {
          state.dirty = true;
          state.confirmSignOut = false; // new changes: Sign out asks again
        }
      });
      await sleep(50);
      state.dirty = false;
      state.phase = 'ready';
      say(msg);
    } catch (e) {
      state.phase = 'error';
      state.error = e.message;
      say('Could not set up the labelmap: ' + e.message);
    }
  }

  async function maskPng() {
    const img = labelmapImage();
    const data = labelmapData(img);
    const c = new OffscreenCanvas(img.columns, img.rows);
    const ctx = c.getContext('2d');
    const out = ctx.createImageData(img.columns, img.rows);
    let n = 0;
    for (let i = 0; i < data.length; i++) {
      const v = data[i] > 0 ? 255 : 0; // row-major: index = row * columns + column, as the frame's pixels
      out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = v;
      out.data[4 * i + 3] = 255;
      n += v ? 1 : 0;
    }
    ctx.putImageData(out, 0, 0);
    return { blob: await c.convertToBlob({ type: 'image/png' }), pixels: n };
  }

  async function save() {
    if (state.phase !== 'ready') return say('Not ready yet: ' + (state.error || state.phase));
    state.phase = 'saving';
    const t0 = performance.now();
    try {
      const { blob, pixels } = await maskPng();
      const form = new FormData();
      form.append('params', '{}');
      form.append('label', blob, imageId + '.png');
      const r = await api('PUT', `/datastore/label?image=${encodeURIComponent(imageId)}&tag=final`, form);
      const ms = Math.round(performance.now() - t0);
      state.saved = { pixels, ms, answer: r };
      state.dirty = false;
      const dice = r && r.model_dice != null ? `; the model's Dice on it: ${Number(r.model_dice).toFixed(2)}` : '';
      say(`Saved: ${pixels} polyp pixels, in ${ms} ms${dice}. Next frame when ready.`);
    } catch (e) {
      state.saveError = e.message;
      say('Not saved: ' + e.message);
    } finally {
      state.phase = 'ready';
    }
  }

  function next() {
    if (state.dirty && !state.confirmNext) {
      state.confirmNext = true;
      return say('Unsaved changes: Save first, or press Next frame again to leave them.');
    }
    location.href = nextUrl();
  }

  // the start page's screens that stay (nothing left, an error): a signed-in annotator can sign out there too
  function signOutButton(where) {
    if (!token()) return;
    const b = el('button', { 'data-polypal': 'sign-out' }, 'Sign out');
    b.onclick = () => signOut();
    where.appendChild(b);
  }

  // a shared workstation: the realm ends this sign-in (its refresh token renews nothing after), the tab forgets
  // the tokens, and the start page asks the next annotator to sign in
  async function signOut() {
    if (state.phase === 'saving') return say('Saving: sign out once it is saved.');
    if (state.dirty && !state.confirmSignOut) {
      state.confirmSignOut = true;
      return say('Unsaved changes: Save first, or press Sign out again to leave them.');
    }
    if (renewing) await renewing; // the newest refresh token is the one the realm ends
    const rt = sessionStorage.getItem(REFRESH);
    const t = token(); // with it, the server gives the frame this user held back to the pool
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(REFRESH);
    if (rt) {
      try {
        const headers = { 'Content-Type': 'application/x-www-form-urlencoded' };
        if (t) headers.Authorization = 'Bearer ' + t;
        const r = await plainFetch('/auth/logout', {
          method: 'POST', credentials: 'same-origin', headers,
          body: new URLSearchParams({ refresh_token: rt }),
        });
        state.signedOut = r.ok ? 'ended' : 'not ended: ' + r.status;
      } catch (e) {
        state.signedOut = 'not ended: ' + e.message;
      }
    } else {
      state.signedOut = 'forgotten';
    }
    log('signed out (' + state.signedOut + ')');
    location.href = nextUrl();
  }

  // ---------------------------------------------------------------- dispatch
  function main() {
    const p = location.pathname;
    if (p === BASE || p === BASE + 'start.html') return startPage();
    if (imageId && p.startsWith(BASE + 'segmentation')) return viewerPage();
    state.phase = 'plain-viewer';
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main);
  else main();
})();
