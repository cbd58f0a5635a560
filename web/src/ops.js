// The operations page: every two seconds (?refresh=ms) it reads GET /v1/ops/stats (system_read: admin or
// auditor), the open conflicts and, for an admin, the dead letters; it charts the last
// few minutes in plain SVG and offers requeue / discard on each dead letter.
import { api, el, page } from './common.js'

const REFRESH_MS = Math.max(250, Number(new URLSearchParams(location.search).get('refresh')) || 2000) // ?refresh=ms
const KEEP = 90 // points per chart (three minutes)
const SVG = 'http://www.w3.org/2000/svg'

function svg (tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  return node
}

/** A line chart of one or more series ({name: [numbers]}), scaled to its largest value. */
function lineChart (host, series) {
  const w = 320; const h = 90
  const all = Object.values(series).flat()
  const top = Math.max(1, ...all)
  const chart = svg('svg', { viewBox: `0 0 ${w} ${h + 14}`, class: 'chart' })
  chart.append(svg('line', { x1: 0, y1: h, x2: w, y2: h, class: 'axis' }))
  const label = svg('text', { x: 2, y: 10, class: 'scale' })
  label.textContent = String(Math.round(top * 100) / 100)
  chart.append(label)
  Object.entries(series).forEach(([name, values], i) => {
    const step = w / Math.max(1, KEEP - 1)
    const offset = (KEEP - values.length) * step
    const pts = values.map((v, j) => `${(offset + j * step).toFixed(1)},${(h - (v / top) * (h - 12)).toFixed(1)}`)
    if (pts.length > 1) {
      const first = pts[0].split(',')[0]; const last = pts[pts.length - 1].split(',')[0]
      chart.append(svg('polygon', { points: `${first},${h} ${pts.join(' ')} ${last},${h}`, class: `area s${i % 4}` }))
    }
    chart.append(svg('polyline', { points: pts.join(' '), class: `series s${i % 4}` }))
    const legend = svg('text', { x: 60 + i * 90, y: h + 12, class: `legend s${i % 4}` })
    legend.textContent = `${name}: ${values.length ? Math.round(values[values.length - 1] * 100) / 100 : '–'}`
    chart.append(legend)
  })
  host.replaceChildren(chart)
}

/** Horizontal bars, one per row ({label, value}). */
function barChart (host, rows, empty) {
  if (!rows.length) { host.replaceChildren(el('p', { class: 'hint' }, empty)); return }
  const top = Math.max(1, ...rows.map((r) => r.value))
  const rowH = 18; const w = 320
  const chart = svg('svg', { viewBox: `0 0 ${w} ${rows.length * rowH}`, class: 'chart bars' })
  rows.forEach((r, i) => {
    chart.append(svg('rect', { x: 110, y: i * rowH + 3, width: Math.max(1, (r.value / top) * (w - 150)), height: rowH - 6, class: 'bar' }))
    const name = svg('text', { x: 0, y: i * rowH + 13, class: 'name' })
    name.textContent = r.label.length > 16 ? r.label.slice(0, 15) + '…' : r.label
    const value = svg('text', { x: 114 + (r.value / top) * (w - 150), y: i * rowH + 13, class: 'value' })
    value.textContent = String(r.value)
    chart.append(name, value)
  })
  host.replaceChildren(chart)
}

function start (main, token, claims) {
  const isAdmin = (claims.roles || []).some((r) => r === 'admin' || r === 'super-admin') || (claims.perms || []).includes('admin')
  const card = (id, title) => el('section', { class: 'card', id }, el('h3', {}, title), el('div', { class: 'body' }))
  const cards = {
    connections: card('card-connections', 'Connections'),
    rate: card('card-rate', 'Events/s'),
    rooms: card('card-rooms', 'Presence per room'),
    docs: card('card-docs', 'Editors per document'),
    lag: card('card-lag', 'Consumer lag per group'),
    state: card('card-state', 'Store and Redis'),
    conflicts: card('card-conflicts', 'Open conflicts'),
    dlq: card('card-dlq', 'Dead letters')
  }
  const error = el('p', { class: 'error', id: 'ops-error' })
  const updated = el('span', { id: 'ops-updated', class: 'hint' })
  main.replaceChildren(el('div', { class: 'toolbar' }, el('strong', {}, 'Operations'), updated), error,
    el('div', { class: 'grid' }, ...Object.values(cards)))
  const body = (name) => cards[name].querySelector('.body')

  const history = { native: [], yjs: [], events: [], yjsUpdates: [] }
  let last = null
  const push = (arr, v) => { arr.push(v); if (arr.length > KEEP) arr.shift() }

  function renderStats (s) {
    push(history.native, s.connections.native)
    push(history.yjs, s.connections.yjs)
    if (last) {
      const dt = Math.max(0.001, s.time - last.time)
      push(history.events, Math.max(0, (s.counters.events_appended - last.counters.events_appended) / dt))
      push(history.yjsUpdates, Math.max(0, (s.counters.yjs_updates - last.counters.yjs_updates) / dt))
    }
    last = s
    lineChart(body('connections'), { native: history.native, yjs: history.yjs })
    lineChart(body('rate'), { appended: history.events, 'yjs updates': history.yjsUpdates })
    barChart(body('rooms'), s.rooms.map((r) => ({ label: r.room, value: r.members })), 'nobody in a room')
    barChart(body('docs'), s.docs.map((d) => ({ label: d.doc, value: d.connections })), 'no document open')
    barChart(body('lag'), s.groups.map((g) => ({ label: g.group, value: g.lag })), 'no consumer group')
    const redis = s.redis || {}
    body('state').replaceChildren(el('dl', {},
      el('dt', {}, 'store'), el('dd', { class: `state ${s.store.state}` }, `${s.store.state} ${s.store.backend || ''} ${s.store.latency_ms ?? ''} ms`),
      el('dt', {}, 'redis'), el('dd', { class: `state ${redis.state}` }, redis.state === 'disabled' || !redis.state ? 'not configured' : `${redis.state}, queue ${redis.queue_depth ?? 0}, sent ${redis.sent ?? 0}`),
      el('dt', {}, 'dead letters'), el('dd', {}, Object.entries(s.dead_letters).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(', ') || 'none')))
  }

  function renderConflicts (list) {
    body('conflicts').replaceChildren(list.length
      ? el('ul', { class: 'conflicts' }, ...list.map((c) => el('li', {}, `${c.stream} · ${c.field ?? ''} (${c.conflict})`)))
      : el('p', { class: 'hint' }, 'none'))
  }

  async function act (entry, action) {
    try {
      await api(token, `/v1/bus/dead-letters/${encodeURIComponent(entry.id)}/${action}`,
        { method: 'POST', body: action === 'discard' ? { reason: 'discarded from the operations page' } : {} })
      await refresh()
    } catch (e) {
      error.textContent = `${action}: ${e.code || ''} ${e.message}`
    }
  }

  function renderDlq (entries) {
    if (!isAdmin) { body('dlq').replaceChildren(el('p', { class: 'hint' }, 'dead letters need an admin token')); return }
    if (!entries.length) { body('dlq').replaceChildren(el('p', { class: 'hint' }, 'none')); return }
    body('dlq').replaceChildren(el('table', { class: 'dlq' },
      el('tr', {}, ...['group', 'event', 'reason', 'attempts', 'status', ''].map((t) => el('th', {}, t))),
      ...entries.map((e) => el('tr', { class: 'dlq-entry', 'data-id': e.id, 'data-status': e.status },
        el('td', {}, e.group),
        el('td', {}, `${e.type} ${e.stream}`),
        el('td', { class: 'reason' }, (e.reason || '').slice(0, 80)),
        el('td', {}, String(e.attempts)),
        el('td', { class: 'status' }, e.status),
        el('td', {}, e.status === 'dead'
          ? [el('button', { class: 'requeue', onclick: () => act(e, 'requeue') }, 'Requeue'),
              el('button', { class: 'discard', onclick: () => act(e, 'discard') }, 'Discard')]
          : '')))))
  }

  async function refresh () {
    try {
      const stats = await api(token, '/v1/ops/stats')
      renderStats(stats)
      renderConflicts((await api(token, '/v1/conflicts')).conflicts)
      if (isAdmin) {
        const lists = await Promise.all(['dead', 'requeued', 'redelivering'].map((status) =>
          api(token, `/v1/bus/dead-letters?status=${status}&limit=50`)))
        renderDlq(lists.flatMap((l) => l.entries))
      } else renderDlq([])
      error.textContent = ''
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`
    } catch (e) {
      error.textContent = e.code === 'forbidden'
        ? 'the operations page needs an admin or auditor token (system_read)'
        : `${e.code || 'error'}: ${e.message}`
    }
  }

  let timer = null
  const loop = async () => { await refresh(); timer = setTimeout(loop, REFRESH_MS) }
  loop()
  window.syncline = { ops: { refresh, stop: () => clearTimeout(timer), points: () => history.native.length } }
}

page('Operations', start, { role: 'admin' })
