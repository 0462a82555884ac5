"""Stopping a fit at a chosen batch, as a kill would (the resume tests' one helper)."""


class Interrupted(Exception):
    pass


def interrupt_after(n_batches):
    """A progress callback that raises :class:`Interrupted` at the ``n_batches``-th batch."""
    seen = []

    def progress(name, done, total):
        seen.append(name)
        if len(seen) == n_batches:
            raise Interrupted(name)

    return progress
