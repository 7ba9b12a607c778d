"""`prefcli run`: pipeline files (spec), the run manifest (manifest) and the engine that runs stages (runner)."""

from .manifest import MANIFEST, MANIFEST_FORMAT, Fingerprints, load_manifest, package_versions, stage_key
from .runner import (LOCK, OUTCOME_COLUMNS, RunResult, Runner, StageFailed, StageOptions, StageOutcome, highlights,
                     summary_payload)
from .spec import Pipeline, StageSpec, inside_stage_dir, load_pipeline

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "Fingerprints", "load_manifest", "package_versions", "stage_key", "LOCK",
           "OUTCOME_COLUMNS", "RunResult", "Runner", "StageFailed", "StageOptions", "StageOutcome", "highlights",
           "summary_payload", "Pipeline", "StageSpec", "inside_stage_dir", "load_pipeline"]
