"""The layers stay apart, checked on the source (AST), like the ledger purity test.

* ``api/`` translates HTTP only: no module under it imports ``infra.mongo``,
  ``pymongo`` or ``bson``, or calls ``get_db``/``get_client``. Every read and write
  goes through a ``services`` function (``services/store.py`` is the handle).
* ``api/spec.py`` describes routes; it reads no data and imports no private name.
* No module imports a private name (``_x``) of another module.
* One way each (issue 23): every ``services`` function that touches the store takes it as
  ``db``, its first positional parameter, required (no default, no keyword-only form, no
  process-global fallback); ``api/`` reads its settings only through
  ``api.app_settings.settings()``.
* Named states: statuses and roles are ``ledger.states`` enums, never bare strings in
  comparisons, queries or updates in ``api/`` and ``services/``, and the request and
  response schemas offer exactly the enums' values.
"""

from __future__ import annotations

import ast
import typing
from enum import StrEnum
from pathlib import Path

import pytest

from ledger import states

ROOT = Path(__file__).resolve().parents[2]
API_FILES = sorted((ROOT / "api").rglob("*.py"))
SERVICE_FILES = sorted((ROOT / "services").rglob("*.py"))
FORBIDDEN_IN_API = ("infra.mongo", "pymongo", "bson")
FORBIDDEN_CALLS = {"get_db", "get_client"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import; ``import a.b`` is ("a.b", [])."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _touches(module: str, names: list[str], forbidden: str) -> bool:
    if module == forbidden or module.startswith(forbidden + "."):
        return True
    parent, _, child = forbidden.rpartition(".")
    return bool(parent) and module == parent and child in names  # from infra import mongo


@pytest.mark.parametrize("path", API_FILES, ids=_rel)
def test_api_reaches_the_data_only_through_services(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = sorted({module for module, names in _imports(tree)
                  for forbidden in FORBIDDEN_IN_API if _touches(module, names, forbidden)})
    assert bad == [], f"{_rel(path)} imports {bad}: call a services function instead"
    calls = sorted({node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                    for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and ((isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS)
                         or (isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS))})
    assert calls == [], f"{_rel(path)} calls {calls}: call a services function instead"


@pytest.mark.parametrize("path", API_FILES + SERVICE_FILES, ids=_rel)
def test_no_module_imports_a_private_name_of_another(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    private = sorted(f"{module}.{name}" for module, names in _imports(tree) for name in names
                     if name.startswith("_") and not name.startswith("__"))
    assert private == [], f"{_rel(path)} imports private {private}"


def test_the_route_registry_reads_no_data_and_decides_no_role() -> None:
    source = (ROOT / "api" / "spec.py").read_text()
    tree = ast.parse(source)
    modules = {module for module, _ in _imports(tree)}
    assert not modules & {"services", "infra.mongo", "pymongo"}, modules
    assert not [m for m in modules if m.startswith("services.")], modules
    # Roles are enforced by api.auth.require_roles, called for the declared roles.
    assert "auth.require_roles(" in source


# --- one way each: the store handle and the web tier's settings ---------------------------

STORE_ACCESSOR = "services/store.py"  # process_db() and ping(): the one place that reaches infra.mongo


def misplaced_db_params(source: str) -> list[tuple[int, str]]:
    """(line, function) of every function whose ``db`` parameter is not its first positional
    parameter, has a default, or is keyword-only."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        args = node.args
        positional = args.posonlyargs + args.args
        names = [a.arg for a in positional]
        name = getattr(node, "name", "<lambda>")
        if "db" in [a.arg for a in args.kwonlyargs]:
            found.append((node.lineno, name))
        elif "db" in names:
            index = names.index("db")
            has_default = index >= len(positional) - len(args.defaults)
            if index != 0 or has_default:
                found.append((node.lineno, name))
    return sorted(found)


def test_the_db_parameter_check_finds_what_it_should() -> None:
    source = ("def a(db): pass\n"
              "def b(x, db): pass\n"
              "def c(db=None): pass\n"
              "def d(x, *, db): pass\n"
              "def e(x, *, db=None): pass\n"
              "def f(db: Database, x: int = 1, *, y: int = 2): pass\n"
              "def g(x, db: Database | None = None): pass\n")
    assert [line for line, _ in misplaced_db_params(source)] == [2, 3, 4, 5, 7]


@pytest.mark.parametrize("path", SERVICE_FILES, ids=_rel)
def test_services_take_the_store_handle_first_and_explicitly(path: Path) -> None:
    found = misplaced_db_params(path.read_text())
    assert found == [], (f"{_rel(path)}: {found}: take the store as `db: Database`, the first positional "
                         "parameter, required (no default, not keyword-only)")


@pytest.mark.parametrize("path", [p for p in SERVICE_FILES if _rel(p) != STORE_ACCESSOR], ids=_rel)
def test_services_have_no_process_global_store_fallback(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    reached = sorted({module for module, _ in _imports(tree) if _touches(module, [], "infra.mongo")}
                     | {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS | {"process_db"}})
    assert reached == [], f"{_rel(path)} reaches the process's store ({reached}): take `db` from the caller"


SETTINGS_READERS = {"api/app_settings.py", "api/__init__.py"}  # the accessor; the factory that stores them


def settings_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) of ``<x>.config["PURSER"]`` / ``<x>.config.get("PURSER")`` and ``get_settings()`` calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "config" and _literal(node.slice) == "PURSER"):
            found.append((node.lineno, 'config["PURSER"]'))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in ("get_settings", "get_settings_for_app"):
                found.append((node.lineno, f"{name}()"))
            elif (name == "get" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
                  and func.value.attr == "config" and node.args and _literal(node.args[0]) == "PURSER"):
                found.append((node.lineno, 'config.get("PURSER")'))
    return sorted(found)


def test_the_settings_check_finds_what_it_should() -> None:
    source = ('a = current_app.config["PURSER"].x\n'
              'b = app.config.get("PURSER")\n'
              'c = get_settings().y\n'
              'd = infra.config.get_settings()\n'
              'e = settings().z\n'
              'f = app.config["OTHER"]\n')
    assert [line for line, _ in settings_reads(source)] == [1, 2, 3, 4]


@pytest.mark.parametrize("path", [p for p in API_FILES if _rel(p) not in SETTINGS_READERS], ids=_rel)
def test_the_web_tier_reads_its_settings_one_way(path: Path) -> None:
    found = settings_reads(path.read_text())
    assert found == [], (f"{_rel(path)}: {found}: call api.app_settings.settings() (or take the settings "
                         "from the caller where no app context runs)")


def test_the_factory_reads_no_settings_but_the_ones_it_stores() -> None:
    assert settings_reads((ROOT / "api" / "__init__.py").read_text()) == []


# --- named states -------------------------------------------------------------------------

ENUMS: tuple[type[StrEnum], ...] = (states.JobStatus, states.WalletStatus, states.SubscriptionStatus, states.Role)
STATE_VALUES = {member.value for enum in ENUMS for member in enum} | {"cancelled"}
STATE_KEYS = {"status", "role"}
# Strings that spell one of our states but mean something else.
EXEMPT = {
    "services/payout_provider.py": "the payment provider's wire statuses (paid/failed/pending), not ours",
}


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literals(node: ast.AST) -> list[str]:
    """String constants of ``node`` itself or of the tuple/list/set it spells."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for elt in node.elts if (v := _literal(elt)) is not None]
    v = _literal(node)
    return [v] if v is not None else []


def bare_states(source: str) -> list[tuple[int, str]]:
    """(line, literal) of status/role strings compared, or used as a status/role in a
    query, update or keyword argument."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, v) for v in _literals(operand) if v in STATE_VALUES]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if _literal(key) in STATE_KEYS:
                    found += [(node.lineno, v) for v in _literals(value) if v in STATE_VALUES]
                    if isinstance(value, ast.Dict):  # {"status": {"$in": [...]}}
                        for inner in value.values:
                            found += [(node.lineno, v) for v in _literals(inner) if v in STATE_VALUES]
        elif isinstance(node, ast.keyword) and node.arg in STATE_KEYS | {"roles"}:
            found += [(node.value.lineno, v) for v in _literals(node.value) if v in STATE_VALUES]
    return sorted(set(found))


def test_the_state_check_finds_what_it_should() -> None:
    source = ('if job["status"] == "queued": pass\n'
              'db.subscriptions.find({"status": "active"})\n'
              'db.jobs.find({"status": {"$in": ["settled", "failed"]}})\n'
              'if role in ("admin", "creator"): pass\n'
              'endpoint(roles=("creator",))\n'
              'ok = x == JobStatus.QUEUED and {"type": "admin"} and y == "user"\n')
    assert [line for line, _ in bare_states(source)] == [1, 2, 3, 3, 4, 4, 5]


@pytest.mark.parametrize("path", [p for p in API_FILES + SERVICE_FILES if _rel(p) not in EXEMPT], ids=_rel)
def test_statuses_and_roles_are_named_states(path: Path) -> None:
    found = bare_states(path.read_text())
    assert found == [], f"{_rel(path)}: use ledger.states enums instead of {found}"


def _literal_values(annotation: typing.Any) -> set[str]:
    values: set[str] = set()
    for arg in typing.get_args(annotation):
        values |= {arg} if isinstance(arg, str) else _literal_values(arg)
    return values


@pytest.mark.parametrize(("model", "field", "enum"), [
    ("RoleIn", "role", states.Role),
    ("UserOut", "role", states.Role),
    ("JobsQuery", "status", states.JobStatus),
    ("JobOut", "status", states.JobStatus),
    ("BalanceOut", "status", states.WalletStatus),
    ("WalletStatusOut", "status", states.WalletStatus),
    ("SubscriptionOut", "status", states.SubscriptionStatus),
])
def test_schemas_offer_exactly_the_named_states(model: str, field: str, enum: type[StrEnum]) -> None:
    import api.request_schemas
    import api.response_schemas

    found = getattr(api.request_schemas, model, None) or getattr(api.response_schemas, model)
    annotation = found.model_fields[field].annotation
    assert _literal_values(annotation) == {member.value for member in enum}


def test_no_cancelled_subscription_status() -> None:
    # Cancelling stops auto-renewal; the subscription stays active until it expires.
    assert "cancelled" not in {member.value for member in states.SubscriptionStatus}


JOB_WRITERS = {"services/jobs.py"}  # accept_job and its batch form, accept_jobs
CODE_DIRS = ("api", "devstack", "infra", "loadtest", "migrations", "ops", "services", "tasks", "workers")


def _job_inserts(tree: ast.AST) -> list[int]:
    """Lines calling ``<x>.jobs.insert_one(...)`` / ``insert_many(...)``."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("insert_one", "insert_many")
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "jobs"]


def test_jobs_are_created_only_through_the_accept_path() -> None:
    # Issue 23: one way to make a job, so its shape (partition, key, status, dates) has one source.
    offenders = {}
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if _rel(path) in JOB_WRITERS:
                continue
            lines = _job_inserts(ast.parse(path.read_text(), filename=str(path)))
            if lines:
                offenders[_rel(path)] = lines
    assert offenders == {}, f"create jobs with services.jobs.accept_job / accept_jobs: {offenders}"
    assert _job_inserts(ast.parse((ROOT / "services/jobs.py").read_text())), "the accept path moved"
