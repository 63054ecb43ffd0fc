#!/usr/bin/env bash
# Quantization quality of one Hugging Face release, measured with ds3 itself: converts it
# to f32 (the reference), collects an importance matrix on CALIB.txt (in the background:
# the rows without it start at once), quantizes the f32 file to every mix and type with
# and without --imatrix, runs `ds3 kld` of each against the f32 file on EVAL.txt, and
# prints a markdown table like the ones in docs/quantization.md (plus the f32 model's
# perplexity on EVAL.txt).
#
#   scripts/quant_quality.sh MODEL_DIR EVAL.txt CALIB.txt [OUTDIR]
#   scripts/quant_quality.sh --table RESULTS.tsv [CTX [SCORE_FROM]]   (the table again, from results.tsv)
#
# Environment: DS3 (the binary; default build/bin/ds3), THREADS (-t; default 0 = all),
# KLD_DS3 (the binary of the kld runs; default DS3), KLD_ARGS (more arguments of every
# kld run, e.g. "--backend cuda"; a row whose own kld args name a --backend runs DS3 with
# them instead, and a row's own -t replaces THREADS), KLD_FALLBACK (types, e.g. "Q8_0",
# whose rows are measured again with DS3 on the CPU, -t FALLBACK_THREADS, when the kld
# run with KLD_DS3/KLD_ARGS fails other than by STOP),
# CTX (chunk length of kld and imatrix; default 512), SCORE_FROM (kld --score-from: the
# first SCORE_FROM positions of each chunk are context only, not scored; default 0 =
# every position; llama.cpp's perplexity --kl-divergence scores the second half, CTX/2),
# JOBS (measurements run at once, each with THREADS threads; default 1), TYPES
# (space-separated list; default every type of the tables), EXTRA (more rows:
# "LABEL|TYPE|quantize args|kld args;...", e.g. "Q8_0, f32 head|Q8_0|--tensor-type
# output\.weight=f32" or "Q8_0, second half scored|Q8_0||--score-from 256"; a row runs
# right after its TYPE's rows when TYPE is in TYPES, else at the end), PREP_THREADS
# (threads of the imatrix run; default THREADS), FP8_DIR (an FP8 release of the same
# weights: adds a row for `convert --outtype fp8`, which keeps its bytes), DEADLINE
# (seconds since the epoch: start no new measurement after it; the table then holds what
# finished), STOP (seconds since the epoch: every ds3 run still going then is stopped and
# its row left out, so the script ends by STOP plus a few seconds; no measurement starts
# when less time is left than 1.25 times the longest one so far took), REUSE=1 (keep OUTDIR's
# f32.gguf and imatrix.gguf from an earlier run), KEEP=1 (keep the quantized files),
# RESULTS / QQLOG (where results.tsv and log.txt go, default in OUTDIR). OUTDIR (default
# ./qq-out) gets f32.gguf, imatrix.gguf, results.tsv (one line per measurement, appended
# as it finishes; `backend` says where its kld ran), table.md and log.txt.
set -euo pipefail

# The table from a results.tsv: one row per label, the imatrix columns from its "yes" line.
# The header describes the rows scored with SCORE_FROM ($3); a row scored otherwise (an
# EXTRA row with its own --score-from) says so in its label.
table() {
    python3 - "$1" "$2" "${3:-0}" <<'EOF'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
ctx, sf = sys.argv[2], int(sys.argv[3])
order = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "q5_K", "q4_K", "q3_K", "iq4_xs", "q4_0", "fp8", "bf16", "f16"]
# Each type's extra rows (other labels) right after its own row.
plain = sorted((r for r in rows if r["imatrix"] == "no"),
               key=lambda r: (order.index(r["type"]) if r["type"] in order else len(order), r["label"] != r["type"]))
im = {r["label"]: r for r in rows if r["imatrix"] == "yes"}
scored = lambda k: ("every position of each chunk" if k == 0 else
                    f"positions {k}.. of each chunk, the first {k} context only (kld --score-from {k})")
backend = lambda r: r.get("backend") or "cpu"
main = [r for r in rows if int(r.get("score_from") or 0) == sf]
be = max(set(map(backend, rows)), key=[backend(r) for r in rows].count) if rows else "cpu"  # most rows'
if main:
    r0 = main[0]  # every line with the same scoring has the same reference
    n = int(r0["tokens"])
    print(f"f32 reference: perplexity {float(r0['ppl_ref']):.4f} on {n} scored tokens (chunks of {ctx}; scored: "
          f"{scored(sf)}); median gap between its two best logits {float(r0['margin']):.3f}; standard error of "
          f"top-1 at 99 %: {100 * math.sqrt(0.99 * 0.01 / n):.2f} %; kld on the {be} backend unless a row says "
          f"otherwise\n")
print("| type | bits/weight | size | mean KLD | 99% KLD | top-1 | ppl ratio | mean KLD, imatrix | 99% KLD, imatrix "
      "| top-1, imatrix | ppl ratio, imatrix |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in plain:
    i = im.get(r["label"])
    imc = (f"{float(i['kld_mean']):.6f} | {float(i['kld_p99']):.6f} | {100 * float(i['top1']):.2f}% | "
           f"{float(i['ppl_ratio']):.4f}") if i else "— | — | — | —"
    label, k = r["label"], int(r.get("score_from") or 0)
    if k != sf:
        label += f" [scored: {scored(k)}; {r['tokens']} tokens, reference ppl {float(r['ppl_ref']):.4f}]"
    if backend(r) != be:
        label += f" [kld on the {backend(r)} backend]"
    print(f"| {label} | {r['bits_per_weight']} | {r['mib']} MiB | {float(r['kld_mean']):.6f} | "
          f"{float(r['kld_p99']):.6f} | {100 * float(r['top1']):.2f}% | {float(r['ppl_ratio']):.4f} | {imc} |")
EOF
}

if [[ ${1:-} == --table ]]; then  # scripts/quant_quality.sh --table results.tsv [CTX [SCORE_FROM]]
    table "$2" "${3:-512}" "${4:-0}"
    exit 0
fi
if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 MODEL_DIR EVAL.txt CALIB.txt [OUTDIR]" >&2
    exit 2
fi
MODEL=$1
EVAL=$2
CALIB=$3
OUT=${4:-qq-out}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DS3=${DS3:-$HERE/build/bin/ds3}
THREADS=${THREADS:-0}
CTX=${CTX:-512}
SCORE_FROM=${SCORE_FROM:-0}
TYPES=${TYPES:-"Q8_0 Q6_K Q5_K_M Q4_K_M Q3_K_M Q2_K q5_K q4_K q3_K iq4_xs q4_0 fp8 bf16 f16"}
DEADLINE=${DEADLINE:-0}
STOP=${STOP:-0}
KLD_DS3=${KLD_DS3:-$DS3}
KLD_ARGS=${KLD_ARGS:-}
# The backend of the kld runs that take KLD_ARGS (what -- backend says there; cpu without one).
main_backend() {
    local a i
    read -ra a <<<"$1"
    for ((i = 0; i + 1 < ${#a[@]}; i++)); do
        if [[ ${a[i]} == --backend ]]; then echo "${a[i + 1]}"; return; fi
    done
    echo cpu
}
BACKEND=$(main_backend "$KLD_ARGS")

for f in "$MODEL/config.json" "$EVAL" "$CALIB"; do
    [[ -f $f ]] || { echo "quant_quality: $f: not found" >&2; exit 2; }
done
[[ -x $DS3 ]] || { echo "quant_quality: $DS3: not an executable (set DS3)" >&2; exit 2; }
[[ -x $KLD_DS3 ]] || { echo "quant_quality: $KLD_DS3: not an executable (set KLD_DS3)" >&2; exit 2; }
mkdir -p "$OUT"
LOG=${QQLOG:-$OUT/log.txt}
RES=${RESULTS:-$OUT/results.tsv}
: >"$LOG"
printf 'label\ttype\timatrix\tbits_per_weight\tmib\tkld_mean\tkld_p99\ttop1\tppl\tppl_ref\tppl_ratio\ttokens\tmargin\tscore_from\ttop1_se\tbackend\tseconds\n' >"$RES"

say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
# A command, stopped at STOP when that is set (and failing at once past it).
bounded() {
    if [[ $STOP -gt 0 ]]; then
        local left=$((STOP - $(date +%s)))
        [[ $left -gt 0 ]] || { say "STOP passed: not running $*"; return 124; }
        timeout -k 5 "$left" "$@"
    else
        "$@"
    fi
}
run() { say "\$ $*"; bounded "$@" >>"$LOG" 2>&1; }
# No new measurement after DEADLINE, nor when less time is left before STOP than the
# longest finished measurement on the main backend took plus a quarter (it would be
# stopped unfinished, and slow the running ones meanwhile; rows on another backend, e.g.
# a slow CPU cross-check, do not count).
late() {
    local now need
    now=$(date +%s)
    [[ $DEADLINE -gt 0 && $now -ge $DEADLINE ]] && return 0
    [[ $STOP -gt 0 ]] || return 1
    need=$(awk -F'\t' -v be="$BACKEND" 'NR > 1 && $(NF - 1) == be && $NF > m { m = $NF } END { print int(1.25 * m) }' "$RES")
    [[ $((STOP - now)) -le $need ]]
}

# bits/weight and MiB of a GGUF's tensor data (every tensor counted).
sizes() {
    "$DS3" inspect --json "$1" | python3 -c '
import json, sys, math
j = json.load(sys.stdin)
n = sum(math.prod(t["shape"]) for t in j["tensors"])
b = j["tensor_bytes"]
print(f"{8 * b / n:.2f}\t{b / 2**20:.1f}")'
}

# kld of $1 against the f32 file -> one results line (label, type, imatrix flag, more kld
# args: a --score-from there replaces SCORE_FROM, a -t THREADS, a --backend KLD_DS3 and
# KLD_ARGS).
measure() {
    local file=$1 label=$2 type=$3 im=$4 kargs=${5:-} t0 js vals line rc bin=$KLD_DS3 be=$BACKEND
    local sf=(--score-from "$SCORE_FROM") th=(-t "$THREADS") ka
    read -ra ka <<<"$KLD_ARGS"
    [[ " $kargs " == *" --score-from "* ]] && sf=()
    [[ " $kargs " == *" -t "* ]] && th=()
    if [[ " $kargs " == *" --backend "* ]]; then bin=$DS3 ka=() be=$(main_backend "$kargs"); fi
    t0=$(date +%s)
    say "kld $label (imatrix: $im${kargs:+; $kargs}; $be backend)"
    # shellcheck disable=SC2086
    js=$(bounded "$bin" kld -m "$file" --reference "$OUT/f32.gguf" -f "$EVAL" -c "$CTX" "${th[@]}" "${sf[@]}" \
        "${ka[@]}" $kargs --json 2>>"$LOG") && rc=0 || rc=$?
    if [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 && ${#ka[@]} -gt 0 && " ${KLD_FALLBACK:-} " == *" $type "* ]]; then
        say "kld $label (imatrix: $im) failed on the $be backend (exit $rc): again with $DS3 on the CPU"
        be="cpu (fallback)"
        # shellcheck disable=SC2086
        js=$(bounded "$DS3" kld -m "$file" --reference "$OUT/f32.gguf" -f "$EVAL" -c "$CTX" \
            -t "${FALLBACK_THREADS:-$THREADS}" "${sf[@]}" $kargs --json 2>>"$LOG") && rc=0 || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        say "kld $label (imatrix: $im) failed or was stopped (exit $rc): no row"
        return 0
    fi
    echo "$js" >>"$LOG"
    vals=$(echo "$js" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print("\t".join(str(j[k]) for k in ("kld_mean", "kld_p99", "top1_agreement", "ppl", "ppl_reference", "ppl_ratio",
                                      "tokens", "ref_top1_margin_median", "score_from", "top1_agreement_se")))')
    line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s' "$label" "$type" "$im" "$(sizes "$file")" "$vals" "$be" \
        "$(($(date +%s) - t0))")
    echo "$line" >>"$RES"
    say "$line"
}

T0=$(date +%s)
say "ds3: $("$DS3" version 2>&1 | head -1); model $MODEL; eval $EVAL ($(wc -c <"$EVAL") bytes); calib $CALIB ($(wc -c <"$CALIB") bytes); chunks of $CTX, scored from position $SCORE_FROM"
rm -f "$OUT/imatrix.done" "$OUT/imatrix.failed"
if [[ ${REUSE:-0} == 1 && -f $OUT/f32.gguf && -f $OUT/imatrix.gguf ]]; then
    say "REUSE=1: keeping $OUT/f32.gguf and $OUT/imatrix.gguf"
    touch "$OUT/imatrix.done"
else
    run "$DS3" convert "$MODEL" -o "$OUT/f32.gguf" --outtype f32 --no-progress
    # The imatrix in the background: the rows that do not use it need not wait.
    { if run "$DS3" imatrix -m "$OUT/f32.gguf" -f "$CALIB" -o "$OUT/imatrix.gguf" -c "$CTX" \
        -t "${PREP_THREADS:-$THREADS}"; then touch "$OUT/imatrix.done"; else touch "$OUT/imatrix.failed"; fi; } &
fi
# Waits for the background imatrix; fails when it failed.
imatrix_ready() {
    while [[ ! -f $OUT/imatrix.done ]]; do
        [[ -f $OUT/imatrix.failed ]] && { say "no imatrix: its rows are left out"; return 1; }
        sleep 1
    done
}

# Types whose quantisers use importance (the float types, q8_0 and fp8 ignore it).
weighted() { case $1 in Q8_0 | fp8 | bf16 | f16 | f32) return 1 ;; *) return 0 ;; esac; }

# One measurement (T|no, T|yes: with the imatrix, extra|LABEL|TYPE|ARGS|KLD ARGS, release-fp8|):
# quantize (or convert, for the FP8 release) then kld; the file is removed after unless
# KEEP=1.
job() {
    local t im label args kargs q
    IFS='|' read -r t im label args kargs <<<"$1"
    if [[ $t == release-fp8 ]]; then
        q=$OUT/fp8-release.gguf
        run "$DS3" convert "$FP8_DIR" -o "$q" --outtype fp8 --no-progress || return 0
        measure "$q" "fp8 (the release's FP8, convert --outtype fp8)" fp8 no
    elif [[ $t == extra ]]; then
        q=$OUT/q-extra-$BASHPID.gguf
        set -f  # ARGS are words (--tensor-type REGEX=TYPE ...), never globs
        # shellcheck disable=SC2086
        run "$DS3" quantize "$OUT/f32.gguf" "$q" "$label" $args -t "$THREADS" --no-progress -v || return 0
        measure "$q" "$im" "$label" no "$kargs"
    elif [[ $im == yes ]]; then
        q=$OUT/q-$t-im.gguf
        imatrix_ready || return 0
        run "$DS3" quantize "$OUT/f32.gguf" "$q" "$t" --imatrix "$OUT/imatrix.gguf" -t "$THREADS" --no-progress ||
            return 0
        measure "$q" "$t" "$t" yes
    else
        q=$OUT/q-$t.gguf
        run "$DS3" quantize "$OUT/f32.gguf" "$q" "$t" -t "$THREADS" --no-progress -v || return 0
        measure "$q" "$t" "$t" no
    fi
    [[ ${KEEP:-0} == 1 ]] || rm -f "$q"
}

# The measurements in order, JOBS at a time (small models scale poorly over many
# threads: several kld runs of THREADS each use the cores better than one).
extras=()
if [[ -n ${EXTRA:-} ]]; then IFS=';' read -ra extras <<<"$EXTRA"; fi
# EXTRA rows of TYPE: right after TYPE's own rows when TYPE is measured, else at the end.
extras_of() {
    local e label type args kargs
    for e in "${extras[@]}"; do
        IFS='|' read -r label type args kargs <<<"$e"
        if [[ $type == "$1" ]]; then todo+=("extra|$label|$type|$args|$kargs"); fi
    done
}
todo=()
for t in $TYPES; do
    todo+=("$t|no")
    if weighted "$t"; then todo+=("$t|yes"); fi
    extras_of "$t"
done
for e in "${extras[@]}"; do
    IFS='|' read -r label type args kargs <<<"$e"
    if [[ " $TYPES " != *" $type "* ]]; then todo+=("extra|$label|$type|$args|$kargs"); fi
done
[[ -n ${FP8_DIR:-} ]] && todo+=("release-fp8|")
for m in "${todo[@]}"; do
    while [[ $(jobs -rp | wc -l) -ge ${JOBS:-1} ]]; do wait -n || true; done
    if late; then say "deadline: skipping '$m' and the rest"; break; fi
    job "$m" &
done
wait

table "$RES" "$CTX" "$SCORE_FROM" >"$OUT/table.md"
cat "$OUT/table.md"
say "done in $(($(date +%s) - T0)) s"
