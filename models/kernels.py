"""Compiled inner loops of online learning (numba), one per hot spot that a profile named.

A micro-batch of 256 events is a few hundred row reads and writes scattered over tables
of a million rows. Written as array operations, each step costs a dozen numpy/torch
calls of 3–10 µs of fixed overhead each, and a Python ``dict`` probe costs ~0.8 µs per
id (its cache misses are taken one at a time); together that was two thirds of a
learning step. These loops do the same work in one call each, release the GIL (the
streaming worker learns in a thread) and are checked against plain numpy/torch
versions in ``tests/test_models_kernels.py``. They compile on first use and are cached
next to this file (``cache=True``).
"""

from __future__ import annotations

import time

import numba
import numpy as np

#: Compiled once per signature, cached on disk, GIL released while running.
_compiled = numba.njit(cache=True, nogil=True)


# --- id table: fingerprints in an open-addressing table -------------------------------
@_compiled
def fingerprints(codes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``(n, 2)`` int64 fingerprints of ids given as ``(n, width)`` uint32 code points.

    Each half is a keyed multilinear hash ``Σ keys[j, h] · codes[:, j] mod 2⁶⁴`` (odd
    random keys, so ids differing in one character never collide); trailing zero code
    points (numpy's padding) add nothing, so the width of the batch does not matter.
    """
    n, width = codes.shape
    out = np.zeros((n, 2), dtype=np.uint64)
    for i in range(n):
        a = np.uint64(0)
        b = np.uint64(0)
        for j in range(width):
            c = np.uint64(codes[i, j])
            a += keys[j, 0] * c
            b += keys[j, 1] * c
        out[i, 0] = a
        out[i, 1] = b
    return out.view(np.int64)


@_compiled
def _slot(fp0: np.int64 | int, shift: int) -> np.int64:
    # the high bits of a multilinear hash are its well-mixed ones (multiply-shift)
    return np.int64(np.uint64(fp0) >> np.uint64(shift))


def empty_table(n_slots: int) -> np.ndarray:
    """An id table of ``n_slots`` (a power of two) free slots: rows ``-1``."""
    table = np.zeros((n_slots, 3), dtype=np.int64)
    table[:, 0] = -1
    return table


@_compiled
def table_find(table: np.ndarray, fps: np.ndarray, shift: int) -> np.ndarray:
    """Rows of fingerprints ``fps`` (``-1``: absent) by linear probing in ``table``.

    ``table`` is ``(slots, 3)`` int64: ``[row or -1, fingerprint[0], fingerprint[1]]``,
    so a probe reads the fingerprint next to the row (one memory miss per id).
    """
    mask = len(table) - 1
    out = np.empty(len(fps), dtype=np.int64)
    for i in range(len(fps)):
        s = _slot(fps[i, 0], shift)
        out[i] = -1
        while table[s, 0] >= 0:
            if table[s, 1] == fps[i, 0] and table[s, 2] == fps[i, 1]:
                out[i] = table[s, 0]
                break
            s = (s + 1) & mask
    return out


@_compiled
def table_rehash(old: np.ndarray, new: np.ndarray, shift: int) -> None:
    """Move every entry of ``old`` into the empty, larger ``new``."""
    mask = len(new) - 1
    for e in range(len(old)):
        if old[e, 0] < 0:
            continue
        s = _slot(old[e, 1], shift)
        while new[s, 0] >= 0:
            s = (s + 1) & mask
        new[s] = old[e]


@_compiled
def table_add(table: np.ndarray, fps: np.ndarray, rows: np.ndarray, n_rows: int,
              shift: int) -> np.ndarray:
    """Give rows to the ids still at ``-1`` in ``rows`` (in place), in order.

    Repeats within the batch get the row of their first occurrence. ``table`` must have
    room for every id being new. Returns the batch positions of the newly registered
    ids (their rows are ``n_rows, n_rows + 1, ...``).
    """
    mask = len(table) - 1
    firsts = np.empty(len(fps), dtype=np.int64)
    n_new = 0
    for i in range(len(fps)):
        if rows[i] >= 0:
            continue
        s = _slot(fps[i, 0], shift)
        while True:
            r = table[s, 0]
            if r < 0:  # new: take the next row
                r = n_rows + n_new
                table[s, 0] = r
                table[s, 1] = fps[i, 0]
                table[s, 2] = fps[i, 1]
                firsts[n_new] = i
                n_new += 1
                break
            if table[s, 1] == fps[i, 0] and table[s, 2] == fps[i, 1]:
                break  # registered earlier in this batch
            s = (s + 1) & mask
        rows[i] = r
    return firsts[:n_new]


# --- sparse row-wise Adagrad ----------------------------------------------------------
@_compiled
def group_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct rows in order of first appearance, group of each occurrence)``.

    A small open-addressing hash of the batch's rows: O(n), where a sort was the
    slowest part of a step.
    """
    n = len(rows)
    cap = 4
    while cap < 2 * n:
        cap *= 2
    mask = cap - 1
    keys = np.full(cap, -1, dtype=np.int64)
    slot_group = np.empty(cap, dtype=np.int64)
    distinct = np.empty(n, dtype=np.int64)
    group = np.empty(n, dtype=np.int64)
    n_groups = 0
    for i in range(n):
        r = rows[i]
        s = np.int64((np.uint64(r) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & mask
        while keys[s] >= 0 and keys[s] != r:
            s = (s + 1) & mask
        if keys[s] < 0:
            keys[s] = r
            slot_group[s] = n_groups
            distinct[n_groups] = r
            n_groups += 1
        group[i] = slot_group[s]
    return distinct[:n_groups], group


def rowwise_adagrad(weight: np.ndarray, accum: np.ndarray, rows: np.ndarray,
                    grads: np.ndarray, lr: float, decay: float, eps: float) -> None:
    """Row-wise Adagrad/RMSprop on ``rows`` (may repeat: their gradients are summed).

    For each distinct row ``r`` with summed gradient ``g``:
    ``accum[r] = decay·accum[r] + mean(g²)``; ``weight[r] -= lr·g / sqrt(accum[r] + eps²)``.

    ``weight`` is ``(R, dim)``, ``accum`` ``(R,)``, ``rows`` ``(n,)`` integers in
    ``[0, R)``, ``grads`` ``(n, dim)``. The shapes are checked here, before the compiled
    loop, because compiled code does not bounds-check: a ``grads`` narrower than
    ``weight`` or shorter than ``rows`` would read past its end instead of failing.

    >>> rowwise_adagrad(np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
    ...                 np.array([0, 1]), np.ones((2, 3), np.float32), 0.1, 1.0, 1e-8)
    Traceback (most recent call last):
    ...
    ValueError: rowwise_adagrad: grads has 3 columns, weight has 2
    """
    _check_ndim("rowwise_adagrad", weight=(weight, 2), accum=(accum, 1), rows=(rows, 1),
                grads=(grads, 2))
    _check_equal("rowwise_adagrad", ("accum", accum.shape[0], "rows"),
                 ("weight", weight.shape[0], ""))
    _check_equal("rowwise_adagrad", ("grads", grads.shape[0], "rows"),
                 ("rows", rows.shape[0], "entries"))
    _check_equal("rowwise_adagrad", ("grads", grads.shape[1], "columns"),
                 ("weight", weight.shape[1], ""))
    _rowwise_adagrad(weight, accum, rows, grads, lr, decay, eps)


def _check_ndim(kernel: str, **arrays: tuple[np.ndarray, int]) -> None:
    """Raise a ``ValueError`` naming the first argument whose dimensionality is wrong."""
    for name, (arr, ndim) in arrays.items():
        if arr.ndim != ndim:
            raise ValueError(f"{kernel}: {name} must be {ndim}-D, got shape {arr.shape}")


def _check_equal(kernel: str, got: tuple[str, int, str], want: tuple[str, int, str]) -> None:
    """Raise ``"<kernel>: <name> has <n> <unit>, <name> has <n>[ <unit>]"`` if they differ."""
    if got[1] != want[1]:
        raise ValueError(f"{kernel}: {got[0]} has {got[1]} {got[2]}, "
                         f"{want[0]} has {want[1]}{' ' + want[2] if want[2] else ''}")


@numba.njit(cache=True, nogil=True, fastmath=True)
def _rowwise_adagrad(weight: np.ndarray, accum: np.ndarray, rows: np.ndarray,
                     grads: np.ndarray, lr: float, decay: float, eps: float) -> None:
    """The loop of :func:`rowwise_adagrad` (shapes already checked)."""
    n, dim = grads.shape
    distinct, group = group_rows(rows)
    for r in distinct:  # compiled code does not bounds-check indexing
        if r < 0 or r >= len(accum):
            raise IndexError("rowwise_adagrad: row out of range")
    g = np.zeros((len(distinct), dim), dtype=np.float32)
    for i in range(n):
        k = group[i]
        for d in range(dim):
            g[k, d] += grads[i, d]
    _adagrad_rows(weight, accum, distinct, g, lr, decay, eps)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _adagrad_rows(weight: np.ndarray, accum: np.ndarray, distinct: np.ndarray,
                  g: np.ndarray, lr: float, decay: float, eps: float) -> None:
    """The update itself: row ``distinct[k]`` by its summed gradient ``g[k]``."""
    dim = g.shape[1]
    eps2 = np.float32(eps * eps)
    for k in range(len(distinct)):
        r = distinct[k]
        sq = np.float32(0.0)
        for d in range(dim):
            sq += g[k, d] * g[k, d]
        acc = np.float32(accum[r] * decay + sq / dim)
        accum[r] = acc
        scale = np.float32(lr / np.sqrt(acc + eps2))
        for d in range(dim):
            weight[r, d] -= scale * g[k, d]


def bag_adagrad(weight: np.ndarray, accum: np.ndarray, bags: np.ndarray,
                bag_w: np.ndarray, grads: np.ndarray, l2: np.ndarray, lr: float,
                decay: float, eps: float) -> None:
    """:func:`rowwise_adagrad` on the rows of weighted bags, with their L2 term.

    Entry ``(i, j)`` with ``bag_w[i, j] > 0`` is one occurrence of row ``bags[i, j]``,
    with gradient ``bag_w[i, j]·grads[i] + l2[i]·weight[bags[i, j]]`` (the weight as
    it was before this step); entries with ``bag_w[i, j] <= 0`` (empty history slots,
    unused token slots) are skipped. ``bags`` of shape ``(n, 1)`` with ``bag_w`` ones
    is a plain row update with L2.

    Why one kernel: a pooled tower (the two-tower query sums up to 20 history rows per
    event, an item sums its attribute tokens) otherwise costs a ``nonzero`` of the
    weights, four gathers of the pairs, a gather of the table rows for L2 and their
    products, per table and per step: at batch 256 the gather of ~5,000 history rows
    alone took longer than the GEMMs of the step.

    >>> bag_adagrad(np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
    ...             np.zeros((3, 2), np.int64), np.ones((3, 2), np.float32),
    ...             np.ones((3, 2), np.float32), np.zeros(2, np.float32), 0.1, 1.0, 1e-8)
    Traceback (most recent call last):
    ...
    ValueError: bag_adagrad: l2 has 2 entries, bags has 3 rows
    """
    _check_ndim("bag_adagrad", weight=(weight, 2), accum=(accum, 1), bags=(bags, 2),
                bag_w=(bag_w, 2), grads=(grads, 2), l2=(l2, 1))
    _check_equal("bag_adagrad", ("accum", accum.shape[0], "rows"),
                 ("weight", weight.shape[0], ""))
    _check_equal("bag_adagrad", ("bag_w", bag_w.shape[0], "rows"),
                 ("bags", bags.shape[0], "rows"))
    _check_equal("bag_adagrad", ("bag_w", bag_w.shape[1], "columns"),
                 ("bags", bags.shape[1], "columns"))
    _check_equal("bag_adagrad", ("grads", grads.shape[0], "rows"),
                 ("bags", bags.shape[0], "rows"))
    _check_equal("bag_adagrad", ("l2", l2.shape[0], "entries"),
                 ("bags", bags.shape[0], "rows"))
    _check_equal("bag_adagrad", ("grads", grads.shape[1], "columns"),
                 ("weight", weight.shape[1], ""))
    _bag_adagrad(weight, accum, bags, bag_w, grads, l2, lr, decay, eps)


@_compiled
def _bag_adagrad(weight: np.ndarray, accum: np.ndarray, bags: np.ndarray,
                 bag_w: np.ndarray, grads: np.ndarray, l2: np.ndarray, lr: float,
                 decay: float, eps: float) -> None:
    """The loop of :func:`bag_adagrad` (shapes already checked). Products and sums
    are rounded one by one (no ``fastmath``), as the torch expressions it replaces."""
    n, m = bags.shape
    dim = grads.shape[1]
    occ = np.empty(n * m, dtype=np.int64)
    src = np.empty(n * m, dtype=np.int64)
    occ_w = np.empty(n * m, dtype=np.float32)
    c = 0
    for i in range(n):
        for j in range(m):
            w = bag_w[i, j]
            if w > 0:
                r = np.int64(bags[i, j])
                if r < 0 or r >= len(accum):  # compiled code does not bounds-check
                    raise IndexError("bag_adagrad: row out of range")
                occ[c] = r
                src[c] = i
                occ_w[c] = w
                c += 1
    if c == 0:
        return
    distinct, group = group_rows(occ[:c])
    g = np.zeros((len(distinct), dim), dtype=np.float32)
    for o in range(c):
        k = group[o]
        i = src[o]
        r = occ[o]
        w = occ_w[o]
        lam = np.float32(l2[i])
        for d in range(dim):
            g[k, d] += w * grads[i, d] + lam * weight[r, d]
    _adagrad_rows(weight, accum, distinct, g, lr, decay, eps)


# --- recent history ring buffer -------------------------------------------------------
@_compiled
def ring_append_weighted(buf: np.ndarray, wbuf: np.ndarray, tbuf: np.ndarray,
                         count: np.ndarray, users: np.ndarray, items: np.ndarray,
                         weights: np.ndarray, types: np.ndarray) -> None:
    """Append ``items[j]`` (its event weight ``weights[j]`` and type code ``types[j]``)
    to the ring of ``users[j]``, in batch order."""
    size = buf.shape[1]
    if (wbuf.shape[0] < buf.shape[0] or wbuf.shape[1] != size or tbuf.shape[0] < buf.shape[0]
            or tbuf.shape[1] != size or len(weights) < len(users) or len(types) < len(users)
            or len(items) < len(users)):
        raise IndexError("ring_append_weighted: shapes do not match")
    for j in range(len(users)):
        u = users[j]
        if u < 0 or u >= len(count) or u >= buf.shape[0]:
            raise IndexError("ring_append_weighted: user row out of range")
        s = count[u] % size
        buf[u, s] = items[j]
        wbuf[u, s] = weights[j]
        tbuf[u, s] = types[j]
        count[u] += 1


@_compiled
def ring_contexts(size: int, n_users: int, users: np.ndarray, items: np.ndarray,
                  weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay a time-ordered log through empty rings of ``size``: for each event, the
    ring of its user *before* the event (rows, weights, ages; ``-1`` rows where empty).
    """
    n = len(users)
    buf = np.full((n_users, max(size, 1)), -1, dtype=np.int32)
    wbuf = np.ones((n_users, max(size, 1)), dtype=np.float32)
    count = np.zeros(n_users, dtype=np.int64)
    out_rows = np.full((n, size), -1, dtype=np.int32)
    out_w = np.ones((n, size), dtype=np.float32)
    out_age = np.zeros((n, size), dtype=np.int64)
    for j in range(n):
        u = users[j]
        if u < 0 or u >= n_users:
            raise IndexError("ring_contexts: user row out of range")
        c = count[u]
        for s in range(size):
            out_rows[j, s] = buf[u, s]
            out_w[j, s] = wbuf[u, s]
            out_age[j, s] = (c - 1 - s) % size
        if size > 0:
            buf[u, c % size] = items[j]
            wbuf[u, c % size] = weights[j]
        count[u] = c + 1
    return out_rows, out_w, out_age


# --- pooled rows (the towers' gathers) ------------------------------------------------
def pooled_rows(table: np.ndarray, rows: np.ndarray, pool: np.ndarray, bags: np.ndarray,
                bag_w: np.ndarray) -> np.ndarray:
    """``table[rows[i]] + Σ_j bag_w[i, j]·pool[bags[i, j]]`` for each ``i`` (float32).

    The forward of a pooled tower in one pass: the two-tower query (``U[user]`` plus
    the weighted history rows) and item vector (``E[item]`` plus the weighted attribute
    tokens). Entries with a zero weight (empty history slots, unused token slots) are
    not read, where ``index_select`` + ``embedding_bag`` + add read every slot and
    write two intermediate matrices. The bag is summed in slot order, then added to
    the row, as before.

    >>> pooled_rows(np.zeros((4, 2), np.float32), np.array([0, 1]),
    ...             np.zeros((3, 2), np.float32), np.zeros((2, 5), np.int64),
    ...             np.ones((2, 4), np.float32))
    Traceback (most recent call last):
    ...
    ValueError: pooled_rows: bag_w has 4 columns, bags has 5 columns
    """
    _check_ndim("pooled_rows", table=(table, 2), rows=(rows, 1), pool=(pool, 2),
                bags=(bags, 2), bag_w=(bag_w, 2))
    _check_equal("pooled_rows", ("pool", pool.shape[1], "columns"),
                 ("table", table.shape[1], ""))
    _check_equal("pooled_rows", ("bags", bags.shape[0], "rows"),
                 ("rows", rows.shape[0], "entries"))
    _check_equal("pooled_rows", ("bag_w", bag_w.shape[0], "rows"),
                 ("bags", bags.shape[0], "rows"))
    _check_equal("pooled_rows", ("bag_w", bag_w.shape[1], "columns"),
                 ("bags", bags.shape[1], "columns"))
    return _pooled_rows(table, rows, pool, bags, bag_w)


@_compiled
def _pooled_rows(table: np.ndarray, rows: np.ndarray, pool: np.ndarray, bags: np.ndarray,
                 bag_w: np.ndarray) -> np.ndarray:
    """The loop of :func:`pooled_rows` (shapes already checked)."""
    n, m = bags.shape
    dim = table.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    acc = np.empty(dim, dtype=np.float32)
    for i in range(n):
        r = rows[i]
        if r < 0 or r >= table.shape[0]:  # compiled code does not bounds-check
            raise IndexError("pooled_rows: row out of range")
        acc[:] = 0.0
        for j in range(m):
            w = np.float32(bag_w[i, j])
            if w == 0:
                continue
            b = bags[i, j]
            if b < 0 or b >= pool.shape[0]:
                raise IndexError("pooled_rows: bag row out of range")
            for d in range(dim):
                acc[d] += w * pool[b, d]
        for d in range(dim):
            out[i, d] = table[r, d] + acc[d]
    return out


# --- session pooling weights ----------------------------------------------------------
def session_weights(rows: np.ndarray, weights: np.ndarray, ages: np.ndarray,
                    exclude: np.ndarray, decay: np.ndarray, scale: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooling weights of history slots: ``(rows ≥ 0, int64)``, ``omega``, ``base``.

    ``base[i, j]`` is the event weight ``weights[i, j]`` of a filled slot whose row is
    not ``exclude[i]`` (the event's own positive; ``-1``: none), else 0;
    ``omega[i, j] = scale[i] · ω / Σ_j ω`` with ``ω = base[i, j] · decay[ages[i, j]]``
    (``decay[a]``: the recency weight of age ``a``, a table of ``size`` entries); empty
    slots' rows become 0 (their weight is 0). All float32, as the torch expressions
    this replaces (a dozen small ops and a float64 power per slot on every step).

    >>> session_weights(np.zeros((2, 3), np.int32), np.ones((2, 3), np.float32),
    ...                 np.zeros((2, 3), np.int64), np.full(2, -1), np.ones(2, np.float32),
    ...                 np.ones(2, np.float32))
    Traceback (most recent call last):
    ...
    ValueError: session_weights: decay has 2 entries, rows has 3 columns
    """
    _check_ndim("session_weights", rows=(rows, 2), weights=(weights, 2), ages=(ages, 2),
                exclude=(exclude, 1), decay=(decay, 1), scale=(scale, 1))
    for name, arr in (("weights", weights), ("ages", ages)):
        if arr.shape != rows.shape:
            raise ValueError(f"session_weights: {name} has shape {arr.shape}, rows has "
                             f"{rows.shape}")
    _check_equal("session_weights", ("exclude", exclude.shape[0], "entries"),
                 ("rows", rows.shape[0], "rows"))
    _check_equal("session_weights", ("scale", scale.shape[0], "entries"),
                 ("rows", rows.shape[0], "rows"))
    _check_equal("session_weights", ("decay", decay.shape[0], "entries"),
                 ("rows", rows.shape[1], "columns"))
    return _session_weights(rows, weights, ages, exclude, decay, scale)


@_compiled
def _session_weights(rows: np.ndarray, weights: np.ndarray, ages: np.ndarray,
                     exclude: np.ndarray, decay: np.ndarray, scale: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loop of :func:`session_weights` (shapes already checked)."""
    n, size = rows.shape
    hist = np.zeros((n, size), dtype=np.int64)
    omega = np.zeros((n, size), dtype=np.float32)
    base = np.zeros((n, size), dtype=np.float32)
    for i in range(n):
        total = np.float32(0.0)
        for j in range(size):
            r = np.int64(rows[i, j])
            if r < 0:
                continue
            hist[i, j] = r
            if r == exclude[i]:
                continue
            a = ages[i, j]
            if a < 0 or a >= size:  # compiled code does not bounds-check
                raise IndexError("session_weights: age out of range")
            b = np.float32(weights[i, j])
            base[i, j] = b
            o = np.float32(b * decay[a])
            omega[i, j] = o
            total += o
        total = max(total, np.float32(1e-12))
        for j in range(size):
            omega[i, j] = np.float32(omega[i, j] / total) * scale[i]
    return hist, omega, base


# --- live ring context ------------------------------------------------------------------
@_compiled
def ring_context(buf: np.ndarray, wbuf: np.ndarray, count: np.ndarray, users: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rings of ``users`` as they are: item rows, event weights and the age of each
    slot (``(count − 1 − slot) mod size``), in one pass instead of two fancy-indexing
    copies and an ``(n, size)`` int64 computation."""
    n = len(users)
    size = buf.shape[1]
    rows = np.empty((n, size), dtype=buf.dtype)
    w = np.empty((n, size), dtype=wbuf.dtype)
    ages = np.zeros((n, size), dtype=np.int64)
    if wbuf.shape[0] < buf.shape[0] or wbuf.shape[1] != size:
        raise IndexError("ring_context: shapes do not match")
    for i in range(n):
        u = users[i]
        if u < 0 or u >= buf.shape[0] or u >= len(count):
            raise IndexError("ring_context: user row out of range")
        if size == 0:
            continue
        newest = (count[u] - 1) % size  # one division per user, not per slot
        for s in range(size):
            rows[i, s] = buf[u, s]
            w[i, s] = wbuf[u, s]
            ages[i, s] = newest - s if s <= newest else newest - s + size
    return rows, w, ages


# --- accidental hits of shared negatives ----------------------------------------------
def mask_hits(logits: np.ndarray, neg_rows: np.ndarray, pos_rows: np.ndarray) -> None:
    """``logits[i, j] = -inf`` wherever negative ``j`` is event ``i``'s own positive.

    A shared negative that happens to be an event's positive item must not be pushed
    down for it; ``-inf`` drops it from that event's softmax. ``logits`` is
    ``(len(pos_rows), len(neg_rows))``; checked here because the compiled loop would
    write outside ``logits`` otherwise.

    >>> mask_hits(np.zeros((2, 3), np.float32), np.array([1, 2]), np.array([1, 5]))
    Traceback (most recent call last):
    ...
    ValueError: mask_hits: logits has 3 columns, neg_rows has 2 entries
    """
    _check_ndim("mask_hits", logits=(logits, 2), neg_rows=(neg_rows, 1),
                pos_rows=(pos_rows, 1))
    _check_equal("mask_hits", ("logits", logits.shape[0], "rows"),
                 ("pos_rows", pos_rows.shape[0], "entries"))
    _check_equal("mask_hits", ("logits", logits.shape[1], "columns"),
                 ("neg_rows", neg_rows.shape[0], "entries"))
    _mask_hits(logits, neg_rows, pos_rows)


@_compiled
def _mask_hits(logits: np.ndarray, neg_rows: np.ndarray, pos_rows: np.ndarray) -> None:
    """The loop of :func:`mask_hits` (shapes already checked)."""
    order = np.argsort(neg_rows)
    ranked = neg_rows[order]
    for i in range(len(pos_rows)):
        p = pos_rows[i]
        j = np.searchsorted(ranked, p)
        while j < len(ranked) and ranked[j] == p:
            logits[i, order[j]] = -np.inf
            j += 1


def warm_up() -> float:
    """Compile every kernel now (or load it from the cache); return the seconds it took.

    A long-running process calls this at start so the first events do not wait for the
    compiler (about 10 s with a cold cache, well under 1 s from the cache).
    """
    t0 = time.perf_counter()
    rows = np.array([0, 1, 0], dtype=np.int64)
    table = empty_table(8)
    fps = fingerprints(np.zeros((3, 2), dtype=np.uint32), np.ones((2, 2), dtype=np.uint64))
    found = table_find(table, fps, 61)
    table_add(table, fps, found, 0, 61)
    table_rehash(table, empty_table(16), 60)
    rowwise_adagrad(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), rows,
                    np.ones((3, 4), np.float32), 0.1, 1.0, 1e-8)
    bag_adagrad(np.zeros((2, 4), np.float32), np.zeros(2, np.float32),
                rows.reshape(3, 1), np.ones((3, 1), np.float32), np.ones((3, 4), np.float32),
                np.ones(3, np.float32), 0.1, 1.0, 1e-8)
    ring_append_weighted(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float32),
                         np.zeros((2, 2), np.int8), np.zeros(2, np.int64), rows,
                         np.zeros(3, np.int32), np.ones(3, np.float32), np.zeros(3, np.int8))
    ring_contexts(2, 2, rows, np.zeros(3, np.int32), np.ones(3, np.float32))
    mask_hits(np.zeros((3, 3), np.float32), rows, rows)
    pooled_rows(np.zeros((2, 4), np.float32), rows, np.zeros((2, 4), np.float32),
                rows.reshape(3, 1), np.ones((3, 1), np.float32))
    ring_context(np.zeros((2, 2), np.int32), np.ones((2, 2), np.float32),
                 np.zeros(2, np.int64), rows)
    session_weights(np.zeros((3, 2), np.int32), np.ones((3, 2), np.float32),
                    np.zeros((3, 2), np.int64), rows, np.ones(2, np.float32),
                    np.ones(3, np.float32))
    return time.perf_counter() - t0
