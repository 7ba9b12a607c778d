"""Execution engines for prefcli's stages. `local` is the in-process default (prefcli/stages);
`ray` (prefcli.engines.ray_*) runs the same algorithms over Ray Data datasets.

Ray is an optional extra: nothing here imports it until a Ray function is called, and a missing
install is a one-line error with the pip hint.
"""

from __future__ import annotations

from ..errors import InputError

RAY_HINT = "pip install 'prefcli[ray]'"


def require_ray():
    """The `ray` module with `ray.data` loaded, or a one-line InputError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"the ray engine needs Ray Data, which is not installed: {RAY_HINT}") from None
    return ray
