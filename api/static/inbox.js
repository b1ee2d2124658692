// The vmpipe inbox page: sign in with an API token, search voicemails, play one with its
// transcript. Plain JavaScript under a strict Content-Security-Policy: no inline code, no eval,
// and every piece of API data is put in the page with textContent (transcripts are untrusted).
(function () {
  'use strict';

  const TOKEN_KEY = 'vmpipe.token';
  const PAGE_SIZE = 50;

  const $ = (id) => document.getElementById(id);
  const el = {
    error: $('error'),
    signOut: $('sign-out'),
    viewSignin: $('view-signin'),
    viewList: $('view-list'),
    viewDetail: $('view-detail'),
    signinForm: $('signin-form'),
    tokenInput: $('token-input'),
    signIn: $('sign-in'),
    searchForm: $('search-form'),
    searchInput: $('search-input'),
    searchButton: $('search-button'),
    filters: $('filters'),
    filterCount: $('filter-count'),
    caller: $('f-caller'),
    mailbox: $('f-mailbox'),
    folder: $('f-folder'),
    transcriptFilter: $('f-transcript'),
    since: $('f-since'),
    until: $('f-until'),
    reset: $('reset'),
    status: $('status'),
    results: $('results'),
    empty: $('empty'),
    loadMore: $('load-more'),
    back: $('back'),
    vmCaller: $('vm-caller'),
    vmNumber: $('vm-number'),
    vmTime: $('vm-time'),
    vmMailbox: $('vm-mailbox'),
    vmDuration: $('vm-duration'),
    vmFolder: $('vm-folder'),
    player: $('player'),
    audioStatus: $('audio-status'),
    transcriptLang: $('transcript-lang'),
    transcriptNotes: $('transcript-notes'),
    segments: $('segments'),
    transcriptText: $('transcript-text'),
    transcriptNone: $('transcript-none'),
    vmInfo: $('vm-info'),
    vmMetadata: $('vm-metadata'),
  };

  const state = {
    params: null,        // URLSearchParams of the current search (without cursor)
    cursor: null,        // next_cursor of the last page
    count: 0,            // results shown
    listSeq: 0,          // to ignore answers to superseded list requests
    detailSeq: 0,
    detailId: null,
    audioUrl: null,      // the current blob: URL
    audioAbort: null,
    segments: [],        // [{start, end, node}] of the open voicemail
    activeSegment: -1,
    listScroll: 0,
    pushed: false,       // whether opening the view pushed a history entry
    lastOpened: null,    // id of the voicemail opened last, to focus it again on Back
  };

  // ---- Storage (sessionStorage may throw when disabled) ----------------------------------

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }
  function setToken(token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* tab-only fallback: none */ }
  }
  function clearToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing stored */ }
  }

  // ---- API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, opts) {
    const token = getToken();
    let res;
    try {
      res = await fetch(path, {
        headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
        cache: 'no-store',
        signal: opts && opts.signal,
      });
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', 'The server could not be reached. Check your connection and try again.');
    }
    if (!res.ok) throw await errorFrom(res);
    return opts && opts.blob ? res.blob() : res.json();
  }

  async function errorFrom(res) {
    let code = 'http_' + res.status;
    let message = 'The request failed (HTTP ' + res.status + ').';
    try {
      const body = await res.json();
      if (body && typeof body.message === 'string') message = body.message;
      if (body && typeof body.error === 'string') code = body.error;
    } catch (_) { /* not JSON: keep the generic message */ }
    return new ApiError(res.status, code, message);
  }

  // Handles an error of any request: 401 signs out, others are shown.
  function handleError(e) {
    if (e && e.name === 'AbortError') return;
    if (e instanceof ApiError && e.status === 401) {
      signOut(e.message || 'The token is unknown or revoked.');
      return;
    }
    showError(e instanceof ApiError ? e.message : 'Something went wrong: ' + String(e && e.message || e));
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }
  function clearError() {
    el.error.textContent = '';
    el.error.hidden = true;
  }

  // ---- Formatting -----------------------------------------------------------------------

  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const dateFormatLong = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

  function formatTime(iso, long) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return (long ? dateFormatLong : dateFormat).format(d);
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '—';
    const total = Math.max(0, Math.round(Number(ms) / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, '0');
    return h > 0 ? h + ':' + String(m).padStart(2, '0') + ':' + s : m + ':' + s;
  }

  function formatClock(ms) {
    const total = Math.max(0, Math.floor(Number(ms) / 1000));
    return Math.floor(total / 60) + ':' + String(total % 60).padStart(2, '0');
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return '—';
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KB';
    return (n / 1024 / 1024).toFixed(1) + ' MB';
  }

  function callerName(item) {
    return (item.caller_id_name && item.caller_id_name.trim()) || item.caller_id_number || 'Unknown caller';
  }

  function folderLabel(folder) {
    if (!folder) return '—';
    return folder.charAt(0).toUpperCase() + folder.slice(1);
  }

  // A `yyyy-mm-dd` date input as RFC 3339 at local midnight, `days` later.
  function localDateToRfc3339(value, days) {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value || '');
    if (!m) return '';
    const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]) + (days || 0), 0, 0, 0);
    const pad = (n) => String(n).padStart(2, '0');
    const off = -d.getTimezoneOffset();
    const sign = off >= 0 ? '+' : '-';
    const abs = Math.abs(off);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) +
      'T00:00:00' + sign + pad(Math.floor(abs / 60)) + ':' + pad(abs % 60);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // ---- Views ----------------------------------------------------------------------------

  function showView(name) {
    el.viewSignin.hidden = name !== 'signin';
    el.viewList.hidden = name !== 'list';
    el.viewDetail.hidden = name !== 'detail';
    el.signOut.hidden = name === 'signin';
  }

  function signOut(message) {
    clearToken();
    stopAudio();
    state.listSeq++;
    state.detailSeq++;
    el.results.replaceChildren();
    el.empty.hidden = true;
    el.loadMore.hidden = true;
    el.status.textContent = '';
    state.params = null;
    state.cursor = null;
    setBusy(false, false);
    el.loadMore.textContent = 'Load more';
    if (state.pushed) { state.pushed = false; history.replaceState(null, ''); }
    showView('signin');
    if (message) showError(message); else clearError();
    el.tokenInput.value = '';
    el.tokenInput.focus();
  }

  // ---- List -----------------------------------------------------------------------------

  function searchParams() {
    const p = new URLSearchParams();
    const add = (key, value) => { value = (value || '').trim(); if (value) p.set(key, value); };
    add('q', el.searchInput.value);
    add('caller', el.caller.value);
    add('mailbox_number', el.mailbox.value);
    add('folder', el.folder.value);
    add('has_transcript', el.transcriptFilter.value);
    add('since', localDateToRfc3339(el.since.value, 0));
    add('until', localDateToRfc3339(el.until.value, 1)); // through the end of that day
    p.set('limit', String(PAGE_SIZE));
    return p;
  }

  function updateFilterCount() {
    const n = [el.caller, el.mailbox, el.folder, el.transcriptFilter, el.since, el.until]
      .filter((i) => i.value.trim() !== '').length;
    el.filterCount.hidden = n === 0;
    el.filterCount.textContent = n ? String(n) : '';
  }

  async function runSearch() {
    const params = searchParams();
    if (el.since.value && el.until.value && el.since.value > el.until.value) {
      showError('The “From” date is after the “To” date.');
      return;
    }
    state.params = params;
    state.cursor = null;
    state.count = 0;
    await loadPage(false);
  }

  async function loadPage(append) {
    const seq = ++state.listSeq;
    const p = new URLSearchParams(state.params);
    if (append && state.cursor) p.set('cursor', state.cursor);
    setBusy(true, append);
    try {
      const data = await api('/api/v1/voicemails?' + p.toString());
      if (seq !== state.listSeq) return false;
      clearError();
      if (el.viewSignin.hidden === false) showView('list');
      renderPage(data, append);
      return true;
    } catch (e) {
      if (seq !== state.listSeq) return false;
      handleError(e);
      return false;
    } finally {
      if (seq === state.listSeq) setBusy(false, append);
    }
  }

  function setBusy(busy, append) {
    el.results.setAttribute('aria-busy', busy ? 'true' : 'false');
    el.searchButton.disabled = busy;
    el.signIn.disabled = busy;
    el.loadMore.disabled = busy;
    if (busy && !append) el.status.textContent = 'Searching…';
    if (append) el.loadMore.textContent = busy ? 'Loading…' : 'Load more';
  }

  function renderPage(data, append) {
    const items = Array.isArray(data && data.items) ? data.items : [];
    if (!append) el.results.replaceChildren();
    const frag = document.createDocumentFragment();
    for (const item of items) frag.appendChild(renderItem(item));
    el.results.appendChild(frag);
    state.count = (append ? state.count : 0) + items.length;
    state.cursor = data && data.next_cursor ? data.next_cursor : null;
    el.loadMore.hidden = !state.cursor;
    el.empty.hidden = state.count !== 0;
    if (state.count === 0) {
      el.status.textContent = '';
    } else {
      el.status.textContent = state.count + (state.count === 1 ? ' voicemail' : ' voicemails') +
        (state.cursor ? ' shown, more available' : '');
    }
  }

  function renderItem(item) {
    const li = make('li');
    const btn = make('button', 'result');
    btn.type = 'button';
    btn.dataset.testid = 'result';
    btn.dataset.id = item.id;

    const top = make('span', 'result-top');
    const who = make('span', 'result-who');
    who.appendChild(make('span', 'result-name', callerName(item)));
    if (item.caller_id_number && item.caller_id_number !== callerName(item)) {
      who.appendChild(make('span', 'result-number', item.caller_id_number));
    }
    top.appendChild(who);
    const time = make('time', 'result-time', formatTime(item.time));
    if (item.time) time.dateTime = item.time;
    top.appendChild(time);
    btn.appendChild(top);

    const meta = make('span', 'result-meta');
    meta.appendChild(make('span', 'chip', 'Mailbox ' + (item.to_user || '—')));
    meta.appendChild(make('span', 'chip', formatDuration(item.duration_ms)));
    if (item.folder) {
      meta.appendChild(make('span', 'chip chip-' + String(item.folder).replace(/[^a-z]/gi, ''), folderLabel(item.folder)));
    }
    btn.appendChild(meta);

    const snippet = make('span', 'snippet');
    snippet.dataset.testid = 'snippet';
    const parts = item.transcript && Array.isArray(item.transcript.snippet) ? item.transcript.snippet : null;
    if (parts && parts.length) {
      snippet.appendChild(document.createTextNode('“'));
      for (const part of parts) {
        const text = String(part && part.text || '');
        if (part && part.match) snippet.appendChild(make('mark', null, text));
        else snippet.appendChild(document.createTextNode(text));
      }
      snippet.appendChild(document.createTextNode('”'));
    } else {
      snippet.classList.add('snippet-none');
      snippet.textContent = item.has_transcript ? 'Transcript available' : 'No transcript';
    }
    btn.appendChild(snippet);

    btn.addEventListener('click', () => openVoicemail(item, true));
    li.appendChild(btn);
    return li;
  }

  // ---- One voicemail --------------------------------------------------------------------

  function openVoicemail(item, push) {
    state.listScroll = window.scrollY;
    clearError();
    state.detailId = item.id;
    state.lastOpened = item.id;
    renderHeader(item);
    resetTranscript();
    el.transcriptNotes.replaceChildren(make('p', 'muted', 'Loading transcript…'));
    showView('detail');
    window.scrollTo(0, 0);
    el.back.focus();
    if (push) {
      history.pushState({ vm: item.id }, '');
      state.pushed = true;
    }
    loadAudio(item);
    loadDetail(item.id);
  }

  function renderHeader(vm) {
    el.vmCaller.textContent = callerName(vm);
    const number = vm.caller_id_number && vm.caller_id_number !== callerName(vm) ? vm.caller_id_number : '';
    el.vmNumber.textContent = number;
    el.vmNumber.hidden = !number;
    el.vmTime.textContent = formatTime(vm.time, true);
    el.vmMailbox.textContent = vm.to_user || '—';
    el.vmDuration.textContent = formatDuration(vm.duration_ms);
    el.vmFolder.textContent = folderLabel(vm.folder);
  }

  async function loadDetail(id) {
    const seq = ++state.detailSeq;
    try {
      const vm = await api('/api/v1/voicemails/' + encodeURIComponent(id));
      if (seq !== state.detailSeq) return;
      renderHeader(vm);
      renderTranscript(vm.transcriptions);
      renderInfo(vm);
    } catch (e) {
      if (seq !== state.detailSeq) return;
      el.transcriptNotes.replaceChildren();
      handleError(e);
    }
  }

  function resetTranscript() {
    state.segments = [];
    state.activeSegment = -1;
    el.segments.replaceChildren();
    el.segments.hidden = true;
    el.transcriptText.hidden = true;
    el.transcriptText.textContent = '';
    el.transcriptNone.hidden = true;
    el.transcriptLang.hidden = true;
    el.transcriptNotes.replaceChildren();
    el.vmInfo.replaceChildren();
    el.vmMetadata.hidden = true;
    el.vmMetadata.textContent = '';
  }

  function pickTranscript(list) {
    const done = list.filter((t) => t && t.status === 'done' && (t.text || (t.segments && t.segments.length)));
    return done.find((t) => Array.isArray(t.segments) && t.segments.length) || done[0] || null;
  }

  function renderTranscript(transcriptions) {
    const list = Array.isArray(transcriptions) ? transcriptions : [];
    const chosen = pickTranscript(list);
    el.transcriptNotes.replaceChildren();

    for (const t of list) {
      if (!t || t === chosen || t.status === 'done') continue;
      const note = make('p', 'note note-' + (t.status === 'failed' ? 'failed' : 'pending'));
      const label = t.hook ? t.hook + ': ' : '';
      if (t.status === 'failed') {
        note.textContent = label + 'transcription failed' + (t.attempts ? ' after ' + t.attempts + (t.attempts === 1 ? ' attempt' : ' attempts') : '') +
          (t.error ? ' — ' + t.error : '') + '.';
      } else if (t.status === 'running') {
        note.textContent = label + 'transcription in progress…';
      } else {
        note.textContent = label + 'transcription queued' + (t.queued_at ? ' ' + formatTime(t.queued_at) : '') + '.';
      }
      el.transcriptNotes.appendChild(note);
    }

    if (!chosen) {
      el.transcriptNone.hidden = false;
      return;
    }
    if (chosen.language) {
      el.transcriptLang.textContent = chosen.language + (chosen.hook ? ' · ' + chosen.hook : '');
      el.transcriptLang.hidden = false;
    }

    const segs = Array.isArray(chosen.segments) ? chosen.segments.filter((s) => s && Number.isFinite(Number(s.start_ms))) : [];
    if (!segs.length) {
      el.transcriptText.textContent = chosen.text || '';
      el.transcriptText.hidden = false;
      return;
    }
    segs.sort((a, b) => a.start_ms - b.start_ms);
    const frag = document.createDocumentFragment();
    state.segments = segs.map((s, i) => {
      const start = Number(s.start_ms);
      const next = segs[i + 1];
      const end = Number.isFinite(Number(s.end_ms)) && Number(s.end_ms) > start
        ? Number(s.end_ms)
        : (next ? Number(next.start_ms) : Infinity);
      const li = make('li');
      const btn = make('button', 'segment');
      btn.type = 'button';
      btn.dataset.testid = 'segment';
      btn.dataset.startMs = String(start);
      btn.dataset.endMs = Number.isFinite(end) ? String(end) : '';
      btn.setAttribute('aria-label', 'Play from ' + formatClock(start) + ': ' + (s.text || ''));
      btn.appendChild(make('span', 'segment-time', formatClock(start)));
      btn.appendChild(make('span', 'segment-text', String(s.text || '').trim()));
      btn.addEventListener('click', () => seekTo(start));
      li.appendChild(btn);
      frag.appendChild(li);
      return { start, end, node: btn };
    });
    el.segments.appendChild(frag);
    el.segments.hidden = false;
    updateActiveSegment();
  }

  function renderInfo(vm) {
    const rows = [
      ['Received', formatTime(vm.received_at, true)],
      ['Recorded', formatTime(vm.recorded_at, true)],
      ['Account', vm.account_id],
      ['Mailbox ID', vm.mailbox_id],
      ['Codec', [vm.codec, vm.sample_rate ? vm.sample_rate + ' Hz' : '', vm.channels ? vm.channels + ' ch' : ''].filter(Boolean).join(' · ')],
      ['Size', formatBytes(vm.size_bytes)],
      ['Voicemail ID', vm.id],
    ];
    const frag = document.createDocumentFragment();
    for (const [k, v] of rows) {
      if (v === null || v === undefined || v === '') continue;
      const div = make('div');
      div.appendChild(make('dt', null, k));
      div.appendChild(make('dd', null, String(v)));
      frag.appendChild(div);
    }
    el.vmInfo.replaceChildren(frag);
    if (vm.metadata !== null && vm.metadata !== undefined) {
      el.vmMetadata.textContent = JSON.stringify(vm.metadata, null, 2);
      el.vmMetadata.hidden = false;
    }
  }

  // ---- Audio ----------------------------------------------------------------------------

  function stopAudio() {
    if (state.audioAbort) { state.audioAbort.abort(); state.audioAbort = null; }
    el.player.pause();
    el.player.removeAttribute('src');
    el.player.load();
    if (state.audioUrl) { URL.revokeObjectURL(state.audioUrl); state.audioUrl = null; }
  }

  async function loadAudio(item) {
    stopAudio();
    el.audioStatus.textContent = 'Loading audio…';
    const url = item.audio_url || '/api/v1/voicemails/' + encodeURIComponent(item.id) + '/audio';
    const ctrl = new AbortController();
    state.audioAbort = ctrl;
    try {
      const blob = await api(url, { blob: true, signal: ctrl.signal });
      if (state.audioAbort !== ctrl) return;
      state.audioAbort = null;
      state.audioUrl = URL.createObjectURL(blob);
      el.player.src = state.audioUrl;
      el.audioStatus.textContent = '';
    } catch (e) {
      if (state.audioAbort !== ctrl) return;
      state.audioAbort = null;
      if (e && e.name === 'AbortError') return;
      el.audioStatus.textContent = 'The audio could not be loaded.';
      handleError(e);
    }
  }

  function seekTo(ms) {
    const p = el.player;
    const go = () => {
      p.currentTime = ms / 1000;
      updateActiveSegment();
      const r = p.play();
      if (r && typeof r.catch === 'function') r.catch(() => { /* blocked autoplay: the user can press play */ });
    };
    if (p.readyState >= 1) go();
    else if (p.getAttribute('src')) p.addEventListener('loadedmetadata', go, { once: true });
  }

  function updateActiveSegment() {
    const t = el.player.currentTime * 1000;
    let idx = -1;
    for (let i = 0; i < state.segments.length; i++) {
      const s = state.segments[i];
      if (t >= s.start && t < s.end) { idx = i; break; }
      if (t >= s.start) idx = i; // in a gap or past the end: the last one started
    }
    if (idx === state.activeSegment) return;
    const old = state.segments[state.activeSegment];
    if (old) { old.node.classList.remove('active'); old.node.removeAttribute('aria-current'); }
    state.activeSegment = idx;
    const cur = state.segments[idx];
    if (cur) {
      cur.node.classList.add('active');
      cur.node.setAttribute('aria-current', 'true');
      if (!el.player.paused) scrollIntoViewIfNeeded(cur.node);
    }
  }

  function scrollIntoViewIfNeeded(node) {
    const r = node.getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) node.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  el.player.addEventListener('timeupdate', updateActiveSegment);
  el.player.addEventListener('seeked', updateActiveSegment);
  el.player.addEventListener('error', () => {
    if (el.player.getAttribute('src')) el.audioStatus.textContent = 'This browser cannot play the audio.';
  });

  // ---- Navigation -----------------------------------------------------------------------

  function backToList() {
    state.detailSeq++;
    state.detailId = null;
    stopAudio();
    resetTranscript();
    el.audioStatus.textContent = '';
    clearError();
    showView('list');
    window.scrollTo(0, state.listScroll);
    const buttons = Array.from(el.results.querySelectorAll('button.result'));
    const same = buttons.find((b) => b.dataset.id === state.lastOpened) || buttons[0];
    if (same) same.focus({ preventScroll: true });
  }

  el.back.addEventListener('click', () => {
    if (state.pushed) history.back(); // popstate does the rest
    else backToList();
  });

  window.addEventListener('popstate', () => {
    state.pushed = false;
    if (!el.viewDetail.hidden) backToList();
  });

  // ---- Wiring ---------------------------------------------------------------------------

  el.signinForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = el.tokenInput.value.trim();
    if (!token) {
      showError('Enter a token to sign in.');
      el.tokenInput.focus();
      return;
    }
    setToken(token);
    state.params = searchParams();
    state.cursor = null;
    const ok = await loadPage(false);
    if (ok) {
      el.tokenInput.value = '';
      el.searchInput.focus();
    }
  });

  el.signOut.addEventListener('click', () => signOut(''));

  el.searchForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    updateFilterCount();
    runSearch();
  });

  for (const input of [el.folder, el.transcriptFilter, el.since, el.until]) {
    input.addEventListener('change', () => { updateFilterCount(); });
  }
  for (const input of [el.caller, el.mailbox]) {
    input.addEventListener('input', updateFilterCount);
  }

  el.reset.addEventListener('click', () => {
    for (const input of [el.caller, el.mailbox, el.since, el.until]) input.value = '';
    el.folder.value = '';
    el.transcriptFilter.value = '';
    updateFilterCount();
    runSearch();
  });

  el.loadMore.addEventListener('click', () => { if (state.cursor) loadPage(true); });

  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && !el.viewDetail.hidden) el.back.click();
  });

  window.addEventListener('pagehide', () => {
    if (state.audioUrl) { URL.revokeObjectURL(state.audioUrl); state.audioUrl = null; }
  });

  // ---- Start ----------------------------------------------------------------------------

  if (window.matchMedia && window.matchMedia('(min-width: 700px)').matches) el.filters.open = true;
  if (history.state) history.replaceState(null, '');

  if (getToken()) {
    showView('list');
    state.params = searchParams();
    loadPage(false);
  } else {
    showView('signin');
    el.tokenInput.focus();
  }
})();
