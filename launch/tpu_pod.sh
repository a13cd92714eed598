#!/usr/bin/env bash
# Run cai.main on every worker of a Cloud TPU VM slice (single- or multi-host).
#
#   launch/tpu_pod.sh --name=cai-gemma --zone=us-west4-a --accelerator=v5litepod-16 \
#     --version=v2-alpha-tpuv5-lite -- --config=experiments/gemma_2b_rlcai_tpu.py \
#     --workdir=gs://BUCKET/runs/gemma_2b
#
# Creates the TPU VM unless it exists, copies this checkout to every worker, installs it, runs
# `python3 -m cai.main <args after --> --config.distributed=True` on all workers at once and
# streams their output here (also saved under --log_dir).
# Every flag is documented in README.md, section "TPU pods and GPUs".
set -euo pipefail

name="" zone="" accelerator="" version="" project="" spot=0 echo_only=0 setup=1 run=1
install='python3 -m pip install -U "jax[tpu]" && python3 -m pip install -e ".[hf]"'
log_dir="" delete_after=0 remote_dir="cai"
usage() { sed -n '2,11p' "$0"; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --spot) spot=1 ;;
    --install=*) install="${1#*=}" ;;
    --remote_dir=*) remote_dir="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --no_setup) setup=0 ;;
    --setup_only) run=0 ;;
    --delete_after) delete_after=1 ;;
    --echo) echo_only=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown flag $1 (cai.main arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$name" && -n "$zone" ]] || { echo "error: --name and --zone are required" >&2; exit 2; }
if [[ $run -eq 1 && $# -eq 0 ]]; then
  echo "error: give cai.main arguments after -- (e.g. -- --config=experiments/X.py)" >&2; exit 2
fi
log_dir="${log_dir:-runs/logs/$name}"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# Run (or with --echo, print) one command; printf %q keeps every argument one word.
step() {
  if [[ $echo_only -eq 1 ]]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
on_all() { step "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"; }

if [[ $setup -eq 1 ]]; then
  if [[ $echo_only -eq 1 ]] || ! "${gcloud_tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
    [[ -n "$accelerator" && -n "$version" ]] || {
      echo "error: creating $name needs --accelerator and --version" >&2; exit 2; }
    create=("${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator"
            --version="$version")
    [[ $spot -eq 1 ]] && create+=(--spot)
    step "${create[@]}"
  fi
  archive="$(mktemp -u /tmp/cai-code-XXXXXX).tgz"
  step tar czf "$archive" --exclude=.git --exclude=runs --exclude=workdir --exclude='*.egg-info' \
    --exclude=__pycache__ -C "$(cd "$(dirname "$0")/.." && pwd)" .
  step "${gcloud_tpu[@]}" scp "$archive" "$name:cai-code.tgz" "${where[@]}" --worker=all
  on_all "mkdir -p ~/$remote_dir && tar xzf ~/cai-code.tgz -C ~/$remote_dir && cd ~/$remote_dir && $install"
fi

if [[ $run -eq 1 ]]; then
  args=$(printf ' %q' "$@")
  cmd="cd ~/$remote_dir && python3 -m cai.main$args --config.distributed=True"
  if [[ $echo_only -eq 1 ]]; then
    on_all "$cmd"
  else
    mkdir -p "$log_dir"
    log="$log_dir/$(date +%Y%m%d-%H%M%S).log"
    echo "streaming all workers' output to $log"
    on_all "$cmd" 2>&1 | tee "$log"
  fi
fi

if [[ $delete_after -eq 1 ]]; then
  step "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
fi
