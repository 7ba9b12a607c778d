"""prefcli: curate preference data for reward models and RLHF/DPO training.

Python API (the same stages as the CLI): `prefcli.run_stage(name, table_or_path, **options)` and
`prefcli.Pipeline.from_toml(path).run(workdir)`; see prefcli.api.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("prefcli")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"


def __getattr__(name: str):  # the API loads pyarrow and the stages only when first used
    if name in ("run_stage", "Pipeline"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
