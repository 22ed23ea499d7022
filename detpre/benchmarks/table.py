"""One Markdown table formatter for every benchmark's rows (the tools print its result)."""

__all__ = ["markdown_table"]


def markdown_table(header, rows):
    """A Markdown table of ``rows`` (sequences of cells, ``str()``-ed) under ``header``."""
    rows = [[str(v) for v in r] for r in rows]
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows)]

    def line(r):
        return "| " + " | ".join(str(v).rjust(w) for v, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])
