#!/usr/bin/env bash
# Run cai.main on the GPUs of one host, or on several hosts under Slurm or Open MPI.
#
#   launch/gpu.sh -- --config=experiments/pretrain.py --workdir=runs/gpu          # all local GPUs
#   launch/gpu.sh --gpus=0,1 -- --config=...                                      # some of them
#   launch/gpu.sh --launcher=srun --nodes=4 -- --config=... --workdir=/shared/run  # Slurm
#   launch/gpu.sh --launcher=mpirun --hosts=h1,h2 -- --config=...                  # Open MPI
#
# One process per host drives all of that host's GPUs; with several hosts, jax.distributed
# discovers the others from the Slurm / Open MPI environment (--config.distributed=True is added).
# Every flag: README.md, "TPU pods and GPUs".
set -euo pipefail

launcher=local gpus="" nodes=1 hosts="" install=0 echo_only=0 mem_fraction=0.9
usage() { sed -n '2,12p' "$0"; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --launcher=*) launcher="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --nodes=*) nodes="${1#*=}" ;;
    --hosts=*) hosts="${1#*=}" ;;
    --mem_fraction=*) mem_fraction="${1#*=}" ;;
    --install) install=1 ;;
    --echo) echo_only=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown flag $1 (cai.main arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "error: give cai.main arguments after --" >&2; exit 2; }

step() {
  if [[ $echo_only -eq 1 ]]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

cd "$(dirname "$0")/.."
if [[ $install -eq 1 ]]; then
  step python -m pip install -U "jax[cuda12]"
  step python -m pip install -e ".[hf]"
fi

env_vars=(XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction")
[[ -n "$gpus" ]] && env_vars+=(CUDA_VISIBLE_DEVICES="$gpus")
main=(python -m cai.main "$@")
case "$launcher" in
  local)
    step env "${env_vars[@]}" "${main[@]}" ;;
  srun)
    step srun --nodes="$nodes" --ntasks-per-node=1 env "${env_vars[@]}" "${main[@]}" \
      --config.distributed=True ;;
  mpirun)
    [[ -n "$hosts" ]] || { echo "error: --launcher=mpirun needs --hosts=h1,h2,..." >&2; exit 2; }
    n=$(tr ',' '\n' <<<"$hosts" | grep -c .)
    step mpirun -np "$n" --host "$hosts" -x XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction" \
      ${gpus:+-x CUDA_VISIBLE_DEVICES="$gpus"} "${main[@]}" --config.distributed=True ;;
  *) echo "error: --launcher=$launcher: expected local, srun or mpirun" >&2; exit 2 ;;
esac
