# cerssd developer entry points. Both targets install what they need first (scripts/setup).
.PHONY: demo demo-down test test-fast lint setup

setup:
	scripts/setup

demo: setup
	scripts/sandbox up

demo-down:
	scripts/sandbox down

# Both tiers: the fast one and the integration one (zfs-fuse, sshd, netns, SeaweedFS,
# the OpenZFS guest).
test: setup
	.venv/bin/python -m pytest -q --durations=25

# Pure logic and the fake backend only: no root, no services (tests/conftest.py marks).
test-fast: setup
	.venv/bin/python -m pytest -q -m fast

lint: setup
	.venv/bin/ruff check cerssd tests
	.venv/bin/mypy cerssd
