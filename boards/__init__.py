"""zeroskip.boards: synthesis reports, board tops and bitstreams, and the UART host link.

The registry of the boards zeroskip builds for: :func:`boards` (by name) and :func:`get_board`.
Each board module (``icebreaker.py``, ``ulx3s.py``) defines its
:class:`~zeroskip.boards.board.Board` from the board top of ``board.py`` and the PLL settings of
``pll.py``.

The registry imports the board modules when it is called, not when this package loads: so the
build runner in ``board.py`` can look a board up by name while the board modules import
``board.py``, and the host side (:mod:`zeroskip.host`, through :mod:`zeroskip.boards.protocol`)
loads this package without Amaranth or the board platforms.
"""

from __future__ import annotations

from ..errors import ZeroskipError

__all__ = ["boards", "get_board"]


def boards():
    """The boards zeroskip builds for: :class:`~zeroskip.boards.board.Board` by name."""
    from .icebreaker import ICEBREAKER
    from .ulx3s import ULX3S

    return {board.name: board for board in (ICEBREAKER, ULX3S)}


def get_board(name):
    """The :class:`~zeroskip.boards.board.Board` called ``name``.

    Raises
    ------
    ZeroskipError
        If no board has that name; the message names the ``--board`` option and the known ones.
    """
    known = boards()
    if name not in known:
        raise ZeroskipError(f"--board: unknown board {name!r}; known: {', '.join(known)}")
    return known[name]
