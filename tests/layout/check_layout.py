#!/usr/bin/env python3
"""Keeps the layout honest: every #include of the tree follows the arrows.

  check_layout.py SOURCE_DIR        exit 0 when the layout holds, 1 with one
                                    line per violation otherwise

The rooms and what each may include (doc/architecture.md draws the same):

  protocol/          protocol/ only (pure: the wire format)
  pkcs11/            pkcs11/ only (the one place that calls a PKCS#11 module)
  daemon/mx/         mx, pkcs11, protocol (used by every room, uses none)
  daemon/ (root)     core, mx, pkcs11, protocol
  daemon/token/      token and everything below
  daemon/renewal/    renewal, token and everything below
  daemon/server/     server, renewal, token and everything below
  daemon/main.cpp    anything (it assembles the daemon)
  client/            client, protocol
  client/pkcs11/     client/pkcs11, client, protocol (libfirma-pkcs11.so;
                     client/ may not include it)

and CK_* names (types, constants) or a PKCS#11 header appear in code only
under pkcs11/ and client/pkcs11/ (comments may name them; client/pkcs11/
implements the PKCS#11 API and calls no module), and no code under daemon/ compares
or assigns a state by its wire name (the names of protocol/states.cpp: the
daemon holds states as enums and names them only through protocol/).
"""
import os
import re
import sys

BELOW = {
    "protocol": {"protocol"},
    "pkcs11": {"pkcs11"},
    "mx": {"mx", "pkcs11", "protocol"},
    "core": {"core", "mx", "pkcs11", "protocol"},
    "token": {"token", "core", "mx", "pkcs11", "protocol"},
    "renewal": {"renewal", "token", "core", "mx", "pkcs11", "protocol"},
    "server": {"server", "renewal", "token", "core", "mx", "pkcs11", "protocol"},
    "main": {"server", "renewal", "token", "core", "mx", "pkcs11", "protocol"},
    "client": {"client", "protocol"},
    "client_pkcs11": {"client_pkcs11", "client", "protocol"},
}
DAEMON_ROOMS = ("mx", "token", "renewal", "server")
SOURCES = (".c", ".cc", ".cpp", ".h", ".hpp", ".in")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
# The rooms that may name CK_* and include the PKCS#11 header: pkcs11/ calls
# modules, client/pkcs11/ is one.
CK_ROOMS = ("pkcs11", "client_pkcs11")
CK_NAME = re.compile(r"\bCK[A-Z]?_[A-Z0-9_]+\b")
PKCS11_HEADER = re.compile(r"(^|/)(pkcs11|pkcs11t|pkcs11f)\.h$")
WIRE_NAME = re.compile(r'\{\s*\w+::\w+\s*,\s*"([^"]+)"\s*\}')


def wire_names(root):
    """The state names protocol/states.cpp writes, or an empty set without it."""
    path = os.path.join(root, "protocol", "states.cpp")
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return set(WIRE_NAME.findall(f.read()))


def state_uses(text, names):
    """(line, name) for each comparison with or assignment of a wire name."""
    if not names:
        return []
    every = "|".join(re.escape(n) for n in sorted(names))
    # Returned as text: only the names no other vocabulary uses ("error" is
    # also a log level, "fetch" a verb).
    distinct = "|".join(re.escape(n) for n in sorted(names) if "-" in n) or "(?!)"
    pattern = re.compile(
        r'(?:[=!]=|(?<![=!<>])=(?!=)|\bcompare\(|\bstd::string(?:_view)?\()\s*"(%s)"|"(%s)"\s*[=!]=|\breturn\s+"(%s)"'
        % (every, every, distinct))
    uses = []
    for m in pattern.finditer(text):
        uses.append((text.count("\n", 0, m.start()) + 1, m.group(1) or m.group(2) or m.group(3)))
    return uses


def without_comments(text):
    """The text with comments blanked (string literals kept, line numbers kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text[i] == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
            out.append(text[i])  # a digit separator
            i += 1
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while j < n and text[j] != q and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def room_of(path):
    """The room a source path (relative to the tree) is in, or None if unchecked."""
    parts = path.split("/")
    top = parts[0]
    if top == "client" and len(parts) > 2 and parts[1] == "pkcs11":
        return "client_pkcs11"
    if top in ("protocol", "pkcs11", "client"):
        return top
    if top == "daemon":
        if len(parts) == 2:
            return "main" if parts[1] == "main.cpp" else "core"
        if parts[1] in DAEMON_ROOMS:
            return parts[1]
        return "unknown"
    return None


def code_only(text):
    """The text with comments and string literals blanked (line numbers kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
            out.append(c)  # a digit separator (8'000'000), not a character literal
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check(root):
    problems = []
    names = wire_names(root)
    for top in ("protocol", "pkcs11", "daemon", "client"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(SOURCES):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                room = room_of(rel)
                if room is None:
                    continue
                if room == "unknown":
                    problems.append(f"{rel}: not in a room (daemon/ holds mx/, token/, renewal/, server/ and the root)")
                    continue
                with open(full, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                for m in INCLUDE.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    target = m.group(2)
                    if PKCS11_HEADER.search(target) and room not in CK_ROOMS:
                        problems.append(f"{rel}:{line}: includes the PKCS#11 header {target}: only pkcs11/ may")
                    if m.group(1) == '"' and (target.startswith(".") or "/" not in target):
                        # Relative to the including file ("../server/x.hpp", "x.hpp").
                        local = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                        if os.path.exists(os.path.join(root, local)):
                            target = local
                    elif m.group(1) != '"' and target.split("/")[0] not in ("protocol", "pkcs11", "daemon", "client"):
                        continue  # a system or library header
                    to = room_of(target)
                    if to is None or to == "main":
                        continue
                    if to == "unknown" or to not in BELOW[room]:
                        problems.append(f"{rel}:{line}: {room} includes {target} ({to}): "
                                        f"{room} may include only {', '.join(sorted(BELOW[room]))}")
                if top == "daemon":
                    for line, name in state_uses(without_comments(text), names):
                        problems.append(f'{rel}:{line}: the state "{name}" by its wire name: use the enum of protocol/states.hpp')
                if room not in CK_ROOMS:
                    code = code_only(text)
                    for m in CK_NAME.finditer(code):
                        line = code.count("\n", 0, m.start()) + 1
                        problems.append(f"{rel}:{line}: {m.group(0)} outside pkcs11/")
    return problems


def main():
    if len(sys.argv) != 2:
        print("usage: check_layout.py SOURCE_DIR", file=sys.stderr)
        return 2
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    if problems:
        print(f"layout: {len(problems)} violation(s)")
        return 1
    print("layout: every include follows the arrows; no CK_* outside pkcs11/; no state by its wire name in daemon/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
