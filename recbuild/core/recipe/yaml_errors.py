"""YAML syntax errors in plain words, at the line the user must fix.

The parser reports where it gave up, in its own terms ("expected <block end>, but found
'<block mapping start>'"), and that is often not the line that is wrong: a block's indentation
is set by its first line, so a mis-indented first line shows up as an error at the next line
that is indented correctly. ``explain`` reads the recipe's text around the parser's mark and
says which line breaks the indentation (or which bracket or quote is not closed).
"""

from __future__ import annotations

def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _spaces(n: int) -> str:
    return f"{n} space{'s' if n != 1 else ''}"


def _block_lines(lines: list[str]) -> list[bool]:
    """Which lines take part in the block structure: not blank, not a comment, and not the
    continuation of a ``{...}`` or ``[...]`` opened on an earlier line (those may be indented at
    will). A rough scan: quotes only count where a value starts, as in YAML."""
    depth = 0
    quote = ""
    result = []
    for line in lines:
        stripped = line.strip()
        result.append(depth == 0 and not quote and bool(stripped) and not stripped.startswith("#"))
        previous = " "
        for char in line:
            if quote:
                if char == quote:
                    quote = ""
            elif char == "#" and previous in " \t":
                break
            elif char in "'\"" and previous in " \t[{,:":
                quote = char
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth = max(0, depth - 1)
            previous = char
        if quote == "'":  # a single-quoted scalar rarely spans lines in a recipe: an apostrophe
            quote = ""
    return result


class _Layout:
    def __init__(self, lines: list[str]):
        self.lines = lines
        self.block = _block_lines(lines)

    def indent(self, i: int) -> int:
        return _indent(self.lines[i])

    def before(self, i: int):
        return next((k for k in range(i - 1, -1, -1) if self.block[k]), None)

    def count_after(self, i: int, floor: int, width: int) -> int:
        """Block lines after ``i`` indented by ``width``, up to the first one at ``floor`` or less."""
        count = 0
        for k in range(i + 1, len(self.lines)):
            if self.block[k]:
                if self.indent(k) <= floor:
                    break
                count += self.indent(k) == width
        return count

    def odd_one(self, upper: int, lower: int) -> bool:
        """Whether ``upper`` (a line less indented than the ``lower`` one after it) is the line
        out of step: the block line before it, or most lines after ``lower``, are indented like
        ``lower``."""
        wanted = self.indent(lower)
        above = self.before(upper)
        if above is not None and self.indent(above) == wanted:
            return True
        floor = self.indent(above) if above is not None else -1
        return self.count_after(lower, floor, wanted) > self.count_after(lower, floor, self.indent(upper))


def _block_indentation(lay: _Layout, at: int) -> tuple[int, str] | None:
    """For line ``at`` (0-based) that is indented unlike its block: (line to fix, message)."""
    if not lay.block[at]:
        return None
    mine = lay.indent(at)
    parent = next((i for i in range(at - 1, -1, -1) if lay.block[i] and lay.indent(i) < mine), None)
    parent_indent = lay.indent(parent) if parent is not None else -1
    first = next((i for i in range((parent + 1) if parent is not None else 0, at + 1) if lay.block[i]), at)
    if first == at:
        if parent is None:
            return None
        if lay.odd_one(parent, at):
            return parent, (f"this line is indented by {_spaces(parent_indent)}, but the lines of its block "
                            f"around it (line {at + 1}) by {_spaces(mine)}; indent it like them")
        return at, (f"this line is indented under line {parent + 1}, which already has its value on that "
                    f"line; indent it like line {parent + 1}, or move it into that value")
    theirs = lay.indent(first)
    if theirs == mine:  # same indentation: a list item among keys, or a key among list items
        item = lay.lines[at].lstrip().startswith("-")
        return at, (f"this line is {'a list item (- ...)' if item else 'a key'} among "
                    f"{'keys' if item else 'list items (- ...)'} (from line {first + 1}); a block holds "
                    "one or the other: indent it further, or write it like the lines above it")
    above = sum(1 for i in range(first, at) if lay.block[i] and lay.indent(i) == theirs)
    below = 1 + lay.count_after(at, parent_indent, mine)
    if above < below:
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
    lay = _Layout(lines)
    at = min(mark.line, len(lines) - 1)
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    here = exc.context_mark
    if problem.startswith(("expected <block end>", "expected '<document start>'")):
        found = _block_indentation(lay, at)
        if found is not None:
            line, message = found
            return line + 1, _indent(lines[line]) + 1, message
    if problem == "mapping values are not allowed here":
        previous = lay.before(at) if lay.block[at] else None
        if previous is not None and lay.indent(at) > lay.indent(previous) \
                and ": " in lines[previous] and not lines[previous].rstrip().endswith(":"):
            if lay.odd_one(previous, at):
                return previous + 1, lay.indent(previous) + 1, (
                    f"this line is indented by {_spaces(lay.indent(previous))}, but the lines of its block "
                    f"around it (line {at + 1}) by {_spaces(lay.indent(at))}; indent it like them")
            return at + 1, lay.indent(at) + 1, (
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
