# Sourced by every call on the device machine: unpack the carried folders once per machine, set the environment.
S=$PWD/.gpu-state; mkdir -p $S
for f in .gpu-carry/*.t?z; do  # each carried archive once per machine (a later call may carry another)
  [ -f $S/.unpacked-${f##*/} ] || { tar xf $f -C $S && touch $S/.unpacked-${f##*/}; } || echo "UNPACK FAILED: $f"
done
export PYTHONPATH=$S/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
# python3 there is a virtual environment's: a symbolic link named python would lose its site-packages.
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python \
  && chmod +x /tmp/bin/python && export PATH=/tmp/bin:$PATH
echo "commit $(cat .gpu-carry/run/commit) on $(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u +%T)"
set +e
