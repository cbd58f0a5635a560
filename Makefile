# Syncline developer entry points. Extra arguments: make test ARGS='-k store -x'
SHELL := /bin/bash
ARGS ?=

.PHONY: help setup test serve services-start services-stop constraints web

help:
	@echo "make setup            create .venv and install syncline[server,test,bench] (pinned by constraints.txt)"
	@echo "make serve            run 'syncline serve' on a SQLite file under var/ (127.0.0.1:8000)"
	@echo "make test             start PostgreSQL + Redis, run the whole test suite, stop them"
	@echo "make services-start   start the test PostgreSQL + Redis and leave them running (env: var/services.env)"
	@echo "make services-stop    stop them"
	@echo "make web              rebuild the browser pages (api/static/app/) from web/ with npm ci + esbuild; commit the result"
	@echo "make constraints      regenerate constraints.txt from .venv after changing dependencies"

setup:
	bash scripts/setup.sh

serve:
	bash scripts/serve.sh $(ARGS)

test:
	bash scripts/test.sh $(ARGS)

# The built pages are committed (make serve needs only Python); this rebuilds them
# byte for byte from web/package-lock.json (tests/browser/test_web_bundles.py checks).
web:
	cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

services-start:
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

constraints: setup
	{ echo "# Pinned versions for reproducible installs: pip install -c constraints.txt -e '.[server,test,bench]'"; \
	  echo "# (scripts/setup.sh does this). Regenerate after changing dependencies with: make constraints"; \
	  .venv/bin/python -m pip freeze --exclude-editable --all \
	    | grep -Ev '^(#|-e |-r |--)' | grep -v ' @ ' \
	    | grep -Evi '^(pip|setuptools|wheel|distribute|syncline)==' | LC_ALL=C sort -f; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt
	@echo "constraints.txt: $$(grep -c == constraints.txt) pins"
