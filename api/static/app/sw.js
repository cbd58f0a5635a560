// The service worker of /app/: keeps a copy of the pages, so the task board opens (and
// its IndexedDB queue with it) while the browser is offline. Network first, so a page
// online is always the server's current one; the copy answers only when the network
// cannot. The API (/v1/, /dev/) is never cached.
const CACHE = 'syncline-app-v1'
const SHELL = ['./', 'index.html', 'board.html', 'board.js', 'editor.html', 'editor.js', 'ops.html', 'ops.js', 'style.css']

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()))
})

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()))
})

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url)
  if (event.request.method !== 'GET' || url.origin !== location.origin || !url.pathname.startsWith('/app/')) return
  event.respondWith(fetch(event.request).then((res) => {
    if (res.ok) {
      const copy = res.clone()
      caches.open(CACHE).then((c) => c.put(event.request, copy))
    }
    return res
  }).catch(() => caches.match(event.request, { ignoreSearch: true })))
})
