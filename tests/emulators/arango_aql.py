"""The AQL subset of the ArangoDB emulator: a parser and an evaluator for the query shapes we use.

Reads::

    FOR d IN @@col | collname | @list   FOR v[, e[, p]] IN [min[..max]] OUTBOUND|INBOUND|ANY start
                                                          GRAPH 'name' | @graph
    followed by any sequence of  FILTER cond [AND cond]...   and   LIMIT [offset,] count
    then                         RETURN [DISTINCT] operand

Writes (the shapes the mirror sends; see ``mirror/arango.py``), after the same FOR/FILTER part::

    UPSERT {_key: operand} INSERT operand UPDATE|REPLACE operand IN @@col|name [OPTIONS {...}]
    REMOVE operand IN @@col|name [OPTIONS {...}]
    each optionally followed by  RETURN operand  (OLD and NEW are defined there and in UPDATE/REPLACE)

    cond     := operand (== | != | < | <= | > | >= | IN | NOT IN) operand
    operand  := var | var.attr.attr... | @bind | 'string' | "string" | number | true | false | null
              | {} | {name: operand, ...} | ( cond ? operand : operand )

A query runs atomically, as on a single server: a write that fails leaves nothing behind, unless
``OPTIONS {ignoreErrors: true}`` skips that document (counted in ``writesIgnored``). Anything else
is answered with HTTP 400, errorNum 1501, never accepted silently.
"""
import json
import re


class ArangoError(Exception):
    def __init__(self, code, num, msg, **extra):
        super().__init__(msg)
        self.code, self.num, self.msg, self.extra = code, num, msg, extra

    def body(self):
        return {"error": True, "errorNum": self.num, "errorMessage": self.msg, "code": self.code, **self.extra}


def _unsupported(detail):
    return ArangoError(400, 1501, f"AQL: syntax error, unexpected or unsupported construct {detail}: the test "
                                  "emulator supports only a small AQL subset (see tests/emulators/arango_aql.py)")


def _rank(v):
    return 0 if v is None else 1 if isinstance(v, bool) else 2 if isinstance(v, (int, float)) \
        else 3 if isinstance(v, str) else 4 if isinstance(v, list) else 5


def aql_equal(a, b):
    if _rank(a) != _rank(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(aql_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(aql_equal(a[k], b[k]) for k in a)
    return a == b


def aql_key(value):
    """A hashable stand-in for a value: equal keys exactly when `aql_equal` holds (type-strict, 1 == 1.0),
    so IN lists, DISTINCT and unique indexes look values up in a hash instead of comparing with each."""
    rank = _rank(value)
    if rank == 4:
        return 4, tuple(aql_key(x) for x in value)
    if rank == 5:
        return 5, tuple(sorted((k, aql_key(v)) for k, v in value.items()))
    return rank, value


def _attr(value, path):
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


# ---------------------------------------------------------------- AQL subset parser
_TOKEN_RE = re.compile(r"""(?P<ws>\s+|//[^\n]*|/\*.*?\*/)|(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<bind>@@?[A-Za-z_][A-Za-z0-9_]*)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)|(?P<op>\.\.|==|!=|<=|>=|[<>,.(){}\[\]:*+\-/%!=?])""", re.S | re.X)
_DIRECTIONS = ("OUTBOUND", "INBOUND", "ANY")


class _AqlParser:
    def __init__(self, text, bind_vars):
        self.toks, pos = [], 0
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m:
                raise _unsupported(f"near '{text[pos:pos + 30]}'")
            pos = m.end()
            if m.lastgroup == "str":
                escapes = {"n": "\n", "t": "\t", "r": "\r"}
                text_value = re.sub(r"\\(.)", lambda e: escapes.get(e.group(1), e.group(1)),
                                    m.group()[1:-1], flags=re.S)
                self.toks.append(("str", text_value))
            elif m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group().strip("`")))
        self.i, self.binds, self.used = 0, bind_vars, set()

    def peek(self, offset=0):
        return self.toks[self.i + offset] if self.i + offset < len(self.toks) else ("end", "")

    def is_kw(self, *words, offset=0):
        kind, val = self.peek(offset)
        return kind == "name" and val.upper() in words

    def take(self):
        tok = self.peek()
        if tok[0] == "end":
            raise _unsupported("(unexpected end of query)")
        self.i += 1
        return tok

    def expect(self, *words):
        kind, val = self.take()
        if not ((kind == "name" and val.upper() in words) or (kind == "op" and val in words)):
            raise _unsupported(f"near '{val}' (expected {' or '.join(words)})")
        return val

    def bind(self, name):
        if name not in self.binds:
            raise ArangoError(400, 1551, f"AQL: no value specified for declared bind parameter '{name}'")
        self.used.add(name)
        return self.binds[name]

    def int_value(self):
        kind, val = self.take()
        value = self.bind(val[1:]) if kind == "bind" else None if kind == "name" and val.lower() == "null" \
            else int(val) if kind == "num" and val.lstrip("-").isdigit() else "bad"
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _unsupported(f"near '{val}' (expected a non-negative integer)")
        return value


    def operand(self, variables):
        if self.peek() == ("op", "{"):
            return self.object_literal(variables)
        if self.peek() == ("op", "("):
            self.take()
            cond = self.condition(variables)
            self.expect("?")
            then = self.operand(variables)
            self.expect(":")
            other = self.operand(variables)
            self.expect(")")
            return ("ternary", cond, then, other)
        kind, val = self.take()
        if kind == "name" and val in variables:
            path = []
            while self.peek() == ("op", "."):
                self.take()
                k, attr = self.take()
                if k != "name":
                    raise _unsupported(f"near '.{attr}'")
                path.append(attr)
            return ("var", val, path)
        if kind in ("str", "num"):
            return ("const", val if kind == "str" else json.loads(val))
        if kind == "bind" and not val.startswith("@@"):
            return ("const", self.bind(val[1:]))
        if kind == "name" and val.lower() in ("true", "false", "null"):
            return ("const", {"true": True, "false": False, "null": None}[val.lower()])
        raise _unsupported(f"near '{val}'")

    def object_literal(self, variables):
        self.expect("{")
        items = []
        while self.peek() != ("op", "}"):
            kind, name = self.take()
            if kind not in ("name", "str"):
                raise _unsupported(f"near '{name}' (expected an attribute name)")
            self.expect(":")
            items.append((name, self.operand(variables)))
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() != ("op", "}"):
                raise _unsupported(f"near '{self.peek()[1]}' in an object literal")
        self.take()
        return ("object", items)

    def collection_name(self):
        kind, val = self.take()
        name = self.bind(val[1:]) if kind == "bind" and val.startswith("@@") else val if kind == "name" else None
        if not isinstance(name, str):
            raise _unsupported(f"near '{val}' (expected a collection name or @@bind)")
        return name

    def parse(self):
        self.expect("FOR")
        variables = [self.variable()]
        while self.peek() == ("op", ","):
            self.take()
            variables.append(self.variable())
        self.expect("IN")
        traversal = self.is_kw(*_DIRECTIONS) or (self.peek()[0] in ("num", "bind") and (
            self.peek(1) == ("op", "..") or self.is_kw(*_DIRECTIONS, offset=1)))
        if traversal:
            low = high = 1
            if not self.is_kw(*_DIRECTIONS):
                low = high = self.int_value()
                if self.peek() == ("op", ".."):
                    self.take()
                    high = self.int_value()
            direction = self.expect(*_DIRECTIONS).upper()
            start = self.operand(())[1]
            self.expect("GRAPH")
            kind, val = self.take()
            graph = val if kind == "str" else self.bind(val[1:]) if kind == "bind" and val[1] != "@" else None
            if not isinstance(graph, str) or len(variables) > 3 or None in (low, high):
                raise _unsupported("in traversal (use: FOR v[, e[, p]] IN min..max DIRECTION start GRAPH 'name')")
            source = ("traversal", low, high, direction, start, graph)
        elif self.peek()[0] == "bind" and not self.peek()[1].startswith("@@"):
            values = self.bind(self.take()[1][1:])
            if not isinstance(values, list) or len(variables) != 1:
                raise ArangoError(400, 1563, "AQL: query used a non-array value to iterate over (while executing)")
            source = ("array", values)
        else:
            name = self.collection_name()
            if len(variables) != 1:
                raise _unsupported(f"near '{name}' (one variable per collection loop)")
            source = ("collection", name)
        ops = []
        while self.is_kw("FILTER", "LIMIT"):
            if self.take()[1].upper() == "LIMIT":
                first = self.int_value()
                if self.peek() == ("op", ","):
                    self.take()
                    ops.append(("limit", first or 0, self.int_value()))
                else:
                    ops.append(("limit", 0, first))
                continue
            conds = [self.condition(variables)]
            while self.is_kw("AND"):
                self.take()
                conds.append(self.condition(variables))
            ops.append(("filter", conds))
        write = None
        if self.is_kw("UPSERT", "REMOVE"):
            write = self.write(variables)
            variables = variables + ["OLD", "NEW"]
        ret, distinct = None, False
        if write is None or self.is_kw("RETURN"):
            self.expect("RETURN")
            distinct = self.is_kw("DISTINCT")
            if distinct:
                self.take()
            ret = self.operand(variables)
        if self.peek()[0] != "end":
            raise _unsupported(f"near '{self.peek()[1]}'")
        unused = set(self.binds) - self.used
        if unused:
            raise ArangoError(400, 1552, f"AQL: bind parameter '{sorted(unused)[0]}' was not declared in the query")
        return {"vars": variables, "source": source, "ops": ops, "distinct": distinct, "ret": ret, "write": write}

    def write(self, variables):
        verb = self.take()[1].upper()
        with_old = variables + ["OLD"]
        if verb == "UPSERT":
            search = self.object_literal(variables)
            if [name for name, _ in search[1]] != ["_key"]:
                raise _unsupported("in UPSERT (the emulator looks documents up by {_key: ...} only)")
            self.expect("INSERT")
            insert = self.operand(variables)
            mode = self.expect("UPDATE", "REPLACE").upper()
            change = self.operand(with_old)
            spec = {"verb": "UPSERT", "key": search[1][0][1], "insert": insert, "mode": mode.lower(),
                    "change": change}
        else:
            spec = {"verb": "REMOVE", "target": self.operand(variables)}
        self.expect("IN")
        spec["collection"] = self.collection_name()
        spec["options"] = {}
        if self.is_kw("OPTIONS"):
            self.take()
            options = _eval(self.object_literal(()), {})
            unknown = set(options) - _WRITE_OPTIONS
            if unknown:
                raise _unsupported(f"option {sorted(unknown)[0]!r} (the emulator knows {sorted(_WRITE_OPTIONS)})")
            spec["options"] = options
        return spec

    def variable(self):
        kind, val = self.take()
        if kind != "name" or val.upper() in _DIRECTIONS + _KEYWORDS:
            raise _unsupported(f"near '{val}' (expected a variable name)")
        return val

    def condition(self, variables):
        left = self.operand(variables)
        if self.is_kw("NOT") and self.is_kw("IN", offset=1):
            self.i += 2
            return _membership(left, "NOT IN", self.operand(variables))
        kind, val = self.take()
        if (kind == "op" and val not in _COMPARISONS) or (kind == "name" and val.upper() != "IN") \
                or kind not in ("op", "name"):
            raise _unsupported(f"near '{val}' (only comparisons, IN, NOT IN and AND are supported in FILTER)")
        if val.upper() == "IN":
            return _membership(left, "IN", self.operand(variables))
        return (left, val, self.operand(variables))


def _membership(left, op, right):
    """An IN condition; a constant list (a bind parameter) is hashed once per query, not scanned per row."""
    if right[0] == "const" and isinstance(right[1], list):
        return (left, op, right, frozenset(aql_key(x) for x in right[1]))
    return (left, op, right)


_KEYWORDS = ("FOR", "IN", "FILTER", "LIMIT", "RETURN", "GRAPH", "UPSERT", "INSERT", "UPDATE", "REPLACE", "REMOVE",
             "OPTIONS", "OLD", "NEW")
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_WRITE_OPTIONS = {"ignoreErrors", "exclusive", "waitForSync", "keepNull", "mergeObjects", "ignoreRevs"}


def aql_compare(a, b):
    """AQL's total order: null < bool < number < string < array < object; -1, 0 or 1."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if isinstance(a, list):
        for x, y in zip(a, b):
            c = aql_compare(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if isinstance(a, dict):
        return 0 if aql_equal(a, b) else aql_compare(sorted(a), sorted(b)) or 1
    return (a > b) - (a < b)


def _eval(operand, row):
    kind = operand[0]
    if kind == "var":
        return _attr(row[operand[1]], operand[2])
    if kind == "object":
        return {name: _eval(value, row) for name, value in operand[1]}
    if kind == "ternary":
        return _eval(operand[2] if _holds(operand[1], row) else operand[3], row)
    return operand[1]


def _holds(cond, row):
    left, op = _eval(cond[0], row), cond[1]
    if op in ("IN", "NOT IN"):
        if len(cond) == 4:
            found = aql_key(left) in cond[3]
        else:
            right = _eval(cond[2], row)
            found = isinstance(right, list) and any(aql_equal(left, x) for x in right)
        return found if op == "IN" else not found
    right = _eval(cond[2], row)
    if op in ("==", "!="):
        return aql_equal(left, right) == (op == "==")
    c = aql_compare(left, right)
    return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]
