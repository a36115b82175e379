"""Every problem code a view can give is one its OpenAPI answer lists.

The views' source is read (no server): from each registered endpoint's view, every
``ApiError(status, "CODE")`` and ``problem(status, "CODE")`` it creates is collected,
following the calls it makes into ``api/`` (helpers such as ``require_user_wallet`` or
``money.accept``, methods such as the login throttle's), with a code passed as an
argument resolved at the call site or from the parameter's default. What the endpoint
wrapper in ``api/spec.py`` and the request hook run (authentication, roles, the
idempotency key) is added by the endpoint's flags. The test fails when:

- a view can give a status its document does not list, or a code missing from the
  ``code`` enum of that status;
- a declaration lists a code of its own that nothing in the view can give (stale);
- an implied code (``api.spec.IMPLIED_CODES``) is not what its source gives;
- a listed code has no description in ``api.errors.PROBLEM_CODES``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import api
import api.routes
from api.errors import PROBLEM_CODES
from api.spec import IMPLIED_CODES, REGISTRY, Endpoint

API_DIR = Path(api.__file__).parent

# Views whose code comes from a value (not a literal): where the codes are, checked by status only.
DYNAMIC_CODES = {
    "api.routes.webhooks.create": "UrlRefused.code (services/webhook_http.py: WEBHOOK_URL_INVALID|PRIVATE)",
}


@dataclass(frozen=True)
class Param:
    """A code taken from the named parameter of the function that creates the problem."""

    name: str


@dataclass
class Found:
    codes: set[tuple[int, str]] = field(default_factory=set)
    params: set[tuple[int, Param]] = field(default_factory=set)
    dynamic: set[int] = field(default_factory=set)  # statuses whose code is computed


class Analyzer:
    """Problem codes reachable from a function, over a set of module sources."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.trees = {name: ast.parse(src) for name, src in sources.items()}
        self.functions: dict[tuple[str, str], ast.FunctionDef] = {}
        self.methods: dict[str, list[tuple[str, ast.FunctionDef]]] = {}
        self.imports: dict[str, dict[str, tuple[str, str | None]]] = {}
        for module, tree in self.trees.items():
            names: dict[str, tuple[str, str | None]] = {}
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    self.functions[(module, node.name)] = node
                elif isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            self.methods.setdefault(item.name, []).append((module, item))
            for node in ast.walk(tree):  # imports inside functions too (api/spec.py's money import)
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "api":
                    for alias in node.names:
                        target = f"{node.module}.{alias.name}"
                        if target in self.trees:  # "from api.routes import common": a module
                            names[alias.asname or alias.name] = (target, None)
                        else:
                            names[alias.asname or alias.name] = (node.module, alias.name)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name in self.trees and alias.asname:
                            names[alias.asname] = (alias.name, None)
            self.imports[module] = names
        self._memo: dict[tuple[str, str], Found] = {}

    def _resolve(self, module: str, call: ast.Call) -> list[tuple[str, ast.FunctionDef]]:
        func = call.func
        if isinstance(func, ast.Name):
            if (module, func.id) in self.functions:
                return [(module, self.functions[(module, func.id)])]
            target = self.imports[module].get(func.id)
            if target and target[1] and (target[0], target[1]) in self.functions:
                return [(target[0], self.functions[(target[0], target[1])])]
            return []
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name):
                target = self.imports[module].get(func.value.id)
                if target and target[1] is None:  # module.function
                    found = self.functions.get((target[0], func.attr))
                    return [(target[0], found)] if found else []
            return self.methods.get(func.attr, [])  # a method of an api/ class: over-approximated by name
        return []

    @staticmethod
    def _code_arg(call: ast.Call) -> tuple[ast.expr | None, ast.expr | None]:
        args = list(call.args[:2]) + [None, None]
        status, code = args[0], args[1]
        for keyword in call.keywords:
            if keyword.arg == "status":
                status = keyword.value
            elif keyword.arg == "code":
                code = keyword.value
        return status, code

    def found(self, module: str, fn: ast.FunctionDef) -> Found:
        key = (module, f"{fn.name}@{fn.lineno}")
        if key in self._memo:
            return self._memo[key]
        out = self._memo[key] = Found()  # a recursive call sees what is known so far
        params = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
        # The body only: the decorators (``endpoint(...)``) are the wrapper, added by flags.
        for node in (n for statement in fn.body for n in ast.walk(statement)):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in ("ApiError", "problem"):
                status, code = self._code_arg(node)
                if not isinstance(status, ast.Constant) or not isinstance(status.value, int):
                    continue  # the error handlers re-emitting an exception's own status
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    out.codes.add((status.value, code.value))
                elif isinstance(code, ast.Name) and code.id in params:
                    out.params.add((status.value, Param(code.id)))
                else:
                    out.dynamic.add(status.value)
                continue
            for callee_module, callee in self._resolve(module, node):
                sub = self.found(callee_module, callee)
                out.codes |= sub.codes
                out.dynamic |= sub.dynamic
                for status, param in sub.params:
                    value = self._argument(node, callee, param.name)
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        out.codes.add((status, value.value))
                    elif isinstance(value, ast.Name) and value.id in params:
                        out.params.add((status, Param(value.id)))
                    else:
                        out.dynamic.add(status)
        return out

    @staticmethod
    def _argument(call: ast.Call, callee: ast.FunctionDef, name: str) -> ast.expr | None:
        for keyword in call.keywords:
            if keyword.arg == name:
                return keyword.value
        positional = [a.arg for a in callee.args.args]
        if positional and positional[0] == "self":
            positional = positional[1:]
        if name in positional and positional.index(name) < len(call.args):
            return call.args[positional.index(name)]
        defaults = dict(zip(reversed([a.arg for a in callee.args.args]), reversed(callee.args.defaults), strict=False))
        defaults.update({a.arg: d for a, d in zip(callee.args.kwonlyargs, callee.args.kw_defaults, strict=True)
                         if d is not None})
        return defaults.get(name)

    def codes_of(self, module: str, function: str) -> Found:
        return self.found(module, self.functions[(module, function)])


def _api_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(API_DIR.rglob("*.py")):
        parts = path.relative_to(API_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


@pytest.fixture(scope="module")
def registry() -> list[Endpoint]:
    for info in pkgutil.iter_modules(api.routes.__path__):
        if info.name != "debug":  # not in the document (decisions.md 22)
            importlib.import_module(f"api.routes.{info.name}")
    return [ep for ep in REGISTRY if ep.view is not None]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(_api_sources())


def _flags(ep: Endpoint) -> dict[str, bool]:
    return {"auth": ep.auth, "roles": bool(ep.roles), "body": ep.body is not None, "query": ep.query is not None,
            "idempotent": ep.idempotent, "path": "<" in ep.rule, "limited": ep.limited}


def _raised(analyzer: Analyzer, ep: Endpoint) -> Found:
    assert ep.view is not None
    found = Found()
    roots = [(ep.view.__module__, ep.view.__name__)]
    if ep.auth:  # the endpoint wrapper, and the request hook's authentication for protected routes
        roots += [("api.auth", "current"), ("api.auth", "request_principal")]
    if ep.roles:
        roots.append(("api.auth", "require_roles"))
    if ep.idempotent:
        roots.append(("api.money", "idempotency_key"))
    for module, name in roots:
        sub = analyzer.codes_of(module, name)
        found.codes |= sub.codes
        found.dynamic |= sub.dynamic
        assert not sub.params, (module, name, sub.params)
    return found


def test_every_code_a_view_gives_is_documented(analyzer, registry):
    problems = []
    for ep in registry:
        where = f"{ep.method} {ep.rule} ({ep.view.__module__}.{ep.view.__name__})"
        found = _raised(analyzer, ep)
        for status, code in sorted(found.codes):
            if status not in ep.errors:
                problems.append(f"{where}: gives {status} {code}, the document has no {status}")
            elif status in ep.codes and code not in ep.codes[status]:
                problems.append(f"{where}: gives {status} {code}, not in the documented {list(ep.codes[status])}")
        for status in sorted(found.dynamic):
            if f"{ep.view.__module__}.{ep.view.__name__}" not in DYNAMIC_CODES:
                problems.append(f"{where}: gives {status} with a computed code (list it in DYNAMIC_CODES)")
            elif status not in ep.errors:
                problems.append(f"{where}: gives {status}, the document has no {status}")
    assert not problems, "\n".join(problems)


def test_declared_codes_are_given_by_the_view(analyzer, registry):
    """A code an endpoint declares for itself is one its view can give (no stale promises)."""
    stale = []
    for ep in registry:
        found = _raised(analyzer, ep)
        implied = {(s, c) for flag, on in _flags(ep).items() if on for s, codes in IMPLIED_CODES[flag].items()
                   for c in codes}
        for status, codes in ep.declared.items():
            for code in codes:
                if (status, code) not in found.codes | implied and status not in found.dynamic:
                    stale.append(f"{ep.method} {ep.rule}: declares {status} {code}, which nothing in the view gives")
    assert not stale, "\n".join(stale)


# Where each implied code comes from; Werkzeug's own answers are named by their status.
IMPLIED_SOURCES = {
    "auth": [("api.auth", "current"), ("api.auth", "request_principal")],
    "roles": [("api.auth", "require_roles")],
    "body": [("api.jsonbody", "parse_body")],
    "query": [("api.jsonbody", "parse_query")],
    "idempotent": [("api.money", "idempotency_key"), ("api.money", "accept")],
    "limited": [("api.limits", "init_limits")],
}
BEYOND_SOURCE = {  # given outside any function the analyzer reads
    "auth": {(503, "SERVICE_UNAVAILABLE")},  # also the StoreError handler (api/errors.py)
    "body": {(413, "PAYLOAD_TOO_LARGE"), (503, "SERVICE_UNAVAILABLE")},  # Werkzeug (MAX_CONTENT_LENGTH); store
    "idempotent": {(503, "SERVICE_UNAVAILABLE")},  # the StoreError handler: outcome unknown, retry with the key
    "path": {(404, "NOT_FOUND")},  # Werkzeug: no route for the path
}


def test_implied_codes_are_what_their_sources_give(analyzer):
    for flag, implied in IMPLIED_CODES.items():
        expected = {(s, c) for s, codes in implied.items() for c in codes}
        given = set(BEYOND_SOURCE.get(flag, set()))
        for module, name in IMPLIED_SOURCES.get(flag, []):
            given |= analyzer.codes_of(module, name).codes
        assert given == expected, (flag, sorted(given ^ expected))


def test_every_listed_code_is_described(registry):
    listed = {code for ep in registry for codes in ep.codes.values() for code in codes}
    assert listed - set(PROBLEM_CODES) == set()
    unused = set(PROBLEM_CODES) - listed - {"BAD_REQUEST", "METHOD_NOT_ALLOWED", "CONFLICT", "INTERNAL_ERROR"}
    assert not unused, f"described but never listed: {sorted(unused)}"


FAKE = '''
from api.errors import ApiError
from api.routes.common import require_user_wallet


def helper(code="DEFAULT_CODE"):
    return ApiError(409, code, "x")


def view():
    require_user_wallet("x", code="OTHER_NOT_FOUND")
    if 1:
        raise helper()
    raise ApiError(422, "BRAND_NEW", "x")
'''


def test_the_analyzer_finds_codes_through_helpers_and_defaults():
    """The cross-check can fail: a code raised directly, through a helper's default and
    through an argument to another module's helper is found."""
    found = Analyzer({**_api_sources(), "api.fake": FAKE}).codes_of("api.fake", "view")
    assert found.codes == {(422, "BRAND_NEW"), (409, "DEFAULT_CODE"), (422, "OTHER_NOT_FOUND")}
    real = Analyzer(_api_sources())
    assert (422, "RECEIVER_NOT_FOUND") in real.codes_of("api.routes.wallet", "transfer").codes
    assert (429, "RATE_LIMITED") in real.codes_of("api.routes.auth", "login").codes
