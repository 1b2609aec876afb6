# cerssd developer entry points. Both targets install what they need first (scripts/setup).
.PHONY: demo demo-down test lint setup

setup:
	scripts/setup

demo: setup
	scripts/sandbox up

demo-down:
	scripts/sandbox down

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check cerssd tests
	.venv/bin/mypy cerssd
