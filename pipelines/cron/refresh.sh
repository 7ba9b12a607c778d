#!/usr/bin/env bash
# Nightly refresh of a curated preference set: `prefcli run` under cron, with a lock, logs and exit codes.
#
# Install (crontab -e); cron mails whatever this prints, and it prints only on failure:
#
#   MAILTO=data-team@example.com
#   15 2 * * *  /opt/prefcli/pipelines/cron/refresh.sh /opt/prefcli/pipelines/default.toml /var/lib/prefcli/nightly
#
# Drop new raw files where the pipeline's ingest `inputs` point; the run re-does only what changed
# (unchanged stages are skipped, embeddings and RM scores come from <workdir>/cache).
#
# Exit codes: 0 ok (also: the previous cron refresh is still running, so this one is skipped and logged);
# 1 a stage reported problems (e.g. --max-reject-rate); 2 bad input or pipeline file; 3 a manual
# `prefcli run` held the workdir for longer than WAIT_TIMEOUT; anything else: a crash (see the log).
# Outputs of the last good run stay in place whatever happens; the next run resumes.
#
# Environment: PREFCLI (the prefcli executable), WAIT_TIMEOUT (seconds, default 3600),
# LOG_DIR (default WORKDIR/logs), KEEP_LOGS (runs of logs kept, default 30).
set -uo pipefail

usage="usage: refresh.sh PIPELINE.toml WORKDIR"
PIPELINE=${1:?$usage}
WORKDIR=${2:?$usage}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z "${PREFCLI:-}" ]]; then
  if [[ -x "$here/.venv/bin/prefcli" ]]; then PREFCLI="$here/.venv/bin/prefcli"; else PREFCLI=prefcli; fi
fi
LOG_DIR=${LOG_DIR:-$WORKDIR/logs}
KEEP_LOGS=${KEEP_LOGS:-30}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-3600}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

mkdir -p "$WORKDIR" "$LOG_DIR"
history="$LOG_DIR/refresh.log"
log="$LOG_DIR/refresh-$(date +%Y%m%dT%H%M%S)"

# One cron refresh at a time: a run still going when the next one fires is left alone.
# (A separate file from prefcli's own run.lock, which manual runs take too.)
exec 9>"$WORKDIR/cron.lock"
if ! flock -n 9; then
  echo "$(date -Is) skipped: the previous refresh is still running" >>"$history"
  exit 0
fi

start=$(date +%s)
"$PREFCLI" run "$PIPELINE" --workdir "$WORKDIR" --wait --wait-timeout "$WAIT_TIMEOUT" --json \
  >"$log.json" 2>"$log.err"
code=$?
case $code in
  0) status=ok ;;
  1) status="problems reported" ;;
  2) status="bad input" ;;
  3) status="workdir locked by another run" ;;
  *) status="failed" ;;
esac
echo "$(date -Is) exit=$code status=\"$status\" seconds=$(($(date +%s) - start)) summary=$log.json" >>"$history"

# Keep the newest KEEP_LOGS runs' logs.
ls -1t "$LOG_DIR"/refresh-*.json 2>/dev/null | tail -n +$((KEEP_LOGS + 1)) | while read -r old; do
  rm -f -- "$old" "${old%.json}.err"
done

if [[ $code -ne 0 ]]; then
  echo "prefcli refresh of $PIPELINE in $WORKDIR: $status (exit $code)" >&2
  cat "$log.err" >&2
fi
exit $code
