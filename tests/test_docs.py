"""The operator guide (docs/) kept true: read against the code and a real daemon.

An operator trusts docs/config.md for every key and default, docs/api.md for every
route and the answers the examples show, docs/metrics.md for every metric and its
labels. These tests derive what is true from the code (the parsers' key sets, the
route table) or from a running cerssd (its scrape, its answers to the documented curl
commands), so a change that forgets the guide fails here instead of misleading
someone at 3 a.m. Each extractor must also find a realistic number of entries, so an
edit that breaks a table's format cannot make a test pass by finding nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cerssd import config as daemon_config
from cerssd import hooks as hooks_config
from cerssd.api.app import ROUTES
from cerssd.api.openapi import openapi_path
from cerssd.cluster.config import CLUSTER_KEYS, parse_cluster
from cerssd.config import parse_config
from cerssd.daemon import RESTART_KEYS
from cerssd.hooks import parse_hooks
from cerssd.objectstore import config as store_config
from cerssd.objectstore.config import parse_store
from cerssd.policies import spec as policy_config
from cerssd.policies.spec import parse_policy
from cerssd.replication.logic import spec as rel_config
from cerssd.replication.logic.spec import parse_relationship

from .conftest import SLOW, DaemonProcess, SshServer, post_json, raw_request, wait_until, zfs

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE = ("README.md", "install.md", "config.md", "api.md", "metrics.md",
         "troubleshooting.md", "upgrade.md")
SOCKET = "/run/cerssd/control.sock"


# -- reading the markdown ----------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body under ``heading`` (a whole heading line), up to the next heading."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"no heading {heading!r}") from None
    body: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        body.append(line)
    return "\n".join(body)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row whose first cell is a `code` span (headers skipped)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")]


def code(cell: str) -> str:
    m = re.match(r"`([^`]+)`", cell)
    assert m, f"expected a `code` span at the start of {cell!r}"
    return m.group(1)


def toml_default(cell: str) -> tuple[bool, Any]:
    """(True, value) when the default cell starts with a TOML literal in backticks."""
    m = re.match(r"`([^`]+)`", cell)
    if not m:
        return False, None
    try:
        return True, tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None  # prose such as `cerssd-NAME-` or `daemon.retry_deadline`


# -- docs/config.md: every key, its section and its default ---------------------------


CONFIG = (DOCS / "config.md").read_text()
SERVERS = {"local", "standby1"}


def _daemon(extra: Mapping[str, Any]) -> Any:
    return parse_config({"daemon": dict(extra)}).daemon


def _cluster(extra: Mapping[str, Any]) -> Any:
    return parse_cluster({"etcd": ["http://127.0.0.1:2379"], "node": "n1", **extra})


def _server(extra: Mapping[str, Any]) -> Any:
    table = {"host": "192.0.2.2", "known_hosts": "/etc/cerssd/known_hosts", **extra}
    return parse_config({"servers": {"local": {}, "standby1": table}}).servers["standby1"]


def _store(extra: Mapping[str, Any]) -> Any:
    return parse_store("s3", {"bucket": "cerssd-backups", **extra}, servers=SERVERS)


def _relationship(extra: Mapping[str, Any]) -> Any:
    table = {"volume": "tank/data", "slaves": ["standby1"], "interval": "5m", **extra}
    return parse_relationship("web", table, servers=SERVERS, stores={"s3"})


def _policy(extra: Mapping[str, Any]) -> Any:
    return parse_policy("hourly", {"volume": "tank/data", "interval": "1h", **extra},
                        servers=SERVERS)


def _slave(extra: Mapping[str, Any]) -> Any:
    table = {"volume": "tank/data", "interval": "5m",
             "slaves": [{"server": "standby1", **extra}]}
    return parse_relationship("web", table, servers=SERVERS).slaves[0]


def _hooks(extra: Mapping[str, Any]) -> Any:
    return parse_hooks({"pre": ["/bin/true"], **extra}, "hooks")


#: heading in docs/config.md -> (the keys the parser accepts, a parse of a minimal table
#: plus one key, to check documented defaults against).
CONFIG_SECTIONS: dict[str, tuple[set[str], Callable[[Mapping[str, Any]], Any]]] = {
    "## `[daemon]`": (daemon_config.DAEMON_KEYS, _daemon),
    "## `[cluster]`": (CLUSTER_KEYS, _cluster),
    "## `[servers.NAME]`": (daemon_config.SERVER_KEYS, _server),
    "## `[stores.NAME]`": (store_config.STORE_KEYS, _store),
    "## `[snapshots.NAME]`": (policy_config.POLICY_KEYS, _policy),
    "## `[relationships.NAME]`": (rel_config._KEYS, _relationship),
    "### `slaves` entries": (rel_config._SLAVE_KEYS, _slave),
    "### `hooks` table": (hooks_config._KEYS, _hooks),
}


def documented_keys(heading: str) -> dict[str, list[str]]:
    return {code(row[0]): row for row in table_rows(section(CONFIG, heading))}


def test_config_sections_cover_every_table_the_parser_accepts() -> None:
    headings = {h.split("[")[1].split(".")[0].rstrip("]`") for h in CONFIG_SECTIONS
                if "[" in h}
    assert headings == daemon_config.SECTIONS


@pytest.mark.parametrize("heading", list(CONFIG_SECTIONS))
def test_config_doc_lists_exactly_the_keys_the_parser_accepts(heading: str) -> None:
    accepted, _ = CONFIG_SECTIONS[heading]
    assert len(accepted) >= 3, f"the key set for {heading} looks empty: {accepted}"
    documented = documented_keys(heading)
    assert set(documented) == accepted, (
        f"{heading}: undocumented {sorted(accepted - set(documented))}, "
        f"documented but refused by the parser {sorted(set(documented) - accepted)}")
    for key, row in documented.items():
        assert len(row) == 4 and all(row), f"{heading} {key}: type, default, meaning: {row}"


def test_config_doc_has_every_key_overall() -> None:
    total = sum(len(documented_keys(h)) for h in CONFIG_SECTIONS)
    assert total >= 40, total


@pytest.mark.parametrize("heading", list(CONFIG_SECTIONS))
def test_documented_defaults_are_the_parsers_defaults(heading: str) -> None:
    """Writing the documented default explicitly must parse to what leaving it out does."""
    _, parse = CONFIG_SECTIONS[heading]
    checked = 0
    for key, row in documented_keys(heading).items():
        literal, value = toml_default(row[2])
        if not literal:
            continue
        assert parse({key: value}) == parse({}), f"{heading} {key}: default {row[2]}"
        checked += 1
    # slaves, hooks and cluster have fewer keys with a default: server, pre, post, etcd
    # and node (the host name) have none
    assert checked >= 3 or heading in ("### `slaves` entries", "### `hooks` table",
                                       "## `[cluster]`"), (
        heading, checked)


def test_keys_that_need_a_restart_say_so() -> None:
    rows = documented_keys("## `[daemon]`")
    for key in RESTART_KEYS:
        assert "Restart." in rows[key][3], f"daemon.{key} is not applied on reload"


# -- docs/api.md: every route, and the examples against a real daemon ----------------


API = (DOCS / "api.md").read_text()


def documented_routes() -> set[tuple[str, str]]:
    """(method, path) of every row of the route table: ``| GET | `/v1/status` | ... |``."""
    return set(re.findall(r"^\| (GET|POST|DELETE|PUT|PATCH) \| `([^`]+)` \|",
                          section(API, "## Routes"), re.M))


def test_api_doc_lists_exactly_the_served_routes() -> None:
    served = {(r.method, openapi_path(r.path)) for r in ROUTES}
    documented = documented_routes()
    assert len(served) >= 25 and len(documented) >= 25, (len(served), len(documented))
    assert served == documented, (f"undocumented {sorted(served - documented)}, "
                                  f"documented but not served {sorted(documented - served)}")


def examples() -> dict[str, Any]:
    """A sh block of one single-line curl command -> the JSON block right below it."""
    pairs = re.findall(r"^```sh\n(curl [^\n]+)\n```\n\n```json\n(.*?)^```$", API, re.S | re.M)
    return {command: json.loads(answer) for command, answer in pairs}


def test_api_examples_are_found_and_parse() -> None:
    found = examples()
    assert len(found) >= 8, sorted(found)
    assert all(cmd.startswith(f"curl --unix-socket {SOCKET} ") for cmd in found)


#: The documented examples the test runs (in this order: pause comes last), each with
#: the JSON paths (keys, "[]" for list items) whose keys are data, not the document's
#: fields: server names, state counts, an activity's own parameters.
RUN: dict[str, set[tuple[str, ...]]] = {
    "http://localhost/v1/status": {("activities",), ("servers",)},
    "http://localhost/v1/servers": set(),
    "http://localhost/v1/capabilities": {()},
    "http://localhost/v1/links": set(),
    "http://localhost/v1/relationships/web": set(),
    "http://localhost/v1/activities/0123abcd": set(),
    "'http://localhost/v1/activities?state=running'": {("items", "[]", "params")},
    "-X POST http://localhost/v1/relationships/web/pause": set(),
}


def assert_same_shape(documented: Any, actual: Any, where: tuple[str, ...] = (),
                      data_keyed: set[tuple[str, ...]] | None = None) -> None:
    """Same keys in every object (both sides), same item shape in non-empty lists.

    A null on either side matches anything (``progress`` is null between transfers).
    """
    if documented is None or actual is None:
        return
    if isinstance(documented, dict):
        assert isinstance(actual, dict), (where, actual)
        if data_keyed is not None and where in data_keyed:
            keys = set(documented) & set(actual)
        else:
            assert set(documented) == set(actual), (
                f"at {'.'.join(where) or 'top'}: documented {sorted(documented)}, "
                f"served {sorted(actual)}")
            keys = set(documented)
        for key in keys:
            assert_same_shape(documented[key], actual[key], (*where, key), data_keyed)
    elif isinstance(documented, list):
        assert isinstance(actual, list), (where, actual)
        if documented and actual:
            assert_same_shape(documented[0], actual[0], (*where, "[]"), data_keyed)
    else:
        assert type(documented) is type(actual) or {type(documented), type(actual)} <= {
            int, float}, (where, documented, actual)


def run_curl(command: str, socket_path: Path) -> Any:
    argv = shlex.split(command.replace(SOCKET, str(socket_path)))
    done = subprocess.run([*argv, "--silent", "--show-error"], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.fixture
def docs_daemon(start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
                sshd: SshServer) -> Iterator[DaemonProcess]:
    """The docs' setting in small: local and standby1 (over SSH), relationship ``web``."""
    master, standby = make_pool(), make_pool()
    zfs("create", f"{master}/data")
    d = start_daemon(extra=(
        '[servers.local]\nkind = "local"\n'
        + sshd.config("standby1")
        + f'[relationships.web]\nvolume = "{master}/data"\ninterval = "1h"\n'
        f'slaves = [{{ server = "standby1", target_volume = "{standby}/data" }}]\n'),
        wait=False)
    d.wait_ready(timeout=120)  # probing standby1 over SSH is slow on a busy zfs-fuse
    d.pool = master  # type: ignore[attr-defined]
    wait_until(lambda: all(s["state"] == "in-sync" for s in
                           d.api("GET", "/v1/relationships/web")["slaves"]),
               SLOW, interval=0.5, what="relationship web to bring standby1 in sync")
    yield d


def test_documented_curl_examples_and_openapi_answer_as_shown(docs_daemon: DaemonProcess) -> None:
    assert shutil.which("curl"), "curl is missing: scripts/setup installs it"
    found = examples()
    for rest, data_keyed in RUN.items():
        command = f"curl --unix-socket {SOCKET} {rest}"
        assert command in found, f"docs/api.md lost the example {command!r}"
        answer = run_curl(command, docs_daemon.socket_path)
        assert_same_shape(found[command], answer, data_keyed=data_keyed)
    assert docs_daemon.api("GET", "/v1/relationships/web")["state"] == "paused"
    problem = run_curl(f"curl --unix-socket {SOCKET} http://localhost/v1/activities/0123abcd",
                       docs_daemon.socket_path)
    assert problem == found[f"curl --unix-socket {SOCKET} http://localhost/v1/activities/0123abcd"]
    for verb, state in (("resume", "running"), ("sync-now", "running")):
        command = f"curl --unix-socket {SOCKET} -X POST http://localhost/v1/relationships/web/{verb}"
        assert command in API, f"docs/api.md lost the {verb} example"
        assert run_curl(command, docs_daemon.socket_path)["state"] == state
    # The served OpenAPI document describes exactly the documented routes.
    command = f"curl --unix-socket {SOCKET} http://localhost/v1/openapi.json"
    assert command in API, "docs/api.md lost the OpenAPI example"
    openapi = run_curl(command, docs_daemon.socket_path)
    assert openapi["openapi"].startswith("3.")
    served = {(method.upper(), path) for path, ops in openapi["paths"].items() for method in ops}
    assert served == documented_routes()


# -- docs/metrics.md: every family a real daemon exports, with its type and labels ------


METRICS = (DOCS / "metrics.md").read_text()


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    rows: dict[str, tuple[str, set[str]]] = {}
    for row in table_rows(METRICS):
        if not row[0].startswith("`cerssd_"):
            continue
        labels = set(re.findall(r"`([a-z_]+)`", row[2]))
        rows[code(row[0])] = (row[1], labels)
    return rows


def scrape(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (TYPE, label names seen in its samples), from a text-format scrape."""
    families: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, current, kind = line.split()
            families[current] = (kind, set())
        elif line and not line.startswith("#"):
            labels = re.findall(r'([a-zA-Z_]\w*)="', line.split("{", 1)[1]) if "{" in line \
                else []
            families[current][1].update(set(labels) - {"le"})
    return families


def test_every_exported_metric_is_documented(docs_daemon: DaemonProcess) -> None:
    pool = docs_daemon.pool  # type: ignore[attr-defined]
    for _ in range(2):  # the second one fails: an error series to check the labels of
        r = post_json(docs_daemon, f"/v1/volumes/{pool}/data/snapshots", {"name": "twice"})
        docs_daemon.wait_done(r.body["id"])
    text = raw_request(docs_daemon.socket_path, "GET", "/metrics").body
    exported = scrape(text)
    documented = documented_metrics()
    assert len(exported) >= 20 and len(documented) >= 20, (len(exported), len(documented))
    assert set(exported) == set(documented), (
        f"undocumented {sorted(set(exported) - set(documented))}, "
        f"documented but not exported {sorted(set(documented) - set(exported))}")
    with_samples = 0
    for name, (kind, labels) in exported.items():
        assert documented[name][0] == kind, f"{name}: documented as {documented[name][0]}"
        if labels:
            with_samples += 1
            assert documented[name][1] == labels, f"{name}: labels {sorted(labels)}"
    assert with_samples >= 15, with_samples


def test_example_promql_is_valid_and_uses_documented_metrics(tmp_path: Path) -> None:
    queries = re.findall(r"```promql\n(.*?)```", METRICS, re.S)
    assert len(queries) >= 8, queries
    names = set(documented_metrics())
    for query in queries:
        used = set(re.findall(r"\bcerssd_\w+", query))
        base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
        assert base <= names, f"{query!r} uses undocumented {sorted(base - names)}"
    assert shutil.which("promtool"), "promtool is missing: scripts/setup installs it"
    rules = {"groups": [{"name": "docs", "rules": [
        {"record": f"docs:example{i}", "expr": q.strip()} for i, q in enumerate(queries)]}]}
    path = tmp_path / "docs-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the guide as a whole ------------------------------------------------------------


def test_toml_examples_in_the_guide_are_valid_config() -> None:
    """Every ```toml block parses and validates (a fragment gets the servers and the
    store it names, as the full file it comes from would have)."""
    context = {"servers": {"local": {}, **{
        name: {"host": "192.0.2.2", "known_hosts": "/etc/cerssd/known_hosts"}
        for name in ("standby1", "standby2")}}, "stores": {"s3": {"bucket": "cerssd-backups"}}}
    checked = 0
    for page in GUIDE:
        for body in re.findall(r"^```toml\n(.*?)^```$", (DOCS / page).read_text(), re.S | re.M):
            data = tomllib.loads(body)
            parse_config({**context, **data} if "relationships" in data else data)
            checked += 1
    assert checked >= 4, checked



def test_guide_pages_exist_and_the_index_links_them() -> None:
    index = (DOCS / "README.md").read_text()
    for page in (*GUIDE[1:], "backups.md", "failover.md"):
        assert f"]({page})" in index, f"docs/README.md does not link {page}"
    for page in GUIDE:
        assert (DOCS / page).is_file(), page


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_relative_links_in_the_guide_point_at_files_and_headings() -> None:
    checked = 0
    for page in GUIDE:
        text = (DOCS / page).read_text()
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", text):
            if target == "failover.md":  # written separately (hot standby)
                continue
            path = DOCS / target if target else DOCS / page
            assert path.resolve().exists(), f"{page} links {target}"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path.read_text()), f"{page} links {target}#{anchor}"
            checked += 1
    assert checked >= 10, checked
