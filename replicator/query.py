"""Reading results whose shape the query fixes.

psycopg types ``fetchone()`` as "a row or None" because it cannot know the query. An
aggregate, ``SHOW`` or a function call without FROM always returns exactly one row:
:func:`fetch_one` says so once, and callers unpack the row without checking for None.

No SQL is built here.
"""

from __future__ import annotations

from psycopg import AsyncCursor
from psycopg.rows import Row


async def fetch_one(cur: AsyncCursor[Row]) -> Row:
    """The row of a query that always returns one (an aggregate, ``SHOW``, a function)."""
    row = await cur.fetchone()
    assert row is not None, "the query always returns one row"
    return row
