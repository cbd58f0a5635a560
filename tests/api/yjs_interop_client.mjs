// A y-websocket (JavaScript) client for tests/api/test_api_yjs_js.py.
// usage: node yjs_interop_client.mjs '<json config>'
//   {url, doc, token, waitText, edits: {appendText, map: {k: v}, push: [..]}, untilSuffix, timeoutMs, awareness}
// Prints one JSON line with the final state and whether permission was denied.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const cfg = JSON.parse(process.argv[2])
const doc = new Y.Doc()
let denied = null
const origWarn = console.warn
console.warn = (...args) => {
  if (String(args[0]).includes('Permission denied')) denied = String(args.join(' '))
  else origWarn(...args)
}
const provider = new WebsocketProvider(cfg.url, cfg.doc, doc, {
  params: { token: cfg.token }, WebSocketPolyfill: WebSocket, disableBc: true,
})
if (cfg.awareness) provider.awareness.setLocalStateField('user', cfg.awareness)
const text = doc.getText('text'), map = doc.getMap('meta'), arr = doc.getArray('items')
const deadline = Date.now() + (cfg.timeoutMs || 10000)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const until = async (cond, what) => {
  while (!cond()) {
    if (Date.now() > deadline) { out({ error: `timeout waiting for ${what}` }); process.exit(2) }
    await sleep(10)
  }
}
const state = () => ({
  text: text.toString(), map: map.toJSON(), items: arr.toJSON(), denied,
  awareness: [...provider.awareness.getStates().values()],
})
const out = (extra) => console.log(JSON.stringify({ ...state(), ...extra }))

await until(() => provider.synced, 'sync')
if (cfg.waitText) await until(() => text.toString().includes(cfg.waitText), `text ${cfg.waitText}`)
const e = cfg.edits || {}
if (e.appendText) text.insert(text.length, e.appendText)
for (const [k, v] of Object.entries(e.map || {})) map.set(k, v)
if (e.push) arr.push(e.push)
if (cfg.untilSuffix) await until(() => text.toString().endsWith(cfg.untilSuffix), `suffix ${cfg.untilSuffix}`)
if (cfg.waitDenied) await until(() => denied !== null, 'permission denied')
if (cfg.waitAwarenessOf) await until(() => state().awareness.some((s) => s.user === cfg.waitAwarenessOf), 'awareness')
await sleep(cfg.lingerMs || 200)
out({})
provider.destroy()
process.exit(0)
