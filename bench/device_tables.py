"""Markdown tables of the device benchmark (what BENCHMARKS.md records for ``bench/device.py``)."""

from __future__ import annotations

from typing import Any

from bench.report import markdown_table


def _passes(value: int | None) -> str:
    return "never" if value is None else str(value)


def int8_table(q: dict[str, Any]) -> list[str]:
    return [
        f"int8 vs float ({q['engine']} engine, batch 1, {q['test_clips']} clean ID test clips)",
        "",
        markdown_table(
            ["model", "accuracy", "latency ms/clip", "artifact bytes"],
            [
                [
                    "float",
                    f"{q['accuracy_float']:.4f}",
                    f"{q['latency_ms_float']:.2f}",
                    q["artifact_bytes_float"],
                ],
                [
                    "int8",
                    f"{q['accuracy_int8']:.4f}",
                    f"{q['latency_ms_int8']:.2f}",
                    q["artifact_bytes_int8"],
                ],
                [
                    "int8/float",
                    f"{-q['accuracy_diff_points']:+.2f} pt",
                    f"{q['latency_ratio_int8_over_float']:.2f}x",
                    f"{q['size_ratio_int8_over_float']:.3f}x",
                ],
            ],
        ),
        "",
    ]


def validation_tables(val: dict[str, Any]) -> list[str]:
    chosen = val["chosen"]
    lt = chosen["leantta"]
    lines = [
        f"**Validation** (settings chosen here): `{val['clip_split']}` clips, "
        f"{val['clips_per_corruption']} per corruption, corruptions "
        f"{', '.join(val['corruptions'])} (severity 5). Mean error per setting:",
        "",
    ]
    leantta_rows = []
    for name, value in val["leantta_mean_error"].items():
        k, tau, lam = name.split("_")
        leantta_rows.append([f"{k[1:]}, {tau[3:]}, {lam[3:]}", value])
    tent_rows = []
    for name, value in val["tent_mean_error"].items():
        bs, lr = name.split("_lr")
        tent_rows.append([f"{bs[2:]}, {lr}", value])
    error = "mean validation error"
    lines += [
        markdown_table(["LeanTTA: first k per stream, tau, lambda", error], leantta_rows),
        "",
        markdown_table(
            ["online ZO entropy: lr", error],
            [[lr, v] for lr, v in val["zo_lr_mean_error"].items()],
        ),
        "",
        markdown_table(["TENT: batch, lr", error], tent_rows),
    ]
    tent = ", ".join(f"{k}: {v}" for k, v in chosen["tent_lr"].items())
    lines += [
        "",
        f"Chosen: LeanTTA k = {lt['adapt_layers']}, tau = {lt['tau']}, lambda = {lt['lam']}; "
        f"online ZO lr = {chosen['zo_lr']}; TENT lr {tent}.",
        "",
    ]
    return lines


def test_tables(lt: dict[str, Any], bl: dict[str, Any]) -> list[str]:
    s = lt["settings"]
    lines = [
        f"**Test** (once, chosen settings): `{lt['clip_split']}` clips, "
        f"{lt['clips_per_corruption']} per corruption, held-out corruptions "
        f"{', '.join(lt['corruptions'])} (severity {lt['severity']}; batch 1 unless the name "
        f"says otherwise; LeanTTA k = {s['adapt_layers']}, tau = {s['tau']}, "
        f"lambda = {s['lam']})",
        "",
        markdown_table(
            ["method", "mean test error"],
            [[k, v] for k, v in {**lt["mean_error"], **bl["mean_error"]}.items()],
        ),
    ]
    methods = list(lt["mean_error"])
    lines += ["", "Per test corruption (batch 1)", ""]
    lines += [
        markdown_table(
            ["corruption", *methods],
            [[c, *(row[m] for m in methods)] for c, row in lt["per_corruption"].items()],
        )
    ]
    for kind, pair in lt["paired_vs_none"].items():
        lines.append(
            f"\n{kind}: LeanTTA fixed {pair['fixed']} clips and broke {pair['broken']} "
            f"(exact McNemar p = {pair['mcnemar_p']:.2g})."
        )
    lines += [
        "",
        f"Gap of LeanTTA (batch 1, float) to BN-adapt at batch 64: "
        f"{lt['gap_to_bn_adapt_bs64_points']:+.2f} error points.",
        "",
        f"LeanTTA latency ratio: float {lt['latency_ratio_float']:.2f}x, "
        f"int8 {lt['latency_ratio_int8']:.2f}x",
    ]
    return lines


def memory_table(mem: dict[str, Any]) -> list[str]:
    default = mem.get("zo_default", {})
    lines = [
        "",
        f"Peak memory (max RSS of a fresh process, {mem['clips']} clips, median of "
        f"{mem.get('repeats', 1)}; zo = default window {default.get('window')}, "
        f"eval_batch {default.get('eval_batch')}; zo_wW_bB = window W, eval_batch B)",
        "",
    ]
    rows = []
    for job, mib in mem["max_rss_mib"].items():
        ratio = mem["ratio_to_inference"].get(job)
        rows.append([job, f"{mib:.1f}", "" if ratio is None else f"{ratio:.3f}"])
    return [*lines, markdown_table(["job", "max RSS MiB", "ratio to inference"], rows)]


def zo_tables(zo: dict[str, Any]) -> list[str]:
    val, chosen = zo["validation"], zo["chosen"]
    lines = [
        "",
        f"ZO few-shot ({zo['parameters']}; {zo['estimator']}; {zo['steps']} steps, "
        f"{zo['seeds']} seeds). **Validation** tasks "
        f"({', '.join(val['tasks'])}; `val` clips):",
        "",
        markdown_table(
            ["ZO-Adam lr", "plain ZO mean final loss"],
            [[lr, v] for lr, v in val["lr_mean_final_loss"].items()],
        ),
        "",
        markdown_table(
            ["subspace tau", "runs reaching plain's final loss in fewer passes", "mean final loss"],
            [
                [tau, val["tau_wins"][str(tau)], val["tau_mean_final_loss"][str(tau)]]
                for tau in val["taus"]
            ],
        ),
    ]
    lines += [
        "",
        f"Chosen: lr = {chosen['lr']}, tau = {chosen['tau']}. **Test** tasks (once): passes to "
        "reach plain ZO's final loss (same seed), and to 90 % / 99 % of plain's loss decrease; "
        "plain / subspace",
        "",
        "| task | variant | plain / subspace final loss | passes to plain's final | "
        "passes to 90 % | passes to 99 % | fewer? |",
        "|---|---|---|---|---|---|---|",
    ]
    for corruption, task in zo["tasks"].items():
        for variant, rows in task["summary"].items():
            for row in rows:
                lines.append(
                    f"| {corruption} s{row['seed']} | {variant.removeprefix('zo_subspace_')} | "
                    f"{row['plain_final_loss']:.4f} / {row['subspace_final_loss']:.4f} | "
                    f"{_passes(row['plain_passes_to_plain_final'])} / "
                    f"{_passes(row['subspace_passes_to_plain_final'])} | "
                    f"{_passes(row['plain_passes_to_0.9'])} / "
                    f"{_passes(row['subspace_passes_to_0.9'])} | "
                    f"{_passes(row['plain_passes_to_0.99'])} / "
                    f"{_passes(row['subspace_passes_to_0.99'])} | "
                    f"{'yes' if row['subspace_fewer_passes'] else 'no'} |"
                )
    lines += [
        "",
        f"Subspace ZO reached plain ZO's final loss in fewer passes in "
        f"{zo['claim_holds_runs']} of {zo['claim_runs']} (test task, seed) runs.",
    ]
    return lines


def markdown_tables(results: dict[str, Any]) -> str:
    """Every table of the device benchmark, in order."""
    lines = int8_table(results["int8"])
    lines += validation_tables(results["validation"])
    lines += test_tables(results["leantta"], results["baselines"])
    lines += memory_table(results["memory"])
    lines += zo_tables(results["zo"])
    return "\n".join(lines)
