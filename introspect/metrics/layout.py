"""Figure text that fits: titles wrapped and legends given as many columns as the figure's
width holds, measured on the drawn text, so nothing is clipped at the figure's edges."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

# Share of the figure's width that a title or legend may take (a margin on either side).
_WIDTH = 0.96


def _renderer(fig: Figure) -> Any:
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _fits(fig: Figure, artist: Artist, within: Artist | None = None) -> bool:
    renderer = _renderer(fig)
    room = within.get_window_extent(renderer).width if within is not None else fig.bbox.width
    return artist.get_window_extent(renderer).width <= _WIDTH * room


def fit_text(fig: Figure, text: Text, within: Artist | None = None) -> Text:
    """Fit ``text`` (a title or label of ``fig``) within the width of ``within`` (e.g. its
    axes; default: the figure): wrapped at spaces onto as few lines as needed, then in a
    smaller font (down to 5 pt) if one word is still too wide, then wrapped within words;
    returns it."""
    words = text.get_text()

    def wrap(width: int, *, split_words: bool) -> None:
        lines = [
            textwrap.fill(line, width, break_long_words=split_words, break_on_hyphens=False)
            for line in words.split("\n")
        ]
        text.set_text("\n".join(lines))

    width = max((len(line) for line in words.splitlines()), default=0)
    while width > 8 and not _fits(fig, text, within):
        width = int(width * 0.85)
        wrap(width, split_words=False)
    while text.get_fontsize() > 5 and not _fits(fig, text, within):
        text.set_fontsize(text.get_fontsize() - 0.5)
    width = max((len(line) for line in text.get_text().splitlines()), default=0)
    while width > 8 and not _fits(fig, text, within):
        width = int(width * 0.85)
        wrap(width, split_words=True)
    return text


def fit_suptitle(fig: Figure, title: str, **kwargs: Any) -> Text:
    """``fig.suptitle(title)``, wrapped to the figure's width."""
    return fit_text(fig, fig.suptitle(title, **kwargs))


def fit_legend(
    fig: Figure, handles: Sequence[Artist], labels: Sequence[str], **kwargs: Any
) -> Legend | None:
    """One legend below the panels (``loc="outside lower center"`` of a constrained layout)
    with as many columns, up to one per entry, as fit within the figure's width; None
    without entries."""
    if not labels:
        return None
    kwargs.setdefault("loc", "outside lower center")
    for ncol in range(len(labels), 0, -1):
        legend = fig.legend(handles, labels, ncol=ncol, **kwargs)
        if ncol == 1 or _fits(fig, legend):
            return legend
        legend.remove()
    return None  # unreachable: one column is always kept
