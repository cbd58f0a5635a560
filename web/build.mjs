// Builds the pages into api/static/app/ (or the folder given as the first argument):
// one minified ES module per page, bundled by esbuild from the versions in
// package-lock.json, plus the HTML and CSS copied as they are. Deterministic: the same
// lock file and sources give the same bytes (tests/browser/test_web_bundles.py checks).
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = resolve(process.argv[2] || join(here, '..', 'api', 'static', 'app'))
const pages = ['editor', 'board', 'ops']

mkdirSync(out, { recursive: true })
await build({
  absWorkingDir: here,
  entryPoints: Object.fromEntries(pages.map((p) => [p, `src/${p}.js`])),
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  outdir: out,
  // clientkit-js (a sibling folder) resolves its packages from here too
  nodePaths: [join(here, 'node_modules')],
  logLevel: 'warning'
})
for (const f of readdirSync(join(here, 'pages'))) copyFileSync(join(here, 'pages', f), join(out, f))
console.log(`built ${pages.length} bundles into ${out}`)
