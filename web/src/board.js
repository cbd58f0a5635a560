// The offline-first task board: records rec/board/<id> {title, column} through
// clientkit-js. Every edit goes to the op queue in IndexedDB first (so it survives a
// reload, offline too: the service worker keeps the page itself), is shown as pending
// until the server answers, and is sent when the connection is back (WebSocket, or
// polling when WebSockets are blocked). A title is a manual field on the server
// (SYNCLINE_RECORDS_MANUAL_FIELDS, default board.title): concurrent renames become a
// conflict, shown with both versions to choose from.
import { IndexedDbStore, SynclineClient } from '../../clientkit-js/src/index.js'
import { el, page } from './common.js'

const PREFIX = 'rec/board/'
const COLUMNS = [['todo', 'To do'], ['doing', 'Doing'], ['done', 'Done']]
// Until the server's own rules arrive (GET /v1/config/resolution, when it publishes them).
const CONFIG = { collections: { board: { fields: { title: 'manual' } } } }

function newId () {
  const bytes = crypto.getRandomValues(new Uint8Array(6))
  return 't' + [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')
}

async function start (main, token, claims) {
  const badge = el('span', { id: 'status', class: 'badge offline' }, 'offline')
  const transport = el('span', { id: 'transport', class: 'hint' })
  const pendingCount = el('span', { id: 'pending-count', class: 'hint' })
  const offlineToggle = el('button', { id: 'work-offline' }, 'Work offline')
  const presence = el('span', { id: 'presence', class: 'presence' })
  const input = el('input', { id: 'new-title', placeholder: 'A new task…', size: 40 })
  const form = el('form', { id: 'new-task', onsubmit: (e) => { e.preventDefault(); add() } },
    input, el('button', { type: 'submit' }, 'Add'))
  const conflictsBox = el('div', { id: 'conflicts' })
  const columns = Object.fromEntries(COLUMNS.map(([key, label]) =>
    [key, el('section', { class: 'column', 'data-column': key }, el('h3', {}, label), el('div', { class: 'tasks' }))]))
  main.replaceChildren(
    el('div', { class: 'toolbar' }, el('strong', {}, 'Task board'), badge, transport, pendingCount, offlineToggle, presence),
    form, conflictsBox, el('div', { class: 'board' }, ...Object.values(columns)))

  // one queue per tenant and user in this browser profile
  const store = new IndexedDbStore(`syncline-board:${claims.tenant}:${claims.sub}`)
  const client = await SynclineClient.open({ url: '', token, user: claims.sub, store, config: CONFIG, prefixes: [PREFIX] })

  async function add () {
    const title = input.value.trim()
    if (!title) return
    input.value = ''
    await client.set(PREFIX + newId(), { title, column: 'todo', created: Date.now() })
  }
  const move = (stream, column) => client.set(stream, { column })
  function rename (stream, card, current) {
    const box = el('input', { class: 'rename-input', value: current })
    const done = el('form', {
      class: 'rename-form',
      onsubmit: (e) => {
        e.preventDefault()
        const title = box.value.trim()
        if (title && title !== current) client.set(stream, { title })
        else render()
      }
    }, box, el('button', { type: 'submit' }, 'Save'))
    card.querySelector('.title').replaceWith(done)
    box.focus()
    box.select()
  }

  function taskCard (stream) {
    const values = client.get(stream)
    const pending = client.pendingOps(stream).length
    const conflicted = client.conflicts(stream).length > 0
    const at = COLUMNS.findIndex(([k]) => k === values.column)
    const card = el('article', { class: `task${pending ? ' pending' : ''}`, 'data-id': stream.slice(PREFIX.length) },
      el('div', { class: 'title' }, values.title ?? ''),
      el('div', { class: 'meta' },
        pending ? el('span', { class: 'pending-tag' }, `pending (${pending})`) : el('span', { class: 'saved' }, 'saved'),
        conflicted ? el('span', { class: 'conflict-tag' }, 'conflict') : ''),
      el('div', { class: 'actions' },
        el('button', { class: 'move-left', disabled: at <= 0, onclick: () => move(stream, COLUMNS[at - 1][0]) }, '←'),
        el('button', { class: 'move-right', disabled: at >= COLUMNS.length - 1, onclick: () => move(stream, COLUMNS[at + 1][0]) }, '→'),
        el('button', { class: 'rename', onclick: () => rename(stream, card, values.title ?? '') }, 'Rename')))
    return card
  }

  function conflictBox (c) {
    const title = client.get(c.stream).title
    return el('div', { class: 'conflict', 'data-conflict': c.id, 'data-id': c.stream.slice(PREFIX.length) },
      el('strong', {}, `Two versions of the ${c.field} of “${title ?? c.stream}”`),
      el('p', { class: 'hint' }, 'They were written at the same time (one of them offline). Keep one:'),
      el('div', { class: 'choices' }, ...c.versions.map((v) =>
        el('button', { class: 'choose', 'data-value': String(v.value), onclick: () => client.resolve(c.id, v.stamp.op) },
          `Keep “${v.deleted ? '(deleted)' : v.value}” (${v.stamp.user})`))))
  }

  function render () {
    const streams = client.streams(PREFIX).filter((s) => Object.keys(client.get(s)).length)
    streams.sort((a, b) => (client.get(a).created ?? 0) - (client.get(b).created ?? 0) || (a < b ? -1 : 1))
    for (const [key] of COLUMNS) columns[key].querySelector('.tasks').replaceChildren()
    for (const s of streams) {
      const col = columns[client.get(s).column] || columns.todo
      col.querySelector('.tasks').append(taskCard(s))
    }
    conflictsBox.replaceChildren(...client.conflicts().filter((c) => c.stream.startsWith(PREFIX)).map(conflictBox))
    pendingCount.textContent = client.pending ? `${client.pending} pending` : 'all saved'
  }

  const showStatus = () => {
    const online = client.state === 'online'
    badge.textContent = online ? 'online' : client.state
    badge.className = `badge ${online ? 'online' : 'offline'}`
  }
  client.on('status', showStatus)
  client.on('transport', ({ kind }) => { transport.textContent = kind === 'none' ? '' : `via ${kind}` })
  client.on('change', render)
  client.on('opResult', render)
  client.on('conflict', render)
  client.on('snapshot', render)
  // who else has the board open (room presence: over the WebSocket only)
  const ROOM = 'board'
  const showPresence = () => {
    const others = Object.keys(client.others(ROOM) || {}).filter((u) => u !== claims.sub)
    presence.textContent = others.length ? `also here: ${others.join(', ')}` : ''
  }
  client.on('presence', showPresence)
  client.on('message', showPresence) // (joined: the members already there)
  client.on('status', showPresence)
  client.join(ROOM)

  let paused = false
  offlineToggle.addEventListener('click', () => {
    paused = !paused
    offlineToggle.textContent = paused ? 'Go online' : 'Work offline'
    if (paused) client.goOffline()
    else client.goOnline()
  })
  // The browser knows it is offline before the socket does: no reconnection attempts
  // (and no growing backoff) until it is back.
  window.addEventListener('offline', () => { if (client.started) client.goOffline() })
  window.addEventListener('online', () => {
    if (!client.started) client.start()
    else if (!paused) client.goOnline()
  })

  render()
  showStatus()
  if (navigator.onLine) client.start() // (opened offline: the queue and the replica come from IndexedDB)
  window.syncline = { board: { client, render } }
}

// The page itself is cached by a service worker, so a reload works offline.
if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {})

page('Task board', start)
