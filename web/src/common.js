// What every page shares: the token (from #token=…, the paste box or the development
// login, kept in sessionStorage for this tab), REST calls with it, and the header.

const TOKEN_KEY = 'syncline.token'

/** The claims of a JWT (not verified here: the server verifies every use). */
export function claimsOf (token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(part + '='.repeat((4 - part.length % 4) % 4)))
  } catch {
    return null
  }
}

/** A token from the URL fragment (#token=…, removed from the address bar) or this tab's storage. */
export function currentToken () {
  const hash = new URLSearchParams(location.hash.slice(1))
  const given = hash.get('token')
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given)
    hash.delete('token')
    const rest = hash.toString()
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''))
  }
  const token = sessionStorage.getItem(TOKEN_KEY)
  const claims = token && claimsOf(token)
  if (!claims || (claims.exp && claims.exp * 1000 < Date.now())) return null
  return token
}

export function signOut () {
  sessionStorage.removeItem(TOKEN_KEY)
  location.reload()
}

/** fetch() with the bearer token; JSON answers are parsed, errors thrown with the server's code. */
export async function api (token, path, { method = 'GET', body, headers = {} } = {}) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body !== undefined ? JSON.stringify(body) : undefined
  })
  const type = res.headers.get('content-type') || ''
  const data = type.includes('json') ? await res.json() : await res.arrayBuffer()
  if (!res.ok) {
    const err = new Error((data && data.message) || `HTTP ${res.status}`)
    err.code = data && data.code
    err.status = res.status
    throw err
  }
  return data
}

export function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return node
}

/** The login box: the development login (when the server offers it) and a paste box for a real token. */
function loginBox (root, wanted) {
  const msg = el('p', { class: 'error', id: 'login-error' })
  const tenant = el('input', { id: 'login-tenant', value: 'acme', required: true })
  const user = el('input', { id: 'login-user', value: 'alice', required: true })
  const role = el('select', { id: 'login-role' },
    ...['member', 'admin', 'auditor', 'viewer'].map((r) => el('option', { value: r, selected: r === wanted }, r)))
  const dev = el('form', {
    id: 'dev-login',
    onsubmit: async (e) => {
      e.preventDefault()
      msg.textContent = ''
      try {
        const res = await fetch('/dev/token', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ tenant: tenant.value, user: user.value, role: role.value })
        })
        const data = await res.json()
        if (!res.ok) throw new Error(`${data.code}: ${data.message}`)
        sessionStorage.setItem(TOKEN_KEY, data.token)
        location.reload()
      } catch (err) {
        msg.textContent = err.message
      }
    }
  },
  el('h2', {}, 'Development login'),
  el('p', { class: 'hint' }, 'Mints a token while the server runs with the development secret (var/dev-jwt-secret).'),
  el('label', {}, 'Tenant ', tenant), el('label', {}, 'User ', user), el('label', {}, 'Role ', role),
  el('button', { type: 'submit' }, 'Sign in'))
  const pasted = el('textarea', { id: 'token-paste', rows: 3, placeholder: 'eyJhbGciOi…' })
  const paste = el('form', {
    id: 'token-form',
    onsubmit: (e) => {
      e.preventDefault()
      const t = pasted.value.trim()
      if (!claimsOf(t)) { msg.textContent = 'that is not a JWT'; return }
      sessionStorage.setItem(TOKEN_KEY, t)
      location.reload()
    }
  },
  el('h2', {}, 'Or use a token'),
  el('p', { class: 'hint' }, 'From `syncline token --tenant T --user U`, or open the page with #token=… in its address.'),
  pasted, el('button', { type: 'submit' }, 'Use this token'))
  root.replaceChildren(el('section', { class: 'login' }, dev, paste, msg))
}

/**
 * The page's frame: a header with the links and who is signed in. Calls ``start(token, claims)``
 * when there is a token, shows the login box otherwise.
 */
export function page (title, start, { role = 'member' } = {}) {
  const header = el('header', {},
    el('a', { href: './', class: 'brand' }, 'Syncline'),
    el('nav', {}, el('a', { href: 'editor.html' }, 'Editor'), el('a', { href: 'board.html' }, 'Task board'),
      el('a', { href: 'ops.html' }, 'Operations')),
    el('span', { class: 'who', id: 'who' }))
  const main = el('main', {})
  document.body.replaceChildren(header, main)
  document.title = `${title} · Syncline`
  const token = currentToken()
  if (!token) {
    loginBox(main, role)
    return
  }
  const claims = claimsOf(token)
  document.getElementById('who').append(`${claims.sub} @ ${claims.tenant} (${(claims.roles || []).join(', ')}) `,
    el('button', { class: 'link', id: 'sign-out', onclick: signOut }, 'sign out'))
  start(main, token, claims)
}

/** A colour per user name (stable across pages, so a cursor and its name match). */
export function colorOf (name) {
  let h = 0
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0
  return `hsl(${h % 360}, 70%, 45%)`
}
