# cerssd developer entry points. Both targets install what they need first (scripts/setup).
.PHONY: demo demo-down demo-cluster test test-fast lint setup man completion deb wheel

setup:
	scripts/setup

demo: setup
	scripts/sandbox up

demo-down:
	scripts/sandbox down

# Two clustered managing daemons, etcd, a leader killed and replaced (docs/cluster.md);
# runs start to end (about a minute) and removes everything it started.
demo-cluster: setup
	scripts/cluster-demo

# Both tiers: the fast one and the integration one (zfs-fuse, sshd, netns, SeaweedFS,
# the OpenZFS guest), in two lanes at once (scripts/run-tests says which and why).
test: setup
	scripts/run-tests

# Pure logic and the fake backend only: no root, no services (tests/conftest.py marks).
test-fast: setup
	.venv/bin/python -m pytest -q -m fast

lint: setup
	.venv/bin/ruff check cerssd tests
	.venv/bin/mypy cerssd

# Man pages (build/gen/man) from the argument parsers and docs/config.md.
man: setup
	scripts/build-man man

# bash and zsh completion for cerssctl (build/gen/completion).
completion: setup
	scripts/build-man completion

# dist/cerssd_VERSION_ARCH.deb (debian/, dh-virtualenv), with the man pages and completion.
deb: setup
	scripts/build-deb

# dist/cerssd-VERSION-py3-none-any.whl and dist/cerssd-VERSION.tar.gz, checked by twine.
wheel: setup
	rm -f dist/cerssd-*.whl dist/cerssd-*.tar.gz
	.venv/bin/python -m build --outdir dist .
	.venv/bin/twine check --strict dist/cerssd-*.whl dist/cerssd-*.tar.gz
