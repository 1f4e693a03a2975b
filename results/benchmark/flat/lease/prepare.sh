#!/usr/bin/env bash
# Builds .gpu-carry/ (ignored by git) for the device machine's calls: the packages the GPU image lacks, the data,
# Zephyr's tokenizer, the SmolLM2 GGUF in three parts and these scripts. Run from the repository root:
#   bash results/benchmark/flat/lease/prepare.sh            # about 2 minutes; needs ../shared and `pip install -e .`
set -euo pipefail
shared=${ZEPHYR_SHARED_DIR:-../shared}
carry=.gpu-carry tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p $carry/run
[ -f $carry/site.txz ] || { bash $shared/offline-gpu/make_site.sh $tmp/site >/dev/null && tar cJf $carry/site.txz -C $tmp site; }
mkdir -p $tmp/all $tmp/ng/data/newsgroups
cp -r $shared/data $tmp/all/ && chmod -R u+w $tmp/all && rm -f $tmp/all/data/samsum/licence.txt
tar czf $carry/data.tgz -C $tmp/all data                                  # every split: the quality benchmark
cp $shared/data/newsgroups/train.jsonl $tmp/ng/data/newsgroups/
tar czf $carry/data-ng.tgz -C $tmp/ng data                                # Newsgroups' training rows: the benchmark
python -c "from zephyr.embedded import build_zephyr_tokenizer as b; b('$tmp/tok/zephyr-tokenizer')"
# The flat tests build Zephyr's tokenizer from mistral-common's file; the GPU image lacks the package. Version 0.0.0,
# below what transformers accepts, so that transformers never takes the stub for the real package.
mc=$(python -c "import mistral_common, os; print(os.path.dirname(mistral_common.__file__))")
mkdir -p $tmp/tok/stub/mistral_common/data && cp $mc/data/tokenizer.model.v1 $tmp/tok/stub/mistral_common/data/
echo '__version__ = "0.0.0"' > $tmp/tok/stub/mistral_common/__init__.py
tar czf $carry/tok.tgz -C $tmp/tok zephyr-tokenizer stub
# Finished quality runs that a call B takes up (PRIOR=1): their records, so that only the further seeds train
prior=results/quality/flat-split-45b04fe/runs
mkdir -p $tmp/prior/quality && for run in $prior/ng_*_seed*; do
  mkdir -p $tmp/prior/quality/${run##*/} && cp $run/{config,metrics,train_metrics}.json $tmp/prior/quality/${run##*/}/
done
tar czf $carry/prior-runs.tgz -C $tmp/prior quality
rm -f $carry/gguf0*
split -b 36000000 -d $shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf $carry/gguf
cp "$(dirname "$0")"/*.sh $carry/run/ && rm $carry/run/prepare.sh && cp results/smollm2/run_study_tables.sh $carry/run/
git rev-parse --short HEAD > $carry/run/commit
ls -la $carry
