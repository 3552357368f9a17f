#!/usr/bin/env bash
# The gpu-marked tests (`pytest -m gpu`) in groups that fit one device call, each group one pytest
# process under its own time limit, verbose, so a slow or hung test is named. From the repo root,
# where Transformer Engine and megatron-core import (on a node where they were unpacked into
# /tmp/site, `export PYTHONPATH=/tmp/site:$PWD` first):
#
#   bash benchmarks/gpu_tests.sh                    # the one-GPU tests (GPUS=1), cheapest group first
#   GPUS=2 bash benchmarks/gpu_tests.sh             # the tests that need 2 GPUs (GPUS=4: 4 GPUs)
#   ONLY="cuda_graph train_1gpu" bash benchmarks/gpu_tests.sh   # these groups only (any GPUS)
#
# Writes to $OUT (default: gpu_test_out in the repo root): gpu_tests.log (pytest -v -rsfE
# --durations=0 of every group, test names printed as they start), junit.xml (every group's testsuite; a group stopped by
# its limit adds a failed testcase naming the test that was running, one stopped by the budget a skipped one),
# summary.txt (also printed).
# Environment: PYTHON (default python), BUDGET_S (the whole script, default 540 s of a device call's
# 600), LIMIT_S (caps every group's limit: a quick hunt for a hang), FAULT_S (default 240: pytest's
# faulthandler_timeout, a test running longer dumps every thread's stack into the log and goes on).
# A group whose estimate does not fit the budget left is not started, and a group whose limit the
# budget cut and that was stopped there is left over too (failed as well if a test of it failed before
# the stop); the summary prints the command that runs what is left. Exit: 0 every selected group ran
# and passed (skips included), 1 a group failed or hit its own limit or the collection failed, 2 bad
# GPUS/ONLY, 4 nothing failed but groups were left for another call.
# pytest-timeout is not in the venv, so the limit is per group (`timeout -s INT`: pytest stops the
# running test, prints where it was and writes its junit file; the kill follows 30 s later).
#
# The gpu tests, read from the code and measured (a `megaindex train` launch of the tiny model is mostly
# process start, megatron + TE import and CUDA/NCCL init, ~20-35 s; the 2-step runs train a 4-layer
# model at 256 tokens, milliseconds of GPU work). With `model.cross_entropy_fusion=auto` as the default
# (TE's fused loss on the TE path) these have passed on 2 x H200 (2026-11-28, commit ca87ee6): every
# one-GPU group (te_kernels, model, convert_eval, cuda_graph, async_ckpt, train_1gpu: 17 tests) and
# the 2-GPU layouts tp2_sp, cp2_p2p_thd, cp2_a2a_thd, cp2_a2a+p2p_thd, cp2_p2p_unpacked, cp2_p2p_sbhd,
# pp2, pp2_vpp2 and dp2 (benchmarks/logs_2026-11-28b_h200x2/); not yet with it: tp2_sp_te_cross_entropy,
# parity_2gpu and fp8_attention_2gpu (passed earlier that day, before the default changed), layouts_4gpu.
#   tests/test_data_batch.py::test_cp_slices_match_transformer_engine     1 GPU  TE's THD partition
#       indices for one packed batch, CP 2 and 4: a TE import, ~10 s
#   tests/test_gpu_model.py (4 tests)                                     1 GPU  in-process: a 4-layer
#       hidden-256 model built with TE and with the reference attention (+1 fused-CE copy); logits,
#       THD vs per-document, static THD shapes (4 rows, forward+backward each, backend selections
#       counted), fused CE loss/grads and the head's peak memory at 8K tokens: ~30-40 s
#   tests/test_convert_gpu.py (1)                                         1 GPU  a tiny HF Index
#       checkpoint converted to the TE layout, logits vs transformers bf16/fp32: ~20 s
#   tests/test_eval_gpu.py (1)                                            1 GPU  a 2-layer model in the
#       TE engine vs 2 HF engines, 4 RoPE variants x (NLL + forced scoring) at <= 400 tokens: ~30 s
#   tests/test_gpu_train.py                                               the trainer, subprocesses
#     ::test_layout_matches_one_gpu[...] 1-GPU ones (6)                   1 GPU  module fixtures: the
#       initial weights (1 process) and the single-GPU reference (1 launch), then 1 launch each
#     ::test_fp8_matches_bf16_within_fp8_precision                        1 GPU  1 launch (sm89+)
#       -> group train_1gpu: 9 processes, the known-slow one, last: 207 s measured (2026-11-28, one H200;
#       selective_recompute 58 s with the module fixtures, each further launch 22-30 s)
#     ::test_cuda_graph_steps_match_eager_steps                           1 GPU  weights + 2 launches of
#       4 steps (eval, checkpoint; steps 3-4 captured/replayed): 143 s measured on one H100, 95 s on one
#       H200 (2026-11-28; both passed). It was running when an earlier `timeout 380 pytest -m gpu`
#       run was killed: it is slow, not hung.
#     ::test_async_checkpoints_and_resume_on_gpu                          1 GPU  3 launches (8 + 4 + 4
#       steps, async checkpoints every 2): 115 s measured on one H100, 99 s on one H200
#     ::test_doctor_sees_transformer_engine                               1 GPU  `megaindex doctor`: ~15 s
#     ::test_layout_matches_one_gpu[...] 2-GPU ones (10)                  2 GPUs 1 torchrun of 2 ranks
#       each + the packed and concat references: two groups of 6-7 launches. Measured 2026-11-28 on
#       2 x H200 (the first 2-GPU run): the group's first test 89 s (18.9 s module fixtures: initial
#       weights; then the packed reference launch + its own), each further launch 37-40 s (tp2_sp_te_cross_entropy
#       37 s, pp2 40 s): layouts_2gpu_tp_pp_dp ~250 s, layouts_2gpu_cp ~290 s (+ the concat reference).
#       Measured again 2026-11-28 on 2 x H200: tp2_sp, the 5 CP layouts, pp2 and pp2_vpp2 (~10 launches
#       with the fixtures and both references) passed within 372 s in one pytest process; dp2 alone 71 s
#       (16 s fixture: initial weights; 53 s: the packed reference and its own launch)
#     ::test_fp8_attention_runs_and_matches_bf16_within_fp8_precision     2 GPUs 3 launches, hidden 512,
#       CP2 sbhd (sm90+): 101 s measured (2 x H200)
#     ::test_layout_matches_one_gpu[4gpu_*] (5)                           4 GPUs 5 launches + reference: ~200 s
#   tests/test_parallel.py::test_te_parallel_layouts                      2 GPUs 1 torchrun of
#       tests/mp/model_parity.py (TP2+SP, CP2 THD and sbhd, fused CE at TP2 vs one device): 53 s measured
# With GPUS=2 the first call (budget 540) runs parity_2gpu, fp8_attention_2gpu and layouts_2gpu_tp_pp_dp
# (~20 + 60 + 110 + 250 s); layouts_2gpu_cp does not fit after them and is left for a second call.
# Every gpu-marked test must be in a group below: the script collects `pytest -m gpu` first and
# runs any it does not list in an extra group (`unlisted`), naming them in the summary.
set -u
root=$(cd "$(dirname "$0")/.." && pwd) || exit 2
OUT=$(mkdir -p "${OUT:-$root/gpu_test_out}" && cd "${OUT:-$root/gpu_test_out}" && pwd) || exit 2
cd "$root" || exit 2
PY="${PYTHON:-python}"
GPUS="${GPUS:-1}"
BUDGET=${BUDGET_S:-540}
FAULT=${FAULT_S:-240}
START=$SECONDS
LOG="$OUT/gpu_tests.log"
WORK=$(mktemp -d /tmp/megaindex-gpu-tests.XXXXXX)
: > "$LOG"

T=tests/test_gpu_train.py
L="$T::test_layout_matches_one_gpu"
# name  GPUs  estimate_s  limit_s  node ids...   (in the order they run: cheapest first)
# Estimates: the slower of the measured devices, group wall time incl. pytest start (2026-11-28; one H100 /
# one H200: te_kernels 42 / 25 s, model 51 / 31, convert_eval 49 / 35, cuda_graph 143 / 95, async_ckpt
# 115 / 99, train_1gpu - / 207); the 2-GPU ones on 2 x H200 (parity_2gpu 58 s, fp8_attention_2gpu 106 s,
# layouts ~35-40 s per launch: see above); layouts_4gpu read from the code. Limits stay well above.
GROUP_TABLE=(
  "te_kernels 1 45 120 tests/test_data_batch.py::test_cp_slices_match_transformer_engine tests/test_data_batch.py::test_micro_batch_reaches_the_gpu_without_waiting_for_its_queue $T::test_doctor_sees_transformer_engine"
  "model 1 55 180 tests/test_gpu_model.py"
  "convert_eval 1 50 180 tests/test_convert_gpu.py tests/test_eval_gpu.py"
  "cuda_graph 1 145 240 $T::test_cuda_graph_steps_match_eager_steps"
  "async_ckpt 1 115 240 $T::test_async_checkpoints_and_resume_on_gpu"
  "train_1gpu 1 220 360 ${L}[selective_recompute] ${L}[full_recompute] ${L}[static_thd_shapes] ${L}[te_cross_entropy] ${L}[native_cross_entropy] ${L}[block_recompute_te_cross_entropy] $T::test_fp8_matches_bf16_within_fp8_precision"
  "parity_2gpu 2 60 180 tests/test_parallel.py::test_te_parallel_layouts"
  "fp8_attention_2gpu 2 110 240 $T::test_fp8_attention_runs_and_matches_bf16_within_fp8_precision"
  "layouts_2gpu_tp_pp_dp 2 250 360 ${L}[tp2_sp] ${L}[tp2_sp_te_cross_entropy] ${L}[pp2] ${L}[pp2_vpp2] ${L}[dp2]"
  "layouts_2gpu_cp 2 290 420 ${L}[cp2_p2p_thd] ${L}[cp2_a2a_thd] ${L}[cp2_a2a+p2p_thd] ${L}[cp2_p2p_unpacked] ${L}[cp2_p2p_sbhd]"
  "layouts_4gpu 4 200 400 ${L}[4gpu_tp2_cp2] ${L}[4gpu_tp2_pp2] ${L}[4gpu_pp2_cp2] ${L}[4gpu_pp2_dp2] ${L}[4gpu_cp4_a2a+p2p]"
)

say() { echo "$*" | tee -a "$LOG"; }
names=()
for row in "${GROUP_TABLE[@]}"; do read -r n _ <<< "$row"; names+=("$n"); done
names+=(unlisted)  # made from the collection below: gpu tests that no group lists
case "$GPUS" in 1|2|4) ;; *) echo "GPUS=$GPUS: use 1, 2 or 4 (the GPUs the selected tests need)" >&2; exit 2 ;; esac
for g in ${ONLY:-}; do
  [[ " ${names[*]} " == *" $g "* ]] || { echo "ONLY: unknown group '$g'; the groups are: ${names[*]}" >&2; exit 2; }
done

# 1. Which gpu tests exist, and is each in a group?
gpus_seen=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
DEVICE="$gpus_seen x $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
[ "$gpus_seen" = 0 ] && DEVICE="no GPU visible (nvidia-smi): every gpu test skips, a check of this script"
[ "$gpus_seen" -gt 0 ] && [ "$gpus_seen" -lt "$GPUS" ] && DEVICE+=" (fewer than GPUS=$GPUS: those tests skip)"
say "== collect: pytest -m gpu --collect-only ($(date -u +%FT%TZ), $DEVICE)"
"$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests > "$WORK/collect.txt" 2>&1
collect_rc=$?
grep -E '^tests/.*::' "$WORK/collect.txt" > "$WORK/collected.txt"
listed=()
for row in "${GROUP_TABLE[@]}"; do read -ra f <<< "$row"; listed+=("${f[@]:4}"); done
unlisted=()
while read -r id; do
  hit=0
  for l in "${listed[@]}"; do [[ $id == "$l" || $id == "$l::"* ]] && { hit=1; break; }; done
  [ $hit = 1 ] || unlisted+=("$id")
done < "$WORK/collected.txt"
stale=()
for l in "${listed[@]}"; do grep -qxF -e "$l" "$WORK/collected.txt" || grep -qF -e "$l::" "$WORK/collected.txt" || stale+=("$l"); done
if [ $collect_rc != 0 ]; then
  say "   collection FAILED (rc=$collect_rc):"; tail -20 "$WORK/collect.txt" | tee -a "$LOG"
fi
coverage="$(wc -l < "$WORK/collected.txt") gpu tests collected; every one is in a group"
[ ${#unlisted[@]} -gt 0 ] && coverage="$(wc -l < "$WORK/collected.txt") gpu tests collected; NOT in any group (run as 'unlisted'; add them to GROUP_TABLE): ${unlisted[*]}"
[ ${#stale[@]} -gt 0 ] && coverage+="; listed but not collected (stale GROUP_TABLE entries): ${stale[*]}"
# A test file that does not import is in no group and runs in none: that fails the script (5: no gpu test at all)
collect_failed=0
if [ $collect_rc != 0 ] && [ $collect_rc != 5 ]; then
  collect_failed=1
  coverage="collection FAILED (pytest rc=$collect_rc; the tests of a file that did not collect ran in no group: see the log); $coverage"
fi
say "   $coverage"

# 2. The groups to run
selected=()
for row in "${GROUP_TABLE[@]}"; do
  read -r n g _ <<< "$row"
  if [ -n "${ONLY:-}" ]; then [[ " $ONLY " == *" $n "* ]] && selected+=("$row")
  elif [ "$g" = "$GPUS" ]; then selected+=("$row"); fi
done
if [ ${#unlisted[@]} -gt 0 ] && { [[ " ${ONLY:-} " == *" unlisted "* ]] || { [ -z "${ONLY:-}" ] && [ "$GPUS" = 1 ]; }; }; then
  selected+=("unlisted 1 120 300 ${unlisted[*]}")
fi

status=() ; left_over=() ; failed=0
i=0
for row in "${selected[@]}"; do
  i=$((i + 1))
  read -ra f <<< "$row"
  name=${f[0]} est=${f[2]} limit=${f[3]} ids=("${f[@]:4}")
  left=$((BUDGET - (SECONDS - START) - 20))   # 20 s kept for the junit merge and the summary
  if [ $left -lt "$est" ]; then
    status+=("$name: not run (estimate ${est} s, ${left} s of the budget left)"); left_over+=("$name"); continue
  fi
  [ -n "${LIMIT_S:-}" ] && [ "$LIMIT_S" -lt "$limit" ] && limit=$LIMIT_S
  cut=0   # 1: the budget, not the group's own limit, sets when it stops
  [ $left -lt "$limit" ] && { limit=$left; cut=1; }
  say ""
  say "== [$i/${#selected[@]}] $name: ${#ids[@]} node id(s), estimate ${est} s, limit ${limit} s ($(date -u +%T)Z)"
  t0=$SECONDS
  mark=$(wc -l < "$LOG")
  echo "$name" >> "$WORK/order.txt"
  timeout -s INT -k 30 "$limit" "$PY" -u -m pytest -m gpu -v -rsfE --durations=0 --durations-min=0 -p no:cacheprovider \
      -o console_output_style=times -o faulthandler_timeout="$FAULT" --junitxml="$WORK/junit_$name.xml" "${ids[@]}" \
      2>&1 | tee -a "$LOG" | grep --line-buffered -E '^tests/.*::|^(SKIPPED|FAILED|ERROR)|^=+ .* in [0-9.]+s|Timeout'
  rc=${PIPESTATUS[0]}
  dt=$((SECONDS - t0))
  tail -n +"$((mark + 1))" "$LOG" > "$WORK/$name.log"
  counts=$(grep -E '^=+ .* in [0-9.]+s' "$WORK/$name.log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    # the last test that started and has no result yet (a faulthandler dump puts its result on a later line)
    running=$(awk '/^tests\/.*::/ {cur = $1; done = / (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)/; next}
                   /^ *(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)/ {done = 1} END {if (cur != "" && !done) print cur}' "$WORK/$name.log")
    # a test that FAILED or ERRORed before the stop (its own result line, a late result line, the -rfE summary)
    broke=$(grep -cE '^tests/[^ ]*::[^ ]* +(FAILED|ERROR)|^(FAILED|ERROR) tests/|^ *(FAILED|ERROR) *([0-9]|$)' "$WORK/$name.log")
    if [ $cut = 1 ] && [ "$broke" = 0 ]; then
      # stopped by the budget before its own limit: not a verdict on the tests, the group goes to the next call
      status+=("$name: STOPPED by the budget after ${limit} s (its own limit is ${f[3]} s); running: ${running:-none (still collecting)}; ${counts:-no pytest summary}; run it again in another call")
      echo "$name|$limit|${running:-collection}|budget" >> "$WORK/timeouts.txt"
      left_over+=("$name")
    elif [ $cut = 1 ]; then
      # the budget stopped it, but what ran already failed: a verdict; the rest of the group is still left over
      status+=("$name: FAILED (${counts:-no pytest summary}) before the budget stopped it after ${limit} s; running: ${running:-none (still collecting)}; the rest of the group in another call")
      echo "$name|$limit|${running:-collection}|budget" >> "$WORK/timeouts.txt"
      left_over+=("$name")
      failed=1
    else
      status+=("$name: TIMEOUT after ${limit} s; running: ${running:-none (still collecting)}; ${counts:-no pytest summary}")
      echo "$name|$limit|${running:-collection}|limit" >> "$WORK/timeouts.txt"
      failed=1
    fi
  elif [ "$rc" = 0 ]; then
    status+=("$name: ok in ${dt} s (${counts})")
  else
    status+=("$name: FAILED rc=$rc in ${dt} s (${counts:-no pytest summary})"); failed=1
  fi
done

# 3. One junit file: each group's testsuite named after the group, a timeout as a failed testcase
"$PY" - "$WORK" "$OUT/junit.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
root = ET.Element("testsuites")
order = (work / "order.txt").read_text().split() if (work / "order.txt").exists() else []
for f in [work / f"junit_{g}.xml" for g in order if (work / f"junit_{g}.xml").exists()]:
    try:
        suites = ET.parse(f).getroot()
    except ET.ParseError as e:
        print(f"junit: {f.name} unreadable ({e}), left out")
        continue
    for s in ([suites] if suites.tag == "testsuite" else suites.findall("testsuite")):
        s.set("name", f.stem.removeprefix("junit_"))
        root.append(s)
timeouts = work / "timeouts.txt"
for line in timeouts.read_text().splitlines() if timeouts.exists() else []:
    group, limit, running, why = line.split("|")
    budget = why == "budget"  # stopped by the script's budget: left for another call, not failed
    s = ET.SubElement(root, "testsuite", name=f"{group}_timeout", tests="1", failures=str(int(not budget)), errors="0",
                      skipped=str(int(budget)))
    c = ET.SubElement(s, "testcase", classname=group, name="time_limit")
    if budget:
        ET.SubElement(c, "skipped", message=f"group {group} stopped by the budget after {limit} s while running {running}: "
                                            f"the rest of the group did not run")
    else:
        ET.SubElement(c, "failure", message=f"group {group} stopped after its limit of {limit} s while running {running}")
ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
EOF

# 4. Summary
{
  echo "gpu tests, $(date -u +%FT%TZ), GPUS=${GPUS}${ONLY:+, ONLY=$ONLY}, ${DEVICE}"
  echo "collect: $coverage"
  for s in "${status[@]}"; do echo "  $s"; done
  skips=$(grep -hE '^SKIPPED \[[0-9]+\] ' "$LOG" | awk '{n = substr($2, 2) + 0; sub(/^SKIPPED \[[0-9]+\] [^ ]+: /, ""); c[$0] += n}
                                                      END {for (r in c) printf "  %d x %s\n", c[r], r}')
  [ -n "$skips" ] && { echo "skipped:"; echo "$skips"; }
  [ ${#left_over[@]} -gt 0 ] && echo "not run, for another call: ONLY=\"${left_over[*]}\" bash benchmarks/gpu_tests.sh"
  echo "log: $LOG; junit: $OUT/junit.xml; $((SECONDS - START)) s"
} > "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
rm -rf "$WORK"
{ [ $failed = 1 ] || [ $collect_failed = 1 ]; } && exit 1
[ ${#left_over[@]} -gt 0 ] && exit 4
exit 0
