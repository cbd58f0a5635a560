// A remote-controlled set of JavaScript Yjs clients (yjs + y-websocket) for tests/realtime.
// usage: node yjs_driver.mjs   (then one JSON command per line on stdin)
//   in:  {"seq": 1, "cmd": "connect", "id": "a", "url": "ws://host:port/v1/yjs", "doc": "d", "token": "..."}
//   out: {"seq": 1, "ok": true, ...}   or   {"seq": 1, "ok": false, "error": "..."}
// Commands run concurrently (each answers when done). Every client's documents use the
// roots text: Y.Text "text", map: Y.Map "map", items: Y.Array "items".
//   connect {id, url, doc, token, timeoutMs}   new Y.Doc + WebsocketProvider, answers once synced
//   disconnect {id}                           provider.disconnect() (the doc stays: offline edits)
//   reconnect {id, timeoutMs}                 provider.connect(), answers once synced again
//   insert {id, index (-1: end), text}        delete {id, index, length}
//   burst {id, n, yieldEvery}                 n transactions appending one character each
//   mapSet {id, key, value}
//   nestedInit {id}                           map.nested = Y.Map{list: Y.Array[1], note: Y.Text"note"}
//   nestedEdit {id, push, note}               push to map.nested.list, append to map.nested.note
//   undoManager {id, remote}                  Y.UndoManager on text (tracking the provider's
//                                             remote changes too when remote), captureTimeout 0
//   undo {id}
//   awareness {id, state}                     setLocalState(state) (null removes it)
//   state {id, brief}                         {text (unless brief), textLength, textSha, map, items, awareness, synced, connected}
//   close {id}                                provider.destroy()
//   exit
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'

const clients = new Map()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

async function until (cond, timeoutMs, what) {
  const deadline = Date.now() + (timeoutMs || 10000)
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timeout after ${timeoutMs}ms waiting for ${what}`)
    await sleep(5)
  }
}

function client (id) {
  const c = clients.get(id)
  if (!c) throw new Error(`no client ${id}`)
  return c
}

function state (c, brief) {
  const text = c.doc.getText('text').toString()
  const out = {
    textLength: text.length,
    textSha: createHash('sha256').update(text, 'utf8').digest('hex'),
    map: c.doc.getMap('map').toJSON(),
    items: c.doc.getArray('items').toJSON(),
    awareness: [...c.provider.awareness.getStates().entries()]
      .filter(([cid]) => cid !== c.doc.clientID).map(([cid, s]) => ({ client: cid, ...s })),
    synced: c.provider.synced,
    connected: c.provider.wsconnected,
    statuses: c.statuses,
    clientID: c.doc.clientID,
  }
  if (!brief) out.text = text
  return out
}

const commands = {
  async connect ({ id, url, doc, token, timeoutMs }) {
    if (clients.has(id)) throw new Error(`client ${id} exists`)
    const ydoc = new Y.Doc()
    const provider = new WebsocketProvider(url, doc, ydoc, {
      params: { token }, WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 500,
    })
    const c = { doc: ydoc, provider, statuses: [], undo: null }
    provider.on('status', (e) => c.statuses.push(e.status))
    clients.set(id, c)
    await until(() => provider.synced, timeoutMs, `${id} to sync`)
    return { state: state(c, true) }
  },
  async disconnect ({ id }) {
    const c = client(id)
    c.provider.disconnect()
    await until(() => !c.provider.wsconnected, 5000, `${id} to disconnect`)
    return {}
  },
  async reconnect ({ id, timeoutMs }) {
    const c = client(id)
    c.provider.connect()
    await until(() => c.provider.wsconnected && c.provider.synced, timeoutMs, `${id} to sync again`)
    return {}
  },
  async insert ({ id, index, text }) {
    const t = client(id).doc.getText('text')
    t.insert(index < 0 ? t.length : index, text)
    return {}
  },
  async delete ({ id, index, length }) {
    client(id).doc.getText('text').delete(index, length)
    return {}
  },
  async burst ({ id, n, yieldEvery }) {
    const t = client(id).doc.getText('text')
    for (let i = 0; i < n; i++) {
      t.insert(t.length, String.fromCharCode(97 + (i % 26)))
      if (yieldEvery && (i + 1) % yieldEvery === 0) await sleep(0)
    }
    return {}
  },
  async mapSet ({ id, key, value }) {
    client(id).doc.getMap('map').set(key, value)
    return {}
  },
  async nestedInit ({ id }) {
    const c = client(id)
    c.doc.transact(() => {
      const nested = new Y.Map()
      c.doc.getMap('map').set('nested', nested)
      const list = new Y.Array()
      nested.set('list', list)
      list.push([1])
      nested.set('note', new Y.Text('note'))
    })
    return {}
  },
  async nestedEdit ({ id, push, note }) {
    const nested = client(id).doc.getMap('map').get('nested')
    if (push !== undefined) nested.get('list').push([push])
    if (note) { const t = nested.get('note'); t.insert(t.length, note) }
    return {}
  },
  async undoManager ({ id, remote }) {
    const c = client(id)
    const origins = new Set([null])
    if (remote) origins.add(c.provider)
    c.undo = new Y.UndoManager(c.doc.getText('text'), { trackedOrigins: origins, captureTimeout: 0 })
    return {}
  },
  async undo ({ id }) {
    const c = client(id)
    const item = c.undo.undo()
    return { undone: item !== null }
  },
  async awareness ({ id, state }) {
    client(id).provider.awareness.setLocalState(state)
    return {}
  },
  async state ({ id, brief }) {
    return { state: state(client(id), brief) }
  },
  async close ({ id }) {
    const c = client(id)
    c.provider.destroy()
    clients.delete(id)
    return {}
  },
  async exit () {
    for (const c of clients.values()) c.provider.destroy()
    setTimeout(() => process.exit(0), 50)
    return {}
  },
}

const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let msg
  try { msg = JSON.parse(line) } catch (e) { process.stderr.write(`bad command line: ${line}\n`); return }
  const run = commands[msg.cmd]
  if (!run) { reply({ seq: msg.seq, ok: false, error: `unknown command ${msg.cmd}` }); return }
  Promise.resolve().then(() => run(msg)).then(
    (result) => reply({ seq: msg.seq, ok: true, ...result }),
    (err) => reply({ seq: msg.seq, ok: false, error: String(err && err.stack ? err.stack : err) }),
  )
})
rl.on('close', () => {
  for (const c of clients.values()) c.provider.destroy()
  setTimeout(() => process.exit(0), 50)
})
process.on('unhandledRejection', (e) => process.stderr.write(`unhandled rejection: ${e}\n`))
