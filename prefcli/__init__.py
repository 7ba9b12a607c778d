"""prefcli: curate preference data for reward models and RLHF/DPO training."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("prefcli")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"
