// The collaborative editor: a Yjs document on /v1/yjs/{doc} (stock y-websocket provider),
// edited in CodeMirror 6 through y-codemirror.next; remote cursors and names come from
// awareness. The history slider loads the document as it was at a log position
// (GET /v1/docs/{doc}?at=POSITION&text=content) into a read-only view.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { yCollab } from 'y-codemirror.next'
import { api, colorOf, el, page } from './common.js'

const TEXT = 'content' // the Y.Text root the editor binds (GET /v1/docs/{doc}?text=content renders it)

function start (main, token, claims) {
  const params = new URLSearchParams(location.search)
  const docName = params.get('doc') || 'welcome'
  const badge = el('span', { id: 'status', class: 'badge offline' }, 'offline')
  const peers = el('span', { id: 'peers', class: 'peers' })
  // (max = value: the thumb at the right end, "live", until the stops are loaded)
  const slider = el('input', { id: 'history', type: 'range', min: 0, max: 1, value: 1, disabled: true })
  const sliderLabel = el('span', { id: 'history-label' }, 'live')
  const past = el('pre', { id: 'history-text', class: 'past', hidden: true })
  const editorHost = el('div', { id: 'editor', class: 'editor' })
  main.replaceChildren(
    el('div', { class: 'toolbar' }, el('strong', {}, `doc/${docName}`), badge, peers),
    editorHost,
    el('div', { class: 'history' }, el('label', { for: 'history' }, 'History '), slider, sliderLabel,
      el('button', { id: 'history-refresh', onclick: () => loadPositions() }, '↻')),
    past)

  const ydoc = new Y.Doc()
  const ytext = ydoc.getText(TEXT)
  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/yjs`
  // disableBc: tabs of this browser sync through the server only (as separate devices would)
  const provider = new WebsocketProvider(wsBase, docName, ydoc, { params: { token }, disableBc: true })
  const me = claims.sub
  provider.awareness.setLocalStateField('user', { name: me, color: colorOf(me), colorLight: colorOf(me) + '33' })

  const view = new EditorView({
    parent: editorHost,
    state: EditorState.create({ doc: ytext.toString(), extensions: [basicSetup, yCollab(ytext, provider.awareness)] })
  })

  const setBadge = (online) => {
    badge.textContent = online ? 'online' : 'offline'
    badge.className = `badge ${online ? 'online' : 'offline'}`
  }
  provider.on('status', ({ status }) => setBadge(status === 'connected'))
  // The browser knows it is offline before the socket does: stop reconnecting until it is back.
  window.addEventListener('offline', () => { provider.disconnect(); setBadge(false) })
  window.addEventListener('online', () => provider.connect())

  const showPeers = () => {
    const names = [...provider.awareness.getStates().entries()]
      .filter(([id, s]) => id !== provider.awareness.clientID && s.user).map(([, s]) => s.user.name)
    peers.textContent = names.length ? `also here: ${[...new Set(names)].join(', ')}` : 'alone here'
  }
  provider.awareness.on('change', showPeers)
  showPeers()

  // -- history: the positions of the document's events; the slider's last stop is "live"
  let positions = []
  async function loadPositions () {
    const found = []
    let from = 1
    for (let page = 0; page < 50; page++) { // at most 50,000 stops
      const r = await api(token, `/v1/streams/doc/${encodeURIComponent(docName)}?from_version=${from}&limit=1000`)
      found.push(...r.events.map((e) => e.position))
      if (!r.more) break
      from = r.next_version
    }
    const wasLive = Number(slider.value) >= Number(slider.max)
    positions = found
    slider.max = String(Math.max(1, positions.length))
    slider.disabled = positions.length === 0
    if (wasLive) { // (someone browsing the past stays where they are)
      slider.value = slider.max
      showLive()
    }
  }
  function showLive () {
    sliderLabel.textContent = 'live'
    past.hidden = true
    editorHost.classList.remove('dimmed')
  }
  slider.addEventListener('input', async () => {
    const i = Number(slider.value)
    if (i >= positions.length) { showLive(); return }
    const at = positions[i - 1] ?? 0
    sliderLabel.textContent = `at position ${at} (${i}/${positions.length})`
    if (i === 0) { past.textContent = ''; past.hidden = false; return }
    const r = await api(token, `/v1/docs/${encodeURIComponent(docName)}?at=${at}&text=${TEXT}`)
    if (Number(slider.value) !== i) return // moved on meanwhile
    past.textContent = r.text[TEXT]
    past.hidden = false
    editorHost.classList.add('dimmed')
  })
  // The stops are reloaded when the slider is touched after the document changed.
  let stale = true
  ydoc.on('update', () => { stale = true })
  const refreshStops = () => {
    if (!stale) return
    stale = false
    loadPositions().catch((e) => { sliderLabel.textContent = e.message })
  }
  slider.addEventListener('pointerdown', refreshStops)
  slider.addEventListener('focus', refreshStops)
  provider.once('sync', refreshStops)

  // for the tests and the curious: window.syncline.editor
  window.syncline = { editor: { ydoc, ytext, provider, view, loadPositions, stops: () => positions.length } }
}

page('Editor', start)
