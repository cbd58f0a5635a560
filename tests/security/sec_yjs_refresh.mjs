// A y-websocket 3 client that follows docs/security.md#tokens-and-transport: the server closes the socket
// at the token's exp (4401 token_expired, a terminal close for y-websocket 3), and the app
// sets a new token in `params` and connects again.
// usage: node sec_yjs_refresh.mjs '{"url", "doc", "token", "fresh", "timeoutMs"}'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const cfg = JSON.parse(process.argv[2])
const doc = new Y.Doc()
const text = doc.getText('text')
const closes = []
const provider = new WebsocketProvider(cfg.url, cfg.doc, doc, {
  params: { token: cfg.token }, WebSocketPolyfill: WebSocket, disableBc: true,
})
provider.on('closed', ({ code, reason }) => {
  closes.push({ code, reason })
  if (code === 4401) {
    provider.params = { token: cfg.fresh } // (an app would fetch it here, possibly awaiting)
    provider.connect()
  }
})
const deadline = Date.now() + (cfg.timeoutMs || 15000)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const until = async (cond, what) => {
  while (!cond()) {
    if (Date.now() > deadline) {
      console.log(JSON.stringify({ error: `timeout waiting for ${what}`, closes, text: text.toString() }))
      process.exit(2)
    }
    await sleep(10)
  }
}
await until(() => provider.synced, 'the first sync')
text.insert(text.length, 'before')
await until(() => closes.length > 0, 'the close at exp')
await until(() => provider.synced, 'the sync with the new token')
text.insert(text.length, ' after')
await sleep(300)
console.log(JSON.stringify({ closes, text: text.toString() }))
provider.destroy()
process.exit(0)
