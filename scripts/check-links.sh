#!/usr/bin/env bash
# Checks every Markdown link in the repository's Markdown files (tracked, and new ones not yet
# committed; ignored files are skipped). The repository must stand on its own:
#   - a relative link must name a file or directory of the repository, and its #anchor, if any,
#     a heading of that file (GitHub's anchor rules);
#   - a link that leaves the repository (an absolute path, `../` above its root) fails;
#   - a web link (http://, https://, or any other scheme) fails, unless it is in ALLOWED below.
# Code blocks and `code spans` are not links, but a code span that is a Markdown file's name
# (`ARCHITECTURE.md`) must name a file of the repository too, relative to the document or to the
# root. Prints each broken link as file:line and exits 1.
#
#   scripts/check-links.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Web addresses a document may link to, as prefixes. Keep it short.
ALLOWED=()

git ls-files --cached --others --exclude-standard -z -- '*.md' |
  ALLOWED="${ALLOWED[*]-}" python3 -c '
import os, re, sys, unicodedata
from urllib.parse import unquote

root = os.path.realpath(".")
allowed = os.environ.get("ALLOWED", "").split()
files = [f for f in sys.stdin.read().split("\0") if f and os.path.isfile(f)]

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"(][^)]*)?\)")
REFDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^>\s]*)>")
HTML = re.compile(r"(?:href|src)=\"([^\"]+)\"")
BARE = re.compile(r"(?<![\w(<])(?:https?://|www\.)[^\s<>()]+")
CODE = re.compile(r"(`+)((?:(?!\1).)+?)\1")
MD_NAME = re.compile(r"[\w./-]+\.md")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")

def prose(path):
    """(line number, line, line without code spans) of the lines outside code blocks."""
    fence, previous_blank = None, True
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.rstrip("\n")
        marker = FENCE.match(line)
        if fence:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        if previous_blank and line.startswith("    ") and line.strip():
            continue  # an indented code block (its first line follows a blank one)
        previous_blank = not line.strip()
        yield number, line, CODE.sub("", line)

def slug(text):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = "".join(c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")

anchors_of = {}
def anchors(path):
    if path not in anchors_of:
        found, seen = set(), {}
        for _, line, _ in prose(path):
            heading = HEADING.match(line)
            for name in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
                found.add(name)
            if heading:
                base = slug(heading.group(1))
                count = seen.get(base, 0)
                seen[base] = count + 1
                found.add(base if count == 0 else f"{base}-{count}")
        anchors_of[path] = found
    return anchors_of[path]

def problem(source, target):
    target = target.strip("<>")
    if any(target.startswith(prefix) for prefix in allowed):
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith(("//", "www.")):
        return "links outside the repository (a web or other address); link a file of the repository"
    path, _, anchor = target.partition("#")
    path = unquote(path.split("?")[0])
    if path.startswith("/"):
        return "is an absolute path; use a path relative to this file"
    resolved = os.path.realpath(os.path.join(os.path.dirname(source), path)) if path else os.path.realpath(source)
    if resolved != root and not resolved.startswith(root + os.sep):
        return "points outside the repository"
    if not os.path.exists(resolved):
        return "names a file that does not exist"
    if anchor and resolved.endswith(".md") and os.path.isfile(resolved):
        if unquote(anchor).lower() not in anchors(os.path.relpath(resolved, root)):
            return f"names no heading #{anchor} of {os.path.relpath(resolved, root)}"
    return None

broken = 0
for source in sorted(files):
    for number, raw, line in prose(source):
        for span in CODE.finditer(raw):
            name = span.group(2).strip()
            beside = os.path.join(os.path.dirname(source), name)
            if MD_NAME.fullmatch(name) and not (os.path.isfile(beside) or os.path.isfile(name)):
                print(f"{source}:{number}: (`{name}`) names a Markdown file that is not in the repository")
                broken += 1
        targets = [m.group(1) for m in INLINE.finditer(line)]
        targets += [m.group(1) for m in REFDEF.finditer(line)]
        targets += [m.group(1) for m in AUTOLINK.finditer(line)]
        targets += [m.group(1) for m in HTML.finditer(line)]
        rest = HTML.sub("", AUTOLINK.sub("", INLINE.sub("", line)))
        targets += [m.group(0).rstrip(".,;:!?*_") for m in BARE.finditer(rest)]
        for target in targets:
            why = problem(source, target)
            if why:
                print(f"{source}:{number}: ({target}) {why}")
                broken += 1
if broken:
    print(f"{broken} broken link(s)", file=sys.stderr)
sys.exit(1 if broken else 0)
'
