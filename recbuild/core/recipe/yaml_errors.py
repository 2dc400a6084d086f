"""YAML syntax errors in plain words, at the line the user must fix.

The parser reports where it gave up, in its own terms ("expected <block end>, but found
'<block mapping start>'"), and that is often not the line that is wrong: a block's indentation
is set by its first line, so a mis-indented first line shows up as an error at the next line
that is indented correctly. ``explain`` reads the recipe's text around the parser's mark and
says which line breaks the indentation (or which bracket or quote is not closed).
"""

from __future__ import annotations

from collections import Counter


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _spaces(n: int) -> str:
    return f"{n} space{'s' if n != 1 else ''}"


def _usual_step(lines: list[str]) -> int:
    """The indentation step the file uses most (2 in most recipes)."""
    steps: Counter = Counter()
    previous = 0
    for line in lines:
        if _is_content(line):
            delta = _indent(line) - previous
            if delta > 0:
                steps[delta] += 1
            previous = _indent(line)
    return steps.most_common(1)[0][0] if steps else 2


def _block_indentation(lines: list[str], at: int) -> tuple[int, str] | None:
    """For line ``at`` (0-based) that is indented unlike its block: (line to fix, message)."""
    mine = _indent(lines[at])
    parent = next((i for i in range(at - 1, -1, -1) if _is_content(lines[i]) and _indent(lines[i]) < mine), None)
    parent_indent = _indent(lines[parent]) if parent is not None else -1
    first = next((i for i in range((parent + 1) if parent is not None else 0, at + 1) if _is_content(lines[i])), at)
    if first == at:
        if parent is None:
            return None
        return at, (f"this line is indented under line {parent + 1}, which already has its value on that "
                    f"line; indent it like line {parent + 1}, or move it into that value")
    theirs = _indent(lines[first])
    if theirs == mine:  # same indentation: a list item among keys, or a key among list items
        item = lines[at].lstrip().startswith("-")
        return at, (f"this line is {'a list item (- ...)' if item else 'a key'} among "
                    f"{'keys' if item else 'list items (- ...)'} (from line {first + 1}); a block holds "
                    "one or the other: indent it further, or write it like the lines above it")
    above = sum(1 for i in range(first, at) if _is_content(lines[i]) and _indent(lines[i]) == theirs)
    below = 0
    for line in lines[at:]:
        if _is_content(line):
            if _indent(line) <= parent_indent:
                break
            below += _indent(line) == mine
    step = _usual_step(lines)
    if above < below or (above == below and mine - parent_indent == step and theirs - parent_indent != step):
        return first, (f"this line is indented by {_spaces(theirs)}, but the rest of its block (from line "
                       f"{at + 1}) by {_spaces(mine)}; indent the lines of one block alike")
    return at, (f"this line is indented by {_spaces(mine)}, but the lines above it in the same block "
                f"(from line {first + 1}) by {_spaces(theirs)}; indent the lines of one block alike")


def explain(exc, text: str) -> tuple[int, int, str] | None:
    """(line, column, message), 1-based, for a MarkedYAMLError with a mark; None when the
    parser's own words are the best there is."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return None
    lines = text.splitlines() or [""]
    at = min(mark.line, len(lines) - 1)
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    here = exc.context_mark
    if problem.startswith(("expected <block end>", "expected '<document start>'")):
        found = _block_indentation(lines, at)
        if found is not None:
            line, message = found
            return line + 1, _indent(lines[line]) + 1, message
    if problem == "mapping values are not allowed here":
        previous = next((i for i in range(at - 1, -1, -1) if _is_content(lines[i])), None)
        if previous is not None and _indent(lines[at]) > _indent(lines[previous]) \
                and ": " in lines[previous] and not lines[previous].rstrip().endswith(":"):
            return at + 1, _indent(lines[at]) + 1, (
                f"this line is indented further than line {previous + 1}, so YAML reads it as the rest of "
                f"that line's value; indent it like line {previous + 1}")
        return mark.line + 1, mark.column + 1, ("a ': ' inside a value; put the value in quotes "
                                                "(\"...\"), or start a new line for a new key")
    if "found character '\\t'" in problem:
        return mark.line + 1, mark.column + 1, "a tab character: YAML indents with spaces only"
    if context.startswith("while parsing a flow") and here is not None:
        closer = "}" if "mapping" in context else "]"
        opener = "{" if closer == "}" else "["
        return here.line + 1, here.column + 1, (f"the '{opener}' here is not closed: end it with "
                                                f"'{closer}' on this line, or go on after a ','")
    if context.startswith("while scanning a") and "quoted scalar" in context and here is not None:
        return here.line + 1, here.column + 1, "the quote here is never closed: add the closing quote"
    if problem.startswith("found unknown escape character"):
        return mark.line + 1, mark.column + 1, ("an unknown escape (\\) in a double-quoted string: write "
                                                "\\\\ for a backslash, or use single quotes")
    return None
