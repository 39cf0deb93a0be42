"""Merkle trees as RFC 6962 (Certificate Transparency) defines them: leaves are hashed with the
prefix 0x00 by the caller, inner nodes are H(0x01 || left || right), and a tree of n leaves splits
at the largest power of two below n. Audit paths prove one leaf's membership."""

import hashlib
from collections.abc import Sequence

NODE_PREFIX = b"\x01"


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The tree head of leaf hashes; the empty tree's head is H("")."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # Bottom-up over the same shape RFC 6962 defines top-down: pair neighbours left to right and
    # carry an odd last node up unchanged.
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root (RFC 6962 section 2.1.1)."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*audit_path(leaves[:k], index), root(leaves[k:])]
    return [*audit_path(leaves[k:], index - k), root(leaves[:k])]


def audit_paths(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every leaf's audit path at once, from the tree's levels built once (an export proves
    every leaf of a seal: calling audit_path for each would hash the tree once per leaf)."""
    paths: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))  # each leaf's node index on the current level
    level = list(leaves)
    while len(level) > 1:
        for leaf, position in enumerate(positions):
            sibling = position ^ 1
            if sibling < len(level):  # the odd last node is carried up: no sibling on this level
                paths[leaf].append(level[sibling])
            positions[leaf] = position >> 1
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return paths


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root an audit path leads to (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            raise ValueError("audit path longer than the tree")
        if fn % 2 == 1 or fn == sn:
            node = _node(sibling, node)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = _node(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("audit path shorter than the tree")
    return node
